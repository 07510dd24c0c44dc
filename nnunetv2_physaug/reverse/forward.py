"""The paper's measurement model on latent maps, and the per-pixel data-consistency solve.

Measurement (DESIGN §5): a slice normalised to [0, 1] by its 0th/98th percentiles, times 0.3, is
modelled as the short-TR bSSFP signal with the sin(alpha) factor folded into M0::

    A(z) = M0 / (1 + cos a + (1 - cos a) T1 / max(T2, eps)),   a = 45 deg

with (M0, T1, T2) from the latent z by the prior's :class:`~.prior.LatentMapping`. The signal is
per pixel, so the data-consistency problem of the fast sampler decouples into one 3-unknown,
1-equation problem per pixel, solved by projected Gauss-Newton with a closed-form
(Sherman-Morrison) inverse: no autograd, no loops over pixels.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch

from ..physics import bssfp
from .prior import LatentMapping

#: Flip angle (degrees) and measurement scale of the paper's forward model.
PAPER_FLIP_DEG = 45.0
PAPER_INPUT_SCALE = 0.3


def bssfp_latent(z: torch.Tensor, mapping: LatentMapping, flip_deg: float = PAPER_FLIP_DEG,
                 clip: bool = False, t2_floor_ms: float = 1e-4) -> torch.Tensor:
    """Forward model on latents: (N, 3, H, W) -> (N, 1, H, W) bSSFP signal (sin(a) folded into M0).

    ``clip=False`` is the paper's guidance (u = (z + 1) / 2 unclipped, so gradients never vanish);
    ``clip=True`` clamps u to [0, 1] like the final maps. T2 is floored at ``t2_floor_ms``.
    """
    u = (z + 1.0) * 0.5
    if clip:
        u = u.clamp(0.0, 1.0)
    m0 = u[:, 0:1] / mapping.m0_divisor
    t1 = u[:, 1:2] * mapping.t1_scale_ms
    t2 = (u[:, 2:3] * mapping.t2_scale_ms).clamp_min(t2_floor_ms)
    return bssfp(m0, t1, t2, flip_deg, 0.0, short_tr=True) / math.sin(math.radians(flip_deg))


def signal_and_jacobian(z: torch.Tensor, mapping: LatentMapping, flip_deg: float,
                         t2_floor_ms: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Signal (N, 1, H, W) and its derivative w.r.t. the latent (N, 3, H, W), in closed form."""
    c = math.cos(math.radians(flip_deg))
    k = 1.0 - c
    u = ((z + 1.0) * 0.5).clamp(0.0, 1.0)
    m0 = u[:, 0:1] / mapping.m0_divisor
    t1 = u[:, 1:2] * mapping.t1_scale_ms
    t2 = (u[:, 2:3] * mapping.t2_scale_ms).clamp_min(t2_floor_ms)
    den = 1.0 + c + k * t1 / t2
    s = m0 / den
    # dS/dz = dS/du * du/dz with du/dz = 1/2.
    d_m0 = 0.5 / (mapping.m0_divisor * den)
    d_t1 = -0.5 * s * k * mapping.t1_scale_ms / (t2 * den)
    d_t2 = 0.5 * s * k * t1 * mapping.t2_scale_ms / (t2 * t2 * den)
    return s, torch.cat([d_m0, d_t1, d_t2], dim=1)


def data_consistency(z0: torch.Tensor, y: torch.Tensor, mapping: LatentMapping, prior_var: torch.Tensor | float,
                     noise_var: float, channel_weights: Sequence[float] = (1.0, 1.0, 1.0), iters: int = 3,
                     flip_deg: float = PAPER_FLIP_DEG, t2_floor_ms: float = 1.0,
                     mask: torch.Tensor | None = None) -> torch.Tensor:
    """Per-pixel MAP correction of a denoised latent towards the measurement.

    Minimises, for every pixel independently, over z in [-1, 1]^3::

        (y - A(z))^2 / noise_var + sum_c w_c (z_c - z0_c)^2 / prior_var

    by ``iters`` projected Gauss-Newton steps (active-set at the box bounds, step halving until the
    pixel's objective decreases) started at ``z0``.

    Args:
        z0: (N, 3, H, W) denoised latent estimate (the prior's x0-hat).
        y: (N, 1, H, W) measurement (normalised slice times 0.3).
        mapping: latent -> physical mapping of the prior.
        prior_var: variance of the prior term, scalar or broadcastable to (N, 1, 1, 1).
        noise_var: variance of the measurement term.
        channel_weights: relative stiffness of [M0, T1, T2] (smaller = that channel takes more of the correction).
        iters: Gauss-Newton iterations.
        mask: optional (N, 1, H, W) bool; pixels outside keep ``z0``.
    Returns:
        (N, 3, H, W) corrected latent.
    """
    w = torch.as_tensor(channel_weights, dtype=z0.dtype, device=z0.device).view(1, 3, 1, 1)
    d_inv = torch.as_tensor(prior_var, dtype=z0.dtype, device=z0.device) / w  # inverse of the prior Hessian diagonal

    def objective(z_: torch.Tensor, s_: torch.Tensor) -> torch.Tensor:
        return (y - s_).pow(2) / noise_var + ((z_ - z0).pow(2) / d_inv).sum(1, keepdim=True)

    z = z0.clamp(-1.0, 1.0)
    s, a = signal_and_jacobian(z, mapping, flip_deg, t2_floor_ms)
    f = objective(z, s)
    for _ in range(iters):
        r = y - s
        # Normal equations (a a^T / nv + D) delta = a r / nv - D (z - z0), D = diag(w) / prior_var,
        # by Sherman-Morrison, rearranged so nothing is divided by the small noise variance alone
        # (the textbook form cancels two terms of size r/nv and loses the step in float32):
        #   delta = D^-1 a (r + a . D^-1 g) / (nv + a . D^-1 a) - D^-1 g,   g = D (z - z0).
        g = (z - z0) / d_inv
        grad_data = a * r / noise_var - g           # the descent direction, for the active set only
        # Active set: a channel at a bound of the box whose descent direction points outwards is held
        # there, so the rest of the correction goes to the channels that can still move.
        active = ((z >= 1.0) & (grad_data > 0)) | ((z <= -1.0) & (grad_data < 0))
        d_eff = torch.where(active, torch.zeros_like(z), d_inv.expand_as(z))
        dg = d_eff * g
        dia = d_eff * a
        delta = dia * (r + (a * dg).sum(1, keepdim=True)) / (noise_var + (a * dia).sum(1, keepdim=True)) - dg
        # The signal is far from linear in T2 when T2 is short (S ~ 1/T2), so a full Gauss-Newton
        # step can overshoot and oscillate: take the longest of 1, 1/2, ... 1/16 that lowers each
        # pixel's objective (monotone descent), or stay.
        z_new, s_new, f_new = z, s, f
        pending = torch.ones_like(f, dtype=torch.bool)
        step = 1.0
        for _halving in range(5):
            z_try = (z + step * delta).clamp(-1.0, 1.0)
            s_try, a_try = signal_and_jacobian(z_try, mapping, flip_deg, t2_floor_ms)
            f_try = objective(z_try, s_try)
            take = pending & (f_try < f)
            z_new = torch.where(take, z_try, z_new)
            s_new = torch.where(take, s_try, s_new)
            f_new = torch.where(take, f_try, f_new)
            a = torch.where(take, a_try, a)
            pending = pending & ~take
            if not bool(pending.any()):
                break
            step *= 0.5
        z, s, f = z_new, s_new, f_new
    if mask is not None:
        z = torch.where(mask, z, z0)
    return z
