"""Bring raw-geometry tissue maps to an nnU-Net configuration's preprocessed geometry.

nnU-Net preprocesses each case as: read (the dataset's reader/writer) -> transpose_forward ->
crop to the nonzero bounding box -> normalise -> resample (``resampling_fn_data``). The maps go
through the same reader, transpose, the *case's own* crop box (stored in its ``.pkl``) and the same
resampling function, so that map voxels sit exactly on the preprocessed image's voxels. (Maps are
physical quantities: they are not normalised.)

Aligned maps live *beside* the preprocessed data folder (nnU-Net rejects foreign files inside it)::

    $nnUNet_preprocessed/DatasetXXX/<data_identifier>__physaug_maps/
        CASE.npy          float32 (K, 3, z, y, x): K samples x [M0, T1 ms, T2 ms]
        CASE_sample.npy   float32 (K, 4, N): a fixed subsample of the normalisation-mask voxels,
                          [M0, T1, T2, label], used for cheap case-level intensity statistics
        index.json        per case: fingerprint of the raw maps + preprocessed case it came from

A case is re-aligned when its raw maps or its preprocessed ``.pkl`` change.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable, Optional

import numpy as np

from ..fileio import atomic_write_bytes, atomic_write_json
from .folder import FileLock, TissueMapFolder
from .store import MAP_NAMES, TissueMapError, check_map_values, map_path

ALIGNED_SUFFIX = "__physaug_maps"
INDEX_NAME = "index.json"
STATS_SAMPLE_SIZE = 2048
# Order-3 spline resampling overshoots near sharp edges; T1/T2 must stay physical.
MIN_RELAXATION_MS = 1.0


def aligned_maps_folder(preprocessed_dataset_folder: os.PathLike | str, data_identifier: str) -> Path:
    """Folder of the aligned maps of one configuration (sibling of its data folder)."""
    return Path(preprocessed_dataset_folder) / f"{data_identifier}{ALIGNED_SUFFIX}"


def _fingerprint(raw_maps_dir: Path, case: str, properties_file: Path) -> dict:
    def stat(p: Path):
        s = p.stat()
        return [s.st_size, s.st_mtime_ns]
    return {"raw": {n: stat(map_path(raw_maps_dir, case, n)) for n in MAP_NAMES},
            "preprocessed": stat(properties_file)}


def read_raw_maps_like_nnunet(raw_maps_dir: os.PathLike | str, case: str, reader_writer) -> np.ndarray:
    """Read the three maps of ``case`` with nnU-Net's reader; returns float32 (K, 3, *spatial)."""
    out = []
    for name in MAP_NAMES:
        path = str(map_path(raw_maps_dir, case, name))
        try:
            arr, _ = reader_writer.read_images([path])  # (K, *spatial): 4D files come back as channels
        except Exception as e:
            raise TissueMapError(f"nnU-Net's reader {type(reader_writer).__name__} cannot read tissue map {path}: "
                                 f"{e}") from e
        out.append(np.asarray(arr, dtype=np.float32))
    if len({a.shape for a in out}) != 1:
        raise TissueMapError(f"tissue maps of case {case!r} in {raw_maps_dir} have different shapes "
                             f"{[a.shape for a in out]}")
    return np.stack(out, axis=1)


