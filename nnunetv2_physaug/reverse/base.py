"""The slice-estimator protocol shared by every reverse-imaging method.

An estimator turns a batch of 2D image slices into tissue maps [M0, T1, T2] whose rendering by its
:attr:`SliceEstimator.forward_model` (short-TR bSSFP, alpha = 45 deg by default: the paper's model,
:mod:`.forward`) reproduces the slices up to one global per-slice scale. The engine (:mod:`nnunetv2_physaug.reverse.engine`) batches slices of many cases,
calls :meth:`SliceEstimator.estimate` and writes the results; the estimator never touches files.
"""
from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Sequence

import torch

from .forward import FORWARD_MODEL, BSSFPForwardModel


@dataclass
class SliceEstimate:
    """Result of one :meth:`SliceEstimator.estimate` call.

    Attributes:
        maps: (B, K, 3, H, W) float32, channels [M0 (relative), T1 (ms), T2 (ms)] in the native
            geometry of the input slices; K posterior samples per slice.
        qc: one dict per slice, at least ``{"nrmse_pct": bSSFP re-render NRMSE in percent}``.
    """

    maps: torch.Tensor
    qc: list[dict] = field(default_factory=list)


class SliceEstimator(abc.ABC):
    """Estimates tissue maps from 2D slices (see the module docstring)."""

    #: short method name recorded in the manifest ("label", "diffusion-fast", "diffusion-paper").
    name: str = "abstract"
    #: the measurement model the estimates explain; the engine re-renders with it (QC, M0 harmonisation)
    forward_model: BSSFPForwardModel = FORWARD_MODEL

    def identity(self) -> dict:
        """JSON-able identity: estimator name, prior hash (or None) and all parameters.

        The engine stores it in the manifest and refuses to mix maps of different identities in
        one folder, so it must contain everything that changes the output (not the device).
        """
        return {"estimator": self.name, "prior_hash": None, "parameters": {}}

    @abc.abstractmethod
    def estimate(self, images: torch.Tensor, labels: torch.Tensor | None, n_samples: int,
                 generators: Sequence[torch.Generator]) -> SliceEstimate:
        """Estimate maps for a batch of slices.

        Args:
            images: (B, H, W) float32 raw slice intensities (any scale; H, W arbitrary, non-square OK).
            labels: (B, H, W) int64 in ACDC convention (0 background, 1 RV, 2 myocardium, 3 LV) or None.
            n_samples: K, number of map samples to return per slice.
            generators: one torch random generator per slice (B of them, :mod:`.rng`): every random
                draw for slice i comes from ``generators[i]``, so a slice's maps do not depend on the
                rest of the batch.
        Returns:
            a :class:`SliceEstimate` with maps of shape (B, K, 3, H, W).
        """
