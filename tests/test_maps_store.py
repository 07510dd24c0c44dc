"""The raw tissue-map format: validation, no silent overwrite, geometry checks, atomic writes."""
from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from nnunetv2_physaug.maps import (TissueMapError, TissueMapFolder, map_path, read_case_maps, read_manifest,
                                   write_case_maps)

AFF = np.diag([1.5, 1.5, 8.0, 1.0])


def _maps(shape=(6, 5, 3)):
    rng = np.random.default_rng(0)
    m0 = rng.uniform(0.1, 1.0, shape).astype(np.float32)
    return m0, np.full(shape, 1000.0, np.float32), np.full(shape, 50.0, np.float32)


def test_round_trip_3d_and_4d(tmp_path):
    m0, t1, t2 = _maps()
    write_case_maps(tmp_path, "a", m0, t1, t2, AFF)
    maps, aff = read_case_maps(tmp_path, "a")
    assert maps.shape == (3, 6, 5, 3, 1) and np.allclose(aff, AFF)
    np.testing.assert_array_equal(maps[0, ..., 0], m0)
    k = np.stack([m0, m0 * 2], -1)
    write_case_maps(tmp_path, "b", k, np.stack([t1, t1], -1), np.stack([t2, t2], -1), AFF)
    assert read_case_maps(tmp_path, "b")[0].shape == (3, 6, 5, 3, 2)
    folder = TissueMapFolder(tmp_path)  # no manifest: a user's own maps, complete when the three files exist
    assert folder.complete_cases() == ["a", "b"]
    assert folder.missing(["a", "c"]) == ["c"]
    assert not list(tmp_path.glob(".tmp-*"))  # no temporary files left


@pytest.mark.parametrize("name,bad,match", [("t1", np.nan, "T1 map contains NaN"), ("t2", 0.0, "T2 map has non-positive"),
                                            ("m0", -1.0, "negative"), ("m0", np.inf, "M0 map contains NaN or Inf")])
def test_bad_values_are_refused_before_anything_is_written(tmp_path, name, bad, match):
    m0, t1, t2 = _maps()
    arrays = {"m0": m0, "t1": t1, "t2": t2}
    arrays[name][0, 0, 0] = bad
    with pytest.raises(TissueMapError, match=match):
        write_case_maps(tmp_path, "a", arrays["m0"], arrays["t1"], arrays["t2"], AFF)
    assert not any(tmp_path.iterdir())


def test_existing_maps_are_not_overwritten_without_overwrite(tmp_path):
    m0, t1, t2 = _maps()
    write_case_maps(tmp_path, "a", m0, t1, t2, AFF)
    with pytest.raises(FileExistsError, match="--overwrite"):
        write_case_maps(tmp_path, "a", m0 * 2, t1, t2, AFF)
    write_case_maps(tmp_path, "a", m0 * 2, t1, t2, AFF, overwrite=True)
    np.testing.assert_allclose(read_case_maps(tmp_path, "a")[0][0, ..., 0], m0 * 2)


def test_geometry_must_match_the_image(tmp_path):
    m0, t1, t2 = _maps()
    write_case_maps(tmp_path, "a", m0, t1, t2, AFF)
    nib.save(nib.Nifti1Image(m0, AFF), tmp_path / "same.nii.gz")
    read_case_maps(tmp_path, "a", reference_image=tmp_path / "same.nii.gz")
    nib.save(nib.Nifti1Image(m0[:4], AFF), tmp_path / "smaller.nii.gz")
    with pytest.raises(TissueMapError, match="shape .* but the image .*smaller.nii.gz"):
        read_case_maps(tmp_path, "a", reference_image=tmp_path / "smaller.nii.gz")
    nib.save(nib.Nifti1Image(m0, np.diag([2.0, 1.5, 8.0, 1.0])), tmp_path / "moved.nii.gz")
    with pytest.raises(TissueMapError, match="affine"):
        read_case_maps(tmp_path, "a", reference_image=tmp_path / "moved.nii.gz")


def test_missing_or_corrupt_maps_name_the_file_and_the_fix(tmp_path):
    m0, t1, t2 = _maps()
    write_case_maps(tmp_path, "a", m0, t1, t2, AFF)
    map_path(tmp_path, "a", "T2").unlink()
    assert not TissueMapFolder(tmp_path).is_complete("a")
    with pytest.raises(TissueMapError, match=r"a_T2.nii.gz.*physaug-reverse"):
        read_case_maps(tmp_path, "a")
    map_path(tmp_path, "a", "T2").write_bytes(b"not a nifti")
    with pytest.raises(TissueMapError, match="cannot read tissue map .*a_T2.nii.gz"):
        read_case_maps(tmp_path, "a")


def test_manifest(tmp_path):
    assert read_manifest(tmp_path) == {}
    folder = TissueMapFolder(tmp_path)
    ident = folder.establish({"estimator": "ground_truth", "prior_hash": None, "parameters": {"seed": 1}}, False)
    folder.write_case("a", *_maps(), AFF, ident, qc={"qc": 0.1})
    man = read_manifest(tmp_path)
    assert man["estimator"] == "ground_truth" and man["map_units"]["T1"] == "ms" and man["cases"]["a"]["qc"] == 0.1
    (tmp_path / "manifest.json").write_text("{broken")
    with pytest.raises(TissueMapError, match="not valid JSON"):
        read_manifest(tmp_path)
