"""Garbage in gives a clear error and no output (issue: they used to give exit 0 and meaningless maps,
or a raw traceback)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from support.reverse_inputs import AFFINE, make_dataset


def _run(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, cwd=cwd, timeout=300)


def _clear(r: subprocess.CompletedProcess, *fragments: str) -> None:
    out = r.stdout + r.stderr
    assert r.returncode != 0, out[-2000:]
    assert "Traceback" not in out, out[-3000:]
    for f in fragments:
        assert f in out, (f, out[-2000:])


def test_reverse_refuses_garbage_and_writes_nothing(tmp_path):
    images = make_dataset(tmp_path / "ds", 2, shape=(20, 18, 2))
    rev = "nnunetv2_physaug.cli.reverse"
    _clear(_run(rev, "-i", str(images / "case00_0000.nii.gz"), cwd=tmp_path), "is a file", "imagesTr")
    _clear(_run(rev, "-i", str(images), "-o", str(images), cwd=tmp_path), "images or labels folder")
    assert sorted(p.name for p in images.iterdir()) == ["case00_0000.nii.gz", "case01_0000.nii.gz"]
    _clear(_run(rev, "-i", str(images), "--device", "potato", cwd=tmp_path), "--device", "potato")
    # a z-scored image (what nnU-Net's preprocessing makes) is not a magnitude image
    vol = np.asarray(nib.load(str(images / "case01_0000.nii.gz")).dataobj)
    z = (vol - vol.mean()) / vol.std()
    nib.save(nib.Nifti1Image(z.astype(np.float32), AFFINE), str(images / "case01_0000.nii.gz"))
    r = _run(rev, "-i", str(images), "-o", str(tmp_path / "maps"), "--no-progress", cwd=tmp_path)
    _clear(r, "case01_0000.nii.gz", "z-scored")
    assert not (tmp_path / "maps" / "case01_M0.nii.gz").exists()


@pytest.mark.parametrize("args,fragment", [
    (["--steps", "0"], "--steps"), (["--size", "0"], "--size"), (["--batch-size", "-3"], "--batch-size"),
    (["--lr", "nan"], "--lr"), (["--device", "potato"], "--device")])
def test_train_prior_refuses_bad_numbers(tmp_path, args, fragment):
    r = _run("nnunetv2_physaug.cli.train_prior", "--maps", str(tmp_path), "-o", str(tmp_path / "p"), *args,
             cwd=tmp_path)
    _clear(r, fragment)
    assert not (tmp_path / "p").exists()


@pytest.mark.parametrize("width", ["nan", "0", "-1", "inf", "x"])
def test_narrow_plans_refuses_bad_widths(tmp_path, width):
    _clear(_run("nnunetv2_physaug.cli.narrow_plans", "-d", "999", "--width", width, cwd=tmp_path), "--width")


def test_bad_manifests_maps_folder_and_protocol_files(tmp_path):
    images = make_dataset(tmp_path / "ds", 1, shape=(20, 18, 2))
    rev = "nnunetv2_physaug.cli.reverse"
    for name, content in (("list", b"[1, 2]"), ("binary", bytes(range(200, 256)) * 4)):
        maps = tmp_path / f"maps_{name}"
        maps.mkdir()
        (maps / "manifest.json").write_bytes(content)
        _clear(_run(rev, "-i", str(images), "-o", str(maps), cwd=tmp_path), str(maps / "manifest.json"))
        assert sorted(p.name for p in maps.iterdir() if not p.name.startswith(".")) == ["manifest.json"]
    (tmp_path / "afile").write_text("x")
    _clear(_run(rev, "-i", str(images), "-o", str(tmp_path / "afile"), cwd=tmp_path), "is a file")
    proto = tmp_path / "proto.yaml"
    proto.write_bytes(bytes(range(128, 256)) * 3)
    r = _run("nnunetv2_physaug.cli.preview", "--image", str(images / "case00_0000.nii.gz"), "--maps",
             str(tmp_path / "maps_list"), "--preset", str(proto), "-o", str(tmp_path / "x.png"), cwd=tmp_path)
    _clear(r, "proto.yaml", "not a text file")
    assert not (tmp_path / "x.png").exists()


def test_evaluate_names_a_label_off_its_image_grid(tmp_path):
    from nnunetv2_physaug.evaluate import Domain, EvaluationError, _check_labels

    for d in ("img", "lab"):
        (tmp_path / d).mkdir()
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 2), np.float32), np.eye(4)), str(tmp_path / "img" / "c1_0000.nii.gz"))
    nib.save(nib.Nifti1Image(np.zeros((8, 9, 2), np.uint8), np.eye(4)), str(tmp_path / "lab" / "c1.nii.gz"))
    with pytest.raises(EvaluationError, match=r"c1.nii.gz has shape \(8, 9, 2\)"):
        _check_labels(Domain("x", tmp_path / "img", tmp_path / "lab"),
                      {"labels": {"background": 0, "RV": 1}, "file_ending": ".nii.gz"})


def test_maps_that_do_not_reproduce_the_image_fail_the_case(tmp_path):
    """An estimator whose maps ignore the image (here: noise) re-renders it badly; the case is a
    failure with its NRMSE named and gets no maps, instead of passing with a bad summary figure."""
    import torch
    from nnunetv2_physaug.reverse import run_reverse
    from nnunetv2_physaug.reverse.base import SliceEstimate, SliceEstimator

    class Ignorant(SliceEstimator):
        name = "ignorant"

        def estimate(self, images, labels, n_samples, generators):
            b, h, w = images.shape
            g = torch.Generator().manual_seed(0)
            maps = torch.stack([torch.rand((b, n_samples, h, w), generator=g),
                                torch.full((b, n_samples, h, w), 1000.0), torch.full((b, n_samples, h, w), 50.0)], 2)
            return SliceEstimate(maps=maps, qc=[{} for _ in range(b)])

    images = make_dataset(tmp_path / "ds", 2, shape=(20, 18, 2))
    s = run_reverse(images, tmp_path / "maps", estimator=Ignorant(), progress=False)
    assert sorted(s.failed) == ["case00", "case01"] and not s.done
    assert "NRMSE" in s.failed["case00"] and "max_nrmse" in s.failed["case00"]
    assert not list((tmp_path / "maps").glob("*_M0.nii.gz"))
    # the same run with a looser bound writes them (the bound, not the estimator, decided)
    s = run_reverse(images, tmp_path / "maps2", estimator=Ignorant(), progress=False, max_nrmse_pct=1000.0,
                    accept_implausible=True)
    assert sorted(s.done) == ["case00", "case01"]


BILLION_LAUGHS = "\n".join(["a: &a [x, x, x, x, x, x, x, x, x]"] + [
    f"{chr(98 + i)}: &{chr(98 + i)} [" + ", ".join([f"*{chr(97 + i)}"] * 9) + "]" for i in range(8)]) + "\n"


def test_configuration_files_refuse_alias_bombs_deep_nesting_and_huge_files(tmp_path):
    """A 400-byte YAML of nested aliases expands to gigabytes, deep nesting crashes Python's parsers: protocol,
    preset and phantom files refuse both, naming the file (and read the shipped files as before)."""
    import time
    from nnunetv2_physaug.contrast import load_protocol
    from nnunetv2_physaug.contrast.protocol import ProtocolError
    from nnunetv2_physaug.phantom import PhantomConfigError
    from nnunetv2_physaug.phantom.domains import load_domains

    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(BILLION_LAUGHS)
    assert len(BILLION_LAUGHS) < 600
    t0 = time.time()
    with pytest.raises(ProtocolError, match="bomb.yaml.*alias \\*a: aliases are not allowed"):
        load_protocol(str(bomb))
    with pytest.raises(PhantomConfigError, match="bomb.yaml.*aliases are not allowed"):
        load_domains(bomb)
    deep_json = tmp_path / "deep.json"
    deep_json.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(ProtocolError, match="deep.json: nested deeper than JSON can be read"):
        load_protocol(str(deep_json))
    deep_yaml = tmp_path / "deep.yaml"
    deep_yaml.write_text("a: " + "[" * 40 + "1" + "]" * 40 + "\n")
    with pytest.raises(ProtocolError, match="deep.yaml: nested 41 levels deep"):
        load_protocol(str(deep_yaml))
    huge = tmp_path / "huge.yaml"
    huge.write_text("# " + "x" * 1_100_000 + "\n")
    with pytest.raises(ProtocolError, match="huge.yaml: .* at most 1,000,000 bytes"):
        load_protocol(str(huge))
    assert time.time() - t0 < 30
    assert load_protocol("wide").name == "wide" and load_domains(None)


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="needs a machine without a CUDA GPU")
@pytest.mark.parametrize("module,args", [
    ("nnunetv2_physaug.cli.reverse", ["-i", "x"]), ("nnunetv2_physaug.cli.train_prior", ["--maps", "x", "-o", "p"]),
    ("nnunetv2_physaug.cli.evaluate", ["-m", "x", "-t", "a=b:c", "-o", "o"])])
def test_device_cuda_without_a_gpu_is_one_usage_error(tmp_path, module, args):
    r = _run(module, *args, "--device", "cuda", cwd=tmp_path)
    _clear(r, "--device", "torch sees no CUDA GPU")
    assert r.returncode == 2
    assert "error: argument --device: 'cuda': torch sees no CUDA GPU" in r.stderr.splitlines()[-1]


@pytest.mark.parametrize("module", ["nnunetv2_physaug.cli.phantom", "nnunetv2_physaug.cli.preview",
                                    "nnunetv2_physaug.cli.reverse", "nnunetv2_physaug.cli.train_prior",
                                    "nnunetv2_physaug.demo"])
def test_a_negative_seed_is_a_usage_error_naming_the_option(tmp_path, module):
    r = _run(module, "--seed", "-1", cwd=tmp_path)
    assert r.returncode == 2 and "argument --seed: a seed is a whole number from 0" in r.stderr.splitlines()[-1]


def test_an_rgb_nifti_is_named_not_a_traceback(tmp_path):
    (tmp_path / "imagesTr").mkdir()
    rgb = np.zeros((8, 8, 2), dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")])
    nib.save(nib.Nifti1Image(rgb, np.eye(4)), str(tmp_path / "imagesTr" / "c_0000.nii.gz"))
    r = _run("nnunetv2_physaug.cli.reverse", "-i", str(tmp_path / "imagesTr"), "-q", cwd=tmp_path)
    _clear(r, "c_0000.nii.gz holds RGB/structured voxels", "single-channel")
    assert r.returncode == 1
