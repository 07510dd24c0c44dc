"""M&Ms-2 (multi-disease, multi-view) -> nnU-Net raw dataset in the ACDC label convention.

Every subject folder ``dataset/<id>/`` holds 3D ED and ES volumes with labels for the short axis
(``<id>_SA_ED.nii.gz``, ``<id>_SA_ED_gt.nii.gz``, ``<id>_SA_ES...``) and the long axis
(``<id>_LA_...``, one slice). Cases are ``<id>_SA_ED`` and ``<id>_SA_ES`` (plus ``<id>_LA_ED`` and
``<id>_LA_ES`` with ``long_axis``). M&Ms-2 labels 1 = LV cavity, 2 = MYO, 3 = RV become ACDC labels
(1 <-> 3 swapped).

The public release has no split column, so subjects are assigned by code: ``train_subjects``
(default 1-160, the challenge's training subjects) -> imagesTr/labelsTr with patient-level splits
(all views/phases of a subject in one fold); the rest -> imagesTs/labelsTs. Disease, sex, age,
vendor, scanner and field strength go to dataset.json ("physaug_metadata"); ``by_vendor`` also
links the test cases into ``imagesTs_<Vendor>``/``labelsTs_<Vendor>``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable

from .common import (parse_number_ranges, optional_fields, read_metadata_csv, MNMS_TO_ACDC, CaseSpec, ConversionError, ConversionResult, DEFAULT_SEED, VolumeRef,
                     require_dir, require_file, safe_group_name, subject_dirs, write_dataset)

NAME = "MNMs2"
DEFAULT_ID = 912
CSV_NAME = "dataset_information.csv"
REQUIRED_COLUMNS = ("SUBJECT_CODE", "VENDOR")
OPTIONAL_COLUMNS = {"DISEASE": "disease", "SEX": "sex", "AGE": "age", "SCANNER": "scanner",
                    "FIELD": "field_T"}
DEFAULT_TRAIN_SUBJECTS = "1-160"

SOURCE_LAYOUT = f"""\
expected source layout (the M&Ms-2 download):
  SOURCE/{CSV_NAME}       columns: SUBJECT_CODE, DISEASE, SEX, AGE, VENDOR, SCANNER, FIELD
  SOURCE/dataset/001/001_SA_ED.nii.gz, 001_SA_ED_gt.nii.gz, 001_SA_ES.nii.gz, 001_SA_ES_gt.nii.gz
  SOURCE/dataset/001/001_LA_ED.nii.gz, 001_LA_ED_gt.nii.gz, ... (used with --long-axis)
  SOURCE/dataset/001/001_SA_CINE.nii.gz, 001_LA_CINE.nii.gz  (not used)
  labels: 1 LV, 2 MYO, 3 RV (remapped to ACDC 1 RV, 2 MYO, 3 LV)

output: $nnUNet_raw/DatasetNNN_MNMs2/{{imagesTr,labelsTr,imagesTs,labelsTs}}/<id>_SA_ED[_0000].nii.gz ...;
subjects in --train-subjects go to imagesTr (patient-level 5-fold splits in
$nnUNet_preprocessed/DatasetNNN_MNMs2/splits_final.json), the others to imagesTs/labelsTs;
per-case disease/vendor/scanner/field in dataset.json under "physaug_metadata"."""


def parse_subject_ranges(text: str) -> set[int]:
    """``"1-160,200"`` -> {1, ..., 160, 200}."""
    return set(parse_number_ranges(text, "subject range"))


def read_info_csv(path: Path) -> dict[int, dict]:
    """Parse ``dataset_information.csv`` into ``{subject_number: {"vendor", "disease", ...}}``.

    Blank rows (spreadsheet padding, present in the release) are skipped.
    """
    info: dict[int, dict] = {}
    for n, row in read_metadata_csv(path, "M&Ms-2 information CSV", REQUIRED_COLUMNS):
        if not row["SUBJECT_CODE"]:
            continue
        try:
            code = int(float(row["SUBJECT_CODE"]))
        except ValueError:
            raise ConversionError(f"{path}:{n}: SUBJECT_CODE {row['SUBJECT_CODE']!r} is not a number") from None
        entry: dict = {"vendor": row["VENDOR"]}
        entry.update(optional_fields(row, OPTIONAL_COLUMNS, numeric=("age", "field_T")))
        if code in info:
            raise ConversionError(f"{path}:{n}: duplicate SUBJECT_CODE {code}")
        info[code] = entry
    return info


def collect_mnms2(source: Path, train_subjects: Iterable[int], long_axis: bool = False) -> list[CaseSpec]:
    """Case list of an M&Ms-2 source tree (raises on missing folders/files/rows before writing)."""
    source = Path(source)
    require_dir(source, "M&Ms-2 source folder")
    info = read_info_csv(source / CSV_NAME)
    root = require_dir(source / "dataset", "M&Ms-2 'dataset' folder (see --help for the layout)")
    train_set = set(train_subjects)
    views = ("SA", "LA") if long_axis else ("SA",)
    specs: list[CaseSpec] = []
    for sdir in subject_dirs(root):
        sid = sdir.name
        if not sid.isdigit():
            raise ConversionError(f"{sdir}: subject folders must be numbered (e.g. 001)")
        number = int(sid)
        if number not in info:
            raise ConversionError(f"{sdir}: no row with SUBJECT_CODE {number} in {source / CSV_NAME}")
        subset = "train" if number in train_set else "test"
        for view in views:
            for phase in ("ED", "ES"):
                stem = f"{sid}_{view}_{phase}"
                image = require_file(sdir / f"{stem}.nii.gz", f"{view} {phase} image")
                gt = require_file(sdir / f"{stem}_gt.nii.gz", f"{view} {phase} label")
                specs.append(CaseSpec(case_id=stem, patient=sid, subset=subset, image=VolumeRef(image),
                                      label=VolumeRef(gt),
                                      metadata=dict(info[number], view=view, phase=phase)))
    return specs


def convert_mnms2(source: Path, dataset_id: int = DEFAULT_ID, *, overwrite: bool = False,
                  seed: int = DEFAULT_SEED, long_axis: bool = False,
                  train_subjects: str = DEFAULT_TRAIN_SUBJECTS, by_vendor: bool = False,
                  progress: bool = True) -> ConversionResult:
    """Convert the M&Ms-2 tree at ``source`` into ``$nnUNet_raw/DatasetNNN_MNMs2`` (+ splits)."""
    specs = collect_mnms2(source, parse_subject_ranges(train_subjects), long_axis=long_axis)
    groups = [("vendor", safe_group_name)] if by_vendor else []
    return write_dataset(specs, dataset_id, NAME, label_map=MNMS_TO_ACDC, overwrite=overwrite, seed=seed,
                         group_by=groups, progress=progress,
                         metadata={"source_dataset": "M&Ms-2", "source_folder": str(Path(source).resolve()),
                                   "views": ["SA", "LA"] if long_axis else ["SA"],
                                   "train_subjects": train_subjects})
