"""Synthetic short-axis cardiac anatomy with ground-truth M0/T1/T2 maps and ACDC labels.

A case is a stack of 2D short-axis slices from base (slice 0) to apex (last slice). Each slice is
painted as a map of tissue classes on a sub-pixel grid (shapes are implicit functions of the
in-plane position: ellipses and circles with random radial harmonics, warped by a smooth random
displacement field), then the class values are averaged over each pixel (partial volume) and a
smooth within-tissue texture is added. Shape parameters are data (``anatomy.yaml``), tissue values
come from the reference table (``nnunetv2_physaug.physics.tissue_table``).

Array convention: (Z, Y, X) = (slice, row, column); row 0 is anterior, the RV is on the image
left of the LV, as in a standard short-axis view. T1/T2 in ms, M0 relative (blood ~ 0.95).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from typing import Optional

import numpy as np

from ..physics.tissues import TISSUES, tissue_table
from .fields import random_waves, wave_field
from .params import PhantomConfigError, check_spec, draw, draw_int, load_yaml

__all__ = ["PhantomCase", "TissueClass", "TISSUE_CLASSES", "CLASS_INDEX", "ACDC_LABELS", "make_case",
           "load_anatomy_config"]

ACDC_LABELS: dict[str, int] = {"background": 0, "RV": 1, "MLV": 2, "LVC": 3}


@dataclass(frozen=True)
class TissueClass:
    """One painted tissue class: its name, the reference-table tissue it takes values from and its
    ACDC label (0 background, 1 RV cavity, 2 LV myocardium, 3 LV cavity)."""

    name: str
    tissue: str
    label: int


# Order fixes the indices of the `tissue` map. Papillary muscles are myocardium but belong to the LV
# cavity label, as in the ACDC annotation protocol; the RV free wall is myocardium labelled background.
TISSUE_CLASSES: tuple[TissueClass, ...] = (
    TissueClass("air", "air", 0),
    TissueClass("lung", "lung", 0),
    TissueClass("fat", "fat", 0),
    TissueClass("muscle", "skeletal_muscle", 0),
    TissueClass("liver", "liver", 0),
    TissueClass("lv_myocardium", "myocardium", 2),
    TissueClass("lv_blood", "blood", 3),
    TissueClass("rv_blood", "blood", 1),
    TissueClass("rv_wall", "myocardium", 0),
    TissueClass("papillary", "myocardium", 3),
    TissueClass("vessel_blood", "blood", 0),
)
CLASS_INDEX: dict[str, int] = {c.name: i for i, c in enumerate(TISSUE_CLASSES)}
_LABEL_OF_CLASS = np.array([c.label for c in TISSUE_CLASSES], dtype=np.uint8)


@dataclass
class PhantomCase:
    """One phantom case.

    Attributes:
        m0: proton density (relative), float32 (Z, Y, X).
        t1, t2: relaxation times in ms, float32 (Z, Y, X).
        labels: ACDC labels, uint8 (Z, Y, X).
        spacing_zyx_mm: voxel spacing (slice, row, column) in mm.
        tissue: index into :data:`TISSUE_CLASSES` of the class at each pixel centre, uint8 (Z, Y, X).
        meta: phase ("ED"/"ES"), n_slices, field, fov_mm, tissue_values (per-case table draws) ...
    """

    m0: np.ndarray
    t1: np.ndarray
    t2: np.ndarray
    labels: np.ndarray
    spacing_zyx_mm: tuple[float, float, float]
    tissue: np.ndarray
    meta: dict = field(default_factory=dict)


# --------------------------------------------------------------------------------------------------
# configuration

_REQUIRED = {
    "geometry": ("fov_mm", "slice_spacing_mm", "lv_length_mm", "n_slices", "supersample"),
    "pose": ("rotation_deg", "shift_mm"),
    "deformation": ("n_waves", "amplitude_mm", "wavelength_mm"),
    "body": ("half_width_mm", "half_height_mm", "shape_harmonics", "subcutaneous_fat_mm",
             "chest_wall_muscle_mm", "layer_harmonics"),
    "spine": ("vertebra_radius_mm", "paraspinal_half_width_mm", "paraspinal_half_height_mm", "aorta_radius_mm"),
    "heart": ("offset_x_mm", "offset_y_mm", "drift_mm", "lv_endo_radius_mm", "lv_wall_mm",
              "apical_wall_thinning", "apex_margin", "lv_harmonics", "wall_harmonics", "rv_direction_deg",
              "rv_half_width_mm", "rv_half_length_mm", "rv_shift", "rv_wall_mm", "rv_extent",
              "pericardial_fat_mm", "papillary_radius_mm", "papillary_range"),
    "systole": ("es_probability", "lv_cavity_scale", "rv_cavity_scale", "papillary_scale"),
    "liver": ("start", "half_width_mm", "half_height_mm", "offset_x_mm", "offset_y_mm"),
    "lung_vessels": ("count", "radius_mm"),
    "texture": ("sd_fraction", "n_waves", "wavelength_mm", "case_draw_clip_sd"),
}


def load_anatomy_config(path=None) -> dict:
    """Load and validate the anatomy parameters (default: the packaged ``anatomy.yaml``)."""
    data, where = load_yaml(path, "anatomy.yaml")
    for section, keys in _REQUIRED.items():
        if not isinstance(data.get(section), dict):
            raise PhantomConfigError(f"{where}: missing section {section!r}")
        for key in keys:
            if key not in data[section]:
                raise PhantomConfigError(f"{where}: missing key {section}.{key}")
            check_spec(data[section][key], f"{where}: {section}.{key}")
    ss = data["geometry"]["supersample"]
    if not isinstance(ss, int) or ss < 1 or ss % 2 == 0:
        raise PhantomConfigError(f"{where}: geometry.supersample must be an odd integer >= 1, got {ss!r}")
    return data


@lru_cache(maxsize=1)
def _default_config() -> dict:
    return load_anatomy_config(None)


# --------------------------------------------------------------------------------------------------
# shape helpers (all lengths in mm)

def _basis(cos_t: np.ndarray, sin_t: np.ndarray) -> tuple[np.ndarray, ...]:
    """cos/sin of 2θ and 3θ from cos θ, sin θ (shared by every radial-harmonic shape around a centre)."""
    return (2.0 * cos_t * cos_t - 1.0, 2.0 * sin_t * cos_t, cos_t * (4.0 * cos_t * cos_t - 3.0),
            sin_t * (3.0 - 4.0 * sin_t * sin_t))


def _harmonics(basis: tuple[np.ndarray, ...], coef: np.ndarray) -> np.ndarray:
    """1 + sum of radial harmonics of orders 2 and 3 with coefficients (a2, b2, a3, b3)."""
    c2, s2, c3, s3 = basis
    a2, b2, a3, b3 = (float(c) for c in coef)  # python floats keep float32 arrays float32 (NEP 50)
    return 1.0 + a2 * c2 + b2 * s2 + a3 * c3 + b3 * s3


def _polar(x: np.ndarray, y: np.ndarray, cx: float, cy: float):
    dx, dy = x - float(cx), y - float(cy)
    r = np.hypot(dx, dy)
    rs = np.maximum(r, 1e-6)
    return r, dx / rs, dy / rs


def _ellipse_rho(x, y, cx, cy, a, b, angle_rad):
    """Normalised elliptic radius (1 on the boundary); ``a`` along direction ``angle_rad``."""
    ca, sa = float(np.cos(angle_rad)), float(np.sin(angle_rad))
    a, b, cx, cy = float(a), float(b), float(cx), float(cy)
    dx, dy = x - cx, y - cy
    u = dx * ca + dy * sa
    v = -dx * sa + dy * ca
    return np.sqrt((u / a) ** 2 + (v / b) ** 2)


# --------------------------------------------------------------------------------------------------
# per-case parameters

def _draw_parameters(rng: np.random.Generator, cfg: dict) -> dict:
    """Draw every random shape parameter of one case, in a fixed order (ED and ES share them)."""
    g, po, de, bo, sp, he, sy, li, lv, tx = (cfg[k] for k in (
        "geometry", "pose", "deformation", "body", "spine", "heart", "systole", "liver", "lung_vessels", "texture"))
    p: dict = {}
    length = draw(g["lv_length_mm"], rng)
    lo, hi = (g["n_slices"] if isinstance(g["n_slices"], list) else [g["n_slices"]] * 2)
    p["n_slices"] = int(np.clip(round(length / g["slice_spacing_mm"]) + 1, lo, hi))
    p["rotation"] = np.deg2rad(draw(po["rotation_deg"], rng))
    p["shift"] = (draw(po["shift_mm"], rng), draw(po["shift_mm"], rng))
    n_def = int(de["n_waves"])
    p["warp"] = [(random_waves(rng, n_def, de["wavelength_mm"]),
                  np.array([draw(de["amplitude_mm"], rng) for _ in range(n_def)]) / np.sqrt(n_def))
                 for _axis in range(2)]
    p["body_a"], p["body_b"] = draw(bo["half_width_mm"], rng), draw(bo["half_height_mm"], rng)
    p["body_h"] = rng.normal(0, bo["shape_harmonics"], 4)
    p["fat_t"], p["fat_h"] = draw(bo["subcutaneous_fat_mm"], rng), rng.normal(0, bo["layer_harmonics"], 4)
    p["musc_t"], p["musc_h"] = draw(bo["chest_wall_muscle_mm"], rng), rng.normal(0, bo["layer_harmonics"], 4)
    p["vert_r"] = draw(sp["vertebra_radius_mm"], rng)
    p["para_a"], p["para_b"] = draw(sp["paraspinal_half_width_mm"], rng), draw(sp["paraspinal_half_height_mm"], rng)
    p["aorta_r"] = draw(sp["aorta_radius_mm"], rng)
    p["lv_c"] = (draw(he["offset_x_mm"], rng), draw(he["offset_y_mm"], rng))
    p["drift"] = (draw(he["drift_mm"], rng), draw(he["drift_mm"], rng))
    p["endo_r"], p["wall"] = draw(he["lv_endo_radius_mm"], rng), draw(he["lv_wall_mm"], rng)
    p["thinning"], p["apex_margin"] = draw(he["apical_wall_thinning"], rng), draw(he["apex_margin"], rng)
    # harmonics change linearly from base to apex (h0 at the base, h0 + h1 at the apex)
    p["endo_h0"], p["endo_h1"] = rng.normal(0, he["lv_harmonics"], 4), rng.normal(0, he["lv_harmonics"] / 2, 4)
    p["epi_h0"], p["epi_h1"] = rng.normal(0, he["wall_harmonics"], 4), rng.normal(0, he["wall_harmonics"] / 2, 4)
    p["rv_dir"] = np.deg2rad(draw(he["rv_direction_deg"], rng))
    p["rv_a"], p["rv_b"] = draw(he["rv_half_width_mm"], rng), draw(he["rv_half_length_mm"], rng)
    p["rv_shift"], p["rv_wall"] = draw(he["rv_shift"], rng), draw(he["rv_wall_mm"], rng)
    p["rv_extent"] = draw(he["rv_extent"], rng)
    p["pfat_t"], p["pfat_h"] = draw(he["pericardial_fat_mm"], rng), rng.normal(0, 0.6, 4)
    p["pap_r"] = draw(he["papillary_radius_mm"], rng)
    p["pap_angles"] = np.deg2rad(np.array([rng.uniform(300, 350), rng.uniform(80, 130)]))
    p["pap_range"] = he["papillary_range"]
    p["es"] = rng.random() < sy["es_probability"]
    p["lv_es"], p["rv_es"] = draw(sy["lv_cavity_scale"], rng), draw(sy["rv_cavity_scale"], rng)
    p["pap_es"] = draw(sy["papillary_scale"], rng)
    p["liver_start"] = draw(li["start"], rng)
    p["liver_ab"] = (draw(li["half_width_mm"], rng), draw(li["half_height_mm"], rng))
    p["liver_c"] = (draw(li["offset_x_mm"], rng), draw(li["offset_y_mm"], rng))
    p["liver_angle"] = rng.uniform(-0.4, 0.4)
    p["vessels"] = []
    for _ in range(p["n_slices"]):
        n = draw_int(lv["count"], rng)
        p["vessels"].append((rng.uniform(-1, 1, (n, 2)), np.array([draw(lv["radius_mm"], rng) for _ in range(n)])))
    p["texture"] = [random_waves(rng, int(tx["n_waves"]), tx["wavelength_mm"]) for _param in range(3)]
    p["tissue_z"] = rng.standard_normal((len(TISSUES), 3))
    return p


# --------------------------------------------------------------------------------------------------
# painting one slice

@dataclass(frozen=True)
class _Frame:
    """Maps anatomy-frame positions back to sub-pixel index windows (so small structures are painted
    on a window of the grid only). ``grid``: sorted sub-pixel centre coordinates (mm, image frame)."""

    grid: np.ndarray
    cos_r: float
    sin_r: float
    shift: tuple[float, float]
    margin: float  # largest warp displacement (mm)

    def window(self, centres, radius: float) -> tuple[slice, slice]:
        """Index window (rows, cols) holding every anatomy-frame point within ``radius`` of a centre."""
        pts = np.asarray(centres, dtype=np.float64).reshape(-1, 2)
        ix = self.cos_r * pts[:, 0] - self.sin_r * pts[:, 1] + self.shift[0]
        iy = self.sin_r * pts[:, 0] + self.cos_r * pts[:, 1] + self.shift[1]
        rad = radius + self.margin + 1.0
        c0, c1 = np.searchsorted(self.grid, [ix.min() - rad, ix.max() + rad])
        r0, r1 = np.searchsorted(self.grid, [iy.min() - rad, iy.max() + rad])
        return slice(int(r0), int(r1)), slice(int(c0), int(c1))


def _paint_slice(x: np.ndarray, y: np.ndarray, s: float, es: bool, p: dict, z_index: int,
                 frame: _Frame) -> np.ndarray:
    """Tissue-class indices on the (warped) grid ``x``, ``y`` (mm, anatomy frame) at base-to-apex
    fraction ``s`` (0 = base, 1 = apex)."""
    cls = np.zeros(x.shape, dtype=np.uint8)
    inside = _paint_chest(cls, x, y, s, p, z_index, frame)
    _paint_heart(cls, x, y, s, es, p, frame, inside)
    return cls


def _paint_chest(cls: np.ndarray, x: np.ndarray, y: np.ndarray, s: float, p: dict, z_index: int,
                 frame: _Frame) -> np.ndarray:
    """Paint the chest into ``cls`` (subcutaneous fat, chest-wall muscle, lung with its vessels, the liver dome
    of apical slices, the spine and descending aorta); returns the body mask."""
    ci = CLASS_INDEX
    # chest: subcutaneous fat, chest-wall muscle, thoracic cavity (lung)
    r_b, c_b, s_b = _polar(x, y, 0.0, 0.0)
    rho = np.sqrt((x / np.float32(p["body_a"])) ** 2 + (y / np.float32(p["body_b"])) ** 2)
    bb = _basis(c_b, s_b)
    h = _harmonics(bb, p["body_h"])
    inside = rho < h
    depth = (h - rho) * r_b / np.maximum(rho, np.float32(1e-6))  # distance to the skin along the ray
    fat_t = np.float32(p["fat_t"]) * np.maximum(_harmonics(bb, p["fat_h"]), np.float32(0.3))
    musc_t = np.float32(p["musc_t"]) * np.maximum(_harmonics(bb, p["musc_h"]), np.float32(0.3))
    cls[inside] = ci["fat"]
    below_fat = inside & (depth >= fat_t)
    cls[below_fat] = ci["muscle"]
    thorax = inside & (depth >= fat_t + musc_t)
    cls[thorax] = ci["lung"]

    # lung vessels: bright dots in the lung only
    inner_a = p["body_a"] - p["fat_t"] - p["musc_t"]
    inner_b = p["body_b"] - p["fat_t"] - p["musc_t"]
    pos, radii = p["vessels"][z_index]
    for (u, v), rv in zip(pos, radii):
        vx, vy = float(u * inner_a), float(v * inner_b)
        w = frame.window([(vx, vy)], rv)
        sub = cls[w]
        sub[((x[w] - vx) ** 2 + (y[w] - vy) ** 2 < rv * rv) & (sub == ci["lung"])] = ci["vessel_blood"]

    # liver dome appears in the inferior (apical) slices, replacing lung
    if s > p["liver_start"]:
        grow = np.sqrt((s - p["liver_start"]) / max(1.0 - p["liver_start"], 1e-6))
        la, lb = p["liver_ab"][0] * grow, p["liver_ab"][1] * grow
        if la > 2 and lb > 2:
            lc = (p["liver_c"][0], p["liver_c"][1] + (1 - grow) * lb)
            w = frame.window([lc], max(la, lb))
            sub = cls[w]
            sub[(_ellipse_rho(x[w], y[w], lc[0], lc[1], la, lb, p["liver_angle"]) < 1) & thorax[w]] = ci["liver"]

    # spine: paraspinal muscles, vertebral body (fatty marrow), descending aorta
    post = inner_b
    pc = (0.0, post + 0.6 * p["para_b"])
    w = frame.window([pc], max(p["para_a"], p["para_b"]))
    sub = cls[w]
    sub[(_ellipse_rho(x[w], y[w], pc[0], pc[1], p["para_a"], p["para_b"], 0.0) < 1) & below_fat[w]] = ci["muscle"]
    vy = post - 0.25 * p["vert_r"]
    w = frame.window([(0.0, vy)], p["vert_r"])
    sub = cls[w]
    sub[(x[w] ** 2 + (y[w] - vy) ** 2 < p["vert_r"] ** 2) & inside[w]] = ci["fat"]
    ax, ay = p["vert_r"] + p["aorta_r"] + 3.0, vy - p["vert_r"] - 0.3 * p["aorta_r"]
    w = frame.window([(ax, ay)], p["aorta_r"])
    sub = cls[w]
    sub[((x[w] - ax) ** 2 + (y[w] - ay) ** 2 < p["aorta_r"] ** 2) & thorax[w]] = ci["vessel_blood"]
    return inside


def _paint_heart(cls: np.ndarray, x: np.ndarray, y: np.ndarray, s: float, es: bool, p: dict, frame: _Frame,
                 inside: np.ndarray) -> None:
    """Paint the heart into ``cls`` at this level: LV myocardium and cavity with papillary muscles, RV wall and
    cavity, epicardial fat (ED, or ES with the myocardial area conserved)."""
    ci = CLASS_INDEX
    # heart geometry at this level
    cx, cy = p["lv_c"][0] + s * p["drift"][0], p["lv_c"][1] + s * p["drift"][1]
    endo_ed = p["endo_r"] * np.sqrt(max(0.0, 1.0 - (s / (1.0 + p["apex_margin"])) ** 2))
    epi_ed = endo_ed + p["wall"] * (1.0 - (1.0 - p["thinning"]) * s)
    if es:  # systolic contraction conserves the myocardial area: smaller cavity, thicker wall
        endo = endo_ed * p["lv_es"]
        epi = np.sqrt(endo ** 2 + epi_ed ** 2 - endo_ed ** 2)
    else:
        endo, epi = endo_ed, epi_ed
    q = np.sqrt(max(0.0, 1.0 - (s / p["rv_extent"]) ** 2))
    rv_a = p["rv_a"] * q * (p["rv_es"] if es else 1.0)
    rv_b = p["rv_b"] * (0.45 + 0.55 * q) * (np.sqrt(p["rv_es"]) if es else 1.0)
    has_rv = rv_a > 3.0
    wall, pf = p["rv_wall"], p["pfat_t"]
    centres, radius = [(cx, cy)], epi * 1.6 + 3.0 * pf + 3.0
    if has_rv:
        d = epi + p["rv_shift"] * rv_a
        rx, ry = cx + d * np.cos(p["rv_dir"]), cy + d * np.sin(p["rv_dir"])
        centres.append((rx, ry))
        radius = max(radius, max(rv_a, rv_b) + wall + pf + 2.0)
    w = frame.window(centres, radius)
    x, y, cls_h, inside_h = x[w], y[w], cls[w], inside[w]

    r, c_t, s_t = _polar(x, y, cx, cy)
    hb = _basis(c_t, s_t)
    r_endo = endo * _harmonics(hb, p["endo_h0"] + s * p["endo_h1"])
    r_epi = np.maximum(epi * _harmonics(hb, p["epi_h0"] + s * p["epi_h1"]), r_endo + np.float32(3.0))
    lv_epi = r < r_epi
    if has_rv:
        rv_cav = (_ellipse_rho(x, y, rx, ry, rv_a, rv_b, p["rv_dir"]) < 1) & ~lv_epi
        rv_out = (_ellipse_rho(x, y, rx, ry, rv_a + wall, rv_b + wall, p["rv_dir"]) < 1) & ~lv_epi

    # epicardial / pericardial fat around the whole heart
    pfat = pf * np.maximum(_harmonics(hb, p["pfat_h"]), np.float32(0.0))
    heart_fat = r < r_epi + pfat
    if has_rv:
        heart_fat |= _ellipse_rho(x, y, rx, ry, rv_a + wall + pf, rv_b + wall + pf, p["rv_dir"]) < 1
    cls_h[heart_fat & inside_h] = ci["fat"]
    if has_rv:
        cls_h[rv_out] = ci["rv_wall"]
        cls_h[rv_cav] = ci["rv_blood"]
    cls_h[lv_epi] = ci["lv_myocardium"]
    if endo > 1.5:
        cavity = r < r_endo
        cls_h[cavity] = ci["lv_blood"]
        lo, hi = p["pap_range"]
        if lo <= s <= hi and endo > 10.0:
            pr = p["pap_r"] * (p["pap_es"] if es else 1.0)
            for ang in p["pap_angles"]:
                dist = endo * float(_harmonics(_basis(np.cos(ang), np.sin(ang)), p["endo_h0"] + s * p["endo_h1"])) \
                    - pr * (1.0 if es else 1.3)
                px, py = cx + dist * np.cos(ang), cy + dist * np.sin(ang)
                cls_h[((x - px) ** 2 + (y - py) ** 2 < pr * pr) & cavity] = ci["papillary"]


# --------------------------------------------------------------------------------------------------
# case

def make_case(rng: np.random.Generator, size: int = 128, field: str = "1.5T", phase: Optional[str] = None,
              config: Optional[dict] = None) -> PhantomCase:
    """Draw one phantom case.

    Args:
        rng: numpy Generator; the case is a deterministic function of its state.
        size: in-plane matrix (pixels, square); in-plane spacing = fov_mm / size.
        field: field strength of the tissue table ("1.5T" or "3T").
        phase: "ED" or "ES" to force the cardiac phase; ``None`` draws it. The same generator state
            with phase "ED" and "ES" gives the same anatomy at its two phases.
        config: anatomy parameters (see :func:`load_anatomy_config`); default the packaged file.
    Returns:
        :class:`PhantomCase` with arrays of shape (n_slices, size, size).
    """
    if phase not in (None, "ED", "ES"):
        raise ValueError(f"phase must be 'ED', 'ES' or None, got {phase!r}")
    if not isinstance(size, (int, np.integer)) or size < 16:
        raise ValueError(f"size must be an integer >= 16 pixels, got {size!r}")
    cfg = _default_config() if config is None else config
    table = tissue_table(field)
    p = _draw_parameters(rng, cfg)
    es = p["es"] if phase is None else phase == "ES"
    n = p["n_slices"]
    fov = float(cfg["geometry"]["fov_mm"])
    dz = float(cfg["geometry"]["slice_spacing_mm"])
    f = int(cfg["geometry"]["supersample"])
    dxy = fov / size

    # sub-pixel grid in the image frame, mapped into the anatomy frame (pose + smooth warp)
    g = ((np.arange(size * f, dtype=np.float32) + 0.5) * (dxy / f) - fov / 2).astype(np.float32)
    gx, gy = np.meshgrid(g, g)
    cr, sr = np.float32(np.cos(p["rotation"])), np.float32(np.sin(p["rotation"]))
    ux, uy = gx - np.float32(p["shift"][0]), gy - np.float32(p["shift"][1])
    ax_, ay_ = cr * ux + sr * uy, -sr * ux + cr * uy

    margin = sum(float(np.abs(amps).sum()) for _wave, amps in p["warp"])
    frame = _Frame(g, float(cr), float(sr), (float(p["shift"][0]), float(p["shift"][1])), margin)
    cls = np.empty((n, size * f, size * f), dtype=np.uint8)
    for z in range(n):
        zmm = np.float32(z * dz)
        wx = ax_ + _warp(p["warp"][0], ax_, ay_, zmm)
        wy = ay_ + _warp(p["warp"][1], ax_, ay_, zmm)
        s = z / (n - 1) if n > 1 else 0.0
        cls[z] = _paint_slice(wx, wy, s, es, p, z, frame)

    values, cls_vals, cls_tex = _case_tissue_values(p, cfg, table)
    m0, t1, t2, amp = _partial_volume(cls, cls_vals, cls_tex, size, f)
    # smooth within-tissue texture on the pixel grid
    pc = ((np.arange(size, dtype=np.float32) + 0.5) * dxy - fov / 2).astype(np.float32)
    zc = np.arange(n, dtype=np.float64) * dz
    tex = [wave_field(vec, ph, pc, pc, zc) for vec, ph in p["texture"]]
    m0 = np.maximum(m0 + amp[0] * tex[0], 0.0).astype(np.float32)
    t1 = np.maximum(t1 + amp[1] * tex[1], 1.0).astype(np.float32)
    t2 = np.maximum(t2 + amp[2] * tex[2], 1.0).astype(np.float32)

    c0 = f // 2
    tissue = np.ascontiguousarray(cls[:, c0::f, c0::f])
    labels = _LABEL_OF_CLASS[tissue]
    vox_ml = dxy * dxy * dz / 1000.0
    meta = {
        "phase": "ES" if es else "ED",
        "n_slices": n,
        "field": field,
        "fov_mm": fov,
        "size": int(size),
        "lv_cavity_ml": round(float((labels == 3).sum() * vox_ml), 2),
        "rv_cavity_ml": round(float((labels == 1).sum() * vox_ml), 2),
        "myocardium_ml": round(float((labels == 2).sum() * vox_ml), 2),
        "tissue_values": {k: [round(float(x), 4) for x in v] for k, v in values.items()},
        "classes": [c.name for c in TISSUE_CLASSES],
    }
    return PhantomCase(m0=m0, t1=t1, t2=t2, labels=labels, spacing_zyx_mm=(dz, dxy, dxy), tissue=tissue,
                       meta=meta)


def _case_tissue_values(p: dict, cfg: dict, table) -> tuple[dict, np.ndarray, np.ndarray]:
    """Per-case tissue values (table mean + clipped spread; M0, T1 ms, T2 ms) by tissue name, and per tissue
    class the values (C, 3) and texture amplitudes (C, 3)."""
    tx = cfg["texture"]
    clip = float(tx["case_draw_clip_sd"])
    values, tex_sd = {}, {}
    for ti, name in enumerate(TISSUES):
        props = table[name]
        zs = np.clip(p["tissue_z"][ti], -clip, clip)
        means = np.array([props.m0[0], props.t1[0], props.t2[0]])
        sds = np.array([props.m0[1], props.t1[1], props.t2[1]])
        v = means + sds * zs
        v[0] = max(v[0], 0.0)
        v[1:] = np.maximum(v[1:], 1.0)
        values[name] = v
        tex_sd[name] = float(tx["sd_fraction"]) * sds
    cls_vals = np.array([values[c.tissue] for c in TISSUE_CLASSES], dtype=np.float32)   # (C, 3)
    cls_tex = np.array([tex_sd[c.tissue] for c in TISSUE_CLASSES], dtype=np.float32)    # (C, 3)

    return values, cls_vals, cls_tex


def _partial_volume(cls: np.ndarray, cls_vals: np.ndarray, cls_tex: np.ndarray, size: int, f: int):
    """Pixel maps of the supersampled class grid ``cls`` (n, size f, size f): class fractions per pixel (one
    bincount), M0 averaged and T1/T2 averaged weighted by M0 (what the signal of a mixed pixel sees), and the
    texture amplitudes. Returns m0, t1, t2 (n, size, size) and the three amplitude maps."""
    n = cls.shape[0]
    n_cls = len(TISSUE_CLASSES)
    sub = np.arange(size * f) // f
    pix = (sub[:, None] * size + sub[None, :]).astype(np.int64)
    codes = ((np.arange(n, dtype=np.int64)[:, None, None] * size * size + pix) * n_cls + cls).ravel()
    frac = np.bincount(codes, minlength=n * size * size * n_cls).reshape(n, size, size, n_cls)
    frac = frac.astype(np.float32) / np.float32(f * f)
    m0 = frac @ cls_vals[:, 0]
    has = m0 > 1e-4
    safe = np.maximum(m0, 1e-4)
    t1 = np.where(has, (frac @ (cls_vals[:, 0] * cls_vals[:, 1])) / safe, frac @ cls_vals[:, 1])
    t2 = np.where(has, (frac @ (cls_vals[:, 0] * cls_vals[:, 2])) / safe, frac @ cls_vals[:, 2])
    amp = [frac @ cls_tex[:, k] for k in range(3)]

    return m0, t1, t2, amp


def _warp(spec, x: np.ndarray, y: np.ndarray, zmm: np.float32) -> np.ndarray:
    """Displacement (mm) along one axis: sum of plane waves with per-wave amplitudes."""
    (vec, phase), amps = spec
    out = np.zeros_like(x)
    for k, ph, a in zip(vec, phase, amps):
        out += np.float32(a) * np.sin(np.float32(k[0]) * x + np.float32(k[1]) * y + np.float32(k[2] * zmm + ph))
    return out
