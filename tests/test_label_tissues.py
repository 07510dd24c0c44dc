"""Label value -> tissue from the dataset's own label names (or --label-tissues); unmapped values refused.

Truth: hand-written expectations for the names of real datasets (ACDC, M&Ms, MyoPS-derived), and the
myocardial tissue behind an image whose myocardium carries another label value than ACDC's 2.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from nnunetv2_physaug.physics import bssfp
from nnunetv2_physaug.reverse import LabelEstimator
from nnunetv2_physaug.reverse.label_tissues import (LabelTissueError, parse_label_tissues, resolve_label_tissues,
                                                    tissues_from_label_names)


@pytest.mark.parametrize("labels,expected", [
    ({"background": 0, "RV": 1, "MLV": 2, "LVC": 3}, {1: "blood", 2: "myocardium", 3: "blood"}),       # ACDC
    ({"background": 0, "LV": 1, "MYO": 2, "RV": 3}, {1: "blood", 2: "myocardium", 3: "blood"}),        # M&Ms
    ({"background": 0, "left ventricle": 1, "LV myocardium": 2, "right_ventricle": 3, "scar": 4, "edema": 5,
      "MVO": 6}, {1: "blood", 2: "myocardium", 3: "blood", 4: "myocardium", 5: "myocardium", 6: "myocardium"}),
    ({"background": 0, "LVBloodPool": 1, "Myocardium": 2, "pericardium": 9}, {1: "blood", 2: "myocardium", 9: "other"}),
])
def test_names_of_real_datasets(labels, expected):
    assert tissues_from_label_names(labels) == expected


def test_unknown_names_and_regions_are_errors_that_say_what_to_pass():
    with pytest.raises(LabelTissueError, match="--label-tissues 7=myocardium"):
        tissues_from_label_names({"background": 0, "LV": 1, "thing": 7})
    with pytest.raises(LabelTissueError, match="region"):
        tissues_from_label_names({"background": 0, "heart": [1, 2, 3]})


@pytest.mark.parametrize("labels,match", [
    ({"background": 0, "RV": 1.7}, r"labels\['RV'\] is 1.7; a label value is a whole number"),
    ({"background": 0, "RV": "one"}, r"labels\['RV'\] is 'one'"),
    ({"background": 0, "RV": True}, r"labels\['RV'\] is True"),
    ({"background": 0, "RV": 1, "LV": 1}, "labels 'RV' and 'LV' both have the value 1"),
    (["background", "RV"], "'labels' is a list, not a mapping"),
])
def test_malformed_label_dicts_are_errors_naming_the_file_and_key(labels, match):
    with pytest.raises(LabelTissueError, match=match) as e:
        tissues_from_label_names(labels, "/d/dataset.json")
    assert "/d/dataset.json" in str(e.value)
    assert tissues_from_label_names({"background": 0, "RV": 1.0}) == {1: "blood"}  # 1.0 is 1


def test_dataset_json_that_is_not_utf8_is_named(tmp_path):
    (tmp_path / "imagesTr").mkdir()
    (tmp_path / "dataset.json").write_bytes('{"labels": {"background": 0, "Myokard\u00e4": 2}}'.encode("latin-1"))
    with pytest.raises(LabelTissueError, match=r"dataset.json: not UTF-8 text"):
        resolve_label_tissues(tmp_path / "imagesTr")


def test_parse_override():
    with pytest.raises(LabelTissueError, match="label 1 is given twice"):
        parse_label_tissues("1=blood,1=myocardium")
    assert parse_label_tissues("1=blood,1=blood") == {1: "blood"}
    assert parse_label_tissues("1=blood, 2=myocardium,3=Blood") == {1: "blood", 2: "myocardium", 3: "blood"}
    for bad in ("1=bone", "x=blood", "0=blood", "", "1:blood"):
        with pytest.raises(LabelTissueError):
            parse_label_tissues(bad)


def _dataset(tmp_path: Path, labels: dict, label_values: dict[str, int]) -> Path:
    """A one-case imagesTr/labelsTr/dataset.json tree: LV disk, myocardial ring, rendered with bSSFP at
    1.5 T reference values (blood 1550/270 ms, myocardium 1000/50 ms), labels with ``label_values``."""
    root = tmp_path / "Dataset950_X"
    for d in ("imagesTr", "labelsTr"):
        (root / d).mkdir(parents=True)
    yy, xx = np.mgrid[:48, :48]
    r = np.hypot(yy - 24, xx - 24)
    lv, myo = r <= 9, (r > 9) & (r <= 15)
    m0 = np.where(lv, 0.95, np.where(myo, 0.8, 0.75))
    t1 = np.where(lv, 1550.0, np.where(myo, 1000.0, 860.0))
    t2 = np.where(lv, 270.0, np.where(myo, 50.0, 30.0))
    img = bssfp(torch.tensor(m0), torch.tensor(t1), torch.tensor(t2), 45.0, 0.0, short_tr=True).numpy()
    lab = np.zeros((48, 48), np.int16)
    lab[lv], lab[myo] = label_values["lv"], label_values["myo"]
    nib.save(nib.Nifti1Image(np.repeat(img[..., None], 3, -1).astype(np.float32) * 1000, np.eye(4)),
             str(root / "imagesTr" / "c1_0000.nii.gz"))
    nib.save(nib.Nifti1Image(np.repeat(lab[..., None], 3, -1), np.eye(4)), str(root / "labelsTr" / "c1.nii.gz"))
    (root / "dataset.json").write_text(json.dumps({"labels": labels, "channel_names": {"0": "cine"},
                                                   "file_ending": ".nii.gz", "numTraining": 1}))
    return root


def _myo_t1(maps_dir: Path) -> float:
    t1 = np.asarray(nib.load(str(maps_dir / "c1_T1.nii.gz")).dataobj)
    yy, xx = np.mgrid[:48, :48]
    r = np.hypot(yy - 24, xx - 24)
    ring = (r > 10.5) & (r <= 13.5)  # interior of the ring, away from partial volume
    return float(np.median(t1[..., 1][ring]))


def test_myocardium_under_another_label_value_gets_myocardial_tissue(tmp_path):
    root = _dataset(tmp_path, {"background": 0, "LV": 5, "myocardium": 7}, {"lv": 5, "myo": 7})
    mapping, source = resolve_label_tissues(root / "imagesTr")
    assert mapping == {5: "blood", 7: "myocardium"} and source.endswith("dataset.json")
    r = subprocess.run([sys.executable, "-m", "nnunetv2_physaug.cli.reverse", "-i", str(root / "imagesTr"),
                        "--no-progress"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "label tissues" in r.stdout and "7=myocardium" in r.stdout
    # the 1.5 T myocardium of the table is ~1000 ms (before the fix: 599 ms, unlabelled-tissue classes)
    assert 850.0 < _myo_t1(root / "tissueMapsTr") < 1150.0


def test_unmapped_label_value_is_refused_with_the_file_named(tmp_path):
    root = _dataset(tmp_path, {"background": 0, "RV": 1, "MYO": 2, "LV": 3}, {"lv": 3, "myo": 7})
    r = subprocess.run([sys.executable, "-m", "nnunetv2_physaug.cli.reverse", "-i", str(root / "imagesTr"),
                        "--no-progress"], capture_output=True, text=True)
    assert r.returncode != 0
    out = r.stdout + r.stderr
    assert "c1" in out and "[7]" in out and "--label-tissues" in out and "Traceback" not in out
    assert not (root / "tissueMapsTr" / "c1_T1.nii.gz").exists()
    # the override fixes it
    r = subprocess.run([sys.executable, "-m", "nnunetv2_physaug.cli.reverse", "-i", str(root / "imagesTr"),
                        "--no-progress", "--label-tissues", "3=blood,7=myocardium", "--overwrite"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert 850.0 < _myo_t1(root / "tissueMapsTr") < 1150.0


def test_estimator_rejects_bad_mappings():
    with pytest.raises(ValueError):
        LabelEstimator(label_tissues={1: "bone"})
    est = LabelEstimator(label_tissues={4: "blood", 9: "myocardium"})
    assert est.identity()["parameters"]["label_tissues"] == {"4": "blood", "9": "myocardium"}
    with pytest.raises(LabelTissueError, match=r"\[2\]"):
        est.check_labels(np.array([0, 4, 9, 2]), "somewhere")


def test_float_labels_are_refused_not_rounded(tmp_path):
    root = _dataset(tmp_path, {"background": 0, "RV": 1, "MYO": 2, "LV": 3}, {"lv": 3, "myo": 2})
    f = root / "labelsTr" / "c1.nii.gz"
    lab = np.asarray(nib.load(str(f)).dataobj).astype(np.float32)
    lab[lab == 2] = 1.6  # would round to 2; an interpolated label
    nib.save(nib.Nifti1Image(lab, np.eye(4)), str(f))
    r = subprocess.run([sys.executable, "-m", "nnunetv2_physaug.cli.reverse", "-i", str(root / "imagesTr"),
                        "--no-progress"], capture_output=True, text=True)
    assert r.returncode != 0 and "non-integer" in r.stdout + r.stderr and "c1.nii.gz" in r.stdout + r.stderr


def test_negative_labels_and_nnunets_ignore_label_get_advice_that_works():
    import numpy as np
    from nnunetv2_physaug.reverse.label_tissues import (LabelTissueError, check_label_values,
                                                        tissues_from_label_names)

    with pytest.raises(LabelTissueError, match=r"negative label value\(s\) \[-1\]; labels are whole numbers >= 0"):
        check_label_values(np.array([0, 1, -1]), {1: "blood"}, "case00")
    # nnU-Net's ignore label (the highest value, named "ignore") claims no tissue
    assert tissues_from_label_names({"background": 0, "RV": 1, "MYO": 2, "LV": 3, "ignore": 255}) == {
        1: "blood", 2: "myocardium", 3: "blood", 255: "other"}
