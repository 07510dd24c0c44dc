"""Sequence families: what each synthetic contrast is, which parameters it draws, how it renders.

Each family is a small stateless class (TorchIO style): :meth:`Family.sample` draws one set of
sequence parameters from the protocol's ranges with a ``numpy.random.Generator``;
:meth:`Family.render` evaluates the signal equation of :mod:`nnunetv2_physaug.physics.signal`
on the tissue maps held by a :class:`RenderContext`, through the equivalent in-place forms of
:mod:`.fast` wherever the loader's render has one (the tests check them against the physics module).
Ranges and probabilities are data (the protocol files in ``presets/``); the classes only know the
physics and which parameters exist.

Units: times in ms, flip angles in degrees, Gd concentrations in mmol/L. Parameters whose name
ends in ``_factor``/``_fraction`` are unitless.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, Optional

import numpy as np
import torch

from ..physics import signal
from . import fast

if TYPE_CHECKING:  # pragma: no cover
    from .renderer import RenderContext

__all__ = ["ParamSpec", "Family", "FAMILIES", "SpoiledGRE", "LookLocker", "BSSFP", "LGE", "PSIR",
           "SaturationRecoveryPerfusion", "T2PrepBSSFP", "TSE"]


@dataclass(frozen=True)
class ParamSpec:
    """One protocol parameter: its meaning and the physically allowed interval of its values.

    ``minimum``/``maximum`` are bounds on both ends of a range; ``exclusive_min`` makes the
    lower bound strict (e.g. a flip angle or TR must be > 0). ``default``: the fixed value a protocol
    that does not list the parameter gets (parameters added after protocol files were written, so
    those files keep loading and render as before); None = the protocol must list it.
    """

    doc: str
    minimum: float = 0.0
    maximum: float = math.inf
    exclusive_min: bool = False
    default: Optional[float] = None

    def violation(self, value: float) -> Optional[str]:
        """A short description of why ``value`` is non-physical, or None when it is allowed."""
        if self.exclusive_min and not value > self.minimum:
            return f"must be > {self.minimum:g}"
        if value < self.minimum:
            return f"must be >= {self.minimum:g}"
        if value > self.maximum:
            return f"must be <= {self.maximum:g}"
        return None


# Shared parameter specifications (units in the names).
_FLIP = ParamSpec("readout flip angle in degrees", 0.0, 180.0, exclusive_min=True)
_TR = ParamSpec("repetition time in ms", 0.0, exclusive_min=True)
_TE = ParamSpec("echo time in ms", 0.0)
_CONC_BLOOD = ParamSpec("Gd concentration in blood (labels.blood) in mmol/L", 0.0, 50.0)
_CONC_MYO = ParamSpec("Gd concentration in myocardium (labels.myocardium) in mmol/L", 0.0, 50.0)
_CONC_OTHER = ParamSpec("Gd concentration in all other tissue in mmol/L", 0.0, 50.0)
_CAVITY_TISSUE = ParamSpec("render blood-labelled pixels as blood / tissue mixtures by their maps (0 or 1)",
                           0.0, 1.0, default=0.0)
_BORDER_GD = ParamSpec("give non-blood pixels next to blood their blood share's Gd (0 or 1)", 0.0, 1.0, default=0.0)
# the cavity's wall layer (RenderContext.apply_wall_layer): share 0 leaves it out and draws nothing
_WALL_LAYER_SHARE = ParamSpec("tissue share of the blood-labelled pixels touching the wall (unitless)", 0.0, 1.0,
                              default=0.0)
_WALL_LAYER_PX = ParamSpec("depth in pixels over which the wall layer's tissue share falls to 0", 0.0,
                           64.0, exclusive_min=True, default=1.0)
_WALL_LAYER = {"wall_layer_share": _WALL_LAYER_SHARE, "wall_layer_px": _WALL_LAYER_PX}


def _uniform(rng: np.random.Generator, rng_range: tuple[float, float]) -> float:
    low, high = rng_range
    return float(rng.uniform(low, high)) if high > low else float(low)


class Family:
    """Base class of a sequence family.

    Subclasses set :attr:`name`, :attr:`PARAMS` (protocol parameter name -> :class:`ParamSpec`),
    :attr:`uses_flip` (a B1 field scales its flip angle) and :attr:`signed` (the image keeps a
    sign, so clipping is symmetric), and implement :meth:`sample` and :meth:`render`.
    """

    name: ClassVar[str] = ""
    PARAMS: ClassVar[dict[str, ParamSpec]] = {}
    uses_flip: ClassVar[bool] = False
    signed: ClassVar[bool] = False

    def sample(self, rng: np.random.Generator, ranges: dict[str, tuple[float, float]],
               ctx: "RenderContext") -> dict:
        """Draw every parameter uniformly from its ``[low, high]`` range, in :attr:`PARAMS` order.

        Returns a JSON-serialisable dict of floats (units in the key names). Subclasses add
        derived parameters (e.g. TE from TR and a fraction).
        """
        return {k: _uniform(rng, ranges[k]) for k in self.PARAMS}

    def render(self, ctx: "RenderContext", p: dict) -> torch.Tensor:
        """The noise-free image of the maps in ``ctx`` for parameters ``p`` (same shape as the maps)."""
        raise NotImplementedError

    @staticmethod
    def _flip(ctx: "RenderContext", flip_deg: float):
        """The flip angle, scaled by the context's B1 field (a (Y, X) tensor) when there is one."""
        return flip_deg if ctx.b1 is None else ctx.b1 * flip_deg


