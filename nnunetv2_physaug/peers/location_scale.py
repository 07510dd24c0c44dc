"""SLAug: global and local location-scale augmentation (GLA / LLA) and saliency-balancing fusion (SBF).

Written from Su et al., *Rethinking Data Augmentation for Single-source Domain Generalization in Medical
Image Segmentation* (SLAug), AAAI 2023, with its public code read to learn the published settings. On an
image mapped to [0, 1]:

- a random monotonic **Bézier intensity curve** over a region's own range [lo, hi]: cubic, end points
  (lo, lo) and (hi, hi), the two inner control points' x and y each U(lo, hi); the curve's x and y samples
  are sorted apart, so the map is increasing. The **inverted** curve pairs the sorted x samples with the y
  samples run from hi down to lo: a decreasing map from (lo, hi) to (hi, lo) (bright becomes dark);
- then a **location-scale** change v -> clip(s v + l, 0, 1): s ~ N(1, 0.1) clipped to [0.9, 1.1], l ~ N(0, 0.5)
  clipped to [-P20, 1 - P80] of the curved values (a shift never pushes most of the region out of range).

**GLA** draws one curve (never inverted) and one location-scale for the whole image. **LLA** draws them per
label region, each curve over that region's own range: the background (label 0) always inverted, each
foreground label inverted with probability 0.5; pixels at or below ``background_threshold`` (0.01 of the
[0, 1] range: air) keep their value.

**SBF** fuses a GLA and an LLA image of the same sample by the network's saliency on the GLA image: the
input gradient of the segmentation loss, its root mean square over channels, averaged on a coarse grid of
``grid`` cells per axis (18 in SLAug's cardiac setting, 3 in its abdominal one), interpolated to the image by
quadratic B-splines and rescaled to [0, 1] per image: ``s * gla + (1 - s) * lla``. The regions the network
relies on take the global change, the others the local one.

Where it runs (:class:`SLAugViewsTransform`): SLAug maps each slice to [0, 1], makes GLA and LLA from the
un-warped slice and its labels, maps both back, and only then applies its geometric and intensity
augmentation to the pair. In nnU-Net the transform is the first of the training pipeline: it makes the
pair on the loader's crop, before nnU-Net's spatial, noise, blur, brightness, contrast, resolution and gamma
transforms, which then act on both images of the pair. One deviation: nnU-Net hands a transform the crop,
not the volume, so the [0, 1] range is that of the crop's image pixels (on 2D MyoPS crops: the whole slice),
where SLAug uses the volume's; the map back restores nnU-Net's z-scored scale either way.

Every random number of an image comes from a CPU ``torch.Generator``, one image after another. Shapes:
images ``(C, *spatial)``, labels ``(1, *spatial)`` integer.
"""
from __future__ import annotations

from dataclasses import dataclass
import torch
import torch.nn.functional as F
from batchgeneratorsv2.transforms.base.basic_transform import BasicTransform

from .gin_ipa import quadratic_bspline

#: points on the Bézier curve used to tabulate it
CURVE_POINTS = 1000
#: [0, 1] values at or below this are air and keep their value in LLA (SLAug's setting)
BACKGROUND_THRESHOLD = 0.01
#: cells per axis of the saliency grid in SLAug's cardiac setting
CARDIAC_SALIENCY_GRID = 18


@dataclass
class Remap:
    """One region's intensity change: the inner control points' positions as fractions of the region's range
    (``x1, x2, y1, y2`` in [0, 1]), ``inverted``, ``scale`` and the drawn ``location`` (clipped on use)."""
    inner: tuple[float, float, float, float]
    inverted: bool
    scale: float
    location: float


def draw_remap(generator: torch.Generator, p_invert: float) -> Remap:
    """Draw one region's remap; the curve is inverted with probability ``p_invert``."""
    x1, x2, y1, y2 = (float(v) for v in torch.rand(4, generator=generator))
    inverted = bool(torch.rand((), generator=generator) < p_invert)
    scale = float(torch.clamp(1.0 + 0.1 * torch.randn((), generator=generator), 0.9, 1.1))
    location = float(0.5 * torch.randn((), generator=generator))
    return Remap((x1, x2, y1, y2), inverted, scale, location)


