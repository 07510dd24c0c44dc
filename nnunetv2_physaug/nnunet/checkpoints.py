"""Model folders loaded without running code from them: checkpoints and the architecture their plans name.

nnU-Net's predictor loads a checkpoint with ``torch.load(weights_only=False)``: a checkpoint file is a pickle,
and unpickling it may run any code the file names. Before a command of ours hands a model folder to the
predictor it reads every checkpoint it will use with ``weights_only=True``, which builds only tensors,
containers and the few safe types nnU-Net's checkpoints hold (numpy dtypes and scalars in the training log),
and refuses a file that needs anything else. The predictor then unpickles the same bytes, which name no other
global.

A model folder's ``plans.json`` names the network class (``architecture.network_class_name``) that nnU-Net
imports by its dotted name: a folder on the import path holding a module of that name would run. Before a
command of ours hands a model to the predictor, :func:`check_model_plans` accepts only classes of the
installed ``dynamic_network_architectures`` and ``nnunetv2`` packages (found where those distributions are
installed), plus the module prefixes a user lists on purpose in :data:`TRUSTED_ARCHITECTURES_ENV`; it imports
nothing to decide.
"""
from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import pickle
from pathlib import Path
from typing import Sequence

import numpy as np
import torch


class UnsafeCheckpointError(RuntimeError):
    """A checkpoint that is missing, unreadable, or would run code when loaded; the message names the file."""


def _numpy_globals() -> list:
    """The numpy types nnU-Net's checkpoints pickle (its logger keeps numpy floats)."""
    scalar = getattr(getattr(np, "_core", np.core), "multiarray").scalar
    dtypes = [getattr(np.dtypes, n) for n in dir(np.dtypes) if n.endswith("DType")]
    return [np.dtype, scalar, *dtypes]


def check_checkpoint(path: Path) -> None:
    """Read ``path`` with ``torch.load(weights_only=True)``; raise :class:`UnsafeCheckpointError` naming it
    when it is missing or needs more than tensors, containers and numpy scalars."""
    path = Path(path)
    if not path.is_file():
        raise UnsafeCheckpointError(f"{path}: checkpoint not found; train that fold first, or choose the folds "
                                    f"(-f) and checkpoint (--chk) that exist")
    try:
        with torch.serialization.safe_globals(_numpy_globals()):
            torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[-1][:300]
        raise UnsafeCheckpointError(
            f"{path}: refused: loading it would run code or build objects that are not weights ({first}). "
            f"Only use models from sources you trust; nnU-Net's own nnUNetv2_predict would run that code."
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        raise UnsafeCheckpointError(f"{path}: not a readable PyTorch checkpoint ({e}); retrain the fold or copy "
                                    f"the file again") from None


def check_model_checkpoints(model_dir: Path, folds: Sequence, checkpoint: str = "checkpoint_final.pth") -> None:
    """:func:`check_checkpoint` for ``model_dir/fold_<f>/<checkpoint>`` of every fold."""
    for f in folds:
        check_checkpoint(Path(model_dir) / f"fold_{f}" / checkpoint)


#: packages whose network classes a model's plans may name (their installed copies only)
TRUSTED_ARCHITECTURE_PACKAGES = ("dynamic_network_architectures", "nnunetv2")
#: environment variable with more trusted module prefixes, comma-separated (e.g. ``mynets.unets``)
TRUSTED_ARCHITECTURES_ENV = "PHYSAUG_TRUSTED_ARCHITECTURES"


def _installed_origin(package: str) -> bool:
    """Whether the top-level ``package`` that an import would find is the installed distribution's copy (not a
    folder of the same name earlier on the import path, such as the working directory)."""
    spec = importlib.util.find_spec(package)  # a top-level name: located, not imported
    if spec is None or spec.origin is None:
        return False
    try:
        root = Path(importlib.metadata.distribution(package).locate_file("")).resolve()
    except importlib.metadata.PackageNotFoundError:
        return False
    return Path(spec.origin).resolve().is_relative_to(root)


def check_model_plans(model_dir: Path) -> None:
    """Refuse a model folder whose ``plans.json`` names a network class outside the trusted packages (raise
    :class:`UnsafeCheckpointError` naming the file, the class and how to trust it)."""
    plans_file = Path(model_dir) / "plans.json"
    try:
        plans = json.loads(plans_file.read_text())
        configurations = plans["configurations"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise UnsafeCheckpointError(f"{plans_file}: not a readable nnU-Net plans file ({e}); retrain the model or "
                                    f"copy its folder again") from None
    extra = [p.strip() for p in os.environ.get(TRUSTED_ARCHITECTURES_ENV, "").split(",") if p.strip()]
    for name, conf in configurations.items():
        cls = (conf.get("architecture") or {}).get("network_class_name") if isinstance(conf, dict) else None
        if cls is None:
            continue
        if not isinstance(cls, str):
            raise UnsafeCheckpointError(f"{plans_file}: configuration {name!r} names a network class that is not a "
                                        f"dotted name: {cls!r}")
        top = cls.split(".")[0]
        if top in TRUSTED_ARCHITECTURE_PACKAGES and _installed_origin(top):
            continue
        if any(cls == p or cls.startswith(p.rstrip(".") + ".") for p in extra):
            continue
        raise UnsafeCheckpointError(
            f"{plans_file}: configuration {name!r} names the network class {cls!r}, which is not part of the "
            f"installed {' or '.join(TRUSTED_ARCHITECTURE_PACKAGES)}; loading the model would import and run that "
            f"module. Only use models from sources you trust; to allow this architecture on purpose, set "
            f"{TRUSTED_ARCHITECTURES_ENV}={'.'.join(cls.split('.')[:-1]) or cls}")