def align_case_maps(maps: np.ndarray, properties: dict, plans_manager, configuration_manager) -> np.ndarray:
    """Apply nnU-Net's transpose, the case's crop box and the configuration's resampling.

    Args:
        maps: float32 (K, 3, *spatial) in the reader's axis order (as returned by
            :func:`read_raw_maps_like_nnunet`).
        properties: the preprocessed case's properties (its ``.pkl``).
        plans_manager, configuration_manager: nnU-Net's plans objects for the configuration.
    Returns:
        float32 (K, 3, *preprocessed_spatial_shape).
    """
    from acvl_utils.cropping_and_padding.bounding_boxes import bounding_box_to_slice
    from nnunetv2.preprocessing.resampling.default_resampling import compute_new_shape

    k, c = maps.shape[:2]
    data = maps.reshape(k * c, *maps.shape[2:])
    data = data.transpose([0, *[i + 1 for i in plans_manager.transpose_forward]])
    if tuple(data.shape[1:]) != tuple(properties["shape_before_cropping"]):
        raise TissueMapError(f"tissue maps have shape {tuple(data.shape[1:])} (after nnU-Net's transpose) but the "
                             f"preprocessed case was cut from shape {tuple(properties['shape_before_cropping'])}")
    data = data[(slice(None),) + bounding_box_to_slice(properties["bbox_used_for_cropping"])]
    original_spacing = [properties["spacing"][i] for i in plans_manager.transpose_forward]
    target_spacing = list(configuration_manager.spacing)
    if len(target_spacing) < len(data.shape[1:]):
        # 2d configurations keep the slice spacing, exactly as DefaultPreprocessor.run_case_npy does
        target_spacing = [original_spacing[0]] + target_spacing
    new_shape = compute_new_shape(data.shape[1:], original_spacing, target_spacing)
    data = configuration_manager.resampling_fn_data(data, new_shape, original_spacing, target_spacing)
    data = np.asarray(data, dtype=np.float32).reshape(k, c, *new_shape)
    np.maximum(data[:, 0], 0.0, out=data[:, 0])
    np.maximum(data[:, 1:], MIN_RELAXATION_MS, out=data[:, 1:])
    return data


def stats_sample(aligned: np.ndarray, seg: np.ndarray, use_mask_for_norm: bool, case: str,
                 size: int = STATS_SAMPLE_SIZE) -> np.ndarray:
    """A fixed, case-seeded subsample of the voxels nnU-Net's z-score would use.

    Args:
        aligned: (K, 3, *spatial) aligned maps. seg: (1, *spatial) preprocessed segmentation
            (-1 outside the nonzero crop mask).
        use_mask_for_norm: when True only voxels with seg >= 0 count (nnU-Net's ZScoreNormalization).
    Returns:
        float32 (K, 4, N): [M0, T1, T2, label] at N <= size voxels.
    """
    seg0 = np.asarray(seg[0])
    candidates = np.flatnonzero(seg0 >= 0) if use_mask_for_norm else np.arange(seg0.size)
    if candidates.size == 0:
        candidates = np.arange(seg0.size)
    # crc of the case name: deterministic across processes (hash() is salted per interpreter)
    import zlib
    rng = np.random.default_rng(zlib.crc32(case.encode()))
    idx = np.sort(rng.choice(candidates, size=min(size, candidates.size), replace=False))
    flat = aligned.reshape(aligned.shape[0], 3, -1)[:, :, idx]
    labels = np.broadcast_to(seg0.reshape(-1)[idx].astype(np.float32), (aligned.shape[0], 1, idx.size))
    return np.concatenate([flat, labels], axis=1).astype(np.float32)


def _save_npy_atomic(path: Path, arr: np.ndarray) -> None:
    def write(tmp):
        with open(tmp, "wb") as f:
            np.save(f, arr, allow_pickle=False)
    atomic_write_bytes(path, write, ".npy")


def load_index(folder: Path) -> dict:
    p = folder / INDEX_NAME
    if not p.is_file():
        return {}
    try:
        return json.loads(p.read_text())
    except json.JSONDecodeError:
        return {}  # a corrupt index only costs a re-alignment


