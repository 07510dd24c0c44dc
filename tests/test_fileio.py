"""Files and folders the project writes get the modes a plain open()/mkdir() gives under the umask
(tempfile's 0600 / 0700 made shared results unreadable to a lab's group)."""
from __future__ import annotations

import stat
import subprocess
import sys
from pathlib import Path

SCRIPT = r"""
import os, sys
os.umask(int(sys.argv[2], 8))
from pathlib import Path
import numpy as np
from nnunetv2_physaug.fileio import atomic_write_json
from nnunetv2_physaug.maps.store import write_case_maps
root = Path(sys.argv[1])
atomic_write_json(root / "a" / "x.json", {"k": 1})
z = np.ones((4, 4, 2), np.float32)
write_case_maps(root / "maps", "c1", z, z * 1000, z * 50, np.eye(4))
sys.path.insert(0, sys.argv[3])
from support.fake_trees import make_fake_myops
os.environ.update({k: str(root / k) for k in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")})
make_fake_myops(root / "src", cases=range(3001, 3006))
from nnunetv2_physaug.conversion import convert_myops
convert_myops(root / "src", train_cases=range(3001, 3006), test_cases=(), progress=False)
"""


def _modes(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): stat.S_IMODE(p.stat().st_mode) for p in root.rglob("*")
            if "src" not in p.parts}


def test_written_files_and_folders_follow_the_umask(tmp_path):
    for umask, file_mode, dir_mode in (("022", 0o644, 0o755), ("077", 0o600, 0o700)):
        root = tmp_path / umask
        root.mkdir()
        r = subprocess.run([sys.executable, "-c", SCRIPT, str(root), umask, str(Path(__file__).parent)],
                           capture_output=True, text=True)
        assert r.returncode == 0, r.stderr[-2000:]
        modes = _modes(root)
        written = [k for k in modes if k.startswith(("a", "maps", "nnUNet_raw"))]
        assert any(k.endswith("x.json") for k in written) and any(k.endswith("c1_T1.nii.gz") for k in written)
        assert any("Dataset913_MyoPS" in k and k.endswith("imagesTr") for k in written)
        for k in written:
            want = dir_mode if (root / k).is_dir() else file_mode
            assert modes[k] == want, (umask, k, oct(modes[k]))
