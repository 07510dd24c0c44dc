"""Shared machinery of the dataset converters: output folders, NIfTI frame extraction, label
remapping, patient-level splits and the staged (all-or-nothing) write of an nnU-Net raw dataset.

A converter only has to *describe* its cases (:class:`CaseSpec`: where the image and label come
from, which patient they belong to, metadata); :func:`write_dataset` does the rest:

1. checks the nnU-Net env vars and refuses to touch existing output without ``overwrite``;
2. writes every case into a hidden staging folder beside the target
   (``$nnUNet_raw/.DatasetNNN_Name.partial-XXXX``) with a tqdm progress bar;
3. writes ``dataset.json`` (nnU-Net's own ``generate_dataset_json``) with the per-case metadata
   under the key :data:`METADATA_KEY`;
4. renames the staging folder into place (so a killed or failed run leaves no half dataset) and
   writes the patient-level 5-fold ``splits_final.json`` atomically into
   ``$nnUNet_preprocessed/DatasetNNN_Name/``.

All output follows the ACDC label convention :data:`ACDC_LABELS`.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Mapping, Optional, Sequence

import nibabel as nib
import numpy as np

from ..cli.argtypes import seed as seed_type
from ..cli.contract import add_quiet
from ..fileio import atomic_write_json, recover_staged, staged_folder

#: nnU-Net label dict of every converted dataset (ACDC convention).
ACDC_LABELS: dict[str, int] = {"background": 0, "RV": 1, "MLV": 2, "LVC": 3}
LABEL_CONVENTION = "ACDC: 0 background, 1 RV cavity, 2 LV myocardium, 3 LV cavity"
#: Source label -> ACDC label for datasets that use the M&Ms convention (1 LV cavity, 2 MYO, 3 RV).
MNMS_TO_ACDC: dict[int, int] = {0: 0, 1: 3, 2: 2, 3: 1}
IDENTITY_LABELS: dict[int, int] = {0: 0, 1: 1, 2: 2, 3: 3}
#: dataset.json key holding the converter's metadata (nnU-Net ignores unknown keys).
METADATA_KEY = "physaug_metadata"
CHANNEL_NAMES = {0: "cineMRI"}
FILE_ENDING = ".nii.gz"
DEFAULT_SEED = 12345  # nnU-Net's own default for generate_crossval_split
N_FOLDS = 5


class ConversionError(ValueError):
    """Malformed source tree, bad metadata or refused overwrite; the message names the file."""


@dataclass(frozen=True)
class VolumeRef:
    """Where one 3D volume comes from: a 3D NIfTI file, or frame ``frame`` (0-based) of a 4D one."""

    path: Path
    frame: Optional[int] = None

    def describe(self) -> str:
        return str(self.path) if self.frame is None else f"{self.path} (frame index {self.frame})"


@dataclass(frozen=True)
class CaseSpec:
    """One nnU-Net case to write.

    ``subset`` is "train" (imagesTr/labelsTr, part of the splits) or "test" (imagesTs, plus
    labelsTs when ``label`` is given). ``metadata`` (JSON-serialisable) goes to dataset.json.
    """

    case_id: str
    patient: str
    subset: str
    image: VolumeRef
    label: Optional[VolumeRef]
    metadata: dict = field(default_factory=dict)


@dataclass
class ConversionResult:
    """What a converter wrote."""

    dataset_dir: Path
    splits_file: Path
    n_train: int
    n_test: int
    n_test_labeled: int
    group_dirs: dict[str, tuple[Path, Path]]


# ----------------------------------------------------------------------------- paths, env vars

def dataset_name(dataset_id: int, name: str) -> str:
    """nnU-Net folder name ``DatasetNNN_Name`` (ID 1..999)."""
    if not 1 <= int(dataset_id) <= 999:
        raise ConversionError(f"dataset ID must be in 1..999 (nnU-Net uses 3 digits), got {dataset_id}")
    return f"Dataset{int(dataset_id):03d}_{name}"


def nnunet_folder(var: str) -> Path:
    """The folder of nnU-Net env var ``var`` ("nnUNet_raw" or "nnUNet_preprocessed").

    nnunetv2 >= 2.8 exposes these as lazy ``_EnvPath`` objects, so we go through ``os.fspath``
    only after checking that the variable is set, to give our own actionable message.
    """
    from nnunetv2 import paths

    env_path = getattr(paths, var)
    if not env_path:
        raise ConversionError(
            f"{var} is not set. The converters write to $nnUNet_raw/DatasetNNN_Name and the splits to "
            f"$nnUNet_preprocessed/DatasetNNN_Name/splits_final.json; set it first, e.g. "
            f"`export {var}=/data/{var}`.")
    return Path(os.fspath(env_path))


def _clashing_ids(folder: Path, dataset_id: int, name: str) -> list[str]:
    if not folder.is_dir():
        return []
    prefix = f"Dataset{int(dataset_id):03d}_"
    return sorted(p.name for p in folder.iterdir()
                  if p.is_dir() and p.name.startswith(prefix) and p.name != name)


# ----------------------------------------------------------------------------- NIfTI helpers

def _load(path: Path) -> nib.Nifti1Image:
    try:
        return nib.load(str(path))
    except FileNotFoundError:
        raise ConversionError(f"missing file {path}") from None
    except Exception as e:  # nibabel raises several types for corrupt files
        raise ConversionError(f"cannot read {path} as NIfTI: {e}") from e


def _read_data(img: nib.Nifti1Image, path: Path, read) -> np.ndarray:
    """``read(img.dataobj)``; a truncated or corrupt data block (found only when read) names the file."""
    try:
        return read(img.dataobj)
    except Exception as e:  # gzip/zlib/nibabel raise several types
        raise ConversionError(f"cannot read the voxels of {path} ({type(e).__name__}: {e}); the file may be "
                              f"truncated: re-download it") from e


def load_volume(ref: VolumeRef) -> tuple[np.ndarray, nib.Nifti1Image]:
    """Read ``ref`` as a 3D array (X, Y, Z) plus a header/affine for it.

    For a 4D file (X, Y, Z, T) the frame is taken and the header is turned into a 3D one: same
    affine, qform/sform codes and units, spatial zooms only (the time step is dropped).
    """
    img = _load(ref.path)
    if ref.frame is None:
        if img.ndim != 3:
            raise ConversionError(f"{ref.path}: expected a 3D volume, got shape {img.shape}")
        data = _read_data(img, ref.path, lambda dataobj: np.asanyarray(dataobj))
    else:
        if img.ndim != 4:
            raise ConversionError(f"{ref.path}: expected a 4D cine (X, Y, Z, T) to take frame "
                                  f"{ref.frame} from, got shape {img.shape}")
        n = img.shape[3]
        if not 0 <= ref.frame < n:
            raise ConversionError(f"{ref.path}: frame index {ref.frame} is outside 0..{n - 1} "
                                  f"(the file has {n} frames); check the ED/ES columns of the metadata")
        data = _read_data(img, ref.path, lambda dataobj: np.asanyarray(dataobj[..., ref.frame]))
    return data, img


def _header_for(src: nib.Nifti1Image, data: np.ndarray) -> nib.Nifti1Header:
    hdr = src.header.copy()
    hdr.set_data_shape(data.shape)  # also trims pixdim to the spatial zooms
    hdr.set_data_dtype(data.dtype)
    return hdr


def check_image_values(data: np.ndarray, where: str) -> None:
    """A ConversionError naming ``where`` for non-numeric voxels or NaN/Inf."""
    if not np.issubdtype(data.dtype, np.number):
        raise ConversionError(f"{where}: non-numeric voxel type {data.dtype}")
    if np.issubdtype(data.dtype, np.floating) and not np.all(np.isfinite(data)):
        raise ConversionError(f"{where}: image contains NaN or Inf")


def save_image(ref: VolumeRef, out: Path) -> tuple[int, ...]:
    """Write the image volume of ``ref`` to ``out``; returns its shape."""
    data, src = load_volume(ref)
    check_image_values(data, ref.describe())
    if data.dtype == np.float64:
        data = data.astype(np.float32)  # halves the size; cine MRI has no float64 precision
    nib.save(nib.Nifti1Image(data, src.affine, _header_for(src, data)), str(out))
    return tuple(data.shape)


def remap_labels(data: np.ndarray, mapping: Mapping[int, int], where: str) -> np.ndarray:
    """Map integer label values through ``mapping`` (source -> ACDC) into uint8.

    Raises if the volume holds non-integer values or values missing from ``mapping``.
    """
    rounded = np.rint(data)
    if not np.array_equal(rounded, data):
        raise ConversionError(f"{where}: label volume holds non-integer values")
    values = set(np.unique(rounded).astype(int).tolist())
    unknown = sorted(values - set(mapping))
    if unknown:
        raise ConversionError(f"{where}: unexpected label values {unknown}; expected a subset of "
                              f"{sorted(mapping)}")
    lut = np.zeros(max(mapping) + 1, dtype=np.uint8)
    for src, dst in mapping.items():
        lut[src] = dst
    return lut[rounded.astype(np.int64)]


def save_label(ref: VolumeRef, out: Path, mapping: Mapping[int, int], image_shape: tuple[int, ...]) -> None:
    """Write the remapped label volume of ``ref`` to ``out`` (uint8, its own header/affine)."""
    data, src = load_volume(ref)
    if tuple(data.shape) != tuple(image_shape):
        raise ConversionError(f"{ref.describe()}: label shape {tuple(data.shape)} differs from the "
                              f"image shape {tuple(image_shape)}")
    lab = remap_labels(data, mapping, ref.describe())
    hdr = _header_for(src, lab)
    hdr.set_slope_inter(1.0, 0.0)
    nib.save(nib.Nifti1Image(lab, src.affine, hdr), str(out))


def require_file(path: Path, what: str) -> Path:
    """``path`` if it is a file, else a ConversionError naming it and ``what`` it should be."""
    if not path.is_file():
        raise ConversionError(f"missing {what}: {path}")
    return path


def read_metadata_csv(path: Path, what: str, required: Sequence[str]) -> list[tuple[int, dict[str, str]]]:
    """Rows of a dataset's metadata CSV as ``(line number, {column: stripped value})``.

    Raises :class:`ConversionError` naming the file when it is missing or lacks a ``required`` column.
    """
    import csv

    require_file(path, what)
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            header = [h.strip() for h in (reader.fieldnames or [])]
            missing = [c for c in required if c not in header]
            if missing:
                raise ConversionError(f"{path}: missing column(s) {missing}; found {header}")
            rows = list(reader)
    except UnicodeDecodeError as e:
        raise ConversionError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start}); save the {what} as UTF-8 "
                              f"(the release's own file is)") from None
    return [(n, {(k or "").strip(): (v or "").strip() for k, v in row.items()}) for n, row in enumerate(rows, 2)]


def read_text_file(path: Path, what: str) -> str:
    """The text of a dataset's metadata file, read as UTF-8; :class:`ConversionError` naming it otherwise."""
    try:
        return Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ConversionError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start}); save the {what} as UTF-8 "
                              f"(the release's own file is)") from None


