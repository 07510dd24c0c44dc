"""The measurement model of reverse imaging (one object), and the per-pixel data-consistency solve.

Every part of reverse imaging explains a bSSFP cine image with the same model,
:class:`BSSFPForwardModel` (DESIGN §5): the short-TR (TR << T1, T2) bSSFP steady state

    S = M0 sin a / (1 + cos a + (1 - cos a) T1 / T2),   a = 45 deg by default

(:func:`nnunetv2_physaug.physics.bssfp` with ``short_tr=True``, checked against a Bloch simulation in
``scripts/check_physics.py``). The weight-free estimator solves it for M0, the diffusion samplers guide
on it and the engine's QC and M0 harmonisation re-render with it; a diffusion sampler whose flip angle
is changed (``--sampler-option flip_deg=...``) carries its own model, which the engine then uses too.

On the prior's latents (the paper's convention), a slice normalised to [0, 1] by its 0th/98th
percentiles, times 0.3, is modelled with the sin(a) factor folded into M0 and (M0, T1, T2) from the
latent z by the prior's :class:`~.prior.LatentMapping`. The signal is per pixel, so the
data-consistency problem of the fast sampler decouples into one 3-unknown, 1-equation problem per
pixel, solved by projected Gauss-Newton with a closed-form (Sherman-Morrison) inverse.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch

from ..physics import bssfp
from .prior import LatentMapping

#: measurement scale of the paper's forward model (normalised slice times this)
PAPER_INPUT_SCALE = 0.3
#: T1/T2 floor (ms) of renders of physical maps: estimators may return 0 before the engine clamps
_RELAXATION_FLOOR_MS = 1e-3


@dataclass(frozen=True)
class BSSFPForwardModel:
    """Short-TR bSSFP at flip angle ``flip_deg`` (degrees): maps [M0, T1 ms, T2 ms] -> signal.

    Tensors broadcast; T1, T2 in ms, M0 relative.
    """

    flip_deg: float = 45.0

    @property
    def _cos_sin(self) -> tuple[float, float]:
        a = math.radians(self.flip_deg)
        return math.cos(a), math.sin(a)

    def describe(self) -> str:
        """The model in words (recorded in tissue-map manifests)."""
        return f"short-TR bSSFP, alpha={self.flip_deg:g} deg"

    def render(self, m0, t1, t2, sin_folded: bool = False):
        """Signal of physical maps (any broadcastable shapes); ``sin_folded`` divides out sin(a) (the paper's
        measurement scale). T1/T2 are floored at 1e-3 ms."""
        t1 = torch.as_tensor(t1).clamp_min(_RELAXATION_FLOOR_MS)
        t2 = torch.as_tensor(t2).clamp_min(_RELAXATION_FLOOR_MS)
        s = bssfp(m0, t1, t2, self.flip_deg, 0.0, short_tr=True)
        return s / self._cos_sin[1] if sin_folded else s

    def render_maps(self, maps: torch.Tensor) -> torch.Tensor:
        """Signal of stacked maps (..., 3, H, W) [M0, T1 ms, T2 ms] -> (..., H, W)."""
        return self.render(maps[..., 0, :, :], maps[..., 1, :, :], maps[..., 2, :, :])

    def m0_for_signal(self, signal: torch.Tensor, t1: torch.Tensor, t2: torch.Tensor) -> torch.Tensor:
        """The M0 whose signal with these T1, T2 (ms) is ``signal``: the model solved for M0 (it is linear in M0)."""
        c, s = self._cos_sin
        return signal * (1.0 + c + (1.0 - c) * t1 / t2) / s

    def _latent_maps(self, z: torch.Tensor, mapping: LatentMapping, clip: bool, t2_floor_ms: float):
        u = (z + 1.0) * 0.5
        if clip:
            u = u.clamp(0.0, 1.0)
        m0 = u[:, 0:1] / mapping.m0_divisor
        t1 = u[:, 1:2] * mapping.t1_scale_ms
        t2 = (u[:, 2:3] * mapping.t2_scale_ms).clamp_min(t2_floor_ms)
        return m0, t1, t2

    def render_latent(self, z: torch.Tensor, mapping: LatentMapping, clip: bool = False,
                      t2_floor_ms: float = 1e-4) -> torch.Tensor:
        """Signal of latents: (N, 3, H, W) -> (N, 1, H, W), sin(a) folded into M0.

        ``clip=False`` is the paper's guidance (u = (z + 1) / 2 unclipped, so gradients never vanish);
        ``clip=True`` clamps u to [0, 1] like the final maps. T2 is floored at ``t2_floor_ms``.
        """
        m0, t1, t2 = self._latent_maps(z, mapping, clip, t2_floor_ms)
        return bssfp(m0, t1, t2, self.flip_deg, 0.0, short_tr=True) / self._cos_sin[1]

    def latent_signal_and_jacobian(self, z: torch.Tensor, mapping: LatentMapping,
                                   t2_floor_ms: float) -> tuple[torch.Tensor, torch.Tensor]:
        """Signal (N, 1, H, W) of clipped latents and its derivative w.r.t. the latent (N, 3, H, W), closed form
        (tests compare it with autograd through :meth:`render_latent`)."""
        c, _ = self._cos_sin
        k = 1.0 - c
        m0, t1, t2 = self._latent_maps(z, mapping, True, t2_floor_ms)
        den = 1.0 + c + k * t1 / t2
        s = m0 / den
        # dS/dz = dS/du * du/dz with du/dz = 1/2.
        d_m0 = 0.5 / (mapping.m0_divisor * den)
        d_t1 = -0.5 * s * k * mapping.t1_scale_ms / (t2 * den)
        d_t2 = 0.5 * s * k * t1 * mapping.t2_scale_ms / (t2 * t2 * den)
        return s, torch.cat([d_m0, d_t1, d_t2], dim=1)


#: the paper's model (45 deg): the weight-free estimator, prior training and the samplers' default
FORWARD_MODEL = BSSFPForwardModel()


def data_consistency(z0: torch.Tensor, y: torch.Tensor, mapping: LatentMapping, prior_var: torch.Tensor | float,
                     noise_var: float, channel_weights: Sequence[float] = (1.0, 1.0, 1.0), iters: int = 3,
                     model: BSSFPForwardModel = FORWARD_MODEL, t2_floor_ms: float = 1.0,
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
        model: the measurement model.
        mask: optional (N, 1, H, W) bool; pixels outside keep ``z0``.
    Returns:
        (N, 3, H, W) corrected latent.
    """
    w = torch.as_tensor(channel_weights, dtype=z0.dtype, device=z0.device).view(1, 3, 1, 1)
    d_inv = torch.as_tensor(prior_var, dtype=z0.dtype, device=z0.device) / w  # inverse of the prior Hessian diagonal

    def objective(z_: torch.Tensor, s_: torch.Tensor) -> torch.Tensor:
        return (y - s_).pow(2) / noise_var + ((z_ - z0).pow(2) / d_inv).sum(1, keepdim=True)

    z = z0.clamp(-1.0, 1.0)
    s, a = model.latent_signal_and_jacobian(z, mapping, t2_floor_ms)
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
            s_try, a_try = model.latent_signal_and_jacobian(z_try, mapping, t2_floor_ms)
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
