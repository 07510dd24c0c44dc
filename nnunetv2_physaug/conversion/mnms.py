"""M&Ms (M&Ms-1, multi-centre multi-vendor) -> nnU-Net raw dataset in the ACDC label convention.

The source holds 4D cines ``<code>_sa.nii.gz`` (X, Y, Z, T) and 4D labels ``<code>_sa_gt.nii.gz``
labeled only at ED and ES. The ED and ES frame indices (0-based array indices) come from the
information CSV; each is written as a 3D case ``<code>_frameXX`` (XX = that 0-based index) with
the cine's affine. M&Ms labels 1 = LV cavity, 2 = MYO, 3 = RV become ACDC labels (1 <-> 3 swapped).

Training/Labeled -> imagesTr/labelsTr (patient-level 5-fold splits). Validation and Testing ->
imagesTs (+ labelsTs where ``_sa_gt`` exists). Training/Unlabeled has no labels and is skipped.
Vendor, vendor name, centre, pathology, age, sex, height and weight of every case go to dataset.json
(key "physaug_metadata"); ``by_vendor`` / ``by_centre`` also link the labeled test cases into
``imagesTs_<Vendor>``/``labelsTs_<Vendor>`` and ``imagesTs_centre<N>``/``labelsTs_centre<N>``.
"""
from __future__ import annotations

from pathlib import Path

from .common import (optional_fields, read_metadata_csv, MNMS_TO_ACDC, CaseSpec, ConversionError, ConversionResult, DEFAULT_SEED, VolumeRef,
                     require_dir, require_file, safe_group_name, subject_dirs, write_dataset)

NAME = "MNMs"
DEFAULT_ID = 911
CSV_NAME = "211230_M&Ms_Dataset_information_diagnosis_opendataset.csv"
REQUIRED_COLUMNS = ("External code", "Vendor", "Centre", "ED", "ES")
#: CSV column -> metadata key (optional columns; copied when present).
OPTIONAL_COLUMNS = {"VendorName": "vendor_name", "Pathology": "pathology", "Age": "age", "Sex": "sex",
                    "Height": "height_cm", "Weight": "weight_kg"}
#: source sub-folder -> (subset, metadata split name, labels required)
SOURCE_SPLITS = ((("Training", "Labeled"), "train", "training", True),
                 (("Validation",), "test", "validation", False),
                 (("Testing",), "test", "testing", False))

SOURCE_LAYOUT = f"""\
expected source layout (the M&Ms OpenDataset download):
  SOURCE/{CSV_NAME}
      columns: External code, VendorName, Vendor, Centre, ED, ES, Pathology, Age, Sex, Height, Weight
      (ED/ES are 0-based frame indices into the 4D files)
  SOURCE/Training/Labeled/<code>/<code>_sa.nii.gz      4D cine (X, Y, Z, T)
  SOURCE/Training/Labeled/<code>/<code>_sa_gt.nii.gz   4D labels (1 LV, 2 MYO, 3 RV; only ED/ES labeled)
  SOURCE/Training/Unlabeled/<code>/...                 (skipped: no labels)
  SOURCE/Validation/<code>/..., SOURCE/Testing/<code>/...   -> imagesTs (+ labelsTs if _sa_gt exists)

output: $nnUNet_raw/DatasetNNN_MNMs/{{imagesTr,labelsTr,imagesTs,labelsTs}}/<code>_frameXX[_0000].nii.gz,
3D ED/ES frames, labels remapped to ACDC (1 RV, 2 MYO, 3 LV); per-case vendor/centre/split in dataset.json
under "physaug_metadata"; patient-level 5-fold splits in $nnUNet_preprocessed/DatasetNNN_MNMs/splits_final.json.
Note: some Validation/Testing headers have non-orthonormal direction cosines, which SimpleITK (nnU-Net's
default reader) rejects; read those test images with nnU-Net's NibabelIO."""