def bezier_table(lo: float, hi: float, remap: Remap) -> tuple[torch.Tensor, torch.Tensor]:
    """The tabulated curve (xs increasing, ys) of ``remap`` over the range [lo, hi] (float64)."""
    x1, x2, y1, y2 = remap.inner
    t = torch.linspace(0.0, 1.0, CURVE_POINTS, dtype=torch.float64)
    bern = torch.stack([(1 - t) ** 3, 3 * (1 - t) ** 2 * t, 3 * (1 - t) * t ** 2, t ** 3])
    span = hi - lo
    px = torch.tensor([lo, lo + x1 * span, lo + x2 * span, hi], dtype=torch.float64)
    py = torch.tensor([lo, lo + y1 * span, lo + y2 * span, hi], dtype=torch.float64)
    xs = torch.sort(px @ bern).values
    ys = py @ bern
    # increasing: both sorted; inverted: the y samples from the (hi) end down to the (lo) end
    ys = torch.sort(ys).values if not remap.inverted else torch.flip(ys, (0,))
    return xs, ys


def interp(v: torch.Tensor, xs: torch.Tensor, ys: torch.Tensor) -> torch.Tensor:
    """Piecewise-linear ys(xs) at ``v`` (xs non-decreasing; values outside take the end values)."""
    flat = v.reshape(-1).to(torch.float64)
    xs, ys = xs.to(v.device), ys.to(v.device)
    i = torch.searchsorted(xs, flat).clamp(1, len(xs) - 1)
    x0, x1, y0, y1 = xs[i - 1], xs[i], ys[i - 1], ys[i]
    w = ((flat - x0) / (x1 - x0).clamp_min(1e-12)).clamp(0.0, 1.0)
    return (y0 + w * (y1 - y0)).reshape(v.shape).to(v.dtype)


def apply_remap(v: torch.Tensor, remap: Remap) -> torch.Tensor:
    """One region's values ``v`` in [0, 1] (any shape) through its curve over their own range, then the
    location-scale change (location clipped by the curved values' 20th and 80th percentiles)."""
    if v.numel() == 0:
        return v
    lo, hi = float(v.min()), float(v.max())
    curved = interp(v, *bezier_table(lo, hi, remap)) if hi > lo else v.clone()
    q = torch.quantile(curved.reshape(-1).float()[:1_000_000], torch.tensor([0.2, 0.8], device=v.device))
    lower, upper = float(-q[0]), float(1.0 - q[1])
    location = min(max(remap.location, lower), upper)  # numpy's clip order: the upper bound wins
    return (curved * remap.scale + location).clamp(0.0, 1.0)