class SpoiledGRE(Family):
    """Spoiled gradient echo (FLASH), the paper's "GRE" augmentation.

    Ernst equation with echo decay, :func:`~nnunetv2_physaug.physics.signal.spoiled_gre`::

        S = M0 sin(a) (1 - exp(-TR/T1)) / (1 - cos(a) exp(-TR/T1)) * exp(-TE/T2)

    (T2 stands in for T2*). TE is derived as ``TE = max(TR * te_fraction, te_min_ms)`` (the
    authors' sampling), so T1 weighting (short TR, large flip) and T2* weighting (long TE) mix.

    Parameters: ``flip_deg`` (deg), ``tr_ms`` (ms), ``te_fraction`` (TE/TR, unitless),
    ``te_min_ms`` (ms). Drawn output adds ``te_ms``.
    """

    name = "spoiled_gre"
    PARAMS = {"flip_deg": _FLIP, "tr_ms": _TR,
              "te_fraction": ParamSpec("TE as a fraction of TR", 0.0, 1.0),
              "te_min_ms": ParamSpec("lower bound of TE in ms", 0.0)}
    uses_flip = True

    def sample(self, rng, ranges, ctx):
        p = super().sample(rng, ranges, ctx)
        p["te_ms"] = max(p["tr_ms"] * p["te_fraction"], p["te_min_ms"])
        return p

    def render(self, ctx, p):
        return fast.spoiled_gre(ctx.m0, ctx.t1, ctx.t2, self._flip(ctx, p["flip_deg"]), p["tr_ms"], p["te_ms"])


class LookLocker(Family):
    """MOLLI-style inversion-recovery TrueFISP (IR-bSSFP), magnitude: the paper's "IR" augmentation.

    Schmitt et al. (MRM 2004), :func:`~nnunetv2_physaug.physics.signal.look_locker`::

        S(TI) = |Sss (1 - INV exp(-TI/T1*))|

    with Sss the short-TR bSSFP signal, INV the effective inversion factor and
    1/T1* = cos²(a/2)/T1 + sin²(a/2)/T2. TI is drawn ``U(ti_min_ms, ti_max_t1_factor * P99(T1))``
    where P99 is the 99th percentile of T1 over the valid pixels of the map being rendered, so
    TI spans the nulling points of all tissues present.

    Parameters: ``flip_deg`` (deg), ``ti_min_ms`` (ms), ``ti_max_t1_factor`` (unitless).
    Drawn output adds ``t1_p99_ms``, ``ti_max_ms`` and ``ti_ms``.
    """

    name = "look_locker"
    PARAMS = {"flip_deg": _FLIP,
              "ti_min_ms": ParamSpec("lower bound of TI in ms", 0.0),
              "ti_max_t1_factor": ParamSpec("upper bound of TI as a multiple of P99(T1)", 0.0, exclusive_min=True)}
    uses_flip = True

    def sample(self, rng, ranges, ctx):
        p = super().sample(rng, ranges, ctx)
        p["t1_p99_ms"] = ctx.percentile(ctx.t1, 99.0)
        # A map with only short T1 would give an upper bound below the lower one: use the lower.
        p["ti_max_ms"] = max(p["ti_max_t1_factor"] * p["t1_p99_ms"], p["ti_min_ms"])
        p["ti_ms"] = _uniform(rng, (p["ti_min_ms"], p["ti_max_ms"]))
        return p

    def render(self, ctx, p):
        return fast.look_locker(ctx.m0, ctx.t1, ctx.t2, self._flip(ctx, p["flip_deg"]), p["ti_ms"])


