"""Which tissue each label value of a dataset stands for (the one owner of that meaning).

The weight-free estimator needs to know which label values are blood pools and which are
myocardium. Datasets say it in their own ``dataset.json`` label names (nnU-Net's ``labels`` dict:
name -> value), in many spellings: ACDC ``RV``/``MLV``/``LVC``, M&Ms ``LV``/``MYO``/``RV``, names like
``left ventricle``, ``myocardium``, ``scar``, ``edema``. :func:`tissues_from_label_names` reads them;
``--label-tissues 1=blood,2=myocardium,3=blood`` (:func:`parse_label_tissues`) overrides. A label
value present in a label file but absent from the mapping is an error (:func:`check_label_values`),
never silently unlabelled tissue.

Tissues: ``blood`` (cavity, blood pool), ``myocardium`` (including pathological myocardium: scar,
edema, MVO are myocardium), ``other`` (labelled, but neither: treated as unlabelled tissue).
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Mapping, Optional

import numpy as np

TISSUES = ("blood", "myocardium", "other")
#: ACDC convention (1 RV cavity, 2 LV myocardium, 3 LV cavity): the default without a dataset.json.
ACDC_LABEL_TISSUES: dict[int, str] = {1: "blood", 2: "myocardium", 3: "blood"}

# word tokens of label names; myocardium words win over blood words ("LV myocardium" is myocardium)
_MYOCARDIUM_WORDS = {"myo", "mlv", "myocardium", "myocardial", "wall", "scar", "infarct", "infarction", "edema",
                     "oedema", "mvo", "fibrosis", "lge", "enhancement", "lvm", "lvmyo"}
_BLOOD_WORDS = {"rv", "lv", "lvc", "rvc", "la", "ra", "blood", "pool", "cavity", "ventricle", "ventricular",
                "atrium", "atrial", "aorta", "lvbp", "rvbp", "bloodpool", "lvcav", "rvcav"}
# "ignore": nnU-Net's ignore label (unannotated pixels): no claim on the tissue, so "other"
_OTHER_WORDS = {"pericardium", "pericardial", "fat", "liver", "lung", "tissue", "other", "ignore"}


class LabelTissueError(ValueError):
    """A label value without a tissue, or a mapping that cannot be read; the message says what to pass."""


def tissue_of_name(name: str) -> Optional[str]:
    """``"blood"``, ``"myocardium"``, ``"other"`` or None (unknown) for one label name."""
    words = set(re.sub(r"([a-z])([A-Z])", r"\1 \2", name).lower().replace("_", " ").replace("-", " ").split())
    if words & _MYOCARDIUM_WORDS or any(w.startswith("myo") for w in words):
        return "myocardium"
    if words & _BLOOD_WORDS:
        return "blood"
    if words & _OTHER_WORDS:
        return "other"
    return None


def _label_value(name: str, value: object, source: str) -> int:
    """A label's value as nnU-Net needs it: a whole number >= 0 (``1`` or ``1.0``; not ``1.7``, ``"one"``)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value or int(value) != value \
            or value < 0:
        raise LabelTissueError(f"{source}: labels[{name!r}] is {value!r}; a label value is a whole number >= 0 "
                               f"(nnU-Net's dataset.json: \"labels\": {{\"background\": 0, \"RV\": 1, ...}})")
    return int(value)


def tissues_from_label_names(labels: Mapping[str, object], source: str = "dataset.json") -> dict[int, str]:
    """Label value -> tissue from nnU-Net's ``labels`` dict (name -> int, or a list for regions)."""
    if not isinstance(labels, Mapping):
        raise LabelTissueError(f"{source}: 'labels' is a {type(labels).__name__}, not a mapping of name -> value "
                               f"(e.g. {{\"background\": 0, \"RV\": 1}}); fix it or pass --label-tissues")
    out: dict[int, str] = {}
    names: dict[int, str] = {}
    unknown = []
    for name, value in labels.items():
        if str(name).lower() == "background":
            continue
        if isinstance(value, (list, tuple)):
            raise LabelTissueError(f"{source}: label {name!r} is a region ({value}); give the tissues of the label "
                                   f"values with --label-tissues VALUE=blood|myocardium|other,...")
        value = _label_value(name, value, source)
        if value in names:
            raise LabelTissueError(f"{source}: labels {names[value]!r} and {name!r} both have the value {value}; "
                                   f"each value names one structure")
        names[value] = name
        tissue = tissue_of_name(str(name))
        if tissue is None:
            unknown.append(f"{name}={value}")
            continue
        out[value] = tissue
    if unknown:
        example = ",".join(v.split("=")[1] + "=myocardium" for v in unknown[:2])
        raise LabelTissueError(f"{source}: cannot tell the tissue of label(s) {', '.join(unknown)} from the name; "
                               f"pass --label-tissues, e.g. --label-tissues {example} (tissues: {', '.join(TISSUES)})")
    return out


