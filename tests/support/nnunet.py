"""nnU-Net in temporary folders: environments, the toy dataset planned by nnU-Net's own command, running commands."""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np


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
