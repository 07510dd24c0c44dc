"""Diffusion samplers: geometry, forward model, data-consistency solve, DPS step, NCC selection, end to end."""
from __future__ import annotations

import math
import types

import numpy as np
import pytest
import torch

from nnunetv2_physaug.physics import bssfp
from nnunetv2_physaug.reverse.diffusion import DiffusionEstimator
from nnunetv2_physaug.reverse.forward import FORWARD_MODEL, BSSFPForwardModel, data_consistency

bssfp_latent = FORWARD_MODEL.render_latent
from nnunetv2_physaug.reverse.geometry import GridGeometry, from_grid, percentile_normalise, to_grid
from nnunetv2_physaug.reverse.ncc import local_ncc, select_by_ncc
from nnunetv2_physaug.reverse.prior import LatentMapping, PhysicsPrior, tiny_prior_config

torch.set_num_threads(1)
MAP = LatentMapping()


# ------------------------------------------------------------------ geometry
@pytest.mark.parametrize("h,w", [(17, 30), (31, 12), (20, 20), (9, 14)])
def test_geometry_round_trip_is_exact_without_resize(h, w):
    x = torch.randn(2, 3, h, w)
    geom = GridGeometry.plan(h, w, max(h, w))
    g = to_grid(x, geom, pad_value=-7.0)
    assert g.shape == (2, 3, max(h, w), max(h, w))
    assert torch.equal(from_grid(g, geom), x)
    # transposed so that H >= W, padding symmetric (+-1) on the short side
    assert geom.transposed == (h < w)
    assert abs(geom.pad_before - geom.pad_after) <= 1
    assert int((g[0, 0] == -7.0).all(dim=0).sum()) == abs(h - w)


@pytest.mark.parametrize("h,w,size", [(40, 64, 32), (64, 40, 96), (23, 37, 16)])
def test_geometry_round_trip_through_resize_keeps_orientation(h, w, size):
    """A smooth anisotropic field comes back in place (only interpolation error)."""
    yy, xx = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    field = torch.stack([torch.sin(2 * yy) + 0.3 * xx, 2 * xx ** 2 - yy])[None]
    back = from_grid(to_grid(field, GridGeometry.plan(h, w, size), pad_value=0.0), GridGeometry.plan(h, w, size))
    assert back.shape == field.shape
    inner = (slice(None), slice(None), slice(2, -2), slice(2, -2))
    err = (back - field)[inner].abs().max()
    assert err < 0.12, err
    # a transposed or flipped result would be far off
    assert (back - field.flip(-1))[inner].abs().max() > 0.5


def test_percentile_normalisation_matches_numpy():
    rng = np.random.default_rng(0)
    img = rng.gamma(2.0, 50.0, size=(3, 11, 17)).astype(np.float32)
    img[2] = 5.0                                                 # constant slice -> zeros
    x, lo, hi = percentile_normalise(torch.from_numpy(img), 0.0, 98.0)
    for i in range(2):
        p0, p98 = np.percentile(img[i], [0, 98])
        ref = np.clip((img[i] - p0) / (p98 - p0), 0, 1)
        assert np.allclose(x[i].numpy(), ref, atol=1e-5)
    assert torch.all(x[2] == 0)
    x_unclipped, _, _ = percentile_normalise(torch.from_numpy(img), 0.0, 98.0, clip=False)
    assert x_unclipped[:2].max() > 1.0


# ------------------------------------------------------------------ forward model and data consistency
def test_forward_model_is_the_short_tr_bssfp_without_sin():
    z = torch.rand(4, 3, 5, 6) * 1.8 - 0.9
    u = (z + 1) / 2
    ref = bssfp(u[:, 0] / 0.6, 3200 * u[:, 1], 300 * u[:, 2], 45.0, 0.0, short_tr=True) / math.sin(math.pi / 4)
    assert torch.allclose(bssfp_latent(z, MAP)[:, 0], ref, rtol=1e-5)
    # closed form at alpha = 45 deg: M0 / (1 + cos a + (1 - cos a) T1/T2)
    c = math.cos(math.pi / 4)
    hand = (u[:, 0] / 0.6) / (1 + c + (1 - c) * (3200 * u[:, 1]) / (300 * u[:, 2]))
    assert torch.allclose(bssfp_latent(z, MAP)[:, 0], hand, rtol=1e-5)


