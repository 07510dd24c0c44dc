"""Physical imperfections of a rendering: smooth B1 (flip-angle) field, receive bias field, Rician noise,
and the ambiguity of the tissue maps it starts from (``relaxation_scaling``).

All randomness comes from a ``numpy.random.Generator``. Smooth fields vary over the last two
(in-plane) axes only and broadcast over leading axes (slices).

Cost (the data loader renders one sample at a time on one CPU thread): a smooth field is two
small matrix products with cached interpolation weights (cheaper than ``F.interpolate``); fresh
Gaussian noise for the two channels of a crop is the largest single step of a render
(``scripts/bench_loader.py --profile``, docs/benchmarks.md), so the loader draws it from a
:class:`NormalPool`: windows at random offsets of a large pool of standard-normal values that is
redrawn after serving :attr:`NormalPool.reuse` times its size.
"""
from __future__ import annotations

import functools
import math
import os
from typing import Optional

import numpy as np
import torch

from .families import ParamSpec
from .fast import sqrt_

__all__ = ["IMPERFECTIONS", "smooth_field", "add_rician_noise", "NormalPool", "scale_relaxation"]

# Protocol schema of each imperfection: parameter -> spec (every entry also has `probability`).
# `grid` is the size of the coarse control grid (an integer range, >= 2 control points per axis).
IMPERFECTIONS: dict[str, dict[str, ParamSpec]] = {
    "b1": {"scale": ParamSpec("flip-angle scale factor (transmit B1 / nominal)", 0.0, exclusive_min=True),
           "grid": ParamSpec("control points per in-plane axis", 2.0, 64.0)},
    "bias": {"gain": ParamSpec("multiplicative receive-sensitivity gain", 0.0, exclusive_min=True),
             "grid": ParamSpec("control points per in-plane axis", 2.0, 64.0)},
    "noise": {"snr": ParamSpec("mean valid signal / noise sigma", 0.0, exclusive_min=True)},
    "relaxation_scaling": {
        "factor": ParamSpec("common factor on T1 and T2 of tissue outside the blood and myocardium labels", 0.0,
                            exclusive_min=True),
        "grid": ParamSpec("control points per in-plane axis", 2.0, 64.0)},
}
INTEGER_PARAMS = frozenset({"grid"})


@functools.lru_cache(maxsize=64)
def _linear_weights(size: int, grid: int) -> torch.Tensor:
    """(size, grid) float32 weights of 1-D linear interpolation from ``grid`` control points to
    ``size`` samples, align_corners (sample i sits at control coordinate i (grid-1)/(size-1)), as
    ``F.interpolate(..., mode="bilinear", align_corners=True)`` computes them. Rows sum to 1."""
    pos = torch.arange(size, dtype=torch.float64) * ((grid - 1) / (size - 1) if size > 1 else 0.0)
    left = pos.floor().clamp_(max=grid - 1).long()
    right = (left + 1).clamp_(max=grid - 1)
    frac = pos - left
    w = torch.zeros(size, grid, dtype=torch.float64)
    w[torch.arange(size), left] += 1.0 - frac
    w[torch.arange(size), right] += frac
    return w.float()


def smooth_field(rng: np.random.Generator, shape_yx: tuple[int, int], grid: int,
                 value_range: tuple[float, float], device: Optional[torch.device] = None) -> torch.Tensor:
    """A smooth random field of shape ``shape_yx`` (Y, X), float32, with values in ``value_range``.

    ``grid × grid`` control values are drawn uniformly in ``[low, high]`` and bilinearly
    upsampled (align_corners, so the field is a convex combination of control values and stays
    inside the range). The field is piecewise linear with knots every (size-1)/(grid-1) pixels.
    Bilinear interpolation is separable: ``Wy @ C @ Wx^T`` with the 1-D weights of each axis
    (equal to ``F.interpolate``'s bilinear align_corners up to float32 rounding, at a third of its
    cost).
    """
    low, high = value_range
    coarse = torch.from_numpy(rng.uniform(low, high, size=(grid, grid)).astype(np.float32)).to(device)
    wy = _linear_weights(int(shape_yx[0]), grid).to(device)
    wx = _linear_weights(int(shape_yx[1]), grid).to(device)
    field = wy @ coarse @ wx.T
    # Rounding in the interpolation can step a hair outside the range; keep the stated guarantee.
    return field.clamp_(min(low, high), max(low, high))


