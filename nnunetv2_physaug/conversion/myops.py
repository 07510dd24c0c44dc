"""MyoPS 2020 (myocardial pathology segmentation, multi-sequence CMR) -> nnU-Net raw dataset.

Each MyoPS patient has three co-registered short-axis stacks on one grid, bSSFP cine (``_C0``), LGE
(``_LGE``) and T2-weighted black-blood (``_T2``), and one label (``_gd``: 200 normal myocardium,
500 LV blood pool, 600 RV blood pool, 1220 edema, 2221 scar). The converter writes one dataset:

* ``imagesTr/labelsTr``: the bSSFP (C0) stacks of the training patients (default Case3001-3025),
  the only thing a bSSFP-trained segmenter is trained on; patient-level 5-fold ``splits_final.json``;
* ``imagesTr_LGE``, ``imagesTr_T2``: the other sequences of the *training* patients, for
  cross-validated cross-sequence scores (each fold's validation patients, never its training ones);
* ``imagesTs_<SEQ>/labelsTs_<SEQ>`` for SEQ in C0, LGE, T2: the held-out test patients (default
  Case3026-3045), one labelled test set per sequence;
* ``labelsPathologyTr``/``labelsPathologyTs``: the pathology behind the anatomy (1 edema, 2 scar) for
  per-pathology scores.

Anatomy labels follow the ACDC convention of every converter here (600 RV -> 1; 200 myocardium,
1220 edema, 2221 scar -> 2: pathological myocardium is myocardium; 500 LV -> 3).

``crop_mm`` keeps a fixed square of that side around the image centre (never derived from the
labels, so nothing about the test labels leaks into the images; the heart lies within ~45 mm of the
image centre in all 45 patients). ``spacing_mm`` resamples in-plane (cubic for images, linear on the
one-hot labels); both exist for CPU budgets and are recorded in dataset.json.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import nibabel as nib
import numpy as np

from .common import (ACDC_LABELS, CHANNEL_NAMES, DATASET_SPLITS_NAME, DEFAULT_SEED, FILE_ENDING, LABEL_CONVENTION,
                     METADATA_KEY, ConversionError, ConversionResult, VolumeRef, check_image_values, check_outputs,
                     load_volume, parse_number_ranges, patient_level_splits, publish_splits, remap_labels,
                     require_dir)
from ..fileio import atomic_write_json, staged_folder

NAME = "MyoPS"
#: in-plane spacings the converter resamples to (finer asks for huge images: 1e-3 mm would be ~300 GiB)
MIN_SPACING_MM, MAX_SPACING_MM = 0.1, 20.0
DEFAULT_ID = 913
SEQUENCES = ("C0", "LGE", "T2")
#: what each sequence is, for dataset.json and reports
SEQUENCE_NAMES = {"C0": "bSSFP cine", "LGE": "late gadolinium enhancement", "T2": "T2-weighted black-blood"}
TRAINING_SEQUENCE = "C0"
#: MyoPS label value -> ACDC label (pathological myocardium is myocardium)
MYOPS_TO_ACDC: dict[int, int] = {0: 0, 600: 1, 200: 2, 1220: 2, 2221: 2, 500: 3}
#: MyoPS label value -> pathology label (0 none, 1 edema, 2 scar)
MYOPS_TO_PATHOLOGY: dict[int, int] = {0: 0, 600: 0, 200: 0, 500: 0, 1220: 1, 2221: 2}
PATHOLOGY_LABELS: dict[str, int] = {"background": 0, "edema": 1, "scar": 2}
DEFAULT_TRAIN_CASES = tuple(range(3001, 3026))
DEFAULT_TEST_CASES = tuple(range(3026, 3046))
_FILE_RE = re.compile(r"^(Case\d+)_(C0|LGE|T2|gd)\.nii(\.gz)?$")
#: relative tolerance on affines of the files of one patient (they share one grid)
_AFFINE_ATOL_MM = 1e-3

SOURCE_LAYOUT = """\
expected source layout (the MyoPS 2020 training release, e.g. datasets/Competition_Dataset/Train):
  SOURCE/Case3001/Case3001_C0.nii.gz     bSSFP cine (one phase), short-axis stack
  SOURCE/Case3001/Case3001_LGE.nii.gz    LGE, same grid
  SOURCE/Case3001/Case3001_T2.nii.gz     T2-weighted black-blood, same grid
  SOURCE/Case3001/Case3001_gd.nii.gz     labels: 200 myocardium, 500 LV, 600 RV, 1220 edema, 2221 scar
  ... or all files in SOURCE itself.

