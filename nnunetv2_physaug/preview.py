"""Preview sheet: one slice of an image, its tissue maps, and random renderings from a protocol.

Layout (PNG, :data:`DPI` dots per inch, :data:`COLUMNS` panels per row): the first row holds the
image and the M0, T1 and T2 maps with colour bars (T1, T2 in ms); the following rows hold the N
renderings, each captioned with its sequence and the parameters that make its contrast (:data:`CAPTIONS`,
e.g. "LGE · TI 357 ms · 29°"; every drawn parameter goes to a JSON beside the PNG). The sheet is
``COLUMNS * PANEL_W_IN * DPI`` pixels wide and ``(1 + ceil(N / COLUMNS)) * PANEL_H_IN * DPI`` high
(see :func:`sheet_size_px`).
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import nibabel as nib
import numpy as np

from .contrast import ContrastRenderer, protocol_with_settings
from .fileio import atomic_write_bytes, atomic_write_json
from .maps.store import TissueMapError, read_case_maps

__all__ = ["make_preview", "PreviewResult", "sheet_size_px", "case_from_image", "COLUMNS", "DPI"]

COLUMNS = 4
PANEL_W_IN = 3.2
PANEL_H_IN = 3.6
DPI = 100
IMAGE_SUFFIX = "_0000.nii.gz"


@dataclass(frozen=True)
class PreviewResult:
    """What :func:`make_preview` wrote: the PNG path, its size in pixels, the slice and the renderings' parameters."""

    path: Path
    width_px: int
    height_px: int
    slice_index: int
    params: list[dict]


def sheet_size_px(n_renderings: int) -> tuple[int, int]:
    """(width, height) in pixels of a sheet with ``n_renderings`` renderings."""
    rows = 1 + math.ceil(n_renderings / COLUMNS)
    return round(COLUMNS * PANEL_W_IN * DPI), round(rows * PANEL_H_IN * DPI)


def case_from_image(image: os.PathLike | str) -> str:
    """Case identifier of an nnU-Net image file: ``CASE_0000.nii.gz`` -> ``CASE``."""
    name = Path(image).name
    if not name.endswith(IMAGE_SUFFIX) or len(name) == len(IMAGE_SUFFIX):
        raise ValueError(f"cannot derive the case from {name!r} (expected CASE{IMAGE_SUFFIX}); pass the case "
                         "explicitly (--case)")
    return name[: -len(IMAGE_SUFFIX)]


def _load_volume(path: Path, what: str) -> np.ndarray:
    if not path.is_file():
        raise FileNotFoundError(f"{what} {path} not found")
    try:
        a = np.asarray(nib.load(str(path)).dataobj)
    except Exception as e:  # nibabel raises several types for unreadable files
        raise ValueError(f"cannot read {what} {path}: {e}") from e
    if a.ndim == 2:
        a = a[..., None]
    if a.ndim == 4 and a.shape[3] == 1:
        a = a[..., 0]
    if a.ndim != 3:
        raise ValueError(f"{what} {path} has shape {a.shape}; expected a 3D volume (X, Y, Z). For a 4D cine, "
                         "save the frame to preview as its own 3D file")
    return a


def _refuse_incomplete_or_stale(maps_dir: Path, case: str, image: Path, labels: Optional[os.PathLike | str]) -> None:
    """Raise :class:`TissueMapError` when the folder marks ``case`` unfinished, or its maps were made from
    another image (or label file) than the ones given: a preview of them would show the wrong case."""
    from .maps.folder import TissueMapFolder, input_digest

    folder = TissueMapFolder(maps_dir)
    if folder.identity_hash() is None:
        return  # a user's own maps: nothing records what they were made from
    if not folder.is_complete(case):
        raise TissueMapError(f"{maps_dir}: the maps of case {case} are unfinished (an interrupted or failed "
                             f"physaug-reverse run); rerun the physaug-reverse command that made the folder")
    current = input_digest(image, labels)
    if labels is None:
        del current["labels"]  # no label file given: the image alone says which case this is
    if not folder.is_complete(case, inputs=current):
        raise TissueMapError(f"{maps_dir}: the maps of case {case} were made from another image or label file than "
                             f"{image}{' and ' + str(labels) if labels else ''} (replaced since?); rerun "
                             f"physaug-reverse on that image's folder to redo them (it redoes stale cases)")


