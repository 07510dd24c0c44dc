"""Folders replaced as a whole: a kill at the worst moment loses nothing, and the next run cleans up.

``physaug-phantom --overwrite`` used to delete each old dataset and then move the new one in: killed
between the two, a dataset was gone; killed earlier, ``.tmp-Dataset*`` folders stayed behind forever.
"""
from __future__ import annotations

import errno
import hashlib
import subprocess
import sys
from pathlib import Path

import pytest

from nnunetv2_physaug.fileio import recover_staged, staged_folder

PHANTOM_ARGS = ["--n-train", "1", "--n-test", "1", "--size", "32", "--quiet"]

# SIGKILL the phantom writer right after it moved the old Dataset902 aside, before the new one is in place
_KILL_MID_SWAP = """
import os, signal, sys
from pathlib import Path
import nnunetv2_physaug.fileio as fileio
_replace = os.replace
def replace(src, dst):
    if Path(src).name.startswith(".Dataset902_") and ".partial-" in Path(src).name:
        os.kill(os.getpid(), signal.SIGKILL)
    return _replace(src, dst)
fileio.os.replace = replace
from nnunetv2_physaug.cli.phantom import main
main(sys.argv[1:])
"""


def _tree_digest(folder: Path) -> dict:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _phantom(out: Path, *extra: str, code: str = None) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-c", code, "-o", str(out)] if code else \
        [sys.executable, "-m", "nnunetv2_physaug.cli.phantom", "-o", str(out)]
    return subprocess.run(cmd + PHANTOM_ARGS + list(extra), capture_output=True, text=True, timeout=300)


def test_phantom_overwrite_killed_mid_swap_loses_no_dataset(tmp_path):
    out = tmp_path / "raw"
    assert _phantom(out).returncode == 0
    lge = next(out.glob("Dataset902_*"))
    before = _tree_digest(lge)
    r = _phantom(out, "--overwrite", "--seed", "1", code=_KILL_MID_SWAP)
    assert r.returncode == -9, r.stderr[-2000:]
    assert not lge.exists()  # the kill landed between the two renames: the old dataset is only in .old-*
    assert list(out.glob(".Dataset902_*.old-*"))
    # the next run puts the old dataset back before it decides anything; without --overwrite it refuses
    r = _phantom(out)
    assert r.returncode == 1 and "already exists" in r.stderr, r.stderr[-2000:]
    assert _tree_digest(lge) == before
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]  # no staging or old folders left
    r = _phantom(out, "--overwrite", "--seed", "1")
    assert r.returncode == 0, r.stderr[-2000:]
    assert _tree_digest(lge) != before  # replaced by the seed-1 phantom
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]


def test_staged_folder_replaces_whole_or_not_at_all(tmp_path):
    target = tmp_path / "Dataset001_X"
    target.mkdir()
    (target / "old.txt").write_text("old")
    with pytest.raises(RuntimeError):
        with staged_folder(target) as staging:
            (staging / "new.txt").write_text("half")
            raise RuntimeError("writer failed")
    assert sorted(p.name for p in target.iterdir()) == ["old.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["Dataset001_X"]
    with staged_folder(target) as staging:
        (staging / "new.txt").write_text("new")
    assert sorted(p.name for p in target.iterdir()) == ["new.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["Dataset001_X"]
    # left by a kill: a staging folder, and the previous version moved aside with the target gone
    (tmp_path / ".Dataset001_X.partial-abc").mkdir()
    (tmp_path / ".Dataset001_X.old-def" / "old").mkdir(parents=True)
    (tmp_path / ".Dataset001_X.old-def" / "old" / "v.txt").write_text("previous")
    target.rename(tmp_path / "elsewhere")
    recover_staged(target)
    assert (target / "v.txt").read_text() == "previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["Dataset001_X", "elsewhere"]


def test_full_disk_is_a_message_naming_the_file(tmp_path, monkeypatch, capsys):
    """ENOSPC while writing maps: a one-line error with the file and what to do, no case left committed."""
    import nibabel

    from support.reverse_inputs import make_dataset
    from nnunetv2_physaug.cli.reverse import main
    from nnunetv2_physaug.maps import TissueMapFolder

    images = make_dataset(tmp_path, 2, shape=(20, 18, 2))
    calls = []

    def full_disk(img, path):
        calls.append(path)
        if len(calls) == 2:  # the second map file of the first case
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real_save(img, path)

    real_save = nibabel.save
    monkeypatch.setattr(nibabel, "save", full_disk)
    with pytest.raises(SystemExit) as e:
        main(["-i", str(images), "-o", str(tmp_path / "maps"), "--no-progress"])
    msg = str(e.value)  # the error line (exit status 1)
    assert e.value.code == 1
    assert "No space left on device" in msg and "disk is full" in msg and "case00_T1" in msg, msg
    folder = TissueMapFolder(tmp_path / "maps")
    assert folder.complete_cases() == [] and not list(folder.path.glob(".tmp-*"))
    monkeypatch.setattr(nibabel, "save", real_save)
    main(["-i", str(images), "-o", str(tmp_path / "maps"), "--no-progress"])  # with space again: resumes
    assert folder.complete_cases() == ["case00", "case01"]