output: $nnUNet_raw/DatasetNNN_MyoPS/
  imagesTr, labelsTr          C0 of the training patients (ACDC labels 1 RV, 2 MYO incl. edema/scar, 3 LV)
  imagesTr_LGE, imagesTr_T2   other sequences of the training patients (cross-validation tests)
  labelsPathologyTr           1 edema, 2 scar of the training patients
  imagesTs_C0/LGE/T2, labelsTs_C0/LGE/T2, labelsPathologyTs   the test patients
$nnUNet_preprocessed/DatasetNNN_MyoPS/splits_final.json (patient-level 5 folds of the training patients)."""


@dataclass(frozen=True)
class MyoPSCase:
    """The four files of one patient."""

    case_id: str
    files: dict[str, Path]  # "C0", "LGE", "T2", "gd" -> path


def parse_case_range(text: str) -> tuple[int, ...]:
    """``"3001-3025"`` or ``"3001,3003,3010-3012"`` (``Case`` prefixes allowed) -> case numbers in the
    given order, no duplicates."""
    return tuple(parse_number_ranges(text, "case list", prefix="Case"))


def find_cases(source: Path) -> dict[str, MyoPSCase]:
    """Every ``CaseNNNN`` with its four files, from ``source`` or its direct sub-folders."""
    source = require_dir(Path(source), "MyoPS source folder")
    found: dict[str, dict[str, Path]] = {}
    candidates = [p for p in source.iterdir() if p.is_file()]
    for sub in sorted(p for p in source.iterdir() if p.is_dir() and not p.name.startswith(".")):
        candidates += [p for p in sub.iterdir() if p.is_file()]
    for path in sorted(candidates):
        m = _FILE_RE.match(path.name)
        if not m:
            continue
        case, kind = m.group(1), m.group(2)
        if kind in found.setdefault(case, {}):
            raise ConversionError(f"two files for {case}_{kind}: {found[case][kind]} and {path}; keep one")
        found[case][kind] = path
    if not found:
        raise ConversionError(f"no MyoPS files (CaseNNNN_C0/LGE/T2/gd.nii.gz) in {source} or its sub-folders; "
                              f"see --help for the layout")
    return {case: MyoPSCase(case, files) for case, files in sorted(found.items())}


def select_cases(cases: dict[str, MyoPSCase], numbers: Sequence[int], what: str) -> list[MyoPSCase]:
    """The cases ``numbers`` with all four files; a clear error names what is missing."""
    out = []
    for n in numbers:
        cid = f"Case{n}"
        if cid not in cases:
            raise ConversionError(f"{what} case {cid} is not in the source folder (found {len(cases)} cases: "
                                  f"{min(cases)} ... {max(cases)}); pass other case numbers")
        missing = [k for k in (*SEQUENCES, "gd") if k not in cases[cid].files]
        if missing:
            some = next(iter(cases[cid].files.values()))
            raise ConversionError(f"{cid}: missing {', '.join(f'{cid}_{k}.nii.gz' for k in missing)} "
                                  f"(beside {some})")
        out.append(cases[cid])
    return out


# ----------------------------------------------------------------------------- geometry

def _read(path: Path) -> tuple[np.ndarray, nib.Nifti1Image]:
    """A 3D MyoPS volume and its image, through the converters' shared loader and value checks."""
    data, img = load_volume(VolumeRef(path))
    check_image_values(data, str(path))
    return data, img


def crop_box(shape: Sequence[int], zooms: Sequence[float], crop_mm: float) -> tuple[slice, slice, tuple[int, int]]:
    """In-plane index window of side ``crop_mm`` (mm) centred on the image centre, and the padding
    (before) needed on axes 0 and 1 when the image is smaller than the window.

    Returns ``(slice0, slice1, (pad0, pad1))`` over the *padded* array; the window size in voxels is
    ``round(crop_mm / zoom)`` per axis.
    """
    slices, pads = [], []
    for n, z in zip(shape[:2], zooms[:2]):
        size = int(round(crop_mm / float(z)))
        start = (n - size) // 2
        pad = max(0, -start)
        slices.append(slice(start + pad, start + pad + size))
        pads.append(pad)
    return slices[0], slices[1], (pads[0], pads[1])


