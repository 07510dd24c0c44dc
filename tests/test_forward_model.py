"""The one measurement model of reverse imaging (``reverse/forward.py``) against independent truth:
a Bloch simulation, autograd, its own inverse, and the engine re-rendering with the estimator's model."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from nnunetv2_physaug.physics import bloch
from nnunetv2_physaug.reverse.forward import FORWARD_MODEL, BSSFPForwardModel
from nnunetv2_physaug.reverse.prior import LatentMapping

TISSUES = [(1000.0, 50.0), (1550.0, 270.0), (860.0, 30.0), (280.0, 80.0)]  # myocardium, blood, muscle, fat (ms)


@pytest.mark.parametrize("flip", [20.0, 45.0, 70.0])
def test_render_is_the_bloch_bssfp_steady_state_at_short_tr(flip):
    model = BSSFPForwardModel(flip)
    for t1, t2 in TISSUES:
        truth = bloch.bssfp_echo(1.0, t1, t2, flip, 0.3)  # TR = 0.3 ms: the short-TR limit
        got = float(model.render(torch.tensor(1.0, dtype=torch.float64), t1, t2))
        assert got == pytest.approx(truth, rel=3e-3), (t1, t2)


@pytest.mark.parametrize("flip", [30.0, 45.0, 70.0])
def test_latent_jacobian_is_the_autograd_derivative(flip):
    model = BSSFPForwardModel(flip)
    mapping = LatentMapping()
    torch.manual_seed(0)
    z = (torch.rand(2, 3, 5, 4, dtype=torch.float64) * 1.6 - 0.8)  # inside the box: clip does not act
    s, jac = model.latent_signal_and_jacobian(z, mapping, t2_floor_ms=1e-4)
    zz = z.clone().requires_grad_(True)
    s_auto = model.render_latent(zz, mapping)
    grad, = torch.autograd.grad(s_auto.sum(), zz)  # pixels are independent: d(sum)/dz = per-pixel derivative
    assert torch.allclose(s, s_auto.detach(), rtol=1e-12)
    assert torch.allclose(jac, grad, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("flip", [15.0, 45.0, 80.0])
def test_m0_for_signal_inverts_render(flip):
    model = BSSFPForwardModel(flip)
    g = torch.Generator().manual_seed(1)
    t1 = 200 + 2000 * torch.rand(100, generator=g, dtype=torch.float64)
    t2 = 20 + 300 * torch.rand(100, generator=g, dtype=torch.float64)
    s = torch.rand(100, generator=g, dtype=torch.float64)
    assert torch.allclose(model.render(model.m0_for_signal(s, t1, t2), t1, t2), s, rtol=1e-12)


def test_the_engine_renders_with_the_estimators_model(tmp_path):
    """QC and M0 harmonisation use the estimator's own model: a 30-degree estimator re-renders its image exactly."""
    from nnunetv2_physaug.maps import read_manifest
    from nnunetv2_physaug.reverse import LabelEstimator, run_reverse
    from support.reverse_inputs import make_dataset

    images = make_dataset(tmp_path, 1)
    est = LabelEstimator()
    est.forward_model = BSSFPForwardModel(30.0)
    s = run_reverse(images, tmp_path / "maps30", estimator=est, progress=False)
    assert s.qc["case00"]["nrmse_pct"] < 0.01  # the label estimator solves M0 exactly under its model
    assert read_manifest(tmp_path / "maps30")["parameters"]["forward_model"] == "short-TR bSSFP, alpha=30 deg"
    # the same maps judged by the default 45-degree model do not reproduce the image: the choice is visible
    from nnunetv2_physaug.maps import read_case_maps
    from nnunetv2_physaug.reverse.qc import bssfp_nrmse_pct
    import nibabel as nib
    maps = torch.from_numpy(read_case_maps(tmp_path / "maps30", "case00")[0][..., 0]).permute(3, 0, 1, 2)  # (Z,3,X,Y)
    img = torch.from_numpy(np.asarray(nib.load(str(images / "case00_0000.nii.gz")).dataobj)).permute(2, 0, 1)
    assert float(bssfp_nrmse_pct(img.float(), maps, est.forward_model).max()) < 0.01
    assert float(bssfp_nrmse_pct(img.float(), maps, FORWARD_MODEL).max()) > 1.0
