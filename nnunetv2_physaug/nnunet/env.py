"""Environment for stock nnU-Net commands: the ``nnUNet_extTrainer`` shim folder and nnU-Net's paths.

nnU-Net >= 2.8 imports every module of each folder listed in ``nnUNet_extTrainer`` when it looks a
trainer up by name, at training *and* at prediction. We point it at a dedicated folder that holds a
single shim module, never at site-packages or the package root (that would import every module
there under wrong top-level names).
"""
from __future__ import annotations

import os
import shlex
from importlib import resources
from pathlib import Path
from typing import MutableMapping, Optional

EXT_TRAINER_VAR = "nnUNet_extTrainer"
NNUNET_PATH_VARS = ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")


def ext_trainer_dir() -> str:
    """Absolute path of the folder to list in ``nnUNet_extTrainer`` (the public trainers and the peers)."""
    return str(Path(str(resources.files("nnunetv2_physaug.nnunet") / "nnunet_ext")).resolve())


def experiments_dir() -> str:
    """Absolute path of the opt-in folder of the ablation trainers (:mod:`nnunetv2_physaug.nnunet.experiments`)."""
    return str(Path(str(resources.files("nnunetv2_physaug.nnunet") / "experiments_ext")).resolve())


def ext_trainer_value(current: Optional[str], experiments: bool = False) -> str:
    """``current`` (an os.pathsep-separated list, may be empty) with our folder (and, with ``experiments``,
    the experiments folder) appended once."""
    parts = [p for p in (current or "").split(os.pathsep) if p.strip()]
    for ours in (ext_trainer_dir(), experiments_dir()) if experiments else (ext_trainer_dir(),):
        if ours not in parts:
            parts.append(ours)
    return os.pathsep.join(parts)


def register_ext_trainers(environ: MutableMapping[str, str] = os.environ, experiments: bool = False) -> str:
    """Add our shim folder (and, with ``experiments``, the experiments folder) to
    ``environ['nnUNet_extTrainer']`` (inherited by child processes)."""
    environ[EXT_TRAINER_VAR] = ext_trainer_value(environ.get(EXT_TRAINER_VAR), experiments)
    return environ[EXT_TRAINER_VAR]


def nnunet_paths(root: os.PathLike | str) -> dict[str, str]:
    """nnU-Net's three path variables for a project folder ``root`` (raw/preprocessed/results inside)."""
    root = Path(root).resolve()
    return {"nnUNet_raw": str(root / "nnUNet_raw"),
            "nnUNet_preprocessed": str(root / "nnUNet_preprocessed"),
            "nnUNet_results": str(root / "nnUNet_results")}


def shell_exports(root: Optional[os.PathLike | str] = None,
                  environ: MutableMapping[str, str] = os.environ, experiments: bool = False) -> str:
    """POSIX shell lines that set ``nnUNet_extTrainer`` (with ``experiments``, the ablation trainers too; with
    ``root``, nnU-Net's paths)."""
    value = ext_trainer_value(environ.get(EXT_TRAINER_VAR), experiments)
    lines = [f"export {EXT_TRAINER_VAR}={shlex.quote(value)}"]
    if root is not None:
        lines += [f"export {k}={shlex.quote(v)}" for k, v in nnunet_paths(root).items()]
    return "\n".join(lines)


def require_nnunet_paths(environ: MutableMapping[str, str] = os.environ, which=NNUNET_PATH_VARS) -> dict[str, str]:
    """Return nnU-Net's path variables, or raise a RuntimeError that says how to set them."""
    missing = [k for k in which if not environ.get(k)]
    if missing:
        raise RuntimeError(f"nnU-Net environment variable(s) {', '.join(missing)} not set. Set them, e.g. with "
                           "`eval \"$(physaug-env --paths /path/to/project)\"`, see nnU-Net's "
                           "documentation/setting_up_paths.md")
    return {k: environ[k] for k in which}
