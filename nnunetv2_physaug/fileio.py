"""Atomic, umask-respecting file writes: the project's one way to put a file or a folder in place.

Every writer makes its output under a temporary name beside the target and renames it into place, so
a killed run never leaves a half-written file under the final name. ``tempfile`` creates those
temporaries with mode 0600 (files) and 0700 (folders); they get the mode a plain ``open``/``mkdir``
would give (0666 / 0777 minus the process umask) before they become visible, so results shared in a
lab group stay readable to it, as nnU-Net's own files are.
"""
from __future__ import annotations

import contextlib
import glob
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator, Optional


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


def describe_os_error(error: OSError, what: str = "output") -> str:
    """A one-line message for a failed read or write, naming the file and what to do (no traceback).

    Args:
        error: the OSError (PermissionError, a full disk, ...).
        what: the command's name for the place, e.g. "maps folder (-o)".
    """
    import errno

    where = error.filename or "?"
    if error.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        hint = f"no permission to write there (read-only?); choose a writable {what}"
    elif error.errno in (errno.ENOSPC, errno.EDQUOT):
        hint = f"the disk is full; free space or choose a {what} on another disk"
    else:
        hint = f"check the {what}"
    return f"{error.strerror or error} ({where}): {hint}"


def _staging_names(target: Path) -> tuple[str, str]:
    return f".{target.name}.partial-", f".{target.name}.old-"


def recover_staged(target: Path) -> None:
    """Clean up what a killed :func:`staged_folder` of ``target`` left beside it.

    A run killed between its two renames leaves ``target`` absent and the previous ``target`` in a
    ``.NAME.old-*`` folder: that previous version is put back. Leftover staging (``.NAME.partial-*``)
    and old folders are then removed. Only one writer may work on a given target at a time.
    """
    target = Path(target)
    staging_prefix, old_prefix = _staging_names(target)
    if not target.parent.is_dir():
        return
    olds = sorted(target.parent.glob(glob.escape(old_prefix) + "*"))
    if not target.exists():
        for old in olds:
            if (old / "old").is_dir():
                os.replace(old / "old", target)
                break
    for leftover in olds + sorted(target.parent.glob(glob.escape(staging_prefix) + "*")):
        shutil.rmtree(leftover, ignore_errors=True)


@contextlib.contextmanager
def staged_folder(target: Path) -> Iterator[Path]:
    """Yield an empty hidden staging folder beside ``target``; when the block ends without error it replaces
    ``target``, else it is removed.

    An existing ``target`` is renamed aside, the staging folder renamed into place, and the old one then
    deleted, so a killed run never leaves a half-written folder under the final name, and one killed
    between the two renames is undone by :func:`recover_staged` (called here first, and by callers before
    they check whether ``target`` exists). Refusing to overwrite is the caller's job.
    """
    target = Path(target)
    recover_staged(target)
    staging_prefix, old_prefix = _staging_names(target)
    staging = make_temp_dir(target, staging_prefix)
    try:
        yield staging
        if target.exists():
            trash = Path(tempfile.mkdtemp(prefix=old_prefix, dir=target.parent))
            os.replace(target, trash / "old")
            os.replace(staging, target)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink()


class JournalError(RuntimeError):
    """A commit journal that is not one of ours for this folder; the message names it and what to do."""


def _relative(path: Path, folder: Path) -> str:
    """``path`` as a path relative to ``folder``, which must hold it."""
    rel = Path(os.path.relpath(Path(path).resolve(), folder.resolve()))
    if rel.is_absolute() or ".." in rel.parts:
        raise ValueError(f"{path} is not inside {folder}: commit_together puts in place only what its journal's "
                         f"folder holds")
    return rel.as_posix()


def commit_together(staged: dict[Path, Optional[Path]], journal: Path) -> None:
    """Put several staged folders (or files) in place as one unit: ``{target: staged}``; a target staged as
    ``None`` is removed in the same unit (its previous version is kept until the unit is done).

    A journal beside the targets lists every target, its staged version and where its previous version is
    kept; it is written before the first rename and marked done after the last, and only then are the
    previous versions deleted. A run killed at any moment leaves a journal that :func:`recover_together`
    (call it before looking at the targets) turns into the old set whole (killed while swapping) or the new
    set whole (killed after the last swap): never a mix of old and new targets. Targets, staged versions and
    backups all lie in the journal's folder, and the journal names them relative to it: it means the same
    whatever the working directory, and a journal naming anything outside its folder is refused.
    """
    journal = Path(journal)
    folder = journal.parent
    entries, absolute = [], []
    for target, stage in staged.items():
        target = Path(target)
        backup = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent)) / "old"
        entries.append({"target": _relative(target, folder),
                        "staged": None if stage is None else _relative(stage, folder),
                        "backup": _relative(backup, folder)})
        absolute.append((target, None if stage is None else Path(stage), backup))
    atomic_write_json(journal, {"state": "swapping", "entries": entries})
    for target, stage, backup in absolute:
        if target.exists() or target.is_symlink():
            os.replace(target, backup)
        if stage is not None:
            os.replace(stage, target)
    atomic_write_json(journal, {"state": "done", "entries": entries})
    _finish([(t, s, b) for t, s, b in absolute], journal)