def align_dataset_maps(raw_maps_dir: os.PathLike | str, preprocessed_dataset_folder: os.PathLike | str,
                       plans_manager, configuration_manager, dataset_json: dict, cases: Iterable[str],
                       raw_images: Optional[dict[str, str]] = None, verbose: bool = True) -> Path:
    """Align (or re-align when stale) the raw maps of ``cases`` to one configuration.

    Args:
        raw_maps_dir: folder of raw-geometry maps (``CASE_{M0,T1,T2}.nii.gz``).
        preprocessed_dataset_folder: ``$nnUNet_preprocessed/DatasetXXX``.
        plans_manager, configuration_manager: the configuration to align to (its preprocessed data
            must exist).
        dataset_json: the dataset's dataset.json (for the label manager; unused otherwise).
        cases: case identifiers.
        raw_images: optional ``{case: image path}``; when given each case's maps must match its
            image's shape and affine.
    Returns:
        the aligned-maps folder.
    """
    from batchgenerators.utilities.file_and_folder_operations import load_pickle
    from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class

    from .store import read_case_maps

    raw_maps_dir = Path(raw_maps_dir)
    data_folder = Path(preprocessed_dataset_folder) / configuration_manager.data_identifier
    if not data_folder.is_dir():
        raise FileNotFoundError(f"preprocessed data folder {data_folder} does not exist; run "
                                f"nnUNetv2_plan_and_preprocess (or nnUNetv2_preprocess) first")
    out = aligned_maps_folder(preprocessed_dataset_folder, configuration_manager.data_identifier)
    out.mkdir(parents=True, exist_ok=True)
    # one process aligns at a time (parallel trainings of one dataset, DDP ranks): the others then find
    # the cases fresh, and no process writes an index that drops another's entries
    with FileLock.acquire(out / ".align.lock", blocking=True):
        index = load_index(out)
        reader = plans_manager.image_reader_writer_class()
        use_mask = bool(configuration_manager.use_mask_for_norm[0])
        dataset_class = infer_dataset_class(str(data_folder))
        cases = list(cases)
        stale = []
        for case in cases:
            pkl = data_folder / f"{case}.pkl"
            if not pkl.is_file():
                raise FileNotFoundError(f"{pkl} missing: case {case!r} is not preprocessed for configuration "
                                        f"{configuration_manager.data_identifier}")
            fp = _fingerprint(raw_maps_dir, case, pkl)
            entry = index.get(case)
            if (entry is None or entry.get("fingerprint") != fp or entry.get("use_mask_for_norm") != use_mask
                    or not (out / f"{case}.npy").is_file() or not (out / f"{case}_sample.npy").is_file()):
                stale.append((case, pkl, fp))
        if not stale:
            return out
        iterator = stale
        if verbose:
            from tqdm import tqdm
            iterator = tqdm(stale, desc=f"aligning tissue maps to {configuration_manager.data_identifier}", unit="case")
        folder = TissueMapFolder(raw_maps_dir)
        for case, pkl, fp in iterator:
            if not folder.is_complete(case):
                raise TissueMapError(f"tissue maps of case {case!r} in {raw_maps_dir} are incomplete (missing, left "
                                     f"unfinished by an interrupted run, or changed since they were written); finish or "
                                     f"redo them with physaug-reverse")
            if raw_images is not None and case in raw_images:
                read_case_maps(raw_maps_dir, case, reference_image=raw_images[case])  # shape/affine/value checks
            maps = read_raw_maps_like_nnunet(raw_maps_dir, case, reader)
            check_map_values(maps[:, 0], maps[:, 1], maps[:, 2], where=f"tissue maps of case {case!r} in {raw_maps_dir}")
            properties = load_pickle(str(pkl))
            aligned = align_case_maps(maps, properties, plans_manager, configuration_manager)
            # the loader renders these without checking them again (ContrastRenderer.render check_finite=False)
            check_map_values(aligned[:, 0], aligned[:, 1], aligned[:, 2],
                             where=f"aligned tissue maps of case {case!r} (from {raw_maps_dir})")
            _, seg, _, _ = dataset_class(str(data_folder), [case]).load_case(case)
            if tuple(aligned.shape[2:]) != tuple(seg.shape[1:]):
                raise TissueMapError(f"aligned maps of case {case!r} have shape {aligned.shape[2:]} but the preprocessed "
                                     f"case has {tuple(seg.shape[1:])}")
            _save_npy_atomic(out / f"{case}.npy", aligned)
            _save_npy_atomic(out / f"{case}_sample.npy", stats_sample(aligned, np.asarray(seg[:]), use_mask, case))
            index[case] = {"fingerprint": fp, "use_mask_for_norm": use_mask, "shape": list(aligned.shape)}
        atomic_write_json(out / INDEX_NAME, index)
        return out
