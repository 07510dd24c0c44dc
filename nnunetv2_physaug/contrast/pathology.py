"""Myocardial tissue realism of a render: simulated infarct scar, microvascular obstruction, edema, and
partial-volume / heterogeneous Gd uptake instead of label-shaped concentration steps.

Why: the tissue maps of a healthy-looking bSSFP image hold no pathology, and the label-aware Gd model
paints one concentration per label, so LGE-type renders show a perfectly nulled, label-shaped ring.
Real LGE of infarct patients shows bright scar (sub-endocardial to transmural, in one coronary
territory, sometimes with a dark microvascular-obstruction core), uneven nulling and soft borders;
T2-weighted images show edema (raised T2). A network trained on such renders learns to call all of
it myocardium. The label is never changed: scar and edema *are* myocardium.

Geometry, per 2D slice of the rendered region (leading axes are independent slices):

* the LV centre is the centroid of the LV-cavity label; the slice is skipped without LV or myocardium;
* a coronary *territory* is an angular sector around that centre (centre angle uniform, width drawn
  in degrees);
* *transmural position* of a myocardial pixel is ``d_endo / (d_endo + d_epi)`` with d the chessboard
  distance (in pixels, by repeated 3x3 dilation) to the LV cavity and to non-myocardium tissue:
  0 at the endocardium, ~1 at the epicardium. Infarcts grow from the endocardium (wavefront), so
  scar = territory & position <= transmurality; MVO = the sub-endocardial core of the scar.

Physics: scar is extracellular space, so its post-contrast Gd concentration approaches that of blood
(``conc_blood_factor`` x the blood concentration); the MVO core is not reached by Gd (``conc_myocardium
_factor`` x the normal myocardial concentration). Edema raises T2 and, less, T1 (free water): both
multiplied by drawn factors in a territory that contains the scar when there is one.
Units: angles in degrees, distances in pixels of the rendered grid, factors unitless.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F

from .families import ParamSpec
from .masks import chessboard_distance, dilate_3x3

__all__ = ["PATHOLOGY", "PathologyMasks", "draw_pathology", "apply_edema", "soften_concentration"]

#: Protocol schema of each pathology entry (every entry also has ``probability``).
PATHOLOGY: dict[str, dict[str, ParamSpec]] = {
    "scar": {"sector_deg": ParamSpec("angular width of the infarct territory in degrees", 0.0, 360.0),
             "transmurality": ParamSpec("scar depth from the endocardium as a fraction of the wall", 0.0, 1.0),
             "conc_blood_factor": ParamSpec("scar Gd concentration / blood Gd concentration", 0.0, 5.0)},
    "mvo": {"depth_fraction": ParamSpec("MVO core depth as a fraction of the scar depth", 0.0, 1.0),
            "conc_myocardium_factor": ParamSpec("MVO Gd concentration / normal myocardial concentration", 0.0, 1.0)},
    "edema": {"sector_deg": ParamSpec("angular width of the edematous territory in degrees", 0.0, 360.0),
              "t2_factor": ParamSpec("edema T2 / native T2", 1.0, 5.0),
              "t1_factor": ParamSpec("edema T1 / native T1", 1.0, 3.0)},
    "uptake": {"heterogeneity": ParamSpec("smooth multiplicative variation of Gd uptake (+- fraction)", 0.0, 0.9),
               "grid": ParamSpec("control points per in-plane axis of the uptake field", 2.0, 64.0),
               "blur_px": ParamSpec("Gaussian sigma (pixels) of the concentration map: partial volume", 0.0, 10.0)},
}
INTEGER_PARAMS = frozenset({"grid"})


@dataclass
class PathologyMasks:
    """Boolean masks (shape of the rendered maps) of the simulated pathology of one render."""

    scar: torch.Tensor
    mvo: torch.Tensor
    edema: torch.Tensor
    params: dict


def _angles(lv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Angle (degrees, [0, 360)) of every pixel about the LV centroid of its slice, and which slices have LV."""
    n, h, w = lv.shape
    yy = torch.arange(h, dtype=torch.float32)[None, :, None].expand(n, h, w)
    xx = torch.arange(w, dtype=torch.float32)[None, None, :].expand(n, h, w)
    count = lv.sum(dim=(1, 2)).float()
    has = count > 0
    cy = (yy * lv).sum(dim=(1, 2)) / count.clamp(min=1)
    cx = (xx * lv).sum(dim=(1, 2)) / count.clamp(min=1)
    ang = torch.rad2deg(torch.atan2(yy - cy[:, None, None], xx - cx[:, None, None])) % 360.0
    return ang, has


def _in_sector(ang: torch.Tensor, centre: float, width: float) -> torch.Tensor:
    diff = (ang - centre + 180.0) % 360.0 - 180.0
    return diff.abs() <= width / 2.0


def _u(rng: np.random.Generator, r: tuple[float, float]) -> float:
    return float(rng.uniform(r[0], r[1])) if r[1] > r[0] else float(r[0])


