"""Derive a narrower copy of an nnU-Net plans file (fewer feature maps per stage) for CPU budgets.

nnU-Net plans its network for a GPU: 32 feature maps in the first stage, doubling per stage up to
512 (2D). On a 2-core CPU one training iteration of that network at 96 x 96, batch 10 takes about a
second, so a few epochs already exhaust a demo budget. Editing a copy of the plans file is nnU-Net's
documented way to change the architecture (documentation/explanation_plans_files.md): the copy gets
its own plans identifier (``nnUNetv2_train ... -p NAME``), keeps the ``data_identifier`` of its source
so the preprocessed data are shared, and changes nothing but ``features_per_stage``. Models trained
with different plans identifiers live in different result folders, so nothing is mixed.
"""
from __future__ import annotations

import copy
import json
import os
import re
from pathlib import Path
from typing import Optional

from ..fileio import atomic_write_json


class PlansError(RuntimeError):
    """A plans file is missing, malformed, or would be overwritten."""


#: a plans identifier: a plain file name (no separator, no ``..``, not hidden)
PLANS_IDENTIFIER = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def narrow_plans(plans: dict, width: float, plans_name: str, min_features: int = 4) -> dict:
    """A copy of ``plans`` whose networks have ``round(width * n)`` feature maps per stage (>= ``min_features``).

    Only configurations that define ``architecture.arch_kwargs.features_per_stage`` are changed;
    configurations that inherit from one of them inherit the change.
    """
    if not 0.0 < width <= 1.0:
        raise PlansError(f"width must be in (0, 1], got {width}")
    out = copy.deepcopy(plans)
    out["plans_name"] = plans_name
    changed = 0
    for conf in out.get("configurations", {}).values():
        kwargs = conf.get("architecture", {}).get("arch_kwargs", {})
        if "features_per_stage" in kwargs:
            kwargs["features_per_stage"] = [max(min_features, int(round(width * f))) for f in kwargs["features_per_stage"]]
            changed += 1
    if not changed:
        raise PlansError("no configuration in the plans has architecture.arch_kwargs.features_per_stage; "
                         "is this an nnU-Net v2 (>= 2.4) plans file?")
    return out


def default_narrow_name(source: str, width: float) -> str:
    """``nnUNetPlans`` at width 0.5 -> ``nnUNetPlans_w50``."""
    return f"{source}_w{int(round(width * 100))}"


def write_narrow_plans(preprocessed_dataset_dir: os.PathLike | str, width: float = 0.5, source: str = "nnUNetPlans",
                       target: Optional[str] = None, overwrite: bool = False) -> Path:
    """Write ``<target>.json`` next to ``<source>.json`` in an nnU-Net preprocessed dataset folder.

    Args:
        preprocessed_dataset_dir: ``$nnUNet_preprocessed/DatasetXXX_Name``.
        width: factor on every stage's feature maps (0.5 halves them, about 1/4 of the convolution FLOPs).
        source: plans identifier to copy (made by ``nnUNetv2_plan_and_preprocess``).
        target: new plans identifier (default ``<source>_w<percent>``).
        overwrite: replace an existing ``<target>.json``.

    Returns:
        Path of the written plans file (written atomically).
    """
    folder = Path(preprocessed_dataset_dir)
    target = target or default_narrow_name(source, width)
    for name, what in ((source, "-p"), (target, "-o")):
        # a plans identifier is a file name in the dataset's preprocessed folder (nnU-Net's -p), never a path
        if not PLANS_IDENTIFIER.fullmatch(name):
            raise PlansError(f"{what} {name!r} is not a plans identifier: use letters, digits, '.', '_' and '-' "
                             f"(it names <identifier>.json in {folder}), e.g. nnUNetPlans_w50")
    src = folder / f"{source}.json"
    if not src.is_file():
        raise PlansError(f"{src} not found: run nnUNetv2_plan_and_preprocess (or nnUNetv2_plan_experiment) for this "
                         f"dataset first, or pass the plans identifier that exists with -p")
    if target == source:
        raise PlansError(f"the new plans identifier must differ from its source {source!r}")
    dst = folder / f"{target}.json"
    if dst.exists() and not overwrite:
        raise PlansError(f"{dst} exists; pass --overwrite to replace it")
    try:
        plans = json.loads(src.read_text())
    except json.JSONDecodeError as e:
        raise PlansError(f"{src} is not valid JSON ({e}); rerun nnU-Net's planning") from e
    atomic_write_json(dst, narrow_plans(plans, width, target))
    return dst
