"""Smooth random fields (sums of plane waves): deformations, tissue texture, coil sensitivities."""
from __future__ import annotations

import numpy as np

from .params import Spec, draw


def random_waves(rng: np.random.Generator, n: int, wavelength: Spec, z_fraction: float = 0.5):
    """Draw ``n`` random plane waves.

    Args:
        wavelength: in-plane wavelength in mm (number or [low, high]).
        z_fraction: the through-plane wave number is up to this fraction of the in-plane one.
    Returns:
        ``(vectors, phases)``: wave vectors (n, 3) in rad/mm along (x, y, z) and phases (n,) in rad.
    """
    lam = np.array([draw(wavelength, rng) for _ in range(n)])
    theta = rng.uniform(0, 2 * np.pi, n)
    kz = rng.uniform(-z_fraction, z_fraction, n)
    k = 2 * np.pi / lam
    vec = np.stack([k * np.cos(theta), k * np.sin(theta), k * kz], axis=1)
    return vec, rng.uniform(0, 2 * np.pi, n)


def wave_field(vec: np.ndarray, phase: np.ndarray, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
    """``sqrt(2/n) sum_k cos(k.r + phase_k)``: zero mean, unit variance over random phases.

    Args:
        x, y, z: 1D coordinate vectors in mm spanning the grid.
    Returns:
        float32 array (len(z), len(y), len(x)).
    """
    out = np.zeros((len(z), len(y), len(x)), dtype=np.float32)
    for k, p in zip(vec, phase):
        # separable: cos(a + b + c) = Re(e^ia e^ib e^ic), one complex product per point
        ex = np.exp(1j * (k[0] * np.asarray(x, dtype=np.float64))).astype(np.complex64)
        ey = np.exp(1j * (k[1] * np.asarray(y, dtype=np.float64))).astype(np.complex64)
        ez = np.exp(1j * (k[2] * np.asarray(z, dtype=np.float64) + p)).astype(np.complex64)
        out += ((ez[:, None, None] * ey[None, :, None]) * ex[None, None, :]).real
    return out * np.float32(np.sqrt(2.0 / len(phase)))


def unit_peak_field(rng: np.random.Generator, shape_zyx: tuple[int, int, int], spacing_zyx_mm, n_waves: int = 4,
                    wavelength_mm: Spec = (150.0, 400.0)) -> np.ndarray:
    """A smooth field scaled so its largest absolute value over the grid is 1 (float32, ``shape_zyx``).

    Used for receive-coil sensitivity and transmit (B1) inhomogeneity: ``1 + amplitude * field``.
    """
    vec, ph = random_waves(rng, n_waves, list(wavelength_mm), z_fraction=0.3)
    nz, ny, nx = shape_zyx
    dz, dy, dx = spacing_zyx_mm
    f = wave_field(vec, ph, (np.arange(nx) - nx / 2) * dx, (np.arange(ny) - ny / 2) * dy, (np.arange(nz) - nz / 2) * dz)
    peak = float(np.abs(f).max())
    return f / np.float32(peak) if peak > 0 else f
