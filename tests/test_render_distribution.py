"""The data loader's fast render paths keep the contrast distribution of the reference paths.

The loader draws case-level parameters on reference voxels prepared once per case
(``ContrastRenderer.reference`` / ``draw_on``), makes smooth fields with separable matrix products and
takes Rician noise from a per-process :class:`NormalPool`. Each is checked against the implementation
it replaced, kept here: a fresh ``draw`` per load, ``F.interpolate`` bilinear fields, fresh
``torch.randn`` noise. Exact where the same random stream gives the same numbers, two-sample
Kolmogorov-Smirnov tests on many renders (fixed seeds, so the verdicts are reproducible) where the
streams differ.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import stats

from nnunetv2_physaug.contrast import ContrastRenderer, load_protocol, smooth_field
from nnunetv2_physaug.contrast import renderer as renderer_mod
from nnunetv2_physaug.contrast.imperfections import NormalPool, add_rician_noise

P_MIN = 1e-3  # a KS p-value below this rejects "same distribution"


def interpolate_field(rng: np.random.Generator, shape_yx: tuple[int, int], grid: int,
                      value_range: tuple[float, float], device=None) -> torch.Tensor:
    """The smooth field as it was made before the separable form: ``F.interpolate`` of the controls."""
    low, high = value_range
    coarse = rng.uniform(low, high, size=(1, 1, grid, grid)).astype(np.float32)
    field = F.interpolate(torch.from_numpy(coarse), size=tuple(shape_yx), mode="bilinear", align_corners=True)[0, 0]
    return field.clamp_(min(low, high), max(low, high))


def fresh_rician(image: torch.Tensor, sigma: float, rng: np.random.Generator, signed: bool) -> torch.Tensor:
    """Rician (or, signed, Gaussian) noise from a fresh torch.randn draw seeded from ``rng``."""
    gen = torch.Generator()
    gen.manual_seed(int(rng.integers(0, 2**63 - 1)))
    n = torch.randn((1 if signed else 2, *image.shape), generator=gen, dtype=torch.float32)
    if signed:
        return n[0] * sigma + image
    return torch.sqrt((image + sigma * n[0]) ** 2 + (sigma * n[1]) ** 2)


def phantom_maps(shape=(64, 64)):
    """A blood disc, a myocardial ring and other tissue (label 0), with a 1.5 T M0 / T1 / T2 per region
    and a little texture, plus an invalid (-1) border column; and a strided voxel subsample of the
    valid pixels as (1, N) tensors (the case-level reference voxels)."""
    y, x = np.mgrid[: shape[0], : shape[1]]
    r = np.hypot(y - shape[0] / 2, x - shape[1] / 2)
    labels = np.where(r < 9, 3, np.where(r < 15, 2, 0)).astype(np.int16)
    labels[:, 0] = -1
    texture = 1.0 + 0.05 * np.sin(x / 3.0) * np.cos(y / 5.0)
    m0 = np.select([labels == 3, labels == 2], [0.95, 0.80], 0.75) * texture
    t1 = np.select([labels == 3, labels == 2], [1550.0, 1000.0], 860.0) * texture
    t2 = np.select([labels == 3, labels == 2], [270.0, 50.0], 30.0) * texture
    maps = [torch.from_numpy(a.astype(np.float32)) for a in (m0, t1, t2)]
    lab = torch.from_numpy(labels)
    valid = lab >= 0
    idx = torch.nonzero(valid.reshape(-1))[::2, 0]
    voxels = [m.reshape(-1)[idx][None] for m in maps] + [lab.reshape(-1)[idx][None]]
    return maps, lab, valid, voxels


@pytest.mark.parametrize("shape,grid", [((128, 128), 2), ((150, 97), 3), ((64, 48), 4), ((7, 300), 5), ((1, 9), 3)])
def test_separable_field_equals_bilinear_interpolation(shape, grid):
    """Same rng, same controls: the separable field equals F.interpolate's to float32 rounding."""
    for seed in range(5):
        fast = smooth_field(np.random.default_rng(seed), shape, grid, (0.6, 1.4))
        ref = interpolate_field(np.random.default_rng(seed), shape, grid, (0.6, 1.4))
        assert fast.shape == ref.shape and fast.dtype == torch.float32
        torch.testing.assert_close(fast, ref, rtol=0, atol=2e-6)


