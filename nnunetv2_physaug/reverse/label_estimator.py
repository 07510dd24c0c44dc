"""Weight-free tissue-map estimator (``--method label``, DESIGN §5 last point).

No prior weights ship with the package and none can be downloaded, so this estimator explains a
bSSFP slice with reference tissue values instead of a learned prior:

1. **Tissue weights per pixel.** The slice is first brought to physical scale (blood-pool
   median, or its 99th percentile when it has no blood label, set to the reference blood signal).
   Labelled pixels (the dataset's label -> tissue mapping, :mod:`.label_tissues`; ACDC by default:
   labels 1 and 3 = blood, 2 = myocardium) take their tissue,
   with intensity-driven partial volume: a blood-labelled pixel darker than blood is a blood /
   myocardium mixture in proportion to its signal (papillary muscles and trabeculae are labelled
   as cavity in ACDC, border pixels are partial-volume), and a myocardium-labelled pixel brighter
   than myocardium mixes with blood next to a blood pool and with fat elsewhere (epicardial fat).
   Every other pixel gets soft weights over intensity classes (lung, skeletal muscle, liver,
   bright), each weighted by a Gaussian in log-signal distance to the class's reference bSSFP
   signal; soft weights keep the maps smooth across class boundaries. Bright unlabelled pixels
   are fat in slices that carry labels (the heart's blood pools are labelled there) and blood in
   slices without labels (the brightest structures of a cine are its blood pools).
2. **T1/T2 drawn from the tissue table** (``nnunetv2_physaug.physics.tissue_table(field)``): per
   slice, sample and tissue one value from the table's normal (mean, spread), mixed per pixel as
   partial volume does (M0-weighted mean of the tissues' T1, T2), times a smooth random field
   ``exp(variation * cv * g)`` (``g`` a unit-variance field, bicubic upsampling of coarse noise,
   ``cv`` the weighted relative spread of the tissues).
3. **M0 solved per pixel** so that the short-TR bSSFP rendering (alpha = 45 deg) reproduces the
   input exactly up to the slice's global scale: ``M0 = x / c * (1 + cos a + (1 - cos a) T1/T2) / sin a``
   (negative intensities are clipped to 0).

Everything is vectorised torch and runs on whatever device the inputs are on.
"""
from __future__ import annotations


import torch
import torch.nn.functional as F

from ..physics import tissue_table
from .base import SliceEstimate, SliceEstimator
from .label_tissues import ACDC_LABEL_TISSUES, TISSUES as LABEL_TISSUE_NAMES, check_label_values, values_of
from .qc import bssfp_nrmse_pct
from .rng import as_slice_generators, per_row, randn_rows

#: Intensity classes used for unlabelled pixels, dark to bright; the bright class is fat in
#: slices with labels and blood in slices without (see the module docstring).
INTENSITY_CLASSES: tuple[str, ...] = ("lung", "skeletal_muscle", "liver", "bright")
#: Tissues of the table the estimator mixes, in the order of its weight channels.
TISSUES: tuple[str, ...] = ("blood", "myocardium", "lung", "skeletal_muscle", "liver", "fat")
#: Myocardium pixels within this many pixels of a blood label mix with blood rather than fat.
NEAR_BLOOD_PX = 2
#: A slice needs this many blood-labelled pixels to take its scale from the blood pool.
MIN_BLOOD_PIXELS = 20


