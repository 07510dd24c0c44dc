"""GIN-IPA: random-convolution intensity augmentation with an interventional pseudo-correlation mask.

Written from Ouyang et al., *Causality-inspired single-source domain generalization for medical image
segmentation*, IEEE TMI 2022, and the setting the reverse-imaging authors' nnU-Net fork used beside their
physics trainers (``nnUNetTrainerV2_InvGreRC``):

- **GIN** (global intensity non-linear augmentation): a shallow convolutional network with *random*
  weights, drawn anew for every image, maps the image to a new "contrast". ``n_layers`` convolutions
  (``channels -> interm -> ... -> channels``; ``interm`` = 2 intermediate channels), each kernel size drawn
  from ``kernel_sizes`` (1 or 3), weights and biases N(0, 1), leaky ReLU between layers (not after the last).
  The output is blended with the input, ``alpha * gin(x) + (1 - alpha) * x`` with alpha ~ U(0, 1), and
  rescaled to the input's Frobenius norm (so the energy of an image is kept; nnU-Net's z-scored inputs stay
  at their scale). One layer is RandConv (Xu et al., ICLR 2021): a setting, ``n_layers=1``.
- **IPA** (interventional pseudo-correlation augmentation): two GIN outputs of the same image are blended
  by a smooth random mask m, ``g1 m + g2 (1 - m)``, so that different image regions take different random
  contrasts. m is a random bias field: control points every ``spacing`` pixels on a grid at half the image
  resolution, values N(0, 1) scaled to at most ``epsilon`` = 0.3 in log space, interpolated with quadratic
  (order 2) B-splines, exponentiated, upsampled to the image and rescaled to [0, 1]. Either blend
  (m or 1 - m on the first output) is kept, with probability 0.5 each.

**As published** (Ouyang et al.'s training step, :func:`three_views` and :func:`consistency_loss`): every
training image gives three views per step, two complementary IPA blends of two GIN outputs,
``g1 m + g2 (1 - m)`` and ``g1 (1 - m) + g2 m``, and a third, plain GIN output ``g3``; the segmentation loss
is taken on the first view, and a consistency term, the KL divergence of each view's predicted class
distribution from the mean of the three (weight 10), ties the views together. The mask's control points
are spaced so that the patch holds as many control cells across as Ouyang's 192-pixel images did
(:data:`PUBLISHED_IPA_CELLS`: spacing 24 at half resolution, 96 / 24 = 4), whatever the patch size.
The reverse-imaging fork's simplification (one blend, segmentation loss only, spacing 24 on any patch) is
:func:`gin_ipa_image`.

Every random number of an image is drawn from a CPU ``torch.Generator`` one image after another
(:func:`draw_gin`, :func:`draw_ipa`), so an image's augmentation does not depend on the batch it travels
in or on the device that applies it. Shapes: images ``(B, C, *spatial)`` with 2 or 3 spatial axes.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence

import torch
import torch.nn.functional as F

#: kernel sizes GIN draws from (the paper's setting)
GIN_KERNEL_SIZES = (1, 3)
#: leaky ReLU slope between GIN layers
LEAKY_SLOPE = 0.01


@dataclass
class GINDraw:
    """One image's random GIN network: ``weights[l]`` (out, in, k, ..., k) with k the drawn kernel size of
    layer l (``kernel_sizes[l]``), ``biases[l]`` (out,), and the blend weight ``alpha`` in [0, 1]."""
    weights: list[torch.Tensor]
    biases: list[torch.Tensor]
    kernel_sizes: list[int]
    alpha: float


def draw_gin(channels: int, spatial_dims: int, generator: torch.Generator, n_layers: int = 4, interm: int = 2,
             kernel_sizes: Sequence[int] = GIN_KERNEL_SIZES) -> GINDraw:
    """Draw one image's GIN: ``n_layers`` convolutions ``channels -> interm -> ... -> channels``."""
    if n_layers < 1:
        raise ValueError(f"GIN needs at least one layer, got n_layers={n_layers}")
    if any(k < 1 or k % 2 == 0 for k in kernel_sizes):
        raise ValueError(f"GIN kernel sizes must be odd and positive, got {tuple(kernel_sizes)}")
    widths = [channels] + [interm] * (n_layers - 1) + [channels]
    weights, biases, ks = [], [], []
    for c_in, c_out in zip(widths[:-1], widths[1:]):
        k = int(kernel_sizes[int(torch.randint(len(kernel_sizes), (1,), generator=generator))])
        weights.append(torch.randn((c_out, c_in) + (k,) * spatial_dims, generator=generator))
        biases.append(torch.randn(c_out, generator=generator))
        ks.append(k)
    alpha = float(torch.rand((), generator=generator))
    return GINDraw(weights, biases, ks, alpha)


