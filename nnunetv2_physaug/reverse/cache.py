"""Resumable, shard-safe bookkeeping of a tissue-map folder written by ``physaug-reverse``.

Layout (on top of :mod:`nnunetv2_physaug.maps.store`)::

    MAPS_DIR/CASE_{M0,T1,T2}.nii.gz   maps (atomic per file)
    MAPS_DIR/qc/CASE.json              per-case sidecar: identity hash + QC figures (atomic)
    MAPS_DIR/manifest.json             estimator, prior hash, parameters, package version, per-case QC
    MAPS_DIR/.manifest.lock            fcntl lock guarding read-modify-write of the manifest

Protocol for one case: delete its sidecar -> write the three maps -> write the sidecar -> add the
case to the manifest under the lock. A case is *done* when its three maps exist and its sidecar
carries the current identity hash, so a run killed at any point redoes exactly the unfinished
cases; temp files a killed writer left behind (``.tmp-*``) are removed by the next writer of the
same case (never those of other cases, which may belong to a concurrent shard). Shards write
disjoint cases and serialise only the manifest update, so several processes (``--shard i/n`` job
arrays, ``torchrun`` ranks) can fill one folder at once. ``fcntl`` locks work on local disks and
most cluster file systems (NFSv4, Lustre, GPFS); on file systems without them run the shards into
separate folders.

The identity (estimator, prior hash, parameters) is fixed by the first run into a folder; a later
run with another identity is refused (:class:`CacheMismatchError`) unless it overwrites, which
rewrites the identity and drops the old case entries (their maps are then redone, never mixed).
"""
from __future__ import annotations

import contextlib
import fcntl
import glob
import hashlib
import json
import os
import warnings
from pathlib import Path
from typing import Iterator, Optional

from ..maps.store import (MANIFEST_NAME, MAP_NAMES, atomic_write_json, case_is_complete, list_complete_cases,
                          read_manifest, write_manifest)

QC_DIRNAME = "qc"
LOCK_NAME = ".manifest.lock"


class CacheMismatchError(RuntimeError):
    """The maps folder was made with another estimator, prior or parameters."""


def _canonical(obj) -> object:
    return json.loads(json.dumps(obj, sort_keys=True))


def manifest_identity(manifest: dict) -> dict:
    """The identity ``{estimator, prior_hash, parameters}`` a maps folder's manifest records."""
    return {k: manifest.get(k) for k in ("estimator", "prior_hash", "parameters")}


