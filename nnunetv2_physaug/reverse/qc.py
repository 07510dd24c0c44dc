"""Quality figures of estimated tissue maps.

* Data consistency: the NRMSE (percent) between an input image and the rendering of its maps by the
  forward model (:class:`~.forward.BSSFPForwardModel`, short-TR bSSFP at 45 deg by default) after a least-squares fit of one global scale,
  because M0 is only known up to a scale: ``100 * ||x - c r|| / ||x||`` with ``c = <r, x> / <r, r>``.
* Map error against ground truth: mean absolute percentage error of T1/T2 inside a region.
"""
from __future__ import annotations

import torch

from .forward import FORWARD_MODEL, BSSFPForwardModel

_EPS = 1e-12


def fit_scale(images: torch.Tensor, rendered: torch.Tensor, dims: tuple[int, ...] = (-2, -1)) -> torch.Tensor:
    """Least-squares scale ``c`` minimising ``||images - c rendered||`` over ``dims`` (0 where rendered is 0)."""
    num = (images * rendered).sum(dim=dims)
    den = (rendered * rendered).sum(dim=dims)
    return torch.where(den > _EPS, num / den.clamp_min(_EPS), torch.zeros_like(num))


def nrmse_pct(images: torch.Tensor, rendered: torch.Tensor, dims: tuple[int, ...] = (-2, -1)) -> torch.Tensor:
    """Scale-fitted relative L2 error in percent over ``dims`` (0 for an all-zero image rendered as 0)."""
    c = fit_scale(images, rendered, dims)
    shape = list(c.shape) + [1] * len(dims)
    resid = images - c.reshape(shape) * rendered
    num = resid.pow(2).sum(dim=dims).sqrt()
    den = images.pow(2).sum(dim=dims).sqrt()
    return torch.where(den > _EPS, 100.0 * num / den.clamp_min(_EPS), 100.0 * (num > _EPS).to(num.dtype))


def bssfp_nrmse_pct_per_sample(images: torch.Tensor, maps: torch.Tensor,
                               model: BSSFPForwardModel = FORWARD_MODEL) -> torch.Tensor:
    """Per-sample data-consistency NRMSE.

    Args:
        images: (B, H, W) input slices (any scale).
        maps: (B, K, 3, H, W) maps [M0, T1 ms, T2 ms].
        model: the forward model that renders the maps.
    Returns:
        (B, K) NRMSE in percent.
    """
    rendered = model.render_maps(maps)
    return nrmse_pct(images.to(rendered.dtype)[:, None], rendered)


def bssfp_nrmse_pct(images: torch.Tensor, maps: torch.Tensor, model: BSSFPForwardModel = FORWARD_MODEL) -> torch.Tensor:
    """Data-consistency NRMSE per slice in percent.

    Args:
        images: (B, H, W) input slices (any scale).
        maps: (B, 3, H, W), or (B, K, 3, H, W) with K samples (the mean over samples is returned).
        model: the forward model that renders the maps.
    Returns:
        (B,) NRMSE in percent.
    """
    if maps.dim() == 4:
        maps = maps[:, None]
    if maps.dim() != 5 or maps.shape[2] != 3 or maps.shape[-2:] != images.shape[-2:] or maps.shape[0] != images.shape[0]:
        raise ValueError(f"maps of shape {tuple(maps.shape)} do not fit images of shape {tuple(images.shape)}; "
                         "expected (B, [K,] 3, H, W)")
    return bssfp_nrmse_pct_per_sample(images, maps, model).mean(dim=1)


def mape_pct(estimate: torch.Tensor, truth: torch.Tensor, mask: torch.Tensor) -> float:
    """Mean absolute percentage error ``100 * mean(|est - truth| / truth)`` over ``mask`` (NaN if empty)."""
    mask = mask.bool()
    if not bool(mask.any()):
        return float("nan")
    est, tru = estimate[mask].double(), truth[mask].double()
    return float(100.0 * ((est - tru).abs() / tru.abs().clamp_min(_EPS)).mean())
