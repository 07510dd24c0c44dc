"""Map alignment against nnU-Net's own preprocessing of the same image."""
from __future__ import annotations

import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from support.nnunet import environ_from, load_json, nnunet_env, plan_and_preprocess, write_toy_dataset

DATASET_ID = 961


@pytest.fixture(scope="module")
def preprocessed(tmp_path_factory):
    root = tmp_path_factory.mktemp("align")
    env = nnunet_env(root)
    # "noNorm": preprocessing leaves intensities alone, so a map equal to the image must align to
    # exactly the preprocessed image
    folder = write_toy_dataset(Path(env["nnUNet_raw"]), DATASET_ID, "AlignToy", n_cases=3, channel_name="noNorm")
    plan_and_preprocess(env, DATASET_ID, configs=("2d", "3d_fullres"))
    with environ_from(env):
        yield env, folder


def _align(env, folder, configuration):
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
    from nnunetv2_physaug.maps.align import align_dataset_maps

    pp = Path(env["nnUNet_preprocessed"]) / folder.name
    pm = PlansManager(str(pp / "nnUNetPlans.json"))
    cm = pm.get_configuration(configuration)
    cases = sorted(p.name[:-len(".pkl")] for p in (pp / cm.data_identifier).glob("*.pkl"))
    raw_images = {c: str(folder / "imagesTr" / f"{c}_0000.nii.gz") for c in cases}
    out = align_dataset_maps(folder / "tissueMapsTr", pp, pm, cm, load_json(folder / "dataset.json"), cases,
                             raw_images=raw_images, verbose=False)
    return out, pp, cm, cases


@pytest.mark.parametrize("configuration", ["2d", "3d_fullres"])
def test_map_equal_to_image_aligns_to_preprocessed_image(preprocessed, configuration):
    from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class

    env, folder = preprocessed
    out, pp, cm, cases = _align(env, folder, configuration)
    data_folder = pp / cm.data_identifier
    ds = infer_dataset_class(str(data_folder))(str(data_folder), cases)
    resampled_some = False
    for case in cases:
        data, seg, _, props = ds.load_case(case)
        data = np.asarray(data[:])
        aligned = np.load(out / f"{case}.npy")
        assert aligned.shape == (1, 3, *data.shape[1:])
        resampled_some |= tuple(props["shape_after_cropping_and_before_resampling"]) != tuple(data.shape[1:])
        # M0 = image (clamped at 0 like every M0), T1 = image + 100, T2 = image + 5
        np.testing.assert_allclose(aligned[0, 0], np.maximum(data[0], 0), atol=1e-3)
        np.testing.assert_allclose(aligned[0, 1] - 100.0, data[0], atol=1e-3)
        np.testing.assert_allclose(aligned[0, 2] - 5.0, np.maximum(data[0], -4.0), atol=1e-3)
        sample = np.load(out / f"{case}_sample.npy")
        assert sample.shape[:2] == (1, 4)
        # the stats sample draws only from the normalisation mask when nnU-Net uses one
        if cm.use_mask_for_norm[0]:
            assert sample[0, 3].min() >= 0
    assert resampled_some, "test data should make nnU-Net resample at least one case"


def test_realigns_when_raw_maps_change_and_skips_otherwise(preprocessed):
    from nnunetv2_physaug.maps import write_case_maps

    env, folder = preprocessed
    out, _, _, cases = _align(env, folder, "2d")
    case = cases[0]
    before = (out / f"{case}.npy").stat().st_mtime_ns
    _align(env, folder, "2d")
    assert (out / f"{case}.npy").stat().st_mtime_ns == before, "an up-to-date case must not be re-aligned"

    img = nib.load(folder / "imagesTr" / f"{case}_0000.nii.gz")
    arr = np.asarray(img.dataobj, np.float32)
    time.sleep(0.01)
    write_case_maps(folder / "tissueMapsTr", case, arr * 2, arr + 300.0, arr + 5.0, img.affine, overwrite=True)
    _align(env, folder, "2d")
    aligned = np.load(out / f"{case}.npy")
    assert (out / f"{case}.npy").stat().st_mtime_ns != before
    assert float(np.median(aligned[0, 1])) > 300.0 - 1e-3


def test_maps_of_wrong_shape_are_refused_naming_the_case(preprocessed, tmp_path):
    from nnunetv2_physaug.maps import TissueMapError, write_case_maps

    env, folder = preprocessed
    out, pp, cm, cases = _align(env, folder, "2d")
    case = cases[1]
    img = nib.load(folder / "imagesTr" / f"{case}_0000.nii.gz")
    bad = np.ones((10, 10, 5), np.float32) * 100
    write_case_maps(folder / "tissueMapsTr", case, bad, bad, bad, img.affine, overwrite=True)
    try:
        with pytest.raises(TissueMapError, match=case):
            _align(env, folder, "2d")
    finally:
        arr = np.asarray(img.dataobj, np.float32)
        write_case_maps(folder / "tissueMapsTr", case, arr, arr + 100.0, arr + 5.0, img.affine, overwrite=True)


def test_non_finite_aligned_maps_are_refused_naming_the_case(preprocessed, monkeypatch):
    """The loader renders aligned maps without checking them again, so alignment checks what it writes."""
    from nnunetv2_physaug.maps import TissueMapError, align, write_case_maps

    env, folder = preprocessed
    out, _, _, cases = _align(env, folder, "2d")
    case = cases[2]
    before = np.load(out / f"{case}.npy")
    real = align.align_case_maps

    def with_nan(*args, **kwargs):
        data = real(*args, **kwargs)
        data[0, 1].flat[0] = np.nan
        return data
    monkeypatch.setattr(align, "align_case_maps", with_nan)
    img = nib.load(folder / "imagesTr" / f"{case}_0000.nii.gz")
    arr = np.asarray(img.dataobj, np.float32)
    time.sleep(0.01)
    write_case_maps(folder / "tissueMapsTr", case, arr, arr + 100.0, arr + 5.0, img.affine, overwrite=True)
    with pytest.raises(TissueMapError, match=f"aligned tissue maps of case '{case}'.*T1 map contains NaN"):
        _align(env, folder, "2d")
    np.testing.assert_array_equal(np.load(out / f"{case}.npy"), before)  # nothing written for it
    monkeypatch.undo()
    _align(env, folder, "2d")


def test_alignment_waits_for_another_process_aligning_the_same_folder(preprocessed):
    """Parallel trainings of one dataset align one at a time: while the lock is held elsewhere (here by
    the test) an aligner writes nothing, and once released it finishes with every case indexed."""
    import threading

    from nnunetv2_physaug.maps.align import INDEX_NAME
    from nnunetv2_physaug.maps.folder import FileLock

    env, folder = preprocessed
    out, _, _, cases = _align(env, folder, "2d")
    (out / INDEX_NAME).unlink()  # every case stale again
    holder = FileLock.acquire(out / ".align.lock", blocking=True)
    done = threading.Event()
    worker = threading.Thread(target=lambda: (_align(env, folder, "2d"), done.set()))
    worker.start()
    time.sleep(1.5)
    waited = not done.is_set() and not (out / INDEX_NAME).exists()
    holder.release()
    worker.join(timeout=60)
    assert waited, "the aligner must wait for the lock held by another process"
    assert done.is_set() and set(load_json(out / INDEX_NAME)) == set(cases)
