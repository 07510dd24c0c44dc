"""Reverse-imaging inputs: bSSFP renderings of concentric rings at 1.5 T reference values, and a
``physaug-reverse --overwrite`` killed while it writes."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from nnunetv2_physaug.maps import TissueMapFolder, read_case_maps
from nnunetv2_physaug.physics import bssfp


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