def test_data_consistency_solves_the_per_pixel_map_problem():
    torch.manual_seed(0)
    z0 = torch.rand(2, 3, 4, 5) * 1.2 - 0.6
    z_true = (z0 + 0.15 * torch.randn_like(z0)).clamp(-0.9, 0.9)
    y = bssfp_latent(z_true, MAP)
    # data term dominant: the rendering matches the measurement
    fit = data_consistency(z0, y, MAP, prior_var=1.0, noise_var=1e-6, iters=10)
    assert (bssfp_latent(fit, MAP) - y).abs().max() < 1e-4
    # prior dominant: nothing moves
    still = data_consistency(z0, y, MAP, prior_var=1e-9, noise_var=1.0, iters=3)
    assert torch.allclose(still, z0, atol=1e-6)
    # a balanced problem: the solution is a stationary point (compare with autograd on the objective)
    pv, nv, w = 0.05, 0.01, torch.tensor([0.5, 1.0, 2.0]).view(1, 3, 1, 1)
    sol = data_consistency(z0, y, MAP, prior_var=pv, noise_var=nv, channel_weights=(0.5, 1.0, 2.0), iters=30)
    zz = sol.clone().requires_grad_(True)
    obj = ((y - bssfp_latent(zz, MAP)) ** 2 / nv).sum() + (w * (zz - z0) ** 2 / pv).sum()
    g, = torch.autograd.grad(obj, zz)
    assert g.abs().max() < 1e-3 * (1 + obj.item())
    # and it beats the start on the objective
    def f(z):
        return ((y - bssfp_latent(z, MAP)) ** 2 / nv).sum() + (w * (z - z0) ** 2 / pv).sum()
    assert f(sol) < f(z0)



def test_data_consistency_converges_from_a_saturated_start_in_float32():
    """A start with T1 = T2 = 0 and full M0 renders bright; the image is dark. The textbook
    Sherman-Morrison step cancels two ~1e5 terms there and lost the step in float32 (regression)."""
    z0 = torch.tensor([1.0, -1.0, -1.0]).view(1, 3, 1, 1)
    y = torch.full((1, 1, 1, 1), 1e-3)
    fit = data_consistency(z0, y, MAP, prior_var=1.0, noise_var=4e-4, channel_weights=(0.25, 1.0, 1.0), iters=8)
    start = bssfp_latent(z0, MAP, clip=True, t2_floor_ms=1.0)
    assert float(start) > 0.9
    assert float(bssfp_latent(fit, MAP, clip=True, t2_floor_ms=1.0)) < 0.01      # was stuck at 0.976


class _SymmetricLinearDenoiser(torch.nn.Module):
    """x0_hat = G z with G a symmetric 3x3 blur applied per channel plus a symmetric channel mix,
    written as a v-predictor so the prior's denoise() returns exactly G z."""

    def __init__(self, size: int, abar: torch.Tensor):
        super().__init__()
        k = torch.tensor([[0.05, 0.1, 0.05], [0.1, 0.4, 0.1], [0.05, 0.1, 0.05]])
        self.register_buffer("kernel", k.view(1, 1, 3, 3).repeat(3, 1, 1, 1))
        self.register_buffer("mix", torch.tensor([[0.6, 0.1, 0.0], [0.1, 0.5, 0.2], [0.0, 0.2, 0.7]]))
        self.abar = abar
        self.config = types.SimpleNamespace(in_channels=3, out_channels=3, sample_size=size)

    def g(self, z):
        blurred = torch.nn.functional.conv2d(z, self.kernel, padding=1, groups=3)
        return torch.einsum("cd,ndhw->nchw", self.mix, blurred)

    def forward(self, z, t):
        a = self.abar[torch.as_tensor(t).reshape(-1)].view(-1, 1, 1, 1).to(z.dtype)
        return types.SimpleNamespace(sample=(a.sqrt() * z - self.g(z)) / (1 - a).sqrt())  # v with x0 = G z


def test_jacobian_free_dps_direction_equals_the_autograd_dps_gradient():
    """For a denoiser with a symmetric Jacobian, two forward passes give -1/2 grad_z ||y - A(x0(z))||^2."""
    from diffusers import DDPMScheduler
    from nnunetv2_physaug.reverse.diffusion import jacobian_free_dps
    s, t = 8, 400
    sched = DDPMScheduler(num_train_timesteps=1000, prediction_type="v_prediction")
    prior = PhysicsPrior(_SymmetricLinearDenoiser(s, sched.alphas_cumprod.float()), sched)
    torch.manual_seed(3)
    z = (torch.rand(2, 3, s, s) * 1.2 - 0.6).double()
    y = torch.rand(2, 1, s, s).double() * 0.3
    prior.unet.double()
    x0, eps, direction = jacobian_free_dps(prior, z, t, y, fd_step=1e-4)
    zz = z.clone().requires_grad_(True)
    x0_auto, eps_auto = prior.denoise(zz, t)
    loss = (y - bssfp_latent(x0_auto, MAP, t2_floor_ms=1e-4)).pow(2).sum()
    grad, = torch.autograd.grad(loss, zz)
    assert torch.allclose(x0, x0_auto.detach(), atol=1e-10)
    assert torch.allclose(eps, eps_auto.detach(), atol=1e-10)
    assert torch.allclose(direction, -0.5 * grad, rtol=1e-3, atol=1e-3 * float(grad.abs().max()))
    assert float(grad.abs().max()) > 1e-2