def crop_volume(data: np.ndarray, affine: np.ndarray, zooms: Sequence[float], crop_mm: float
                ) -> tuple[np.ndarray, np.ndarray]:
    """Fixed in-plane square of ``crop_mm`` around the image centre (zero-padded where the image is
    smaller); the affine is shifted so every kept voxel keeps its world position."""
    s0, s1, (p0, p1) = crop_box(data.shape, zooms, crop_mm)
    need0, need1 = s0.stop - data.shape[0] - p0, s1.stop - data.shape[1] - p1
    padded = np.pad(data, ((p0, max(0, need0)), (p1, max(0, need1)), (0, 0)))
    out = padded[s0, s1]
    shift = np.array([s0.start - p0, s1.start - p1, 0, 1], dtype=float)
    new_affine = affine.copy()
    new_affine[:, 3] = affine @ shift
    return np.ascontiguousarray(out), new_affine


def _resample_plan(shape: Sequence[int], zooms: Sequence[float], spacing_mm: float):
    factors = [spacing_mm / float(z) for z in zooms[:2]]
    new_shape = [max(1, int(round(n / f))) for n, f in zip(shape[:2], factors)]
    # voxel centre i of the new grid sits at continuous old index (i + 0.5) * f - 0.5 (same extent)
    coords = [(np.arange(m) + 0.5) * f - 0.5 for m, f in zip(new_shape, factors)]
    return factors, new_shape, coords


def resample_inplane(data: np.ndarray, affine: np.ndarray, zooms: Sequence[float], spacing_mm: float,
                     is_label: bool) -> tuple[np.ndarray, np.ndarray]:
    """Resample axes 0 and 1 to ``spacing_mm`` (mm) over the same field of view; slices untouched.

    Images: cubic spline (float32, clipped at the source minimum: MR magnitudes are not negative).
    Labels: each label's mask interpolated linearly, then the most likely label per voxel (the way
    nnU-Net resamples segmentations, without the staircase of nearest neighbour).
    """
    from scipy.ndimage import map_coordinates

    factors, new_shape, coords = _resample_plan(data.shape, zooms, spacing_mm)
    g0, g1 = np.meshgrid(coords[0], coords[1], indexing="ij")

    def one_slice(plane: np.ndarray, order: int) -> np.ndarray:
        return map_coordinates(plane, [g0, g1], order=order, mode="nearest")

    nz = data.shape[2]
    if is_label:
        values = np.unique(data)
        best = np.full((*new_shape, nz), -1.0, dtype=np.float32)
        out = np.zeros((*new_shape, nz), dtype=data.dtype)
        for v in values:
            mask = (data == v).astype(np.float32)
            prob = np.stack([one_slice(mask[:, :, k], 1) for k in range(nz)], axis=-1)
            take = prob > best
            out[take], best[take] = v, prob[take]
    else:
        src = data.astype(np.float32)
        out = np.stack([one_slice(src[:, :, k], 3) for k in range(nz)], axis=-1)
        out = np.maximum(out, float(src.min())).astype(np.float32)
    new_affine = affine.copy()
    new_affine[:3, 0] *= factors[0]
    new_affine[:3, 1] *= factors[1]
    # voxel (0, 0) of the new grid is old continuous index (0.5 f - 0.5)
    new_affine[:, 3] = affine @ np.array([0.5 * factors[0] - 0.5, 0.5 * factors[1] - 0.5, 0, 1])
    return out, new_affine


def prepare_volume(data: np.ndarray, img: nib.Nifti1Image, crop_mm: Optional[float], spacing_mm: Optional[float],
                   is_label: bool) -> tuple[np.ndarray, np.ndarray]:
    """Crop then resample one volume; returns (data, affine)."""
    affine = img.affine.copy()
    zooms = img.header.get_zooms()[:3]
    if crop_mm is not None:
        data, affine = crop_volume(data, affine, zooms, crop_mm)
    if spacing_mm is not None:
        data, affine = resample_inplane(data, affine, zooms, spacing_mm, is_label)
    return data, affine


