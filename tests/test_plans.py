"""physaug-narrow-plans: a narrower copy of nnU-Net plans that nnU-Net itself loads and builds."""
from __future__ import annotations

import json

import pytest
import torch

from nnunetv2_physaug.nnunet.plans import PlansError, narrow_plans, write_narrow_plans

PLANS = {
    "dataset_name": "Dataset900_Toy", "plans_name": "nnUNetPlans",
    "original_median_spacing_after_transp": [999.0, 2.5, 2.5], "original_median_shape_after_transp": [1, 64, 64],
    "image_reader_writer": "NibabelIOWithReorient", "transpose_forward": [0, 1, 2], "transpose_backward": [0, 1, 2],
    "configurations": {
        "2d": {
            "data_identifier": "nnUNetPlans_2d", "preprocessor_name": "DefaultPreprocessor", "batch_size": 4,
            "patch_size": [64, 64], "median_image_size_in_voxels": [64.0, 64.0], "spacing": [2.5, 2.5],
            "normalization_schemes": ["ZScoreNormalization"], "use_mask_for_norm": [False],
            "resampling_fn_data": "resample_data_or_seg_to_shape", "resampling_fn_seg": "resample_data_or_seg_to_shape",
            "resampling_fn_data_kwargs": {"is_seg": False, "order": 3, "order_z": 0, "force_separate_z": None},
            "resampling_fn_seg_kwargs": {"is_seg": True, "order": 1, "order_z": 0, "force_separate_z": None},
            "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
            "resampling_fn_probabilities_kwargs": {"is_seg": False, "order": 1, "order_z": 0, "force_separate_z": None},
            "batch_dice": True,
            "architecture": {
                "network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
                "arch_kwargs": {"n_stages": 4, "features_per_stage": [32, 64, 128, 256],
                                "conv_op": "torch.nn.modules.conv.Conv2d", "kernel_sizes": [[3, 3]] * 4,
                                "strides": [[1, 1], [2, 2], [2, 2], [2, 2]], "n_conv_per_stage": [2, 2, 2, 2],
                                "n_conv_per_stage_decoder": [2, 2, 2], "conv_bias": True,
                                "norm_op": "torch.nn.modules.instancenorm.InstanceNorm2d",
                                "norm_op_kwargs": {"eps": 1e-05, "affine": True}, "dropout_op": None,
                                "dropout_op_kwargs": None, "nonlin": "torch.nn.LeakyReLU",
                                "nonlin_kwargs": {"inplace": True}},
                "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"]},
        },
        "2d_big": {"inherits_from": "2d", "patch_size": [96, 96]},
    },
}


def _n_params(plans: dict, conf: str) -> int:
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
    cm = PlansManager(plans).get_configuration(conf)
    net = get_network_from_plans(cm.network_arch_class_name, cm.network_arch_init_kwargs,
                                 cm.network_arch_init_kwargs_req_import, 1, 4, deep_supervision=True)
    with torch.no_grad():
        out = net(torch.zeros(1, 1, *cm.patch_size))
    assert out[0].shape == (1, 4, *cm.patch_size)
    return sum(p.numel() for p in net.parameters())


def test_narrow_plans_halves_features_and_nnunet_builds_it():
    narrow = narrow_plans(PLANS, 0.5, "nnUNetPlans_w50")
    assert narrow["plans_name"] == "nnUNetPlans_w50"
    assert narrow["configurations"]["2d"]["architecture"]["arch_kwargs"]["features_per_stage"] == [16, 32, 64, 128]
    assert PLANS["configurations"]["2d"]["architecture"]["arch_kwargs"]["features_per_stage"] == [32, 64, 128, 256]
    # data identifier kept: the preprocessed data are shared
    assert narrow["configurations"]["2d"]["data_identifier"] == "nnUNetPlans_2d"
    full, half = _n_params(PLANS, "2d"), _n_params(narrow, "2d")
    assert 0.2 < half / full < 0.3  # conv weights scale with width^2
    # an inheriting configuration gets the narrower network too
    assert _n_params(narrow, "2d_big") == half


def test_narrow_plans_floor_and_bad_width():
    tiny = narrow_plans(PLANS, 0.05, "x")
    assert tiny["configurations"]["2d"]["architecture"]["arch_kwargs"]["features_per_stage"] == [4, 4, 6, 13]
    for w in (0.0, 1.5, -1):
        with pytest.raises(PlansError, match="width"):
            narrow_plans(PLANS, w, "x")
    with pytest.raises(PlansError, match="features_per_stage"):
        narrow_plans({"configurations": {"2d": {"batch_size": 2}}}, 0.5, "x")


def test_write_narrow_plans_files_and_errors(tmp_path):
    with pytest.raises(PlansError, match="nnUNetv2_plan_and_preprocess"):
        write_narrow_plans(tmp_path)
    (tmp_path / "nnUNetPlans.json").write_text(json.dumps(PLANS))
    path = write_narrow_plans(tmp_path, 0.25)
    assert path == tmp_path / "nnUNetPlans_w25.json"
    assert json.loads(path.read_text())["configurations"]["2d"]["architecture"]["arch_kwargs"][
        "features_per_stage"] == [8, 16, 32, 64]
    with pytest.raises(PlansError, match="--overwrite"):
        write_narrow_plans(tmp_path, 0.25)
    write_narrow_plans(tmp_path, 0.5, target="nnUNetPlans_w25", overwrite=True)
    assert json.loads(path.read_text())["plans_name"] == "nnUNetPlans_w25"
    with pytest.raises(PlansError, match="differ"):
        write_narrow_plans(tmp_path, 0.5, target="nnUNetPlans")
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(PlansError, match="broken.json"):
        write_narrow_plans(tmp_path, 0.5, source="broken")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken.json", "nnUNetPlans.json", "nnUNetPlans_w25.json"]
    # an identifier is a file name in this folder, never a path out of it
    for bad in ("../../escaped", "/tmp/abs", "a/b", "..", ".hidden"):
        with pytest.raises(PlansError, match="not a plans identifier"):
            write_narrow_plans(tmp_path, 0.5, target=bad)
    with pytest.raises(PlansError, match="not a plans identifier"):
        write_narrow_plans(tmp_path, 0.5, source="../nnUNetPlans")
    assert not (tmp_path.parent.parent / "escaped.json").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken.json", "nnUNetPlans.json", "nnUNetPlans_w25.json"]
