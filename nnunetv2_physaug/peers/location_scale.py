"""Global and local location-scale augmentation (GLA / LLA) and saliency-balancing fusion (SBF).

Written from Su et al., *Rethinking Data Augmentation for Single-source Domain Generalization in Medical
Image Segmentation* (SLAug), AAAI 2023. On an image scaled to [0, 1]:

- a random monotonic **Bézier intensity curve** (cubic, control points (0, 0), (a1, b1), (a2, b2), (1, 1),
  a and b ~ U(0, 1)), or its **inverse** 1 - B(v) (bright becomes dark), then
- a **location-scale** change v -> clip(s v + l, 0, 1): scale s ~ N(1, 0.1) clipped to [0.9, 1.1],
  location l ~ N(0, 0.5) clipped so that the 20th percentile of the remapped values stays >= 0 and the 80th
  <= 1 (a shift never pushes most of the image out of range).

GLA draws one curve (never inverted) and one location-scale for the whole image. LLA draws them per
label region: the background (label 0) always inverted, each foreground label inverted with probability
0.5; pixels darker than ``background_threshold`` (air, 1 % of the range) keep their value. nnU-Net's inputs
are z-scored, not in [0, 1]: each image is mapped to [0, 1] by its own minimum and maximum and back after.

SBF fuses a GLA and an LLA image by the network's gradient saliency on the GLA image (coarse |d loss / d x|,
rescaled to [0, 1]): ``s gla + (1 - s) lla`` - the regions the network relies on take the global change,
the others the local one. It needs a second forward pass per step (the trainer's ``peer_saliency_fusion``).

Every random number of an image comes from a CPU ``torch.Generator``, one image after another. Shapes:
images ``(C, *spatial)``, labels ``(1, *spatial)`` integer.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F

#: points on the Bézier curve used to tabulate it
CURVE_POINTS = 1000


@dataclass
class Remap:
    """One region's intensity change on [0, 1] values: the Bézier control points ``(a1, b1, a2, b2)``,
    ``inverted`` (1 - B), then ``scale`` and the drawn location ``location`` (clipped per region on use)."""
    controls: tuple[float, float, float, float]
    inverted: bool
    scale: float
    location: float


def draw_remap(generator: torch.Generator, p_invert: float) -> Remap:
    """Draw one region's remap; the curve is inverted with probability ``p_invert``."""
    a1, b1, a2, b2 = (float(v) for v in torch.rand(4, generator=generator))
    inverted = bool(torch.rand((), generator=generator) < p_invert)
    scale = float(torch.clamp(1.0 + 0.1 * torch.randn((), generator=generator), 0.9, 1.1))
    location = float(0.5 * torch.randn((), generator=generator))
    return Remap((a1, b1, a2, b2), inverted, scale, location)


def bezier_curve(v: torch.Tensor, controls: tuple[float, float, float, float]) -> torch.Tensor:
    """B(v): the cubic Bézier curve through (0, 0) and (1, 1) with inner control points (a1, b1), (a2, b2),
    read as a function of its x coordinate (monotonic for a, b in [0, 1]) at the values ``v`` in [0, 1]."""
    a1, b1, a2, b2 = controls
    t = torch.linspace(0.0, 1.0, CURVE_POINTS, dtype=torch.float64)
    bern = torch.stack([3 * (1 - t) ** 2 * t, 3 * (1 - t) * t ** 2, t ** 3])
    xs = bern[0] * a1 + bern[1] * a2 + bern[2]
    ys = bern[0] * b1 + bern[1] * b2 + bern[2]
    xs, order = torch.sort(xs)  # non-decreasing already; sort guards rounding
    ys = ys[order]
    flat = v.reshape(-1).to(torch.float64).clamp(0.0, 1.0)
    i = torch.searchsorted(xs.to(v.device), flat).clamp(1, CURVE_POINTS - 1)
    xs, ys = xs.to(v.device), ys.to(v.device)
    x0, x1, y0, y1 = xs[i - 1], xs[i], ys[i - 1], ys[i]
    w = ((flat - x0) / (x1 - x0).clamp_min(1e-12)).clamp(0.0, 1.0)
    return (y0 + w * (y1 - y0)).reshape(v.shape).to(v.dtype)


def apply_remap(v: torch.Tensor, remap: Remap) -> torch.Tensor:
    """Values ``v`` in [0, 1] (one region's, any shape) through the curve and the location-scale change."""
    if v.numel() == 0:
        return v
    curved = bezier_curve(v, remap.controls)
    if remap.inverted:
        curved = 1.0 - curved
    scaled = curved * remap.scale
    q = torch.quantile(scaled.reshape(-1).float()[:100_000], torch.tensor([0.2, 0.8], device=v.device))
    lo, hi = float(-q[0]), float(1.0 - q[1])
    location = min(max(remap.location, lo), hi) if lo <= hi else 0.5 * (lo + hi)
    return (scaled + location).clamp(0.0, 1.0)


def _unit_range(image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    lo, hi = image.min(), image.max()
    return (image - lo) / (hi - lo).clamp_min(1e-12), lo, hi


def global_location_scale(image: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """GLA of one image ``(C, *spatial)``: one non-inverted curve and location-scale for every pixel."""
    v, lo, hi = _unit_range(image)
    remap = draw_remap(generator, p_invert=0.0)
    return lo + apply_remap(v, remap) * (hi - lo)


def local_location_scale(image: torch.Tensor, labels: torch.Tensor, generator: torch.Generator,
                         background_threshold: float = 0.01, n_labels: Optional[int] = None) -> torch.Tensor:
    """LLA of one image ``(C, *spatial)`` with its labels ``(1, *spatial)``: a remap per label region
    (background inverted, foreground labels inverted with p 0.5); pixels at or below
    ``background_threshold`` (of the [0, 1] range) unchanged. A remap is drawn for every label
    ``0 .. n_labels - 1`` (default: the largest present + 1), present or not, so that an image's draws do
    not depend on which labels a crop happens to hold."""
    v, lo, hi = _unit_range(image)
    lab = labels.to(torch.long).expand_as(v)
    n = int(lab.max()) + 1 if n_labels is None else int(n_labels)
    out = torch.zeros_like(v)
    for k in range(n):
        remap = draw_remap(generator, p_invert=1.0 if k == 0 else 0.5)
        region = lab == k
        if region.any():
            out[region] = apply_remap(v[region], remap)
    keep = v <= background_threshold
    out[keep] = v[keep]
    return lo + out * (hi - lo)


def saliency_map(grad: torch.Tensor, grid: int = 3) -> torch.Tensor:
    """SBF's saliency of a batch's input gradient ``(B, C, *spatial)``: |grad| summed over channels,
    averaged on a coarse grid of ``grid`` cells per axis, upsampled (linear) and rescaled to [0, 1] per image.
    Returns ``(B, 1, *spatial)``."""
    spatial = tuple(grad.shape[2:])
    s = grad.abs().sum(1, keepdim=True)
    coarse = F.adaptive_avg_pool2d(s, grid) if len(spatial) == 2 else F.adaptive_avg_pool3d(s, grid)
    mode = "bilinear" if len(spatial) == 2 else "trilinear"
    s = F.interpolate(coarse, size=spatial, mode=mode, align_corners=False)
    flat = s.reshape(s.shape[0], -1)
    lo, hi = flat.min(1).values, flat.max(1).values
    shape = (-1,) + (1,) * (s.dim() - 1)
    return (s - lo.view(shape)) / (hi - lo).clamp_min(1e-12).view(shape)
