"""ACDC (Automated Cardiac Diagnosis Challenge) -> nnU-Net raw dataset.

Cases are the labeled ED and ES frames, named ``patientXXX_frameYY`` after the source files
(YY = the 1-based frame number of Info.cfg). Labels are already in the ACDC convention.
Training patients go to imagesTr/labelsTr with patient-level 5-fold splits; testing patients go to
imagesTs (plus labelsTs where ``*_gt`` files exist, as in the final public release).
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from .common import (IDENTITY_LABELS, CaseSpec, ConversionError, ConversionResult, DEFAULT_SEED, VolumeRef,
                     read_text_file, require_dir, require_file, subject_dirs, write_dataset)

NAME = "ACDC"
DEFAULT_ID = 910

SOURCE_LAYOUT = """\
expected source layout (the ACDC download, or its `database/` folder):
  SOURCE/training/patient001/Info.cfg                    ED: 1, ES: 12, Group: DCM, Height, NbFrame, Weight
  SOURCE/training/patient001/patient001_4d.nii.gz        (cine, not used)
  SOURCE/training/patient001/patient001_frame01.nii.gz   ED image (frame number = Info.cfg ED)
  SOURCE/training/patient001/patient001_frame01_gt.nii.gz
  SOURCE/training/patient001/patient001_frame12.nii.gz   ES image (frame number = Info.cfg ES)
  SOURCE/training/patient001/patient001_frame12_gt.nii.gz
  SOURCE/testing/patient101/...                          same; *_gt files optional (-> labelsTs)

output: $nnUNet_raw/DatasetNNN_ACDC/{imagesTr,labelsTr,imagesTs,labelsTs}/patientXXX_frameYY[_0000].nii.gz,
dataset.json (labels 1 RV, 2 MYO, 3 LV; per-case group/ED/ES under "physaug_metadata"),
$nnUNet_preprocessed/DatasetNNN_ACDC/splits_final.json (5 folds, both frames of a patient in one fold)."""

_INT_KEYS = {"ED": "ed_frame", "ES": "es_frame", "NbFrame": "n_frames"}
_FLOAT_KEYS = {"Height": "height_cm", "Weight": "weight_kg"}


def read_info_cfg(path: Path) -> dict:
    """Parse an ACDC ``Info.cfg`` (``Key: value`` lines) into
    ``{"ed_frame", "es_frame", "group", "n_frames", "height_cm", "weight_kg"}`` (present keys only;
    ED and ES are required, 1-based frame numbers)."""
    require_file(path, "ACDC patient info file Info.cfg")
    raw: dict[str, str] = {}
    for n, line in enumerate(read_text_file(path, "ACDC patient info file Info.cfg").splitlines(), 1):
        if not line.strip():
            continue
        if ":" not in line:
            raise ConversionError(f"{path}:{n}: expected 'Key: value', got {line!r}")
        k, v = line.split(":", 1)
        raw[k.strip()] = v.strip()
    for key in ("ED", "ES"):
        if key not in raw:
            raise ConversionError(f"{path}: missing the '{key}:' line (frame number of {key})")
    info: dict = {}
    try:
        for k, out in _INT_KEYS.items():
            if k in raw:
                value = float(raw[k])
                if not value.is_integer() or value < 1:
                    raise ConversionError(f"{path}: '{k}: {raw[k]}' is not a frame number (a whole number >= 1); "
                                          f"fix the file")
                info[out] = int(value)
        for k, out in _FLOAT_KEYS.items():
            if k in raw:
                info[out] = float(raw[k])
    except ValueError as e:
        raise ConversionError(f"{path}: non-numeric value ({e})") from None
    if "Group" in raw:
        info["group"] = raw["Group"]
    if info["ed_frame"] == info["es_frame"]:
        raise ConversionError(f"{path}: ED and ES are the same frame ({info['ed_frame']})")
    return info


def _patient_cases(pdir: Path, subset: str, need_labels: bool) -> list[CaseSpec]:
    info = read_info_cfg(pdir / "Info.cfg")
    specs = []
    for phase, frame in (("ED", info["ed_frame"]), ("ES", info["es_frame"])):
        stem = f"{pdir.name}_frame{frame:02d}"
        image = require_file(pdir / f"{stem}.nii.gz", f"{phase} image (Info.cfg {phase}: {frame})")
        gt: Optional[Path] = pdir / f"{stem}_gt.nii.gz"
        if need_labels:
            require_file(gt, f"{phase} label (Info.cfg {phase}: {frame})")
        elif not gt.is_file():
            gt = None
        meta = dict(info, phase=phase, frame=frame, source_split="training" if subset == "train" else "testing")
        specs.append(CaseSpec(case_id=stem, patient=pdir.name, subset=subset, image=VolumeRef(image),
                              label=VolumeRef(gt) if gt is not None else None, metadata=meta))
    return specs


def collect_acdc(source: Path) -> list[CaseSpec]:
    """Case list of an ACDC source tree (raises on missing folders/files before anything is written)."""
    source = Path(source)
    require_dir(source, "ACDC source folder")
    if not (source / "training").is_dir() and (source / "database" / "training").is_dir():
        source = source / "database"
    train_root = require_dir(source / "training", "ACDC 'training' folder (see --help for the layout)")
    specs: list[CaseSpec] = []
    for pdir in subject_dirs(train_root):
        specs += _patient_cases(pdir, "train", need_labels=True)
    if (source / "testing").is_dir():
        for pdir in subject_dirs(source / "testing"):
            specs += _patient_cases(pdir, "test", need_labels=False)
    return specs


def convert_acdc(source: Path, dataset_id: int = DEFAULT_ID, *, overwrite: bool = False,
                 seed: int = DEFAULT_SEED, progress: bool = True) -> ConversionResult:
    """Convert the ACDC tree at ``source`` into ``$nnUNet_raw/DatasetNNN_ACDC`` (+ splits)."""
    specs = collect_acdc(source)
    return write_dataset(specs, dataset_id, NAME, label_map=IDENTITY_LABELS, overwrite=overwrite, seed=seed,
                         progress=progress,
                         metadata={"source_dataset": "ACDC", "source_folder": str(Path(source).resolve()),
                                   "frame_numbering": "1-based, as in Info.cfg and the file names"})
