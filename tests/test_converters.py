"""Dataset converters (ACDC, M&Ms, M&Ms-2) on tiny fake source trees (tests/support/fake_trees.py).

Truth comes from the fake builders (the anatomy masks in ACDC convention, the frame index encoded
in the intensities, the metadata they wrote) and from nnU-Net itself (SimpleITKIO geometry,
``nnUNetv2_plan_and_preprocess --verify_dataset_integrity``), not from the converter code.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from support.fake_trees import (FRAME_STEP, LV_VOXEL, MNMS2_ROWS, MNMS_CASES, MNMS_CSV, MYO_VOXEL, RV_VOXEL, SPACING,
                                affine, anatomy_image, label_volume, make_fake_acdc, make_fake_mnms, make_fake_mnms2)
from nnunetv2_physaug.conversion import (METADATA_KEY, ConversionError, convert_acdc, convert_mnms,
                                         convert_mnms2)

REPO = Path(__file__).resolve().parents[1]
ACDC_LABEL_NAMES = {"background": 0, "RV": 1, "MLV": 2, "LVC": 3}


def names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def load(path: Path) -> tuple[np.ndarray, nib.Nifti1Image]:
    img = nib.load(str(path))
    return np.asanyarray(img.dataobj), img


def check_splits(splits: list[dict], train_cases: set[str], patient_of) -> None:
    """5 folds; every training case is validation exactly once; patients never straddle folds."""
    assert len(splits) == 5
    val_all = [c for s in splits for c in s["val"]]
    assert sorted(val_all) == sorted(train_cases)
    for s in splits:
        assert set(s["train"]).isdisjoint(s["val"])
        assert set(s["train"]) | set(s["val"]) == train_cases
        val_patients = {patient_of(c) for c in s["val"]}
        assert val_patients.isdisjoint({patient_of(c) for c in s["train"]})


# ============================================================================ ACDC

def test_acdc_files_labels_metadata(tmp_path, nnunet_dirs):
    fake = make_fake_acdc(tmp_path / "ACDC" / "database")
    res = convert_acdc(tmp_path / "ACDC", 910, progress=False)  # finds database/ by itself
    out = nnunet_dirs["nnUNet_raw"] / "Dataset910_ACDC"
    assert res.dataset_dir == out
    expect_tr = sorted(f"{p}_frame{f:02d}" for p in fake.train_patients for f in fake.frames[p])
    expect_ts = sorted(f"{p}_frame{f:02d}" for p in fake.test_patients for f in fake.frames[p])
    assert names(out / "imagesTr") == [f"{c}_0000.nii.gz" for c in expect_tr]
    assert names(out / "labelsTr") == [f"{c}.nii.gz" for c in expect_tr]
    assert names(out / "imagesTs") == [f"{c}_0000.nii.gz" for c in expect_ts]
    assert names(out / "labelsTs") == [f"{c}.nii.gz" for c in expect_ts]
    assert not list(out.parent.glob(".*"))  # no staging leftovers

    for p in fake.train_patients[:2] + fake.test_patients[:1]:
        sub = "Tr" if p in fake.train_patients else "Ts"
        ed, es = fake.frames[p]
        for phase, fr in (("ED", ed), ("ES", es)):
            img, hdr = load(out / f"images{sub}" / f"{p}_frame{fr:02d}_0000.nii.gz")
            # intensities of the cine frame fr (1-based) = anatomy + FRAME_STEP * (fr - 1)
            np.testing.assert_array_equal(img - anatomy_image(phase, int(p[-3:])), FRAME_STEP * (fr - 1))
            np.testing.assert_allclose(hdr.affine, affine())
            lab, _ = load(out / f"labels{sub}" / f"{p}_frame{fr:02d}.nii.gz")
            np.testing.assert_array_equal(lab, label_volume(phase, "acdc"))  # ACDC labels unchanged

    dj = json.loads((out / "dataset.json").read_text())
    assert dj["labels"] == ACDC_LABEL_NAMES
    assert dj["numTraining"] == len(expect_tr) and dj["file_ending"] == ".nii.gz"
    assert dj["channel_names"] == {"0": "cineMRI"}
    cases = dj[METADATA_KEY]["cases"]
    assert sorted(cases) == sorted(expect_tr + expect_ts)
    p = fake.train_patients[1]
    ed, es = fake.frames[p]
    meta = cases[f"{p}_frame{es:02d}"]
    assert (meta["group"], meta["ed_frame"], meta["es_frame"], meta["phase"], meta["patient"]) == \
        (fake.groups[p], ed, es, "ES", p)
    assert meta["n_frames"] == 5 and meta["height_cm"] == 162.0 and meta["subset"] == "train"

    splits = json.loads((nnunet_dirs["nnUNet_preprocessed"] / "Dataset910_ACDC" / "splits_final.json").read_text())
    check_splits(splits, set(expect_tr), lambda c: c.split("_")[0])


def test_acdc_splits_deterministic_and_seeded(tmp_path, nnunet_dirs):
    make_fake_acdc(tmp_path / "src", n_train=10, n_test=0)
    splits_file = nnunet_dirs["nnUNet_preprocessed"] / "Dataset910_ACDC" / "splits_final.json"
    convert_acdc(tmp_path / "src", 910, progress=False)
    first = json.loads(splits_file.read_text())
    convert_acdc(tmp_path / "src", 910, overwrite=True, progress=False)
    assert json.loads(splits_file.read_text()) == first
    folds = [sorted({c.split("_")[0] for c in s["val"]}) for s in first]
    assert all(len(f) == 2 for f in folds)  # 10 patients / 5 folds, both frames together
    convert_acdc(tmp_path / "src", 910, overwrite=True, seed=7, progress=False)
    other = json.loads(splits_file.read_text())
    assert [sorted({c.split("_")[0] for c in s["val"]}) for s in other] != folds


def test_acdc_refuses_overwrite_then_replaces(tmp_path, nnunet_dirs):
    make_fake_acdc(tmp_path / "src")
    convert_acdc(tmp_path / "src", 910, progress=False)
    out = nnunet_dirs["nnUNet_raw"] / "Dataset910_ACDC"
    (out / "marker.txt").write_text("keep me")
    with pytest.raises(ConversionError, match="--overwrite"):
        convert_acdc(tmp_path / "src", 910, progress=False)
    assert (out / "marker.txt").read_text() == "keep me"
    # a stale splits file alone also blocks
    shutil.rmtree(out)
    with pytest.raises(ConversionError, match="splits_final.json already exists"):
        convert_acdc(tmp_path / "src", 910, progress=False)
    res = convert_acdc(tmp_path / "src", 910, overwrite=True, progress=False)
    assert res.n_train == 10 and not (out / "marker.txt").exists()
    assert not list(out.parent.glob(".*"))


def test_acdc_missing_info_cfg_names_file_and_writes_nothing(tmp_path, nnunet_dirs):
    make_fake_acdc(tmp_path / "src")
    cfg = tmp_path / "src" / "training" / "patient003" / "Info.cfg"
    cfg.unlink()
    with pytest.raises(ConversionError, match=str(cfg).replace("\\", "\\\\")):
        convert_acdc(tmp_path / "src", 910, progress=False)
    assert names(nnunet_dirs["nnUNet_raw"]) == [] and names(nnunet_dirs["nnUNet_preprocessed"]) == []


def test_acdc_malformed_trees(tmp_path, nnunet_dirs):
    with pytest.raises(ConversionError, match="training"):
        convert_acdc(tmp_path, 910, progress=False)
    make_fake_acdc(tmp_path / "src")
    gt = tmp_path / "src" / "training" / "patient002" / "patient002_frame01_gt.nii.gz"
    gt.unlink()
    with pytest.raises(ConversionError, match="patient002_frame01_gt.nii.gz"):
        convert_acdc(tmp_path / "src", 910, progress=False)
    # an out-of-convention label value fails during the write and leaves no partial dataset
    shutil.rmtree(tmp_path / "src")
    make_fake_acdc(tmp_path / "src")
    bad = label_volume("ED", "acdc")
    bad[0, 0, 0] = 5
    nib.save(nib.Nifti1Image(bad, affine()), str(gt))
    with pytest.raises(ConversionError, match=r"patient002_frame01_gt.nii.gz.*\[5\]"):
        convert_acdc(tmp_path / "src", 910, progress=False)
    assert names(nnunet_dirs["nnUNet_raw"]) == []


def test_env_and_id_errors(tmp_path, nnunet_dirs, monkeypatch):
    make_fake_acdc(tmp_path / "src")
    (nnunet_dirs["nnUNet_raw"] / "Dataset910_Other").mkdir()
    with pytest.raises(ConversionError, match="Dataset910_Other"):
        convert_acdc(tmp_path / "src", 910, progress=False)
    monkeypatch.delenv("nnUNet_raw")
    with pytest.raises(ConversionError, match="nnUNet_raw is not set"):
        convert_acdc(tmp_path / "src", 911, progress=False)


def test_acdc_test_patients_without_labels(tmp_path, nnunet_dirs):
    make_fake_acdc(tmp_path / "src", test_gt=False)
    res = convert_acdc(tmp_path / "src", 910, progress=False)
    assert (res.n_test, res.n_test_labeled) == (4, 0)
    assert not (res.dataset_dir / "labelsTs").exists() and len(names(res.dataset_dir / "imagesTs")) == 4


# ============================================================================ M&Ms

def test_mnms_frames_remap_geometry(tmp_path, nnunet_dirs):
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO

    make_fake_mnms(tmp_path / "OpenDataset")
    res = convert_mnms(tmp_path / "OpenDataset", 911, progress=False)
    out = res.dataset_dir
    lab_cases = {c: (f, ed, es) for c, f, _, _, _, ed, es, _ in MNMS_CASES if f != "Training/Unlabeled"}
    tr = sorted(f"{c}_frame{t:02d}" for c, (f, ed, es) in lab_cases.items() if f == "Training/Labeled"
                for t in (ed, es))
    ts = sorted(f"{c}_frame{t:02d}" for c, (f, ed, es) in lab_cases.items() if f != "Training/Labeled"
                for t in (ed, es))
    assert names(out / "imagesTr") == [f"{c}_0000.nii.gz" for c in tr]
    assert names(out / "labelsTr") == [f"{c}.nii.gz" for c in tr]
    assert names(out / "imagesTs") == [f"{c}_0000.nii.gz" for c in ts]
    assert names(out / "labelsTs") == [f"{c}.nii.gz" for c in ts]
    assert not any("A1O8Z3" in n for n in names(out / "imagesTs") + names(out / "imagesTr"))  # unlabeled

    for n, (code, folder, *_r, ed, es, _p) in enumerate(MNMS_CASES):
        if folder == "Training/Unlabeled":
            continue
        sub = "Tr" if folder == "Training/Labeled" else "Ts"
        for phase, t in (("ED", ed), ("ES", es)):
            img, hdr = load(out / f"images{sub}" / f"{code}_frame{t:02d}_0000.nii.gz")
            assert img.shape == (16, 16, 4) and hdr.header["dim"][0] == 3
            # the intensities identify the cine frame: anatomy + FRAME_STEP * t
            np.testing.assert_array_equal(img - anatomy_image(phase, 100 + n), FRAME_STEP * t)
            np.testing.assert_allclose(hdr.affine, affine())
            np.testing.assert_allclose(hdr.header.get_zooms(), SPACING)
            lab, lhdr = load(out / f"labels{sub}" / f"{code}_frame{t:02d}.nii.gz")
            assert lab.dtype == np.uint8
            np.testing.assert_array_equal(lab, label_volume(phase, "acdc"))  # M&Ms 1<->3 swapped
            assert (lab[LV_VOXEL], lab[MYO_VOXEL], lab[RV_VOXEL]) == (3, 2, 1)
            np.testing.assert_allclose(lhdr.affine, hdr.affine)
    # nnU-Net's own reader sees 3D volumes with the source spacing, image and label alike
    img_files = [str(out / "imagesTr" / f"{tr[0]}_0000.nii.gz")]
    _, props = SimpleITKIO().read_images(img_files)
    _, lprops = SimpleITKIO().read_seg(str(out / "labelsTr" / f"{tr[0]}.nii.gz"))
    assert tuple(props["sitk_stuff"]["spacing"]) == SPACING
    assert props["sitk_stuff"] == lprops["sitk_stuff"]

    dj = json.loads((out / "dataset.json").read_text())
    assert dj["numTraining"] == len(tr) and dj["labels"] == ACDC_LABEL_NAMES
    cases = dj[METADATA_KEY]["cases"]
    code, folder, vname, vendor, centre, ed, es, path = MNMS_CASES[6]
    m = cases[f"{code}_frame{es:02d}"]
    assert (m["vendor"], m["vendor_name"], m["centre"], m["pathology"], m["source_split"], m["phase"],
            m["frame"], m["subset"]) == (vendor, vname, centre, path, "validation", "ES", es, "test")
    assert dj[METADATA_KEY]["label_map_source_to_acdc"] == {"0": 0, "1": 3, "2": 2, "3": 1}
    splits = json.loads(res.splits_file.read_text())
    check_splits(splits, set(tr), lambda c: c.split("_")[0])


def test_mnms_by_vendor_and_centre(tmp_path, nnunet_dirs):
    make_fake_mnms(tmp_path / "src")
    res = convert_mnms(tmp_path / "src", 911, by_vendor=True, by_centre=True, progress=False)
    out = res.dataset_dir
    tests = [r for r in MNMS_CASES if r[1] in ("Validation", "Testing")]
    for key, idx, fmt in (("vendor", 3, "{}"), ("centre", 4, "centre{}")):
        expected: dict[str, list[str]] = {}
        for code, _f, *_r in tests:
            row = next(r for r in MNMS_CASES if r[0] == code)
            expected.setdefault(fmt.format(row[idx]), []).extend(
                f"{code}_frame{t:02d}" for t in (row[5], row[6]))
        for dom, cases in expected.items():
            assert names(out / f"imagesTs_{dom}") == sorted(f"{c}_0000.nii.gz" for c in cases)
            assert names(out / f"labelsTs_{dom}") == sorted(f"{c}.nii.gz" for c in cases)
            # the domain copies are the same volumes as in imagesTs
            c = cases[0]
            np.testing.assert_array_equal(load(out / f"labelsTs_{dom}" / f"{c}.nii.gz")[0],
                                          load(out / "labelsTs" / f"{c}.nii.gz")[0])
        assert set(res.group_dirs) >= set(expected)
    assert sorted(json.loads((out / "dataset.json").read_text())[METADATA_KEY]["test_domains"]) == \
        sorted(res.group_dirs)


def test_mnms_metadata_errors(tmp_path, nnunet_dirs):
    make_fake_mnms(tmp_path / "src")
    csv_path = tmp_path / "src" / MNMS_CSV
    text = csv_path.read_text()
    csv_path.unlink()
    with pytest.raises(ConversionError, match="M&Ms information CSV.*211230_M&Ms"):
        convert_mnms(tmp_path / "src", 911, progress=False)
    csv_path.write_text("\n".join(line for line in text.splitlines() if "A1D9Z7" not in line) + "\n")
    with pytest.raises(ConversionError, match="A1D9Z7"):
        convert_mnms(tmp_path / "src", 911, progress=False)
    csv_path.write_text(text.replace("External code", "Code"))
    with pytest.raises(ConversionError, match="External code"):
        convert_mnms(tmp_path / "src", 911, progress=False)
    # an ES index past the end of the cine names the file and the frame
    csv_path.write_text(text.replace("A0S9V9,Siemens,A,1,0,3", "A0S9V9,Siemens,A,1,0,9"))
    with pytest.raises(ConversionError, match=r"A0S9V9_sa.nii.gz: frame index 9"):
        convert_mnms(tmp_path / "src", 911, progress=False)
    assert names(nnunet_dirs["nnUNet_raw"]) == []


# ============================================================================ M&Ms-2

def test_mnms2_short_axis(tmp_path, nnunet_dirs):
    make_fake_mnms2(tmp_path / "MnM2")
    res = convert_mnms2(tmp_path / "MnM2", 912, train_subjects="1-5", by_vendor=True, progress=False)
    out = res.dataset_dir
    tr = sorted(f"{n:03d}_SA_{p}" for n in range(1, 6) for p in ("ED", "ES"))
    ts = sorted(f"{n:03d}_SA_{p}" for n in range(6, 9) for p in ("ED", "ES"))
    assert names(out / "imagesTr") == [f"{c}_0000.nii.gz" for c in tr]
    assert names(out / "labelsTs") == [f"{c}.nii.gz" for c in ts]
    for case in ("002_SA_ED", "007_SA_ES"):
        sub = "Tr" if case < "006" else "Ts"
        phase = case[-2:]
        lab, _ = load(out / f"labels{sub}" / f"{case}.nii.gz")
        np.testing.assert_array_equal(lab, label_volume(phase, "acdc"))
        img, hdr = load(out / f"images{sub}" / f"{case}_0000.nii.gz")
        np.testing.assert_array_equal(img, anatomy_image(phase, 200 + int(case[:3])))
        np.testing.assert_allclose(hdr.affine, affine())
    cases = json.loads((out / "dataset.json").read_text())[METADATA_KEY]["cases"]
    code, disease, sex, age, vendor, scanner, fieldT = MNMS2_ROWS[4]
    m = cases["005_SA_ES"]
    assert (m["disease"], m["sex"], m["age"], m["vendor"], m["scanner"], m["field_T"], m["view"]) == \
        (disease, sex, age, vendor, scanner, fieldT, "SA")
    # vendor domains over the test subjects 6..8, with folder-safe names
    assert names(out / "imagesTs_SIEMENS") == ["006_SA_ED_0000.nii.gz", "006_SA_ES_0000.nii.gz",
                                               "008_SA_ED_0000.nii.gz", "008_SA_ES_0000.nii.gz"]
    assert names(out / "labelsTs_GEMEDICALSYSTEMS") == ["007_SA_ED.nii.gz", "007_SA_ES.nii.gz"]
    check_splits(json.loads(res.splits_file.read_text()), set(tr), lambda c: c[:3])


def test_mnms2_long_axis_and_errors(tmp_path, nnunet_dirs):
    make_fake_mnms2(tmp_path / "src")
    res = convert_mnms2(tmp_path / "src", 912, long_axis=True, train_subjects="1-8", progress=False)
    out = res.dataset_dir
    assert res.n_train == 8 * 4 and res.n_test == 0
    lab, _ = load(out / "labelsTr" / "003_LA_ED.nii.gz")
    assert lab.shape == (16, 16, 1)
    np.testing.assert_array_equal(lab[..., 0], label_volume("ED", "acdc")[:, :, 1])
    splits = json.loads(res.splits_file.read_text())
    check_splits(splits, {f"{n:03d}_{v}_{p}" for n in range(1, 9) for v in ("SA", "LA") for p in ("ED", "ES")},
                 lambda c: c[:3])

    (tmp_path / "src" / "dataset" / "004" / "004_SA_ES_gt.nii.gz").unlink()
    with pytest.raises(ConversionError, match="004_SA_ES_gt.nii.gz"):
        convert_mnms2(tmp_path / "src", 912, overwrite=True, progress=False)
    (tmp_path / "src" / "dataset_information.csv").unlink()
    with pytest.raises(ConversionError, match="dataset_information.csv"):
        convert_mnms2(tmp_path / "src", 912, overwrite=True, progress=False)
    with pytest.raises(ConversionError, match="bad subject range"):
        convert_mnms2(tmp_path / "src", 912, train_subjects="1-x", progress=False)


# ============================================================================ scripts and nnU-Net

def _env(nnunet_dirs) -> dict:
    env = dict(os.environ)
    env.update({k: str(v) for k, v in nnunet_dirs.items()})
    env["nnUNet_def_n_proc"] = "1"
    return env


def test_scripts_run_as_files(tmp_path, nnunet_dirs):
    make_fake_acdc(tmp_path / "acdc")
    script = REPO / "dataset_conversion" / "Dataset910_ACDC.py"
    help_ = subprocess.run([sys.executable, str(script), "-h"], capture_output=True, text=True, check=True)
    assert "Info.cfg" in help_.stdout and "--overwrite" in help_.stdout
    cmd = [sys.executable, str(script), "-i", str(tmp_path / "acdc"), "-d", "910", "--no-progress"]
    r = subprocess.run(cmd, capture_output=True, text=True, env=_env(nnunet_dirs), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "10 training cases" in r.stdout
    r = subprocess.run(cmd, capture_output=True, text=True, env=_env(nnunet_dirs), cwd=tmp_path)
    assert r.returncode == 1 and "--overwrite" in r.stderr and "Traceback" not in r.stderr

    make_fake_mnms(tmp_path / "mnms")
    r = subprocess.run([sys.executable, str(REPO / "dataset_conversion" / "Dataset911_MNMs.py"),
                        "-i", str(tmp_path / "mnms"), "-d", "911", "--by-vendor"],
                       capture_output=True, text=True, env=_env(nnunet_dirs), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert (nnunet_dirs["nnUNet_raw"] / "Dataset911_MNMs" / "imagesTs_C").is_dir()


@pytest.mark.slow
def test_nnunet_verify_dataset_integrity(tmp_path, nnunet_dirs):
    make_fake_acdc(tmp_path / "acdc")
    convert_acdc(tmp_path / "acdc", 910, progress=False)
    exe = Path(sys.executable).with_name("nnUNetv2_plan_and_preprocess")
    cmd = [str(exe) if exe.exists() else "nnUNetv2_plan_and_preprocess", "-d", "910",
           "--verify_dataset_integrity", "--no_pp", "-np", "1", "-npfp", "1"]
    r = subprocess.run(cmd, capture_output=True, text=True, env=_env(nnunet_dirs), timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    pre = nnunet_dirs["nnUNet_preprocessed"] / "Dataset910_ACDC"
    fp = json.loads((pre / "dataset_fingerprint.json").read_text())
    assert len(fp["shapes_after_crop"]) == 10
    np.testing.assert_allclose(fp["spacings"][0], SPACING[::-1])  # nnU-Net stores (z, y, x)
    assert (pre / "nnUNetPlans.json").is_file()
    # planning must not have replaced our patient-level splits
    assert json.loads((pre / "splits_final.json").read_text())[0]["val"][0].startswith("patient")