class LabelEstimator(SliceEstimator):
    """Labels + intensity classes + tissue table; M0 solved so the bSSFP rendering matches.

    Args:
        field: field strength of the tissue table ("1.5T" or "3T").
        variation: amplitude of the smooth spatial T1/T2 variation, in units of the tissue's
            relative spread (0 disables it).
        draw_tissue_values: draw per-slice tissue values from the table's spread (True) or use
            the table means (False).
        class_width: width (natural-log units of signal) of the soft intensity classes.
        grid_px: correlation length of the smooth field in pixels (coarse-grid spacing).
        scale_quantile: quantile of the slice that stands for the bright class when no blood
            label is present.
        label_tissues: label value -> "blood" / "myocardium" / "other" (default: ACDC); a label
            value outside it is an error (:meth:`check_labels`).
    """

    name = "label"

    def __init__(self, field: str = "1.5T", variation: float = 0.5, draw_tissue_values: bool = True,
                 class_width: float = 0.3, grid_px: int = 32, scale_quantile: float = 0.99,
                 label_tissues: dict[int, str] | None = None):
        self.table = tissue_table(field)  # raises a clear ValueError for an unknown field
        self.label_tissues = dict(ACDC_LABEL_TISSUES if label_tissues is None else label_tissues)
        bad = {k: v for k, v in self.label_tissues.items() if v not in LABEL_TISSUE_NAMES or k == 0}
        if bad:
            raise ValueError(f"label_tissues {bad}: tissues are {LABEL_TISSUE_NAMES} and 0 is the background")
        self.field = field
        self.variation = float(variation)
        self.draw_tissue_values = bool(draw_tissue_values)
        self.class_width = float(class_width)
        self.grid_px = int(grid_px)
        self.scale_quantile = float(scale_quantile)

    def identity(self) -> dict:
        return {"estimator": self.name, "prior_hash": None,
                "parameters": {"field": self.field, "variation": self.variation,
                               "draw_tissue_values": self.draw_tissue_values, "class_width": self.class_width,
                               "grid_px": self.grid_px, "scale_quantile": self.scale_quantile,
                               "label_tissues": {str(k): v for k, v in sorted(self.label_tissues.items())},
                               "intensity_classes": list(INTENSITY_CLASSES), "partial_volume": True,
                               "near_blood_px": NEAR_BLOOD_PX,
                               "forward_model": self.forward_model.describe()}}

    def check_labels(self, labels, where: str) -> None:
        """Raise :class:`~.label_tissues.LabelTissueError` naming ``where`` for an unmapped label value."""
        check_label_values(labels, self.label_tissues, where)

    def _reference_signal(self, name: str) -> float:
        t = self.table[name]
        return float(self.forward_model.render(t.m0[0], t.t1[0], t.t2[0]))

    def _smooth_field(self, shape: tuple[int, ...], h: int, w: int, generators, device: torch.device) -> torch.Tensor:
        """Unit-variance smooth random fields of shape (B, K, h, w); slice i's K fields from ``generators[i]``."""
        gh, gw = max(2, round(h / self.grid_px) + 1), max(2, round(w / self.grid_px) + 1)
        coarse = randn_rows(per_row(generators, shape[1]), (1, gh, gw), device)
        g = F.interpolate(coarse, size=(h, w), mode="bicubic", align_corners=True)[:, 0]
        g = g - g.mean(dim=(-2, -1), keepdim=True)
        g = g / g.std(dim=(-2, -1), keepdim=True).clamp_min(1e-6)
        return g.reshape(*shape, h, w)

    def _slice_scale(self, x: torch.Tensor, blood: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-slice factor c so that x / c is in physical bSSFP units; x (B, N), blood (B, N) bool.

        Returns ``(c, from_blood)``: (B,) factors and whether each came from the blood-pool median.
        """
        bright = torch.quantile(x, self.scale_quantile, dim=1)
        pool = torch.where(blood, x, torch.full_like(x, float("nan"))).nanmedian(dim=1).values
        from_blood = blood.sum(dim=1) >= MIN_BLOOD_PIXELS
        scale = torch.where(from_blood, pool, bright) / self._reference_signal("blood")
        return torch.where(scale > 0, scale, torch.ones_like(scale)), from_blood

    def _mix_fraction(self, s: torch.Tensor, a: str, b: str, n_grid: int = 2049) -> torch.Tensor:
        """Fraction f in [0, 1] of tissue ``a`` in an a/b voxel of physical signal ``s``.

        The voxel's maps follow the estimator's own mixing rule (M0 adds up; T1, T2 are M0-weighted
        means), so f solves ``forward_model.render(M(f), T1(f), T2(f)) = s``; signals outside the two tissues'
        range give 0 or 1. The signal is monotone in f, so the curve is tabulated once and
        inverted by interpolation.
        """
        ta, tb = self.table[a], self.table[b]
        f = torch.linspace(0.0, 1.0, n_grid, dtype=torch.float64)
        m = tb.m0[0] + f * (ta.m0[0] - tb.m0[0])
        t1 = (tb.m0[0] * tb.t1[0] + f * (ta.m0[0] * ta.t1[0] - tb.m0[0] * tb.t1[0])) / m
        t2 = (tb.m0[0] * tb.t2[0] + f * (ta.m0[0] * ta.t2[0] - tb.m0[0] * tb.t2[0])) / m
        sig = self.forward_model.render(m, t1, t2)
        if sig[-1] < sig[0]:
            sig, f = sig.flip(0), f.flip(0)
        sig, f = sig.to(s.device, s.dtype), f.to(s.device, s.dtype)
        q = s.clamp(float(sig[0]), float(sig[-1])).contiguous()
        i = torch.searchsorted(sig, q).clamp(1, n_grid - 1)
        s0, s1, f0, f1 = sig[i - 1], sig[i], f[i - 1], f[i]
        return f0 + (f1 - f0) * ((q - s0) / (s1 - s0).clamp_min(1e-12))

    def _tissue_weights(self, s: torch.Tensor, blood: torch.Tensor, myo: torch.Tensor, labelled: torch.Tensor,
                        slice_has_labels: torch.Tensor) -> torch.Tensor:
        """Weights (B, T, H, W) over :data:`TISSUES`, summing to 1 per pixel; s (B, H, W) in physical scale."""
        # labelled pixels: partial volume with the neighbouring tissue, fraction from the signal
        # (myocardium mixes only on its border: inside, brighter pixels are myocardium's own spread)
        f_blood = self._mix_fraction(s, "blood", "myocardium")
        near_blood = F.max_pool2d(blood[:, None].float(), 2 * NEAR_BLOOD_PX + 1, 1, NEAR_BLOOD_PX)[:, 0] > 0
        border = F.max_pool2d((~myo)[:, None].float(), 3, 1, 1)[:, 0] > 0
        f_bright = torch.where(border, torch.where(near_blood, f_blood, self._mix_fraction(s, "fat", "myocardium")),
                               0.0)
        w_blood = torch.where(blood, f_blood, torch.where(myo & near_blood, f_bright, 0.0))
        w_myo = torch.where(blood, 1.0 - f_blood, torch.where(myo, 1.0 - f_bright, 0.0))
        w_fat = torch.where(myo & ~near_blood, f_bright, 0.0)
        # unlabelled pixels: soft intensity classes in log-signal space
        ref = torch.tensor([self._reference_signal(n) for n in ("lung", "skeletal_muscle", "liver", "fat")],
                           device=s.device)
        d = torch.log(s.clamp_min(1e-6))[:, None] - torch.log(ref)[None, :, None, None]
        logits = -0.5 * (d / self.class_width) ** 2
        # softmax written out: torch.softmax over a non-last dim rounds differently for another batch
        # size, and a slice's maps must not depend on its batch
        e = torch.exp(logits - logits.amax(dim=1, keepdim=True))
        w_cls = e / e.sum(dim=1, keepdim=True) * (~labelled)[:, None]
        bright = w_cls[:, 3]
        to_fat = slice_has_labels[:, None, None]
        w_blood = w_blood + torch.where(to_fat, 0.0, bright)
        w_fat = w_fat + torch.where(to_fat, bright, 0.0)
        return torch.stack([w_blood, w_myo, w_cls[:, 0], w_cls[:, 1], w_cls[:, 2], w_fat], dim=1)

    def estimate(self, images: torch.Tensor, labels: torch.Tensor | None, n_samples: int,
                 generators) -> SliceEstimate:
        if images.dim() != 3:
            raise ValueError(f"images must be (B, H, W), got shape {tuple(images.shape)}")
        if labels is not None and labels.shape != images.shape:
            raise ValueError(f"labels of shape {tuple(labels.shape)} do not match images {tuple(images.shape)}")
        device = images.device
        x = images.to(torch.float32).clamp_min(0.0)
        generators = as_slice_generators(generators, images.shape[0])
        b, h, w = x.shape
        k = int(n_samples)
        lab = (labels.to(device=device, dtype=torch.int64) if labels is not None
               else torch.zeros((b, h, w), dtype=torch.int64, device=device))
        blood = torch.isin(lab, torch.tensor(values_of(self.label_tissues, "blood"), dtype=torch.int64, device=device))
        myo = torch.isin(lab, torch.tensor(values_of(self.label_tissues, "myocardium"), dtype=torch.int64, device=device))
        labelled = blood | myo
        slice_has_labels = (blood | myo).flatten(1).any(dim=1)  # (B,)

        scale, from_blood = self._slice_scale(x.flatten(1), blood.flatten(1))  # (B,)
        s = x / scale[:, None, None]

        weights = self._tissue_weights(s, blood, myo, labelled, slice_has_labels)  # (B, T, H, W)

        tab = {attr: torch.tensor([getattr(self.table[n], attr) for n in TISSUES], device=device)
               for attr in ("m0", "t1", "t2")}  # (T, 2): mean, sd
        m0_t = tab["m0"][:, 0].clamp_min(1e-3)
        pv = weights * m0_t[None, :, None, None]
        pv = pv / pv.sum(dim=1, keepdim=True).clamp_min(1e-12)  # partial-volume (M0-weighted) mixing
        out = torch.empty((b, k, 3, h, w), dtype=torch.float32, device=device)
        for ch, attr in ((1, "t1"), (2, "t2")):
            mean, sd = tab[attr][:, 0], tab[attr][:, 1]  # (T,)
            if self.draw_tissue_values:
                z = randn_rows(generators, (k, len(TISSUES)), device)
                val = (mean + sd * z).clamp_min(1.0)  # (B, K, T)
            else:
                val = mean.expand(b, k, -1)
            # broadcast-and-sum, not einsum: a batched matmul may round differently for another batch
            # size, and a slice's maps must not depend on its batch (one ulp was enough to differ)
            t_map = (val[:, :, :, None, None] * pv[:, None]).sum(dim=2)
            if self.variation > 0:
                cv_mix = ((sd / mean)[None, :, None, None] * pv).sum(dim=1)[:, None]
                g = self._smooth_field((b, k), h, w, generators, device)
                t_map = t_map * torch.exp(self.variation * cv_mix * g)
            out[:, :, ch] = t_map.clamp_min(1.0)
        t1, t2 = out[:, :, 1], out[:, :, 2]
        out[:, :, 0] = self.forward_model.m0_for_signal(s[:, None], t1, t2)
        nrmse = bssfp_nrmse_pct(images.to(torch.float32), out, self.forward_model)
        qc = [{"nrmse_pct": float(nrmse[i]), "scale_from_blood_label": bool(from_blood[i])} for i in range(b)]
        return SliceEstimate(maps=out, qc=qc)
