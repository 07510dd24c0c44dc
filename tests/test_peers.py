"""The peer augmentations (GIN-IPA, location-scale) against closed forms and independent computations, and
their trainers: labels and validation untouched, found and run by stock nnU-Net commands."""
from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from nnunetv2_physaug.peers import gin_ipa, location_scale as ls


# ----------------------------------------------------------------------------- GIN

def test_gin_keeps_the_input_norm_and_a_one_layer_pointwise_gin_is_an_affine_map():
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        x = torch.randn(2, 24, 20) * 3 + 1
        draw = gin_ipa.draw_gin(2, 2, g)
        y = gin_ipa.apply_gin(x, draw)
        assert y.shape == x.shape
        assert torch.isclose(torch.linalg.vector_norm(y), torch.linalg.vector_norm(x), rtol=1e-5)
    # closed form: one layer, 1 x 1 kernel (RandConv with k = 1): alpha (W x + b) + (1 - alpha) x, rescaled
    x = torch.randn(1, 16, 16)
    draw = gin_ipa.draw_gin(1, 2, g, n_layers=1, kernel_sizes=(1,))
    w, b, a = float(draw.weights[0].flatten()[0]), float(draw.biases[0][0]), draw.alpha
    xn = x.numpy().astype(np.float64)
    expected = a * (w * xn + b) + (1 - a) * xn
    expected *= np.linalg.norm(xn) / np.linalg.norm(expected)
    np.testing.assert_allclose(gin_ipa.apply_gin(x, draw).numpy(), expected, rtol=1e-4, atol=1e-5)


def test_gin_draws_both_kernel_sizes_and_a_3x3_kernel_reaches_the_neighbours():
    g = torch.Generator().manual_seed(1)
    sizes = [k for _ in range(30) for k in gin_ipa.draw_gin(1, 2, g).kernel_sizes]
    assert set(sizes) == {1, 3}
    assert 0.3 < sizes.count(3) / len(sizes) < 0.7
    # an impulse through one 3 x 3 layer (alpha 1) spreads over exactly its 3 x 3 neighbourhood
    impulse = torch.zeros(1, 9, 9)
    impulse[0, 4, 4] = 1.0
    draw = gin_ipa.draw_gin(1, 2, g, n_layers=1, kernel_sizes=(3,))
    draw.alpha, draw.biases = 1.0, [torch.zeros(1)]
    nonzero = torch.nonzero(gin_ipa.apply_gin(impulse, draw)[0].abs() > 1e-7)
    assert nonzero.min().item() == 3 and nonzero.max().item() == 5 and len(nonzero) == 9


# ----------------------------------------------------------------------------- IPA

def test_quadratic_bspline_is_a_partition_of_unity_with_its_closed_form():
    t = torch.linspace(-3, 3, 601, dtype=torch.float64)
    total = sum(gin_ipa.quadratic_bspline(t - k) for k in range(-5, 6))
    torch.testing.assert_close(total, torch.ones_like(t))
    # convolution of three unit boxes, evaluated independently by numerical integration
    tt = np.array([0.0, 0.25, 0.7, 1.2, 1.6])
    box = lambda u: ((u >= -0.5) & (u < 0.5)).astype(float)  # noqa: E731
    s = np.linspace(-1, 1, 4001)
    ds = s[1] - s[0]
    tent = lambda u: np.clip(1 - np.abs(u), 0, None)  # box * box  # noqa: E731
    numeric = [np.sum(tent(v - s) * box(s)) * ds for v in tt]
    np.testing.assert_allclose(gin_ipa.quadratic_bspline(torch.tensor(tt)).numpy(), numeric, atol=2e-3)


def test_ipa_mask_spans_0_to_1_and_is_smooth():
    g = torch.Generator().manual_seed(2)
    shape = (160, 144)
    for _ in range(10):
        m = gin_ipa.ipa_mask(shape, gin_ipa.draw_ipa(shape, g))
        assert m.shape == shape
        assert float(m.min()) == 0.0 and abs(float(m.max()) - 1.0) < 1e-6
        # band-limited: control points every 24 pixels at half resolution (48 at full): almost all of the
        # mask's variation lies below 1/16 cycles per pixel (white noise: 98 % above it); a Hann window keeps
        # the mask's non-periodic edges out of the spectrum
        window = np.outer(np.hanning(shape[0]), np.hanning(shape[1]))
        spec = np.abs(np.fft.fft2((m.numpy() - m.numpy().mean()) * window)) ** 2
        fy, fx = np.meshgrid(np.fft.fftfreq(shape[0]), np.fft.fftfreq(shape[1]), indexing="ij")
        high = np.hypot(fy, fx) > 1 / 16
        assert spec[high].sum() / spec.sum() < 1e-3
        # neighbouring pixels differ by a small fraction of the range
        assert float(m.diff(dim=0).abs().max()) < 0.1 and float(m.diff(dim=1).abs().max()) < 0.1


