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


def _model(tmp_path: Path) -> Path:
    m = tmp_path / "nnUNetTrainerPhysAug__nnUNetPlans__2d"
    m.mkdir()
    (m / "dataset.json").write_text(json.dumps(DATASET_JSON))
    (m / "plans.json").write_text("{}")
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