def read_info_csv(path: Path) -> dict[str, dict]:
    """Parse the M&Ms information CSV into ``{code: {"vendor", "centre", "ed_frame", "es_frame", ...}}``."""
    info: dict[str, dict] = {}
    for n, row in read_metadata_csv(path, "M&Ms information CSV", REQUIRED_COLUMNS):
        code = row["External code"]
        if not code:
            continue  # spreadsheet padding
        try:
            entry = {"vendor": row["Vendor"], "centre": int(float(row["Centre"])),
                     "ed_frame": int(float(row["ED"])), "es_frame": int(float(row["ES"]))}
        except ValueError:
            raise ConversionError(f"{path}:{n} ({code}): Centre, ED and ES must be numbers, got "
                                  f"{row['Centre']!r}, {row['ED']!r}, {row['ES']!r}") from None
        entry.update(optional_fields(row, OPTIONAL_COLUMNS, numeric=("age", "height_cm", "weight_kg")))
        if code in info:
            raise ConversionError(f"{path}:{n}: duplicate External code {code}")
        info[code] = entry
    return info


def collect_mnms(source: Path, csv_name: str = CSV_NAME) -> list[CaseSpec]:
    """Case list of an M&Ms source tree (raises on missing folders/files/rows before writing)."""
    source = Path(source)
    require_dir(source, "M&Ms source folder")
    info = read_info_csv(source / csv_name)
    require_dir(source / "Training" / "Labeled", "M&Ms 'Training/Labeled' folder (see --help for the layout)")
    specs: list[CaseSpec] = []
    for parts, subset, split_name, need_labels in SOURCE_SPLITS:
        root = source.joinpath(*parts)
        if not root.is_dir():
            continue
        for pdir in subject_dirs(root):
            code = pdir.name
            if code not in info:
                raise ConversionError(f"{pdir}: no row with External code {code} in {source / csv_name}")
            meta = info[code]
            if meta["ed_frame"] == meta["es_frame"]:
                raise ConversionError(f"{source / csv_name}: ED and ES of {code} are the same frame")
            image = require_file(pdir / f"{code}_sa.nii.gz", "4D short-axis cine")
            gt = pdir / f"{code}_sa_gt.nii.gz"
            if need_labels:
                require_file(gt, "4D short-axis labels")
            has_gt = gt.is_file()
            for phase, frame in (("ED", meta["ed_frame"]), ("ES", meta["es_frame"])):
                specs.append(CaseSpec(
                    case_id=f"{code}_frame{frame:02d}", patient=code, subset=subset,
                    image=VolumeRef(image, frame), label=VolumeRef(gt, frame) if has_gt else None,
                    metadata=dict(meta, phase=phase, frame=frame, source_split=split_name)))
    return specs


def convert_mnms(source: Path, dataset_id: int = DEFAULT_ID, *, overwrite: bool = False,
                 seed: int = DEFAULT_SEED, by_vendor: bool = False, by_centre: bool = False,
                 csv_name: str = CSV_NAME, progress: bool = True) -> ConversionResult:
    """Convert the M&Ms tree at ``source`` into ``$nnUNet_raw/DatasetNNN_MNMs`` (+ splits)."""
    specs = collect_mnms(source, csv_name)
    groups = []
    if by_vendor:
        groups.append(("vendor", safe_group_name))
    if by_centre:
        groups.append(("centre", lambda v: "centre" + safe_group_name(v)))
    n_unlabeled = (len(subject_dirs(Path(source) / "Training" / "Unlabeled"))
                   if (Path(source) / "Training" / "Unlabeled").is_dir() else 0)
    return write_dataset(specs, dataset_id, NAME, label_map=MNMS_TO_ACDC, overwrite=overwrite, seed=seed,
                         group_by=groups, progress=progress,
                         metadata={"source_dataset": "M&Ms", "source_folder": str(Path(source).resolve()),
                                   "frame_numbering": "0-based array index into the 4D cine, as in the CSV",
                                   "skipped": {"Training/Unlabeled": n_unlabeled}})
