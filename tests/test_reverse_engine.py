"""physaug-reverse engine, cache and CLI: maps, manifest, resume, overwrite, shards, kill-and-resume, bad input."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from nnunetv2_physaug.cli.reverse import main as cli_main
from nnunetv2_physaug.maps import TissueMapFolder, read_case_maps, read_manifest
from nnunetv2_physaug.physics import bssfp
from nnunetv2_physaug.reverse import CacheMismatchError, fill_missing_maps, run_reverse
from nnunetv2_physaug.reverse.shard import parse_shard, resolve_shard, shard_cases

from support.reverse_inputs import AFFINE, PY, SLOW_WRITER, make_dataset, ring_case, subprocess_env

def run_cli(*args: str) -> None:
    cli_main([*args, "--no-progress"])


#: untrained test priors cannot fit the images nor give a heart's T1/T2; both checks have tests of their own
UNTRAINED = ("--max-nrmse", "1000", "--accept-implausible")


def test_cli_end_to_end_resume_overwrite_mismatch(tmp_path, capsys):
    images = make_dataset(tmp_path, 3)
    run_cli("-i", str(images), "--batch-size", "4")  # 4 slices per call: batches span cases
    out = capsys.readouterr().out
    assert "3 done, 0 skipped" in out and "weight-free" in out and "data consistency" in out
    maps_dir = tmp_path / "tissueMapsTr"  # default: beside imagesTr
    assert TissueMapFolder(maps_dir).complete_cases() == ["case00", "case01", "case02"]
    for c in ("case00", "case01", "case02"):
        maps, affine = read_case_maps(maps_dir, c, reference_image=images / f"{c}_0000.nii.gz")
        assert maps.shape == (3, 40, 34, 3, 1)
        np.testing.assert_allclose(affine, AFFINE, atol=1e-5)
        # independent re-render of the written maps reproduces the image up to one volume-wide scale
        img = np.asarray(nib.load(images / f"{c}_0000.nii.gz").dataobj)
        r = bssfp(torch.tensor(maps[0, ..., 0]), torch.tensor(maps[1, ..., 0]), torch.tensor(maps[2, ..., 0]),
                  45.0, 0.0, short_tr=True).numpy()
        k = (r * img).sum() / (r * r).sum()
        assert np.linalg.norm(img - k * r) / np.linalg.norm(img) < 1e-4
        # labelled blood pool holds blood-like T1/T2 (labels were found in the sibling labelsTr)
        lab = np.asarray(nib.load(tmp_path / "labelsTr" / f"{c}.nii.gz").dataobj)
        assert 1300 < np.median(maps[1, ..., 0][lab == 3]) < 1800
        assert 200 < np.median(maps[2, ..., 0][lab == 3]) < 340
    man = read_manifest(maps_dir)
    assert man["estimator"] == "label" and man["prior_hash"] is None
    assert man["parameters"]["field"] == "1.5T" and man["parameters"]["n_samples"] == 1
    assert man["package_version"]
    assert set(man["cases"]) == {"case00", "case01", "case02"}
    assert all(q["nrmse_pct"] < 1e-3 and q["labels"] and q["n_slices"] == 3 for q in man["cases"].values())

    # rerun: everything skipped, nothing rewritten
    mtimes = {p: p.stat().st_mtime_ns for p in maps_dir.glob("*.nii.gz")}
    run_cli("-i", str(images))
    assert "0 done, 3 skipped" in capsys.readouterr().out
    assert {p: p.stat().st_mtime_ns for p in maps_dir.glob("*.nii.gz")} == mtimes

    # a case that lost a map is redone, the others are skipped
    (maps_dir / "case01_T2.nii.gz").unlink()
    run_cli("-i", str(images))
    assert "1 done, 2 skipped" in capsys.readouterr().out
    assert TissueMapFolder(maps_dir).complete_cases() == ["case00", "case01", "case02"]

    # other settings: a clear error naming the difference, nothing touched
    with pytest.raises(SystemExit) as e:
        run_cli("-i", str(images), "--field", "3T")
    assert "other settings" in str(e.value) and "field" in str(e.value) and "--overwrite" in str(e.value)
    assert read_manifest(maps_dir)["parameters"]["field"] == "1.5T"

    # --overwrite redoes every case with the new settings
    run_cli("-i", str(images), "--field", "3T", "--overwrite")
    assert "3 done, 0 skipped" in capsys.readouterr().out
    man = read_manifest(maps_dir)
    assert man["parameters"]["field"] == "3T" and set(man["cases"]) == {"case00", "case01", "case02"}
    assert all(p.stat().st_mtime_ns != mtimes[p] for p in maps_dir.glob("*.nii.gz") if p in mtimes)


def test_samples_written_as_4d_and_foreign_maps_refused(tmp_path):
    images = make_dataset(tmp_path, 2, labels=False)
    out = tmp_path / "maps"
    s = run_reverse(images, out, n_samples=2, batch_size=5, progress=False)
    assert s.done == ["case00", "case01"] and not s.failed
    maps, _ = read_case_maps(out, "case00", reference_image=images / "case00_0000.nii.gz")
    assert maps.shape == (3, 40, 34, 3, 2)
    assert not np.allclose(maps[1, ..., 0], maps[1, ..., 1])  # two different tissue explanations
    assert read_manifest(out)["cases"]["case00"]["labels"] is False

    # maps in a folder without manifest were not made by us: refuse to overwrite them
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    for p in out.glob("case00_*.nii.gz"):
        (foreign / p.name).write_bytes(p.read_bytes())
    with pytest.raises(CacheMismatchError, match="no manifest.json"):
        run_reverse(images, foreign, progress=False)


def test_fill_missing_maps_only_computes_missing_cases(tmp_path):
    images = make_dataset(tmp_path, 3)
    maps_dir = tmp_path / "tissueMapsTr"
    assert fill_missing_maps(images, maps_dir, ["case01"], progress=False) == ["case01"]
    assert TissueMapFolder(maps_dir).complete_cases() == ["case01"]
    before = (maps_dir / "case01_M0.nii.gz").stat().st_mtime_ns
    assert fill_missing_maps(images, maps_dir, ["case00", "case01", "case02"], progress=False) == ["case00", "case02"]
    assert (maps_dir / "case01_M0.nii.gz").stat().st_mtime_ns == before
    assert fill_missing_maps(images, maps_dir, ["case00", "case01", "case02"], progress=False) == []
    assert set(read_manifest(maps_dir)["cases"]) == {"case00", "case01", "case02"}


def test_shard_assignment_is_disjoint_and_complete(monkeypatch):
    cases = [f"c{i:03d}" for i in range(23)]
    shares = [shard_cases(cases, (i, 4)) for i in range(4)]
    assert sorted(sum(shares, [])) == cases
    assert all(not set(a) & set(b) for i, a in enumerate(shares) for b in shares[i + 1:])
    assert parse_shard("2/5") == (2, 5)
    for bad in ("5/5", "1-2", "-1/3", "1/0"):
        with pytest.raises(ValueError, match="shard"):
            parse_shard(bad)
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "4")
    assert resolve_shard(None) == (3, 4)  # torchrun's environment
    assert resolve_shard((1, 2)) == (1, 2)  # an explicit --shard wins


def test_concurrent_shards_fill_one_folder(tmp_path):
    images = make_dataset(tmp_path, 6)
    out = tmp_path / "maps"
    procs = [subprocess.Popen([PY, "-m", "nnunetv2_physaug.cli.reverse", "-i", str(images), "-o", str(out),
                               "--shard", f"{i}/2", "--batch-size", "2", "--no-progress"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=subprocess_env())
             for i in range(2)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    assert "3 done" in outs[0][0] and "shard 0/2" in outs[0][0]
    assert "3 done" in outs[1][0] and "shard 1/2" in outs[1][0]
    assert TissueMapFolder(out).complete_cases() == [f"case{i:02d}" for i in range(6)]
    man = read_manifest(out)
    assert set(man["cases"]) == {f"case{i:02d}" for i in range(6)}  # no shard's update was lost
    assert not list(out.rglob(".tmp-*"))


def test_killed_run_resumes_without_half_files(tmp_path):
    images = make_dataset(tmp_path, 5)
    out = tmp_path / "maps"
    proc = subprocess.Popen([PY, "-c", SLOW_WRITER, "-i", str(images), "-o", str(out), "--batch-size", "1",
                             "--no-progress"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=subprocess_env())
    deadline = time.time() + 90
    try:
        # wait until one case is finished and another one is half written (a temp file on disk)
        while time.time() < deadline:
            if len(TissueMapFolder(out).complete_cases()) >= 1 and list(out.glob(".tmp-*.nii.gz")):
                break
            assert proc.poll() is None, proc.stderr.read()
            time.sleep(0.02)
        else:
            pytest.fail("the run did not reach a mid-case state in time")
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
    finished = TissueMapFolder(out).complete_cases()
    assert 1 <= len(finished) < 5
    s = run_reverse(images, out, progress=False)
    assert sorted(s.skipped) == finished  # finished cases are not redone
    assert sorted(s.done + s.skipped) == [f"case{i:02d}" for i in range(5)] and not s.failed
    assert TissueMapFolder(out).complete_cases() == [f"case{i:02d}" for i in range(5)]
    assert not list(out.rglob(".tmp-*"))  # no temp files remain
    assert set(read_manifest(out)["cases"]) == {f"case{i:02d}" for i in range(5)}
    for i in range(5):
        read_case_maps(out, f"case{i:02d}", reference_image=images / f"case{i:02d}_0000.nii.gz")
    # killed with --batch-size 1, resumed with the default batch: bitwise the maps of one uninterrupted run
    run_reverse(images, tmp_path / "uninterrupted", progress=False)
    for i in range(5):
        c = f"case{i:02d}"
        assert np.array_equal(read_case_maps(out, c)[0], read_case_maps(tmp_path / "uninterrupted", c)[0]), c


# ------------------------------------------------------------------------------------------ bad input
@pytest.mark.parametrize("kind,expected", [
    ("constant", "empty or constant"),
    ("nan", "NaN"),
    ("unreadable", "cannot read"),
    ("labels_shape", "label file"),
    ("cine4d", "4D"),
])
def test_bad_case_is_reported_by_name_and_others_finish(tmp_path, capsys, kind, expected):
    images = make_dataset(tmp_path, 2)
    bad = images / "case01_0000.nii.gz"
    if kind == "constant":
        nib.save(nib.Nifti1Image(np.full((40, 34, 3), 7.0, np.float32), AFFINE), bad)
    elif kind == "nan":
        vol = np.asarray(nib.load(bad).dataobj).copy()
        vol[3, 4, 1] = np.nan
        nib.save(nib.Nifti1Image(vol, AFFINE), bad)
    elif kind == "unreadable":
        bad.write_bytes(b"this is not a nifti file")
    elif kind == "labels_shape":
        bad = tmp_path / "labelsTr" / "case01.nii.gz"
        nib.save(nib.Nifti1Image(np.zeros((40, 30, 3), np.int16), AFFINE), bad)
    elif kind == "cine4d":
        nib.save(nib.Nifti1Image(np.random.default_rng(0).random((40, 34, 3, 5), dtype=np.float32), AFFINE), bad)
    with pytest.raises(SystemExit) as e:
        run_cli("-i", str(images))
    assert e.value.code == 1
    out = capsys.readouterr().out
    assert "1 done" in out and "1 failed" in out
    line = next(l for l in out.splitlines() if "FAILED case01" in l)
    assert str(bad) in line and expected in line
    maps_dir = tmp_path / "tissueMapsTr"
    assert TissueMapFolder(maps_dir).complete_cases() == ["case00"] and not list(maps_dir.glob("case01_*"))


def test_bad_folder_level_input_is_a_clear_error(tmp_path, capsys):
    images = make_dataset(tmp_path, 1)
    with pytest.raises(SystemExit, match="does not exist"):
        run_cli("-i", str(tmp_path / "nope"))
    (images / "case07.nii.gz").write_bytes(b"")  # no _0000 channel suffix
    with pytest.raises(SystemExit, match=r"case07\.nii\.gz does not follow the nnU-Net naming"):
        run_cli("-i", str(images))
    (images / "case07.nii.gz").unlink()
    (images / "case09_0001.nii.gz").write_bytes(b"")  # channel 1 without channel 0
    with pytest.raises(SystemExit, match="case09.*no channel 0000"):
        run_cli("-i", str(images))
    (images / "case09_0001.nii.gz").unlink()
    empty = tmp_path / "empty_prior"
    empty.mkdir()
    with pytest.raises(SystemExit, match=f"prior folder {empty}.*unet"):
        run_cli("-i", str(images), "--prior", str(empty))
    with pytest.raises(SystemExit) as e:  # a usage error: argparse's exit 2, the message on stderr
        run_cli("-i", str(images), "--preset", "paper")
    assert e.value.code == 2 and "need --prior" in capsys.readouterr().err
    assert not (tmp_path / "tissueMapsTr").exists()  # nothing was started


def test_labels_that_match_no_case_duplicate_inputs_and_o_equal_to_labels_are_refused(tmp_path, capsys):
    images = make_dataset(tmp_path, 3)
    other = tmp_path / "other_labels"
    other.mkdir()
    for i in range(3):  # another dataset's names: no case has its label here
        nib.save(nib.Nifti1Image(np.zeros((40, 34, 3), np.int16), AFFINE), other / f"patient{i:03d}.nii.gz")
    with pytest.raises(SystemExit, match=r"--labels .*other_labels has no label file for any of the 3 case\(s\) "
                                         r"\(looked for case00.nii.gz, ...; it holds patient000.nii.gz"):
        run_cli("-i", str(images), "--labels", str(other))
    assert not (tmp_path / "tissueMapsTr").exists()
    with pytest.raises(SystemExit, match="is the images or labels folder"):
        run_cli("-i", str(images), "-o", str(tmp_path / "labelsTr"))  # the labels folder found beside the images
    # some cases without labels: estimated, and said so
    (tmp_path / "labelsTr" / "case01.nii.gz").unlink()
    run_cli("-i", str(images))
    out = capsys.readouterr().out
    assert "WARNING: 1 case(s) had no label file and were estimated without labels" in out and "case01" in out
    assert read_manifest(tmp_path / "tissueMapsTr")["cases"]["case01"]["labels"] is False
    # two files for one case's image (or label): which one is meant is not guessed
    vol, _ = ring_case(seed=5)
    nib.save(nib.Nifti1Image(vol, AFFINE), images / "case00_0000.nii")
    with pytest.raises(SystemExit, match=r"case 'case00' has two files for channel 0000"):
        run_cli("-i", str(images), "--overwrite")
    (images / "case00_0000.nii").unlink()
    nib.save(nib.Nifti1Image(np.zeros((40, 34, 3), np.int16), AFFINE), tmp_path / "labelsTr" / "case02.nii")
    with pytest.raises(SystemExit, match=r"case 'case02' has two label files"):
        run_cli("-i", str(images), "--overwrite")


def test_cli_with_a_diffusion_prior_records_its_hash(tmp_path, capsys):
    from nnunetv2_physaug.reverse.prior import PhysicsPrior, tiny_prior_config

    images = make_dataset(tmp_path, 2, shape=(36, 30, 2))
    priors = []
    for seed in (0, 1):  # two untrained tiny priors with different weights
        torch.manual_seed(seed)
        folder = tmp_path / f"prior{seed}"
        PhysicsPrior.create(tiny_prior_config(16)).save_pretrained(folder)
        priors.append(folder)
    out = tmp_path / "maps"
    run_cli("-i", str(images), "-o", str(out), "--prior", str(priors[0]), "--preset", "fast", "--samples", "2", *UNTRAINED)
    text = capsys.readouterr().out
    assert "2 done" in text and "diffusion-fast" in text
    man = read_manifest(out)
    assert man["estimator"] == "diffusion-fast"
    assert man["prior_hash"] == PhysicsPrior.from_pretrained(priors[0]).hash
    maps, _ = read_case_maps(out, "case00", reference_image=images / "case00_0000.nii.gz")
    assert maps.shape == (3, 36, 30, 2, 2)
    # another prior into the same folder is refused: its maps would be mixed with these
    with pytest.raises(SystemExit, match="prior_hash"):
        run_cli("-i", str(images), "-o", str(out), "--prior", str(priors[1]), "--preset", "fast", "--samples", "2")


def test_an_untrained_prior_fails_the_physiological_check_unless_accepted(tmp_path, capsys):
    """A prior with random weights fits the image only through M0 (NRMSE bound relaxed here); the T1/T2 of the
    labelled blood and myocardium then lie far from a heart's: the case fails and names the values, and
    --accept-implausible writes it. The weight-free estimator's maps of the same images pass (the other tests)."""
    from nnunetv2_physaug.reverse.prior import PhysicsPrior, tiny_prior_config

    images = make_dataset(tmp_path, 1, shape=(36, 30, 2))
    torch.manual_seed(0)
    PhysicsPrior.create(tiny_prior_config(16)).save_pretrained(tmp_path / "prior")
    args = ("-i", str(images), "-o", str(tmp_path / "maps"), "--prior", str(tmp_path / "prior"), "--max-nrmse", "1000")
    with pytest.raises(SystemExit) as e:
        run_cli(*args)
    assert e.value.code == 1
    out = capsys.readouterr().out
    assert "FAILED case00" in out and "outside the physiological range" in out and "--accept-implausible" in out
    assert not list((tmp_path / "maps").glob("*_T1.nii.gz"))
    run_cli(*args, "--accept-implausible")
    qc = read_manifest(tmp_path / "maps")["cases"]["case00"]
    assert set(qc["tissue_medians_ms"]) == {"blood", "myocardium"}