def _finish(entries: list[tuple[Path, Path, Path]], journal: Path) -> None:
    for _, _, backup in entries:
        _remove(backup.parent)
    Path(journal).unlink()


def _journal_entries(journal: Path, record: dict) -> list[tuple[Path, Path, Path]]:
    """The (target, staged, backup) paths of a journal's entries, each checked to be a path inside the
    journal's folder of the shape :func:`commit_together` writes; :class:`JournalError` otherwise."""
    folder = journal.parent
    advice = (f"remove {journal} only if no run is putting datasets in place in {folder} (a copied or edited "
              f"journal is not this folder's)")
    out = []
    for e in record["entries"]:
        paths = []
        for key in ("target", "staged", "backup"):
            if key == "staged" and e[key] is None:  # a target removed by the unit
                paths.append(None)
                continue
            if not isinstance(e[key], str) or Path(e[key]).is_absolute() or ".." in Path(e[key]).parts \
                    or not Path(e[key]).parts:
                raise JournalError(f"{journal}: entry {key} {e[key]!r} is not a path inside {folder}; {advice}")
            paths.append(folder / e[key])
        target, stage, backup = paths
        if backup.name != "old" or not backup.parent.name.startswith(f".{target.name}.old-") \
                or backup.parent.parent != target.parent:
            raise JournalError(f"{journal}: entry {e!r} is not one commit_together writes; {advice}")
        out.append((target, stage, backup))
    return out


def recover_together(journal: Path) -> str:
    """Complete or undo what a killed :func:`commit_together` left; returns ``"none"``, ``"completed"`` (all
    new targets were in place: their previous versions are deleted) or ``"rolled back"`` (every target is its
    previous version again, or absent if it had none; the staged versions are deleted). A journal that names
    paths outside its folder, or backups its folder does not hold (copied from elsewhere), raises
    :class:`JournalError` before anything is touched."""
    journal = Path(journal)
    for tmp in journal.parent.glob(glob.escape(f".tmp-{journal.name}-") + "*"):  # killed while writing it
        tmp.unlink()
    if not journal.is_file():
        return "none"
    try:
        record = json.loads(journal.read_text())
        state = record["state"]
        entries = _journal_entries(journal, record)
    except (ValueError, KeyError, TypeError, AttributeError):  # the journal is written atomically: not ours
        raise JournalError(f"{journal}: not a commit journal; remove it only if no run is putting datasets in "
                           f"place in {journal.parent}") from None
    if state == "done":
        _finish(entries, journal)
        return "completed"
    if state == "swapping":
        # every backup folder is made before the journal is written and removed only after it is marked done
        # (or rolled back): a swapping journal whose backup folders are not here was not written for this folder
        absent = [b.parent for _, _, b in entries if not b.parent.is_dir()]
        if absent:
            raise JournalError(f"{journal}: its backup folder {absent[0]} is not in {journal.parent}, so the "
                               f"journal was not written for this folder (copied with it?); nothing was changed. "
                               f"Remove the journal only if no run is putting datasets in place in {journal.parent}")
        atomic_write_json(journal, {"state": "rolling back", "entries": record["entries"]})
    elif state != "rolling back":
        raise JournalError(f"{journal}: unknown state {state!r}; remove it only if no run is putting datasets in "
                           f"place in {journal.parent}")
    for target, stage, backup in reversed(entries):
        if not backup.parent.is_dir():  # rolled back by an earlier recovery that was stopped
            continue
        installed = stage is not None and not (stage.exists() or stage.is_symlink())
        if installed and (target.exists() or target.is_symlink()):
            _remove(target)  # the new version was put in place: undo it
        if backup.exists() or backup.is_symlink():
            os.replace(backup, target)
        if stage is not None:
            _remove(stage)
        _remove(backup.parent)
    journal.unlink()
    return "rolled back"


class FolderBusyError(RuntimeError):
    """Another process holds the folder's lock; the message names the folder."""


@contextlib.contextmanager
def output_lock(folder: Path, what: str = "run"):
    """Hold an exclusive lock on ``folder`` (created) while the block runs: a second process that asks for it
    is refused at once with :class:`FolderBusyError`, so two runs never write into one output folder together.
    The lock (``fcntl.flock`` on ``folder/.physaug.lock``) goes with the process that holds it, killed or not."""
    import fcntl

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / ".physaug.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise FolderBusyError(f"{folder} is in use by another {what} (it holds {folder / '.physaug.lock'}); "
                                  f"wait for it to finish or choose another output folder") from None
        yield
    finally:
        os.close(fd)
