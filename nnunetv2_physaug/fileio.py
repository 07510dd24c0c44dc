"""Atomic, umask-respecting file writes: the project's one way to put a file or a folder in place.

Every writer makes its output under a temporary name beside the target and renames it into place, so
a killed run never leaves a half-written file under the final name. ``tempfile`` creates those
temporaries with mode 0600 (files) and 0700 (folders); they get the mode a plain ``open``/``mkdir``
would give (0666 / 0777 minus the process umask) before they become visible, so results shared in a
lab group stay readable to it, as nnU-Net's own files are.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


#: the process umask, read once at import (os.umask can only be read by setting it)
UMASK = _current_umask()


def apply_umask(path: os.PathLike | str) -> None:
    """Give ``path`` the permissions a plain open()/mkdir() would have given it."""
    path = Path(path)
    os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~UMASK)


def make_temp_dir(target: Path, prefix: str) -> Path:
    """A new empty folder beside ``target`` (same file system: renames are atomic), umask-respecting."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=target.parent))
    apply_umask(tmp)
    return tmp


def atomic_write_bytes(path: Path, write_fn: Callable[[str], Any], suffix: str) -> None:
    """Call ``write_fn(tmp_path)`` on a temporary file beside ``path``, then rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".tmp-{path.name}-", suffix=suffix, dir=path.parent)
    os.close(fd)
    try:
        write_fn(tmp)
        apply_umask(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_json(path: os.PathLike | str, obj: Any) -> None:
    """Write ``obj`` as indented JSON atomically."""
    def write(tmp):
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=2, sort_keys=True)
            f.write("\n")
    atomic_write_bytes(Path(path), write, ".json")