class BSSFP(Family):
    """Balanced SSFP (cine-like) at a random flip angle and TR, full Freeman-Hill form.

    :func:`~nnunetv2_physaug.physics.signal.bssfp` (``short_tr=False``), echo at TE = TR/2::

        S = M0 sin(a) (1-E1) sqrt(E2) / (1 - (E1-E2) cos(a) - E1 E2)

    Contrast is T2/T1 weighted: blood (T2/T1 ~ 0.17) is brighter than myocardium (~ 0.05) at
    every flip angle.

    Parameters: ``flip_deg`` (deg), ``tr_ms`` (ms).
    """

    name = "bssfp"
    PARAMS = {"flip_deg": _FLIP, "tr_ms": _TR}
    uses_flip = True

    def render(self, ctx, p):
        return fast.bssfp(ctx.m0, ctx.t1, ctx.t2, self._flip(ctx, p["flip_deg"]), p["tr_ms"])


class _GdFamily(Family):
    """Shared part of the families that render after gadolinium uptake (label-aware)."""

    GD_PARAMS = {"conc_blood_mmol": _CONC_BLOOD, "conc_myocardium_mmol": _CONC_MYO,
                 "conc_other_mmol": _CONC_OTHER, "cavity_tissue": _CAVITY_TISSUE,
                 "blood_partial_volume": _BORDER_GD, **_WALL_LAYER}

    @staticmethod
    def _t1_post(ctx: "RenderContext", p: dict) -> torch.Tensor:
        """Post-contrast T1 (ms) from :func:`~nnunetv2_physaug.physics.signal.gd_t1` per region (after the
        cavity's wall layer, :meth:`RenderContext.apply_wall_layer`)."""
        ctx.apply_wall_layer(p)
        conc = ctx.gd_concentration(p["conc_blood_mmol"], p["conc_myocardium_mmol"], p["conc_other_mmol"], p)
        return fast.gd_t1(ctx.t1, conc, r1=ctx.r1)


class _IRGre(_GdFamily):
    """Inversion-recovery-prepared spoiled GRE after Gd (LGE). Shared by LGE (magnitude) and PSIR."""

    PARAMS = {"flip_deg": _FLIP,
              "te_ms": _TE,
              "tr_inv_ms": ParamSpec("time between inversions in ms (1-2 heartbeats)", 0.0, exclusive_min=True),
              "ti_null_factor": ParamSpec("TI as a multiple of the myocardial null time", 0.0, exclusive_min=True),
              "readout_tr_ms": ParamSpec("repetition time of the segmented FLASH readout in ms", 0.0,
                                         exclusive_min=True),
              "readout_pulses": ParamSpec("readout pulses before the k-space centre (0: centric ordering)", 0.0, 512.0),
              **_GdFamily.GD_PARAMS}
    uses_flip = True

    def sample(self, rng, ranges, ctx):
        p = super().sample(rng, ranges, ctx)
        # The operator picks TI from a TI scout to null normal myocardium: the null time of the
        # median post-contrast myocardial T1 solves 1 - 2 exp(-TI/T1) + exp(-TRinv/T1) = 0.
        t1_post = self._t1_post(ctx, p)
        ctx.cache["t1_post"] = t1_post
        t1_myo = ctx.percentile(t1_post, 50.0, region="myocardium")
        null_ms = t1_myo * math.log(2.0 / (1.0 + math.exp(-p["tr_inv_ms"] / t1_myo)))
        p["t1_myocardium_post_ms"] = t1_myo
        p["ti_ms"] = p["ti_null_factor"] * null_ms
        return p

    def render(self, ctx, p):
        t1_post = ctx.cache.pop("t1_post", None)
        if t1_post is None:
            t1_post = self._t1_post(ctx, p)
        mz = fast.inversion_recovery(ctx.m0, t1_post, p["ti_ms"], p["tr_inv_ms"], signed=True)
        flip = self._flip(ctx, p["flip_deg"])
        n = round(p["readout_pulses"])
        if n > 0:  # the readout train before the k-space centre drives Mz towards the FLASH steady state
            mz = signal.flash_approach(mz, ctx.m0, t1_post, flip, p["readout_tr_ms"], float(n))
        if not self.signed:
            mz = mz.abs()
        # FLASH readout of the (partly recovered) prepared Mz: sin(a) exp(-TE/T2*) (T2 for T2*).
        read = fast.cos_sin(flip * (math.pi / 180.0))[1] if isinstance(flip, torch.Tensor) else math.sin(math.radians(flip))
        return mz.mul_(read).mul_(fast.exp_(ctx.t2.reciprocal().mul_(-p["te_ms"])))