def test_plausible_medians_of_labelled_tissue():
    from nnunetv2_physaug.reverse.qc import implausible_medians, labelled_tissue_medians

    labels = np.zeros((4, 5, 2), np.int64)
    labels[:2] = 3
    labels[2:, :2] = 2
    maps = np.zeros((2, 2, 3, 4, 5))  # (Z, K, 3, X, Y)
    maps[:, :, 1], maps[:, :, 2] = 860.0, 30.0
    maps[:, 0, 1, :2], maps[:, 1, 1, :2], maps[:, :, 2, :2] = 1500.0, 1700.0, 260.0  # blood, two samples
    maps[:, :, 1, 2:, :2], maps[:, :, 2, 2:, :2] = 1000.0, 50.0
    med = labelled_tissue_medians(maps, labels, {"blood": (1, 3), "myocardium": (2,)})
    assert med == {"blood": {"T1": 1600.0, "T2": 260.0}, "myocardium": {"T1": 1000.0, "T2": 50.0}}
    assert implausible_medians(med) == []
    assert implausible_medians({"myocardium": {"T1": 2251.0, "T2": 177.0}}) == \
        ["myocardium T1 2251 ms (600-1600)", "myocardium T2 177 ms (25-100)"]
    assert implausible_medians({"blood": {"T1": float("nan"), "T2": 250.0}}) == ["blood T1 nan ms (800-2600)"]


