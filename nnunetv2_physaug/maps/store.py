"""On-disk format of one case's raw-geometry tissue maps (DESIGN §7).

A maps folder (default ``$nnUNet_raw/DatasetXXX/tissueMapsTr``) holds, per case ``CASE``::

    CASE_M0.nii.gz   CASE_T1.nii.gz   CASE_T2.nii.gz

(the folder's manifest, commit records and locks, and what makes a case complete, belong to
:mod:`.folder`).

Each file has the affine and shape of the case's image ``imagesTr/CASE_0000.nii.gz`` so that it
can be viewed beside it (ITK-SNAP, 3D Slicer). A file is 3D (X, Y, Z) for one estimate, or 4D
(X, Y, Z, K) when K posterior samples are kept; the training loader draws one sample per load.
M0 is relative (unitless), T1 and T2 are in ms.

Writes are atomic per file (temporary file in the same folder + ``os.replace``), so a killed writer
leaves no half-written map; :class:`.folder.TissueMapFolder` commits the three together.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import nibabel as nib
import numpy as np

from ..fileio import atomic_write_bytes

MAP_NAMES: tuple[str, ...] = ("M0", "T1", "T2")


class TissueMapError(ValueError):
    """Invalid or missing tissue maps; the message names the file and what to do."""


def map_path(maps_dir: os.PathLike | str, case: str, name: str) -> Path:
    """Path of map ``name`` ("M0", "T1" or "T2") of ``case``."""
    return Path(maps_dir) / f"{case}_{name}.nii.gz"


def _atomic_save_nifti(img: nib.Nifti1Image, path: Path) -> None:
    atomic_write_bytes(path, lambda tmp: nib.save(img, tmp), ".nii.gz")


def write_case_maps(maps_dir: os.PathLike | str, case: str, m0: np.ndarray, t1: np.ndarray, t2: np.ndarray,
                    affine: np.ndarray, overwrite: bool = False) -> list[Path]:
    """Write the three map files of one case, each atomically (a user's own maps, or called by
    :meth:`.folder.TissueMapFolder.write_case`, which then commits them).

    Args:
        maps_dir: output folder (created if missing).
        case: case identifier (``CASE`` of ``CASE_0000.nii.gz``).
        m0, t1, t2: arrays in nibabel axis order, shape (X, Y, Z) or (X, Y, Z, K) for K samples;
            T1 and T2 in ms.
        affine: 4x4 voxel-to-world matrix of the case's image.
        overwrite: replace maps that already exist; otherwise an existing map file is an error.
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
    if not overwrite and any(map_path(maps_dir, case, n).exists() for n in MAP_NAMES):
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
