"""The per-render context of :class:`~.renderer.ContrastRenderer`: the maps of one region (or a case's
reference voxels), its label masks, the blood shares and Gd concentrations of the label-aware families, and the
cheap statistics (subsampled percentiles and means) the render needs; and :class:`ReferenceVoxels`, a case's
voxel subsample prepared once for its case-level parameter draws."""
from __future__ import annotations

import math
from typing import Optional

import numpy as np
import torch

from .imperfections import smooth_field
from .masks import chessboard_distance, dilate_3x3
from .pathology import PathologyMasks, soften_concentration
from .protocol import Protocol

__all__ = ["RenderContext", "ReferenceVoxels", "COMPARTMENT_MEDIAN_KEYS"]


#: parameter keys (ms) of the compartments' medians, in the order of
#: :meth:`RenderContext.compartment_medians` (blood T1, blood T2, myocardium T1, myocardium T2)
COMPARTMENT_MEDIAN_KEYS = ("t1_blood_median_ms", "t2_blood_median_ms", "t1_myocardium_median_ms",
                           "t2_myocardium_median_ms")


def _record_medians(ctx: "RenderContext", params: dict) -> None:
    """Write the compartment medians a render used into its parameters (when it used them), so that
    rendering again with these parameters uses the same values."""
    medians = ctx.cache.get("medians")
    if medians is not None and COMPARTMENT_MEDIAN_KEYS[0] not in params:
        (t1_b, t2_b), (t1_t, t2_t) = medians
        params.update(zip(COMPARTMENT_MEDIAN_KEYS, (t1_b, t2_b, t1_t, t2_t)))


def _given_medians(params: dict) -> Optional[tuple[tuple[float, float], tuple[float, float]]]:
    """The compartment medians held by ``params`` (None if it holds none)."""
    if COMPARTMENT_MEDIAN_KEYS[0] not in params:
        return None
    t1_b, t2_b, t1_t, t2_t = (float(params[k]) for k in COMPARTMENT_MEDIAN_KEYS)
    return (t1_b, t2_b), (t1_t, t2_t)