def test_draw_on_a_reused_reference_equals_a_fresh_draw():
    """The loader prepares a case's reference voxels once and reuses them (cached masks and indices):
    every draw equals the draw on freshly passed voxels with the same seed, for every family."""
    renderer = ContrastRenderer(load_protocol("wide"))
    _, _, _, (m0, t1, t2, lab) = phantom_maps()
    ref = renderer.reference(m0, t1, t2, labels=lab)
    families = set()
    for seed in range(60):
        fresh = renderer.draw(m0, t1, t2, np.random.default_rng(seed), labels=lab)
        reused = renderer.draw_on(ref, np.random.default_rng(seed))
        assert reused == fresh
        families.add(fresh["family"])
    assert families == {f.family for f in renderer.protocol.families}


def test_draw_bank_hands_out_one_fresh_draw_per_load():
    """The loader makes a case's draws several in a row (DrawBank): what it hands out is, in order, what
    one draw_on per load from the same generator gives (so exactly as random), every load its own."""
    from nnunetv2_physaug.nnunet.dataset import DrawBank

    renderer = ContrastRenderer(load_protocol("wide"))
    _, _, _, (m0, t1, t2, lab) = phantom_maps()
    ref = renderer.reference(m0, t1, t2, labels=lab)
    for size in (1, 5, 16):
        bank = DrawBank(renderer, ref, size)
        rng, rng_one_per_load = np.random.default_rng(7), np.random.default_rng(7)
        banked = [bank.next(rng) for _ in range(2 * size + 3)]
        assert banked == [renderer.draw_on(ref, rng_one_per_load) for _ in range(len(banked))]
        assert len({repr(sorted(d.items())) for d in banked}) == len(banked)
    with pytest.raises(ValueError, match="at least 1"):
        DrawBank(renderer, ref, 0)


def test_pool_windows_are_independent_standard_normals():
    """Windows of the pool (a small pool, redrawn many times here) are N(0, 1), and two consecutive
    windows are uncorrelated at the same positions."""
    pool = NormalPool(size=1 << 16, reuse=4.0)
    rng = np.random.default_rng(0)
    windows = [pool.take(4096, rng).numpy().copy() for _ in range(400)]
    values = np.concatenate(windows)
    assert stats.kstest(values, "norm").pvalue > P_MIN
    assert abs(values.mean()) < 4 / math.sqrt(values.size) and abs(values.std() - 1) < 0.01
    r = [np.corrcoef(a, b)[0, 1] for a, b in zip(windows[:-1], windows[1:])]
    assert abs(np.mean(r)) < 4 / math.sqrt(4096 * len(r)) and np.max(np.abs(r)) < 0.1
    # same rng stream, same windows: a render that uses the pool stays reproducible from its rng
    a, b = NormalPool(size=1 << 16), NormalPool(size=1 << 16)
    ra, rb = np.random.default_rng(5), np.random.default_rng(5)
    for _ in range(20):
        assert torch.equal(a.take(1000, ra), b.take(1000, rb))
    # requests over a quarter of the pool are drawn fresh (and are still N(0, 1))
    big = NormalPool(size=1024).take(4096, rng).numpy()
    assert big.shape == (4096,) and stats.kstest(big, "norm").pvalue > P_MIN


