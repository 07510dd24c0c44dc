"""Render a random contrast from tissue maps: the per-sample work of the training data loader.

``ContrastRenderer(protocol).render(m0, t1, t2, rng, labels=None, valid=None)`` draws a family and
its parameters, renders the signal equation, applies the protocol's imperfections (B1 field,
receive bias, Rician noise) and clips to the P99.5 of the valid pixels. The z-score that nnU-Net's
preprocessing would apply is the caller's job.

Performance: this runs single-threaded per sample in the loader (DESIGN §3), so everything is
float32, temporaries are reused in place, and percentiles are nearest-rank statistics on at most
``postprocess.stats_max_pixels`` strided valid pixels (``torch.kthvalue``, no full sort).
"""
from __future__ import annotations

import math
from typing import Optional, Union

import numpy as np
import torch

from .context import ReferenceVoxels, RenderContext, _given_medians, _record_medians
from .families import FAMILIES
from .imperfections import NormalPool, add_rician_noise, scale_relaxation, smooth_field
from .pathology import PathologyMasks, apply_edema, draw_pathology
from .protocol import Protocol

__all__ = ["ContrastRenderer", "RenderContext", "ReferenceVoxels"]

ArrayLike = Union[torch.Tensor, np.ndarray]


def _as_tensor(x: ArrayLike, name: str) -> torch.Tensor:
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(x)  # no copy
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch tensor or numpy array, got {type(x).__name__}")
    return x


