"""Checkpoints loaded without running code from them.

nnU-Net's predictor loads a checkpoint with ``torch.load(weights_only=False)``: a checkpoint file is a pickle,
and unpickling it may run any code the file names. Before a command of ours hands a model folder to the
predictor it reads every checkpoint it will use with ``weights_only=True``, which builds only tensors,
containers and the few safe types nnU-Net's checkpoints hold (numpy dtypes and scalars in the training log),
and refuses a file that needs anything else. The predictor then unpickles the same bytes, which name no other
global.
"""
from __future__ import annotations

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