class NormalPool:
    """Standard-normal float32 values for noise, served as windows of a pool drawn from the caller's rng.

    :meth:`take` returns ``n`` consecutive values of the pool from an offset drawn uniformly from the
    caller's ``numpy.random.Generator``, times a random sign: every window is exactly i.i.d. N(0, 1).
    The pool (``size`` values, 4 bytes each) is redrawn from the caller's rng once it has served
    ``reuse`` times its size, so a value recurs in about ``reuse`` windows, at other pixels of other
    samples (independent of their images, labels and sigma). Redrawing costs ~3.5 ns a value, so a
    128² Rician sample (2 x 16384 values) costs 1 / ``reuse`` of a fresh draw. Requests larger than a
    quarter of the pool are drawn fresh. A render's noise is a function of its rng *and* of the
    pool's state (the renders since the last redraw): the same sequence of rng streams gives the
    same noise, which suits the loader's one stream per process; one-off renders that must follow
    from their own seed alone use no pool (:class:`~.renderer.ContrastRenderer`'s default). Not shared
    between processes: a forked or unpickled copy draws its own pool.
    """

    def __init__(self, size: int = 1 << 21, reuse: float = 8.0):
        if size < 4 or reuse <= 0:
            raise ValueError(f"NormalPool needs size >= 4 and reuse > 0, got size={size}, reuse={reuse}")
        self.size = int(size)
        self.reuse = float(reuse)
        self._pool: Optional[torch.Tensor] = None
        self._pid: Optional[int] = None  # the process that drew the pool (forked workers redraw)
        self._served = 0  # values served since the pool was drawn

    def __getstate__(self):
        # pickled to loader workers as settings only: each process draws its own pool from its own rng
        return {**self.__dict__, "_pool": None, "_pid": None, "_served": 0}

    @staticmethod
    def _fresh(n: int, rng: np.random.Generator) -> torch.Tensor:
        # torch's normal sampler is faster than numpy's; its generator is seeded from ``rng`` so
        # every draw still comes from the caller's numpy stream (never torch's global RNG).
        gen = torch.Generator()
        gen.manual_seed(int(rng.integers(0, 2**63 - 1)))
        return torch.randn(n, generator=gen, dtype=torch.float32)

    def take(self, n: int, rng: np.random.Generator) -> torch.Tensor:
        """``n`` i.i.d. standard-normal float32 values (a new CPU tensor of shape (n,))."""
        if n > self.size // 4:
            return self._fresh(n, rng)
        if self._pool is None or self._pid != os.getpid() or self._served >= self.reuse * self.size:
            self._pool, self._pid, self._served = self._fresh(self.size, rng), os.getpid(), 0
        start = int(rng.integers(0, self.size - n + 1))
        sign = 1.0 if rng.random() < 0.5 else -1.0
        self._served += n
        return torch.mul(self._pool[start:start + n], sign)


def add_rician_noise(image: torch.Tensor, sigma: float, rng: np.random.Generator, signed: bool,
                     pool: Optional[NormalPool] = None) -> torch.Tensor:
    """Complex Gaussian noise of standard deviation ``sigma`` per channel, then magnitude.

    Magnitude images get ``sqrt((S + n1)^2 + n2^2)`` (Rician; its mean exceeds S at low SNR);
    signed (phase-sensitive) images keep the real channel ``S + n1`` (Gaussian). Returns a new
    float32 tensor of the shape of ``image``. The standard-normal values come fresh from ``rng``,
    or from ``pool`` (CPU images only; same distribution, see :class:`NormalPool`).
    """
    channels = 1 if signed else 2
    if pool is not None and image.device.type == "cpu":
        n = pool.take(channels * image.numel(), rng).view(channels, *image.shape)
    else:
        # torch's normal sampler is faster than numpy's; its generator is seeded from ``rng`` so
        # every draw still comes from the caller's numpy stream (never torch's global RNG).
        gen = torch.Generator(device=image.device)
        gen.manual_seed(int(rng.integers(0, 2**63 - 1)))
        n = torch.randn((channels, *image.shape), generator=gen, dtype=torch.float32, device=image.device)
    if signed:
        return n[0].mul_(sigma).add_(image)
    real, imag = n[0], n[1]
    real.mul_(sigma).add_(image).square_()
    imag.mul_(sigma).square_()
    return sqrt_(real.add_(imag))


def scale_relaxation(t1: torch.Tensor, t2: torch.Tensor, tissue: torch.Tensor, rng: np.random.Generator, grid: int,
                     factor_range: tuple[float, float]) -> tuple[float, float]:
    """Multiply T1 and T2 (ms, shape (..., Y, X), in place) of the ``tissue`` pixels by one smooth factor field.

    Why: a bSSFP image fixes a pixel's M0 and T1/T2 ratio but hardly the scale of T1 and T2: at short TR
    the bSSFP signal ``M0 sin(a) / ((1 + cos a) + (1 - cos a) T1/T2)`` depends on T1 and T2 only through
    their ratio (:func:`~nnunetv2_physaug.physics.signal.bssfp` with ``short_tr``). Fat (343/58 ms), stomach
    fluid (~3000/~1000 ms) and blood (1550/270 ms) look alike in cine, and outside the heart the maps
    hold what the estimator assumed (intensity classes), while T2- or T1-weighted images of the same
    tissues differ (a stomach is bright in T2-weighted images). Drawing the scale ``k`` along this
    null direction of the bSSFP signal renders the other sequences of every tissue the cine image is
    compatible with, and leaves the blood and myocardium labels (where the maps are well determined)
    alone. ``log k`` is a smooth field (``grid`` × ``grid`` control values uniform in ``[log low, log
    high]``, bilinear), so different organs get different factors. Returns the field's (min, max) factor.
    """
    lo, hi = (math.log(v) for v in factor_range)
    field = smooth_field(rng, tuple(t1.shape[-2:]), grid, (lo, hi), device=t1.device).exp_()
    kmin, kmax = torch.aminmax(field)
    k = torch.where(tissue, field, torch.ones((), dtype=field.dtype, device=field.device))
    t1.mul_(k)
    t2.mul_(k)
    return float(kmin), float(kmax)