#: what a person reads under a rendering: the sequence's name and the two or three parameters that make its
#: contrast, ``(parameter key, label, unit)`` (the full parameters go to the JSON beside the sheet)
CAPTIONS: dict[str, tuple[str, tuple[tuple[str, str, str], ...]]] = {
    "bssfp": ("bSSFP cine", (("tr_ms", "TR", " ms"), ("flip_deg", "", "°"))),
    "lge": ("LGE", (("ti_ms", "TI", " ms"), ("flip_deg", "", "°"))),
    "psir": ("PSIR LGE", (("ti_ms", "TI", " ms"), ("flip_deg", "", "°"))),
    "look_locker": ("MOLLI-type IR", (("ti_ms", "TI", " ms"), ("flip_deg", "", "°"))),
    "spoiled_gre": ("T1w spoiled GRE", (("tr_ms", "TR", " ms"), ("te_ms", "TE", " ms"), ("flip_deg", "", "°"))),
    "saturation_recovery": ("perfusion (SR)", (("ts_ms", "TS", " ms"), ("conc_blood_mmol", "blood Gd", " mM"))),
    "t2prep_bssfp": ("T2-prep bSSFP", (("te_prep_ms", "T2-prep", " ms"), ("flip_deg", "", "°"))),
    "tse": ("black-blood TSE", (("te_ms", "TE", " ms"), ("tr_ms", "TR", " ms"))),
}


def caption(params: dict) -> str:
    """A rendering's caption: the sequence and the parameters that make its contrast, e.g. ``LGE · TI 357 ms ·
    29°`` (a family without an entry in :data:`CAPTIONS` shows its name)."""
    name, keys = CAPTIONS.get(params["family"], (params["family"], ()))
    parts = [name] + [f"{label + ' ' if label else ''}{params[k]:.3g}{unit}".replace(".0 ", " ")
                      for k, label, unit in keys if isinstance(params.get(k), (int, float))]
    return " · ".join(parts)