class RenderContext:
    """The maps of one render and cheap cached statistics over their valid pixels.

    Attributes:
        m0, t1, t2: float32 tensors of shape (..., Y, X); T1/T2 in ms, clamped >= t_min_ms.
        labels: optional integer tensor of the same shape (or None).
        b1: optional (Y, X) float32 flip-angle scale field (None = ideal transmit).
        r1: Gd relaxivity in L/(mmol s).
        cache: scratch space shared by a family's sample() and render().
    """

    def __init__(self, m0: torch.Tensor, t1: torch.Tensor, t2: torch.Tensor, labels: Optional[torch.Tensor],
                 valid: Optional[torch.Tensor], protocol: Protocol):
        self.m0, self.t1, self.t2, self.labels = m0, t1, t2, labels
        self.valid = valid
        self.b1: Optional[torch.Tensor] = None
        self.r1 = protocol.gd_r1
        self.label_spec = protocol.labels
        self.cache: dict = {}
        # set by ContrastRenderer.render for a spatial region (never for draw()'s voxel list):
        self.pathology: Optional[PathologyMasks] = None
        self.uptake: Optional[dict] = None
        self.rng: Optional[np.random.Generator] = None
        #: the smooth-field sampler of uneven Gd uptake (the renderer sets its own, so that its fields are one
        #: function: scripts/bench_loader.py --profile and the tests replace it there)
        self.smooth_field = smooth_field
        self._masks: dict[str, torch.Tensor] = {}
        self._max_n = protocol.postprocess.stats_max_pixels
        self._idx: dict[Optional[str], torch.Tensor] = {}
        #: the maps are an in-plane region (False: a list of reference voxels, which has no neighbours)
        self.spatial = True

    # -- regions ------------------------------------------------------------------------------
    def _label_mask(self, values: tuple[int, ...]) -> torch.Tensor:
        # numpy compares small integer maps faster than torch on CPU
        labels = _numpy(self.labels) if self.labels.device.type == "cpu" else self.labels
        mask = labels == values[0]
        for v in values[1:]:
            mask |= labels == v
        return torch.from_numpy(mask) if isinstance(mask, np.ndarray) else mask

    def blood_mask(self) -> torch.Tensor:
        """Blood pixels: label in ``labels.blood``, or, without labels, T2 > ``labels.blood_t2_min_ms``."""
        if "blood" not in self._masks:
            if self.labels is not None:
                self._masks["blood"] = self._label_mask(self.label_spec.blood)
            else:
                self._masks["blood"] = self.t2 > self.label_spec.blood_t2_min_ms
        return self._masks["blood"]

    def myocardium_mask(self) -> torch.Tensor:
        """Myocardium pixels: label in ``labels.myocardium``; without labels, all non-blood tissue
        (the maps alone cannot tell myocardium from other soft tissue of similar T1/T2)."""
        if "myocardium" not in self._masks:
            if self.labels is not None:
                self._masks["myocardium"] = self._label_mask(self.label_spec.myocardium)
            else:
                self._masks["myocardium"] = ~self.blood_mask()
        return self._masks["myocardium"]

    def near_blood_mask(self) -> torch.Tensor:
        """Non-blood pixels with a blood pixel among their 8 in-plane neighbours (last two axes): the
        pixels at the label border whose volume can hold blood (its share: :meth:`blood_share`)."""
        if "near_blood" not in self._masks:
            blood = self.blood_mask()
            self._masks["near_blood"] = dilate_3x3(blood) & ~blood
        return self._masks["near_blood"]

    def region_values(self, blood: float, myocardium: float, other: float) -> torch.Tensor:
        """A float32 map holding ``blood``/``myocardium``/``other`` in the respective regions."""
        out = torch.full_like(self.t1, other)
        out.masked_fill_(self.myocardium_mask(), myocardium)
        out.masked_fill_(self.blood_mask(), blood)
        return out

    def compartment_medians(self) -> tuple[tuple[float, float], tuple[float, float]]:
        """``((T1, T2) of blood, (T1, T2) of myocardium)`` in ms: medians of this render's maps over the
        blood and the myocardium regions (valid pixels), the pure compartments of mixed pixels; or, when
        the render was given parameters that hold them (:data:`COMPARTMENT_MEDIAN_KEYS`, written by
        :meth:`ContrastRenderer.draw_on`), the case's medians from its reference voxels."""
        if "medians" not in self.cache:
            self.cache["medians"] = (
                (self.percentile(self.t1, 50.0, region="blood"), self.percentile(self.t2, 50.0, region="blood")),
                (self.percentile(self.t1, 50.0, region="myocardium"),
                 self.percentile(self.t2, 50.0, region="myocardium")))
        return self.cache["medians"]

    def blood_share(self) -> torch.Tensor:
        """Blood share ``w`` of each pixel's M0, float32 in [0, 1], shape of the maps.

        The estimator's maps hold one T1/T2 per pixel, the M0-weighted mean of the tissues in it, so T2
        (blood ~250-290 ms, myocardium ~50 ms) gives ``w = (T2 - T2_myo) / (T2_blood - T2_myo)``, clipped,
        with the compartments' T2 the region medians (:meth:`compartment_medians`): papillary muscles and
        trabeculae inside a cavity label (myocardial T1/T2) get ``w ~ 0``. 1 where that cannot be told
        (no myocardium, or blood not above it).
        """
        if "blood_share" not in self.cache:
            (_, t2_b), (_, t2_t) = self.compartment_medians()
            if t2_b > t2_t:
                w = self.t2.sub(t2_t).div_(t2_b - t2_t).clamp_(0.0, 1.0)
            else:
                w = torch.ones_like(self.t2)
            self.cache["blood_share"] = w
        return self.cache["blood_share"]

    def blood_mixing_weight(self, cavity_tissue: bool, border: bool) -> Optional[torch.Tensor]:
        """Blood share ``w`` (:meth:`blood_share`) on the pixels rendered as blood / tissue mixtures, 0
        elsewhere (float32, shape of the maps): the blood-labelled pixels with ``cavity_tissue``, the
        non-blood pixels next to blood (:meth:`near_blood_mask`) with ``border``; None with neither."""
        if not (cavity_tissue or border):
            return None
        if cavity_tissue and border:
            mixed = self.blood_mask() | self.near_blood_mask()
        else:
            mixed = self.blood_mask() if cavity_tissue else self.near_blood_mask()
        return self.blood_share().mul(mixed)

    def apply_wall_layer(self, params: dict) -> None:
        """Render the blood-labelled layer along the wall as part tissue (``params["wall_layer_share"]`` s,
        ``params["wall_layer_px"]`` L in pixels): a blood pixel at chessboard distance r from the nearest
        non-blood pixel (1 = touching it) takes tissue share ``f = s max(0, 1 - (r - 1) / L)`` of its T1
        and T2, moved towards the myocardium's medians (:meth:`compartment_medians`) by that share, the
        maps' own M0-weighted mixing, so :meth:`blood_share` falls by ``f`` and the Gd and black-blood
        families render the layer as blood / tissue mixtures. M0 is kept (slow blood keeps blood's
        proton density; the MyoPS maps give blood 1.1-1.4 x myocardium's M0). Why: on real LGE and
        black-blood T2-weighted images (MyoPS) the blood-myocardium edge lies inside the cavity label, by a
        median of 0.5 and 2.5 pixels of 1.5 mm (``scripts/check_realism.py``, edge position), while the
        cine the labels fit has it at the label border: trabeculae, slow-flowing blood the double
        inversion does not null, and a cavity smaller at the other sequences' cardiac phase.

        Once per render (the family's sample and render both call it), on an in-plane region with
        labels; nothing for ``s = 0``, a voxel list (:class:`ReferenceVoxels`) or label-free maps. The
        compartment medians are taken before the maps change, and the maps are replaced by new tensors
        (the caller's stay untouched)."""
        share = params.get("wall_layer_share", 0.0)
        if share <= 0.0 or not self.spatial or self.labels is None or self.cache.get("wall_layer_done"):
            return
        self.cache["wall_layer_done"] = True
        blood = self.blood_mask()
        if not bool(blood.any()):
            return
        _, (t1_t, t2_t) = self.compartment_medians()
        depth = float(params.get("wall_layer_px", 1.0))
        steps = math.ceil(depth) + 1  # pixels not reached hold ceil(L) + 1 >= L + 1: share 0 there
        r = chessboard_distance(~blood, blood, steps)
        f = r.sub_(1.0).div_(-depth).add_(1.0).clamp_(min=0.0).mul_(share).mul_(blood)
        self.t1 = torch.lerp(self.t1, self.t1.new_tensor(t1_t), f)
        self.t2 = torch.lerp(self.t2, self.t2.new_tensor(t2_t), f)
        self.cache.pop("blood_share", None)

    def gd_concentration(self, blood: float, myocardium: float, other: float, params: dict) -> torch.Tensor:
        """Gd concentration map (mmol/L): per region, then the render's simulated scar / MVO and the
        uptake heterogeneity and partial-volume blur (:mod:`.pathology`) when they were drawn.

        With ``params["cavity_tissue"]`` >= 0.5 a blood-labelled pixel holds ``w [Gd]_blood + (1 - w)
        [Gd]_myocardium`` (``w``: :meth:`blood_share`; the voxel's mean concentration, and, with the maps'
        mixed native T1, the mixed relaxation rate ``1/T1 + r1 [Gd]`` the maps' own mixing assumes).
        With ``params["blood_partial_volume"]`` >= 0.5 the converse at the border: a non-blood pixel next
        to blood (:meth:`near_blood_mask`) holds ``w [Gd]_blood + (1 - w) [Gd]_its region``."""
        cavity = params.get("cavity_tissue", 0.0) >= 0.5
        border = params.get("blood_partial_volume", 0.0) >= 0.5
        # the concentration of each pixel's non-blood compartment (with cavity tissue, a blood pixel's is
        # the myocardium's), then its blood compartment's share w of blood's: conc + w ([Gd]_blood - conc),
        # one pass for both options (w = 0 outside the mixed pixels)
        conc = self.region_values(myocardium if cavity else blood, myocardium, other)
        mixing = self.blood_mixing_weight(cavity, border)
        if mixing is not None:
            conc = (blood - conc).mul_(mixing).add_(conc)
        masks = self.pathology
        if masks is not None and "scar_conc_blood_factor" in masks.params:
            conc.masked_fill_(masks.scar, blood * masks.params["scar_conc_blood_factor"])
            if "mvo_conc_myocardium_factor" in masks.params:
                conc.masked_fill_(masks.mvo, myocardium * masks.params["mvo_conc_myocardium_factor"])
        if self.uptake is not None and self.rng is not None:
            conc = soften_concentration(conc, self.uptake, self.rng, params, self.smooth_field)
        return conc

    # -- statistics ---------------------------------------------------------------------------
    def _indices(self, region: Optional[str]) -> np.ndarray:
        """Flat indices of at most ``stats_max_pixels`` strided valid pixels (of ``region``)."""
        if region in self._idx:
            return self._idx[region]
        n = self.t1.numel()
        step = max(1, n // self._max_n)
        masks = []
        if self.valid is not None:
            masks.append(self.valid)
        if region == "myocardium":
            masks.append(self.myocardium_mask())
        elif region == "blood":
            masks.append(self.blood_mask())
        elif region is not None:
            raise ValueError(f"unknown region {region!r}")
        if not masks:
            idx = np.arange(0, n, max(1, math.ceil(n / self._max_n)))
        else:
            flat = [_numpy(m).reshape(-1) for m in masks]

            def select(s: int) -> np.ndarray:
                sel = flat[0][::s]
                for f in flat[1:]:
                    sel = sel & f[::s]
                return np.flatnonzero(sel) * s

            # Stride first (cheap); a sparse region gets too few samples that way, so then
            # select among all pixels and stride the selection instead.
            idx = select(step)
            if step > 1 and idx.size < self._max_n // 4:
                idx = select(1)
                idx = idx[::max(1, math.ceil(idx.size / self._max_n))]
            if idx.size == 0:
                # No valid pixel (e.g. a patch entirely outside the crop): fall back to the whole
                # valid area, then to all pixels, rather than failing in the data loader.
                idx = self._indices(None) if region is not None else np.arange(0, n, max(1, math.ceil(n / self._max_n)))
        self._idx[region] = idx
        return idx

    def percentile(self, x: torch.Tensor, q: float, region: Optional[str] = None) -> float:
        """Nearest-rank ``q``-th percentile of ``x`` over the (subsampled) valid pixels of ``region``."""
        sample = _numpy(x).reshape(-1)[self._indices(region)]
        k = min(sample.size, max(1, math.ceil(q / 100.0 * sample.size))) - 1
        return float(np.partition(sample, k)[k])

    def mean(self, x: torch.Tensor) -> float:
        """Mean of ``x`` over the (subsampled) valid pixels."""
        return float(_numpy(x).reshape(-1)[self._indices(None)].mean(dtype=np.float64))


class ReferenceVoxels:
    """The reference voxels of :meth:`ContrastRenderer.draw`, checked and clamped once.

    A data loader draws parameters on the same voxels of a case (a fixed subsample of its
    normalisation mask) at every load; preparing them (type and finiteness checks, T1/T2 clamp,
    label masks, statistics indices) is the same every time, so :meth:`ContrastRenderer.reference`
    does it once and :meth:`ContrastRenderer.draw_on` reuses it. Holds float32 tensors of shape
    (..., N) (M0, T1 ms, T2 ms; T1/T2 clamped at ``t_min_ms``) and optional integer labels; treat
    them as read-only.
    """

    def __init__(self, m0: torch.Tensor, t1: torch.Tensor, t2: torch.Tensor, labels: Optional[torch.Tensor]):
        self.m0, self.t1, self.t2, self.labels = m0, t1, t2, labels
        # lazily filled by the contexts of the draws, shared between them (masks and strided indices
        # depend only on the voxels and labels, never on the drawn parameters)
        self.masks: dict[str, torch.Tensor] = {}
        self.indices: dict[Optional[str], np.ndarray] = {}

    def context(self, protocol: Protocol) -> RenderContext:
        """A fresh :class:`RenderContext` over these voxels that shares the cached masks and indices."""
        ctx = RenderContext(self.m0, self.t1, self.t2, self.labels, None, protocol)
        ctx._masks = self.masks
        ctx._idx = self.indices
        ctx.spatial = False
        return ctx


def _numpy(x: torch.Tensor) -> np.ndarray:
    """A numpy view of a CPU tensor (a copy for other devices), for cheap statistics."""
    return x.detach().cpu().numpy() if x.device.type != "cpu" else x.detach().numpy()