def optional_fields(row: Mapping[str, str], columns: Mapping[str, str], numeric: Iterable[str]) -> dict:
    """``{key: value}`` for the non-empty ``columns`` (CSV column -> key) of a metadata row; keys in
    ``numeric`` become floats when they parse (a non-number is kept as text: metadata, not data)."""
    out: dict = {}
    numeric = set(numeric)
    for col, key in columns.items():
        value = row.get(col, "")
        if value == "":
            continue
        if key in numeric:
            try:
                value = float(value)
            except ValueError:
                pass
        out[key] = value
    return out


def parse_number_ranges(text: str, what: str, prefix: str = "") -> list[int]:
    """``"1-160,200"`` -> [1, ..., 160, 200] in the given order, without repeats; ``prefix`` (e.g.
    "Case") may precede each number. A ConversionError names ``what`` and the part it cannot read."""
    out: list[int] = []
    seen: set[int] = set()
    pre = f"(?:{re.escape(prefix)})?" if prefix else ""
    for part in filter(None, (p.strip() for p in str(text).split(","))):
        m = re.fullmatch(rf"{pre}(\d+)(?:\s*-\s*{pre}(\d+))?", part)
        if not m:
            raise ConversionError(f"bad {what} {part!r} in {text!r}; use e.g. '1-160' or '1-10,15'")
        lo, hi = int(m.group(1)), int(m.group(2) or m.group(1))
        if hi < lo:
            raise ConversionError(f"bad {what} {part!r} in {text!r}: end before start")
        for n in range(lo, hi + 1):
            if n not in seen:
                seen.add(n)
                out.append(n)
    if not out:
        raise ConversionError(f"empty {what} {text!r}")
    return out


