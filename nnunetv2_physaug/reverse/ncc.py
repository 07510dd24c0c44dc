"""Local normalised cross-correlation, the paper's posterior-sample selection criterion (DESIGN §5).

For two images I, J and a w x w window (zero padded at the border), with window sums S_I, S_J,
S_II, S_JJ, S_IJ over n = w^2 pixels::

    cross = S_IJ - S_I S_J / n,  var_I = S_II - S_I^2 / n,  var_J = S_JJ - S_J^2 / n
    cc    = (cross^2 + 1e-5) / (var_I var_J + 1e-5)

and the score is mean(cc) over the image, in [0, 1] (1 = perfectly locally correlated, either sign).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

_EPS = 1e-5


def local_ncc(a: torch.Tensor, b: torch.Tensor, window: int = 9) -> torch.Tensor:
    """Mean squared local NCC of each pair of images.

    Args:
        a, b: (N, H, W) or (N, 1, H, W) images (broadcast over N).
        window: odd window side in pixels.
    Returns:
        (N,) mean local squared correlation in [0, 1].
    """
    if a.dim() == 3:
        a = a[:, None]
    if b.dim() == 3:
        b = b[:, None]
    a, b = torch.broadcast_tensors(a.float(), b.float())
    kernel = torch.ones(1, 1, window, window, dtype=a.dtype, device=a.device)
    pad = window // 2
    n = float(window * window)

    def wsum(x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, kernel, padding=pad)

    s_a, s_b = wsum(a), wsum(b)
    cross = wsum(a * b) - s_a * s_b / n
    var_a = wsum(a * a) - s_a * s_a / n
    var_b = wsum(b * b) - s_b * s_b / n
    cc = (cross * cross + _EPS) / (var_a * var_b + _EPS)
    return cc.mean(dim=(1, 2, 3))


def select_by_ncc(image: torch.Tensor, latents: torch.Tensor, keep: int,
                  window: int = 9) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Rank posterior samples of each slice by local NCC of their T1 and T2 latents with the image.

    Args:
        image: (B, S, S) normalised slice in [0, 1] on the prior grid.
        latents: (B, C, 3, S, S) C candidate latents per slice.
        keep: K <= C samples to keep per slice.
    Returns:
        ``(indices (B, K), ncc_t1 (B, C), ncc_t2 (B, C))``: indices of the kept candidates, best first
        (largest ncc_t1 + ncc_t2, i.e. the paper's argmin of the negated scores).
    """
    bsz, c = latents.shape[:2]
    img = image[:, None].expand(bsz, c, *image.shape[-2:]).reshape(bsz * c, *image.shape[-2:])
    ncc_t1 = local_ncc(img, latents[:, :, 1].reshape(bsz * c, *image.shape[-2:]), window).view(bsz, c)
    ncc_t2 = local_ncc(img, latents[:, :, 2].reshape(bsz * c, *image.shape[-2:]), window).view(bsz, c)
    order = torch.argsort(ncc_t1 + ncc_t2, dim=1, descending=True)
    return order[:, :keep], ncc_t1, ncc_t2