class ContrastRenderer:
    """Draws and renders random contrasts of a :class:`~.protocol.Protocol`.

    Example::

        renderer = ContrastRenderer(load_protocol("wide"))
        if rng.random() < renderer.p_render:
            image, params = renderer.render(m0, t1, t2, rng, labels=seg, valid=seg >= 0)
    """

    def __init__(self, protocol: Protocol, noise_pool: Optional[NormalPool] = None):
        """``noise_pool``: draw the standard-normal values of Rician noise from this pool instead of
        fresh (same distribution, much cheaper; see :class:`~.imperfections.NormalPool`); the
        training data loader uses one, one-off renders (previews, checks) need not."""
        self.protocol = protocol
        self.noise_pool = noise_pool
        self.p_render: float = protocol.p_render
        self._families = [FAMILIES[f.family] for f in protocol.families]
        self._cum = np.cumsum([f.probability for f in protocol.families])
        #: masks of the simulated pathology of the last render (None: none drawn); for inspection
        self.last_pathology: Optional[PathologyMasks] = None

    def choose_family(self, rng: np.random.Generator) -> int:
        """Index into ``protocol.families`` of a family drawn with the protocol's probabilities."""
        return min(int(np.searchsorted(self._cum, rng.random() * self._cum[-1], side="right")),
                   len(self._cum) - 1)

    def _check(self, m0, t1, t2, labels, valid, check_finite: bool = True):
        maps = {"M0": _as_tensor(m0, "m0"), "T1": _as_tensor(t1, "t1"), "T2": _as_tensor(t2, "t2")}
        shape = maps["M0"].shape
        if len(shape) < 2:
            raise ValueError(f"maps must have at least 2 dimensions (..., Y, X); got shape {tuple(shape)}")
        for name, x in maps.items():
            if x.shape != shape:
                raise ValueError(f"shape mismatch: M0 has shape {tuple(shape)} but {name} has {tuple(x.shape)}")
            if x.dtype != torch.float32:
                maps[name] = x = x.float()
            # One reduction is far cheaper than an elementwise check; NaN/Inf make the sum non-finite.
            if check_finite and not math.isfinite(float(x.sum())) and not bool(torch.isfinite(x).all()):
                raise ValueError(f"{name} map contains NaN or Inf values; fix or recompute the tissue maps")
        if labels is not None:
            labels = _as_tensor(labels, "labels")
            if labels.shape != shape:
                raise ValueError(f"shape mismatch: maps have shape {tuple(shape)} but labels have {tuple(labels.shape)}")
        if valid is not None:
            valid = _as_tensor(valid, "valid")
            if valid.shape != shape:
                raise ValueError(f"shape mismatch: maps have shape {tuple(shape)} but valid has {tuple(valid.shape)}")
            if valid.dtype != torch.bool:
                valid = valid != 0
        return maps["M0"], maps["T1"], maps["T2"], labels, valid

    def _family_index(self, family: str) -> int:
        names = [f.family for f in self.protocol.families]
        if family not in names:
            raise ValueError(f"family {family!r} is not in protocol {self.protocol.name!r} ({', '.join(names)})")
        return names.index(family)

    def reference(self, m0: ArrayLike, t1: ArrayLike, t2: ArrayLike,
                  labels: Optional[ArrayLike] = None) -> ReferenceVoxels:
        """Reference voxels (shape (..., N); T1, T2 in ms) prepared for repeated :meth:`draw_on`."""
        m0, t1, t2, labels, _ = self._check(m0, t1, t2, labels, None)
        post = self.protocol.postprocess
        return ReferenceVoxels(m0, t1.clamp(min=post.t_min_ms), t2.clamp(min=post.t_min_ms), labels)

    def draw(self, m0: ArrayLike, t1: ArrayLike, t2: ArrayLike, rng: np.random.Generator,
             labels: Optional[ArrayLike] = None, family: Optional[str] = None) -> dict:
        """Draw a family and its sequence parameters on *reference* voxels, with their statistics.

        Use it to render several regions of one case under one draw, normalised like the whole
        case: pass voxels that represent the case (e.g. a subsample of its normalisation mask, shape
        (1, N)), then ``render(region..., params=draw)`` for each region. Parameters that depend on
        the maps (TI from P99(T1), the LGE null time of the median myocardial T1, the blood and
        myocardium medians of ``cavity_tissue`` and two-compartment black blood,
        :data:`COMPARTMENT_MEDIAN_KEYS`) come from the reference, and so do the clip level and the
        statistics of the clipped rendering (smooth fields and noise excluded).

        Returns:
            the params dict of :meth:`render` plus ``clip_level``, ``reference_mean_signal`` (mean
            rendered signal before clipping, the noise reference), ``reference_mean`` and
            ``reference_std`` (of the clipped rendering).
        """
        return self.draw_on(self.reference(m0, t1, t2, labels), rng, family=family)

    def draw_on(self, ref: ReferenceVoxels, rng: np.random.Generator, family: Optional[str] = None) -> dict:
        """:meth:`draw` on reference voxels prepared by :meth:`reference` (same draws, same result)."""
        post = self.protocol.postprocess
        ctx = ref.context(self.protocol)
        m0, t1, t2 = ref.m0, ref.t1, ref.t2
        i = self.choose_family(rng) if family is None else self._family_index(family)
        fam, spec = self._families[i], self.protocol.families[i]
        params: dict = {"family": fam.name}
        params.update(fam.sample(rng, spec.params, ctx))
        image = fam.render(ctx, params)
        _record_medians(ctx, params)
        if image.data_ptr() in (m0.data_ptr(), t1.data_ptr(), t2.data_ptr()):
            image = image.clone()
        if fam.signed:
            params["reference_mean_signal"] = ctx.mean(image.abs())
            level = ctx.percentile(image.abs(), post.clip_percentile)
            image.clamp_(-level, level)
        else:
            params["reference_mean_signal"] = ctx.mean(image)
            level = ctx.percentile(image, post.clip_percentile)
            image.clamp_(0.0, level)
        params["clip_level"] = level
        params["reference_mean"] = float(image.mean())
        params["reference_std"] = float(image.std(unbiased=False))
        return params

    def render(self, m0: ArrayLike, t1: ArrayLike, t2: ArrayLike, rng: np.random.Generator,
               labels: Optional[ArrayLike] = None, valid: Optional[ArrayLike] = None,
               family: Optional[str] = None, params: Optional[dict] = None, check_finite: bool = True,
               copy_maps: bool = True) -> tuple[torch.Tensor, dict]:
        """Render one random contrast.

        Args:
            m0, t1, t2: float tensors/arrays of identical shape (..., Y, X); T1, T2 in ms. The last
                two axes are in-plane (smooth fields vary over them). Not modified.
            rng: source of every random draw (parameters, fields, noise).
            labels: optional integer map of the same shape (ACDC: 1 RV, 2 MYO, 3 LV; -1 outside
                the crop) for label-aware Gd uptake and black blood.
            valid: optional bool map; only these pixels enter percentiles and the noise level.
            family: render this family (must be in the protocol) instead of drawing one.
            params: render with these sequence parameters (from :meth:`draw`, or a previous
                render) instead of drawing them; their ``clip_level`` and
                ``reference_mean_signal`` (if present) replace the statistics of this region.
                Imperfections are still drawn from ``rng``.
            check_finite: refuse maps with NaN/Inf (three reductions); the loader's aligned maps are
                checked when they are written and skip it.
            copy_maps: leave the caller's maps untouched (the T1/T2 clamp and simulated edema work on
                copies); False lets them happen in place in T1/T2 (float32 inputs the caller owns, e.g.
                the loader's fresh crop), which saves two map-sized copies per render.
        Returns:
            ``(image, params)``: float32 tensor of the maps' shape, finite, clipped to
            [0, P] (signed families: [-P, P] with P from |S|), P the clip percentile of the valid
            pixels; ``params`` a JSON-serialisable dict with ``family``, every drawn parameter
            (units in the keys), ``clip_level`` and, where the family used them, the compartment
            medians (:data:`COMPARTMENT_MEDIAN_KEYS`): rendering again with ``params`` reproduces them.
        """
        m0, t1, t2, labels, valid = self._check(m0, t1, t2, labels, valid, check_finite)
        post = self.protocol.postprocess
        if copy_maps:
            t1 = t1.clamp(min=post.t_min_ms)  # new tensors: the caller's maps stay untouched
            t2 = t2.clamp(min=post.t_min_ms)
        else:
            t1.clamp_(min=post.t_min_ms)
            t2.clamp_(min=post.t_min_ms)
        ctx = RenderContext(m0, t1, t2, labels, valid, self.protocol)
        ctx.smooth_field = smooth_field

        need_sample = params is None
        if params is not None:
            params = dict(params)
            fam = self._families[self._family_index(params["family"])]
            # blood share and black-blood compartments from the draw's (case-level) medians: like TI and
            # the clip level, what depends on the maps comes from the reference, and a crop then needs
            # no region medians of its own (four partitions per load)
            given = _given_medians(params)
            if given is not None:
                ctx.cache["medians"] = given
        else:
            i = self.choose_family(rng) if family is None else self._family_index(family)
            fam, spec = self._families[i], self.protocol.families[i]
            params = {"family": fam.name}
        self._change_tissue(ctx, t1, t2, labels, rng, params)
        imp = self.protocol.imperfections
        ctx.rng = rng
        if need_sample:
            params.update(fam.sample(rng, spec.params, ctx))

        shape_yx = tuple(t1.shape[-2:])
        if fam.uses_flip and "b1" in imp and rng.random() < imp["b1"].probability:
            ctx.b1 = self._field(rng, shape_yx, imp["b1"].params["grid"], imp["b1"].params["scale"], params, "b1_scale")

        image = fam.render(ctx, params)
        _record_medians(ctx, params)
        if image.data_ptr() in (m0.data_ptr(), t1.data_ptr(), t2.data_ptr()):
            image = image.clone()  # never hand out (or later modify in place) an input map

        image = self._receive(image, ctx, fam, params, rng, shape_yx)
        level = params.get("clip_level")
        if fam.signed:
            level = ctx.percentile(image.abs(), post.clip_percentile) if level is None else level
            image.clamp_(-level, level)
        else:
            level = ctx.percentile(image, post.clip_percentile) if level is None else level
            image.clamp_(0.0, level)
        params["clip_level"] = level
        return image, params

    def _change_tissue(self, ctx: RenderContext, t1: torch.Tensor, t2: torch.Tensor, labels: Optional[torch.Tensor],
                       rng: np.random.Generator, params: dict) -> None:
        """The protocol's changes of this render's T1/T2 (clamped copies, or the caller's with
        ``copy_maps=False``): simulated pathology and the relaxation scaling of the unlabelled tissue."""
        # Pathology is drawn on this region after the sequence parameters of a case-level draw:
        # the operator sets TI on normal myocardium, and edema changes tissue, not the protocol.
        self.last_pathology = None
        path = self.protocol.pathology
        if path and labels is not None:
            lab = self.protocol.labels
            masks = draw_pathology(path, labels, lab.lv_cavity, lab.myocardium, rng, params)
            apply_edema(t1, t2, masks)
            ctx.pathology = self.last_pathology = masks
            if "uptake" in path and rng.random() < path["uptake"].probability:
                ctx.uptake = path["uptake"].params
        scaling = self.protocol.imperfections.get("relaxation_scaling")
        # probability 0 draws nothing, so a preset that lists the option switched off renders as before
        if scaling is not None and labels is not None and scaling.probability > 0 and rng.random() < scaling.probability:
            grid = int(rng.integers(int(scaling.params["grid"][0]), int(scaling.params["grid"][1]) + 1))
            tissue = ~(ctx.blood_mask() | ctx.myocardium_mask())
            lo, hi = scale_relaxation(t1, t2, tissue, rng, grid, scaling.params["factor"])
            params.update(relaxation_scaling_grid=grid, relaxation_scaling_min=lo, relaxation_scaling_max=hi)

    def _receive(self, image: torch.Tensor, ctx: RenderContext, fam, params: dict, rng: np.random.Generator,
                 shape_yx: tuple) -> torch.Tensor:
        """The receive chain's imperfections of the protocol: a smooth bias field, then Rician noise."""
        imp = self.protocol.imperfections
        if "bias" in imp and rng.random() < imp["bias"].probability:
            image.mul_(self._field(rng, shape_yx, imp["bias"].params["grid"], imp["bias"].params["gain"],
                                   params, "bias_gain"))
        if "noise" in imp and rng.random() < imp["noise"].probability:
            snr = float(rng.uniform(*imp["noise"].params["snr"]))
            ref = params.get("reference_mean_signal")
            if ref is None:
                ref = ctx.mean(image.abs()) if fam.signed else ctx.mean(image)
            sigma = ref / snr
            params["noise_snr"] = snr
            params["noise_sigma"] = sigma
            if sigma > 0:
                image = add_rician_noise(image, sigma, rng, fam.signed, pool=self.noise_pool)
        return image

    @staticmethod
    def _field(rng, shape_yx, grid_range, value_range, params: dict, key: str) -> torch.Tensor:
        grid = int(rng.integers(int(grid_range[0]), int(grid_range[1]) + 1))
        field = smooth_field(rng, shape_yx, grid, value_range)
        params[f"{key}_grid"] = grid
        lo, hi = torch.aminmax(field)  # one pass instead of two
        params[f"{key}_min"] = float(lo)
        params[f"{key}_max"] = float(hi)
        return field