def require_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise ConversionError(f"missing {what}: folder {path} does not exist")
    return path


def subject_dirs(folder: Path) -> list[Path]:
    """Sorted sub-folders of ``folder`` (hidden ones skipped)."""
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def safe_group_name(value: str) -> str:
    """Folder-safe form of a metadata value (e.g. "Philips Medical Systems" -> "PhilipsMedicalSystems")."""
    name = re.sub(r"[^A-Za-z0-9]+", "", str(value))
    if not name:
        raise ConversionError(f"metadata value {value!r} gives an empty folder name")
    return name


# ----------------------------------------------------------------------------- splits

def patient_level_splits(case_to_patient: Mapping[str, str], seed: int = DEFAULT_SEED,
                         n_folds: int = N_FOLDS) -> list[dict[str, list[str]]]:
    """nnU-Net ``splits_final.json`` content with all cases of a patient in the same fold.

    The folds are drawn over patients with nnU-Net's own ``generate_crossval_split`` (sklearn
    KFold, shuffled, ``seed``) and expanded to the patients' cases; deterministic for a seed.
    """
    from nnunetv2.utilities.crossval_split import generate_crossval_split

    patients = sorted(set(case_to_patient.values()))
    if len(patients) < n_folds:
        raise ConversionError(f"{n_folds}-fold patient-level splits need at least {n_folds} training "
                              f"patients, found {len(patients)}")
    by_patient: dict[str, list[str]] = {}
    for case, patient in sorted(case_to_patient.items()):
        by_patient.setdefault(patient, []).append(case)
    splits = []
    for fold in generate_crossval_split(patients, seed=seed, n_splits=n_folds):
        splits.append({key: sorted(c for p in fold[key] for c in by_patient[str(p)])
                       for key in ("train", "val")})
    return splits