class LGE(_IRGre):
    """Late gadolinium enhancement: IR-prepared spoiled GRE, magnitude, ~10-15 min after Gd.

    Post-contrast T1 per region with :func:`~nnunetv2_physaug.physics.signal.gd_t1`
    (``1/T1post = 1/T1 + r1 [Gd]``), Gd concentrations drawn per region (blood, myocardium,
    other tissue; see :meth:`RenderContext.region_values` for the label-free fallback).
    TI = ``ti_null_factor`` × the null time of the median myocardial T1post (TI scout), then
    :func:`~nnunetv2_physaug.physics.signal.inversion_recovery`::

        S = |M0 (1 - 2 exp(-TI/T1post) + exp(-TRinv/T1post))| sin(a) exp(-TE/T2)

    Normal myocardium is dark, blood (shorter T1post) bright. With linear k-space ordering
    ``readout_pulses`` FLASH pulses (every ``readout_tr_ms``) precede the k-space centre, and the image
    shows Mz after them (:func:`~nnunetv2_physaug.physics.signal.flash_approach`): nulled tissue is
    not black (real LGE: blood / normal myocardium ~1.7-3.9, not >> 5). 0 pulses = centric ordering.

    ``cavity_tissue`` (0 or 1, every Gd family): 1 gives each blood-labelled pixel the Gd concentration of
    its blood share, ``w [Gd]_blood + (1 - w) [Gd]_myocardium`` (:meth:`RenderContext.blood_share`): the
    papillary muscles and trabeculae a cavity label holds (dark in the cine, myocardial T1/T2 in the maps)
    are nulled like myocardium, as in real LGE, instead of enhancing like blood.

    ``blood_partial_volume`` (0 or 1, every Gd family): the converse at the label border; 1 gives each
    non-blood pixel next to blood ``w [Gd]_blood + (1 - w) [Gd]_its label``
    (:meth:`RenderContext.near_blood_mask`), so the endocardial rim shows the partial volume of enhanced
    blood, as in real LGE, instead of being nulled with the myocardium.

    Parameters: ``flip_deg`` (deg), ``te_ms`` (ms), ``tr_inv_ms`` (ms), ``ti_null_factor``,
    ``readout_tr_ms`` (ms), ``readout_pulses`` (rounded to an integer),
    ``conc_blood_mmol``, ``conc_myocardium_mmol``, ``conc_other_mmol`` (mmol/L), ``cavity_tissue``,
    ``blood_partial_volume``.
    Drawn output adds ``t1_myocardium_post_ms`` and ``ti_ms``.
    """

    name = "lge"
    signed = False


class PSIR(_IRGre):
    """Phase-sensitive IR: as :class:`LGE` but the sign of Mz(TI) is kept (signed image).

    Tissues not yet through their null point (T1post longer than myocardium's) are negative.
    Clipping is symmetric by the P99.5 of |S|.
    """

    name = "psir"
    signed = True


