"""Input side of reverse imaging: find the cases of an nnU-Net image folder and read them safely.

An nnU-Net ``imagesTr``-style folder holds ``CASE_XXXX.nii.gz`` files, ``XXXX`` the 4-digit channel;
only channel 0000 is used (the bSSFP cine of ACDC / M&Ms style datasets). Volumes must be 3D
(X, Y, Z) and are processed slice by slice along Z. 4D cine (X, Y, Z, T) is refused: the map files
reserve the 4th axis for posterior samples, and nnU-Net datasets store cine frames (ED/ES) as
separate 3D cases anyway.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Optional

import nibabel as nib
import numpy as np

#: ``CASE_XXXX.nii.gz`` / ``CASE_XXXX.nii``
_IMAGE_RE = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})\.nii(\.gz)?$")
_NIFTI_RE = re.compile(r"\.nii(\.gz)?$")


class ReverseInputError(ValueError):
    """Bad input to reverse imaging; the message names the file and says what to do."""


def list_cases(images_dir: os.PathLike | str) -> dict[str, Path]:
    """Cases of an nnU-Net image folder.

    Returns:
        sorted mapping case identifier -> path of its channel-0 image (``CASE_0000.nii.gz``).
    Raises:
        ReverseInputError: the folder is missing or empty, a NIfTI file does not follow the
            ``CASE_XXXX.nii.gz`` naming, or a case has other channels but no channel 0000.
    """
    d = Path(images_dir)
    if d.is_file():
        raise ReverseInputError(f"{d} is a file; -i takes the folder that holds the CASE_0000.nii.gz images "
                                f"(here probably {d.parent})")
    if not d.is_dir():
        raise ReverseInputError(f"images folder {d} does not exist; pass an nnU-Net imagesTr-style folder "
                                "holding CASE_0000.nii.gz files (-i)")
    cases: dict[str, Path] = {}
    channels: dict[str, list[str]] = {}
    seen: dict[tuple[str, str], Path] = {}
    for p in sorted(d.iterdir()):
        if not p.name.startswith(".") and _NIFTI_RE.search(p.name) and p.is_symlink() and not p.exists():
            raise ReverseInputError(f"image {p} is a broken link (to {os.readlink(p)}); point it at its image or "
                                    f"remove it (a case must not silently drop out)")
        if p.name.startswith(".") or not p.is_file() or not _NIFTI_RE.search(p.name):
            continue  # hidden files (e.g. editors' temp files) and non-image files are not cases
        m = _IMAGE_RE.match(p.name)
        if m is None:
            raise ReverseInputError(f"image {p} does not follow the nnU-Net naming CASE_XXXX.nii.gz "
                                    "(4-digit channel suffix, e.g. patient001_frame01_0000.nii.gz); rename it")
        key = (m["case"], m["channel"])
        if key in seen:  # CASE_0000.nii beside CASE_0000.nii.gz: which one is the image?
            raise ReverseInputError(f"case {m['case']!r} has two files for channel {m['channel']}: {seen[key]} and "
                                    f"{p}; keep one (nnU-Net reads one file ending per dataset)")
        seen[key] = p
        channels.setdefault(m["case"], []).append(m["channel"])
        if m["channel"] == "0000":
            cases[m["case"]] = p
    for case, chs in channels.items():
        if case not in cases:
            raise ReverseInputError(f"case {case!r} in {d} has channels {sorted(chs)} but no channel 0000 "
                                    f"({case}_0000.nii.gz); reverse imaging reads channel 0000")
    if not cases:
        raise ReverseInputError(f"images folder {d} holds no CASE_0000.nii.gz images")
    return dict(sorted(cases.items()))


def image_shape(path: os.PathLike | str) -> tuple[int, int, int]:
    """Shape (X, Y, Z) of a 3D image from its header; see :func:`load_image` for the checks."""
    img = _open(path)
    return _check_shape(img.shape, path)


def _open(path: os.PathLike | str) -> nib.Nifti1Image:
    try:
        return nib.load(str(path))
    except Exception as e:  # nibabel raises several types for corrupt or foreign files
        raise ReverseInputError(f"cannot read image {path}: {e}. Check that it is a valid NIfTI file") from e


def _check_shape(shape: tuple[int, ...], path) -> tuple[int, int, int]:
    shape = tuple(int(s) for s in shape)
    while len(shape) > 3 and shape[-1] == 1:
        shape = shape[:-1]
    if len(shape) == 4:
        raise ReverseInputError(f"image {path} is 4D {shape} (a cine series?); physaug-reverse needs 3D volumes "
                                "(X, Y, Z). Split the frames into separate 3D cases (nnU-Net datasets such as "
                                "ACDC keep ED and ES as separate cases)")
    if len(shape) != 3:
        raise ReverseInputError(f"image {path} has shape {shape}; physaug-reverse needs 3D volumes (X, Y, Z)")
    return shape  # type: ignore[return-value]


#: more negative voxels than this fraction: not a magnitude image (interpolation ringing stays far below)
MAX_NEGATIVE_FRACTION = 0.01


def load_image(path: os.PathLike | str) -> tuple[np.ndarray, np.ndarray]:
    """Read a 3D image.

    Returns:
        ``(volume, affine)``: float32 (X, Y, Z) in nibabel axis order and the 4x4 affine.
    Raises:
        ReverseInputError: unreadable file, not 3D, NaN/Inf values, or an empty/constant image.
    """
    img = _open(path)
    shape = _check_shape(img.shape, path)
    dtype = img.get_data_dtype()
    if dtype.fields is not None or not (np.issubdtype(dtype, np.number) or dtype == np.bool_):
        raise ReverseInputError(f"image {path} holds {dtype.fields and 'RGB/structured' or 'non-numeric'} voxels "
                                f"({dtype}); reverse imaging reads one grey value per voxel: save the image as a "
                                f"single-channel (grayscale) NIfTI")
    if np.issubdtype(dtype, np.complexfloating):
        raise ReverseInputError(f"image {path} holds complex values ({img.get_data_dtype()}); reverse imaging reads "
                                f"magnitude images: save its magnitude (np.abs) instead")
    try:
        raw = np.asarray(img.dataobj).reshape(shape)
    except Exception as e:  # truncated gzip streams fail only when the data are read
        raise ReverseInputError(f"cannot read the data of image {path}: {e}. The file may be truncated") from e
    if not np.all(np.isfinite(raw)):
        raise ReverseInputError(f"image {path} contains NaN or Inf values; fix or remove the case")
    big = float(np.abs(raw).max()) if raw.size else 0.0
    if big > float(np.finfo(np.float32).max) / 16:
        raise ReverseInputError(f"image {path} has values up to {big:.3g}, beyond what float32 holds (images are "
                                f"read as float32); rescale it (the scale of an image does not matter)")
    vol = raw.astype(np.float32, copy=False)
    if vol.size == 0 or float(vol.max()) == float(vol.min()):
        raise ReverseInputError(f"image {path} is empty or constant (all voxels = "
                                f"{float(vol.flat[0]) if vol.size else 'n/a'}); no tissue can be estimated from it")
    negative = float((vol < 0).mean())
    if negative > MAX_NEGATIVE_FRACTION:
        raise ReverseInputError(f"image {path} has negative values in {100 * negative:.0f} % of its voxels; MR "
                                f"magnitude images are not negative, so it looks normalised (z-scored) or signed. "
                                f"Reverse imaging needs the raw magnitude image (nnU-Net's imagesTr, not its "
                                f"preprocessed data)")
    return vol, np.asarray(img.affine, dtype=np.float64)


def load_labels(labels_dir: Optional[os.PathLike | str], case: str, shape: tuple[int, ...]) -> Optional[np.ndarray]:
    """Read ``labels_dir/CASE.nii.gz`` as int64 (X, Y, Z), or None when there is no such file.

    Raises:
        ReverseInputError: unreadable file, shape different from the image's, NaN values.
    """
    if labels_dir is None:
        return None
    path = label_file(labels_dir, case)
    if path is None:
        return None
    try:
        img = nib.load(str(path))
        lab = np.asarray(img.dataobj)
    except Exception as e:
        raise ReverseInputError(f"cannot read label file {path}: {e}") from e
    while lab.ndim > 3 and lab.shape[-1] == 1:
        lab = lab[..., 0]
    if tuple(lab.shape) != tuple(shape):
        raise ReverseInputError(f"label file {path} has shape {tuple(lab.shape)} but its image has shape "
                                f"{tuple(shape)}; labels must match their image voxel for voxel")
    if not np.all(np.isfinite(lab)):
        raise ReverseInputError(f"label file {path} contains NaN or Inf values")
    rounded = np.rint(lab)
    if not np.array_equal(rounded, lab):
        bad = np.unique(lab[rounded != lab])[:5]
        raise ReverseInputError(f"label file {path} holds non-integer values ({', '.join(f'{v:g}' for v in bad)}); "
                                f"labels are integers (a label resampled with linear interpolation? use nearest "
                                f"neighbour)")
    return rounded.astype(np.int64)


def label_file(labels_dir: os.PathLike | str, case: str) -> Optional[Path]:
    """``labels_dir/CASE.nii.gz`` or ``CASE.nii`` (the one that exists), None without one; both is an error."""
    gz, plain = Path(labels_dir) / f"{case}.nii.gz", Path(labels_dir) / f"{case}.nii"
    if gz.is_file() and plain.is_file():
        raise ReverseInputError(f"case {case!r} has two label files, {gz} and {plain}; keep one")
    return gz if gz.is_file() else plain if plain.is_file() else None


def check_label_coverage(labels_dir: os.PathLike | str, cases: list[str], given: bool) -> list[str]:
    """The cases of ``cases`` that have no label file in ``labels_dir`` (they are estimated without labels).

    Raises:
        ReverseInputError: no case has a label file (a labels folder of another dataset, or labels named
            other than ``CASE.nii.gz``): estimating every case without labels is not what was asked.
    """
    missing = [c for c in cases if label_file(labels_dir, c) is None]
    if cases and len(missing) == len(cases):
        found = sorted(p.name for p in Path(labels_dir).iterdir() if _NIFTI_RE.search(p.name))[:3]
        how = "--labels" if given else "the labels folder found beside the images"
        raise ReverseInputError(
            f"{how} {labels_dir} has no label file for any of the {len(cases)} case(s) (looked for "
            f"{cases[0]}.nii.gz, ...; it holds {', '.join(found) if found else 'no NIfTI files'}). Labels are named "
            f"like their image without the channel suffix (CASE_0000.nii.gz -> CASE.nii.gz); pass the matching "
            f"folder, or --no-labels to estimate without labels")
    return missing


def default_maps_dir(images_dir: os.PathLike | str) -> Path:
    """``<IMAGES_DIR>/../tissueMapsTr`` (``tissueMapsTs`` for an ``imagesTs`` folder), beside the folder as
    named: a linked ``imagesTr`` (dataset B linking to A's images) gets B's maps folder, not A's."""
    d = Path(os.path.abspath(images_dir))
    suffix = d.name[len("images"):] if d.name.startswith("images") and len(d.name) > len("images") else "Tr"
    return d.parent / f"tissueMaps{suffix}"


def default_labels_dir(images_dir: os.PathLike | str) -> Optional[Path]:
    """The sibling label folder (``labelsTr`` for ``imagesTr``, ``labelsTs`` for ``imagesTs``) if it exists, beside
    the folder as named (not beside the target of a linked folder)."""
    d = Path(os.path.abspath(images_dir))
    suffix = d.name[len("images"):] if d.name.startswith("images") and len(d.name) > len("images") else "Tr"
    cand = d.parent / f"labels{suffix}"
    return cand if cand.is_dir() else None