# ----------------------------------------------------------------------------- the write

def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)  # same file system (staging folder): no extra disk space
    except OSError:
        shutil.copyfile(src, dst)


#: the dataset's own copy of its splits, inside the raw folder: it is put in place with the dataset (one
#: rename) and is the truth of which ``$nnUNet_preprocessed/.../splits_final.json`` is a copy
DATASET_SPLITS_NAME = "splits_final.json"


def publish_splits(dataset_dir: Path, splits_file: Path) -> None:
    """Copy the dataset's own splits (``dataset_dir/splits_final.json``) to ``splits_file`` where it is missing
    or differs: a conversion killed between putting the dataset in place and the copy is completed by the next
    run, so new cases never meet old splits."""
    own = Path(dataset_dir) / DATASET_SPLITS_NAME
    if not own.is_file():
        return
    splits = json.loads(own.read_text())
    if not splits_file.is_file() or json.loads(splits_file.read_text()) != splits:
        atomic_write_json(splits_file, splits)


def check_outputs(dataset_id: int, name: str, overwrite: bool) -> tuple[Path, Path]:
    """Target raw folder and splits file; raises before any work if they exist and not ``overwrite``."""
    full = dataset_name(dataset_id, name)
    raw = nnunet_folder("nnUNet_raw")
    pre = nnunet_folder("nnUNet_preprocessed")
    for folder in (raw, pre):
        clash = _clashing_ids(folder, dataset_id, full)
        if clash:
            raise ConversionError(f"dataset ID {dataset_id} is already used by {clash} in {folder}; "
                                  f"nnU-Net needs unique IDs, choose another -d")
    target, splits = raw / full, pre / full / "splits_final.json"
    recover_staged(target)  # a conversion killed while swapping folders: put the old dataset back first
    publish_splits(target, splits)  # one killed after the swap: its splits follow the dataset now in place
    if not overwrite:
        for p in (target, splits):
            if p.exists():
                raise ConversionError(f"{p} already exists; pass --overwrite to replace it")
    return target, splits