# ------------------------------------------------------------------ a DPS step against a hand-computed gradient
class _LinearEps(torch.nn.Module):
    """Analytic epsilon-predictor eps(x, t) = k x, so x0_hat = g_t x with g_t = (1 - sqrt(1 - abar) k) / sqrt(abar)."""

    def __init__(self, k: float, size: int):
        super().__init__()
        self.k = torch.nn.Parameter(torch.tensor(k))
        self.config = types.SimpleNamespace(in_channels=3, out_channels=3, sample_size=size)

    def forward(self, x, t):
        return types.SimpleNamespace(sample=self.k * x)


def _linear_eps_prior(s: int, g_t: float):
    """A prior whose x0_hat = g_t x_t at the single strided step of a 1-step schedule (previous abar = 1)."""
    from diffusers import DDPMScheduler
    sched = DDPMScheduler(num_train_timesteps=1000, clip_sample=False)
    sched.set_timesteps(1)
    abar = sched.alphas_cumprod[int(sched.timesteps[0])].double()
    k = float((1 - g_t * torch.sqrt(abar)) / torch.sqrt(1 - abar))
    return PhysicsPrior(_LinearEps(k, s), DDPMScheduler(num_train_timesteps=1000, clip_sample=False))


def _hand_dps_step(z: torch.Tensor, x_grid: torch.Tensor, g_t: float, weight: float) -> torch.Tensor:
    """x0_hat + weight * (dx0/dz)^T J^T r by hand (the DDPM posterior mean at the last step is x0_hat, variance 0).

    The paper's step ``-xi * grad_z [sum_rows mean_pixels (y - A)^2 / (C sigma^2)]`` is this with
    ``weight = 2 xi / (C P sigma^2)``; the fast sampler's with ``weight = guidance``.
    """
    x0 = g_t * z.double()
    u = (x0 + 1) / 2
    m0, t1, t2 = u[:, 0] / 0.6, 3200 * u[:, 1], (300 * u[:, 2]).clamp_min(1e-4)
    c = math.cos(math.pi / 4)
    den = 1 + c + (1 - c) * t1 / t2
    r = 0.3 * x_grid.double() - m0 / den
    da_du0 = 1 / (0.6 * den)
    da_du1 = -m0 * (1 - c) * 3200 / (t2 * den ** 2)
    da_du2 = m0 * (1 - c) * t1 * 300 / (t2 ** 2 * den ** 2) * (300 * u[:, 2] > 1e-4)
    direction = torch.stack([r * da_du0, r * da_du1, r * da_du2], dim=1) * 0.5 * g_t   # du/dz = 1/2, dx0/dz = g_t
    return x0 + weight * direction


def test_one_paper_dps_step_matches_the_hand_computed_update():
    s, cand, xi, sigma, g_t = 6, 2, 400.0, 0.1, 0.5
    prior = _linear_eps_prior(s, g_t)
    est = DiffusionEstimator(prior, "paper", steps=1, candidates=cand, xi=xi, sigma=sigma, micro_batch=1)
    torch.manual_seed(0)
    x_grid = torch.rand(1, s, s)
    latents = est._paper_candidates(x_grid, cand, torch.Generator().manual_seed(5))     # (cand, 3, s, s)
    g = torch.Generator().manual_seed(5)  # the slice's stream: its candidates one after the other
    z = torch.cat([torch.randn((1, 3, s, s), generator=g) for _ in range(cand)])
    expected = _hand_dps_step(z, x_grid, g_t, 2 * xi / (cand * s * s * sigma ** 2))
    assert torch.allclose(latents.double(), expected, rtol=1e-4, atol=1e-5)
    assert (expected - g_t * z.double()).abs().max() > 1e-2     # the guidance term is not negligible here