def parse_label_tissues(text: str) -> dict[int, str]:
    """``"1=blood,2=myocardium,3=blood"`` -> {1: "blood", 2: "myocardium", 3: "blood"}."""
    out: dict[int, str] = {}
    for part in (p.strip() for p in str(text).split(",")):
        if not part:
            continue
        m = re.fullmatch(r"(-?\d+)\s*=\s*([A-Za-z]+)", part)
        if not m or m.group(2).lower() not in TISSUES:
            raise LabelTissueError(f"--label-tissues: cannot read {part!r}; write VALUE=TISSUE with TISSUE one of "
                                   f"{', '.join(TISSUES)}, e.g. 1=blood,2=myocardium,3=blood")
        value = int(m.group(1))
        if value == 0:
            raise LabelTissueError("--label-tissues: 0 is the background and has no tissue")
        if value < 0:
            raise LabelTissueError(f"--label-tissues: {part!r}: label values are whole numbers >= 1")
        if value in out and out[value] != m.group(2).lower():
            raise LabelTissueError(f"--label-tissues: label {value} is given twice ({value}={out[value]} and {part}); "
                                   f"give each value one tissue")
        out[value] = m.group(2).lower()
    if not out:
        raise LabelTissueError("--label-tissues is empty; e.g. 1=blood,2=myocardium,3=blood")
    return out


def resolve_label_tissues(images_dir: os.PathLike | str, override: Optional[str | Mapping[int, str]] = None
                          ) -> tuple[dict[int, str], str]:
    """The mapping for an image folder and where it came from: ``override``, else the dataset's
    ``dataset.json`` (beside ``imagesTr``), else the ACDC convention."""
    if override is not None:
        mapping = parse_label_tissues(override) if isinstance(override, str) else {int(k): v for k, v in override.items()}
        return mapping, "--label-tissues"
    ds_json = Path(images_dir).parent / "dataset.json"
    if ds_json.is_file():
        try:
            labels = json.loads(ds_json.read_text(encoding="utf-8"))["labels"]
        except UnicodeDecodeError as e:
            raise LabelTissueError(f"{ds_json}: not UTF-8 text ({e.reason} at byte {e.start}); save it as UTF-8 "
                                   f"(nnU-Net reads dataset.json as UTF-8 JSON) or pass --label-tissues") from None
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise LabelTissueError(f"{ds_json}: cannot read its 'labels' ({type(e).__name__}: {e}); fix it or pass "
                                   f"--label-tissues") from None
        return tissues_from_label_names(labels, str(ds_json)), str(ds_json)
    return dict(ACDC_LABEL_TISSUES), "ACDC convention (no dataset.json beside the images)"


def check_label_values(labels: np.ndarray, mapping: Mapping[int, str], where: str) -> None:
    """Raise when ``labels`` holds a non-zero value that ``mapping`` does not define."""
    present = {int(v) for v in np.unique(labels)} - {0}
    negative = sorted(v for v in present if v < 0)
    if negative:
        raise LabelTissueError(f"{where}: holds negative label value(s) {negative}; labels are whole numbers >= 0 "
                               f"(nnU-Net's integrity check refuses them too): fix the label file")
    missing = sorted(present - set(mapping))
    if missing:
        known = ", ".join(f"{k}={v}" for k, v in sorted(mapping.items()))
        raise LabelTissueError(f"{where}: label value(s) {missing} have no tissue (known: {known}); add them to "
                               f"dataset.json's labels or pass --label-tissues "
                               f"{','.join(f'{k}={v}' for k, v in sorted(mapping.items()))},{missing[0]}=myocardium")


def values_of(mapping: Mapping[int, str], tissue: str) -> tuple[int, ...]:
    return tuple(sorted(k for k, v in mapping.items() if v == tissue))