def test_cli_sampler_options_reach_the_sampler_and_the_manifest(tmp_path, capsys):
    from nnunetv2_physaug.reverse.prior import PhysicsPrior, tiny_prior_config

    images = make_dataset(tmp_path, 1, shape=(20, 18, 1))
    torch.manual_seed(0)
    PhysicsPrior.create(tiny_prior_config(16)).save_pretrained(tmp_path / "prior")
    out = tmp_path / "maps"
    run_cli("-i", str(images), "-o", str(out), "--prior", str(tmp_path / "prior"), "--no-progress", *UNTRAINED,
            "--sampler-option", "steps=4", "--sampler-option", "guidance=0.5",
            "--sampler-option", "channel_weights=0.5,1,2", "--sampler-option", "gradient=jvp")
    params = read_manifest(out)["parameters"]
    assert params["steps"] == 4 and params["guidance"] == 0.5 and list(params["channel_weights"]) == [0.5, 1.0, 2.0]
    assert params["gradient"] == "jvp"
    # a rerun with other options is a different estimator: refused, not mixed
    with pytest.raises(SystemExit, match="parameter steps: 4 vs 5"):
        run_cli("-i", str(images), "-o", str(out), "--prior", str(tmp_path / "prior"), "--no-progress",
                "--sampler-option", "steps=5")
    for bad, msg in ((["--sampler-option", "steps"], "KEY=VALUE"), (["--sampler-option", "steps=x"], "expected int"),
                     (["--sampler-option", "gradient=backprop"], "choose one of autograd, jvp"),
                     (["--sampler-option", "xi=3"], "unknown fast sampler parameter"),
                     (["--sampler-option", "steps=2.5"], "expected an integer >= 1"),
                     (["--sampler-option", "channel_weights=1,2"], "of 3 numbers")):
        with pytest.raises(SystemExit, match=msg):
            run_cli("-i", str(images), "-o", str(tmp_path / "other"), "--prior", str(tmp_path / "prior"), *bad)
    with pytest.raises(SystemExit) as e:  # a usage error: argparse's exit 2, the message on stderr
        run_cli("-i", str(images), "--sampler-option", "steps=4")
    assert e.value.code == 2 and "need --prior" in capsys.readouterr().err