@pytest.mark.parametrize("gradient", ["autograd", "jvp"])
def test_one_fast_dps_step_matches_the_hand_computed_update(gradient):
    """Both gradient routes give the hand-computed step; the toy denoiser's Jacobian g_t I is symmetric."""
    s, n, guidance, g_t = 6, 3, 20.0, 0.5
    prior = _linear_eps_prior(s, g_t)
    est = DiffusionEstimator(prior, "fast", steps=1, guidance=guidance, gradient=gradient, micro_batch=2,
                             fd_step=1e-4)
    torch.manual_seed(0)
    x_grid = torch.rand(1, s, s)
    latents = est._fast_grid(x_grid, n, torch.Generator().manual_seed(5))[0]            # (n, 3, s, s)
    g = torch.Generator().manual_seed(5)  # the slice's stream: its samples one after the other
    z = torch.cat([torch.randn((1, 3, s, s), generator=g) for _ in range(n)])
    expected = _hand_dps_step(z, x_grid, g_t, guidance)
    if gradient == "autograd":
        assert torch.allclose(latents.double(), expected, rtol=1e-5, atol=1e-5)
    else:  # the closed-form Jacobian clamps the maps to the prior's range; compare where x0_hat is inside it
        inside = (g_t * z.abs() < 1).all(dim=1, keepdim=True).expand_as(z)
        assert inside.float().mean() > 0.8
        assert torch.allclose(latents.double()[inside], expected[inside], rtol=2e-3, atol=2e-3)
    assert (expected - g_t * z.double()).abs().max() > 1e-2


# ------------------------------------------------------------------ NCC selection
def test_ncc_selects_the_structurally_matching_sample():
    torch.manual_seed(0)
    s = 24
    yy, xx = torch.meshgrid(torch.arange(s), torch.arange(s), indexing="ij")
    image = ((yy - 12) ** 2 + (xx - 10) ** 2 < 40).float() + 0.5 * (xx > 17).float()
    assert local_ncc(image[None], image[None] * 3) > 0.99              # invariant to gain
    assert local_ncc(image[None], torch.randn(1, s, s)) < 0.3
    lat = torch.randn(1, 4, 3, s, s) * 0.5
    lat[0, 2, 1] = 0.8 * image - 0.5          # candidate 2: T1 and T2 follow the image, inverted contrast for T2
    lat[0, 2, 2] = -0.6 * image + 0.2
    lat[0, 3, 1] = image - 0.5                # candidate 3: only T1 follows
    keep, n1, n2 = select_by_ncc(image[None], lat, keep=2)
    assert keep.tolist() == [[2, 3]]
    assert min(n1[0, 2], n2[0, 2]) > 0.7 > 0.5 > n2[0, 3]     # border windows see the zero padding


# ------------------------------------------------------------------ end to end
class _OracleEps(torch.nn.Module):
    """An epsilon-predictor that knows the clean latent of every row: x0_hat is exactly the truth."""

    def __init__(self, truth: torch.Tensor):
        super().__init__()
        self.truth = truth
        self.w = torch.nn.Parameter(torch.zeros(()))
        self.config = types.SimpleNamespace(in_channels=3, out_channels=3, sample_size=truth.shape[-1])
        self.abar = None

    def forward(self, x, t):
        a = self.abar[torch.as_tensor(t).reshape(-1)[0]]
        reps = x.shape[0] // self.truth.shape[0]
        target = self.truth.repeat_interleave(reps, dim=0)
        return types.SimpleNamespace(sample=(x - a.sqrt() * target) / (1 - a).sqrt() + 0 * self.w)


def _smooth_truth(b, h, w):
    """Native latent maps (B, 3, H, W) with a zero-signal border, and their bSSFP image (arbitrary scale)."""
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing="ij")
    r = (yy ** 2 + xx ** 2).sqrt()
    body = torch.sigmoid((0.85 - r) * 20)
    z = torch.stack([body * (0.5 + 0.3 * xx) * 2 - 1, body * (0.55 + 0.3 * yy) * 2 - 1,
                     body * (0.4 + 0.2 * torch.cos(3 * xx)) * 2 - 1])
    z = z[None].repeat(b, 1, 1, 1)
    z[1:, 0] = (z[1:, 0] + 1) * 0.7 - 1
    m0, t1, t2 = MAP.to_physical(z)
    # M0 on the scale the samplers assume: 98th percentile of the signal at 0.3 (DESIGN §5)
    p98 = torch.quantile(bssfp_latent(z, MAP).flatten(1), 0.98, dim=1)
    m0 = m0 * (0.3 / p98).view(-1, 1, 1)
    z = MAP.to_latent(m0, t1, t2)
    m0, t1, t2 = MAP.to_physical(z)
    sig = bssfp_latent(z, MAP)[:, 0]
    return z, m0, t1, t2, 123.0 * sig


