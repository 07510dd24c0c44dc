"""The tissue-map folder's one completeness rule: interrupted overwrites, truncated maps and concurrent runs.

Truth here is what an uninterrupted run writes (reference folders made separately), not the folder's
own bookkeeping: a case the folder calls complete must hold exactly the reference maps of the folder's
recorded settings.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from nnunetv2_physaug.maps import TissueMapFolder, read_case_maps, read_manifest
from nnunetv2_physaug.reverse import CacheMismatchError, fill_missing_maps, run_reverse
from support.reverse_inputs import CASES, N_CASES, PY, interrupted_overwrite, make_dataset, same_maps, subprocess_env

@pytest.fixture(scope="module")
def references(tmp_path_factory):
    root = tmp_path_factory.mktemp("refs")
    images = make_dataset(root, N_CASES, labels=True)
    run_reverse(images, root / "seed0", seed=0, progress=False)
    run_reverse(images, root / "seed1", seed=1, progress=False)
    for c in CASES:  # the two settings give different maps, so a mix would be visible
        assert not same_maps(root / "seed0", root / "seed1", c)
    return images, root / "seed0", root / "seed1"


def test_killed_overwrite_leaves_no_case_that_mixes_runs(tmp_path, references):
    images, seed0, seed1 = references
    r = interrupted_overwrite(tmp_path, images, seed0, seed1, delay_s=0.4)
    assert r["mixed"] == []
    assert r["incomplete"], r  # the kill landed before the end
    folder = TissueMapFolder(tmp_path / "maps")
    assert read_manifest(folder.path)["parameters"]["seed"] == 1
    assert set(read_manifest(folder.path)["cases"]) == set(r["complete"])  # the manifest lists no unfinished case
    assert folder.missing(CASES) == r["incomplete"]  # what the trainer would ask for
    with pytest.raises(CacheMismatchError, match="seed"):  # the trainer's own estimator (seed 0) may not fill it
        fill_missing_maps(images, folder.path, CASES, progress=False)
    s = run_reverse(images, folder.path, seed=1, progress=False)  # the interrupted command, rerun, resumes
    assert sorted(s.done) == r["incomplete"] and sorted(s.skipped) == r["complete"]
    assert all(same_maps(folder.path, seed1, c) for c in CASES)


def test_truncated_or_replaced_map_is_incomplete_and_redone(tmp_path, references):
    images, seed0, seed1 = references
    out = tmp_path / "maps"
    shutil.copytree(seed1, out)
    t1 = out / "case01_T1.nii.gz"
    t1.write_bytes(t1.read_bytes()[: t1.stat().st_size // 2])  # truncated
    shutil.copyfile(seed0 / "case03_T2.nii.gz", out / "case03_T2.nii.gz")  # replaced by another run's map
    m0 = bytearray((out / "case04_M0.nii.gz").read_bytes())
    m0[len(m0) // 2] ^= 0xFF  # one byte changed in place: same size
    (out / "case04_M0.nii.gz").write_bytes(bytes(m0))
    folder = TissueMapFolder(out)
    assert folder.missing(CASES) == ["case01", "case03", "case04"]
    s = run_reverse(images, out, seed=1, progress=False)
    assert sorted(s.done) == ["case01", "case03", "case04"] and len(s.skipped) == N_CASES - 3
    assert all(same_maps(out, seed1, c) for c in CASES)


_RUN_AND_REPORT = """
import json, sys
from nnunetv2_physaug.reverse import run_reverse
s = run_reverse(sys.argv[1], sys.argv[2], batch_size=1, progress=False)
print(json.dumps({"done": s.done, "skipped": s.skipped, "failed": s.failed}))
"""


def test_two_unsharded_runs_into_one_folder_never_compute_a_case_twice(tmp_path):
    images = make_dataset(tmp_path, 8)
    out = tmp_path / "maps"
    procs = [subprocess.Popen([PY, "-c", _RUN_AND_REPORT, str(images), str(out)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=subprocess_env()) for _ in range(2)]
    outs = [p.communicate(timeout=180) for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    reports = [json.loads(o[0].strip().splitlines()[-1]) for o in outs]
    done = [set(r["done"]) for r in reports]
    assert not done[0] & done[1], reports  # each case computed by one run only
    assert done[0] | done[1] == {f"case{i:02d}" for i in range(8)}
    assert TissueMapFolder(out).complete_cases() == [f"case{i:02d}" for i in range(8)]
    assert set(read_manifest(out)["cases"]) == {f"case{i:02d}" for i in range(8)}


def test_a_folder_of_the_previous_format_is_a_clear_error_and_overwrite_redoes_it(tmp_path, references):
    from nnunetv2_physaug.maps import TissueMapError

    images, _, seed1 = references
    out = tmp_path / "maps"
    shutil.copytree(seed1, out)
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["format_version"] = 1  # as written before commit records named the map bytes
    (out / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(TissueMapError, match=r"manifest.json has format version 1.*--overwrite"):
        run_reverse(images, out, seed=1, progress=False)
    with pytest.raises(TissueMapError, match="format version 1"):  # what the trainer's check meets
        TissueMapFolder(out).missing(CASES)
    s = run_reverse(images, out, seed=1, overwrite=True, progress=False)
    assert sorted(s.done) == CASES and TissueMapFolder(out).complete_cases() == CASES
