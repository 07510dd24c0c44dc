"""Contrast protocols: which sequence families to render, with which parameter ranges and how often.

A protocol is data (a YAML or JSON file; presets in ``presets/``)::

    name: wide
    p_render: 0.7                 # probability that a training case is replaced by a rendering
    families:                     # probabilities sum to 1
      - family: spoiled_gre
        probability: 0.5
        params:                   # the family's parameters, [low, high] (uniform) or a number;
          flip_deg: [3, 15]       # one with a default (cavity_tissue: 0) may be left out
          ...
    imperfections:                # optional; each applied with its own probability
      b1:    {probability: 0.5, scale: [0.8, 1.2], grid: [2, 4]}
      bias:  {probability: 0.5, gain: [0.7, 1.3], grid: [2, 4]}
      noise: {probability: 0.5, snr: [8, 60]}
    pathology:                    # optional; simulated myocardial pathology (contrast/pathology.py)
      scar:   {probability: 0.5, sector_deg: [40, 140], transmurality: [0.25, 1.0], conc_blood_factor: [0.8, 1.4]}
      mvo:    {probability: 0.2, depth_fraction: [0.2, 0.6], conc_myocardium_factor: [0.0, 0.5]}
      edema:  {probability: 0.5, sector_deg: [60, 180], t2_factor: [1.15, 1.6], t1_factor: [1.03, 1.15]}
      uptake: {probability: 0.8, heterogeneity: [0.0, 0.25], grid: [3, 6], blur_px: [0.3, 1.2]}
    labels:                       # optional; ACDC convention by default
      blood: [1, 3]
      myocardium: [2]
      lv_cavity: [3]              # centre of the coronary territories of simulated pathology
      blood_t2_min_ms: 150        # label-free fallback: blood is T2 > this
    postprocess:                  # optional
      t_min_ms: 1.0               # clamp T1, T2 >= this before rendering
      clip_percentile: 99.5       # clip to this percentile of valid pixels after rendering
      stats_max_pixels: 16384     # percentiles are taken on at most this many strided pixels
    gd_r1: 4.5                    # optional; Gd relaxivity in L/(mmol s)

:func:`load_protocol` validates everything and raises :class:`ProtocolError` with a message
naming the file and field path, e.g. ``wide.yaml: families[2].params.tr_ms: inverted range [100, 15]``.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Mapping, Sequence

import yaml

from ..configfile import ConfigFileError, parse_config_text
from .families import FAMILIES, ParamSpec
from .imperfections import IMPERFECTIONS, INTEGER_PARAMS
from .pathology import INTEGER_PARAMS as PATHOLOGY_INTEGER_PARAMS, PATHOLOGY

__all__ = ["ProtocolError", "FamilySpec", "ImperfectionSpec", "LabelSpec", "PostprocessSpec", "Protocol",
           "PRESETS", "PRESET_VERSIONS", "load_protocol", "save_protocol", "protocol_from_dict"]

PRESETS: tuple[str, ...] = ("paper", "wide", "wide_pathology", "paper_gre", "paper_ir")
#: ``{version name: (preset file, settings)}``: every version a preset has had (``presets/versions.yaml``)
PRESET_VERSIONS: dict[str, tuple[str, tuple[str, ...]]] = {
    name: (v["file"], tuple(v["settings"])) for name, v in yaml.safe_load(
        resources.files("nnunetv2_physaug.contrast").joinpath("presets/versions.yaml").read_text()).items()}
PROTOCOL_SUFFIXES = (".yaml", ".yml", ".json")
Range = tuple[float, float]


class ProtocolError(ValueError):
    """An invalid protocol; the message names the file and the field path."""


@dataclass(frozen=True)
class FamilySpec:
    """One family of a protocol: its name, selection probability and parameter ranges."""

    family: str
    probability: float
    params: dict[str, Range]


@dataclass(frozen=True)
class ImperfectionSpec:
    """One imperfection: probability of applying it and its parameter ranges."""

    probability: float
    params: dict[str, Range]


@dataclass(frozen=True)
class LabelSpec:
    """Which label values are blood / myocardium (ACDC: 1 RV, 2 MYO, 3 LV) and the label-free rule."""

    blood: tuple[int, ...] = (1, 3)
    myocardium: tuple[int, ...] = (2,)
    blood_t2_min_ms: float = 150.0
    lv_cavity: tuple[int, ...] = (3,)


@dataclass(frozen=True)
class PostprocessSpec:
    """Clamping before and clipping after rendering (the z-score happens later, in the trainer)."""

    t_min_ms: float = 1.0
    clip_percentile: float = 99.5
    stats_max_pixels: int = 16384


@dataclass(frozen=True)
class Protocol:
    """A validated contrast protocol (see the module docstring for the file format)."""

    name: str
    p_render: float
    families: tuple[FamilySpec, ...]
    imperfections: dict[str, ImperfectionSpec] = field(default_factory=dict)
    pathology: dict[str, ImperfectionSpec] = field(default_factory=dict)
    labels: LabelSpec = LabelSpec()
    postprocess: PostprocessSpec = PostprocessSpec()
    gd_r1: float = 4.5
    description: str = ""

    def to_dict(self) -> dict:
        """A plain dict (lists, floats) that :func:`protocol_from_dict` turns back into an equal protocol.

        A parameter fixed at its schema default is left out (it is filled in again on loading), so a
        protocol's dict and hash (:func:`~nnunetv2_physaug.nnunet.run_identity.protocol_sha256`) stay
        what they were before that parameter existed: runs recorded then still continue."""
        return {
            "name": self.name,
            "description": self.description,
            "p_render": self.p_render,
            "families": [{"family": f.family, "probability": f.probability,
                          "params": {k: list(v) for k, v in f.params.items()
                                     if not _at_default(FAMILIES[f.family].PARAMS[k], v)}}
                         for f in self.families],
            "imperfections": {k: {"probability": s.probability, **{p: list(v) for p, v in s.params.items()}}
                              for k, s in self.imperfections.items()},
            "pathology": {k: {"probability": s.probability, **{p: list(v) for p, v in s.params.items()}}
                          for k, s in self.pathology.items()},
            "labels": {"blood": list(self.labels.blood), "myocardium": list(self.labels.myocardium),
                       "blood_t2_min_ms": self.labels.blood_t2_min_ms, "lv_cavity": list(self.labels.lv_cavity)},
            "postprocess": {"t_min_ms": self.postprocess.t_min_ms,
                            "clip_percentile": self.postprocess.clip_percentile,
                            "stats_max_pixels": self.postprocess.stats_max_pixels},
            "gd_r1": self.gd_r1,
        }


def _at_default(spec: ParamSpec, value: Range) -> bool:
    return spec.default is not None and tuple(value) == (spec.default, spec.default)


# --------------------------------------------------------------------------- validation helpers

def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _number(v: Any, where: str) -> float:
    if not _is_number(v):
        raise ProtocolError(f"{where}: expected a number, got {v!r}")
    if not math.isfinite(v):
        raise ProtocolError(f"{where}: must be finite, got {v!r}")
    return float(v)


def _probability(v: Any, where: str) -> float:
    p = _number(v, where)
    if not 0.0 <= p <= 1.0:
        raise ProtocolError(f"{where}: probability {p:g} outside [0, 1]")
    return p


def _mapping(v: Any, where: str) -> Mapping:
    if not isinstance(v, Mapping):
        raise ProtocolError(f"{where}: expected a mapping (key: value), got {type(v).__name__}")
    return v


def _check_keys(d: Mapping, allowed: set[str], required: set[str], where: str) -> None:
    unknown = sorted(str(k) for k in d if k not in allowed)
    if unknown:
        raise ProtocolError(f"{where}: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(allowed))}")
    missing = sorted(required - set(d))
    if missing:
        raise ProtocolError(f"{where}: missing key(s) {', '.join(missing)}")


def _range(v: Any, spec: ParamSpec, where: str, integer: bool = False) -> Range:
    """Parse ``[low, high]`` (or a single number meaning a fixed value) and check it is physical."""
    if _is_number(v):
        lo = hi = v
    elif isinstance(v, (list, tuple)) and len(v) == 2 and all(_is_number(x) for x in v):
        lo, hi = v
    else:
        raise ProtocolError(f"{where}: expected [low, high] or a number, got {v!r}")
    lo, hi = _number(lo, where), _number(hi, where)
    if lo > hi:
        raise ProtocolError(f"{where}: inverted range [{lo:g}, {hi:g}]")
    for x in (lo, hi):
        why = spec.violation(x)
        if why:
            raise ProtocolError(f"{where}: non-physical range [{lo:g}, {hi:g}]: {spec.doc} {why}")
        if integer and not float(x).is_integer():
            raise ProtocolError(f"{where}: expected integers, got [{lo:g}, {hi:g}]")
    return (lo, hi)


def _int_list(v: Any, where: str) -> tuple[int, ...]:
    if not isinstance(v, (list, tuple)) or not all(isinstance(x, int) and not isinstance(x, bool) for x in v):
        raise ProtocolError(f"{where}: expected a list of integer label values, got {v!r}")
    return tuple(v)


def _family(d: Any, where: str) -> FamilySpec:
    d = _mapping(d, where)
    _check_keys(d, {"family", "probability", "params"}, {"family", "probability", "params"}, where)
    name = d["family"]
    if name not in FAMILIES:
        raise ProtocolError(f"{where}.family: unknown family {name!r}; known: {', '.join(FAMILIES)}")
    prob = _probability(d["probability"], f"{where}.probability")
    params = _mapping(d["params"], f"{where}.params")
    schema = FAMILIES[name].PARAMS
    # parameters with a default (added after protocol files were written) may be left out
    required = {k for k, spec in schema.items() if spec.default is None}
    _check_keys(params, set(schema), required, f"{where}.params ({name})")
    return FamilySpec(name, prob, {k: _range(params[k] if k in params else schema[k].default, schema[k],
                                             f"{where}.params.{k}") for k in schema})


def _optional_effects(d: Any, where: str, schemas: Mapping[str, Mapping[str, ParamSpec]],
                      integer: frozenset) -> dict[str, ImperfectionSpec]:
    """Parse a section of optional effects (imperfections, pathology): each with a probability and ranges."""
    d = _mapping(d, where)
    _check_keys(d, set(schemas), set(), where)
    out = {}
    for kind in schemas:  # fixed order, so equal protocols compare equal
        if kind not in d:
            continue
        w = f"{where}.{kind}"
        entry = _mapping(d[kind], w)
        schema = schemas[kind]
        _check_keys(entry, {"probability", *schema}, {"probability", *schema}, w)
        out[kind] = ImperfectionSpec(
            _probability(entry["probability"], f"{w}.probability"),
            {k: _range(entry[k], schema[k], f"{w}.{k}", integer=k in integer) for k in schema})
    return out


def _imperfections(d: Any, where: str) -> dict[str, ImperfectionSpec]:
    return _optional_effects(d, where, IMPERFECTIONS, INTEGER_PARAMS)


def _pathology(d: Any, where: str) -> dict[str, ImperfectionSpec]:
    out = _optional_effects(d, where, PATHOLOGY, PATHOLOGY_INTEGER_PARAMS)
    if "mvo" in out and "scar" not in out:
        raise ProtocolError(f"{where}.mvo: microvascular obstruction is a core of the scar; add a scar entry")
    return out


def _labels(d: Any, where: str) -> LabelSpec:
    d = _mapping(d, where)
    _check_keys(d, {"blood", "myocardium", "blood_t2_min_ms", "lv_cavity"}, set(), where)
    default = LabelSpec()
    blood = _int_list(d.get("blood", list(default.blood)), f"{where}.blood")
    myo = _int_list(d.get("myocardium", list(default.myocardium)), f"{where}.myocardium")
    if set(blood) & set(myo):
        raise ProtocolError(f"{where}: label(s) {sorted(set(blood) & set(myo))} are both blood and myocardium")
    thr = _number(d.get("blood_t2_min_ms", default.blood_t2_min_ms), f"{where}.blood_t2_min_ms")
    if thr <= 0:
        raise ProtocolError(f"{where}.blood_t2_min_ms: must be > 0 ms, got {thr:g}")
    lv = _int_list(d.get("lv_cavity", list(default.lv_cavity)), f"{where}.lv_cavity")
    if not set(lv) <= set(blood):
        raise ProtocolError(f"{where}.lv_cavity: {list(lv)} must be blood label(s) (blood: {list(blood)})")
    return LabelSpec(blood, myo, thr, lv)


def _postprocess(d: Any, where: str) -> PostprocessSpec:
    d = _mapping(d, where)
    _check_keys(d, {"t_min_ms", "clip_percentile", "stats_max_pixels"}, set(), where)
    default = PostprocessSpec()
    t_min = _number(d.get("t_min_ms", default.t_min_ms), f"{where}.t_min_ms")
    if t_min <= 0:
        raise ProtocolError(f"{where}.t_min_ms: must be > 0 ms, got {t_min:g}")
    q = _number(d.get("clip_percentile", default.clip_percentile), f"{where}.clip_percentile")
    if not 0 < q <= 100:
        raise ProtocolError(f"{where}.clip_percentile: must be in (0, 100], got {q:g}")
    n = d.get("stats_max_pixels", default.stats_max_pixels)
    if not (isinstance(n, int) and not isinstance(n, bool)) or n < 100:
        raise ProtocolError(f"{where}.stats_max_pixels: expected an integer >= 100, got {n!r}")
    return PostprocessSpec(t_min, q, n)


_TOP_KEYS = {"name", "description", "p_render", "families", "imperfections", "pathology", "labels", "postprocess",
             "gd_r1"}


def protocol_from_dict(d: Any, source: str = "<protocol>") -> Protocol:
    """Validate a protocol given as a plain dict; ``source`` prefixes every error message."""
    d = _mapping(d, source)
    _check_keys(d, _TOP_KEYS, {"name", "p_render", "families"}, source)
    name = d["name"]
    if not isinstance(name, str) or not name:
        raise ProtocolError(f"{source}: name: expected a non-empty string, got {name!r}")
    description = d.get("description", "")
    if not isinstance(description, str):
        raise ProtocolError(f"{source}: description: expected a string, got {description!r}")
    p_render = _probability(d["p_render"], f"{source}: p_render")
    fams = d["families"]
    if not isinstance(fams, list) or not fams:
        raise ProtocolError(f"{source}: families: expected a non-empty list of families")
    families = tuple(_family(f, f"{source}: families[{i}]") for i, f in enumerate(fams))
    total = math.fsum(f.probability for f in families)
    if abs(total - 1.0) > 1e-6:
        raise ProtocolError(f"{source}: families: probabilities sum to {total:.9g}, must sum to 1")
    gd_r1 = _number(d.get("gd_r1", 4.5), f"{source}: gd_r1")
    if gd_r1 <= 0:
        raise ProtocolError(f"{source}: gd_r1: relaxivity must be > 0 L/(mmol s), got {gd_r1:g}")
    return Protocol(
        name=name, p_render=p_render, families=families,
        imperfections=_imperfections(d.get("imperfections", {}) or {}, f"{source}: imperfections"),
        pathology=_pathology(d.get("pathology", {}) or {}, f"{source}: pathology"),
        labels=_labels(d.get("labels", {}) or {}, f"{source}: labels"),
        postprocess=_postprocess(d.get("postprocess", {}) or {}, f"{source}: postprocess"),
        gd_r1=gd_r1, description=description)


# --------------------------------------------------------------------------- files

def _parse_text(text: str, suffix: str, source: str) -> Any:
    try:
        return parse_config_text(text, "json" if suffix == ".json" else "yaml", source)
    except ConfigFileError as e:
        raise ProtocolError(str(e)) from None


def load_protocol(name_or_path: str | os.PathLike) -> Protocol:
    """Load and validate a protocol: a preset name (see :data:`PRESETS`), a preset version (``wide_v2``, see
    :data:`PRESET_VERSIONS`) or a .yaml/.yml/.json path."""
    if isinstance(name_or_path, str) and name_or_path in PRESET_VERSIONS:
        file, settings = PRESET_VERSIONS[name_or_path]
        d = _with_settings(load_protocol(file).to_dict(), settings, file)
        d["name"] = name_or_path
        return protocol_from_dict(d, f"preset version {name_or_path} ({file} with settings {list(settings)})")
    if isinstance(name_or_path, str) and name_or_path in PRESETS:
        text = resources.files("nnunetv2_physaug.contrast").joinpath(f"presets/{name_or_path}.yaml").read_text()
        return protocol_from_dict(_parse_text(text, ".yaml", f"{name_or_path}.yaml"), f"{name_or_path}.yaml")
    path = Path(name_or_path)
    if path.suffix.lower() not in PROTOCOL_SUFFIXES:
        raise ProtocolError(f"{path}: not a preset ({', '.join(PRESETS)}) and not a protocol file "
                            f"(expected one of {', '.join(PROTOCOL_SUFFIXES)})")
    if not path.is_file():
        raise ProtocolError(f"{path}: protocol file not found; give an existing file or a preset "
                            f"({', '.join(PRESETS)})")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ProtocolError(f"{path}: not a text file ({e}); a protocol is a YAML or JSON file") from None
    return protocol_from_dict(_parse_text(text, path.suffix.lower(), path.name), path.name)


def _set_effect_param(effect: dict, name: str, param: str, value: str, item: str) -> None:
    """Set ``param`` (``probability`` or one of its ranges) of an imperfection or pathology entry."""
    if param not in effect:
        raise ProtocolError(f"setting {item!r}: {name} has no parameter {param!r} (it has {', '.join(sorted(effect))})")
    try:
        effect[param] = json.loads(value) if value.strip().startswith("[") else float(value)
    except ValueError as e:
        raise ProtocolError(f"setting {item!r}: VALUE must be a number or [low, high] ({e})") from None


def _set_family_share(families: list[dict], family: str, share: Any, item: str) -> None:
    """Give the entries named ``family`` the total probability ``share`` (their proportions kept), the
    others ``1 - share`` in their proportions (the protocol's check then sees a sum of 1)."""
    if not _is_number(share) or not 0.0 <= share <= 1.0:
        raise ProtocolError(f"setting {item!r}: a family's probability is one number in [0, 1]")
    mine = math.fsum(f["probability"] for f in families if f["family"] == family)
    rest = math.fsum(f["probability"] for f in families if f["family"] != family)
    if (rest == 0.0 and share < 1.0) or (mine == 0.0 and share > 0.0):
        raise ProtocolError(f"setting {item!r}: cannot rescale families whose probabilities are all 0")
    scale_mine = share / mine if mine > 0 else 0.0
    scale_rest = (1.0 - share) / rest if rest > 0 else 0.0
    for f in families:
        f["probability"] *= scale_mine if f["family"] == family else scale_rest


def _with_settings(d: dict, settings: Sequence[str], name_or_path) -> dict:
    """A protocol dict ``d`` (of ``name_or_path``) with ``FAMILY.PARAM=VALUE`` settings applied, in place."""
    for item in settings:
        key, _, value = str(item).partition("=")
        family, _, param = key.strip().partition(".")
        fams = [f for f in d["families"] if f["family"] == family]
        effect = d["imperfections"].get(family) or d["pathology"].get(family)
        if effect is not None and not fams and param and value.strip():
            _set_effect_param(effect, family, param, value, item)
            continue
        if not fams or not param or not value.strip():
            raise ProtocolError(f"setting {item!r}: write FAMILY.PARAM=VALUE with a family of {name_or_path!r} "
                                f"({', '.join(sorted({f['family'] for f in d['families']}))}) or EFFECT.PARAM=VALUE "
                                f"with one of its imperfections or pathology entries "
                                f"({', '.join([*d['imperfections'], *d['pathology']]) or 'none'})")
        try:
            v = json.loads(value) if value.strip().startswith("[") else float(value)
        except ValueError as e:
            raise ProtocolError(f"setting {item!r}: VALUE must be a number or [low, high] ({e})") from None
        if param == "probability":
            _set_family_share(d["families"], family, v, item)
            continue
        schema = FAMILIES[family].PARAMS  # to_dict leaves out parameters at their default
        if param not in schema:
            raise ProtocolError(f"setting {item!r}: family {family} has no parameter {param!r} "
                                f"(it has {', '.join(sorted(schema))})")
        for f in fams:
            f["params"][param] = v
    return d


def protocol_with_settings(name_or_path: str | os.PathLike, settings: Sequence[str] = ()) -> Protocol:
    """``name_or_path`` (preset or file) with ``FAMILY.PARAM=VALUE`` settings applied.

    VALUE is a number (a fixed value) or ``[low, high]`` (a range); every family entry named FAMILY gets
    it. ``EFFECT.PARAM=VALUE`` sets the probability or a range of an imperfection or pathology entry the
    protocol has (``relaxation_scaling.probability=0.5``). ``FAMILY.probability=P`` sets the share of renders of FAMILY (all its entries together) to P and
    rescales the other families so that they keep their proportions and the total stays 1. The name of
    the result says what was set (``wide+tse.blood_partial_volume=1``), so reports and run records
    tell the variants apart. Used by ``check_realism --set`` and by trainer variants
    (``physaug_protocol_settings``), e.g. ablations of one preset option.
    """
    protocol = load_protocol(name_or_path)
    if not settings:
        return protocol
    d = _with_settings(protocol.to_dict(), settings, name_or_path)
    d["name"] = d["name"] + "+" + ",".join(str(s).replace(" ", "") for s in settings)
    return protocol_from_dict(d, f"{name_or_path} with settings {list(settings)}")


def save_protocol(protocol: Protocol, path: str | os.PathLike, overwrite: bool = False) -> Path:
    """Write ``protocol`` as YAML or JSON (by the suffix of ``path``) atomically."""
    from ..fileio import atomic_write_bytes

    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in PROTOCOL_SUFFIXES:
        raise ProtocolError(f"{path}: protocol files end in one of {', '.join(PROTOCOL_SUFFIXES)}")
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass overwrite=True to replace it")
    d = protocol.to_dict()
    text = json.dumps(d, indent=2) + "\n" if suffix == ".json" else yaml.safe_dump(d, sort_keys=False)

    def write(tmp):
        with open(tmp, "w") as f:
            f.write(text)
    atomic_write_bytes(path, write, suffix)
    return path
