"""physaug-evaluate: input checks and the report writer (prediction itself runs in tests/test_e2e.py)."""
from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from nnunetv2_physaug.evaluate import (Domain, EvaluationError, _check_inputs, _check_labels, markdown_table,
                                       write_report)

DATASET_JSON = {"channel_names": {"0": "cineMRI"}, "labels": {"background": 0, "RV": 1, "MLV": 2, "LVC": 3},
                "numTraining": 1, "file_ending": ".nii.gz"}


PLANS = {"configurations": {"2d": {"architecture": {
    "network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet"}}}}


def _model(tmp_path: Path, name: str = "nnUNetTrainerPhysAug__nnUNetPlans__2d") -> Path:
    m = tmp_path / name
    m.mkdir(parents=True)
    (m / "dataset.json").write_text(json.dumps(DATASET_JSON))
    (m / "plans.json").write_text(json.dumps(PLANS))
    return m


def _domain(tmp_path: Path, labels: np.ndarray, with_image: bool = True) -> Domain:
    d = Domain("lge", tmp_path / "imgs", tmp_path / "labs")
    d.images.mkdir()
    d.labels.mkdir()
    nib.save(nib.Nifti1Image(labels.astype(np.uint8), np.eye(4)), d.labels / "c1.nii.gz")
    if with_image:
        nib.save(nib.Nifti1Image(labels.astype(np.float32), np.eye(4)), d.images / "c1_0000.nii.gz")
    return d


def test_domain_spec_parsing():
    d = Domain.parse("lge=/a/imagesTs:/a/labelsTs")
    assert (d.name, d.images, d.labels) == ("lge", Path("/a/imagesTs"), Path("/a/labelsTs"))
    for bad in ("lge", "lge=/a/imagesTs", "/a:/b"):
        with pytest.raises(EvaluationError, match="NAME=IMAGES_DIR:LABELS_DIR"):
            Domain.parse(bad)


def test_missing_model_or_folders_are_named(tmp_path):
    model = _model(tmp_path)
    with pytest.raises(EvaluationError, match="not a trained nnU-Net model folder"):
        _check_inputs([tmp_path / "nope"], [])
    with pytest.raises(EvaluationError, match="images folder .*missing_imgs"):
        _check_inputs([model], [Domain("x", tmp_path / "missing_imgs", tmp_path)])
    with pytest.raises(EvaluationError, match="unique"):
        _check_inputs([model], [Domain("x", tmp_path, tmp_path), Domain("x", tmp_path, tmp_path)])


def test_label_values_outside_the_models_labels_are_refused(tmp_path):
    lab = np.zeros((4, 4, 2))
    lab[1, 1, 0] = 5  # M&Ms-style or stray label
    d = _domain(tmp_path, lab)
    with pytest.raises(EvaluationError, match=r"c1.nii.gz has values \[5\]"):
        _check_labels(d, DATASET_JSON)


def test_label_without_image_is_refused(tmp_path):
    d = _domain(tmp_path, np.ones((4, 4, 2)), with_image=False)
    with pytest.raises(EvaluationError, match="has no image"):
        _check_labels(d, DATASET_JSON)


def test_report_files_and_table(tmp_path):
    rows = [{"model": "A", "domain": "cine", "mean_fg_dice": 0.9, "n_cases": 2,
             "dice_per_label": {"1": 0.8, "2": 0.9, "3": 1.0}},
            {"model": "B", "domain": "cine", "mean_fg_dice": 0.5, "n_cases": 2,
             "dice_per_label": {"1": 0.4, "2": 0.5, "3": 0.6}}]
    write_report(rows, tmp_path, DATASET_JSON["labels"])
    assert json.loads((tmp_path / "results.json").read_text()) == rows
    csv_lines = (tmp_path / "results.csv").read_text().splitlines()
    assert csv_lines[0] == "model,domain,n_cases,mean_fg_dice,dice_RV,dice_MLV,dice_LVC"
    assert csv_lines[2] == "B,cine,2,0.5000,0.4000,0.5000,0.6000"
    assert markdown_table(rows).splitlines()[2] == "| cine | 0.900 | 0.500 |"
    assert (tmp_path / "dice.png").read_bytes()[:4] == b"\x89PNG"