def write_dataset(specs: Sequence[CaseSpec], dataset_id: int, name: str, *, label_map: Mapping[int, int],
                  metadata: dict, overwrite: bool = False, seed: int = DEFAULT_SEED,
                  group_by: Iterable[tuple[str, Callable[[str], str]]] = (),
                  progress: bool = True) -> ConversionResult:
    """Write ``specs`` as ``$nnUNet_raw/DatasetNNN_Name`` plus splits (see module docstring).

    ``label_map`` maps source label values to :data:`ACDC_LABELS`. ``group_by`` lists
    ``(metadata_key, folder_suffix_fn)``: for each, the labeled test cases are also linked into
    ``imagesTs_<suffix>``/``labelsTs_<suffix>`` per value of that metadata key, so that each
    vendor/centre can be evaluated as its own domain.
    """
    from tqdm import tqdm
    from nnunetv2.dataset_conversion.generate_dataset_json import generate_dataset_json
    from nnunetv2_physaug import __version__

    target, splits_file = check_outputs(dataset_id, name, overwrite)
    ids = [s.case_id for s in specs]
    dupes = sorted({c for c in ids if ids.count(c) > 1})
    if dupes:
        raise ConversionError(f"duplicate case identifiers {dupes[:5]} (e.g. ED and ES on the same frame)")
    train = [s for s in specs if s.subset == "train"]
    test = [s for s in specs if s.subset == "test"]
    if not train:
        raise ConversionError("no labeled training cases found in the source folder")
    if any(s.label is None for s in train):
        raise ConversionError("internal: a training case without label")
    splits = patient_level_splits({s.case_id: s.patient for s in train}, seed=seed)
    group_by = list(group_by)

    with staged_folder(target) as staging:
        for sub in ("imagesTr", "labelsTr") + (("imagesTs",) if test else ()):
            (staging / sub).mkdir()
        if any(s.label is not None for s in test):
            (staging / "labelsTs").mkdir()
        groups: dict[str, tuple[Path, Path]] = {}
        for spec in tqdm(specs, desc=f"{target.name}", unit="case", disable=not progress):
            img_dir, lab_dir = ("imagesTr", "labelsTr") if spec.subset == "train" else ("imagesTs", "labelsTs")
            img_out = staging / img_dir / f"{spec.case_id}_0000{FILE_ENDING}"
            shape = save_image(spec.image, img_out)
            if spec.label is None:
                continue
            lab_out = staging / lab_dir / f"{spec.case_id}{FILE_ENDING}"
            save_label(spec.label, lab_out, label_map, shape)
            if spec.subset != "test":
                continue
            for key, suffix_fn in group_by:
                suffix = suffix_fn(str(spec.metadata[key]))
                gi, gl = staging / f"imagesTs_{suffix}", staging / f"labelsTs_{suffix}"
                gi.mkdir(exist_ok=True)
                gl.mkdir(exist_ok=True)
                _link_or_copy(img_out, gi / img_out.name)
                _link_or_copy(lab_out, gl / lab_out.name)
                groups[suffix] = (gi.name, gl.name)

        meta = dict(metadata)
        meta.update({
            "converter_version": __version__,
            "label_convention": LABEL_CONVENTION,
            "label_map_source_to_acdc": {str(k): int(v) for k, v in sorted(label_map.items())},
            "splits": {"level": "patient", "n_folds": N_FOLDS, "seed": seed,
                       "file": "$nnUNet_preprocessed/" + target.name + "/splits_final.json"},
            "test_domains": {suffix: {"images": gi, "labels": gl,
                                      "n_cases": len(list((staging / gl).iterdir()))}
                             for suffix, (gi, gl) in sorted(groups.items())},
            "cases": {s.case_id: dict(s.metadata, patient=s.patient, subset=s.subset,
                                      labeled=s.label is not None) for s in specs},
        })
        generate_dataset_json(str(staging), channel_names=dict(CHANNEL_NAMES), labels=dict(ACDC_LABELS),
                              num_training_cases=len(train), file_ending=FILE_ENDING,
                              dataset_name=target.name, converted_by="nnunetv2_physaug.conversion",
                              **{METADATA_KEY: meta})
        atomic_write_json(staging / DATASET_SPLITS_NAME, splits)  # put in place with the dataset
    publish_splits(target, splits_file)
    return ConversionResult(dataset_dir=target, splits_file=splits_file, n_train=len(train), n_test=len(test),
                            n_test_labeled=sum(s.label is not None for s in test),
                            group_dirs={k: (target / a, target / b) for k, (a, b) in groups.items()})


