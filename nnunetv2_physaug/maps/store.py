"""On-disk format of raw-geometry tissue maps (DESIGN §7).

A maps folder (default ``$nnUNet_raw/DatasetXXX/tissueMapsTr``) holds, per case ``CASE``::

    CASE_M0.nii.gz   CASE_T1.nii.gz   CASE_T2.nii.gz
    manifest.json

Each file has the affine and shape of the case's image ``imagesTr/CASE_0000.nii.gz`` so that it
can be viewed beside it (ITK-SNAP, 3D Slicer). A file is 3D (X, Y, Z) for one estimate, or 4D
(X, Y, Z, K) when K posterior samples are kept; the training loader draws one sample per load.
M0 is relative (unitless), T1 and T2 are in ms.

Writes are atomic (temporary file in the same folder + ``os.replace``), so a killed writer
leaves no half-written map; a case is complete when all three maps exist.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable, Optional

import nibabel as nib

from ..fileio import atomic_write_bytes, atomic_write_json  # noqa: F401  (re-exported)
import numpy as np

MAP_NAMES: tuple[str, ...] = ("M0", "T1", "T2")
MANIFEST_NAME = "manifest.json"
FORMAT_VERSION = 1


class TissueMapError(ValueError):
    """Invalid or missing tissue maps; the message names the file and what to do."""


def map_path(maps_dir: os.PathLike | str, case: str, name: str) -> Path:
    """Path of map ``name`` ("M0", "T1" or "T2") of ``case``."""
    return Path(maps_dir) / f"{case}_{name}.nii.gz"


def case_is_complete(maps_dir: os.PathLike | str, case: str) -> bool:
    """True when all three maps of ``case`` exist."""
    return all(map_path(maps_dir, case, n).is_file() for n in MAP_NAMES)


def list_complete_cases(maps_dir: os.PathLike | str) -> list[str]:
    """Sorted identifiers of the cases with all three maps in ``maps_dir``."""
    d = Path(maps_dir)
    if not d.is_dir():
        return []
    suffix = "_M0.nii.gz"
    cases = [p.name[: -len(suffix)] for p in d.glob(f"*{suffix}")]
    return sorted(c for c in cases if case_is_complete(d, c))


def _atomic_save_nifti(img: nib.Nifti1Image, path: Path) -> None:
    atomic_write_bytes(path, lambda tmp: nib.save(img, tmp), ".nii.gz")


def write_case_maps(maps_dir: os.PathLike | str, case: str, m0: np.ndarray, t1: np.ndarray, t2: np.ndarray,
                    affine: np.ndarray, overwrite: bool = False) -> list[Path]:
    """Write the three maps of one case atomically.

    Args:
        maps_dir: output folder (created if missing).
        case: case identifier (``CASE`` of ``CASE_0000.nii.gz``).
        m0, t1, t2: arrays in nibabel axis order, shape (X, Y, Z) or (X, Y, Z, K) for K samples;
            T1 and T2 in ms.
        affine: 4x4 voxel-to-world matrix of the case's image.
        overwrite: replace maps that already exist; otherwise an existing complete case is an error.
    Returns:
        the three written paths.
    """
    maps_dir = Path(maps_dir)
    arrays = {"M0": np.asarray(m0), "T1": np.asarray(t1), "T2": np.asarray(t2)}
    shapes = {a.shape for a in arrays.values()}
    if len(shapes) != 1:
        raise TissueMapError(f"maps of case {case!r} have different shapes: "
                             f"{ {k: v.shape for k, v in arrays.items()} }")
    check_map_values(arrays["M0"], arrays["T1"], arrays["T2"], where=f"case {case!r}")
    if not overwrite and case_is_complete(maps_dir, case):
        raise FileExistsError(f"tissue maps of case {case!r} already exist in {maps_dir}; "
                              "pass --overwrite (overwrite=True) to replace them")
    paths = []
    for name in MAP_NAMES:
        path = map_path(maps_dir, case, name)
        img = nib.Nifti1Image(arrays[name].astype(np.float32), np.asarray(affine, dtype=np.float64))
        img.header.set_xyzt_units("mm")
        img.header["descrip"] = {"M0": b"M0 relative", "T1": b"T1 ms", "T2": b"T2 ms"}[name]
        _atomic_save_nifti(img, path)
        paths.append(path)
    return paths


def check_map_values(m0: np.ndarray, t1: np.ndarray, t2: np.ndarray, where: str) -> None:
    """Raise :class:`TissueMapError` for NaN/Inf values, negative M0 or non-positive T1/T2."""
    for name, a in (("M0", m0), ("T1", t1), ("T2", t2)):
        if not np.all(np.isfinite(a)):
            raise TissueMapError(f"{where}: {name} map contains NaN or Inf values; "
                                 "recompute the maps (physaug-reverse --overwrite)")
    if np.any(m0 < 0):
        raise TissueMapError(f"{where}: M0 map has negative values (min {float(m0.min()):.3g})")
    for name, a in (("T1", t1), ("T2", t2)):
        if np.any(a <= 0):
            raise TissueMapError(f"{where}: {name} map has non-positive values (min {float(a.min()):.3g} ms); "
                                 "T1/T2 must be > 0 ms")


def read_case_maps(maps_dir: os.PathLike | str, case: str,
                   reference_image: Optional[os.PathLike | str] = None) -> tuple[np.ndarray, np.ndarray]:
    """Read the maps of one case.

    Args:
        maps_dir: maps folder.
        case: case identifier.
        reference_image: when given, the maps' shape and affine must match this image's.
    Returns:
        ``(maps, affine)`` with ``maps`` float32 of shape (3, X, Y, Z, K) in order M0, T1, T2
        (K = 1 for single-estimate maps) and the 4x4 affine.
    """
    maps_dir = Path(maps_dir)
    missing = [str(map_path(maps_dir, case, n)) for n in MAP_NAMES if not map_path(maps_dir, case, n).is_file()]
    if missing:
        raise TissueMapError(f"no tissue maps for case {case!r}: missing {', '.join(missing)}. "
                             f"Make them with: physaug-reverse -i <imagesTr> -o {maps_dir}")
    arrays, affine = [], None
    for name in MAP_NAMES:
        path = map_path(maps_dir, case, name)
        try:
            img = nib.load(str(path))
            a = np.asarray(img.dataobj, dtype=np.float32)
        except Exception as e:  # nibabel raises several types for corrupt files
            raise TissueMapError(f"cannot read tissue map {path}: {e}. Delete it and recompute "
                                 "(physaug-reverse --overwrite)") from e
        if a.ndim == 3:
            a = a[..., None]
        if a.ndim != 4:
            raise TissueMapError(f"tissue map {path} has {a.ndim} dimensions; expected 3 (X,Y,Z) or "
                                 "4 (X,Y,Z,samples)")
        if affine is None:
            affine = img.affine
        elif not np.allclose(img.affine, affine, atol=1e-4):
            raise TissueMapError(f"tissue map {path} has a different affine from {map_path(maps_dir, case, 'M0')}")
        arrays.append(a)
    if len({a.shape for a in arrays}) != 1:
        raise TissueMapError(f"tissue maps of case {case!r} in {maps_dir} have different shapes: "
                             f"{[a.shape for a in arrays]}")
    maps = np.stack(arrays)
    check_map_values(maps[0], maps[1], maps[2], where=f"tissue maps of case {case!r} in {maps_dir}")
    if reference_image is not None:
        ref = nib.load(str(reference_image))
        ref_shape = tuple(ref.shape[:3])
        if tuple(maps.shape[1:4]) != ref_shape:
            raise TissueMapError(f"tissue maps of case {case!r} have shape {tuple(maps.shape[1:4])} but the image "
                                 f"{reference_image} has shape {ref_shape}; recompute the maps for this image "
                                 "(physaug-reverse --overwrite)")
        if not np.allclose(ref.affine, affine, atol=1e-3):
            raise TissueMapError(f"tissue maps of case {case!r} do not share the affine of the image "
                                 f"{reference_image}; recompute them (physaug-reverse --overwrite)")
    return maps, affine


def read_manifest(maps_dir: os.PathLike | str) -> dict:
    """The manifest of a maps folder ({} when there is none)."""
    path = Path(maps_dir) / MANIFEST_NAME
    if not path.is_file():
        return {}
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise TissueMapError(f"manifest {path} is not valid JSON ({e}); delete it and rerun") from e
    if not isinstance(manifest, dict):
        raise TissueMapError(f"manifest {path} holds a JSON {type(manifest).__name__}, not an object; it was not "
                             f"written by physaug-reverse: delete it (or use another -o) and rerun")
    return manifest


def write_manifest(maps_dir: os.PathLike | str, estimator: str, parameters: dict,
                   cases: dict[str, dict], prior_hash: Optional[str] = None) -> Path:
    """Write ``manifest.json``: estimator, prior identity, parameters, package version, per-case QC."""
    from .. import __version__

    path = Path(maps_dir) / MANIFEST_NAME
    atomic_write_json(path, {
        "format_version": FORMAT_VERSION,
        "estimator": estimator,
        "prior_hash": prior_hash,
        "parameters": parameters,
        "package_version": __version__,
        "map_units": {"M0": "relative", "T1": "ms", "T2": "ms"},
        "cases": cases,
    })
    return path


def missing_cases(maps_dir: os.PathLike | str, cases: Iterable[str]) -> list[str]:
    """The cases of ``cases`` that have no complete maps in ``maps_dir``."""
    return [c for c in cases if not case_is_complete(maps_dir, c)]