def make_preview(image: os.PathLike | str, maps_dir: os.PathLike | str, out: os.PathLike | str,
                 case: Optional[str] = None, labels: Optional[os.PathLike | str] = None,
                 preset: str = "wide", n: int = 8, slice_index: Optional[int] = None, seed: int = 0,
                 overwrite: bool = False, settings: Sequence[str] = (), family: Optional[str] = None
                 ) -> PreviewResult:
    """Write the preview sheet of one slice of a case as a PNG (atomically).

    Args:
        image: the case's image, ``CASE_0000.nii.gz`` (3D).
        maps_dir: folder with ``CASE_{M0,T1,T2}.nii.gz`` (read with
            :func:`~nnunetv2_physaug.maps.read_case_maps`; the first sample when there are K > 1).
        out: output PNG path.
        case: case identifier; default: the image name minus ``_0000.nii.gz``.
        labels: optional label map (same shape as the image) for label-aware renderings
            (ACDC convention: 1 RV, 2 myocardium, 3 LV).
        preset: protocol preset name (``wide``, ``paper``) or a protocol file path.
        n: number of random renderings (>= 1).
        slice_index: index along the third (Z) axis; default the middle slice.
        seed: seed of the renderings' random generator.
        overwrite: replace an existing ``out``.
        settings: ``FAMILY.PARAM=VALUE`` changes of the protocol
            (:func:`~nnunetv2_physaug.contrast.protocol_with_settings`), e.g. ``tse.blood_partial_volume=1``.
        family: render only this family of the protocol (default: draw one per rendering).
    Returns:
        a :class:`PreviewResult`.
    """
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    image, maps_dir, out = Path(image), Path(maps_dir), Path(out)
    if n < 1:
        raise ValueError(f"the number of renderings must be >= 1, got {n}")
    if out.suffix.lower() != ".png":
        raise ValueError(f"output {out} must end in .png")
    if out.is_dir():
        raise ValueError(f"output {out} is a folder; give a file name ending in .png (e.g. {out / 'preview.png'})")
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists; pass --overwrite to replace it")
    if not maps_dir.is_dir():
        raise FileNotFoundError(f"tissue-map folder {maps_dir} not found; make the maps with physaug-reverse")
    protocol = protocol_with_settings(preset, settings)
    case = case or case_from_image(image)
    img = _load_volume(image, "image").astype(np.float32)
    _refuse_incomplete_or_stale(maps_dir, case, image, labels)
    maps, _ = read_case_maps(maps_dir, case, reference_image=image)
    maps = maps[..., 0]  # (3, X, Y, Z): first posterior sample
    z = img.shape[2] // 2 if slice_index is None else slice_index
    if not 0 <= z < img.shape[2]:
        raise ValueError(f"slice {z} is out of range: {image} has {img.shape[2]} slices (0..{img.shape[2] - 1})")
    lab = None
    if labels is not None:
        lab_vol = _load_volume(Path(labels), "label map")
        if lab_vol.shape != img.shape:
            raise ValueError(f"label map {labels} has shape {lab_vol.shape} but the image {image} has {img.shape}")
        lab = np.ascontiguousarray(np.rint(lab_vol[:, :, z]).astype(np.int64).T)

    # Display and render in (Y, X) order: rows = Y, shown with origin at the bottom.
    img2d = img[:, :, z].T
    m0, t1, t2 = (np.ascontiguousarray(maps[i, :, :, z].T) for i in range(3))
    renderer = ContrastRenderer(protocol)
    rng = np.random.default_rng(seed)
    renders = [renderer.render(m0, t1, t2, rng, labels=lab, valid=None if lab is None else lab >= 0, family=family)
               for _ in range(n)]

    rows = 1 + math.ceil(n / COLUMNS)
    fig = plt.figure(figsize=(COLUMNS * PANEL_W_IN, rows * PANEL_H_IN), dpi=DPI)
    try:
        top = 1 - 0.75 / (rows * PANEL_H_IN)  # room for the suptitle above the panel titles
        bottom = 0.95 / (rows * PANEL_H_IN)
        fig.subplots_adjust(left=0.02, right=0.96, top=top, bottom=bottom, wspace=0.25, hspace=0.55)
        fig.suptitle(f"{case}  slice {z}  preset {protocol.name}  seed {seed}", fontsize=10,
                     y=1 - 0.12 / (rows * PANEL_H_IN))
        panels = [
            (img2d, "image", "gray", "signal (a.u.)", None),
            (m0, "M0", "viridis", "M0 (relative)", None),
            (t1, "T1", "magma", "T1 (ms)", float(np.percentile(t1, 99.5))),
            (t2, "T2", "magma", "T2 (ms)", float(np.percentile(t2, 99.5))),
        ]
        for i, (a, title, cmap, unit, vmax) in enumerate(panels):
            ax = fig.add_subplot(rows, COLUMNS, i + 1)
            im = ax.imshow(a, cmap=cmap, origin="lower", vmin=0 if vmax is not None else None, vmax=vmax)
            ax.set_title(title, fontsize=9)
            ax.set_axis_off()
            cb = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.03)
            cb.set_label(unit, fontsize=7)
            cb.ax.tick_params(labelsize=6)
        for j, (rendering, params) in enumerate(renders):
            ax = fig.add_subplot(rows, COLUMNS, COLUMNS + j + 1)
            level = params["clip_level"]
            signed = float(rendering.min()) < 0
            ax.imshow(rendering.numpy(), cmap="gray", origin="lower", vmin=-level if signed else 0, vmax=level)
            ax.set_axis_off()
            ax.text(0.5, -0.03, caption(params), transform=ax.transAxes, ha="center", va="top", fontsize=7)
        atomic_write_bytes(out, lambda tmp: fig.savefig(tmp, format="png", dpi=DPI), ".png")
        # every drawn parameter of every rendering, beside the sheet (the captions show the ones a person reads)
        atomic_write_json(out.with_suffix(".json"), {
            "image": str(image), "case": case, "slice": z, "protocol": protocol.name, "seed": seed,
            "renderings": [{"caption": caption(p), **p} for _, p in renders]})
    finally:
        plt.close(fig)
    w, h = sheet_size_px(n)
    return PreviewResult(out, w, h, z, [p for _, p in renders])
