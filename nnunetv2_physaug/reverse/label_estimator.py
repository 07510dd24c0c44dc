"""Weight-free tissue-map estimator (``--method label``, DESIGN §5 last point).

No prior weights ship with the package and none can be downloaded, so this estimator explains a
bSSFP slice with reference tissue values instead of a learned prior:

1. **Tissue weights per pixel.** Labelled pixels take their tissue (ACDC convention: labels 1 and
   3 = blood, 2 = myocardium). Every other pixel gets soft weights over intensity classes (lung,
   skeletal muscle, liver, bright = fat or blood): the slice is first brought to physical scale
   (blood-pool median, or the 99th percentile when the slice has no blood label, set to the
   reference blood signal), then each class is weighted by a Gaussian in log-signal distance to the
   class's reference bSSFP signal. Soft weights keep the maps smooth across class boundaries.
   Bright unlabelled pixels are fat in slices that carry labels (the heart's blood pools are
   labelled there) and blood in slices without labels (the brightest structures of a cine are
   its blood pools).
2. **T1/T2 drawn from the tissue table** (``nnunetv2_physaug.physics.tissue_table(field)``): per
   slice, sample and tissue one value from the table's normal (mean, spread), mixed per pixel
   geometrically by the weights, times a smooth random field ``exp(variation * cv * g)`` (``g`` a
   unit-variance field, bicubic upsampling of coarse noise, ``cv`` the tissue's relative spread).
3. **M0 solved per pixel** so that the short-TR bSSFP rendering (alpha = 45 deg) reproduces the
   input exactly up to the slice's global scale: ``M0 = x / c * (1 + cos a + (1 - cos a) T1/T2) / sin a``
   (negative intensities are clipped to 0).

Everything is vectorised torch and runs on whatever device the inputs are on.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..physics import bssfp, tissue_table
from .base import FORWARD_FLIP_DEG, SliceEstimate, SliceEstimator
from .qc import bssfp_nrmse_pct

#: ACDC label values -> tissue of the tissue table.
LABEL_TISSUES: dict[int, str] = {1: "blood", 2: "myocardium", 3: "blood"}
#: Intensity classes used for unlabelled pixels, dark to bright; the last entry is replaced by
#: "blood" in slices without any label (see the module docstring).
INTENSITY_CLASSES: tuple[str, ...] = ("lung", "skeletal_muscle", "liver", "fat")
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
    """

    name = "label"

    def __init__(self, field: str = "1.5T", variation: float = 0.5, draw_tissue_values: bool = True,
                 class_width: float = 0.3, grid_px: int = 32, scale_quantile: float = 0.99):
        self.table = tissue_table(field)  # raises a clear ValueError for an unknown field
        self.field = field
        self.variation = float(variation)
        self.draw_tissue_values = bool(draw_tissue_values)
        self.class_width = float(class_width)
        self.grid_px = int(grid_px)
        self.scale_quantile = float(scale_quantile)
        # tissue order: labelled tissues, then intensity classes; blood doubles as the bright class
        self.tissues: tuple[str, ...] = ("blood", "myocardium") + INTENSITY_CLASSES
        a = math.radians(FORWARD_FLIP_DEG)
        self._ca, self._sa = math.cos(a), math.sin(a)

    def identity(self) -> dict:
        return {"estimator": self.name, "prior_hash": None,
                "parameters": {"field": self.field, "variation": self.variation,
                               "draw_tissue_values": self.draw_tissue_values, "class_width": self.class_width,
                               "grid_px": self.grid_px, "scale_quantile": self.scale_quantile,
                               "label_tissues": {str(k): v for k, v in LABEL_TISSUES.items()},
                               "intensity_classes": list(INTENSITY_CLASSES),
                               "forward_model": f"short-TR bSSFP, alpha={FORWARD_FLIP_DEG:g} deg"}}

    def _reference_signal(self, name: str) -> float:
        t = self.table[name]
        return float(bssfp(t.m0[0], t.t1[0], t.t2[0], FORWARD_FLIP_DEG, 0.0, short_tr=True))

    def _smooth_field(self, shape: tuple[int, ...], h: int, w: int, generator: torch.Generator,
                      device: torch.device) -> torch.Tensor:
        """Unit-variance smooth random fields of shape (*shape, h, w)."""
        gh, gw = max(2, round(h / self.grid_px) + 1), max(2, round(w / self.grid_px) + 1)
        n = math.prod(shape)
        coarse = torch.randn((n, 1, gh, gw), generator=generator, device=device)
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

    def estimate(self, images: torch.Tensor, labels: torch.Tensor | None, n_samples: int,
                 generator: torch.Generator) -> SliceEstimate:
        if images.dim() != 3:
            raise ValueError(f"images must be (B, H, W), got shape {tuple(images.shape)}")
        if labels is not None and labels.shape != images.shape:
            raise ValueError(f"labels of shape {tuple(labels.shape)} do not match images {tuple(images.shape)}")
        device = images.device
        x = images.to(torch.float32).clamp_min(0.0)
        b, h, w = x.shape
        k = int(n_samples)
        lab = (labels.to(device=device, dtype=torch.int64) if labels is not None
               else torch.zeros((b, h, w), dtype=torch.int64, device=device))
        blood = (lab == 1) | (lab == 3)
        myo = lab == 2
        labelled = blood | myo
        slice_has_labels = (lab != 0).flatten(1).any(dim=1)  # (B,)

        scale, from_blood = self._slice_scale(x.flatten(1), blood.flatten(1))  # (B,)
        s = x / scale[:, None, None]

        # soft intensity-class weights (B, C, H, W) in log-signal space
        ref = torch.tensor([self._reference_signal(t) for t in INTENSITY_CLASSES], device=device)
        ref = ref[None, :].repeat(b, 1)
        ref[~slice_has_labels, -1] = self._reference_signal("blood")
        d = torch.log(s.clamp_min(1e-6))[:, None] - torch.log(ref)[:, :, None, None]
        w_cls = torch.softmax(-0.5 * (d / self.class_width) ** 2, dim=1)
        w_cls = w_cls * (~labelled)[:, None]
        # tissue weights over self.tissues: blood, myocardium, lung, muscle, liver, bright
        weights = torch.cat([blood[:, None].float(), myo[:, None].float(), w_cls], dim=1)  # (B, T, H, W)

        # bright class is fat or blood per slice; build per-slice tissue parameter tables (B, T)
        names_lab = list(self.tissues)
        names_unl = list(self.tissues[:-1]) + ["blood"]

        def table(attr: str, idx: int) -> torch.Tensor:
            a = torch.tensor([getattr(self.table[n], attr)[idx] for n in names_lab], device=device)
            u = torch.tensor([getattr(self.table[n], attr)[idx] for n in names_unl], device=device)
            return torch.where(slice_has_labels[:, None], a[None], u[None])

        out = torch.empty((b, k, 3, h, w), dtype=torch.float32, device=device)
        log_t = []
        for attr in ("t1", "t2"):
            mean, sd = table(attr, 0), table(attr, 1)  # (B, T)
            if self.draw_tissue_values:
                z = torch.randn((b, k, mean.shape[1]), generator=generator, device=device)
                val = (mean[:, None] + sd[:, None] * z).clamp_min(1.0)  # (B, K, T)
            else:
                val = mean[:, None].expand(b, k, -1)
            cv = sd / mean  # (B, T)
            log_mix = torch.einsum("bkt,bthw->bkhw", torch.log(val), weights)
            cv_mix = torch.einsum("bt,bthw->bhw", cv, weights)[:, None]
            if self.variation > 0:
                g = self._smooth_field((b, k), h, w, generator, device)
                log_mix = log_mix + self.variation * cv_mix * g
            log_t.append(log_mix)
        t1, t2 = torch.exp(log_t[0]), torch.exp(log_t[1])
        m0 = s[:, None] * (1.0 + self._ca + (1.0 - self._ca) * t1 / t2) / self._sa
        out[:, :, 0], out[:, :, 1], out[:, :, 2] = m0, t1, t2
        nrmse = bssfp_nrmse_pct(images.to(torch.float32), out)
        qc = [{"nrmse_pct": float(nrmse[i]), "scale_from_blood_label": bool(from_blood[i])} for i in range(b)]
        return SliceEstimate(maps=out, qc=qc)
