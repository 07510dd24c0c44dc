"""The tissue-map folder: the one owner of its layout, manifest, per-case commit records, locks and identity.

Layout (the map files themselves follow :mod:`.store`)::

    MAPS/CASE_{M0,T1,T2}.nii.gz   the maps, each written atomically
    MAPS/qc/CASE.json             the case's commit record: identity hash, size and sha256 of its three
                                  map files, QC figures; written last
    MAPS/manifest.json            format version, estimator, prior hash, parameters, package version,
                                  per-case QC
    MAPS/.manifest.lock           fcntl lock serialising read-modify-write of the manifest
    MAPS/.locks/CASE.lock         fcntl lock held by the process that is computing CASE

**Complete** (:meth:`TissueMapFolder.is_complete`) has one definition, used by ``physaug-reverse``,
the trainer, ``fill_missing_maps``, the aligner and the prior trainer: in a folder with a manifest
(made by ``physaug-reverse`` or the phantom), a case is complete when its commit record exists,
carries the folder's identity hash and names exactly the bytes of the three map files on disk. A case
whose run was killed between its maps and its record, a case left over from a run with other settings
(``--overwrite`` interrupted), and a map truncated or replaced afterwards are all incomplete and get
redone. A folder without a manifest holds a user's own maps (another tool's output): there a case is
complete when its three files exist, since nothing else records what they should be.

Writing one case (:meth:`write_case`): drop its record and its writers' leftover temp files -> write
the three maps -> write the record -> add its QC to the manifest under the manifest lock. Processes
that share a folder (``--shard i/n`` job arrays, torchrun ranks, two plain runs started by mistake)
take a per-case lock (:meth:`try_lock_case`) before computing a case, so they never compute the same
case twice. ``fcntl`` locks work on local disks and most cluster file systems (NFSv4, Lustre, GPFS);
on file systems without them run shards into separate folders.

The identity (estimator, prior hash, parameters) is fixed by the first run into a folder; a later run
with another identity is refused (:class:`CacheMismatchError`) unless it overwrites, which rewrites
the identity and drops the old case entries (their maps are then incomplete, never mixed).
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
from typing import Iterable, Optional, TextIO

import numpy as np

from ..fileio import atomic_write_json
from .store import MAP_NAMES, TissueMapError, map_path, write_case_maps

MANIFEST_NAME = "manifest.json"
#: 2: per-case commit records name the bytes of the maps (version 1 recorded only the identity)
FORMAT_VERSION = 2
QC_DIRNAME = "qc"
LOCK_NAME = ".manifest.lock"
CASE_LOCK_DIRNAME = ".locks"


class CacheMismatchError(RuntimeError):
    """The maps folder was made with another estimator, prior or parameters."""


def _canonical(obj) -> object:
    return json.loads(json.dumps(obj, sort_keys=True))


def identity_hash(identity: dict) -> str:
    """Short sha256 of the canonical JSON of an identity ``{estimator, prior_hash, parameters}``."""
    text = json.dumps(_canonical(identity), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _identity_of(manifest: dict) -> dict:
    return {k: manifest.get(k) for k in ("estimator", "prior_hash", "parameters")}


def _file_digest(path: Path) -> dict:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return {"size": path.stat().st_size, "sha256": h.hexdigest()}


def input_digest(image: os.PathLike | str, labels: Optional[os.PathLike | str] = None) -> dict:
    """What a case's maps were made from: size and sha256 of its image file and of its label file (None
    when made without labels). Recorded in the commit record; a changed input makes the maps stale."""
    return {"image": _file_digest(Path(image)), "labels": _file_digest(Path(labels)) if labels else None}


def inputs_match(recorded: Optional[dict], current: Optional[dict]) -> bool:
    """Whether maps made from ``recorded`` inputs are maps of the ``current`` ones: the same image, and the
    same label file when the maps were made with labels (maps made without labels stay valid whatever label
    file exists now, e.g. ``--no-labels``); ``current`` without a ``labels`` key checks the image only. No
    record of the inputs (a folder written before they were recorded) is a mismatch: such maps are redone
    rather than trusted."""
    if current is None:
        return True
    if not isinstance(recorded, dict):
        return False
    if recorded.get("image") != current.get("image"):
        return False
    if "labels" not in current:
        return True
    return recorded.get("labels") is None or recorded.get("labels") == current.get("labels")


def _package_version() -> str:
    from .. import __version__
    return __version__


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


class FileLock:
    """An exclusive ``fcntl`` lock on a lock file; released by :meth:`release` or when the process ends."""

    def __init__(self, handle: TextIO) -> None:
        self._handle: Optional[TextIO] = handle

    @classmethod
    def acquire(cls, path: Path, blocking: bool) -> Optional["FileLock"]:
        """Lock ``path`` (created if missing); None when another process holds it and not ``blocking``."""
        path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(path, "a")
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            handle.close()
            return None
        except BaseException:
            handle.close()
            raise
        return cls(handle)

    def release(self) -> None:
        if self._handle is not None:
            self._handle.close()  # closing the descriptor drops the flock
            self._handle = None

    def __enter__(self) -> "FileLock":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


class TissueMapFolder:
    """A folder of tissue maps (see the module docstring for the layout and the completeness rule)."""

    def __init__(self, path: os.PathLike | str) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"TissueMapFolder({str(self.path)!r})"

    # --- layout --------------------------------------------------------------------------------
    def map_path(self, case: str, name: str) -> Path:
        """Path of map ``name`` ("M0", "T1" or "T2") of ``case``."""
        return map_path(self.path, case, name)

    def record_path(self, case: str) -> Path:
        """Path of the commit record (QC sidecar) of ``case``."""
        return self.path / QC_DIRNAME / f"{case}.json"

    @property
    def manifest_path(self) -> Path:
        return self.path / MANIFEST_NAME

    def cases_with_files(self) -> list[str]:
        """Sorted cases whose three map files exist (complete or not)."""
        if not self.path.is_dir():
            return []
        suffix = "_M0.nii.gz"
        cases = [p.name[: -len(suffix)] for p in self.path.glob(f"*{suffix}")]
        return sorted(c for c in cases if self._files_exist(c))

    def _files_exist(self, case: str) -> bool:
        return all(self.map_path(case, n).is_file() for n in MAP_NAMES)

    # --- manifest and identity -----------------------------------------------------------------
    def manifest(self) -> dict:
        """The manifest ({} when there is none).

        Raises:
            TissueMapError: the manifest is not a JSON object, or has another format version.
        """
        path = self.manifest_path
        if not path.is_file():
            return {}
        try:
            manifest = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise TissueMapError(f"manifest {path} is not valid JSON ({e}); delete it and rerun") from e
        if not isinstance(manifest, dict):
            raise TissueMapError(f"manifest {path} holds a JSON {type(manifest).__name__}, not an object; it was not "
                                 f"written by physaug-reverse: delete it (or use another -o) and rerun")
        for key in ("cases", "parameters"):
            if manifest.get(key) is not None and not isinstance(manifest[key], dict):
                raise TissueMapError(f"manifest {path}: its {key!r} is a JSON {type(manifest[key]).__name__}, not an "
                                     f"object: damaged, or not written by physaug-reverse. Rerun with --overwrite "
                                     f"(it rewrites the manifest and redoes the cases) or use another -o")
        version = manifest.get("format_version")
        if version != FORMAT_VERSION:
            raise TissueMapError(f"manifest {path} has format version {version!r}; this nnunetv2-physaug "
                                 f"({_package_version()}) reads version {FORMAT_VERSION}. Recompute the maps "
                                 f"(physaug-reverse ... --overwrite, or physaug-phantom --overwrite) or use another -o")
        return manifest

    def identity(self) -> Optional[dict]:
        """``{estimator, prior_hash, parameters}`` recorded by the manifest, None without one."""
        manifest = self.manifest()
        return _identity_of(manifest) if manifest else None

    def identity_hash(self) -> Optional[str]:
        """Hash of :meth:`identity` (what commit records carry), None without a manifest."""
        ident = self.identity()
        return None if ident is None else identity_hash(ident)

    def _write_manifest(self, identity: dict, cases: dict) -> None:
        atomic_write_json(self.manifest_path, {
            "format_version": FORMAT_VERSION,
            "estimator": identity["estimator"],
            "prior_hash": identity.get("prior_hash"),
            "parameters": identity.get("parameters") or {},
            "package_version": _package_version(),
            "map_units": {"M0": "relative", "T1": "ms", "T2": "ms"},
            "cases": cases,
        })

    def manifest_lock(self) -> FileLock:
        """Exclusive inter-process lock on the manifest (blocking; use as ``with folder.manifest_lock():``)."""
        return FileLock.acquire(self.path / LOCK_NAME, blocking=True)

    def establish(self, identity: dict, overwrite: bool) -> str:
        """Check or set the folder's identity before any map is written.

        Args:
            identity: ``{"estimator": str, "prior_hash": str | None, "parameters": dict}``.
            overwrite: allow replacing a folder of another identity (its case entries are dropped, so
                its maps count as incomplete until redone).
        Returns:
            the identity hash to stamp on commit records.
        Raises:
            CacheMismatchError: the folder holds maps of another identity, or maps without a manifest.
        """
        identity = _canonical(identity)
        ident = identity_hash(identity)
        with self.manifest_lock():
            self._remove_stale_manifest_temps()
            try:
                manifest = self.manifest()
            except TissueMapError:  # unreadable or of another format: --overwrite replaces it
                if not overwrite:
                    raise
                manifest = {}
            if not manifest:
                existing = self.cases_with_files()
                if existing and not overwrite:
                    raise CacheMismatchError(
                        f"maps folder {self.path} already holds tissue maps ({len(existing)} cases, e.g. "
                        f"{existing[0]!r}) but no {MANIFEST_NAME}, so they were not made by physaug-reverse; choose "
                        "another output folder (-o) or pass --overwrite to replace them")
                self._write_manifest(identity, {})
                return ident
            old = _identity_of(manifest)
            if _canonical(old) != identity:
                if not overwrite:
                    raise CacheMismatchError(
                        f"maps folder {self.path} was made with other settings ({_describe_difference(old, identity)});"
                        " mixing them would give inconsistent maps. Use another output folder (-o), the same "
                        "settings, or --overwrite to redo the cases")
                self._write_manifest(identity, {})
                return ident
            if manifest.get("package_version") != _package_version():
                warnings.warn(f"maps folder {self.path} was made by nnunetv2-physaug {manifest.get('package_version')},"
                              f" this is {_package_version()}; estimator and parameters match, continuing")
        return ident

    def _remove_stale_manifest_temps(self) -> None:
        # called under the manifest lock: every manifest writer holds it, so any temp manifest is a leftover
        for p in glob.glob(os.path.join(glob.escape(str(self.path)), f".tmp-{MANIFEST_NAME}-*")):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(p)

    # --- completeness --------------------------------------------------------------------------
    def read_record(self, case: str) -> Optional[dict]:
        """The commit record of ``case``, None when missing or unreadable."""
        try:
            record = json.loads(self.record_path(case).read_text())
        except (OSError, json.JSONDecodeError, UnicodeDecodeError):
            return None
        return record if isinstance(record, dict) else None

    def is_complete(self, case: str, ident_hash: Optional[str] = None, inputs: Optional[dict] = None) -> bool:
        """Whether ``case`` has finished maps of this folder's identity (the module docstring's rule).

        Args:
            case: case identifier.
            ident_hash: the identity the maps must have; default the manifest's.
            inputs: :func:`input_digest` of the case's image and labels now; maps made from other inputs
                are stale, i.e. not complete (:func:`inputs_match`). None: not checked.
        """
        if not self._files_exist(case):
            return False
        if ident_hash is None:
            ident_hash = self.identity_hash()
            if ident_hash is None:
                return True  # a user's own maps: no record says what they should be
        record = self.read_record(case)
        if record is None or record.get("identity_hash") != ident_hash:
            return False
        if not inputs_match(record.get("inputs"), inputs):
            return False
        files = record.get("files")
        if not isinstance(files, dict):
            return False
        for name in MAP_NAMES:
            expected = files.get(name)
            path = self.map_path(case, name)
            if not isinstance(expected, dict) or path.stat().st_size != expected.get("size"):
                return False  # cheap test first: a truncated file
            if _file_digest(path)["sha256"] != expected.get("sha256"):
                return False
        return True

    def complete_cases(self, ident_hash: Optional[str] = None) -> list[str]:
        """Sorted cases that are complete."""
        ident_hash = ident_hash or self.identity_hash()  # the manifest is read once, not once per case
        return [c for c in self.cases_with_files() if self.is_complete(c, ident_hash)]

    def missing(self, cases: Iterable[str], ident_hash: Optional[str] = None,
                inputs: Optional[dict[str, dict]] = None) -> list[str]:
        """The cases of ``cases`` that are not complete (in the given order); ``inputs``: ``{case:
        input_digest}`` of the cases whose inputs are checked (stale maps count as missing)."""
        ident_hash = ident_hash or self.identity_hash()
        inputs = inputs or {}
        return [c for c in cases if not self.is_complete(c, ident_hash, inputs.get(c))]

    # --- writing -------------------------------------------------------------------------------
    def try_lock_case(self, case: str, blocking: bool = False) -> Optional[FileLock]:
        """Take the lock of ``case``; None when another process holds it (and ``blocking`` is False)."""
        return FileLock.acquire(self.path / CASE_LOCK_DIRNAME / f"{case}.lock", blocking)

    def write_case(self, case: str, m0: np.ndarray, t1: np.ndarray, t2: np.ndarray, affine: np.ndarray,
                   ident_hash: str, qc: dict, inputs: Optional[dict] = None) -> None:
        """Write and commit the maps of ``case`` (caller holds its lock, see :meth:`try_lock_case`).

        Args:
            m0, t1, t2: arrays in nibabel axis order, (X, Y, Z) or (X, Y, Z, K) for K samples; T1/T2 in ms.
            affine: 4x4 voxel-to-world matrix of the case's image.
            ident_hash: the identity hash returned by :meth:`establish`.
            qc: JSON-serialisable QC figures, recorded in the commit record and the manifest.
            inputs: :func:`input_digest` of what the maps were made from, recorded for staleness checks.
        """
        self._begin_case(case)
        write_case_maps(self.path, case, m0, t1, t2, affine, overwrite=True)
        files = {name: _file_digest(self.map_path(case, name)) for name in MAP_NAMES}
        atomic_write_json(self.record_path(case), {"identity_hash": ident_hash, "files": files, "qc": qc,
                                                   "inputs": inputs})
        with self.manifest_lock():
            manifest = self.manifest()
            cases = dict(manifest.get("cases") or {})
            cases[case] = qc
            self._write_manifest(manifest, cases)

    def _begin_case(self, case: str) -> None:
        """Invalidate ``case`` before (re)writing it: drop its record and its writers' leftover temp files."""
        with contextlib.suppress(FileNotFoundError):
            self.record_path(case).unlink()
        patterns = [os.path.join(glob.escape(str(self.path)), f".tmp-{glob.escape(case)}_{n}.nii.gz-*")
                    for n in MAP_NAMES]
        patterns.append(os.path.join(glob.escape(str(self.path / QC_DIRNAME)), f".tmp-{glob.escape(case)}.json-*"))
        for pat in patterns:
            for p in glob.glob(pat):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(p)

    def reconcile(self, ident_hash: str, cases: Iterable[str]) -> None:
        """Add complete cases missing from the manifest (a run killed between record and manifest update)."""
        with self.manifest_lock():
            manifest = self.manifest()
            entries = dict(manifest.get("cases") or {})
            added = False
            for c in cases:
                if c not in entries and self.is_complete(c, ident_hash):
                    entries[c] = self.read_record(c).get("qc", {})
                    added = True
            if added:
                self._write_manifest(manifest, entries)


def read_manifest(maps_dir: os.PathLike | str) -> dict:
    """The manifest of a maps folder ({} when there is none); see :meth:`TissueMapFolder.manifest`."""
    return TissueMapFolder(maps_dir).manifest()
