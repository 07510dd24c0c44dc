"""MyoPS 2020 converter on small fake trees with the real file names (tests/support/fake_trees.py).

Truth comes from the fake builder (label values written at known voxels, per-sequence intensities,
the source affines) and from nnU-Net (``--verify_dataset_integrity``), not from the converter.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from support.fake_trees import MYOPS_INTENSITY, MYOPS_SPACING, make_fake_myops, save
from nnunetv2_physaug.conversion import METADATA_KEY, ConversionError, convert_myops
from nnunetv2_physaug.conversion.myops import parse_case_range

REPO = Path(__file__).resolve().parents[1]
TRAIN, TEST = tuple(range(3001, 3006)), (3006, 3007)


def load(path: Path) -> tuple[np.ndarray, nib.Nifti1Image]:
    img = nib.load(str(path))
    return np.asanyarray(img.dataobj), img


def acdc_truth(src: np.ndarray) -> np.ndarray:
    """MyoPS -> ACDC written out by hand: RV 1; myocardium incl. edema and scar 2; LV 3."""
    out = np.zeros(src.shape, np.uint8)
    out[src == 600] = 1
    out[(src == 200) | (src == 1220) | (src == 2221)] = 2
    out[src == 500] = 3
    return out


def test_case_lists():
    assert parse_case_range("3001-3003,3010") == (3001, 3002, 3003, 3010)
    assert parse_case_range("Case3005") == (3005,)
    for bad in ("", "30a1", "3005-3001"):
        with pytest.raises(ConversionError):
            parse_case_range(bad)


def test_layout_labels_pathology_splits(tmp_path, nnunet_dirs):
    labels = make_fake_myops(tmp_path / "Train")
    res = convert_myops(tmp_path / "Train", train_cases=TRAIN, test_cases=TEST, progress=False)
    ds = res.dataset_dir
    assert ds.name == "Dataset913_MyoPS" and (res.n_train, res.n_test) == (5, 2)
    tr = sorted(p.name for p in (ds / "imagesTr").iterdir())
    assert tr == [f"Case{n}_0000.nii.gz" for n in TRAIN]
    for seq in ("LGE", "T2"):
        assert sorted(p.name for p in (ds / f"imagesTr_{seq}").iterdir()) == tr
    for seq in ("C0", "LGE", "T2"):
        assert sorted(p.name for p in (ds / f"imagesTs_{seq}").iterdir()) == [f"Case{n}_0000.nii.gz" for n in TEST]
    # each folder holds its own sequence (intensities of the fake builder at an LV blood voxel)
    lv = (20, 18, 1)
    for folder, seq in (("imagesTr", "C0"), ("imagesTr_LGE", "LGE"), ("imagesTr_T2", "T2"),
                        ("imagesTs_C0", "C0"), ("imagesTs_LGE", "LGE"), ("imagesTs_T2", "T2")):
        img, _ = load(next((ds / folder).iterdir()))
        assert img[lv] == MYOPS_INTENSITY[seq][2], folder
    for n in TRAIN:
        lab, _ = load(ds / "labelsTr" / f"Case{n}.nii.gz")
        np.testing.assert_array_equal(lab, acdc_truth(labels[f"Case{n}"]))
        path, _ = load(ds / "labelsPathologyTr" / f"Case{n}.nii.gz")
        src = labels[f"Case{n}"]
        assert set(np.unique(path).tolist()) == {0, 1, 2}
        np.testing.assert_array_equal(path == 1, src == 1220)
        np.testing.assert_array_equal(path == 2, src == 2221)
    for n in TEST:
        truth = acdc_truth(labels[f"Case{n}"])
        for seq in ("C0", "LGE", "T2"):
            np.testing.assert_array_equal(load(ds / f"labelsTs_{seq}" / f"Case{n}.nii.gz")[0], truth)
        assert (ds / "labelsPathologyTs" / f"Case{n}.nii.gz").is_file()
    splits = json.loads(res.splits_file.read_text())
    assert len(splits) == 5 and sorted(c for s in splits for c in s["val"]) == [f"Case{n}" for n in TRAIN]
    meta = json.loads((ds / "dataset.json").read_text())
    assert meta["labels"] == {"background": 0, "RV": 1, "MLV": 2, "LVC": 3} and meta["numTraining"] == 5
    m = meta[METADATA_KEY]
    assert m["test_cases"] == ["Case3006", "Case3007"] and m["pathology_labels"]["scar"] == 2
    assert m["test_domains"]["LGE"] == {"images": "imagesTs_LGE", "labels": "labelsTs_LGE",
                                        "pathology": "labelsPathologyTs", "n_cases": 2}
    assert m["cases"]["Case3001"]["voxels_scar"] == int((labels["Case3001"] == 2221).sum())


def _world(img: nib.Nifti1Image, ijk) -> np.ndarray:
    return (img.affine @ np.r_[np.asarray(ijk, float), 1.0])[:3]


def test_crop_keeps_world_positions_and_pads(tmp_path, nnunet_dirs):
    labels = make_fake_myops(tmp_path / "Train", cases=range(3001, 3006))
    src_img = nib.load(str(tmp_path / "Train" / "Case3001" / "Case3001_C0.nii.gz"))
    res = convert_myops(tmp_path / "Train", train_cases=TRAIN, test_cases=(), crop_mm=15.0, progress=False)
    img, out = load(res.dataset_dir / "imagesTr" / "Case3001_0000.nii.gz")
    assert img.shape == (20, 20, 3)  # 15 mm / 0.75 mm
    # every output voxel shows the source voxel at the same world position
    src = np.asanyarray(src_img.dataobj)
    inv = np.linalg.inv(src_img.affine)
    for ijk in [(0, 0, 0), (19, 19, 2), (7, 13, 1), (10, 10, 1)]:
        s = np.rint((inv @ np.r_[_world(out, ijk), 1.0])[:3]).astype(int)
        assert img[ijk] == src[tuple(s)]
    lab, _ = load(res.dataset_dir / "labelsTr" / "Case3001.nii.gz")
    # the window is centred on the image centre, not on the labels: the LV (source centre 20, 18)
    # sits at 20 - 10 = 10 and 18 - 8 = 10 of the 20-voxel window
    assert lab[10, 10, 1] == 3

    res = convert_myops(tmp_path / "Train", train_cases=TRAIN, test_cases=(), crop_mm=45.0, overwrite=True,
                        progress=False)
    img, out = load(res.dataset_dir / "imagesTr" / "Case3001_0000.nii.gz")
    assert img.shape == (60, 60, 3)
    assert img[0, 0, 0] == 0 and img[59, 59, 0] == 0  # zero padding beyond the 40 x 36 source
    s = np.rint((inv @ np.r_[_world(out, (30, 30, 1)), 1.0])[:3]).astype(int)
    assert img[30, 30, 1] == src[tuple(s)]
    assert (load(res.dataset_dir / "labelsTr" / "Case3001.nii.gz")[0] == 3).sum() == (labels["Case3001"] == 500).sum()


def test_resample_reproduces_a_linear_ramp_and_areas(tmp_path, nnunet_dirs):
    labels = make_fake_myops(tmp_path / "Train", cases=range(3001, 3006))
    c0 = tmp_path / "Train" / "Case3002" / "Case3002_C0.nii.gz"
    src_img = nib.load(str(c0))
    i, j, _ = np.meshgrid(*[np.arange(n) for n in src_img.shape], indexing="ij")
    save(c0, (1000 + 10 * i + 3 * j).astype(np.int16), src_img.affine)  # a ramp: cubic splines are exact
    res = convert_myops(tmp_path / "Train", train_cases=TRAIN, test_cases=(), spacing_mm=1.5, progress=False)
    img, out = load(res.dataset_dir / "imagesTr" / "Case3002_0000.nii.gz")
    assert img.shape == (20, 18, 3) and img.dtype == np.float32
    np.testing.assert_allclose(out.header.get_zooms(), (1.5, 1.5, MYOPS_SPACING[2]), rtol=1e-5)
    inv = np.linalg.inv(src_img.affine)
    for ijk in [(3, 3, 0), (10, 9, 1), (16, 14, 2)]:  # interior (boundary handling aside)
        ci, cj, _ = (inv @ np.r_[_world(out, ijk), 1.0])[:3]
        assert img[ijk] == pytest.approx(1000 + 10 * ci + 3 * cj, abs=0.05)
    lab, lab_img = load(res.dataset_dir / "labelsTr" / "Case3002.nii.gz")
    src = labels["Case3002"]
    area_out = (lab[:, :, 1] == 3).sum() * 1.5 ** 2  # the LV disk (structures 2-4 voxels thin lose more)
    assert area_out == pytest.approx((src[:, :, 1] == 500).sum() * MYOPS_SPACING[0] ** 2, rel=0.12)
    assert {1, 2, 3} <= set(np.unique(lab).tolist())
    # LV centre (source voxel 20, 18) keeps its world position
    centre = np.argwhere(lab[:, :, 1] == 3).mean(0)
    np.testing.assert_allclose(_world(lab_img, (*centre, 1))[:2], _world(src_img, (20, 18, 1))[:2], atol=0.3)


def test_flat_layout_and_script(tmp_path, nnunet_dirs):
    make_fake_myops(tmp_path / "flat", flat=True)
    script = REPO / "dataset_conversion" / "Dataset913_MyoPS.py"
    env = dict(os.environ, **{k: str(v) for k, v in nnunet_dirs.items()})
    help_ = subprocess.run([sys.executable, str(script), "-h"], capture_output=True, text=True, check=True)
    assert "--crop" in help_.stdout and "Case3001_LGE.nii.gz" in help_.stdout
    cmd = [sys.executable, str(script), "-i", str(tmp_path / "flat"), "--train-cases", "3001-3005",
           "--test-cases", "3006-3007", "--crop", "24", "--spacing", "1.5", "--no-progress"]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr
    assert "5 training cases, 2 test cases" in r.stdout
    img = nib.load(str(nnunet_dirs["nnUNet_raw"] / "Dataset913_MyoPS" / "imagesTs_T2" / "Case3007_0000.nii.gz"))
    assert img.shape == (16, 16, 3)
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    assert r.returncode == 1 and "--overwrite" in r.stderr and "Traceback" not in r.stderr


def _expect_error(tmp_path, fragment: str, **kw):
    with pytest.raises(ConversionError) as e:
        convert_myops(tmp_path / "Train", progress=False, **kw)
    assert fragment in str(e.value)
    raw = Path(os.environ["nnUNet_raw"])
    assert not any(raw.iterdir()), "a failed conversion left files behind"
    return str(e.value)


def test_bad_trees_name_the_file_and_write_nothing(tmp_path, nnunet_dirs):
    make_fake_myops(tmp_path / "Train")
    kw = dict(train_cases=TRAIN, test_cases=TEST)
    _expect_error(tmp_path, "both training and test", train_cases=TRAIN, test_cases=(3005, 3006))
    _expect_error(tmp_path, "Case3009", train_cases=TRAIN, test_cases=(3009,))
    (tmp_path / "Train" / "Case3006" / "Case3006_LGE.nii.gz").unlink()
    _expect_error(tmp_path, "Case3006_LGE.nii.gz", **kw)
    make_fake_myops(tmp_path / "Train")
    gd = tmp_path / "Train" / "Case3007" / "Case3007_gd.nii.gz"
    lab, img = load(gd)
    lab = lab.copy()
    lab[0, 0, 0] = 7
    save(gd, lab, img.affine)
    msg = _expect_error(tmp_path, "Case3007_gd.nii.gz", **kw)
    assert "[7]" in msg
    make_fake_myops(tmp_path / "Train")
    t2 = tmp_path / "Train" / "Case3002" / "Case3002_T2.nii.gz"
    data, img = load(t2)
    save(t2, data, img.affine @ np.diag([1.0, 1.0, 1.0, 1.0]) + np.array([[0, 0, 0, 5.0]] + [[0] * 4] * 3))
    _expect_error(tmp_path, "Case3002_T2.nii.gz", **kw)
    make_fake_myops(tmp_path / "Train")
    (tmp_path / "Train" / "Case3003" / "Case3003_C0.nii.gz").write_bytes(b"not a nifti at all")
    _expect_error(tmp_path, "Case3003_C0.nii.gz", **kw)
    make_fake_myops(tmp_path / "Train")
    lge = tmp_path / "Train" / "Case3004" / "Case3004_LGE.nii.gz"
    lge.write_bytes(lge.read_bytes()[: lge.stat().st_size // 2])  # a truncated download: the header reads
    _expect_error(tmp_path, "Case3004_LGE.nii.gz", **kw)
    make_fake_myops(tmp_path / "Train")
    _expect_error(tmp_path, "--crop", crop_mm=-5.0, **kw)


@pytest.mark.slow
def test_nnunet_verify_dataset_integrity(tmp_path, nnunet_dirs):
    make_fake_myops(tmp_path / "Train")
    convert_myops(tmp_path / "Train", train_cases=TRAIN, test_cases=TEST, crop_mm=24, spacing_mm=1.5,
                  progress=False)
    exe = Path(sys.executable).with_name("nnUNetv2_plan_and_preprocess")
    cmd = [str(exe) if exe.exists() else "nnUNetv2_plan_and_preprocess", "-d", "913",
           "--verify_dataset_integrity", "--no_pp", "-np", "1", "-npfp", "1"]
    env = dict(os.environ, **{k: str(v) for k, v in nnunet_dirs.items()})
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    fp = json.loads((nnunet_dirs["nnUNet_preprocessed"] / "Dataset913_MyoPS" / "dataset_fingerprint.json").read_text())
    assert len(fp["shapes_after_crop"]) == 5
    np.testing.assert_allclose(fp["spacings"][0], (MYOPS_SPACING[2], 1.5, 1.5), rtol=1e-5)


def test_an_overwrite_stopped_after_the_swap_gets_its_own_splits_on_the_next_run(tmp_path, nnunet_dirs, monkeypatch):
    """--overwrite killed between putting the new dataset in place and writing the splits: the next run (plain
    or not) completes the splits from the dataset's own copy, so new cases never train on old splits."""
    from nnunetv2_physaug.conversion import myops

    make_fake_myops(tmp_path / "Train", cases=range(3001, 3012))
    first = convert_myops(tmp_path / "Train", train_cases=range(3001, 3006), test_cases=(), progress=False)
    old = json.loads(first.splits_file.read_text())

    def killed(*args, **kwargs):
        raise KeyboardInterrupt  # the process stops right after the dataset's rename
    with monkeypatch.context() as m, pytest.raises(KeyboardInterrupt):
        m.setattr(myops, "publish_splits", killed)
        convert_myops(tmp_path / "Train", train_cases=range(3004, 3012), test_cases=(), overwrite=True,
                      progress=False)
    ds = first.dataset_dir
    new_cases = sorted(p.name[:-len("_0000.nii.gz")] for p in (ds / "imagesTr").iterdir())
    assert new_cases == [f"Case{n}" for n in range(3004, 3012)]
    assert json.loads(first.splits_file.read_text()) == old  # the state the kill left: old splits
    with pytest.raises(ConversionError, match="already exists"):
        convert_myops(tmp_path / "Train", train_cases=range(3004, 3012), test_cases=(), progress=False)
    splits = json.loads(first.splits_file.read_text())
    assert splits == json.loads((ds / "splits_final.json").read_text()) != old
    assert sorted(c for fold in splits for c in fold["val"]) == new_cases


def test_a_spacing_that_would_ask_for_huge_images_is_refused_before_any_work(tmp_path, nnunet_dirs):
    make_fake_myops(tmp_path / "Train")
    for spacing in (1e-3, 0.05, 50.0):
        with pytest.raises(ConversionError, match=f"--spacing {spacing:g} mm is outside 0.1-20 mm"):
            convert_myops(tmp_path / "Train", train_cases=TRAIN, test_cases=TEST, spacing_mm=spacing, progress=False)
    assert not list(Path(os.environ["nnUNet_raw"]).iterdir())
