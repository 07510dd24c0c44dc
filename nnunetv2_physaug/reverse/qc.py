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


#: Physiological ranges (ms) of the median T1 and T2 of a case's labelled blood and myocardium, wide enough for
#: 1.5 T and 3 T, native and moderately contrast-enhanced blood, and disease (reference values at 1.5 T:
#: myocardium 950-1050 / 45-56 ms, blood 1450-1650 / 250-290 ms; 3 T: myocardium ~1050-1180 / ~50 ms, blood
#: ~1900 / ~270 ms; physics/data/tissues.toml). Maps outside them come from an estimator that did not fit (an
#: untrained or wrong prior, a wrong latent mapping), not from a heart.
PLAUSIBLE_MEDIANS_MS: dict[str, dict[str, tuple[float, float]]] = {
    "myocardium": {"T1": (600.0, 1600.0), "T2": (25.0, 100.0)},
    "blood": {"T1": (800.0, 2600.0), "T2": (80.0, 500.0)},
}


def labelled_tissue_medians(maps, labels, tissue_values: dict[str, tuple[int, ...]]) -> dict[str, dict[str, float]]:
    """Median T1 and T2 (ms) over the pixels of each tissue's label values, all slices and samples.

    Args:
        maps: (Z, K, 3, X, Y) maps [M0, T1 ms, T2 ms] (numpy).
        labels: (X, Y, Z) integer labels (numpy).
        tissue_values: ``{"blood": (1, 3), "myocardium": (2,)}``.
    Returns:
        ``{tissue: {"T1": ms, "T2": ms}}`` for the tissues with labelled pixels.
    """
    import numpy as np

    lab = np.moveaxis(labels, 2, 0)  # (Z, X, Y)
    out = {}
    for tissue, values in tissue_values.items():
        mask = np.isin(lab, values)
        if not values or not mask.any():
            continue
        # (Z, K, X, Y) -> (Z, X, Y, K): the mask picks pixels, every sample of them counts
        out[tissue] = {name: float(np.median(np.moveaxis(maps[:, :, ch], 1, 3)[mask]))
                       for name, ch in (("T1", 1), ("T2", 2))}
    return out


def implausible_medians(medians: dict[str, dict[str, float]]) -> list[str]:
    """The medians outside :data:`PLAUSIBLE_MEDIANS_MS`, each as ``"myocardium T1 2251 ms (600-1600)"``."""
    bad = []
    for tissue, values in medians.items():
        for name, value in values.items():
            lo, hi = PLAUSIBLE_MEDIANS_MS[tissue][name]
            if not lo <= value <= hi:  # NaN fails too
                bad.append(f"{tissue} {name} {value:.0f} ms ({lo:g}-{hi:g})")
    return bad
