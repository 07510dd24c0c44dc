"""Shared test helpers, the one module tests import them from (no test imports another test).

- nnU-Net in temporary folders: :func:`nnunet_env`, :func:`environ_from`, :func:`run`, :func:`write_toy_dataset`,
  :func:`plan_and_preprocess`, :func:`load_json`.
- Reverse imaging inputs: :func:`ring_case`, :func:`make_dataset` (bSSFP renderings of concentric rings at 1.5 T
  reference values), :func:`subprocess_env`, :data:`SLOW_WRITER` and :func:`interrupted_overwrite` (a
  ``physaug-reverse --overwrite`` killed while it writes).
- Fake source trees of ACDC, M&Ms, M&Ms-2 and MyoPS with the real folder and file names, for the converters.
  Volumes are 16 x 16 x 4 (X, Y, Z) with a plausible short-axis anatomy: an LV cavity disk, a myocardial ring
  around it and an RV crescent beside it, on a dim noisy background. Every cine frame ``t`` carries its index in
  the intensity (``anatomy + FRAME_STEP * t``); the LV/RV blobs are at fixed, known voxels (:data:`LV_VOXEL`,
  :data:`RV_VOXEL`, :data:`MYO_VOXEL`) and are written with each dataset's own label convention, so a missing or
  wrong 1 <-> 3 swap is visible; the ES LV is smaller than the ED LV.
"""
from __future__ import annotations

import contextlib
import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from nnunetv2_physaug.maps import TissueMapFolder, read_case_maps
from nnunetv2_physaug.physics import bssfp

BIN = Path(sys.executable).parent


def nnunet_env(root: Path, **extra) -> dict:
    """os.environ plus nnU-Net paths under ``root``, our ext-trainer folders (the experiments' too) and low
    process counts."""
    from nnunetv2_physaug.nnunet.env import nnunet_paths, register_ext_trainers
    env = dict(os.environ)
    env.update(nnunet_paths(root))
    for k in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        Path(env[k]).mkdir(parents=True, exist_ok=True)
    register_ext_trainers(env, experiments=True)
    env["nnUNet_def_n_proc"] = "1"
    env["nnUNet_n_proc_DA"] = "0"
    env["nnUNet_compile"] = "f"
    env["MPLBACKEND"] = "Agg"
    env.update({k: str(v) for k, v in extra.items()})
    return env


#: the shared toy dataset of the session (conftest ``toy_template``): nnU-Net ID and folder name
TOY_ID = 963
TOY_DATASET = f"Dataset{TOY_ID:03d}_TrainerToy"


def copy_toy(template: Path, root: Path) -> Path:
    """Copy the nnU-Net folders of ``template`` (the session's preprocessed toy dataset) into ``root``; returns
    the copy's raw dataset folder."""
    for k in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        shutil.copytree(template / k, root / k, symlinks=True, dirs_exist_ok=True)
    return root / "nnUNet_raw" / TOY_DATASET