def draw_pathology(spec: dict, labels: torch.Tensor, lv_values: tuple[int, ...], myo_values: tuple[int, ...],
                   rng: np.random.Generator, params: dict) -> Optional[PathologyMasks]:
    """Draw scar / MVO / edema masks on ``labels`` (shape (..., Y, X)); record the draws in ``params``.

    ``spec`` maps entry name -> ImperfectionSpec-like objects (``probability``, ``params``). Returns
    None when nothing was drawn or the region holds no LV cavity and myocardium.
    """
    want = {k: (k in spec and rng.random() < spec[k].probability) for k in ("scar", "mvo", "edema")}
    if not (want["scar"] or want["edema"]):
        return None
    shape = labels.shape
    lab = labels.reshape(-1, *shape[-2:])
    lv = torch.isin(lab, torch.tensor(lv_values, dtype=lab.dtype))
    myo = torch.isin(lab, torch.tensor(myo_values, dtype=lab.dtype))
    if not bool(lv.any()) or not bool(myo.any()):
        return None
    ang, has_lv = _angles(lv)
    myo &= has_lv[:, None, None]
    d_endo = chessboard_distance(lv, myo, 12)
    d_epi = chessboard_distance(~(myo | lv), myo, 12)
    position = d_endo / (d_endo + d_epi).clamp(min=1e-6)  # 0 endocardium ... 1 epicardium

    scar = torch.zeros_like(myo)
    mvo = torch.zeros_like(myo)
    centre = float(rng.uniform(0.0, 360.0))
    if want["scar"]:
        s = spec["scar"].params
        width = _u(rng, s["sector_deg"])
        trans = _u(rng, s["transmurality"])
        params.update({"scar_centre_deg": centre, "scar_sector_deg": width, "scar_transmurality": trans,
                       "scar_conc_blood_factor": _u(rng, s["conc_blood_factor"])})
        # d_endo counts from the first myocardial pixel (1); a wall of 1-2 pixels is all "endocardium"
        scar = myo & _in_sector(ang, centre, width) & ((position <= trans) | (d_endo <= 1))
        if want["mvo"] and bool(scar.any()):
            m = spec["mvo"].params
            fraction = _u(rng, m["depth_fraction"])
            depth = fraction * trans
            params.update({"mvo_depth_fraction": fraction,
                           "mvo_conc_myocardium_factor": _u(rng, m["conc_myocardium_factor"])})
            mvo = scar & (position <= depth) & ~dilate_3x3(~scar & ~lv)  # a core: not at the scar's lateral edges
    edema = torch.zeros_like(myo)
    if want["edema"]:
        e = spec["edema"].params
        width = max(_u(rng, e["sector_deg"]), params.get("scar_sector_deg", 0.0))
        # the area at risk surrounds the infarct: same territory centre when there is a scar
        e_centre = centre if want["scar"] else float(rng.uniform(0.0, 360.0))
        params.update({"edema_centre_deg": e_centre, "edema_sector_deg": width,
                       "edema_t2_factor": _u(rng, e["t2_factor"]), "edema_t1_factor": _u(rng, e["t1_factor"])})
        edema = myo & _in_sector(ang, e_centre, width)
    return PathologyMasks(scar.reshape(shape), mvo.reshape(shape), edema.reshape(shape), params)


def apply_edema(t1: torch.Tensor, t2: torch.Tensor, masks: Optional[PathologyMasks]) -> None:
    """Raise T1 and T2 in the edema mask (in place)."""
    if masks is None or not bool(masks.edema.any()):
        return
    t1[masks.edema] *= masks.params["edema_t1_factor"]
    t2[masks.edema] *= masks.params["edema_t2_factor"]


def _gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    radius = max(1, int(math.ceil(2.5 * sigma)))
    k = torch.exp(-0.5 * (torch.arange(-radius, radius + 1, dtype=torch.float32) / sigma) ** 2)
    k = (k / k.sum()).to(x.device)
    flat = x.reshape(-1, 1, *x.shape[-2:])
    flat = F.conv2d(F.pad(flat, (radius, radius, 0, 0), mode="replicate"), k.view(1, 1, 1, -1))
    flat = F.conv2d(F.pad(flat, (0, 0, radius, radius), mode="replicate"), k.view(1, 1, -1, 1))
    return flat.reshape(x.shape)


def soften_concentration(conc: torch.Tensor, uptake: Optional[dict], rng: np.random.Generator, params: dict,
                         field_fn) -> torch.Tensor:
    """Heterogeneous uptake (smooth multiplicative field) and partial volume (Gaussian blur) of a
    Gd concentration map (mmol/L, shape (..., Y, X)); ``uptake`` holds the drawn-from ranges."""
    if uptake is None:
        return conc
    h = _u(rng, uptake["heterogeneity"])
    if h > 0:
        grid = int(rng.integers(int(uptake["grid"][0]), int(uptake["grid"][1]) + 1))
        conc = conc * field_fn(rng, tuple(conc.shape[-2:]), grid, (1.0 - h, 1.0 + h))
        params["uptake_heterogeneity"] = h
    sigma = _u(rng, uptake["blur_px"])
    if sigma > 0.05:
        conc = _gaussian_blur(conc, sigma)
        params["uptake_blur_px"] = sigma
    return conc