class SaturationRecoveryPerfusion(_GdFamily):
    """First-pass perfusion-like saturation-recovery spoiled GRE.

    Gd concentrations per region (blood high during the first pass, myocardium low), T1post by
    :func:`~nnunetv2_physaug.physics.signal.gd_t1`, then
    :func:`~nnunetv2_physaug.physics.signal.saturation_recovery` with a small-flip readout::

        S = M0 (1 - exp(-TS/T1post)) sin(a) exp(-TE/T2)

    Parameters: ``ts_ms`` (saturation delay, ms), ``flip_deg`` (deg), ``te_ms`` (ms), the
    three concentrations (mmol/L), ``cavity_tissue`` and ``blood_partial_volume`` (as in :class:`LGE`).
    """

    name = "saturation_recovery"
    PARAMS = {"ts_ms": ParamSpec("saturation-recovery delay in ms", 0.0, exclusive_min=True),
              "flip_deg": _FLIP, "te_ms": _TE, **_GdFamily.GD_PARAMS}
    uses_flip = True

    def render(self, ctx, p):
        mz = fast.saturation_recovery(ctx.m0, self._t1_post(ctx, p), p["ts_ms"])
        flip = self._flip(ctx, p["flip_deg"])
        read = fast.cos_sin(flip * (math.pi / 180.0))[1] if isinstance(flip, torch.Tensor) else math.sin(math.radians(flip))
        return mz.mul_(read).mul_(fast.exp_(ctx.t2.reciprocal().mul_(-p["te_ms"])))


class T2PrepBSSFP(Family):
    """T2-prepared bSSFP (T2-weighted, as in T2 mapping / oedema imaging).

    The T2 preparation weight of :func:`~nnunetv2_physaug.physics.signal.t2prep` times the bSSFP
    readout weight of :func:`~nnunetv2_physaug.physics.signal.bssfp` (the k-space centre is
    sampled early, so the product of both weights approximates the transient)::

        S = exp(-TEprep/T2) * bSSFP(M0, T1, T2, a, TR)

    Parameters: ``te_prep_ms`` (ms), ``flip_deg`` (deg), ``tr_ms`` (ms).
    """

    name = "t2prep_bssfp"
    PARAMS = {"te_prep_ms": ParamSpec("T2-preparation echo time in ms", 0.0),
              "flip_deg": _FLIP, "tr_ms": _TR}
    uses_flip = True

    def render(self, ctx, p):
        readout = fast.bssfp(ctx.m0, ctx.t1, ctx.t2, self._flip(ctx, p["flip_deg"]), p["tr_ms"])
        return readout.mul_(fast.exp_(ctx.t2.reciprocal().mul_(-p["te_prep_ms"])))  # signal.t2prep weight