def test_gin_ipa_blend_lies_between_the_two_gin_outputs():
    x = torch.randn(1, 64, 64)
    g1 = torch.Generator().manual_seed(3)
    out = gin_ipa.gin_ipa_image(x, g1)
    g2 = torch.Generator().manual_seed(3)  # replay the same draws
    s = gin_ipa.GINIPASettings()
    a = gin_ipa.apply_gin(x, gin_ipa.draw_gin(1, 2, g2, s.n_layers, s.interm, s.kernel_sizes))
    b = gin_ipa.apply_gin(x, gin_ipa.draw_gin(1, 2, g2, s.n_layers, s.interm, s.kernel_sizes))
    lo, hi = torch.minimum(a, b), torch.maximum(a, b)
    assert bool(((out >= lo - 1e-5) & (out <= hi + 1e-5)).all())
    # somewhere the first output, somewhere the second dominates (the mask spans [0, 1])
    assert float((out - a).abs().min()) < 1e-5 and float((out - b).abs().min()) < 1e-5


# ----------------------------------------------------------------------------- GIN-IPA as published

def test_published_ipa_spacing_gives_ouyangs_four_cells_across():
    # Ouyang et al.: 192-pixel images, the field at half resolution, control points every 24 pixels
    assert gin_ipa.spacing_for_cells((192, 192), gin_ipa.PUBLISHED_IPA_CELLS) == 24.0
    assert gin_ipa.spacing_for_cells((112, 112), 4) == 14.0
    assert gin_ipa.spacing_for_cells((100, 160), 4) == 20.0  # the longest axis sets it


