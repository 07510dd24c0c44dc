"""Render on crop: the array-like stand-in nnU-Net's loader crops, rendering only the region it keeps.

nnU-Net's data loader calls ``dataset.load_case(key)`` and then crops one patch out of the returned image with
``crop_and_pad_nd`` (which indexes ``image[slices]``). :class:`RenderOnCrop` stands in for the image: indexing
it renders only the requested region from the case's aligned maps, so the cost is proportional to the pixels
the loader keeps (DESIGN §3). :class:`SharedSegCrop` hands nnU-Net's seg crop the labels the render already
decompressed for the same box; :class:`DrawBank` makes a case's parameter draws in a row.

Intensities are normalised the way nnU-Net's preprocessing normalises the channel (z-score,
``use_mask_for_norm`` honoured: statistics over seg >= 0 and zeros outside). The statistics are either the
case's (``stats="case"``: the sequence parameters, the P99.5 clip level, mean and std come from rendering a
fixed subsample of the case's normalisation voxels, as preprocessing would z-score the whole volume) or the
patch's (``stats="patch"``: clip level and z-score of the rendered crop).
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch

from ..contrast import ContrastRenderer
from ..contrast.renderer import ReferenceVoxels

STATS_MODES = ("case", "patch")
_EPS = 1e-8  # nnU-Net's ZScoreNormalization eps for float32


def reference_voxels(renderer: ContrastRenderer, sample: np.ndarray, use_labels: bool) -> ReferenceVoxels:
    """A case's voxel subsample (4, N: M0, T1 ms, T2 ms, label) prepared for ``renderer.draw_on``."""
    m0, t1, t2 = (torch.from_numpy(np.ascontiguousarray(sample[i]))[None] for i in range(3))
    labels = torch.from_numpy(sample[3]).to(torch.int16)[None] if use_labels else None
    return renderer.reference(m0, t1, t2, labels=labels)


#: case-level draws made in a row per case (:class:`DrawBank`)
DRAW_BANK_SIZE = 16


class DrawBank:
    """Case-level parameter draws (:meth:`ContrastRenderer.draw_on`) on one case's reference voxels,
    made :attr:`size` in a row and handed out one per load.

    Why: a draw is a few dozen small tensor operations on the case's 2048 reference voxels. In the
    loader, one draw per load runs between nnU-Net's transforms, with its code and data out of the CPU
    caches, and costs 2-4x what the same draw costs in a loop (``scripts/bench_loader.py --profile``,
    "parameter draw"). Every load still gets its own draw, made by the same function from the same
    generator, so each load's contrast is as random as with one draw per load; only the order in which
    the generator's numbers are used changes. A bank belongs to one process (the dataset keeps them per
    process, like the memory-mapped maps).
    """

    def __init__(self, renderer: ContrastRenderer, reference: ReferenceVoxels, size: int = DRAW_BANK_SIZE):
        if size < 1:
            raise ValueError(f"DrawBank size must be at least 1, got {size}")
        self.renderer, self.reference, self.size = renderer, reference, int(size)
        self._pending: list[dict] = []

    def next(self, rng: np.random.Generator) -> dict:
        """The next draw (a fresh dict); draws :attr:`size` new ones from ``rng`` when none is left."""
        if not self._pending:
            drawn = [self.renderer.draw_on(self.reference, rng) for _ in range(self.size)]
            self._pending = drawn[::-1]  # pop() hands them out in the order drawn
        return self._pending.pop()


def _same_key(a: tuple, b: tuple) -> bool:
    """Whether two basic-slicing keys (tuples of slices/ints) select the same region."""
    return len(a) == len(b) and all(x == y for x, y in zip(a, b))


class SharedSegCrop:
    """Array-like stand-in for a case's seg (shape (c, z, y, x), blosc2 or numpy) of a rendered load.

    Rendering a crop needs its labels, and nnU-Net's loader then crops the same box out of the seg:
    without sharing, blosc2 decompresses it twice. :meth:`read_shared`
    (the render's read) keeps its array; the next ``self[key]`` with the same key returns that array
    once, any other read goes to the seg. The render only reads the array, so handing it on is safe.
    """

    def __init__(self, seg):
        self._seg = seg
        self.shape = tuple(seg.shape)
        self.dtype = np.dtype(seg.dtype)
        self.ndim = len(self.shape)
        self._shared: Optional[tuple[tuple, np.ndarray]] = None

    def __len__(self) -> int:
        return self.shape[0]

    def read_shared(self, key: tuple) -> np.ndarray:
        """``seg[key]`` as a numpy array, kept for the next ``self[key]``."""
        out = np.asarray(self._seg[key])
        self._shared = (key, out)
        return out

    def __getitem__(self, key) -> np.ndarray:
        if not isinstance(key, tuple):
            key = (key,)
        if self._shared is not None and _same_key(self._shared[0], key):
            out, self._shared = self._shared[1], None
            return out
        return np.asarray(self._seg[key])

    def __array__(self, dtype=None, copy=None):
        out = np.asarray(self._seg[...])
        return out.astype(dtype) if dtype is not None else out