@contextlib.contextmanager
def environ_from(env: dict, keys=("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results", "nnUNet_extTrainer")):
    """Set ``keys`` of ``env`` in this process's os.environ for the duration (for in-process nnU-Net calls)."""
    old = {k: os.environ.get(k) for k in keys}
    os.environ.update({k: env[k] for k in keys})
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def run(cmd: list[str], env: dict, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run a console script of this venv; fail the test with its output when it fails."""
    exe = str(BIN / cmd[0]) if (BIN / cmd[0]).exists() else cmd[0]
    proc = subprocess.run([exe, *cmd[1:]], env=env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    return proc


def write_toy_dataset(raw: Path, dataset_id: int, name: str, n_cases: int, channel_name: str = "MRI",
                      seed: int = 0, with_maps: bool = True) -> Path:
    """A small 3-label ring dataset with anisotropic, case-varying spacing and a zero border.

    Images are written with nibabel (X, Y, Z). With ``with_maps`` the raw tissue maps are written
    too: M0 = image, T1 = image + 100, T2 = image + 5 (so alignment can be checked against nnU-Net's
    own preprocessing of the image).
    """
    from nnunetv2.dataset_conversion.generate_dataset_json import generate_dataset_json
    from nnunetv2_physaug.maps import write_case_maps

    rng = np.random.default_rng(seed)
    folder = raw / f"Dataset{dataset_id:03d}_{name}"
    (folder / "imagesTr").mkdir(parents=True, exist_ok=True)
    (folder / "labelsTr").mkdir(parents=True, exist_ok=True)
    for i in range(n_cases):
        nx, ny, nz = 40 + 2 * i, 36, 5
        sp = (1.2 + 0.15 * i, 1.4, 6.0)
        x, y = np.meshgrid(np.arange(nx) - nx / 2 + 0.5, np.arange(ny) - ny / 2 + 0.5, indexing="ij")
        r = np.hypot(x, y)
        lab2d = np.zeros((nx, ny), np.uint8)
        lab2d[r < 14] = 2
        lab2d[r < 9] = 3
        lab2d[(np.abs(x + 12) < 3) & (np.abs(y) < 6)] = 1
        lab = np.repeat(lab2d[..., None], nz, axis=2)
        img = np.where(lab == 3, 300.0, np.where(lab == 2, 80.0, np.where(lab == 1, 250.0, 40.0)))
        img = img + rng.normal(0, 5, img.shape)
        img[:3] = 0  # a zero border so nnU-Net's crop to nonzero does something
        img[:, -2:] = 0
        img = np.clip(img, 0, None).astype(np.float32)
        aff = np.diag([*sp, 1.0])
        case = f"toy_{i:03d}"
        nib.save(nib.Nifti1Image(img, aff), folder / "imagesTr" / f"{case}_0000.nii.gz")
        nib.save(nib.Nifti1Image(lab, aff), folder / "labelsTr" / f"{case}.nii.gz")
        if with_maps:
            write_case_maps(folder / "tissueMapsTr", case, img, img + 100.0, img + 5.0, aff)
    generate_dataset_json(str(folder), {0: channel_name}, {"background": 0, "RV": 1, "MLV": 2, "LVC": 3},
                          n_cases, ".nii.gz", dataset_name=folder.name)
    return folder


def plan_and_preprocess(env: dict, dataset_id: int, configs=("2d",)) -> None:
    # nnunetv2 2.8.1's planner calls torch.set_num_threads(nnUNet_n_proc_DA) and crashes on 0
    env = {**env, "nnUNet_n_proc_DA": "1"}
    run(["nnUNetv2_plan_and_preprocess", "-d", str(dataset_id), "-c", *configs, "-np",
         *(["1"] * len(configs)), "-npfp", "1", "--verify_dataset_integrity"], env)


def load_json(p: Path) -> dict:
    return json.loads(Path(p).read_text())


# ----------------------------------------------------------------------------- reverse imaging inputs

PY = sys.executable
AFFINE = np.array([[0.0, -1.4, 0.0, 30.0], [1.4, 0.0, 0.0, -12.0], [0.0, 0.0, 9.0, 4.0], [0.0, 0.0, 0.0, 1.0]])


def ring_case(shape=(40, 34, 3), seed=0, scale=500.0) -> tuple[np.ndarray, np.ndarray]:
    """A bSSFP-like volume (X, Y, Z) of concentric rings (LV blood, myocardium, muscle) and its labels."""
    rng = np.random.default_rng(seed)
    x, y, z = shape
    xx, yy = np.meshgrid(np.arange(x), np.arange(y), indexing="ij")
    r = np.hypot(xx - x / 2, yy - y / 2)
    lab = np.zeros((x, y), np.int16)
    lab[r < 6] = 3
    lab[(r >= 6) & (r < 9)] = 2
    m0 = np.select([lab == 3, lab == 2, r < 15], [0.95, 0.8, 0.75], 0.05)
    t1 = np.select([lab == 3, lab == 2], [1550.0, 1000.0], 860.0)
    t2 = np.select([lab == 3, lab == 2], [270.0, 50.0], 30.0)
    img = bssfp(torch.tensor(m0), torch.tensor(t1), torch.tensor(t2), 45.0, 0.0, short_tr=True).numpy()
    vol = np.stack([img * scale * (1 + 0.1 * k) + rng.normal(0, 0.5, img.shape) for k in range(z)], -1)
    return np.abs(vol).astype(np.float32), np.repeat(lab[:, :, None], z, 2)


def make_dataset(root: Path, n: int, shape=(40, 34, 3), labels=True) -> Path:
    (root / "imagesTr").mkdir(parents=True)
    if labels:
        (root / "labelsTr").mkdir()
    for i in range(n):
        vol, lab = ring_case(shape, seed=i)
        nib.save(nib.Nifti1Image(vol, AFFINE), root / "imagesTr" / f"case{i:02d}_0000.nii.gz")
        if labels:
            nib.save(nib.Nifti1Image(lab, AFFINE), root / "labelsTr" / f"case{i:02d}.nii.gz")
    return root / "imagesTr"


def subprocess_env() -> dict:
    env = dict(os.environ)
    env.pop("RANK", None)
    env.pop("WORLD_SIZE", None)
    return env


SLOW_WRITER = """
import sys, time, nibabel
_save = nibabel.save
def slow_save(img, path):  # keep each temp file on disk for a while so the kill lands mid-write
    _save(img, path)
    time.sleep(0.25)
nibabel.save = slow_save
from nnunetv2_physaug.cli.reverse import main
main(sys.argv[1:])
"""


N_CASES = 5
CASES = [f"case{i:02d}" for i in range(N_CASES)]


def same_maps(a: Path, b: Path, case: str) -> bool:
    return np.array_equal(read_case_maps(a, case)[0], read_case_maps(b, case)[0])


def interrupted_overwrite(root: Path, images: Path, seed0: Path, seed1: Path, delay_s: float) -> dict:
    """Copy the seed-0 folder, start ``--overwrite --seed 1`` into it, SIGKILL it mid-case, classify the cases.

    Returns ``{"complete": [...], "incomplete": [...], "mixed": [...], "two_runs": [...]}``: *mixed* = the
    folder calls the case complete but its maps are not exactly the seed-1 reference (the defect);
    *two_runs* = its files come from both runs (expected for the case being written when killed).
    """
    out = root / "maps"
    if out.exists():
        shutil.rmtree(out)
    shutil.copytree(seed0, out)
    proc = subprocess.Popen([PY, "-c", SLOW_WRITER, "-i", str(images), "-o", str(out), "--overwrite", "--seed", "1",
                             "--batch-size", "1", "--no-progress"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, env=subprocess_env())
    try:
        deadline = time.time() + 90
        while time.time() < deadline:  # wait until a map is being written, then a little longer
            if list(out.glob(".tmp-*.nii.gz")):
                break
            assert proc.poll() is None, proc.stderr.read()
            time.sleep(0.01)
        else:
            pytest.fail("the overwrite run wrote nothing in time")
        time.sleep(delay_s)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
    folder = TissueMapFolder(out)
    result: dict = {"complete": [], "incomplete": [], "mixed": [], "two_runs": []}
    for c in CASES:
        if folder.is_complete(c):
            result["complete"].append(c)
            if not same_maps(out, seed1, c):
                result["mixed"].append(c)
        else:
            result["incomplete"].append(c)
        origins = set()
        for name in ("M0", "T1", "T2"):
            data = folder.map_path(c, name).read_bytes()
            origins.add("0" if data == (seed0 / f"{c}_{name}.nii.gz").read_bytes() else
                        "1" if data == (seed1 / f"{c}_{name}.nii.gz").read_bytes() else "?")
        if len(origins) > 1:
            result["two_runs"].append(c)
    return result


# ----------------------------------------------------------------------------- fake source trees

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


# ----------------------------------------------------------------------------- phantom kills

#: run by a subprocess: write the phantom (seed 4, --overwrite) and SIGKILL the process just before the
#: k-th rename of commit_together (argv: OUT K; K past the last rename: no kill)
PHANTOM_KILLER = """
import os, signal, sys
from nnunetv2_physaug import fileio
from nnunetv2_physaug.phantom import writer
out, k = sys.argv[1], int(sys.argv[2])
real_commit, real_replace = fileio.commit_together, os.replace
def commit(staged, journal):
    count = [0]
    def replace(a, b):
        if count[0] == k:
            os.kill(os.getpid(), signal.SIGKILL)
        count[0] += 1
        real_replace(a, b)
    os.replace = replace
    try:
        real_commit(staged, journal)
    finally:
        os.replace = real_replace
writer.commit_together = commit
writer.write_phantom_datasets(out, n_train=2, n_test=1, size=32, seed=4, overwrite=True, progress=False)
"""


def phantom_seeds(out: Path) -> dict[str, int]:
    """``{dataset folder or summary: seed}`` of a phantom folder (its dataset.json files and summary), and any
    hidden leftover (staging, backup, journal) under the key ``"leftovers"`` as a count."""
    seeds = {d.name: json.loads((d / "dataset.json").read_text())["physaug_phantom"]["seed"]
             for d in sorted(out.glob("Dataset*")) if (d / "dataset.json").is_file()}
    summary = out / "phantom_summary.json"
    if summary.is_file():
        seeds["summary"] = json.loads(summary.read_text())["seed"]
    seeds["leftovers"] = len([p for p in out.iterdir() if p.name.startswith(".")])
    return seeds