# ----------------------------------------------------------------------------- reproducibility

def _maps_of(folder: Path, cases) -> dict:
    return {c: read_case_maps(folder, c)[0] for c in cases}


def test_label_maps_do_not_depend_on_batch_size_shards_or_resume(tmp_path):
    """Random streams belong to (seed, case, slice): batch 1, batch 16, two shards and a resumed run
    give bitwise-identical maps (before: one stream per batch changed T1 in ~98 % of pixels)."""
    images = make_dataset(tmp_path, 4, shape=(30, 26, 3))
    cases = [f"case{i:02d}" for i in range(4)]
    run_reverse(images, tmp_path / "b16", batch_size=16, progress=False)
    ref = _maps_of(tmp_path / "b16", cases)
    run_reverse(images, tmp_path / "b1", batch_size=1, progress=False)
    for i in (0, 1):
        run_reverse(images, tmp_path / "shards", batch_size=5, shard=(i, 2), progress=False)
    run_reverse(images, tmp_path / "resumed", batch_size=4, cases=["case02"], progress=False)
    run_reverse(images, tmp_path / "resumed", batch_size=4, progress=False)
    for name in ("b1", "shards", "resumed"):
        got = _maps_of(tmp_path / name, cases)
        for c in cases:
            assert np.array_equal(got[c], ref[c]), (name, c)
    # and a different seed does change them
    run_reverse(images, tmp_path / "seed1", batch_size=16, seed=1, progress=False)
    assert not np.array_equal(_maps_of(tmp_path / "seed1", ["case00"])["case00"], ref["case00"])


