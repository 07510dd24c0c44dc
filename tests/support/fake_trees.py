"""Fake source trees of ACDC, M&Ms, M&Ms-2 and MyoPS with the real folder and file names, for the converters.
  Volumes are 16 x 16 x 4 (X, Y, Z) with a plausible short-axis anatomy: an LV cavity disk, a myocardial ring
  around it and an RV crescent beside it, on a dim noisy background. Every cine frame ``t`` carries its index in
  the intensity (``anatomy + FRAME_STEP * t``); the LV/RV blobs are at fixed, known voxels (:data:`LV_VOXEL`,
  :data:`RV_VOXEL`, :data:`MYO_VOXEL`) and are written with each dataset's own label convention, so a missing or
  wrong 1 <-> 3 swap is visible; the ES LV is smaller than the ED LV."""
from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np


SHAPE = (16, 16, 4)
SPACING = (1.25, 1.25, 8.0)  # mm
FRAME_STEP = 50.0
LV_VOXEL = (7, 8, 2)   # centre of the LV cavity
MYO_VOXEL = (7, 12, 2)  # inside the myocardial ring (radius 3.5..5 from the LV centre)
RV_VOXEL = (7, 1, 2)   # inside the RV crescent (clear of the myocardium)
MNMS_CSV = "211230_M&Ms_Dataset_information_diagnosis_opendataset.csv"


def affine(spacing=SPACING, origin=(-10.0, 20.0, -35.0)) -> np.ndarray:
    """An oblique-free but axis-permuted affine (as scanner short-axis stacks often are)."""
    a = np.zeros((4, 4))
    a[0, 1] = -spacing[1]
    a[1, 0] = spacing[0]
    a[2, 2] = spacing[2]
    a[:3, 3] = origin
    a[3, 3] = 1.0
    return a


def anatomy_masks(phase: str) -> dict[str, np.ndarray]:
    """Boolean masks (X, Y, Z) of LV cavity, myocardium and RV for "ED" or "ES" (smaller LV)."""
    x, y = np.meshgrid(np.arange(SHAPE[0]), np.arange(SHAPE[1]), indexing="ij")
    r = np.hypot(x - LV_VOXEL[0], y - LV_VOXEL[1])
    lv_r = 3.5 if phase == "ED" else 2.5
    lv = r <= lv_r
    myo = (r > lv_r) & (r <= lv_r + 1.5)
    rv = (np.abs(x - RV_VOXEL[0]) <= 3) & (y <= 2)
    z = np.zeros(SHAPE[2], bool)
    z[1:3] = True  # two middle slices hold the heart; outer slices are background only
    return {k: v[..., None] & z for k, v in (("lv", lv), ("myo", myo), ("rv", rv))}


def label_volume(phase: str, convention: str) -> np.ndarray:
    """uint8 label volume; convention "acdc" (1 RV, 2 MYO, 3 LV) or "mnms" (1 LV, 2 MYO, 3 RV)."""
    m = anatomy_masks(phase)
    codes = {"acdc": {"rv": 1, "myo": 2, "lv": 3}, "mnms": {"lv": 1, "myo": 2, "rv": 3}}[convention]
    lab = np.zeros(SHAPE, np.uint8)
    for k, v in codes.items():
        lab[m[k]] = v
    return lab


def anatomy_image(phase: str, seed: int) -> np.ndarray:
    """int16 bSSFP-like image: bright blood, grey myocardium, dim background with noise."""
    rng = np.random.default_rng(seed)
    m = anatomy_masks(phase)
    img = 40.0 + rng.normal(0, 3, SHAPE)
    img[m["myo"]] = 120.0
    img[m["lv"] | m["rv"]] = 300.0
    return np.round(img).astype(np.int16)


def cine(seed: int, n_frames: int, ed: int, es: int) -> np.ndarray:
    """(X, Y, Z, T) int16 cine; frame t = anatomy (ED shape at ed, ES shape elsewhere) + FRAME_STEP*t."""
    frames = [anatomy_image("ED" if t == ed else "ES", seed) + np.int16(FRAME_STEP * t) for t in range(n_frames)]
    return np.stack(frames, axis=-1).astype(np.int16)


