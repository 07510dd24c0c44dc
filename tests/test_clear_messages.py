"""Inputs that used to end in a traceback, a misleading message or a silently wrong result: each is now an error
naming the file or argument and saying what to do (or, for a stale prediction, no longer happens)."""
from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from support.fake_trees import make_fake_acdc, make_fake_mnms
from support.reverse_inputs import make_dataset


def test_image_beyond_float32_and_complex_images_are_named(tmp_path):
    from nnunetv2_physaug.reverse.io import ReverseInputError, load_image

    big = tmp_path / "big_0000.nii.gz"
    nib.save(nib.Nifti1Image(np.full((4, 4, 2), 1e300) * np.arange(1, 33).reshape(4, 4, 2), np.eye(4)), big)
    with pytest.raises(ReverseInputError, match=r"big_0000.nii.gz has values up to 3.2e\+301, beyond what float32"):
        load_image(big)
    cplx = tmp_path / "c_0000.nii.gz"
    nib.save(nib.Nifti1Image((np.arange(32) * (1 + 1j)).reshape(4, 4, 2).astype(np.complex64), np.eye(4)), cplx)
    with pytest.raises(ReverseInputError, match=r"c_0000.nii.gz holds complex values .*magnitude"):
        load_image(cplx)


def test_a_rank_that_is_not_a_number_is_named(monkeypatch):
    from nnunetv2_physaug.reverse.shard import resolve_shard

    monkeypatch.setenv("RANK", "x")
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ValueError, match=r"environment variable RANK='x' is not a whole number"):
        resolve_shard(None)


@pytest.mark.parametrize("key,value", [("cases", []), ("parameters", "fast")])
def test_a_damaged_manifest_is_named_and_overwrite_repairs_it(tmp_path, key, value):
    from nnunetv2_physaug.maps.store import TissueMapError
    from nnunetv2_physaug.reverse import run_reverse

    images = make_dataset(tmp_path, 1, shape=(20, 18, 1))
    maps = tmp_path / "maps"
    run_reverse(images, maps, progress=False)
    manifest = json.loads((maps / "manifest.json").read_text())
    manifest[key] = value
    (maps / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(TissueMapError, match=rf"manifest .*manifest.json: its '{key}' is a JSON .*--overwrite"):
        run_reverse(images, maps, progress=False)
    assert run_reverse(images, maps, progress=False, overwrite=True).done == ["case00"]


def test_preview_into_a_folder_named_like_a_png_is_refused(tmp_path, capsys):
    from nnunetv2_physaug.cli.preview import main

    (tmp_path / "out.png").mkdir()
    images = make_dataset(tmp_path, 1, shape=(20, 18, 1))
    with pytest.raises(SystemExit, match="physaug-preview: error: .*is a folder; give a file name ending in .png"):
        main(["--image", str(images / "case00_0000.nii.gz"), "--maps", str(tmp_path), "-o", str(tmp_path / "out.png")])


def test_a_phantom_too_large_for_memory_is_refused_before_anything_is_allocated(tmp_path, capsys):
    from nnunetv2_physaug.cli.phantom import main

    with pytest.raises(SystemExit, match="physaug-phantom: error: size 100000 is larger than 1024 pixels"):
        main(["-o", str(tmp_path / "ph"), "--size", "100000"])
    assert not (tmp_path / "ph").exists()


def test_metadata_files_that_are_not_utf8_are_named(tmp_path):
    from nnunetv2_physaug.conversion.acdc import read_info_cfg
    from nnunetv2_physaug.conversion.common import ConversionError
    from nnunetv2_physaug.conversion.mnms import CSV_NAME, read_info_csv

    fake = make_fake_acdc(tmp_path / "acdc", n_train=1, n_test=0)
    cfg = tmp_path / "acdc" / "training" / "patient001" / "Info.cfg"
    cfg.write_bytes(cfg.read_bytes() + "Group: Myokarditis \u00e4\n".encode("latin-1"))
    with pytest.raises(ConversionError, match=r"Info.cfg: not UTF-8 text .*save the ACDC patient info file"):
        read_info_cfg(cfg)
    assert fake
    make_fake_mnms(tmp_path / "mnms")
    csv_path = tmp_path / "mnms" / CSV_NAME
    csv_path.write_bytes(csv_path.read_bytes() + "9,X\u00e9,,,,,,,,,\n".encode("latin-1"))
    with pytest.raises(ConversionError, match=r"not UTF-8 text"):
        read_info_csv(csv_path)


def test_evaluate_refuses_unlabelled_test_images_and_scores_no_stale_prediction(tmp_path, monkeypatch):
    from nnunetv2_physaug import evaluate as ev

    model = tmp_path / "nnUNetTrainer__nnUNetPlans__2d"
    model.mkdir()
    (model / "dataset.json").write_text(json.dumps({"labels": {"background": 0, "RV": 1}, "file_ending": ".nii.gz"}))
    (model / "plans.json").write_text(json.dumps({"configurations": {"2d": {"architecture": {
        "network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet"}}}}))
    monkeypatch.setattr(ev, "check_model_checkpoints", lambda *a, **k: None)
    d = ev.Domain("x", tmp_path / "imgs", tmp_path / "labs")
    d.images.mkdir()
    d.labels.mkdir()
    for c in ("a", "b"):
        nib.save(nib.Nifti1Image(np.zeros((4, 4, 2), np.float32), np.eye(4)), d.images / f"{c}_0000.nii.gz")
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 2), np.uint8), np.eye(4)), d.labels / "a.nii.gz")
    with pytest.raises(ev.EvaluationError, match=r"image\(s\) b_0000.nii.gz in .* have no label"):
        ev.evaluate([model], [d], tmp_path / "out", progress=False)
    (d.images / "b_0000.nii.gz").unlink()
    stale = tmp_path / "out" / "predictions" / "nnUNetTrainer" / "x" / "b.nii.gz"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"old")
    seen = {}
    monkeypatch.setattr(ev, "predict_folder", lambda m, images, out, *a, **k: seen.setdefault("before", out.exists()))
    monkeypatch.setattr(ev, "score_folder", lambda labels, pred, m: {"dice_per_label": {"1": 1.0}, "mean_fg_dice": 1.0,
                                                                     "n_cases": 1})
    ev.evaluate([model], [d], tmp_path / "out", progress=False, overwrite=True)
    assert seen["before"] is False and not stale.exists()


def test_an_acdc_frame_number_that_is_not_whole_is_refused(tmp_path):
    from nnunetv2_physaug.conversion.acdc import read_info_cfg
    from nnunetv2_physaug.conversion.common import ConversionError

    cfg = tmp_path / "Info.cfg"
    for bad in ("3.7", "0", "-2"):
        cfg.write_text(f"ED: 1\nES: {bad}\nNbFrame: 30\n")
        with pytest.raises(ConversionError, match=f"'ES: {bad}' is not a frame number"):
            read_info_cfg(cfg)
    cfg.write_text("ED: 1\nES: 12.0\nNbFrame: 30\n")
    assert read_info_cfg(cfg)["es_frame"] == 12
