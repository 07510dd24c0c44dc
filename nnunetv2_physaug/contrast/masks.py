"""Binary morphology on the in-plane grid, shared by the renderer (border pixels, the cavity's wall
layer) and the pathology simulation (distances through the wall).

One owner for the 3 x 3 dilation: the renderer needs it once per Gd render in the data loader, the
pathology simulation up to 24 times per render (its distance loops), so it is done by shifted ORs of
the boolean mask (on CPU through a numpy view, a fraction of ``max_pool2d`` on a float copy: see
``scripts/bench_render.py``) and gives exactly ``max_pool2d``'s mask.
"""
from __future__ import annotations

from typing import Callable, TypeVar, Union

import numpy as np
import torch

__all__ = ["dilate_3x3", "chessboard_distance"]

Mask = TypeVar("Mask", np.ndarray, torch.Tensor)


def _dilate_by_shifts(mask: Mask, copy: Callable[[Mask], Mask]) -> Mask:
    """Separable 3 x 3 dilation of a bool array (rows, then columns); pixels outside count as False."""
    rows = copy(mask)
    rows[..., 1:, :] |= mask[..., :-1, :]
    rows[..., :-1, :] |= mask[..., 1:, :]
    out = copy(rows)
    out[..., :, 1:] |= rows[..., :, :-1]
    out[..., :, :-1] |= rows[..., :, 1:]
    return out


def dilate_3x3(mask: Union[np.ndarray, torch.Tensor]) -> Union[np.ndarray, torch.Tensor]:
    """3 x 3 (8-neighbour) dilation over the last two axes (in-plane Y, X) of a boolean mask of shape
    (..., Y, X); leading axes are independent slices and pixels beyond the grid count as unset (as
    ``max_pool2d(mask, 3, stride=1, padding=1)``). Returns a new bool array of the input's type (numpy
    array, or torch tensor on the input's device); the input is not modified.
    """
    if isinstance(mask, torch.Tensor):
        if mask.dtype != torch.bool:
            raise TypeError(f"dilate_3x3 needs a bool mask, got {mask.dtype}")
        if mask.device.type == "cpu":  # numpy ORs small bool maps faster than torch on CPU
            return torch.from_numpy(_dilate_by_shifts(mask.numpy(), np.copy))
        return _dilate_by_shifts(mask, torch.clone)
    mask = np.asarray(mask)
    if mask.dtype != np.bool_:
        raise TypeError(f"dilate_3x3 needs a bool mask, got {mask.dtype}")
    return _dilate_by_shifts(mask, np.copy)


def chessboard_distance(source: torch.Tensor, within: torch.Tensor, max_steps: int) -> torch.Tensor:
    """Chessboard distance (pixels, by repeated :func:`dilate_3x3`) from the bool mask ``source`` to each
    pixel of the bool mask ``within``, over the last two axes; float32 tensor on ``source``'s device.
    A pixel of ``within`` next to ``source`` (8-neighbourhood) is at 1; pixels further than ``max_steps``,
    and every pixel outside ``within``, hold ``max_steps``."""
    if source.device.type == "cpu":  # numpy's mask ops on small maps cost less than torch's
        dist = np.full(source.shape, float(max_steps), dtype=np.float32)
        return torch.from_numpy(_distance_loop(source.numpy(), within.numpy(), dist, max_steps, np.copy))
    dist = torch.full(source.shape, float(max_steps), dtype=torch.float32, device=source.device)
    return _distance_loop(source, within, dist, max_steps, torch.clone)


def _distance_loop(source: Mask, within: Mask, dist: Mask, max_steps: int, copy: Callable[[Mask], Mask]) -> Mask:
    """:func:`chessboard_distance` on numpy arrays or torch tensors (``copy`` of that library): fills ``dist``
    (``max_steps`` everywhere) with the step at which each pixel of ``within`` is reached, and returns it."""
    reached = copy(source)
    for step in range(1, max_steps + 1):
        grown = _dilate_by_shifts(reached, copy)
        dist[grown & ~reached & within] = float(step)
        reached = grown
        if not bool((within & ~reached).any()):
            break
    return dist