@pytest.mark.parametrize("preset", ["fast", "paper"])
def test_oracle_prior_returns_the_truth_in_native_geometry(preset):
    """With a prior that knows the answer, both samplers return it on the native (non-square) pixels."""
    from diffusers import DDPMScheduler
    b, h, w, size = 2, 30, 44, 32
    z, m0, t1, t2, images = _smooth_truth(b, h, w)
    truth_grid = to_grid(z, GridGeometry.plan(h, w, size), pad_value=-1.0)
    oracle = _OracleEps(truth_grid)
    prior = PhysicsPrior(oracle, DDPMScheduler(num_train_timesteps=1000))
    oracle.abar = prior.scheduler.alphas_cumprod
    kw = dict(steps=8) if preset == "fast" else dict(steps=4, candidates=2, micro_batch=4)
    est = DiffusionEstimator(prior, preset, **kw)
    out = est.estimate(images, None, n_samples=1, generators=torch.Generator().manual_seed(0))
    assert out.maps.shape == (b, 1, 3, h, w)
    body = (m0 > 0.3)
    for c, ref, tol in ((1, t1, 0.06), (2, t2, 0.06)):
        rel = ((out.maps[:, 0, c] - ref).abs() / ref.clamp_min(1.0))[body]
        assert rel.median() < tol, (preset, c, float(rel.median()))
    assert all(q["nrmse_pct"] < (1.0 if preset == "fast" else 6.0) for q in out.qc)


@pytest.fixture(scope="module")
def tiny_prior():
    torch.manual_seed(0)
    return PhysicsPrior.create(tiny_prior_config(16))


@pytest.mark.parametrize("preset", ["fast", "paper"])
def test_untrained_tiny_prior_end_to_end_shapes_and_validity(tiny_prior, preset):
    _, _, _, _, images = _smooth_truth(3, 21, 13)
    kw = dict(steps=5) if preset == "fast" else dict(steps=3, candidates=3)
    est = DiffusionEstimator(tiny_prior, preset, **kw)
    out = est.estimate(images, None, n_samples=2, generators=torch.Generator().manual_seed(1))
    assert out.maps.shape == (3, 2, 3, 21, 13) and out.maps.dtype == torch.float32
    assert torch.isfinite(out.maps).all()
    assert (out.maps[:, :, 1:] >= 1.0).all() and (out.maps[:, :, 0] >= 0).all()
    assert len(out.qc) == 3 and all(len(q["nrmse_pct_per_sample"]) == 2 for q in out.qc)
    if preset == "paper":
        assert {"ncc_t1", "ncc_t2", "abnormal"} <= set(out.qc[0])
    else:  # the native-resolution solve brings even an untrained prior's saturated maps close to the image
        assert max(q["nrmse_pct"] for q in out.qc) < 6.0
    again = est.estimate(images, None, n_samples=2, generators=torch.Generator().manual_seed(1))
    assert torch.equal(out.maps, again.maps)                     # deterministic given the generator


def test_estimator_identity_and_bad_arguments(tiny_prior):
    est = DiffusionEstimator(tiny_prior, "paper")
    ident = est.identity()
    assert ident["estimator"] == "diffusion-paper" and ident["prior_hash"] == tiny_prior.hash
    assert ident["parameters"]["xi"] == 400.0 and ident["parameters"]["steps"] == 200
    assert ident["parameters"]["candidates"] == 5 and ident["parameters"]["sigma"] == 0.1
    assert DiffusionEstimator(tiny_prior).name == "diffusion-fast"
    with pytest.raises(ValueError, match="unknown diffusion preset"):
        DiffusionEstimator(tiny_prior, "slow")
    with pytest.raises(ValueError, match="unknown fast sampler parameter"):
        DiffusionEstimator(tiny_prior, "fast", xi=3.0)
    with pytest.raises(ValueError, match="gradient='backprop': choose one of autograd, jvp"):
        DiffusionEstimator(tiny_prior, "fast", gradient="backprop")
    with pytest.raises(ValueError, match=r"\(B, H, W\)"):
        est.estimate(torch.zeros(4, 4), None, 1, torch.Generator())
    # the rows of a network evaluation change the maps: part of the identity (micro-batches of the same rows
    # give the same maps, so they share it)
    rows = {m: DiffusionEstimator(tiny_prior, "fast", micro_batch=m).identity() for m in (5, 8, 16)}
    assert rows[5] == rows[8] != rows[16]
    for key, value, message in (("micro_batch", 0, "expected an integer >= 1"), ("guidance", "nan", "finite"),
                                ("channel_weights", (1, "inf", 1), "expected tuple")):
        with pytest.raises(ValueError, match=f"{key}=.*{message}"):
            DiffusionEstimator(tiny_prior, "fast", **{key: value})