def save(path: Path, data: np.ndarray, aff: np.ndarray | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = nib.Nifti1Image(data, affine() if aff is None else aff)
    img.header.set_qform(img.affine, code=1)
    img.header.set_sform(img.affine, code=1)
    img.header.set_xyzt_units("mm", "msec")
    if data.ndim == 4:
        img.header["pixdim"][4] = 35.0  # frame spacing in ms, as in real cines
    nib.save(img, str(path))


# ----------------------------------------------------------------------------- ACDC

@dataclass
class FakeACDC:
    root: Path
    train_patients: list[str]
    test_patients: list[str]
    frames: dict[str, tuple[int, int]] = field(default_factory=dict)  # patient -> (ED, ES), 1-based
    groups: dict[str, str] = field(default_factory=dict)


def make_fake_acdc(root: Path, n_train: int = 5, n_test: int = 2, test_gt: bool = True,
                   n_frames: int = 5) -> FakeACDC:
    """``root/training/patientXXX`` and ``root/testing/patientXXX`` as in the ACDC release."""
    groups = ["DCM", "HCM", "MINF", "NOR", "RV"]
    fake = FakeACDC(root, [], [])
    for i in range(1, n_train + n_test + 1):
        pid = f"patient{i:03d}"
        train = i <= n_train
        pdir = root / ("training" if train else "testing") / pid
        ed, es = 1, 3 + (i % 2)  # ES differs between patients
        group = groups[i % len(groups)]
        (fake.train_patients if train else fake.test_patients).append(pid)
        fake.frames[pid], fake.groups[pid] = (ed, es), group
        pdir.mkdir(parents=True)
        (pdir / "Info.cfg").write_text(f"ED: {ed}\nES: {es}\nGroup: {group}\nHeight: {160 + i}.0\n"
                                       f"NbFrame: {n_frames}\nWeight: {60 + i}.0\n")
        c = cine(i, n_frames, ed - 1, es - 1)
        save(pdir / f"{pid}_4d.nii.gz", c)
        for phase, fr in (("ED", ed), ("ES", es)):
            save(pdir / f"{pid}_frame{fr:02d}.nii.gz", c[..., fr - 1])
            if train or test_gt:
                save(pdir / f"{pid}_frame{fr:02d}_gt.nii.gz", label_volume(phase, "acdc"))
    return fake


# ----------------------------------------------------------------------------- M&Ms

@dataclass
class FakeMNMs:
    root: Path
    rows: dict[str, dict]  # code -> CSV row (strings)
    folders: dict[str, str]  # code -> "Training/Labeled" | "Training/Unlabeled" | "Validation" | "Testing"


#: (code, folder, VendorName, Vendor, Centre, ED, ES, Pathology)
MNMS_CASES = [
    ("A0S9V9", "Training/Labeled", "Siemens", "A", 1, 0, 3, "DCM"),
    ("A1D0Q7", "Training/Labeled", "Siemens", "A", 1, 1, 4, "HCM"),
    ("A1D9Z7", "Training/Labeled", "Philips", "B", 2, 0, 2, "NOR"),
    ("A1E9Q1", "Training/Labeled", "Philips", "B", 3, 2, 5, "HHD"),
    ("A1K2P5", "Training/Labeled", "Siemens", "A", 1, 0, 4, "NOR"),
    ("A1O8Z3", "Training/Unlabeled", "Canon", "D", 5, 0, 3, "Other"),
    ("A2C0I1", "Validation", "GE", "C", 4, 0, 3, "DCM"),
    ("A2E3W4", "Validation", "Siemens", "A", 1, 1, 3, "NOR"),
    ("A2H5K9", "Testing", "Canon", "D", 5, 0, 4, "HCM"),
    ("A2L1N6", "Testing", "GE", "C", 6, 2, 5, "ARV"),
]
MNMS_COLUMNS = ["", "External code", "VendorName", "Vendor", "Centre", "ED", "ES", "Age", "Pathology", "Sex",
                "Height", "Weight"]


def make_fake_mnms(root: Path, n_frames: int = 6) -> FakeMNMs:
    """M&Ms OpenDataset tree: information CSV (with the pandas index column of the release),
    ``Training/Labeled``, ``Training/Unlabeled`` (no labels), ``Validation`` and ``Testing``."""
    rows, folders = {}, {}
    for n, (code, folder, vname, vendor, centre, ed, es, path) in enumerate(MNMS_CASES):
        rows[code] = dict(zip(MNMS_COLUMNS, [str(n), code, vname, vendor, str(centre), str(ed), str(es),
                                             str(40 + n), path, "M" if n % 2 else "F", f"{170 + n}",
                                             f"{70 + n}"]))
        folders[code] = folder
        d = root.joinpath(*folder.split("/"), code)
        save(d / f"{code}_sa.nii.gz", cine(100 + n, n_frames, ed, es))
        if folder != "Training/Unlabeled":
            gt = np.zeros(SHAPE + (n_frames,), np.uint8)  # labeled at ED and ES only, as released
            gt[..., ed] = label_volume("ED", "mnms")
            gt[..., es] = label_volume("ES", "mnms")
            save(d / f"{code}_sa_gt.nii.gz", gt)
    root.mkdir(parents=True, exist_ok=True)
    with open(root / MNMS_CSV, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=MNMS_COLUMNS)
        w.writeheader()
        w.writerows(rows.values())
    return FakeMNMs(root, rows, folders)


# ----------------------------------------------------------------------------- M&Ms-2

#: (SUBJECT_CODE, DISEASE, SEX, AGE, VENDOR, SCANNER, FIELD) as in dataset_information.csv
MNMS2_ROWS = [
    (1, "NOR", "M", 54, "GE MEDICAL SYSTEMS", "SIGNA EXCITE", 1.5),
    (2, "LV", "F", 61, "SIEMENS", "Symphony", 1.5),
    (3, "HCM", "M", 47, "SIEMENS", "SymphonyTim", 1.5),
    (4, "ARR", "F", 35, "Philips Medical Systems", "Achieva", 1.5),
    (5, "CIA", "M", 29, "Philips Medical Systems", "Achieva", 3.0),
    (6, "FALL", "F", 22, "SIEMENS", "Avanto", 1.5),
    (7, "TRI", "M", 70, "GE MEDICAL SYSTEMS", "Signa Explorer", 1.5),
    (8, "NOR", "F", 44, "SIEMENS", "TrioTim", 3.0),
]
MNMS2_COLUMNS = ["SUBJECT_CODE", "DISEASE", "SEX", "AGE", "VENDOR", "SCANNER", "FIELD"]


def make_fake_mnms2(root: Path) -> list[tuple]:
    """M&Ms-2 tree: ``dataset_information.csv`` (with the blank padding rows of the release) and
    ``dataset/<NNN>/`` with SA/LA ED/ES images and labels plus the (unused) CINE files."""
    la_shape = (SHAPE[0], SHAPE[1], 1)
    for n, *_ in MNMS2_ROWS:
        sid = f"{n:03d}"
        d = root / "dataset" / sid
        for phase in ("ED", "ES"):
            save(d / f"{sid}_SA_{phase}.nii.gz", anatomy_image(phase, 200 + n))
            save(d / f"{sid}_SA_{phase}_gt.nii.gz", label_volume(phase, "mnms"))
            save(d / f"{sid}_LA_{phase}.nii.gz", anatomy_image(phase, 300 + n)[:, :, 1:2].reshape(la_shape))
            save(d / f"{sid}_LA_{phase}_gt.nii.gz", label_volume(phase, "mnms")[:, :, 1:2].reshape(la_shape))
        save(d / f"{sid}_SA_CINE.nii.gz", cine(200 + n, 3, 0, 2))
        save(d / f"{sid}_LA_CINE.nii.gz", cine(300 + n, 3, 0, 2)[:, :, 1:2, :])
    with open(root / "dataset_information.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(MNMS2_COLUMNS)
        w.writerows(MNMS2_ROWS)
        w.writerows([[""] * len(MNMS2_COLUMNS)] * 2)  # spreadsheet padding rows
    return MNMS2_ROWS


# ----------------------------------------------------------------------------- MyoPS 2020

MYOPS_SHAPE = (40, 36, 3)
MYOPS_SPACING = (0.75, 0.75, 10.0)  # mm, about the real release's in-plane spacing
#: sequence -> (background, myocardium, blood) intensities; distinct per sequence so a mixed-up
#: folder is visible from the voxel values
MYOPS_INTENSITY = {"C0": (40, 120, 300), "LGE": (30, 60, 150), "T2": (50, 110, 20)}


def myops_label(lv_centre=(20, 18)) -> np.ndarray:
    """MyoPS label (200 myo, 500 LV, 600 RV, 1220 edema, 2221 scar) on :data:`MYOPS_SHAPE`; slices
    1 and 2 hold the heart; edema at the ring's +x side, scar at its -x side."""
    x, y = np.meshgrid(np.arange(MYOPS_SHAPE[0]), np.arange(MYOPS_SHAPE[1]), indexing="ij")
    r = np.hypot(x - lv_centre[0], y - lv_centre[1])
    lab2 = np.zeros(MYOPS_SHAPE[:2], np.int16)
    lab2[(r > 6) & (r <= 9)] = 200
    lab2[r <= 6] = 500
    lab2[(np.abs(x - lv_centre[0]) <= 5) & (y >= lv_centre[1] + 11) & (y <= lv_centre[1] + 14)] = 600
    ring = (r > 6) & (r <= 9)
    lab2[ring & (x >= lv_centre[0] + 5)] = 1220
    lab2[ring & (x <= lv_centre[0] - 5)] = 2221
    lab = np.zeros(MYOPS_SHAPE, np.int16)
    lab[:, :, 1] = lab2
    lab[:, :, 2] = lab2
    return lab


def myops_image(label: np.ndarray, sequence: str, seed: int) -> np.ndarray:
    bg, myo, blood = MYOPS_INTENSITY[sequence]
    rng = np.random.default_rng(seed)
    img = bg + rng.normal(0, 2, label.shape)
    img[np.isin(label, (200, 1220, 2221))] = myo
    img[np.isin(label, (500, 600))] = blood
    return np.round(img).astype(np.int16)


def make_fake_myops(root: Path, cases=range(3001, 3008), flat: bool = False) -> dict[str, np.ndarray]:
    """A MyoPS-like tree ``root/CaseNNNN/CaseNNNN_{C0,LGE,T2,gd}.nii.gz`` (or all in ``root`` with
    ``flat``); returns ``{case: source label}``. Each case has its own origin."""
    labels = {}
    for i, n in enumerate(cases):
        case = f"Case{n}"
        folder = root if flat else root / case
        aff = affine(MYOPS_SPACING, origin=(-10.0 + i, 20.0, -35.0 - 2 * i))
        lab = myops_label()
        labels[case] = lab
        save(folder / f"{case}_gd.nii.gz", lab, aff)
        for k, seq in enumerate(("C0", "LGE", "T2")):
            save(folder / f"{case}_{seq}.nii.gz", myops_image(lab, seq, seed=100 * n + k), aff)
    return labels
