"""Slice geometry between the native image grid and the prior's square grid (DESIGN §5).

Forward: per-slice percentile normalisation, transpose so that H >= W, symmetric zero pad to a
square of side max(H, W), bilinear resize (half-pixel centres, antialiased) to the prior size.
:func:`from_grid` is the exact inverse of the geometric part (resize back, un-pad, un-transpose),
so a map produced on the prior grid lands on the native pixels of the input slice.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class GridGeometry:
    """Mapping of a native (H, W) slice onto a (size, size) grid.

    Attributes:
        height, width: native slice shape in pixels.
        transposed: the slice is transposed first because H < W.
        side: side of the padded square, max(H, W).
        pad_before, pad_after: zero columns added left/right of the (transposed) slice.
        size: side of the prior grid.
    """

    height: int
    width: int
    transposed: bool
    side: int
    pad_before: int
    pad_after: int
    size: int

    @classmethod
    def plan(cls, height: int, width: int, size: int) -> "GridGeometry":
        transposed = height < width
        h, w = (width, height) if transposed else (height, width)
        pad = h - w
        return cls(height, width, transposed, h, pad // 2, pad - pad // 2, size)


def _resize(x: torch.Tensor, side: int) -> torch.Tensor:
    if x.shape[-1] == side and x.shape[-2] == side:
        return x
    # Half-pixel (align_corners=False) bilinear, antialiased when shrinking. The authors asked torch for
    # align_corners=True with antialias=True; torch's antialiased kernel does not honour align_corners
    # (and shifts the image when enlarging), so the consistent half-pixel convention is used both ways.
    down = side < x.shape[-1]
    return F.interpolate(x, size=(side, side), mode="bilinear", align_corners=False, antialias=down)


def to_grid(x: torch.Tensor, geom: GridGeometry, pad_value: float = 0.0) -> torch.Tensor:
    """(B, C, H, W) native -> (B, C, size, size) prior grid (transpose, pad with ``pad_value``, resize)."""
    if x.shape[-2:] != (geom.height, geom.width):
        raise ValueError(f"slice shape {tuple(x.shape[-2:])} does not match the geometry "
                         f"({geom.height}, {geom.width})")
    if geom.transposed:
        x = x.transpose(-1, -2)
    x = F.pad(x, (geom.pad_before, geom.pad_after, 0, 0), value=pad_value)
    return _resize(x, geom.size)


def from_grid(x: torch.Tensor, geom: GridGeometry) -> torch.Tensor:
    """(B, C, size, size) prior grid -> (B, C, H, W) native geometry (resize, un-pad, un-transpose)."""
    x = _resize(x, geom.side)
    x = x[..., :, geom.pad_before: geom.side - geom.pad_after]
    if geom.transposed:
        x = x.transpose(-1, -2)
    return x.contiguous()


def percentile_normalise(images: torch.Tensor, lo_pct: float = 0.0, hi_pct: float = 98.0,
                         clip: bool = True) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-slice ``(x - p_lo) / (p_hi - p_lo)``, clipped to [0, 1] when ``clip`` (else only at 0).

    Args:
        images: (B, H, W) raw intensities (any scale).
    Returns:
        ``(normalised (B, H, W), p_lo (B,), p_hi (B,))``. A constant slice maps to zeros.
    """
    flat = images.reshape(images.shape[0], -1).float()
    q = torch.quantile(flat, torch.tensor([lo_pct / 100.0, hi_pct / 100.0], device=flat.device), dim=1)
    lo, hi = q[0], q[1]
    span = (hi - lo).clamp_min(torch.finfo(torch.float32).tiny)
    x = (images.float() - lo.view(-1, 1, 1)) / span.view(-1, 1, 1)
    x = x.clamp(0.0, 1.0) if clip else x.clamp_min(0.0)
    x = torch.where((hi > lo).view(-1, 1, 1), x, torch.zeros_like(x))
    return x, lo, hi