class _Payload:
    """Unpickling this runs os.system: what a malicious checkpoint does."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        import os
        return (os.system, (f"touch {self.marker}",))


def test_checkpoints_are_read_without_running_their_code(tmp_path):
    import torch
    from nnunetv2_physaug.evaluate import evaluate

    model = _model(tmp_path)
    (model / "fold_0").mkdir()
    marker = tmp_path / "payload_ran"
    torch.save({"network_weights": {"w": torch.zeros(2)}, "trainer_name": "nnUNetTrainer",
                "payload": _Payload(marker)}, model / "fold_0" / "checkpoint_final.pth")
    d = _domain(tmp_path, np.ones((4, 4, 2)))
    with pytest.raises(EvaluationError, match=r"fold_0/checkpoint_final.pth: refused"):
        evaluate([model], [d], tmp_path / "out", folds=[0], progress=False)
    assert not marker.exists(), "the payload ran"
    assert not (tmp_path / "out").exists(), "nothing written"
    # what nnU-Net's trainer saves (weights, optimizer state, numpy floats in its log) loads
    torch.save({"network_weights": {"w": torch.zeros(2)}, "optimizer_state": {"state": {}, "param_groups": [{"lr": 0.01}]},
                "logging": {"ema_fg_dice": [np.float64(0.5), np.float32(0.25)], "epoch_end_timestamps": [1.0]},
                "_best_ema": np.float64(0.5), "current_epoch": 5, "init_args": {"plans": {}, "configuration": "2d",
                "fold": 0, "dataset_json": {}, "device": torch.device("cpu")}, "trainer_name": "nnUNetTrainer",
                "inference_allowed_mirroring_axes": (0, 1)}, model / "fold_0" / "checkpoint_final.pth")
    from nnunetv2_physaug.nnunet.checkpoints import check_model_checkpoints
    check_model_checkpoints(model, [0])
    with pytest.raises(EvaluationError, match=r"fold_1/checkpoint_final.pth: checkpoint not found"):
        evaluate([model], [d], tmp_path / "out", folds=[1], progress=False)


def test_bad_fold_is_a_usage_error(capsys):
    from nnunetv2_physaug.cli.evaluate import main

    with pytest.raises(SystemExit) as e:
        main(["-m", "x", "-t", "a=b:c", "-o", "o", "-f", "x"])
    assert e.value.code == 2 and "a fold is a whole number >= 0 or 'all'" in capsys.readouterr().err


def test_scores_in_one_process_equal_nnunets_pooled_metrics(tmp_path, monkeypatch):
    """On one process the metrics are computed without nnU-Net's process pool; truth: nnU-Net's own
    compute_metrics_on_folder2 (two processes) on the same folders, a label missing in one case (NaN Dice)."""
    from nnunetv2.evaluation.evaluate_predictions import compute_metrics_on_folder2, load_summary_json
    from nnunetv2_physaug.evaluate import score_folder

    rng = np.random.default_rng(0)
    model = _model(tmp_path)
    labels, preds = tmp_path / "labels", tmp_path / "preds"
    labels.mkdir()
    preds.mkdir()
    for i in range(3):
        lab = rng.integers(0, 4, (12, 10, 3)).astype(np.uint8)
        if i == 0:
            lab[lab == 1] = 0  # no RV in reference or prediction: nnU-Net's Dice is NaN there
        pred = np.where(rng.random(lab.shape) < 0.3, rng.integers(0, 4, lab.shape), lab).astype(np.uint8)
        if i == 0:
            pred[pred == 1] = 0
        nib.save(nib.Nifti1Image(lab, np.eye(4)), labels / f"c{i}.nii.gz")
        nib.save(nib.Nifti1Image(pred, np.eye(4)), preds / f"c{i}.nii.gz")
    monkeypatch.setenv("nnUNet_def_n_proc", "1")
    ours = score_folder(labels, preds, model)
    written = (preds / "summary.json").read_text()
    theirs_file = tmp_path / "theirs.json"
    compute_metrics_on_folder2(str(labels), str(preds), str(model / "dataset.json"), str(model / "plans.json"),
                               str(theirs_file), num_processes=2, chill=True)
    assert written == theirs_file.read_text()
    theirs = load_summary_json(str(theirs_file))
    assert ours["mean_fg_dice"] == theirs["foreground_mean"]["Dice"] and ours["n_cases"] == 3
    assert ours["dice_per_label"] == {str(k): float(v["Dice"]) for k, v in theirs["mean"].items()}
    assert 0.3 < ours["mean_fg_dice"] < 0.95


def _safe_checkpoint(model: Path, fold: int = 0) -> None:
    import torch
    (model / f"fold_{fold}").mkdir(exist_ok=True)
    torch.save({"network_weights": {"w": torch.zeros(2)}, "trainer_name": "nnUNetTrainer"},
               model / f"fold_{fold}" / "checkpoint_final.pth")


@pytest.mark.parametrize("name", ["/abs/victim", "../../victim", "a/b", "..", ".", ".hidden", "", "x\\y"])
def test_a_test_set_name_is_a_plain_name(name):
    with pytest.raises(EvaluationError, match="not a plain name"):
        Domain.parse(f"{name}=/a/imagesTs:/a/labelsTs")
    assert Domain.parse("LGE_2.a-b=/a:/b").name == "LGE_2.a-b"


def test_the_output_folder_never_overlaps_an_input(tmp_path):
    from nnunetv2_physaug.evaluate import evaluate

    model = _model(tmp_path)
    _safe_checkpoint(model)
    d = _domain(tmp_path, np.ones((4, 4, 2)))
    before = sorted(p.name for p in d.images.iterdir())
    for out in (d.images, tmp_path, d.labels / "sub", model / "eval"):
        with pytest.raises(EvaluationError, match="overlaps"):
            evaluate([model], [d], out, folds=[0], progress=False)
    assert sorted(p.name for p in d.images.iterdir()) == before and not (d.labels / "sub").exists()


def test_two_plans_of_one_trainer_get_two_columns_and_equal_folders_are_refused(tmp_path):
    from nnunetv2_physaug.evaluate import model_labels

    a = tmp_path / "nnUNetTrainerPhysAug__nnUNetPlans__2d"
    b = tmp_path / "nnUNetTrainerPhysAug__nnUNetPlans_w50__2d"
    c = tmp_path / "nnUNetTrainer__nnUNetPlans__2d"
    assert model_labels([a, b, c]) == [a.name, b.name, "nnUNetTrainer"]
    with pytest.raises(EvaluationError, match="same folder name"):
        model_labels([a, tmp_path / "other" / a.name])


def test_a_second_evaluation_into_one_output_folder_is_refused(tmp_path):
    from nnunetv2_physaug.evaluate import evaluate
    from nnunetv2_physaug.fileio import output_lock

    model = _model(tmp_path)
    _safe_checkpoint(model)
    d = _domain(tmp_path, np.ones((4, 4, 2)))
    with output_lock(tmp_path / "out"):
        with pytest.raises(EvaluationError, match="in use by another"):
            evaluate([model], [d], tmp_path / "out", folds=[0], progress=False)
    assert not (tmp_path / "out" / "predictions").exists()


def test_a_plans_file_naming_a_foreign_network_class_is_refused_before_importing(tmp_path, monkeypatch):
    import sys
    from nnunetv2_physaug.evaluate import evaluate
    from nnunetv2_physaug.nnunet.checkpoints import UnsafeCheckpointError, check_model_plans

    marker = tmp_path / "evilnet_ran"
    (tmp_path / "evilnet.py").write_text(f"open({str(marker)!r}, 'w').close()\nclass Net: pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))  # the folder is on the import path (python -m from it)
    model = _model(tmp_path, "models/nnUNetTrainer__nnUNetPlans__2d")
    _safe_checkpoint(model)
    (model / "plans.json").write_text(json.dumps({"configurations": {"2d": {"architecture": {
        "network_class_name": "evilnet.Net"}}}}))
    d = _domain(tmp_path, np.ones((4, 4, 2)))
    with pytest.raises(EvaluationError,
                       match="names the network class 'evilnet.Net'.*PHYSAUG_TRUSTED_ARCHITECTURES=evilnet"):
        evaluate([model], [d], tmp_path / "out", folds=[0], progress=False)
    assert not marker.exists() and "evilnet" not in sys.modules
    # a folder shadowing the trusted package on the import path is not the installed package
    fake = tmp_path / "dynamic_network_architectures"
    fake.mkdir()
    (fake / "__init__.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    (model / "plans.json").write_text(json.dumps(PLANS))
    import importlib
    monkeypatch.delitem(sys.modules, "dynamic_network_architectures", raising=False)  # as in a fresh process
    importlib.invalidate_caches()
    with pytest.raises(UnsafeCheckpointError, match="not part of the installed"):
        check_model_plans(model)
    assert not marker.exists()
    fake.rename(tmp_path / "moved")
    importlib.invalidate_caches()
    check_model_plans(model)  # the installed package's class
    # an architecture the user trusts on purpose
    (model / "plans.json").write_text(json.dumps({"configurations": {"2d": {"architecture": {
        "network_class_name": "evilnet.Net"}}}}))
    monkeypatch.setenv("PHYSAUG_TRUSTED_ARCHITECTURES", "othernets, evilnet")
    check_model_plans(model)
    assert not marker.exists()


def test_the_report_is_committed_by_its_results_json_written_last(tmp_path, monkeypatch):
    from nnunetv2_physaug import evaluate as ev

    rows = [{"model": "A", "domain": "cine", "mean_fg_dice": 0.9, "n_cases": 2, "dice_per_label": {"1": 0.8}}]

    def broken(rows, path):
        raise OSError("disk full")
    monkeypatch.setattr(ev, "_bar_chart", broken)
    with pytest.raises(OSError):
        write_report(rows, tmp_path, DATASET_JSON["labels"])
    assert (tmp_path / "results.md").is_file() and not (tmp_path / "results.json").exists()


def test_a_broken_model_dataset_json_is_named(tmp_path):
    model = _model(tmp_path)
    d = Domain("lge", tmp_path, tmp_path)
    for text, message in (("{", "JSONDecodeError"), ('{"labels": {}}', "KeyError"),
                          ('{"labels": [1], "file_ending": ".nii.gz"}', "labels must be a mapping")):
        (model / "dataset.json").write_text(text)
        with pytest.raises(EvaluationError, match=f"dataset.json is not a readable nnU-Net dataset.json.*{message}"):
            _check_inputs([model], [d])
