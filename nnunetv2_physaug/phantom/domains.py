"""Imaging domains of the phantom: load ``domains.yaml`` and render a case in a domain.

A domain is one clinical sequence (signal equation from :mod:`nnunetv2_physaug.physics` with fixed
or ranged parameters), optional label-aware contrast-agent uptake (per tissue class, plus an LGE
scar), optional flow voids, and scanner effects (transmit B1 and receive-bias fields, Rician noise,
arbitrary gain). Rendering is deterministic for a numpy Generator state.
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np
import torch
from scipy import ndimage

from .. import physics
from ..physics.tissues import TISSUES
from .anatomy import CLASS_INDEX, TISSUE_CLASSES, PhantomCase
from .fields import unit_peak_field
from .params import PhantomConfigError, check_spec, draw, draw_int, load_yaml

__all__ = ["Domain", "load_domains", "render_domain", "SEQUENCE_PARAMETERS", "lge_null_ti_ms"]

# Numeric parameters of each sequence family (times ms, angles degrees); string-valued ones apart.
SEQUENCE_PARAMETERS: dict[str, tuple[str, ...]] = {
    "bssfp": ("flip_deg", "tr_ms"),
    "spoiled_gre": ("flip_deg", "tr_ms", "te_ms"),
    "ir_gre": ("inversion_interval_ms", "ti_null_factor", "flip_deg", "te_ms"),
    "look_locker": ("flip_deg", "ti_ms"),
    "t2prep_bssfp": ("recovery_ms", "te_prep_ms", "flip_deg"),
    "sr_gre": ("ts_ms", "flip_deg", "te_ms"),
    "spin_echo": ("tr_ms", "te_ms"),
}
_STRING_PARAMETERS: dict[str, tuple[str, ...]] = {"ir_gre": ("null_class",)}
_SCANNER_KEYS = ("snr", "bias_amplitude", "b1_amplitude", "gain")
_SCAR_KEYS = ("probability", "gd_mmol", "transmurality", "arc_deg", "n_slices")


@dataclass(frozen=True)
class Domain:
    """One imaging domain (see ``domains.yaml``). Times ms, angles degrees, Gd mmol/L."""

    name: str
    role: str                 # "training" or "test"
    dataset: str              # nnU-Net dataset name part, e.g. "PhantomLGE"
    channel_name: str
    imitates: str
    sequence: str
    parameters: dict
    gd_mmol: dict
    r1: float
    scar: Optional[dict]
    flow_void: Optional[dict]
    scanner: dict


def _check_class_keys(keys, where: str) -> None:
    known = set(CLASS_INDEX) | set(TISSUES)
    for k in keys:
        if k not in known:
            raise PhantomConfigError(f"{where}: unknown tissue or class {k!r}; choose from {sorted(known)}")


def load_domains(path=None) -> dict[str, Domain]:
    """Load and validate the domains (default: the packaged ``domains.yaml``).

    Returns:
        domains by name, the training domain first, then the test domains in file order.
    """
    data, where = load_yaml(path, "domains.yaml")
    raw = data.get("domains")
    if not isinstance(raw, dict) or not raw:
        raise PhantomConfigError(f"{where}: missing or empty 'domains' mapping")
    training = data.get("training")
    if training not in raw:
        raise PhantomConfigError(f"{where}: 'training' must name one of the domains {list(raw)}, got {training!r}")
    out: dict[str, Domain] = {}
    datasets = set()
    for name in [training] + [n for n in raw if n != training]:
        d = raw[name]
        w = f"{where}: domains.{name}"
        if not isinstance(d, dict):
            raise PhantomConfigError(f"{w} must be a mapping")
        for key in ("dataset", "channel_name", "imitates", "sequence", "parameters", "scanner"):
            if key not in d:
                raise PhantomConfigError(f"{w}: missing key {key!r}")
        seq = d["sequence"]
        if seq not in SEQUENCE_PARAMETERS:
            raise PhantomConfigError(f"{w}: unknown sequence {seq!r}; choose from {sorted(SEQUENCE_PARAMETERS)}")
        ds = str(d["dataset"])
        if not ds.isidentifier() or ds in datasets:
            raise PhantomConfigError(f"{w}: dataset name {ds!r} must be a unique identifier (letters, digits, _)")
        datasets.add(ds)
        params = dict(d["parameters"])
        expected = set(SEQUENCE_PARAMETERS[seq]) | set(_STRING_PARAMETERS.get(seq, ()))
        if set(params) != expected:
            raise PhantomConfigError(f"{w}.parameters: sequence {seq!r} needs exactly {sorted(expected)}, "
                                     f"got {sorted(params)}")
        for k in SEQUENCE_PARAMETERS[seq]:
            check_spec(params[k], f"{w}.parameters.{k}", positive=True)
        if seq == "ir_gre" and params["null_class"] not in CLASS_INDEX:
            raise PhantomConfigError(f"{w}.parameters.null_class: unknown class {params['null_class']!r}")
        gd = dict(d.get("gd_mmol") or {})
        _check_class_keys(gd, f"{w}.gd_mmol")
        for k, v in gd.items():
            check_spec(v, f"{w}.gd_mmol.{k}")
            if min(v if isinstance(v, list) else [v]) < 0:
                raise PhantomConfigError(f"{w}.gd_mmol.{k}: concentrations must be >= 0")
        r1 = d.get("r1", 4.5)
        check_spec(r1, f"{w}.r1", positive=True)
        scar = d.get("scar")
        if scar is not None:
            if seq != "ir_gre" or not gd:
                raise PhantomConfigError(f"{w}.scar: a scar needs contrast agent (gd_mmol) and an ir_gre sequence")
            for k in _SCAR_KEYS:
                if k not in scar:
                    raise PhantomConfigError(f"{w}.scar: missing key {k!r}")
                check_spec(scar[k], f"{w}.scar.{k}")
        flow = d.get("flow_void")
        if flow is not None:
            if "classes" not in flow or "residual" not in flow:
                raise PhantomConfigError(f"{w}.flow_void needs 'classes' and 'residual'")
            _check_class_keys(flow["classes"], f"{w}.flow_void.classes")
            check_spec(flow["residual"], f"{w}.flow_void.residual")
        sc = dict(d["scanner"])
        for k in _SCANNER_KEYS:
            if k not in sc:
                raise PhantomConfigError(f"{w}.scanner: missing key {k!r}")
            check_spec(sc[k], f"{w}.scanner.{k}", positive=k in ("snr", "gain"))
        out[name] = Domain(name=name, role="training" if name == training else "test", dataset=ds,
                           channel_name=str(d["channel_name"]), imitates=str(d["imitates"]), sequence=seq,
                           parameters=params, gd_mmol=gd, r1=float(r1), scar=scar, flow_void=flow, scanner=sc)
    return out


# --------------------------------------------------------------------------------------------------
# helpers

def _class_values(spec: dict, rng: np.random.Generator) -> tuple[np.ndarray, dict]:
    """Per-class values from a mapping keyed by class or tissue names (class wins); one draw per key."""
    drawn = {k: draw(v, rng) for k, v in spec.items()}
    per_class = np.zeros(len(TISSUE_CLASSES), dtype=np.float64)
    for i, c in enumerate(TISSUE_CLASSES):
        if c.name in drawn:
            per_class[i] = drawn[c.name]
        elif c.tissue in drawn:
            per_class[i] = drawn[c.tissue]
    return per_class, drawn


def lge_null_ti_ms(t1_ms: float, inversion_interval_ms: float) -> float:
    """Inversion time (ms) that nulls a tissue of T1 ``t1_ms`` when inversions repeat every
    ``inversion_interval_ms``: solves ``1 - 2 exp(-TI/T1) + exp(-TR/T1) = 0``."""
    return -t1_ms * math.log((1.0 + math.exp(-inversion_interval_ms / t1_ms)) / 2.0)


def _scar_mask(case: PhantomCase, spec: dict, rng: np.random.Generator) -> tuple[np.ndarray, dict]:
    """A subendocardial-to-transmural scar patch in one angular sector over a run of slices."""
    present = rng.random() < float(spec["probability"])
    conc = draw(spec["gd_mmol"], rng)
    trans = draw(spec["transmurality"], rng)
    arc = math.radians(draw(spec["arc_deg"], rng))
    n_sl = draw_int(spec["n_slices"], rng)
    centre = rng.uniform(-math.pi, math.pi)
    u = rng.random()
    mask = np.zeros(case.labels.shape, dtype=bool)
    if not present:
        return mask, {"present": False}
    myo_cls, cav_labels = CLASS_INDEX["lv_myocardium"], case.labels == 3
    cand = [z for z in range(case.labels.shape[0]) if cav_labels[z].any() and (case.tissue[z] == myo_cls).any()]
    if not cand:
        return mask, {"present": False}
    k = min(n_sl, len(cand))
    start = min(int(u * (len(cand) - k + 1)), len(cand) - k)
    slices = cand[start:start + k]
    sampling = case.spacing_zyx_mm[1:]
    for z in slices:
        cav = cav_labels[z]
        lv = cav | (case.labels[z] == 2)
        d_endo = ndimage.distance_transform_edt(~cav, sampling=sampling)
        d_epi = ndimage.distance_transform_edt(lv, sampling=sampling)
        depth = d_endo / np.maximum(d_endo + d_epi, 1e-6)   # 0 at the endocardium, 1 at the epicardium
        cy, cx = np.argwhere(cav).mean(axis=0)
        yy, xx = np.indices(cav.shape)
        ang = np.arctan2(yy - cy, xx - cx)
        dang = np.abs((ang - centre + np.pi) % (2 * np.pi) - np.pi)
        mask[z] = (case.tissue[z] == myo_cls) & (depth <= trans) & (dang <= arc / 2)
    return mask, {"present": bool(mask.any()), "gd_mmol": conc, "transmurality": trans,
                  "arc_deg": math.degrees(arc), "slices": [int(z) for z in slices], "_conc": conc}


def _readout(flip: torch.Tensor, t2: torch.Tensor, te_ms: float) -> torch.Tensor:
    """Small-flip GRE readout factor sin(flip) exp(-TE/T2) applied to a prepared Mz."""
    return torch.sin(torch.deg2rad(flip)) * physics.t2prep(1.0, t2, te_ms)


def _render_ir_gre(m0, t1, t2, flip, prm, ctx):
    null_sel = ctx["null_mask"]
    t1_null = float(torch.median(t1[null_sel])) if bool(null_sel.any()) else float(torch.median(t1))
    ti = prm["ti_null_factor"] * lge_null_ti_ms(t1_null, prm["inversion_interval_ms"])
    prm["ti_ms"] = ti
    mz = physics.inversion_recovery(m0, t1, ti, tr_ms=prm["inversion_interval_ms"], signed=False)
    return mz * _readout(flip, t2, prm["te_ms"])


_RENDERERS: dict[str, Callable] = {
    "bssfp": lambda m0, t1, t2, flip, p, ctx: physics.bssfp(m0, t1, t2, flip, p["tr_ms"]),
    "spoiled_gre": lambda m0, t1, t2, flip, p, ctx: physics.spoiled_gre(m0, t1, t2, flip, p["tr_ms"], p["te_ms"]),
    "ir_gre": _render_ir_gre,
    "look_locker": lambda m0, t1, t2, flip, p, ctx: physics.look_locker(m0, t1, t2, flip, p["ti_ms"]),
    "t2prep_bssfp": lambda m0, t1, t2, flip, p, ctx: physics.t2prep(
        physics.saturation_recovery(m0, t1, p["recovery_ms"]), t2, p["te_prep_ms"]) * torch.sin(torch.deg2rad(flip)),
    "sr_gre": lambda m0, t1, t2, flip, p, ctx: physics.saturation_recovery(m0, t1, p["ts_ms"])
    * _readout(flip, t2, p["te_ms"]),
    "spin_echo": lambda m0, t1, t2, flip, p, ctx: physics.spin_echo(m0, t1, t2, p["tr_ms"], p["te_ms"]),
}


@contextmanager
def _one_torch_thread():
    """Phantom volumes are small: torch's intra-op threads only add contention (much slower on a
    loaded machine with few cores), so render on one thread and restore the setting afterwards."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def render_domain(case: PhantomCase, domain: Domain, rng: np.random.Generator,
                  clean: bool = False) -> tuple[np.ndarray, dict]:
    """Render ``case`` as an image of ``domain``.

    Args:
        case: phantom case (maps in ms, shape (Z, Y, X)).
        domain: from :func:`load_domains`.
        rng: numpy Generator; every random choice (sequence parameters, Gd, scar, fields, noise)
            comes from it in a fixed order.
        clean: return the noise-free image without bias/B1 fields and gain (still with Gd, scar,
            flow voids); used by tests to check contrast.
    Returns:
        ``(image, info)``: float32 (Z, Y, X) magnitude image and a JSON-able dict of what was drawn.
    """
    prm = {k: draw(domain.parameters[k], rng) for k in SEQUENCE_PARAMETERS[domain.sequence]}
    conc_cls, gd_drawn = _class_values(domain.gd_mmol, rng)
    scar_mask, scar_info = (_scar_mask(case, domain.scar, rng) if domain.scar is not None
                            else (np.zeros(case.labels.shape, bool), None))
    flow_residual = draw(domain.flow_void["residual"], rng) if domain.flow_void is not None else None
    sc = {k: draw(domain.scanner[k], rng) for k in _SCANNER_KEYS}
    b1_field = unit_peak_field(rng, case.m0.shape, case.spacing_zyx_mm)
    bias_field = unit_peak_field(rng, case.m0.shape, case.spacing_zyx_mm)
    noise_seed = int(rng.integers(0, 2**63 - 1))

    m0 = torch.from_numpy(case.m0.astype(np.float64))
    t2 = torch.from_numpy(np.maximum(case.t2, 1.0).astype(np.float64))
    t1 = torch.from_numpy(np.maximum(case.t1, 1.0).astype(np.float64))
    if domain.gd_mmol:
        conc = conc_cls[case.tissue]
        if scar_info and scar_info.get("present"):
            conc = np.where(scar_mask, scar_info["_conc"], conc)
        with _one_torch_thread():
            t1 = physics.gd_t1(t1, torch.from_numpy(conc), domain.r1)
    b1 = 1.0 if clean else 1.0 + sc["b1_amplitude"] * b1_field.astype(np.float64)
    flip = torch.from_numpy(np.broadcast_to(np.asarray(_nominal_flip(prm) * b1, dtype=np.float64), case.m0.shape).copy())
    ctx = {"null_mask": torch.from_numpy((case.tissue == CLASS_INDEX.get(domain.parameters.get("null_class", ""), -1))
                                         & ~scar_mask)}
    with _one_torch_thread():
        signal = _RENDERERS[domain.sequence](m0, t1, t2, flip, prm, ctx).numpy()
    if domain.flow_void is not None:
        idx = [i for i, c in enumerate(TISSUE_CLASSES)
               if c.name in domain.flow_void["classes"] or c.tissue in domain.flow_void["classes"]]
        signal = np.where(np.isin(case.tissue, idx), signal * flow_residual, signal)

    info = {"domain": domain.name, "sequence": domain.sequence,
            "parameters": {k: round(float(v), 3) for k, v in prm.items()}}
    if gd_drawn:
        info["gd_mmol"] = {k: round(v, 3) for k, v in gd_drawn.items()}
    if scar_info is not None:
        info["scar"] = {k: (round(v, 3) if isinstance(v, float) else v) for k, v in scar_info.items()
                        if not k.startswith("_")}
    if flow_residual is not None:
        info["flow_void_residual"] = round(flow_residual, 3)
    if clean:
        return signal.astype(np.float32), info

    signal = signal * (1.0 + sc["bias_amplitude"] * bias_field)
    sigma = float(np.percentile(signal, 99)) / sc["snr"]
    nrng = np.random.default_rng(noise_seed)
    noisy = np.hypot(signal + nrng.normal(0.0, sigma, signal.shape), nrng.normal(0.0, sigma, signal.shape))
    info["scanner"] = {k: round(float(v), 3) for k, v in sc.items()}
    return (noisy * sc["gain"]).astype(np.float32), info


def _nominal_flip(prm: dict) -> float:
    """Nominal flip angle (degrees) of drawn parameters; 90 for sequences without one (spin echo)."""
    return float(prm.get("flip_deg", 90.0))
