"""What a trainer checks when nnU-Net constructs it: its attributes, its protocol, the dataset and plans; and
that ``nnUNetv2_train`` ends such a failure with the message alone."""
from __future__ import annotations

import copy
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from support.nnunet import TOY_ID, copy_toy, environ_from, load_json, nnunet_env


@pytest.fixture(scope="module")
def toy(tmp_path_factory, toy_template):
    root = tmp_path_factory.mktemp("setup_checks")
    folder = copy_toy(toy_template, root)
    env = nnunet_env(root)
    with environ_from(env):
        yield env, folder


def _inputs(env, folder):
    pp = Path(env["nnUNet_preprocessed"]) / folder.name
    plans = load_json(pp / "nnUNetPlans.json")
    plans["continue_training"] = False
    return plans, load_json(pp / "dataset.json")


def _build(env, folder, base_name, attrs=None, plans=None, dataset_json=None, configuration="2d"):
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

    base = recursive_find_trainer_class_by_name(base_name)
    cls = type(base_name + "Variant", (base,), dict(attrs or {}))
    p, d = _inputs(env, folder)
    return cls(copy.deepcopy(plans or p), configuration, 0, copy.deepcopy(dataset_json or d), torch.device("cpu"))


BAD_PHYSAUG = [
    ({"physaug_use_labels": "no"}, "physaug_use_labels must be True or False, got 'no'"),
    ({"physaug_compute_missing": "False"}, "physaug_compute_missing must be True or False"),
    ({"physaug_p_render": 2}, r"physaug_p_render must be in \[0, 1\], got 2"),
    ({"physaug_p_render": math.nan}, "physaug_p_render must be a number or None, got nan"),
    ({"physaug_stats": "median"}, "physaug_stats must be one of 'case', 'patch'"),
    ({"physaug_protocol": "wide_v9"}, "physaug_protocol 'wide_v9'"),
    ({"physaug_protocol_settings": "lge.ti_ms=300"}, "physaug_protocol_settings must be a tuple of strings"),
    ({"physaug_protocol_settings": ("nosuch.ti_ms=300",)}, "nosuch"),
    ({"physaug_prior": "/no/such/prior"}, "physaug_prior '/no/such/prior' is not a folder"),
]


@pytest.mark.parametrize("attrs,message", BAD_PHYSAUG, ids=[next(iter(a)) + "=" + repr(next(iter(a.values())))
                                                            for a, _ in BAD_PHYSAUG])
def test_physaug_attributes_are_checked_at_construction(toy, attrs, message):
    from nnunetv2_physaug.nnunet.setup_checks import TrainerSetupError

    env, folder = toy
    with pytest.raises(TrainerSetupError, match=message) as e:
        _build(env, folder, "nnUNetTrainerPhysAug_5epochs", attrs)
    assert str(e.value.code).startswith("nnUNetTrainerPhysAug_5epochsVariant: error: ")


BAD_PEER = [
    ("nnUNetTrainerGINIPA", {"peer_probability": -1}, r"peer_probability must be in \[0, 1\], got -1"),
    ("nnUNetTrainerPhysAugLocationScaleHalf", {"peer_probability": "0.5"}, "peer_probability must be a number"),
    ("nnUNetTrainerGINIPAFork", {"peer_gin_layers": 0}, r"peer_gin_layers must be in \[1, inf\], got 0"),
    ("nnUNetTrainerGINIPA", {"peer_gin_kernel_sizes": (1, 2)}, "odd positive integers"),
    ("nnUNetTrainerGINIPA", {"peer_consistency_weight": math.nan}, "peer_consistency_weight must be a number"),
    ("nnUNetTrainerGINIPA", {"peer_ipa_cells": 0}, r"peer_ipa_cells must be in \(0, inf\]"),
    ("nnUNetTrainerLocationScale", {"peer_saliency_grid": 0}, "peer_saliency_grid must be in"),
    ("nnUNetTrainerLocationScale", {"peer_saliency_grid": 2.5}, "peer_saliency_grid must be an integer"),
]


@pytest.mark.parametrize("base,attrs,message", BAD_PEER, ids=[f"{b}-{next(iter(a))}" for b, a, _ in BAD_PEER])
def test_peer_attributes_are_checked_at_construction(toy, base, attrs, message):
    from nnunetv2_physaug.nnunet.setup_checks import TrainerSetupError

    env, folder = toy
    with pytest.raises(TrainerSetupError, match=message):
        _build(env, folder, base, attrs)


def test_every_public_trainer_passes_its_own_checks(toy):
    from nnunetv2_physaug.nnunet.peer_trainers import PEER_TRAINERS
    from nnunetv2_physaug.nnunet.trainers import PUBLIC_TRAINERS

    env, folder = toy
    for cls in (*PUBLIC_TRAINERS, *PEER_TRAINERS):
        _build(env, folder, cls.__name__)


def test_a_dataset_physaug_cannot_render_for_is_refused_and_stock_trains_it(toy):
    from nnunetv2_physaug.nnunet.setup_checks import TrainerSetupError

    env, folder = toy
    plans, ds = _inputs(env, folder)
    rescale = copy.deepcopy(plans)
    rescale["configurations"]["2d"]["normalization_schemes"] = ["RescaleTo01Normalization"]
    two = copy.deepcopy(ds)
    two["channel_names"] = {"0": "cineMRI", "1": "T2"}
    cascade = copy.deepcopy(plans)
    cascade["configurations"]["2d"]["previous_stage"] = "3d_lowres"
    for kw, message in ((dict(plans=rescale), "normalise the input with RescaleTo01Normalization"),
                        (dict(dataset_json=two), "2 input channels"),
                        (dict(plans=cascade), "is a cascade stage")):
        with pytest.raises(TrainerSetupError, match=message):
            _build(env, folder, "nnUNetTrainerPhysAug", **kw)
        _build(env, folder, "nnUNetTrainer", **kw)  # nnU-Net's own trainer is not ours to refuse
        _build(env, folder, "nnUNetTrainerGINIPA", **kw)  # nor a peer's (it augments whatever it is given)


@pytest.mark.slow
def test_nnunetv2_train_ends_a_setup_error_with_its_message_alone(toy, tmp_path):
    env, folder = toy
    ext = tmp_path / "ext"
    ext.mkdir()
    (ext / "bad_trainers.py").write_text(
        "from nnunetv2_physaug.nnunet.trainers import nnUNetTrainerPhysAug\n\n\n"
        "class nnUNetTrainerPhysAugBadLabels(nnUNetTrainerPhysAug):\n"
        "    physaug_use_labels = 'no'\n")
    run_env = dict(env, nnUNet_extTrainer=env["nnUNet_extTrainer"] + ":" + str(ext))
    proc = subprocess.run([str(Path(sys.executable).parent / "nnUNetv2_train"), str(TOY_ID), "2d", "0", "-tr", "nnUNetTrainerPhysAugBadLabels",
                           "-device", "cpu"], env=run_env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines()[-1] == (
        "nnUNetTrainerPhysAugBadLabels: error: physaug_use_labels must be True or False, got 'no' (str); set the "
        "class attribute to a bool")