class TSE(Family):
    """Turbo/fast spin echo, T2- or PD-weighted, with optional black-blood preparation.

    :func:`~nnunetv2_physaug.physics.signal.spin_echo`::

        S = M0 (1 - exp(-TR/T1)) exp(-TE/T2)

    Short TE + long TR gives PD weighting, long TE T2 weighting. Cardiac TSE is usually
    double-inversion black-blood: blood (label-aware, or T2 above the blood threshold) is
    multiplied by ``blood_factor`` (0 = perfectly suppressed, 1 = no suppression).
    The B1 field is not applied (refocusing-pulse errors are not modelled).

    ``blood_partial_volume`` (0 or 1): the tissue maps hold one T1/T2 per pixel, the M0-weighted mean
    of the tissues in it, so a myocardium pixel that shares its volume with blood has a long T2 and,
    outside the blood label, escapes the suppression: T2-weighted renders then show a bright rim
    along the endocardium (rim / interior myocardium 1.53 on renders of MyoPS maps vs 0.95 on real
    T2-weighted images; 1.05 over normal myocardium). With 1, non-blood pixels next to blood are rendered as
    two compartments: blood share of M0 ``w = (T2 - T2_tissue) / (T2_blood - T2_tissue)`` (:meth:`RenderContext.blood_share`;
    T2 is the M0-weighted mean of the compartments; T1/T2 of the compartments are the region medians over
    myocardium and blood), ``S = M0 [(1 - w) SE(T1_tissue, T2_tissue) + w blood_factor SE(T1_blood,
    T2_blood)]``, so only the blood compartment is suppressed (MyoPS maps: rim / interior 1.53 -> 0.62;
    real 0.95, whose near-wall slow blood is not fully suppressed either).

    ``slow_flow_fraction`` (unitless, [0, 1]; with ``blood_partial_volume`` 1): blood next to the wall
    moves slowly, so part of it is still in the slice when the double inversion's slice-selective
    re-inversion restores it, and it is not nulled. The blood compartment of those border pixels keeps
    ``bf_wall = blood_factor + slow_flow_fraction (1 - blood_factor)`` of its signal instead of
    ``blood_factor``: 0 suppresses it as the cavity's blood (rim / interior 0.62 on MyoPS maps), 1 leaves it
    unsuppressed (1.24; the one-compartment rim of ``blood_partial_volume`` 0 is 1.42); real T2-weighted images
    lie between (0.95), and ``[0, 1]`` gives 0.97 (``check_realism.py``).

    ``cavity_tissue`` (0 or 1): the converse, inside the blood label. Cavity labels hold papillary
    muscles and trabeculae (dark in the cine; the estimator gives them myocardial T1/T2); the
    preparation suppresses moving blood, not tissue, so with 1 a blood-labelled pixel with blood share
    ``w`` of its M0 (:meth:`RenderContext.blood_share`) is rendered as two compartments,
    ``S = M0 [w blood_factor SE_b + (1 - w) SE_t]`` (``SE`` of the region medians, as above). Real MyoPS
    T2-weighted images: cavity pixels darker than the blood-myocardium midpoint of the cine are 0.9 x
    normal myocardium (``check_realism.py``).

    Parameters: ``tr_ms`` (ms), ``te_ms`` (ms), ``blood_factor`` (unitless, [0, 1]),
    ``blood_partial_volume`` (0 or 1), ``slow_flow_fraction`` (unitless, [0, 1]), ``cavity_tissue`` (0 or 1).
    """

    name = "tse"
    PARAMS = {"tr_ms": _TR, "te_ms": _TE,
              "blood_factor": ParamSpec("residual blood signal after black-blood preparation", 0.0, 1.0),
              "blood_partial_volume": ParamSpec("render blood-mixed pixels as two compartments (0 or 1)", 0.0, 1.0),
              "slow_flow_fraction": ParamSpec("share of the suppressed signal that blood at the wall keeps "
                                              "(slow flow; with blood_partial_volume 1)", 0.0, 1.0, default=0.0),
              "cavity_tissue": _CAVITY_TISSUE, **_WALL_LAYER}

    def render(self, ctx, p):
        ctx.apply_wall_layer(p)
        s = fast.spin_echo(ctx.m0, ctx.t1, ctx.t2, p["tr_ms"], p["te_ms"])
        if p["blood_factor"] == 1.0:
            return s
        blood = ctx.blood_mask()
        bf = p["blood_factor"]
        cavity = p.get("cavity_tissue", 0.0) >= 0.5
        partial = p.get("blood_partial_volume", 0.0) >= 0.5
        if not (cavity or partial) or not bool(blood.any()):
            return torch.where(blood, s * bf, s)
        (t1_b, t2_b), (t1_t, t2_t) = ctx.compartment_medians()
        # both compartments' unit-M0 signals in one call (one 2-vector call costs less than two scalar calls)
        se_b, se_t = signal.spin_echo(1.0, torch.tensor([t1_b, t1_t]), torch.tensor([t2_b, t2_t]), p["tr_ms"],
                                      p["te_ms"]).tolist()
        if cavity:
            # a blood-labelled pixel is a blood / tissue mixture: only its blood compartment is suppressed
            w = ctx.blood_share()
            mixture = ctx.m0 * (w * (bf * se_b - se_t) + se_t)  # M0 [w bf SE_b + (1 - w) SE_t]
            suppressed = torch.where(blood, mixture, s)
        else:
            suppressed = torch.where(blood, s * bf, s)
        if not partial or not t2_b > t2_t:
            return suppressed
        w = ctx.blood_share()
        bf_wall = bf + p.get("slow_flow_fraction", 0.0) * (1.0 - bf)  # slow blood at the wall escapes in part
        mixed = ctx.m0 * ((1.0 - w) * se_t + w * (bf_wall * se_b))
        return torch.where(ctx.near_blood_mask(), mixed, suppressed)


FAMILIES: dict[str, Family] = {cls.name: cls() for cls in (
    SpoiledGRE, LookLocker, BSSFP, LGE, PSIR, SaturationRecoveryPerfusion, T2PrepBSSFP, TSE)}