def _save(data: np.ndarray, affine: np.ndarray, like: nib.Nifti1Image, out: Path) -> None:
    hdr = like.header.copy()
    hdr.set_data_shape(data.shape)
    hdr.set_data_dtype(data.dtype)
    hdr.set_slope_inter(1.0, 0.0)
    img = nib.Nifti1Image(data, affine, hdr)
    img.set_qform(affine, code=int(like.header["qform_code"]) or 1)
    img.set_sform(affine, code=int(like.header["sform_code"]) or 1)
    nib.save(img, str(out))


def _check_same_grid(case: MyoPSCase, imgs: dict[str, nib.Nifti1Image]) -> None:
    ref_kind = "gd"
    ref = imgs[ref_kind]
    for kind, img in imgs.items():
        if img.shape != ref.shape:
            raise ConversionError(f"{case.files[kind]}: shape {img.shape} differs from {case.files[ref_kind]} "
                                  f"{ref.shape}; MyoPS sequences of a patient share one grid")
        if not np.allclose(img.affine, ref.affine, atol=_AFFINE_ATOL_MM):
            raise ConversionError(f"{case.files[kind]}: affine differs from {case.files[ref_kind]}; MyoPS "
                                  f"sequences of a patient share one grid (resample it onto the label's grid)")


def write_case(case: MyoPSCase, staging: Path, subset: str, crop_mm: Optional[float],
               spacing_mm: Optional[float]) -> dict:
    """Write one patient's sequences, anatomy label and pathology label; returns its metadata."""
    loaded = {k: _read(case.files[k]) for k in (*SEQUENCES, "gd")}
    _check_same_grid(case, {k: img for k, (_, img) in loaded.items()})
    gd_data, gd_img = loaded["gd"]
    where = str(case.files["gd"])
    anatomy = remap_labels(gd_data, MYOPS_TO_ACDC, where)
    pathology = remap_labels(gd_data, MYOPS_TO_PATHOLOGY, where)
    name = f"{case.case_id}{FILE_ENDING}"
    anatomy_out, aff = prepare_volume(anatomy, gd_img, crop_mm, spacing_mm, is_label=True)
    pathology_out, _ = prepare_volume(pathology, gd_img, crop_mm, spacing_mm, is_label=True)
    anatomy_folders = ["labelsTr"] if subset == "train" else [f"labelsTs_{s}" for s in SEQUENCES]
    for folder in anatomy_folders:
        _save(anatomy_out.astype(np.uint8), aff, gd_img, staging / folder / name)
    _save(pathology_out.astype(np.uint8), aff, gd_img,
          staging / ("labelsPathologyTr" if subset == "train" else "labelsPathologyTs") / name)
    for seq in SEQUENCES:
        src, img = loaded[seq]
        data, aff = prepare_volume(src, img, crop_mm, spacing_mm, is_label=False)
        folder = image_folder(subset, seq)
        _save(data, aff, img, staging / folder / f"{case.case_id}_0000{FILE_ENDING}")
    zooms = [float(z) for z in gd_img.header.get_zooms()[:3]]
    return {"patient": case.case_id, "subset": subset, "source_shape": list(gd_img.shape),
            "source_spacing_mm": zooms,
            "voxels_edema": int((gd_data == 1220).sum()), "voxels_scar": int((gd_data == 2221).sum())}


def image_folder(subset: str, sequence: str) -> str:
    """Folder of one sequence's images: ``imagesTr`` (C0 of training patients), ``imagesTr_<SEQ>``
    (other sequences of training patients) or ``imagesTs_<SEQ>`` (test patients)."""
    if subset == "train":
        return "imagesTr" if sequence == TRAINING_SEQUENCE else f"imagesTr_{sequence}"
    return f"imagesTs_{sequence}"