@pytest.mark.parametrize("preset,options", [("fast", {"steps": 3}), ("paper", {"steps": 2, "candidates": 2})])
def test_prior_maps_do_not_depend_on_batch_size(tmp_path, preset, options):
    """Per-slice streams: the same slice gets the same maps in a batch of 1, 4 or 16 slices. One
    network evaluation per row (micro_batch 1) makes every evaluation identical; with larger micro
    batches the convolutions round differently, and this untrained prior's sampler amplifies 1e-6
    input changes to ~1e-2 in three steps, so that comparison holds only to float tolerance."""
    from nnunetv2_physaug.reverse import make_estimator
    from nnunetv2_physaug.reverse.prior import PhysicsPrior, tiny_prior_config

    images = make_dataset(tmp_path, 2, shape=(20, 18, 3))
    torch.manual_seed(0)
    PhysicsPrior.create(tiny_prior_config(16)).save_pretrained(tmp_path / "prior")
    cases = ["case00", "case01"]
    results = {}
    for name, batch in (("a", 16), ("b", 1), ("c", 4)):
        est = make_estimator("diffusion", prior=tmp_path / "prior", preset=preset,
                             sampler_options=dict(options, micro_batch=1))
        run_reverse(images, tmp_path / name, estimator=est, batch_size=batch, n_samples=2, progress=False,
                    max_nrmse_pct=1000.0, accept_implausible=True)  # an untrained prior does not fit the images
        results[name] = _maps_of(tmp_path / name, cases)
    for name in ("b", "c"):
        for c in cases:
            np.testing.assert_allclose(results[name][c], results["a"][c], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("preset,options", [("fast", {"steps": 3}), ("fast", {"steps": 3, "gradient": "jvp"}),
                                            ("paper", {"steps": 2, "candidates": 2})])
def test_prior_maps_are_bitwise_the_same_whatever_the_batch_or_shard(tmp_path, preset, options):
    """At the default micro-batch, a slice's maps do not depend on the batch size or the shard that carried it:
    the network evaluates every micro-batch at its full size (the last one padded), so each row is computed in
    a batch of one fixed size (with batches of other sizes the convolutions round differently, and the guided
    chain of this untrained prior amplifies that 1e-6 to whole maps)."""
    from nnunetv2_physaug.reverse import make_estimator
    from nnunetv2_physaug.reverse.prior import PhysicsPrior, tiny_prior_config

    images = make_dataset(tmp_path, 3, shape=(20, 18, 7))
    torch.manual_seed(0)
    PhysicsPrior.create(tiny_prior_config(16)).save_pretrained(tmp_path / "prior")
    cases = ["case00", "case01", "case02"]
    results = {}
    for name, batch, shard in (("a", 16, None), ("b", 5, None), ("c", 3, (1, 2))):
        est = make_estimator("diffusion", prior=tmp_path / "prior", preset=preset, sampler_options=dict(options))
        run_reverse(images, tmp_path / name, estimator=est, batch_size=batch, n_samples=2, progress=False,
                    shard=shard, max_nrmse_pct=1000.0, accept_implausible=True)
        results[name] = _maps_of(tmp_path / name, cases if shard is None else ["case01"])
    for c in cases:
        np.testing.assert_array_equal(results["b"][c], results["a"][c])
    np.testing.assert_array_equal(results["c"]["case01"], results["a"]["case01"])


def test_a_prior_is_identified_by_all_of_it_not_only_its_weights(tmp_path, capsys):
    """Changing physaug_prior.json or the scheduler's prediction type changes the prior's identity, so
    a maps folder made with the old one refuses it (before: only the weights were hashed, and a prior
    with t1_scale_ms -3200 joined an existing cache); non-physical mapping values are refused."""
    from nnunetv2_physaug.reverse.prior import PhysicsPrior, PriorError, tiny_prior_config

    images = make_dataset(tmp_path, 1, shape=(20, 18, 1))
    torch.manual_seed(0)
    folder = tmp_path / "prior"
    PhysicsPrior.create(tiny_prior_config(16)).save_pretrained(folder)
    base = PhysicsPrior.from_pretrained(folder).hash
    out = tmp_path / "maps"
    run_cli("-i", str(images), "-o", str(out), "--prior", str(folder), "--sampler-option", "steps=2", *UNTRAINED)
    cfg_path = folder / "physaug_prior.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["t1_scale_ms"] = -3200.0
    cfg_path.write_text(json.dumps(cfg))
    with pytest.raises(PriorError, match="t1_scale_ms"):
        PhysicsPrior.from_pretrained(folder)
    cfg["t1_scale_ms"], cfg["m0_divisor"] = 3000.0, 0.0
    cfg_path.write_text(json.dumps(cfg))
    with pytest.raises(PriorError, match="m0_divisor"):
        PhysicsPrior.from_pretrained(folder)
    cfg["m0_divisor"] = 0.6
    cfg_path.write_text(json.dumps(cfg))
    changed = PhysicsPrior.from_pretrained(folder).hash
    assert changed != base
    with pytest.raises(SystemExit, match="prior_hash"):
        run_cli("-i", str(images), "-o", str(out), "--prior", str(folder), "--sampler-option", "steps=2")
    sched = folder / "scheduler" / "scheduler_config.json"
    sc = json.loads(sched.read_text())
    sc["prediction_type"] = "epsilon" if sc.get("prediction_type") != "epsilon" else "v_prediction"
    sched.write_text(json.dumps(sc))
    assert PhysicsPrior.from_pretrained(folder).hash not in (base, changed)


def test_maps_of_a_replaced_image_or_label_are_stale_and_redone(tmp_path, capsys):
    """A case's record holds the size and sha256 of the image and label it was made from: replacing either
    (same name, other content) makes its maps stale, so a rerun redoes that case only, and the folder's
    ``missing`` names it for the trainer."""
    from nnunetv2_physaug.maps.folder import input_digest

    images = make_dataset(tmp_path, 3)
    labels = tmp_path / "labelsTr"
    run_cli("-i", str(images))
    maps_dir = tmp_path / "tissueMapsTr"
    before = _maps_of(maps_dir, ["case00", "case01", "case02"])
    capsys.readouterr()
    vol, lab = ring_case(seed=7)  # another patient under case01's name
    nib.save(nib.Nifti1Image(vol, AFFINE), images / "case01_0000.nii.gz")
    folder = TissueMapFolder(maps_dir)
    now = {c: input_digest(images / f"{c}_0000.nii.gz", labels / f"{c}.nii.gz") for c in ("case00", "case01", "case02")}
    assert folder.missing(["case00", "case01", "case02"], inputs=now) == ["case01"]
    run_cli("-i", str(images))
    assert "1 done, 2 skipped" in capsys.readouterr().out
    after = _maps_of(maps_dir, ["case00", "case01", "case02"])
    assert not np.allclose(after["case01"], before["case01"])
    np.testing.assert_array_equal(after["case00"], before["case00"])
    # the label alone replaced: redone too
    lab2 = lab.copy()
    lab2[lab2 == 2] = 3
    nib.save(nib.Nifti1Image(lab2, AFFINE), labels / "case02.nii.gz")
    run_cli("-i", str(images))
    assert "1 done, 2 skipped" in capsys.readouterr().out
    # maps made without labels stay valid whatever label file exists (and a record without inputs does not)
    run_cli("-i", str(images), "-o", str(tmp_path / "nolab"), "--no-labels")
    capsys.readouterr()
    assert TissueMapFolder(tmp_path / "nolab").missing(["case00"], inputs={"case00": now["case00"]}) == []
    rec = json.loads((maps_dir / "qc" / "case00.json").read_text())
    rec.pop("inputs")
    (maps_dir / "qc" / "case00.json").write_text(json.dumps(rec))
    assert folder.missing(["case00"], inputs={"case00": now["case00"]}) == ["case00"]


def test_a_linked_images_folder_uses_its_own_datasets_labels_and_maps_and_a_broken_link_is_named(tmp_path):
    """Dataset B whose imagesTr links to A's: the labels and maps beside B's folder are B's (not A's, where the
    link resolves); a broken link among the images is an error naming it, not a case that silently drops out."""
    from nnunetv2_physaug.reverse.io import ReverseInputError, default_labels_dir, default_maps_dir, list_cases

    a_images = make_dataset(tmp_path / "A", 2)
    (tmp_path / "B").mkdir()
    (tmp_path / "B" / "imagesTr").symlink_to(a_images, target_is_directory=True)
    b_images = tmp_path / "B" / "imagesTr"
    assert default_labels_dir(b_images) is None  # B has no labels: A's are not taken
    assert default_maps_dir(b_images) == tmp_path / "B" / "tissueMapsTr"
    run_reverse(b_images, progress=False)
    assert (tmp_path / "B" / "tissueMapsTr").is_dir() and not (tmp_path / "A" / "tissueMapsTr").exists()
    (tmp_path / "B" / "labelsTr").mkdir()
    assert default_labels_dir(b_images) == tmp_path / "B" / "labelsTr"
    (a_images / "case09_0000.nii.gz").symlink_to(tmp_path / "gone.nii.gz")
    with pytest.raises(ReverseInputError, match="case09_0000.nii.gz is a broken link"):
        list_cases(a_images)