def global_location_scale(v: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """GLA of values ``v`` in [0, 1] (one image's, any shape): one non-inverted curve and location-scale."""
    return apply_remap(v, draw_remap(generator, p_invert=0.0))


def local_location_scale(v: torch.Tensor, labels: torch.Tensor, generator: torch.Generator, n_labels: int,
                         background_threshold: float = BACKGROUND_THRESHOLD) -> torch.Tensor:
    """LLA of values ``v`` in [0, 1] with integer ``labels`` of the same shape: a remap per label region, over
    its own range (background always inverted, foreground labels with p 0.5); air (``v <=
    background_threshold``) unchanged. A remap is drawn for every label ``0 .. n_labels - 1``, present or
    not, so that an image's draws do not depend on which labels the crop holds."""
    out = v.clone()
    for k in range(int(n_labels)):
        remap = draw_remap(generator, p_invert=1.0 if k == 0 else 0.5)
        region = labels == k
        if region.any():
            out[region] = apply_remap(v[region], remap)
    keep = v <= background_threshold
    out[keep] = v[keep]
    return out


def gla_lla_pair(image: torch.Tensor, labels: torch.Tensor, generator: torch.Generator,
                 n_labels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """SLAug's two views of one image ``(C, *spatial)`` with labels ``(1, *spatial)``: each channel mapped to
    [0, 1] by the range of its image pixels (labels >= 0; nnU-Net marks padding -1), GLA and LLA made there
    and mapped back. Pixels outside the image keep their value. Returns ``(gla, lla)``, each like ``image``."""
    gla, lla = image.clone(), image.clone()
    valid = labels[0] >= 0
    if not bool(valid.any()):
        return gla, lla
    lab = labels[0][valid].to(torch.long)
    for c in range(image.shape[0]):
        x = image[c][valid]
        lo, hi = x.min(), x.max()
        span = (hi - lo).clamp_min(1e-12)
        v = (x - lo) / span
        gla[c][valid] = lo + global_location_scale(v, generator) * span
        lla[c][valid] = lo + local_location_scale(v, lab, generator, n_labels) * span
    return gla, lla


# ----------------------------------------------------------------------------- SBF

def bspline_upsample_basis(length: int, cells: int) -> torch.Tensor:
    """(length, cells) weights that interpolate a coarse grid of ``cells`` values to ``length`` pixels by
    quadratic B-splines, the first and last pixels at the first and last cells' centres (SLAug spreads the
    grid by a B-spline transposed convolution, then resizes it to the image with aligned corners)."""
    if cells == 1 or length == 1:
        return torch.ones(length, cells) / cells
    u = torch.arange(length, dtype=torch.float64)[:, None] * (cells - 1) / (length - 1)
    return quadratic_bspline(u - torch.arange(cells, dtype=torch.float64)[None]).float()


def saliency_map(grad: torch.Tensor, grid: int = CARDIAC_SALIENCY_GRID) -> torch.Tensor:
    """SBF's saliency of a batch's input gradient ``(B, C, *spatial)``: root mean square over channels,
    averaged on ``grid`` cells per axis, interpolated by quadratic B-splines and rescaled to [0, 1] per image.
    Returns ``(B, 1, *spatial)``."""
    if grid < 1:
        raise ValueError(f"the saliency grid needs at least one cell per axis, got {grid}")
    spatial = tuple(grad.shape[2:])
    s = grad.float().pow(2).mean(1, keepdim=True).sqrt()
    cells = [min(grid, n) for n in spatial]
    coarse = F.adaptive_avg_pool2d(s, cells) if len(spatial) == 2 else F.adaptive_avg_pool3d(s, cells)
    field = coarse
    for axis, (n, c) in enumerate(zip(spatial, cells)):  # separable: one axis at a time
        basis = bspline_upsample_basis(n, c).to(grad.device)
        field = torch.movedim(torch.tensordot(torch.movedim(field, axis + 2, -1), basis, dims=([-1], [1])), -1,
                              axis + 2)
    flat = field.reshape(field.shape[0], -1)
    lo, hi = flat.min(1).values, flat.max(1).values
    shape = (-1,) + (1,) * (field.dim() - 1)
    return (field - lo.view(shape)) / (hi - lo).clamp_min(1e-12).view(shape)


def fuse(gla: torch.Tensor, lla: torch.Tensor, saliency: torch.Tensor) -> torch.Tensor:
    """SBF's fused image ``s * gla + (1 - s) * lla`` (saliency broadcast over channels)."""
    return saliency * gla + (1.0 - saliency) * lla


# ----------------------------------------------------------------------------- in nnU-Net's loader

class SLAugViewsTransform(BasicTransform):
    """batchgeneratorsv2 transform: an image ``(C, *spatial)`` becomes SLAug's pair ``(2C, *spatial)``, GLA's
    channels then LLA's (:func:`gla_lla_pair`), made from the crop and its labels before any other transform
    of nnU-Net's training pipeline. With probability ``1 - probability`` the sample keeps its image in both
    halves (no augmentation). The labels pass unchanged. Each sample's draws come from its own generator,
    seeded from torch's random stream of the loader process."""

    def __init__(self, n_labels: int, probability: float = 1.0):
        super().__init__()
        self.n_labels = int(n_labels)
        self.probability = float(probability)

    def get_parameters(self, **data_dict) -> dict:
        return {"seed": int(torch.randint(0, 2 ** 62, (1,)))}

    def apply(self, data_dict: dict, **params) -> dict:
        image, seg = data_dict["image"], data_dict["segmentation"]
        generator = torch.Generator().manual_seed(params["seed"])
        if float(torch.rand((), generator=generator)) < self.probability:
            gla, lla = gla_lla_pair(image, seg[:1], generator, self.n_labels)
        else:
            gla, lla = image, image
        data_dict["image"] = torch.cat([gla, lla], 0)
        return data_dict


def split_pair(data: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch of pairs ``(B, 2C, *spatial)`` split into its GLA and LLA batches ``(B, C, *spatial)``."""
    if data.shape[1] % 2:
        raise ValueError(f"SLAug's training batches hold GLA and LLA channels in pairs, got {data.shape[1]} channels")
    c = data.shape[1] // 2
    return data[:, :c], data[:, c:]