def convert_myops(source: Path, dataset_id: int = DEFAULT_ID, *, train_cases: Sequence[int] = DEFAULT_TRAIN_CASES,
                  test_cases: Sequence[int] = DEFAULT_TEST_CASES, crop_mm: Optional[float] = None,
                  spacing_mm: Optional[float] = None, overwrite: bool = False, seed: int = DEFAULT_SEED,
                  progress: bool = True) -> ConversionResult:
    """Convert the MyoPS tree at ``source`` into ``$nnUNet_raw/DatasetNNN_MyoPS`` (+ splits); see the
    module docstring for the folders written."""
    from tqdm import tqdm
    from nnunetv2.dataset_conversion.generate_dataset_json import generate_dataset_json
    from nnunetv2_physaug import __version__

    for value, what in ((crop_mm, "--crop"), (spacing_mm, "--spacing")):
        if value is not None and not (np.isfinite(value) and value > 0):
            raise ConversionError(f"{what} must be a positive number of millimetres, got {value}")
    if spacing_mm is not None and not MIN_SPACING_MM <= spacing_mm <= MAX_SPACING_MM:
        raise ConversionError(f"--spacing {spacing_mm:g} mm is outside {MIN_SPACING_MM:g}-{MAX_SPACING_MM:g} mm (MyoPS "
                              f"images have ~0.73 mm pixels; cardiac MRI is segmented at 1-2 mm)")
    overlap = sorted(set(train_cases) & set(test_cases))
    if overlap:
        raise ConversionError(f"cases {overlap[:5]} are both training and test cases; the test patients must "
                              f"be held out")
    target, splits_file = check_outputs(dataset_id, NAME, overwrite)
    cases = find_cases(Path(source))
    train = select_cases(cases, train_cases, "training")
    test = select_cases(cases, test_cases, "test") if test_cases else []
    splits = patient_level_splits({c.case_id: c.case_id for c in train}, seed=seed)

    with staged_folder(target) as staging:
        folders = ["imagesTr", "labelsTr", "labelsPathologyTr"] + [image_folder("train", s) for s in SEQUENCES[1:]]
        if test:
            folders += [image_folder("test", s) for s in SEQUENCES] + [f"labelsTs_{s}" for s in SEQUENCES]
            folders.append("labelsPathologyTs")
        for f in dict.fromkeys(folders):
            (staging / f).mkdir()
        meta_cases = {}
        jobs = [(c, "train") for c in train] + [(c, "test") for c in test]
        for case, subset in tqdm(jobs, desc=target.name, unit="patient", disable=not progress):
            meta_cases[case.case_id] = write_case(case, staging, subset, crop_mm, spacing_mm)
        meta = {
            "source_dataset": "MyoPS 2020",
            "source_folder": str(Path(source).resolve()),
            "converter_version": __version__,
            "label_convention": LABEL_CONVENTION + " (edema and scar are myocardium)",
            "label_map_source_to_acdc": {str(k): v for k, v in MYOPS_TO_ACDC.items()},
            "pathology_labels": PATHOLOGY_LABELS,
            "label_map_source_to_pathology": {str(k): v for k, v in MYOPS_TO_PATHOLOGY.items()},
            "training_sequence": TRAINING_SEQUENCE,
            "sequences": SEQUENCE_NAMES,
            "crop_mm": crop_mm, "spacing_mm": spacing_mm,
            "crop_rule": "fixed square around the image centre (independent of the labels)",
            "train_cases": [c.case_id for c in train], "test_cases": [c.case_id for c in test],
            "cross_validation_images": {s: image_folder("train", s) for s in SEQUENCES},
            "pathology_folders": {"train": "labelsPathologyTr", "test": "labelsPathologyTs" if test else None},
            "test_domains": {s: {"images": image_folder("test", s), "labels": f"labelsTs_{s}",
                                 "pathology": "labelsPathologyTs", "n_cases": len(test)}
                             for s in SEQUENCES} if test else {},
            "splits": {"level": "patient", "n_folds": len(splits), "seed": seed,
                       "file": "$nnUNet_preprocessed/" + target.name + "/splits_final.json"},
            "cases": meta_cases,
        }
        generate_dataset_json(str(staging), channel_names=dict(CHANNEL_NAMES), labels=dict(ACDC_LABELS),
                              num_training_cases=len(train), file_ending=FILE_ENDING,
                              dataset_name=target.name, converted_by="nnunetv2_physaug.conversion",
                              **{METADATA_KEY: meta})
        atomic_write_json(staging / DATASET_SPLITS_NAME, splits)  # put in place with the dataset
    publish_splits(target, splits_file)
    return ConversionResult(dataset_dir=target, splits_file=splits_file, n_train=len(train), n_test=len(test),
                            n_test_labeled=len(test),
                            group_dirs={s: (target / image_folder("test", s), target / f"labelsTs_{s}")
                                        for s in SEQUENCES} if test else {})
