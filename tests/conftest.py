import sys
from pathlib import Path

import pytest

# the test helper module (helpers.py) lives beside the tests
sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture
def nnunet_dirs(tmp_path, monkeypatch):
    """nnU-Net folders in tmp_path (nnunetv2.paths resolves the env vars lazily)."""
    dirs = {v: tmp_path / v for v in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")}
    for k, d in dirs.items():
        d.mkdir()
        monkeypatch.setenv(k, str(d))
    monkeypatch.setenv("nnUNet_def_n_proc", "1")
    return dirs