def identity_hash(identity: dict) -> str:
    """Short sha256 of the canonical JSON of an identity ``{estimator, prior_hash, parameters}``."""
    text = json.dumps(_canonical(identity), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@contextlib.contextmanager
def manifest_lock(maps_dir: os.PathLike | str) -> Iterator[None]:
    """Exclusive inter-process lock on the manifest of ``maps_dir`` (blocking)."""
    d = Path(maps_dir)
    d.mkdir(parents=True, exist_ok=True)
    with open(d / LOCK_NAME, "a") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def _sidecar(maps_dir: Path, case: str) -> Path:
    return maps_dir / QC_DIRNAME / f"{case}.json"


def read_sidecar(maps_dir: os.PathLike | str, case: str) -> Optional[dict]:
    """The sidecar of ``case`` or None when missing or unreadable."""
    p = _sidecar(Path(maps_dir), case)
    try:
        return json.loads(p.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def case_done(maps_dir: os.PathLike | str, case: str, ident_hash: str) -> bool:
    """True when ``case`` has all three maps and a sidecar of identity ``ident_hash``."""
    if not case_is_complete(maps_dir, case):
        return False
    side = read_sidecar(maps_dir, case)
    return side is not None and side.get("identity_hash") == ident_hash


def _describe_difference(old: dict, new: dict) -> str:
    parts = []
    for key in ("estimator", "prior_hash"):
        if old.get(key) != new.get(key):
            parts.append(f"{key}: {old.get(key)!r} in the folder vs {new.get(key)!r} now")
    op, np_ = old.get("parameters") or {}, new.get("parameters") or {}
    for key in sorted(set(op) | set(np_)):
        if op.get(key) != np_.get(key):
            parts.append(f"parameter {key}: {op.get(key)!r} vs {np_.get(key)!r}")
    return "; ".join(parts)


def prepare(maps_dir: os.PathLike | str, identity: dict, overwrite: bool) -> str:
    """Check or establish the identity of ``maps_dir`` before any map is written.

    Args:
        maps_dir: the maps folder (created if missing).
        identity: ``{"estimator": str, "prior_hash": str | None, "parameters": dict}``.
        overwrite: allow replacing a folder of another identity (its case entries are dropped).
    Returns:
        the identity hash to stamp on sidecars.
    Raises:
        CacheMismatchError: the folder holds maps of another identity, or maps without a manifest.
    """
    d = Path(maps_dir)
    identity = _canonical(identity)
    ident = identity_hash(identity)
    with manifest_lock(d):
        _remove_stale_manifest_temps(d)
        manifest = read_manifest(d)
        if not manifest:
            existing = list_complete_cases(d)
            if existing and not overwrite:
                raise CacheMismatchError(
                    f"maps folder {d} already holds tissue maps ({len(existing)} cases, e.g. {existing[0]!r}) but no "
                    f"{MANIFEST_NAME}, so they were not made by physaug-reverse; choose another output folder (-o) "
                    "or pass --overwrite to replace them")
            _write(d, identity, {})
            return ident
        old = manifest_identity(manifest)
        if _canonical(old) != identity:
            if not overwrite:
                raise CacheMismatchError(
                    f"maps folder {d} was made with other settings ({_describe_difference(old, identity)}); "
                    "mixing them would give inconsistent maps. Use another output folder (-o), the same settings, "
                    "or --overwrite to redo the cases")
            _write(d, identity, {})
            return ident
        if manifest.get("package_version") != _package_version():
            warnings.warn(f"maps folder {d} was made by nnunetv2-physaug {manifest.get('package_version')}, "
                          f"this is {_package_version()}; estimator and parameters match, continuing")
    return ident


def _package_version() -> str:
    from .. import __version__
    return __version__


def _write(d: Path, identity: dict, cases: dict) -> None:
    write_manifest(d, identity["estimator"], identity["parameters"], cases, prior_hash=identity["prior_hash"])


def _remove_stale_manifest_temps(d: Path) -> None:
    # called under the lock: every manifest writer holds it, so any temp manifest is a leftover
    for p in glob.glob(os.path.join(glob.escape(str(d)), f".tmp-{MANIFEST_NAME}-*")):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(p)


def begin_case(maps_dir: os.PathLike | str, case: str) -> None:
    """Invalidate ``case`` before (re)writing it: drop its sidecar and its writers' leftover temp files."""
    d = Path(maps_dir)
    with contextlib.suppress(FileNotFoundError):
        _sidecar(d, case).unlink()
    remove_case_temps(d, case)


def remove_case_temps(maps_dir: os.PathLike | str, case: str) -> None:
    """Remove temp files that a killed writer of ``case`` left (exactly this case's names)."""
    d = Path(maps_dir)
    patterns = [os.path.join(glob.escape(str(d)), f".tmp-{glob.escape(case)}_{n}.nii.gz-*") for n in MAP_NAMES]
    patterns.append(os.path.join(glob.escape(str(d / QC_DIRNAME)), f".tmp-{glob.escape(case)}.json-*"))
    for pat in patterns:
        for p in glob.glob(pat):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(p)


def finish_case(maps_dir: os.PathLike | str, case: str, ident_hash: str, qc: dict) -> None:
    """Mark ``case`` done: write its sidecar, then record its QC in the manifest under the lock."""
    d = Path(maps_dir)
    atomic_write_json(_sidecar(d, case), {"identity_hash": ident_hash, "qc": qc})
    with manifest_lock(d):
        manifest = read_manifest(d)
        cases = dict(manifest.get("cases") or {})
        cases[case] = qc
        _write(d, manifest_identity(manifest), cases)


def reconcile(maps_dir: os.PathLike | str, ident_hash: str, cases: list[str]) -> None:
    """Add done cases missing from the manifest (a run killed between sidecar and manifest update)."""
    d = Path(maps_dir)
    with manifest_lock(d):
        manifest = read_manifest(d)
        entries = dict(manifest.get("cases") or {})
        added = False
        for c in cases:
            if c not in entries and case_done(d, c, ident_hash):
                entries[c] = read_sidecar(d, c)["qc"]
                added = True
        if added:
            _write(d, manifest_identity(manifest), entries)


def parse_shard(text: Optional[str]) -> Optional[tuple[int, int]]:
    """``"i/n"`` (0 <= i < n) -> (i, n); None stays None."""
    if text is None:
        return None
    try:
        i_s, n_s = text.split("/")
        i, n = int(i_s), int(n_s)
    except ValueError:
        raise ValueError(f"--shard {text!r} is not of the form i/n (e.g. 0/4)") from None
    if n < 1 or not 0 <= i < n:
        raise ValueError(f"--shard {text!r}: need 0 <= i < n (shards are numbered from 0)")
    return i, n


def resolve_shard(shard: Optional[tuple[int, int]]) -> tuple[int, int]:
    """The explicit shard, else the torch.distributed / torchrun rank and world size, else (0, 1)."""
    if shard is not None:
        return shard
    try:
        import torch.distributed as dist
        if dist.is_available() and dist.is_initialized():
            return dist.get_rank(), dist.get_world_size()
    except ImportError:  # torch built without distributed support
        pass
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if world > 1 and not 0 <= rank < world:
        raise ValueError(f"environment RANK={rank} is outside WORLD_SIZE={world}")
    return (rank, world) if world > 1 else (0, 1)


def shard_cases(cases: list[str], shard: tuple[int, int]) -> list[str]:
    """Round-robin share ``shard = (i, n)`` of the sorted ``cases``; the n shares are disjoint and cover all."""
    i, n = shard
    return sorted(cases)[i::n]
