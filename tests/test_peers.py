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


# ----------------------------------------------------------------------------- location-scale

def _bezier_numpy(v: float, controls) -> float:
    """B(v) by solving the cubic x(t) = v for t with numpy's polynomial roots (independent of the table)."""
    a1, b1, a2, b2 = controls
    # x(t) = 3a1 t(1-t)^2 + 3a2 t^2(1-t) + t^3 as a polynomial in t
    coeffs = [1 - 3 * a2 + 3 * a1, 3 * a2 - 6 * a1, 3 * a1, -v]
    roots = [r.real for r in np.roots(coeffs) if abs(r.imag) < 1e-9 and -1e-9 <= r.real <= 1 + 1e-9]
    t = min(max(roots[0], 0.0), 1.0)
    return 3 * b1 * t * (1 - t) ** 2 + 3 * b2 * t ** 2 * (1 - t) + t ** 3


def test_local_location_scale_moves_each_label_as_drawn():
    # a two-label image on a dark background: label 1 at 0.4, label 2 at 0.8 (of the [0, 1] range)
    image = torch.full((1, 40, 40), 0.2)
    labels = torch.zeros((1, 40, 40), dtype=torch.long)
    image[:, 5:20, 5:20], labels[:, 5:20, 5:20] = 0.4, 1
    image[:, 22:35, 10:30], labels[:, 22:35, 10:30] = 0.8, 2
    image[:, 0, 0] = 0.0  # one air pixel (the minimum: kept)
    image[:, -1, -1] = 1.0  # the maximum, so the [0, 1] scaling is the identity
    labels[:, -1, -1] = 0
    for seed in range(8):  # the background's inversion must hold whatever its uniform draw was
        out = ls.local_location_scale(image * 10 - 3, labels, torch.Generator().manual_seed(seed), n_labels=3)
        out = (out + 3) / 10
        replay = torch.Generator().manual_seed(seed)
        draws = [ls.draw_remap(replay, p_invert=1.0 if k == 0 else 0.5) for k in range(3)]
        assert draws[0].inverted
        background = (labels == 0) & (image > 0.1) & (image < 0.9)
        for k, value, region in ((0, 0.2, background), (1, 0.4, labels == 1), (2, 0.8, labels == 2)):
            d = draws[k]
            curved = _bezier_numpy(value, d.controls)
            curved = 1 - curved if d.inverted else curved
            scaled = curved * d.scale
            expected = np.clip(scaled + np.clip(d.location, -scaled, 1 - scaled), 0, 1)  # constant region
            got = out[region]
            assert torch.allclose(got, torch.full_like(got, expected), atol=2e-3), (seed, k, float(got[0]), expected)
    assert abs(float(out[0, 0, 0])) < 1e-6  # air below the threshold keeps its value


def test_global_location_scale_is_one_monotonic_map_and_keeps_the_range_ends():
    x = torch.linspace(-2, 5, 500).reshape(1, 20, 25)
    g = torch.Generator().manual_seed(5)
    for _ in range(10):
        y = ls.global_location_scale(x, g).flatten()
        assert bool((y.diff() >= -1e-6).all()), "GLA's curve is never inverted: order of intensities kept"
        assert float(y.min()) >= -2 - 1e-5 and float(y.max()) <= 5 + 1e-5


def test_saliency_map_is_coarse_and_spans_0_to_1():
    grad = torch.zeros(2, 1, 30, 30)
    grad[0, 0, :10, :10] = 5.0  # one corner salient
    grad[1] = torch.randn(1, 30, 30)
    s = ls.saliency_map(grad, grid=3)
    assert s.shape == (2, 1, 30, 30)
    for i in range(2):
        assert abs(float(s[i].min())) < 1e-6 and abs(float(s[i].max()) - 1) < 1e-6
    assert float(s[0, 0, 2, 2]) > 0.9 and float(s[0, 0, 28, 28]) < 0.05


# ----------------------------------------------------------------------------- trainers