def test_three_views_are_two_complementary_blends_and_a_third_gin_output():
    x = torch.randn(1, 48, 40)
    settings = gin_ipa.GINIPASettings(spacing=gin_ipa.spacing_for_cells((48, 40), 4))
    views = gin_ipa.three_views(x, torch.Generator().manual_seed(4), settings)
    assert views.shape == (3, 1, 48, 40)
    replay = torch.Generator().manual_seed(4)  # the same draws, one after another
    g1, g2, g3 = (gin_ipa.apply_gin(x, gin_ipa.draw_gin(1, 2, replay, settings.n_layers, settings.interm,
                                                        settings.kernel_sizes)) for _ in range(3))
    # complementary: the two blends add up to the two GIN outputs, pixel by pixel, whatever the mask
    torch.testing.assert_close(views[0] + views[1], g1 + g2, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(views[2], g3)
    # each blend lies between the two outputs and is not either of them everywhere
    lo, hi = torch.minimum(g1, g2), torch.maximum(g1, g2)
    for v in views[:2]:
        assert bool(((v >= lo - 1e-5) & (v <= hi + 1e-5)).all())
    assert not torch.allclose(views[0], views[1])


def test_consistency_loss_is_torchs_kl_of_each_view_from_the_mean_and_not_detached():
    torch.manual_seed(0)
    logits = torch.randn(3 * 2, 4, 6, 5, requires_grad=True)
    loss = gin_ipa.consistency_loss(logits)
    # independent: torch's kl_div of the views' log-probabilities against the mean, summed and divided by the
    # element count (the published elementwise mean)
    log_p = torch.log_softmax(logits, 1)
    mean_p = log_p.exp().reshape(3, 2, 4, 6, 5).mean(0)
    expected = torch.nn.functional.kl_div(log_p, mean_p.repeat(3, 1, 1, 1), reduction="sum") / log_p.numel()
    torch.testing.assert_close(loss, expected)
    # zero when the three views agree, positive when they do not
    same = torch.randn(2, 4, 6, 5).repeat(3, 1, 1, 1)
    assert float(gin_ipa.consistency_loss(same)) < 1e-7 and float(loss.detach()) > 0
    # the gradient reaches the views through the mean as well (published: the mean is not detached)
    (grad,) = torch.autograd.grad(loss, logits)
    detached = (mean_p.detach().repeat(3, 1, 1, 1) * (mean_p.detach().repeat(3, 1, 1, 1).log() - log_p)).mean()
    (grad_detached,) = torch.autograd.grad(detached, logits)
    assert not torch.allclose(grad, grad_detached, atol=1e-7)
    with pytest.raises(ValueError, match="not 3 views"):
        gin_ipa.consistency_loss(torch.randn(4, 2, 3, 3))


# ----------------------------------------------------------------------------- SLAug as published

def _bezier_solve(v: float, lo: float, hi: float, inner, inverted: bool) -> float:
    """The curve at ``v`` by solving the cubic x(t) = v for t with numpy's polynomial roots (independent of
    the module's table): y(t), or y(1 - t) for the inverted curve. Inner points ordered so x(t) is monotone."""
    x1, x2, y1, y2 = inner
    px = [lo, lo + x1 * (hi - lo), lo + x2 * (hi - lo), hi]
    py = [lo, lo + y1 * (hi - lo), lo + y2 * (hi - lo), hi]
    # x(t) = sum px_k B_k(t) as a polynomial in t (highest power first)
    c3 = -px[0] + 3 * px[1] - 3 * px[2] + px[3]
    c2 = 3 * px[0] - 6 * px[1] + 3 * px[2]
    c1 = -3 * px[0] + 3 * px[1]
    roots = [r.real for r in np.roots([c3, c2, c1, px[0] - v]) if abs(r.imag) < 1e-9 and -1e-9 <= r.real <= 1 + 1e-9]
    t = min(max(roots[0], 0.0), 1.0)
    t = 1 - t if inverted else t
    return (1 - t) ** 3 * py[0] + 3 * (1 - t) ** 2 * t * py[1] + 3 * (1 - t) * t ** 2 * py[2] + t ** 3 * py[3]


def _curve_numpy(vals: np.ndarray, inner, inverted: bool) -> np.ndarray:
    """SLAug's curve over the values' own range, tabulated densely with numpy: x and y samples sorted apart
    (increasing), or the sorted x samples against the y samples from the top end down (inverted)."""
    lo, hi = vals.min(), vals.max()
    t = np.linspace(0, 1, 20001)
    bern = np.stack([(1 - t) ** 3, 3 * (1 - t) ** 2 * t, 3 * (1 - t) * t ** 2, t ** 3])
    px = np.array([0, inner[0], inner[1], 1]) * (hi - lo) + lo
    py = np.array([0, inner[2], inner[3], 1]) * (hi - lo) + lo
    xs, ys = np.sort(px @ bern), py @ bern
    ys = ys[::-1] if inverted else np.sort(ys)
    return np.interp(vals, xs, ys)


def test_bezier_curve_spans_the_regions_own_range_and_its_inverse_runs_back():
    inner = (0.2, 0.7, 0.5, 0.9)  # x and y control points increasing: x(t), y(t) monotone
    lo, hi = 0.3, 0.6
    v = torch.linspace(lo, hi, 41, dtype=torch.float64)
    for inverted in (False, True):
        remap = ls.Remap(inner, inverted, 1.0, 0.0)
        got = ls.interp(v, *ls.bezier_table(lo, hi, remap))
        expected = [_bezier_solve(float(u), lo, hi, inner, inverted) for u in v]
        np.testing.assert_allclose(got.numpy(), expected, atol=2e-4)
        ends = (lo, hi) if not inverted else (hi, lo)
        assert abs(float(got[0]) - ends[0]) < 1e-9 and abs(float(got[-1]) - ends[1]) < 1e-9


def test_local_location_scale_remaps_each_region_over_its_own_range_as_drawn():
    # two labelled ramps on a background ramp: label 1 over [0.30, 0.45], label 2 over [0.70, 0.95]
    v = torch.linspace(0.2, 0.5, 40 * 40, dtype=torch.float64).reshape(40, 40)
    labels = torch.zeros((40, 40), dtype=torch.long)
    v[5:20, 5:20] = torch.linspace(0.30, 0.45, 225, dtype=torch.float64).reshape(15, 15)
    labels[5:20, 5:20] = 1
    v[22:35, 10:30] = torch.linspace(0.70, 0.95, 260, dtype=torch.float64).reshape(13, 20)
    labels[22:35, 10:30] = 2
    v[0, :3] = 0.005  # air: kept
    for seed in range(6):
        out = ls.local_location_scale(v, labels, torch.Generator().manual_seed(seed), n_labels=3)
        replay = torch.Generator().manual_seed(seed)
        draws = [ls.draw_remap(replay, p_invert=1.0 if k == 0 else 0.5) for k in range(3)]
        assert draws[0].inverted, "the background's curve is always inverted"
        for k in range(3):
            region = labels == k
            vals = v[region].numpy()
            d = draws[k]
            curved = _curve_numpy(vals, d.inner, d.inverted)
            p20, p80 = np.percentile(curved, 20), np.percentile(curved, 80)
            location = min(max(d.location, -p20), 1 - p80)
            expected = np.clip(curved * d.scale + location, 0, 1)
            got = out[region].numpy()
            keep = vals > ls.BACKGROUND_THRESHOLD
            np.testing.assert_allclose(got[keep], expected[keep], atol=3e-3, err_msg=f"seed {seed} label {k}")
        assert torch.equal(out[0, :3], v[0, :3])


def test_global_location_scale_is_one_increasing_map():
    v = torch.linspace(0, 1, 500)
    g = torch.Generator().manual_seed(5)
    for _ in range(10):
        y = ls.global_location_scale(v, g)
        assert bool((y.diff() >= -1e-6).all()), "GLA's curve is never inverted: order of intensities kept"
        assert float(y.min()) >= 0 and float(y.max()) <= 1


def test_gla_lla_pair_maps_the_image_pixels_to_0_1_and_back_and_leaves_padding():
    g = torch.Generator().manual_seed(6)
    image = torch.randn(1, 30, 30) * 2 + 1
    labels = torch.randint(0, 3, (1, 30, 30))
    labels[:, :4] = -1  # nnU-Net's padding
    gla, lla = ls.gla_lla_pair(image, labels, g, n_labels=3)
    assert torch.equal(gla[:, :4], image[:, :4]) and torch.equal(lla[:, :4], image[:, :4])
    inside = image[:, 4:]
    for view in (gla, lla):
        assert float(view[:, 4:].min()) >= float(inside.min()) - 1e-5
        assert float(view[:, 4:].max()) <= float(inside.max()) + 1e-5
    # the same draws on the [0, 1] values by hand
    replay = torch.Generator().manual_seed(6)
    lo, hi = inside.min(), inside.max()
    v = (image[0][4:] - lo) / (hi - lo)
    expected = lo + ls.global_location_scale(v.reshape(-1), replay) * (hi - lo)
    torch.testing.assert_close(gla[0][4:].reshape(-1), expected, rtol=1e-5, atol=1e-5)


def test_slaug_transform_makes_the_pair_first_and_keeps_labels():
    x = torch.randn(1, 24, 24)
    seg = torch.randint(0, 3, (1, 24, 24)).to(torch.int16)
    t = ls.SLAugViewsTransform(n_labels=3, probability=1.0)
    torch.manual_seed(0)
    out = t(image=x.clone(), segmentation=seg.clone())
    assert out["image"].shape == (2, 24, 24) and torch.equal(out["segmentation"], seg)
    assert not torch.allclose(out["image"][0], x[0]) and not torch.allclose(out["image"][1], x[0])
    never = ls.SLAugViewsTransform(n_labels=3, probability=0.0)(image=x.clone(), segmentation=seg.clone())
    assert torch.equal(never["image"], torch.cat([x, x]))
    gla, lla = ls.split_pair(out["image"][None])
    assert gla.shape == lla.shape == (1, 1, 24, 24)


def test_saliency_map_is_coarse_rms_over_channels_and_spans_0_to_1():
    grad = torch.zeros(2, 2, 36, 36)
    grad[0, 0, :12, :12] = 5.0  # one corner salient, in one channel
    grad[1] = torch.randn(2, 36, 36)
    s = ls.saliency_map(grad, grid=3)
    assert s.shape == (2, 1, 36, 36)
    for i in range(2):
        assert abs(float(s[i].min())) < 1e-6 and abs(float(s[i].max()) - 1) < 1e-6
    assert float(s[0, 0, 2, 2]) > 0.9 and float(s[0, 0, 33, 33]) < 0.05
    # root mean square over channels: a gradient of (3, 4) in two channels is as salient as one of (5, 0)
    # (|3| + |4| would make it more salient), and the map is symmetric between the two corners
    a = torch.zeros(1, 2, 36, 36)
    a[0, 0, :12, :12], a[0, 1, :12, :12] = 3.0, 4.0
    a[0, 0, 24:, 24:] = 5.0
    sa = ls.saliency_map(a, 3)[0, 0]
    assert abs(float(sa[5, 5]) - float(sa[30, 30])) < 1e-5 and float(sa[5, 5]) > 0.5 > float(sa[18, 5])
    # the B-spline basis is a partition of unity away from the edges (a smooth interpolation of the grid)
    basis = ls.bspline_upsample_basis(171, 18)  # pixel p at grid coordinate p / 10
    torch.testing.assert_close(basis[10:161].sum(1), torch.ones(151), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(basis[50], torch.tensor([0.0] * 4 + [0.125, 0.75, 0.125] + [0.0] * 11))


# ----------------------------------------------------------------------------- trainers

@pytest.fixture(scope="module")
def toy(tmp_path_factory, toy_template):
    from support.nnunet import copy_toy, environ_from, nnunet_env

    root = tmp_path_factory.mktemp("peers")
    folder = copy_toy(toy_template, root)  # 5 cases, preprocessed
    env = nnunet_env(root)
    env["nnUNet_extTrainer"] += ":" + str(Path(__file__).parent / "smoke_trainers")
    with environ_from(env):
        yield env, folder


def _trainer(env, folder, name):
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name
    from support.nnunet import load_json

    pp = Path(env["nnUNet_preprocessed"]) / folder.name
    plans = load_json(pp / "nnUNetPlans.json")
    plans["continue_training"] = False
    cls = recursive_find_trainer_class_by_name(name)
    return cls(plans, "2d", 0, load_json(pp / "dataset.json"), torch.device("cpu"))


def _record(tr):
    """Record the network's inputs and the loss's targets of ``tr``'s steps."""
    seen = {"inputs": [], "targets": []}
    loss = tr.loss
    tr.network.register_forward_pre_hook(lambda module, args: seen["inputs"].append(args[0].detach().clone()))
    tr.loss = lambda out, target: (seen["targets"].append([t.clone() for t in target]), loss(out, target))[1]
    return seen


@pytest.mark.parametrize("name", ["nnUNetTrainerGINIPAFork_5epochs", "nnUNetTrainerGINIPA_5epochs",
                                  "nnUNetTrainerLocationScale_5epochs", "nnUNetTrainerPhysAugGINIPA_5epochs"])
def test_peer_trainers_change_the_training_images_only(toy, name, monkeypatch):
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    monkeypatch.setenv("nnUNet_n_proc_DA", "0")  # loader in this process
    env, folder = toy
    tr = _trainer(env, folder, name)
    assert tr.num_epochs == 5
    tr.initialize()
    seen = _record(tr)
    tr.dataloader_train, tr.dataloader_val = tr.get_dataloaders()
    batch = next(tr.dataloader_train)
    data, target = batch["data"].clone(), [t.clone() for t in batch["target"]]
    tr.train_step(batch)
    assert torch.equal(batch["data"], data), "the loader's batch itself is not modified"
    b = data.shape[0]
    if "LocationScale" in name:
        # SLAug: the loader hands GLA and LLA as channel pairs; the step forwards the GLA batch, then the fusion
        assert data.shape[1] == 2
        gla, lla = data[:, :1], data[:, 1:]
        assert len(seen["inputs"]) == 2 and torch.equal(seen["inputs"][0], gla)
        fused = seen["inputs"][1]
        lo, hi = torch.minimum(gla, lla), torch.maximum(gla, lla)
        assert bool(((fused >= lo - 1e-5) & (fused <= hi + 1e-5)).all()), "the fusion lies between GLA and LLA"
        assert not torch.equal(fused, gla) and not torch.equal(fused, lla)
        assert type(tr.dataloader_train.data_loader.transforms.transforms[0]).__name__ == "SLAugViewsTransform"
    elif name.startswith(("nnUNetTrainerGINIPA_", "nnUNetTrainerPhysAugGINIPA_")):
        # GIN-IPA as published: one forward pass over the three views of every image
        assert len(seen["inputs"]) == 1 and seen["inputs"][0].shape == (3 * b, *data.shape[1:])
        v = seen["inputs"][0].reshape(3, b, *data.shape[1:])
        assert not torch.allclose(v[0], v[1]) and not torch.allclose(v[0], v[2])
    else:
        (x,) = seen["inputs"]
        assert x.shape == data.shape and not torch.allclose(x, data), "the network sees augmented images"
    for t in seen["targets"]:
        assert all(torch.equal(a, b) for a, b in zip(t, target)), "labels untouched"
        assert t[0].shape[0] == b, "the segmentation loss sees one view per image"
    # validation is nnU-Net's own step on nnU-Net's own batches
    assert type(tr).validation_step is nnUNetTrainer.validation_step
    seen["inputs"].clear()
    vbatch = next(tr.dataloader_val)
    vdata = vbatch["data"].clone()
    assert vdata.shape[1] == 1
    tr.validation_step(vbatch)
    assert torch.equal(seen["inputs"][0], vdata)


def test_peer_probability_leaves_the_other_images_as_they_are(toy):
    env, folder = toy
    # the fork's single view: an image the peer leaves is passed on as it is
    tr = _trainer(env, folder, "nnUNetTrainerPhysAugGINIPAFork_5epochs")
    tr.peer_probability, tr.peer_seed = 0.5, 7
    data = torch.randn(64, 1, 16, 16)
    out = tr.peer_augment_batch(data, torch.zeros(64, 1, 16, 16))
    unchanged = [bool(torch.equal(out[i], data[i])) for i in range(64)]
    assert 16 < sum(unchanged) < 48
    # as published: an image the peer leaves is its own three views; the others get three different views
    tr = _trainer(env, folder, "nnUNetTrainerPhysAugGINIPAHalf_5epochs")
    assert tr.peer_probability == 0.5
    tr.peer_seed = 7
    views = tr.peer_views(data).reshape(3, 64, 1, 16, 16)
    left = [all(bool(torch.equal(views[k, i], data[i])) for k in range(3)) for i in range(64)]
    assert 16 < sum(left) < 48
    assert all(not torch.allclose(views[0, i], views[2, i]) for i in range(64) if not left[i])
    # each image's draws follow the one before it: a batch split in two gives the same views
    tr2 = _trainer(env, folder, "nnUNetTrainerPhysAugGINIPAHalf_5epochs")
    tr2.peer_seed = 7
    first = tr2.peer_views(data[:40]).reshape(3, 40, 1, 16, 16)
    second = tr2.peer_views(data[40:]).reshape(3, 24, 1, 16, 16)
    torch.testing.assert_close(torch.cat([first, second], 1), views)


@pytest.mark.slow
def test_peer_trainers_train_and_predict_through_stock_commands(toy, tmp_path):
    from support.nnunet import TOY_ID, run

    env, folder = toy
    for name in ("nnUNetTrainerGINIPA_smoke", "nnUNetTrainerLocationScale_smoke",
                 "nnUNetTrainerPhysAugLocationScaleHalf_smoke"):
        run(["nnUNetv2_train", str(TOY_ID), "2d", "0", "-tr", name, "-device", "cpu"], env)
        out = tmp_path / name
        run(["nnUNetv2_predict", "-i", str(folder / "imagesTr"), "-o", str(out), "-d", str(TOY_ID), "-c", "2d",
             "-tr", name, "-f", "0", "-device", "cpu", "--disable_tta"], env)
        assert len(list(out.glob("*.nii.gz"))) == 5
    # physaug-evaluate's predictor on one CPU process (nnU-Net's sequential path, no worker processes) writes
    # what the stock command wrote
    from nnunetv2_physaug.evaluate import predict_folder
    model = Path(env["nnUNet_results"]) / folder.name / f"{name}__nnUNetPlans__2d"
    predict_folder(model, folder / "imagesTr", tmp_path / "ours", (0,), "cpu", False)
    for f in sorted(out.glob("*.nii.gz")):
        a, b = nib.load(str(f)), nib.load(str(tmp_path / "ours" / f.name))
        assert np.array_equal(a.get_fdata(), b.get_fdata()) and np.allclose(a.affine, b.affine), f.name