# ----------------------------------------------------------------------------- CLI helpers

class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    pass


def make_parser(description: str, default_id: int) -> argparse.ArgumentParser:
    """Argument parser with the options every converter shares (-i, -d, --overwrite, --seed)."""
    p = argparse.ArgumentParser(description=description, formatter_class=_HelpFormatter)
    p.add_argument("-i", "--input", required=True, type=Path, metavar="SOURCE", default=argparse.SUPPRESS,
                   help="root folder of the downloaded dataset (layout below)")
    p.add_argument("-d", "--dataset-id", type=int, default=default_id, metavar="ID",
                   help="nnU-Net dataset ID (3 digits, must not clash with an existing dataset)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing $nnUNet_raw/DatasetNNN_* folder and splits_final.json")
    p.add_argument("--seed", type=seed_type, default=DEFAULT_SEED, help="seed of the patient-level 5-fold split")
    add_quiet(p, "progress bar")
    return p


def run_cli(fn: Callable[[], ConversionResult], prog: str = "converter") -> int:
    """Run a conversion and print a summary; a ConversionError (or an unwritable output disk) is one line
    ``<prog>: error: ...`` on stderr and exit code 1 (the command-line contract, :mod:`..cli.contract`)."""
    try:
        res = fn()
    except ConversionError as e:
        print(f"{prog}: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 1
    except OSError as e:
        from ..fileio import describe_os_error
        print(f"{prog}: error: {describe_os_error(e, 'nnU-Net raw folder')}; nothing was put in place", file=sys.stderr)
        return 1
    print(f"wrote {res.dataset_dir}: {res.n_train} training cases, {res.n_test} test cases "
          f"({res.n_test_labeled} with labels)")
    for suffix, (gi, gl) in sorted(res.group_dirs.items()):
        print(f"  test domain {suffix}: {gi.name} / {gl.name}")
    print(f"patient-level 5-fold splits: {res.splits_file}")
    return 0