@pytest.fixture(scope="module")
def toy(tmp_path_factory, toy_template):
    from helpers import copy_toy, environ_from, nnunet_env

    root = tmp_path_factory.mktemp("peers")
    folder = copy_toy(toy_template, root)  # 5 cases, preprocessed
    env = nnunet_env(root)
    env["nnUNet_extTrainer"] += ":" + str(Path(__file__).parent / "smoke_trainers")
    with environ_from(env):
        yield env, folder


def _trainer(env, folder, name):
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name
    from helpers import load_json

    pp = Path(env["nnUNet_preprocessed"]) / folder.name
    plans = load_json(pp / "nnUNetPlans.json")
    plans["continue_training"] = False
    cls = recursive_find_trainer_class_by_name(name)
    return cls(plans, "2d", 0, load_json(pp / "dataset.json"), torch.device("cpu"))


@pytest.mark.parametrize("name", ["nnUNetTrainerGINIPA_5epochs", "nnUNetTrainerLocationScale_5epochs",
                                  "nnUNetTrainerLocationScaleSBF_5epochs", "nnUNetTrainerPhysAugGINIPA_5epochs"])
def test_peer_trainers_change_the_training_images_only(toy, name, monkeypatch):
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    monkeypatch.setenv("nnUNet_n_proc_DA", "0")  # loader in this process
    env, folder = toy
    tr = _trainer(env, folder, name)
    assert tr.num_epochs == 5
    tr.initialize()
    seen = {}
    loss = tr.loss
    tr.network.register_forward_pre_hook(lambda module, args: seen.setdefault("inputs", []).append(
        args[0].detach().clone()))
    tr.loss = lambda out, target: (seen.setdefault("targets", []).append([t.clone() for t in target]),
                                   loss(out, target))[1]
    tr.dataloader_train, tr.dataloader_val = tr.get_dataloaders()
    batch = next(tr.dataloader_train)
    data, target = batch["data"].clone(), [t.clone() for t in batch["target"]]
    tr.train_step(batch)
    assert torch.equal(batch["data"], data), "the loader's batch itself is not modified"
    for x in seen["inputs"]:
        assert x.shape == data.shape and not torch.allclose(x, data), "the network sees augmented images"
    for t in seen["targets"]:
        assert all(torch.equal(a, b) for a, b in zip(t, target)), "labels untouched"
    # validation is nnU-Net's own step on nnU-Net's own batches
    assert type(tr).validation_step is nnUNetTrainer.validation_step
    seen.clear()
    vbatch = next(tr.dataloader_val)
    vdata = vbatch["data"].clone()
    tr.validation_step(vbatch)
    assert torch.equal(seen["inputs"][0], vdata)


def test_peer_probability_leaves_the_other_images_as_they_are(toy):
    env, folder = toy
    tr = _trainer(env, folder, "nnUNetTrainerPhysAugGINIPAHalf_5epochs")
    assert tr.peer_probability == 0.5
    tr.peer_seed = 7
    data = torch.randn(64, 1, 16, 16)
    out = tr.peer_augment_batch(data, torch.zeros(64, 1, 16, 16))
    unchanged = [bool(torch.equal(out[i], data[i])) for i in range(64)]
    assert 16 < sum(unchanged) < 48
    # each image's draws follow the one before it: a batch split in two gives the same images
    tr2 = _trainer(env, folder, "nnUNetTrainerPhysAugGINIPAHalf_5epochs")
    tr2.peer_seed = 7
    halves = torch.cat([tr2.peer_augment_batch(data[:40], torch.zeros(40, 1, 16, 16)),
                        tr2.peer_augment_batch(data[40:], torch.zeros(24, 1, 16, 16))])
    torch.testing.assert_close(halves, out)


@pytest.mark.slow
def test_peer_trainers_train_and_predict_through_stock_commands(toy, tmp_path):
    from helpers import TOY_ID, run

    env, folder = toy
    for name in ("nnUNetTrainerGINIPA_smoke", "nnUNetTrainerLocationScaleSBF_smoke",
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