class RenderOnCrop:
    """Array-like stand-in for a case's preprocessed image (shape (1, z, y, x), float32).

    ``self[slices]`` renders the region ``slices`` of the case (one random draw of sequence
    parameters per indexing) and returns it normalised, as a numpy array. Only basic slicing is
    supported (what ``acvl_utils``' ``crop_and_pad_nd`` does); ``np.asarray(view)`` renders the
    whole case. The parameters of the last render are in :attr:`params`.
    """

    ndim = 4
    dtype = np.dtype(np.float32)

    def __init__(self, maps: np.ndarray, seg, sample: np.ndarray, renderer: ContrastRenderer,
                 rng: np.random.Generator, use_mask_for_norm: bool, use_labels: bool, stats: str,
                 draws: Optional[DrawBank] = None):
        self._maps = maps            # (3, z, y, x), possibly a read-only memmap
        self._seg = seg              # (1, z, y, x) nnU-Net seg (blosc2/numpy/SharedSegCrop), -1 outside the crop mask
        self._sample = sample        # (4, N): M0, T1, T2, label at voxels of the normalisation mask
        self._draws = draws          # the case's draws on ``sample`` (None: one draw here per indexing)
        self._renderer = renderer
        self._rng = rng
        self._use_mask = use_mask_for_norm
        self._use_labels = use_labels
        self._stats = stats
        self.shape = (1, *maps.shape[1:])
        self.params: Optional[dict] = None
        self.posterior_sample: int = 0  # which of the case's K map samples this view renders

    def __len__(self) -> int:
        return self.shape[0]

    def draw_on_case(self) -> dict:
        """Sequence parameters drawn on the case's voxel subsample, with the case-level clip level,
        mean and std of that rendering (what preprocessing's z-score of the whole case would use)."""
        if self._draws is None:
            self._draws = DrawBank(self._renderer, reference_voxels(self._renderer, self._sample, self._use_labels),
                                   size=1)
        return self._draws.next(self._rng)

    def __getitem__(self, slices) -> np.ndarray:
        if not isinstance(slices, tuple):
            slices = (slices,)
        slices = slices + (slice(None),) * (4 - len(slices))
        region = slices[1:]
        # a writable copy of just the crop (the memmap is read-only; torch wants writable arrays)
        maps = np.array(self._maps[(slice(None),) + region], dtype=np.float32)
        # read the seg with the key nnU-Net's seg crop will use, so a SharedSegCrop can hand it on
        seg_key = (slice(None),) + region
        seg_np = self._seg.read_shared(seg_key) if isinstance(self._seg, SharedSegCrop) else np.asarray(
            self._seg[seg_key])
        seg_np = seg_np[0].astype(np.int16, copy=False)
        seg = torch.from_numpy(seg_np)
        valid = torch.from_numpy(seg_np >= 0)  # numpy: faster than torch's int16 compare
        draw = self.draw_on_case() if self._stats == "case" else None
        # ``maps`` is this call's own copy of aligned maps, checked when they were written (align_dataset_maps)
        img, self.params = self._renderer.render(torch.from_numpy(maps[0]), torch.from_numpy(maps[1]),
                                                 torch.from_numpy(maps[2]), self._rng,
                                                 labels=seg if self._use_labels else None, valid=valid, params=draw,
                                                 check_finite=False, copy_maps=False)
        if self._stats == "case":
            mean, std = self.params["reference_mean"], self.params["reference_std"]
        else:
            vals = img[valid] if self._use_mask and bool(valid.any()) else img
            mean, std = float(vals.mean()), float(vals.std(unbiased=False))
        # Copied from nnU-Net 2.8.1: ZScoreNormalization.run (z-score with its eps; zero outside the mask)
        img.sub_(mean).div_(max(std, _EPS))
        if self._use_mask:
            img.masked_fill_(~valid, 0.0)  # preprocessing leaves the outside of the mask at zero
        out = img.numpy()[None]
        return out[(slices[0],)] if slices[0] != slice(None) else out

    def __array__(self, dtype=None, copy=None):
        out = self[(slice(None),) * 4]
        return out.astype(dtype) if dtype is not None else out