def apply_gin(image: torch.Tensor, draw: GINDraw) -> torch.Tensor:
    """One image ``(C, *spatial)`` through its drawn GIN, blended with it and rescaled to its Frobenius norm."""
    conv = F.conv2d if image.dim() == 3 else F.conv3d
    x = image[None]
    h = x
    for i, (w, b, k) in enumerate(zip(draw.weights, draw.biases, draw.kernel_sizes)):
        h = conv(h, w.to(x), b.to(x), padding=k // 2)
        if i < len(draw.weights) - 1:
            h = F.leaky_relu(h, LEAKY_SLOPE)
    mixed = draw.alpha * h + (1.0 - draw.alpha) * x
    # keep the input's energy: ||out||_F = ||x||_F (an all-zero output stays zero)
    scale = torch.linalg.vector_norm(x) / torch.linalg.vector_norm(mixed).clamp_min(1e-12)
    return (mixed * scale)[0]


# ----------------------------------------------------------------------------- IPA mask

def quadratic_bspline(t: torch.Tensor) -> torch.Tensor:
    """The centred quadratic (order 2) B-spline: 3/4 - t^2 for |t| < 1/2, (3/2 - |t|)^2 / 2 for |t| < 3/2."""
    a = t.abs()
    return torch.where(a < 0.5, 0.75 - a * a, torch.where(a < 1.5, 0.5 * (1.5 - a) ** 2, torch.zeros_like(a)))


def bspline_basis(length: int, spacing: float) -> torch.Tensor:
    """(length, n) weights of n control points, one every ``spacing`` pixels starting one spacing before
    pixel 0, on ``length`` pixels (rows sum to 1: the spline is a moving average of its control values)."""
    n = int(math.ceil(length / spacing)) + 3
    u = torch.arange(length, dtype=torch.float64)[:, None] / spacing + 1.0  # pixel position in control units
    return quadratic_bspline(u - torch.arange(n, dtype=torch.float64)[None]).float()


@dataclass
class IPADraw:
    """One image's IPA blend: control-point values ``coefficients`` (one axis per spatial axis, |c| <= epsilon)
    and whether the first GIN output takes the mask (``swap`` False: ``g1 m + g2 (1 - m)``)."""
    coefficients: torch.Tensor
    swap: bool


def _half(shape: Sequence[int], downscale: int) -> list[int]:
    return [max(1, int(math.ceil(s / downscale))) for s in shape]


def draw_ipa(spatial: Sequence[int], generator: torch.Generator, spacing: float = 24.0, downscale: int = 2,
             epsilon: float = 0.3) -> IPADraw:
    """Draw one image's IPA mask parameters for an image of ``spatial`` shape (pixels)."""
    counts = [bspline_basis(s, spacing).shape[1] for s in _half(spatial, downscale)]
    g = torch.randn(counts, generator=generator)
    coefficients = epsilon * g / g.abs().max().clamp_min(1e-12)
    swap = bool(torch.rand((), generator=generator) < 0.5)
    return IPADraw(coefficients, swap)


def ipa_mask(spatial: Sequence[int], draw: IPADraw, spacing: float = 24.0, downscale: int = 2,
             device: Optional[torch.device] = None) -> torch.Tensor:
    """The mask of shape ``spatial``: the B-spline field of ``draw.coefficients`` at 1/``downscale``
    resolution, exponentiated, upsampled (linear) to ``spatial`` and rescaled to [0, 1]."""
    low = _half(spatial, downscale)
    field = draw.coefficients.to(device)
    for axis, s in enumerate(low):  # separable: contract one control axis at a time
        basis = bspline_basis(s, spacing).to(device)
        field = torch.movedim(torch.tensordot(basis, torch.movedim(field, axis, 0), dims=([1], [0])), 0, axis)
    bias = torch.exp(field)[None, None]
    mode = "bilinear" if len(spatial) == 2 else "trilinear"
    bias = F.interpolate(bias, size=tuple(spatial), mode=mode, align_corners=False)[0, 0]
    lo, hi = bias.min(), bias.max()
    return (bias - lo) / (hi - lo).clamp_min(1e-12)


# ----------------------------------------------------------------------------- the batch augmentation

@dataclass(frozen=True)
class GINIPASettings:
    """GIN-IPA's settings (defaults: the paper's and the fork's). ``n_layers=1``: RandConv."""
    n_layers: int = 4
    interm: int = 2
    kernel_sizes: tuple[int, ...] = GIN_KERNEL_SIZES
    ipa: bool = True
    spacing: float = 24.0
    downscale: int = 2
    epsilon: float = 0.3


def gin_ipa_image(image: torch.Tensor, generator: torch.Generator,
                  settings: GINIPASettings = GINIPASettings()) -> torch.Tensor:
    """One image ``(C, *spatial)`` augmented: with IPA, two GIN outputs blended by a random mask; without,
    one GIN output. Every random number comes from ``generator`` (CPU)."""
    c, spatial = image.shape[0], tuple(image.shape[1:])
    if len(spatial) not in (2, 3):
        raise ValueError(f"GIN-IPA takes images (C, X, Y) or (C, X, Y, Z), got shape {tuple(image.shape)}")
    draw1 = draw_gin(c, len(spatial), generator, settings.n_layers, settings.interm, settings.kernel_sizes)
    g1 = apply_gin(image, draw1)
    if not settings.ipa:
        return g1
    draw2 = draw_gin(c, len(spatial), generator, settings.n_layers, settings.interm, settings.kernel_sizes)
    g2 = apply_gin(image, draw2)
    ipa = draw_ipa(spatial, generator, settings.spacing, settings.downscale, settings.epsilon)
    m = ipa_mask(spatial, ipa, settings.spacing, settings.downscale, device=image.device).to(image.dtype)
    if ipa.swap:
        g1, g2 = g2, g1
    return g1 * m + g2 * (1.0 - m)


# ----------------------------------------------------------------------------- as published: three views

#: control cells across the mask (at its resolution) in Ouyang et al.'s setting: 192-pixel images, the field
#: at half resolution (96 pixels), control points every 24 pixels
PUBLISHED_IPA_CELLS = 4
#: weight of the consistency term in Ouyang et al.'s setting
PUBLISHED_CONSISTENCY_WEIGHT = 10.0


def spacing_for_cells(spatial: Sequence[int], cells: float, downscale: int = 2) -> float:
    """Control-point spacing (pixels at the mask's 1/``downscale`` resolution) that puts ``cells`` control
    cells across the longest axis of an image of ``spatial`` shape."""
    if cells <= 0:
        raise ValueError(f"the IPA mask needs a positive number of control cells across, got {cells}")
    return max(_half(spatial, downscale)) / float(cells)


def three_views(image: torch.Tensor, generator: torch.Generator, settings: GINIPASettings) -> torch.Tensor:
    """Ouyang et al.'s three views of one image ``(C, *spatial)``: ``(3, C, *spatial)``, the two
    complementary IPA blends of two GIN outputs (``g1 m + g2 (1 - m)``, ``g1 (1 - m) + g2 m``) and a third
    GIN output. ``settings.spacing`` is used as given (see :func:`spacing_for_cells`)."""
    c, spatial = image.shape[0], tuple(image.shape[1:])
    if len(spatial) not in (2, 3):
        raise ValueError(f"GIN-IPA takes images (C, X, Y) or (C, X, Y, Z), got shape {tuple(image.shape)}")
    g1, g2, g3 = (apply_gin(image, draw_gin(c, len(spatial), generator, settings.n_layers, settings.interm,
                                            settings.kernel_sizes)) for _ in range(3))
    ipa = draw_ipa(spatial, generator, settings.spacing, settings.downscale, settings.epsilon)
    m = ipa_mask(spatial, ipa, settings.spacing, settings.downscale, device=image.device).to(image.dtype)
    return torch.stack([g1 * m + g2 * (1.0 - m), g1 * (1.0 - m) + g2 * m, g3])


def consistency_loss(logits: torch.Tensor, views: int = 3) -> torch.Tensor:
    """Ouyang et al.'s consistency term on the logits ``(views * B, K, *spatial)`` of the views of B images
    (view-major: the first B rows are view 1): with p_i the softmax of view i and p the mean of the views,
    the mean over every element (views, images, classes, pixels) of ``p (log p - log p_i)``. The mean p is
    not detached (the gradient reaches every view through it, as in the published code)."""
    if logits.shape[0] % views:
        raise ValueError(f"{logits.shape[0]} predictions are not {views} views of one batch")
    log_p = torch.log_softmax(logits.float(), 1).reshape(views, -1, *logits.shape[1:])
    mean_p = log_p.exp().mean(0, keepdim=True)
    return (torch.xlogy(mean_p, mean_p) - mean_p * log_p).mean()
