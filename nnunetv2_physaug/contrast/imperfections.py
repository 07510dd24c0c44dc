"""Physical imperfections of a rendering: smooth B1 (flip-angle) field, receive bias field, Rician noise.

All randomness comes from a ``numpy.random.Generator``. Smooth fields vary over the last two
(in-plane) axes only and broadcast over leading axes (slices).
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F

from .families import ParamSpec

__all__ = ["IMPERFECTIONS", "smooth_field", "add_rician_noise"]

# Protocol schema of each imperfection: parameter -> spec (every entry also has `probability`).
# `grid` is the size of the coarse control grid (an integer range, >= 2 control points per axis).
IMPERFECTIONS: dict[str, dict[str, ParamSpec]] = {
    "b1": {"scale": ParamSpec("flip-angle scale factor (transmit B1 / nominal)", 0.0, exclusive_min=True),
           "grid": ParamSpec("control points per in-plane axis", 2.0, 64.0)},
    "bias": {"gain": ParamSpec("multiplicative receive-sensitivity gain", 0.0, exclusive_min=True),
             "grid": ParamSpec("control points per in-plane axis", 2.0, 64.0)},
    "noise": {"snr": ParamSpec("mean valid signal / noise sigma", 0.0, exclusive_min=True)},
}
INTEGER_PARAMS = frozenset({"grid"})


def smooth_field(rng: np.random.Generator, shape_yx: tuple[int, int], grid: int,
                 value_range: tuple[float, float], device: Optional[torch.device] = None) -> torch.Tensor:
    """A smooth random field of shape ``shape_yx`` (Y, X), float32, with values in ``value_range``.

    ``grid × grid`` control values are drawn uniformly in ``[low, high]`` and bilinearly
    upsampled (align_corners, so the field is a convex combination of control values and stays
    inside the range). The field is piecewise linear with knots every (size-1)/(grid-1) pixels.
    """
    low, high = value_range
    coarse = rng.uniform(low, high, size=(1, 1, grid, grid)).astype(np.float32)
    field = F.interpolate(torch.from_numpy(coarse).to(device), size=tuple(shape_yx), mode="bilinear",
                          align_corners=True)[0, 0]
    # Rounding in the interpolation can step a hair outside the range; keep the stated guarantee.
    return field.clamp_(min(low, high), max(low, high))


def add_rician_noise(image: torch.Tensor, sigma: float, rng: np.random.Generator, signed: bool) -> torch.Tensor:
    """Complex Gaussian noise of standard deviation ``sigma`` per channel, then magnitude.

    Magnitude images get ``sqrt((S + n1)^2 + n2^2)`` (Rician; its mean exceeds S at low SNR);
    signed (phase-sensitive) images keep the real channel ``S + n1`` (Gaussian). Returns a new
    float32 tensor of the shape of ``image``.
    """
    # torch's normal sampler is ~2x faster than numpy's; its generator is seeded from ``rng`` so
    # every draw still comes from the caller's numpy stream (never torch's global RNG).
    gen = torch.Generator(device=image.device)
    gen.manual_seed(int(rng.integers(0, 2**63 - 1)))
    if signed:
        n = torch.randn(tuple(image.shape), generator=gen, dtype=torch.float32, device=image.device)
        return n.mul_(sigma).add_(image)
    n = torch.randn((2, *image.shape), generator=gen, dtype=torch.float32, device=image.device)
    real, imag = n[0], n[1]
    real.mul_(sigma).add_(image).square_()
    imag.mul_(sigma).square_()
    return real.add_(imag).sqrt_()