@pytest.mark.parametrize("snr", [1.0, 4.0, 30.0])
@pytest.mark.parametrize("signed", [False, True])
def test_pooled_rician_noise_matches_fresh_noise(snr, signed):
    """Noisy pixels of a constant image: pooled and fresh noise give the same distribution (KS)."""
    image = torch.full((48, 40), 2.0)
    sigma = 2.0 / snr
    pool = NormalPool()
    rp, rf = np.random.default_rng(1), np.random.default_rng(2)
    pooled = np.concatenate([add_rician_noise(image, sigma, rp, signed, pool=pool).numpy().ravel()
                             for _ in range(60)])
    fresh = np.concatenate([fresh_rician(image, sigma, rf, signed).numpy().ravel() for _ in range(60)])
    assert stats.ks_2samp(pooled, fresh).pvalue > P_MIN
    assert np.mean(pooled) == pytest.approx(np.mean(fresh), rel=0.01, abs=0.01 * sigma)


def _summaries(renderer: ContrastRenderer, n: int, seed: int, fast: bool) -> list[dict]:
    """Params and image statistics of ``n`` loader-style renders (case-level draw, then the render of
    a region with its imperfections), by the fast path (prepared reference, ``draw_on``) or the
    reference path (fresh ``draw``)."""
    maps, lab, valid, (m0, t1, t2, vlab) = phantom_maps()
    rng = np.random.default_rng(seed)
    ref = renderer.reference(m0, t1, t2, labels=vlab) if fast else None
    out = []
    for _ in range(n):
        draw = renderer.draw_on(ref, rng) if fast else renderer.draw(m0, t1, t2, rng, labels=vlab)
        img, params = renderer.render(*maps, rng, labels=lab, valid=valid, params=draw)
        vals = img[valid].numpy()
        z = (vals - params["reference_mean"]) / max(params["reference_std"], 1e-8)
        out.append({**params, "image_mean": float(z.mean()), "image_std": float(z.std()),
                    "image_p10": float(np.percentile(z, 10)), "image_p90": float(np.percentile(z, 90))})
    return out


def test_loader_render_distribution_equals_the_reference_path(monkeypatch):
    """Many renders through the loader's fast paths (prepared reference voxels, separable fields, pooled
    noise) and through the reference paths (fresh draw, F.interpolate fields, fresh noise), with
    different seeds: the same family frequencies, the same distribution of every drawn parameter
    per family and of the normalised image statistics (two-sample KS)."""
    n = 480
    fast = _summaries(ContrastRenderer(load_protocol("wide"), noise_pool=NormalPool()), n, 11, fast=True)
    monkeypatch.setattr(renderer_mod, "smooth_field", interpolate_field)
    reference = _summaries(ContrastRenderer(load_protocol("wide")), n, 12, fast=False)

    fam_names = [f.family for f in load_protocol("wide").families]
    counts = np.array([[sum(s["family"] == f for s in runs) for f in fam_names] for runs in (fast, reference)])
    assert stats.chi2_contingency(counts).pvalue > P_MIN
    compared = 0
    for family in fam_names:
        a = [s for s in fast if s["family"] == family]
        b = [s for s in reference if s["family"] == family]
        keys = sorted({k for s in a + b for k, v in s.items() if isinstance(v, float)})
        for key in keys:
            xa = [s[key] for s in a if key in s]
            xb = [s[key] for s in b if key in s]
            # imperfections are drawn with a probability: the key's presence rate must agree too
            pa, pb = len(xa) / len(a), len(xb) / len(b)
            pooled = (len(xa) + len(xb)) / (len(a) + len(b))
            se = math.sqrt(max(pooled * (1 - pooled), 1e-12) * (1 / len(a) + 1 / len(b)))
            assert abs(pa - pb) < 4 * se + 1e-9, (family, key, pa, pb)
            if min(len(xa), len(xb)) >= 8 and np.ptp(xa + xb) > 0:
                assert stats.ks_2samp(xa, xb).pvalue > P_MIN, (family, key)
                compared += 1
    assert compared > 60
    for key in ("image_mean", "image_std", "image_p10", "image_p90", "clip_level"):
        assert stats.ks_2samp([s[key] for s in fast], [s[key] for s in reference]).pvalue > P_MIN, key
