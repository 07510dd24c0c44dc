"""How realistic are the renders? Blood / normal-myocardium intensity ratios of renders beside real images.

One number per image slice: ``mean(LV cavity) / mean(normal myocardium)`` (pixels of one slice with
at least :data:`MIN_PIXELS` of each). On real images normal myocardium is the myocardium label minus
the expert's edema and scar; on renders it is the myocardium label minus the render's own simulated
pathology. LGE of infarct patients gives ratios of ~1.7-3.9 (blood bright, normal myocardium nulled
but not black), T2-weighted black blood ~0.3-1 (dark blood), bSSFP ~2.3. Also: scar / normal
myocardium on real LGE (expert scar) and on renders (simulated scar).

Signed (PSIR) renders are compared as rendered (signed means); a slice whose normal myocardium has a
negative mean (not yet through its null) has no finite ratio and counts as outside the real range.

Coverage of a family = fraction of its render ratios inside the real sequence's 10-90 % range.
Also per slice: endocardial rim (normal myocardium touching blood) / interior normal myocardium, which
shows partial-volume artefacts at the blood border (real T2-weighted black blood: ~1.05); the endocardial
edge's position (pixels from the LV label border where the intensity is half-way between deep LV blood
and interior myocardium; negative: inside the label), which shows whether the images' cavity is as large
as its label (real bSSFP: ~-0.1, LGE ~-0.5, T2-weighted black blood ~-2.5 at 1.5 mm); and cavity tissue
(LV-labelled pixels darker than the cine's blood-myocardium midpoint: papillary muscles, trabeculae) /
normal myocardium, which shows whether a render treats the tissue a cavity label holds as blood (black in
black-blood TSE, bright in LGE) or as tissue, as real images do.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from ..cli.argtypes import seed as seed_type
from ..contrast import ContrastRenderer, load_protocol, protocol_with_settings
from ..conversion.myops import image_folder
from ..maps.store import read_case_maps

MIN_PIXELS = 20
LV, MYO = 3, 2
#: per-slice ratios (:func:`slice_ratios`)
RATIOS = ("blood", "scar", "rim", "cavity", "edge")
#: the real sequence each render family is compared with
FAMILY_TO_REAL = {"lge": "LGE", "psir": "LGE", "tse": "T2", "bssfp": "C0"}


def _nib_array(path: Path) -> np.ndarray:
    import nibabel as nib
    return np.asarray(nib.load(str(path)).dataobj).astype(np.float32)


def interior_myocardium(lab: np.ndarray) -> np.ndarray:
    """Myocardium pixels of one 2D slice that touch no other label (4-neighbourhood): the reference of
    :func:`rim_ratio` and :func:`edge_profile`."""
    from scipy.ndimage import binary_dilation

    myo = lab == MYO
    return myo & ~binary_dilation(~myo)


def rim_ratio(img: np.ndarray, lab: np.ndarray, normal: Optional[np.ndarray] = None) -> Optional[float]:
    """Mean of the endocardial rim (myocardium pixels touching blood) / mean of the interior myocardium
    (not touching any other label) of one 2D slice, both over ``normal`` myocardium (bool mask; default the
    whole label): on real LGE the expert's scar, sub-endocardial first, would otherwise make the rim bright.
    None when either has fewer than MIN_PIXELS."""
    from scipy.ndimage import binary_dilation

    rim = (lab == MYO) & binary_dilation(np.isin(lab, (1, LV)))
    interior = interior_myocardium(lab)
    if normal is not None:
        rim, interior = rim & normal, interior & normal
    if rim.sum() < MIN_PIXELS or interior.sum() < MIN_PIXELS or img[interior].mean() <= 0:
        return None
    return float(img[rim].mean() / img[interior].mean())


#: distances (pixels) from the LV label border of the endocardial edge profile (:func:`edge_profile`):
#: negative inside the LV label, positive in the myocardium
EDGE_DISTANCES = tuple(range(-4, 5))


def edge_profile(img: np.ndarray, lab: np.ndarray, normal: np.ndarray) -> Optional[np.ndarray]:
    """Endocardial edge profile of one 2D slice: mean intensity at each of :data:`EDGE_DISTANCES` (pixels,
    the rounded Euclidean distance to the LV label border: -1 the LV pixels touching it, +1 the myocardium
    pixels next to the LV), scaled so that the interior normal myocardium (touching no other label, as in
    :func:`rim_ratio`) is 0 and the deep LV blood (<= -4) is 1; NaN at 0 (no pixel) and where a distance
    has fewer than 3 pixels. None when the slice lacks either reference (fewer than 5 pixels) or they do not
    differ."""
    from scipy.ndimage import distance_transform_edt

    lv = lab == LV
    if lv.sum() < MIN_PIXELS or normal.sum() < MIN_PIXELS:
        return None
    d = np.where(lv, -np.rint(distance_transform_edt(lv)), np.rint(distance_transform_edt(~lv)))
    deep, interior = lv & (d <= -4), normal & interior_myocardium(lab)
    if deep.sum() < 5 or interior.sum() < 5:
        return None
    hi, lo = float(img[deep].mean()), float(img[interior].mean())
    if abs(hi - lo) <= 1e-6 * max(abs(hi), abs(lo), 1e-12):
        return None
    out = np.full(len(EDGE_DISTANCES), np.nan)
    for i, k in enumerate(EDGE_DISTANCES):
        sel = (lv & (d == k)) if k < 0 else (normal & (d == k))
        if k != 0 and sel.sum() >= 3:
            out[i] = (float(img[sel].mean()) - lo) / (hi - lo)
    return out


def edge_position(profile: np.ndarray) -> Optional[float]:
    """Where the edge profile (:func:`edge_profile`) first falls below half-way from the LV side, in pixels
    from the LV label border (linear between the two distances around it; negative: the intensity edge lies
    inside the LV label, the cavity looks smaller than labelled). None without such a crossing."""
    pts = [(k, v) for k, v in zip(EDGE_DISTANCES, profile) if np.isfinite(v)]
    for (k0, v0), (k1, v1) in zip(pts, pts[1:]):
        if v0 >= 0.5 > v1:
            return float(k0 + (v0 - 0.5) / (v0 - v1) * (k1 - k0))
    return None


def _empty_ratios() -> dict[str, list]:
    """The per-slice ratio lists :func:`slice_ratios` fills, by name."""
    return {key: [] for key in RATIOS}


def cavity_tissue_mask(cine: np.ndarray, lab: np.ndarray) -> np.ndarray:
    """Pixels of the LV cavity label darker in the bSSFP cine than the midpoint of the slice's LV and
    myocardium medians: papillary muscles and trabeculae (and blood mixed with them) in one 2D slice."""
    lv, myo = lab == LV, lab == MYO
    if not lv.any() or not myo.any():
        return np.zeros_like(lv)
    return lv & (cine < 0.5 * (np.median(cine[lv]) + np.median(cine[myo])))


def slice_ratios(image: np.ndarray, anatomy: np.ndarray, pathology: Optional[np.ndarray],
                 cine: Optional[np.ndarray] = None) -> dict[str, list]:
    """Per-slice (last axis) ratios of a 3D image (X, Y, Z): ``blood`` (LV / normal myocardium), ``scar``
    (scar / normal myocardium), ``rim`` (:func:`rim_ratio` of normal myocardium), ``edge`` (the endocardial
    edge's position in pixels, :func:`edge_position`) and, with the bSSFP ``cine`` of the same
    grid, ``cavity`` (tissue inside the LV label, :func:`cavity_tissue_mask`, / normal myocardium);
    ``pathology`` 1 edema, 2 scar (None: all myocardium is normal)."""
    out = _empty_ratios()
    for k in range(image.shape[-1]):
        img, lab = image[..., k], anatomy[..., k]
        path = pathology[..., k] if pathology is not None else np.zeros_like(lab)
        normal = (lab == MYO) & (path == 0)
        r = rim_ratio(img, lab, normal)
        if r is not None:
            out["rim"].append(r)
        prof = edge_profile(img, lab, normal)
        edge = edge_position(prof) if prof is not None else None
        if edge is not None:
            out["edge"].append(edge)
        lv = lab == LV
        if normal.sum() < MIN_PIXELS or lv.sum() < MIN_PIXELS:
            continue
        myo_mean = float(img[normal].mean())
        if myo_mean <= 0:  # signed (PSIR) myocardium below its null: no finite ratio, never "inside"
            out["blood"].append(float("inf"))
            continue
        out["blood"].append(float(img[lv].mean()) / myo_mean)
        scar = path == 2
        if scar.sum() >= MIN_PIXELS:
            out["scar"].append(float(img[scar].mean()) / myo_mean)
        if cine is not None:
            cavity = cavity_tissue_mask(cine[..., k], lab)
            if cavity.sum() >= MIN_PIXELS:
                out["cavity"].append(float(img[cavity].mean()) / myo_mean)
    return out


def real_ratios(dataset: Path, sequence: str, cases: Sequence[str]) -> dict:
    """Ratios of a converted MyoPS dataset's training patients (``imagesTr[_SEQ]``, ``labelsTr``,
    ``labelsPathologyTr``; the cavity tissue from the bSSFP ``imagesTr``)."""
    folder = dataset / image_folder("train", sequence)
    out = _empty_ratios()
    for case in cases:
        r = slice_ratios(_nib_array(folder / f"{case}_0000.nii.gz"), _nib_array(dataset / "labelsTr" / f"{case}.nii.gz"),
                         _nib_array(dataset / "labelsPathologyTr" / f"{case}.nii.gz"),
                         _nib_array(dataset / image_folder("train", "C0") / f"{case}_0000.nii.gz"))
        for key in out:
            out[key] += r[key]
    return out


def render_ratios(dataset: Path, maps_dir: Path, cases: Sequence[str], family: str, protocol, n: int,
                  seed: int) -> dict:
    """Ratios of ``n`` renders of ``family`` on random (case, slice) of the training maps; each render
    draws its own pathology (masked out of normal myocardium) like training does."""
    import torch

    proto = load_protocol(protocol) if isinstance(protocol, str) else protocol
    renderer = ContrastRenderer(proto)
    rng = np.random.default_rng(seed)
    out = _empty_ratios()
    cache: dict = {}
    tries = 0
    while len(out["blood"]) < n and tries < 20 * n:
        tries += 1
        case = cases[int(rng.integers(len(cases)))]
        if case not in cache:
            maps, _ = read_case_maps(maps_dir, case)
            cache[case] = (maps[..., 0], _nib_array(dataset / "labelsTr" / f"{case}.nii.gz").astype(np.int64),
                           _nib_array(dataset / image_folder("train", "C0") / f"{case}_0000.nii.gz"))
        maps, lab3, cine3 = cache[case]
        z = int(rng.integers(lab3.shape[-1]))
        lab = lab3[..., z]
        if (lab == MYO).sum() < MIN_PIXELS or (lab == LV).sum() < MIN_PIXELS:
            continue
        m0, t1, t2 = (np.ascontiguousarray(maps[i, :, :, z]) for i in range(3))
        lab_t = torch.from_numpy(lab)
        img, params = renderer.render(m0, t1, t2, rng, labels=lab_t, valid=lab_t >= 0, family=family)
        img = img.numpy()
        path = np.zeros_like(lab)
        masks = renderer.last_pathology
        if masks is not None:
            path[(masks.edema | masks.scar).numpy()] = 1
            path[masks.scar.numpy()] = 2
            path[masks.mvo.numpy()] = 3  # neither normal nor enhancing scar
        r = slice_ratios(img[..., None], lab[..., None], path[..., None], cine3[..., z, None])
        for key in out:
            out[key] += r[key]
    return out


def summarise(values: Sequence[float]) -> tuple[float, float, float]:
    """Median, 10th and 90th percentile (an infinite ratio, PSIR myocardium below its null, stays inf)."""
    if not len(values):
        return float("nan"), float("nan"), float("nan")
    finite = np.minimum(np.asarray(values, dtype=float), 1e12)  # inf - inf would make the interpolation nan
    return tuple(float(x) if x < 1e12 else float("inf") for x in np.percentile(finite, (50, 10, 90)))  # type: ignore


def _edge_summary(edges: Sequence[float]) -> dict:
    """Median and 10-90 % range of the per-slice endocardial edge positions (pixels), and their count."""
    med, p10, p90 = summarise(edges)
    return {"edge_median": med, "edge_p10": p10, "edge_p90": p90, "n_edge_slices": len(edges)}


def check_realism(dataset: Path, cases: Sequence[str], protocol: str = "wide", n: int = 100, seed: int = 0,
                  families: Sequence[str] = ("lge", "psir", "tse", "bssfp"), settings: Sequence[str] = ()) -> dict:
    """Real ratios per sequence and render ratios per family, with coverage; a JSON-ready dict."""
    maps_dir = dataset / "tissueMapsTr"
    real = {s: real_ratios(dataset, s, cases) for s in sorted(set(FAMILY_TO_REAL[f] for f in families))}
    proto = protocol_with_settings(protocol, settings)
    out = {"protocol": proto.name, "cases": list(cases), "n_renders": n, "seed": seed, "real": {}, "renders": {}}
    for s, r in real.items():
        med, p10, p90 = summarise(r["blood"])
        out["real"][s] = {"n_slices": len(r["blood"]), "median": med, "p10": p10, "p90": p90,
                          "scar_median": summarise(r["scar"])[0], "n_scar_slices": len(r["scar"]),
                          "rim_median": summarise(r["rim"])[0], "cavity_median": summarise(r["cavity"])[0],
                          **_edge_summary(r["edge"]),
                          "n_cavity_slices": len(r["cavity"])}
    for i, fam in enumerate(families):
        r = render_ratios(dataset, maps_dir, list(cases), fam, proto, n, seed + i)
        ref = out["real"][FAMILY_TO_REAL[fam]]
        vals = np.asarray(r["blood"])
        cover = float(((vals >= ref["p10"]) & (vals <= ref["p90"])).mean()) if vals.size else float("nan")
        med, p10, p90 = summarise(vals)
        out["renders"][fam] = {"compared_with": FAMILY_TO_REAL[fam], "n": int(vals.size), "median": med, "p10": p10,
                               "p90": p90, "coverage": cover, "scar_median": summarise(r["scar"])[0],
                               "n_scar_slices": len(r["scar"]), "rim_median": summarise(r["rim"])[0],
                               "cavity_median": summarise(r["cavity"])[0], "n_cavity_slices": len(r["cavity"]),
                               **_edge_summary(r["edge"])}
    return out


def polarity(dataset: Path, cases: Sequence[str], protocol: str = "wide", n: int = 100, seed: int = 0,
             settings: Sequence[str] = ()) -> dict:
    """How often blood is darker than normal myocardium (blood / normal-myo ratio < 1, "dark blood"):
    per family of the protocol (``n`` renders each), weighted by the families' probabilities (share of
    renders) and by ``p_render`` (share of training loads; the unrendered loads are the bright-blood
    bSSFP); beside the share of dark-blood slices of real LGE, T2 and bSSFP. A JSON-ready dict."""
    proto = protocol_with_settings(protocol, settings)
    out: dict = {"protocol": proto.name, "n_renders": n, "seed": seed, "families": {}, "real": {}}
    for s in ("C0", "LGE", "T2"):
        vals = np.asarray(real_ratios(dataset, s, cases)["blood"])
        out["real"][s] = float((vals < 1.0).mean()) if vals.size else float("nan")
    maps_dir = dataset / "tissueMapsTr"
    share = 0.0
    for i, spec in enumerate(proto.families):
        if spec.family in out["families"] or spec.probability == 0.0:
            continue
        prob = math.fsum(f.probability for f in proto.families if f.family == spec.family)
        vals = np.asarray(render_ratios(dataset, maps_dir, list(cases), spec.family, proto, n, seed + i)["blood"])
        dark = float((vals < 1.0).mean()) if vals.size else float("nan")
        out["families"][spec.family] = {"probability": prob, "n": int(vals.size), "dark_blood": dark}
        share += prob * dark
    out["dark_blood_renders"] = share
    out["dark_blood_loads"] = share * proto.p_render
    return out


def format_polarity(result: dict) -> str:
    lines = [f"dark blood (LV blood / normal myocardium < 1) per slice; protocol {result['protocol']!r}", "",
             "| images | probability | dark-blood slices |", "|---|---|---|"]
    for s, v in result["real"].items():
        lines.append(f"| real {s} | | {v:.0%} |")
    for fam, r in result["families"].items():
        lines.append(f"| `{fam}` renders | {r['probability']:.3f} | {r['dark_blood']:.0%} |")
    lines.append(f"| all renders (weighted) | 1 | {result['dark_blood_renders']:.0%} |")
    lines.append(f"| training loads (p_render) | | {result['dark_blood_loads']:.0%} |")
    return "\n".join(lines) + "\n"


def _edge_cell(r: dict) -> str:
    return f"{r['edge_median']:+.2f} ({r['edge_p10']:+.2f} to {r['edge_p90']:+.2f})"


def format_report(result: dict) -> str:
    lines = [f"blood (LV) / normal-myocardium mean-intensity ratio per slice; protocol {result['protocol']!r}, "
             f"{len(result['cases'])} patients", "",
             "| images | slices | median | 10-90 % | inside real 10-90 % | scar / normal myo (median) | "
             "endocardial rim / interior myo (median) | cavity tissue / normal myo (median) | "
             "endocardial edge, px from the LV label (median, 10-90 %) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for s, r in result["real"].items():
        lines.append(f"| real {s} | {r['n_slices']} | {r['median']:.2f} | {r['p10']:.2f}-{r['p90']:.2f} | | "
                     f"{r['scar_median']:.2f} | {r['rim_median']:.2f} | {r['cavity_median']:.2f} | {_edge_cell(r)} |")
    for fam, r in result["renders"].items():
        lines.append(f"| `{fam}` renders (vs real {r['compared_with']}) | {r['n']} | {r['median']:.2f} | "
                     f"{r['p10']:.2f}-{r['p90']:.2f} | {r['coverage']:.0%} | {r['scar_median']:.2f} | "
                     f"{r['rim_median']:.2f} | {r['cavity_median']:.2f} | {_edge_cell(r)} |")
    return "\n".join(lines) + "\n"


def summary_line(result: dict) -> str:
    parts = [f"{fam}_coverage={r['coverage']:.2f} {fam}_median={r['median']:.2f}" for fam, r in result["renders"].items()]
    parts += [f"real_{s.lower()}_median={r['median']:.2f}" for s, r in result["real"].items()]
    return " ".join(parts)


def main(argv=None) -> None:
    from ..cli.contract import run_reporting

    run_reporting("scripts/check_realism.py", lambda: _main(argv), (ValueError, RuntimeError, KeyError))


def _main(argv=None) -> None:
    import argparse

    p = argparse.ArgumentParser(prog="scripts/check_realism.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-d", "--dataset", type=Path, required=True,
                   help="converted MyoPS raw dataset folder (Dataset913_MyoPS) with tissueMapsTr/ from physaug-reverse")
    p.add_argument("--cases", default="3001-3025", help="patients to use (development patients only; default 3001-3025)")
    p.add_argument("--protocol", default="wide", help="preset name or protocol file (default wide)")
    p.add_argument("-n", type=int, default=100, help="renders per family (default 100)")
    p.add_argument("--seed", type=seed_type, default=0)
    p.add_argument("--families", nargs="+", default=["lge", "psir", "tse", "bssfp"], choices=sorted(FAMILY_TO_REAL))
    p.add_argument("--set", action="append", default=[], metavar="FAMILY.PARAM=VALUE",
                   help="change one protocol parameter (repeatable), e.g. tse.blood_partial_volume=1 or "
                        "lge.readout_pulses=[0,0]")
    p.add_argument("--polarity", action="store_true",
                   help="instead: how often blood is darker than myocardium, per family of the protocol "
                        "(weighted by their probabilities and p_render) and on real C0, LGE and T2")
    p.add_argument("--json", type=Path, default=None, help="also write the numbers as JSON here")
    args = p.parse_args(argv)
    from ..conversion.myops import parse_case_range
    cases = [f"Case{n}" for n in parse_case_range(args.cases)]
    if args.polarity:
        result = polarity(args.dataset, cases, args.protocol, args.n, args.seed, args.set)
        print(format_polarity(result))
        if args.json:
            args.json.write_text(json.dumps(result, indent=2))
        print(f"dark_blood_renders={result['dark_blood_renders']:.3f} dark_blood_loads={result['dark_blood_loads']:.3f} "
              f"real_t2_dark={result['real']['T2']:.3f}")
        return
    result = check_realism(args.dataset, cases, args.protocol, args.n, args.seed, args.families, args.set)
    print(format_report(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    print(summary_line(result))
