"""The trainer layout: public trainers and peers at every stock length without the experiments folder; the
ablation rows only with it, each rendering its preset version with only the options its settings name."""
from __future__ import annotations

import inspect

import os

import pytest

from nnunetv2_physaug.contrast import load_protocol, protocol_with_settings
from nnunetv2_physaug.nnunet import env as physaug_env
from nnunetv2_physaug.nnunet.experiments import ABLATIONS, ablation_class
from nnunetv2_physaug.nnunet.lengths import stock_lengths

PUBLIC = ("nnUNetTrainerPhysAug", "nnUNetTrainerPhysAug_paper", "nnUNetTrainerPhysAug_GRE", "nnUNetTrainerPhysAug_IR",
          "nnUNetTrainerPhysAugPathology", "nnUNetTrainerGINIPA", "nnUNetTrainerLocationScale",
          "nnUNetTrainerPhysAugGINIPA", "nnUNetTrainerPhysAugLocationScale", "nnUNetTrainerDA5")


def _find(name: str, experiments: bool, monkeypatch):
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

    monkeypatch.setenv("nnUNet_extTrainer", physaug_env.ext_trainer_value("", experiments=experiments))
    return recursive_find_trainer_class_by_name(name)


def test_every_public_trainer_exists_at_every_stock_length_without_the_experiments_folder(monkeypatch):
    from nnunetv2.training.nnUNetTrainer.variants.training_length import nnUNetTrainer_Xepochs as stock

    lengths = [n for n in dir(stock) if n.startswith("nnUNetTrainer_") and n.endswith(("epoch", "epochs"))]
    assert len(lengths) >= 12
    for base in PUBLIC:
        for stock_name in lengths:
            name = base + stock_name[len("nnUNetTrainer"):]
            cls = _find(name, experiments=False, monkeypatch=monkeypatch)
            assert issubclass(cls, getattr(stock, stock_name)) or name == "nnUNetTrainerDA5_10epochs", name
            # the epoch count is the stock class's own: its __init__ is in the chain (ours only check and delegate),
            # with nnU-Net's signature (nnU-Net records the arguments by name)
            stock_init = getattr(stock, stock_name).__init__
            assert stock_init in [vars(k).get("__init__") for k in cls.__mro__] or name == "nnUNetTrainerDA5_10epochs"
            assert list(inspect.signature(cls.__init__).parameters) == list(inspect.signature(stock_init).parameters)


@pytest.mark.parametrize("row", ABLATIONS, ids=[r.name for r in ABLATIONS])
def test_ablation_rows_are_found_only_with_the_experiments_folder_and_change_only_what_they_name(row, monkeypatch):
    for epochs in row.epochs:
        cls = ablation_class(row, epochs)
        found = _find(cls.__name__, experiments=True, monkeypatch=monkeypatch)
        assert found.__name__ == cls.__name__ and found.__module__ == "nnunetv2_physaug.nnunet.experiments"
        assert issubclass(found, row.base) and issubclass(found, stock_lengths()[cls.__name__[len(row.name):]])
        with pytest.raises(RuntimeError):
            _find(cls.__name__, experiments=False, monkeypatch=monkeypatch)
    got = protocol_with_settings(found.physaug_protocol, found.physaug_protocol_settings)
    version = load_protocol(row.preset)
    named = {s.split("=")[0].strip() for s in row.settings}
    changed = set()
    for f, v in zip(got.families, version.families):
        assert f.family == v.family
        changed |= {f"{f.family}.{k}" for k in set(f.params) | set(v.params) if f.params.get(k) != v.params.get(k)}
        if f.probability != v.probability:
            changed.add(f"{f.family}.probability")
    for kind in ("imperfections", "pathology"):
        for k in set(getattr(got, kind)) | set(getattr(version, kind)):
            if getattr(got, kind).get(k) != getattr(version, kind).get(k):
                changed.add(f"{k}.probability")
    # every change is one the row names (a family share rescales the others: those may move too)
    shares = {n for n in named if n.endswith(".probability") and n.split(".")[0] in {f.family for f in got.families}}
    assert {c for c in changed if not (shares and c.endswith(".probability"))} <= named
    # an ablation changes something: an option, p_render, or it is an earlier version of its base's preset
    assert changed or row.p_render is not None or \
        load_protocol(row.base.physaug_protocol).families != version.families
    if row.p_render is not None:
        assert found.physaug_p_render == row.p_render


def test_preset_versions_differ_by_what_their_rows_say():
    v1, v2, v3, wide = (load_protocol(n) for n in ("wide_v1", "wide_v2", "wide_v3", "wide"))
    assert v3.families == wide.families and v3.name == "wide_v3"
    label_aware, gd = {"lge", "psir", "saturation_recovery", "tse"}, {"lge", "psir", "saturation_recovery"}
    for f1, f2, f3 in zip(v1.families, v2.families, v3.families):
        if f1.family in label_aware:
            assert f1.params["cavity_tissue"] == (0.0, 0.0) and f2.params["cavity_tissue"] == (1.0, 1.0)
        if f1.family in gd:
            assert f2.params["blood_partial_volume"] == (0.0, 0.0) and f3.params["blood_partial_volume"] == (1.0, 1.0)
    with pytest.raises(Exception, match="wide_v9"):
        load_protocol("wide_v9")


def test_physaug_env_adds_the_experiments_folder_only_when_asked():
    plain = physaug_env.ext_trainer_value("/a")
    both = physaug_env.ext_trainer_value(plain, experiments=True)
    assert plain.split(os.pathsep) == ["/a", physaug_env.ext_trainer_dir()]
    assert both.split(os.pathsep) == ["/a", physaug_env.ext_trainer_dir(), physaug_env.experiments_dir()]
    assert physaug_env.ext_trainer_value(both, experiments=True) == both
