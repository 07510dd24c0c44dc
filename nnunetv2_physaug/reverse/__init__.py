"""Reverse imaging: estimate tissue maps (M0, T1, T2) behind bSSFP images (DESIGN §5, §7).

Public API (diffusers-dependent names are imported lazily, on first access):

* :func:`run_reverse` / :func:`fill_missing_maps` / :func:`make_estimator` — the engine.
* :class:`SliceEstimator`, :class:`SliceEstimate` — the estimator protocol.
* :class:`LabelEstimator` — the weight-free estimator (``--method label``).
* :class:`PhysicsPrior`, :class:`PriorError`, :class:`DiffusionEstimator`, :func:`train_prior` — the
  diffusion prior, its samplers and its training.
* :func:`bssfp_nrmse_pct` — data-consistency QC.
"""
from __future__ import annotations

import importlib

from .base import SliceEstimate, SliceEstimator
from ..maps.folder import CacheMismatchError
from .engine import ReverseError, ReverseSummary, fill_missing_maps, make_estimator, run_reverse
from .io import ReverseInputError
from .label_estimator import LabelEstimator
from .qc import bssfp_nrmse_pct

_LAZY = {"PhysicsPrior": ".prior", "PriorError": ".prior", "tiny_prior_config": ".prior",
         "DiffusionEstimator": ".diffusion", "train_prior": ".train_prior"}

__all__ = ["SliceEstimate", "SliceEstimator", "LabelEstimator", "run_reverse", "fill_missing_maps",
           "make_estimator", "ReverseSummary", "ReverseError", "ReverseInputError", "CacheMismatchError",
           "bssfp_nrmse_pct", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
