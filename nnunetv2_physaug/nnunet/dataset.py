"""Training-dataset wrapper: on loading a case, render a random MR contrast from its tissue maps.

nnU-Net's data loader calls ``dataset.load_case(key)`` and then crops one patch out of the returned
image with ``crop_and_pad_nd`` (which indexes ``image[slices]``). Instead of rendering the whole case,
:class:`PhysAugTrainingDataset` returns a :class:`RenderOnCrop` stand-in for the image: indexing it
renders only the requested region from the aligned maps, so the cost is proportional to the pixels
the loader keeps (DESIGN §3). Everything downstream (foreground oversampling, spatial and intensity
augmentation, mirroring, deep supervision) is nnU-Net's own and unchanged.

Both kinds of load do less of nnU-Net's own work than stock loads (blosc2 datasets): the case files
(and the aligned maps) stay open per process and the case's properties stay read (:class:`OpenCaseFiles`,
the least recently loaded of at most 64 cases dropped first), where nnU-Net opens and unpickles them at
every load; a rendered load never opens the image, and the seg it returns (:class:`SharedSegCrop`) hands
nnU-Net's seg crop the labels the render already decompressed for the same box
(scripts/bench_loader.py --profile; its p = 0 line is the wrapper without rendering).

Intensities are normalised the way nnU-Net's preprocessing normalises the channel (z-score,
``use_mask_for_norm`` honoured: statistics over seg >= 0 and zeros outside). The statistics are either
the case's (``stats="case"``: the sequence parameters, the P99.5 clip level, mean and std come from
rendering a fixed subsample of the case's normalisation voxels, as preprocessing would z-score the
whole volume) or the patch's (``stats="patch"``: clip level and z-score of the rendered crop).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from ..contrast import ContrastRenderer, protocol_with_settings
from ..contrast.imperfections import NormalPool
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


#: cases whose files one process keeps open (:class:`OpenCaseFiles`; 1-4 file descriptors per case)
OPEN_CASES = 64


class OpenCaseFiles:
    """The open files of the cases a process loaded last: memory-mapped arrays (a case's aligned maps,
    nnU-Net's blosc2 image, seg, previous-stage seg) and what was read from small files (the case's
    properties), each opened by its kind's opener on first use.

    Why: nnU-Net opens a case's files at every load (~0.1-0.2 ms per file for a 2D sample) and unpickles
    its properties (~0.3-0.5 ms for a cardiac case: the class locations of foreground oversampling); kept,
    a load only reads its crop. Every memory map holds a file descriptor (numpy's and blosc2's
    alike), so at most :attr:`max_cases` cases stay open, the least recently loaded closed first: a
    dataset of thousands of cases stays far below the usual limit of 1024 open files per process, and
    the properties kept stay small (nnU-Net keeps 10,000 locations per class, 1 % of a larger class: well
    under a MB for a cardiac case, a few MB for a large 3D volume).

    Args:
        openers: kind -> function opening that file of a case (argument: the case identifier).
        max_cases: cases kept open.
    """

    def __init__(self, openers: dict, max_cases: int = OPEN_CASES):
        from collections import OrderedDict

        if max_cases < 1:
            raise ValueError(f"max_cases must be at least 1, got {max_cases}")
        self.openers, self.max_cases = dict(openers), int(max_cases)
        self._cases: "OrderedDict[str, dict]" = OrderedDict()

    def __len__(self) -> int:
        return len(self._cases)

    def kinds_open(self, identifier: str) -> set:
        """The kinds of file open for a case (empty if it is not open)."""
        return set(self._cases.get(identifier, ()))

    def get(self, identifier: str, kind: str):
        """The open file ``kind`` of a case, opened now if it is not."""
        handles = self._cases.get(identifier)
        if handles is None:
            handles = self._cases[identifier] = {}
            while len(self._cases) > self.max_cases:
                self._cases.popitem(last=False)  # dropping the handles closes their files
        else:
            self._cases.move_to_end(identifier)
        if kind not in handles:
            handles[kind] = self.openers[kind](identifier)
        return handles[kind]


class PhysAugTrainingDataset:
    """Wraps nnU-Net's *training* dataset; ``load_case`` renders a random contrast with probability p.

    Pickles to plain paths and settings (no open files, no RNG state), so it works in nnU-Net's
    multi-process loaders and spawned workers. Random draws come from a numpy Generator created per
    process (loader workers share torch's RNG stream, not numpy's).

    Args:
        base: nnU-Net's dataset (``nnUNetDatasetBlosc2``/``nnUNetDatasetNumpy``) of the training keys.
        aligned_folder: folder written by :func:`nnunetv2_physaug.maps.align.align_dataset_maps`.
        protocol: preset name or protocol file for :func:`nnunetv2_physaug.contrast.load_protocol`.
        protocol_settings: ``FAMILY.PARAM=VALUE`` settings applied on top of ``protocol``
            (:func:`nnunetv2_physaug.contrast.protocol_with_settings`; trainer variants and ablations).
        p_render: probability that a load is rendered (None: the protocol's ``p_render``).
        use_mask_for_norm: the configuration's ``use_mask_for_norm[0]``.
        use_labels: pass the case's labels (ACDC convention) to the renderer for label-aware Gd.
        stats: "case" or "patch" normalisation statistics (see module docstring).
        draw_bank_size: case-level draws made in a row per case and posterior sample (``stats="case"``;
            :class:`DrawBank`; 1 = one draw at each load).
        open_cases: cases whose memory-mapped files a process keeps open (:class:`OpenCaseFiles`).
    """

    def __init__(self, base, aligned_folder: os.PathLike | str, protocol: str, p_render: Optional[float],
                 use_mask_for_norm: bool, use_labels: bool = True, stats: str = "case",
                 protocol_settings: Sequence[str] = (), draw_bank_size: int = DRAW_BANK_SIZE,
                 open_cases: int = OPEN_CASES):
        if stats not in STATS_MODES:
            raise ValueError(f"stats must be one of {STATS_MODES}, got {stats!r}")
        self.base = base
        self.aligned_folder = str(aligned_folder)
        self.protocol = str(protocol)
        self.protocol_settings = tuple(str(x) for x in protocol_settings)
        self.use_mask_for_norm = bool(use_mask_for_norm)
        self.use_labels = bool(use_labels)
        self.stats = stats
        if draw_bank_size < 1:
            raise ValueError(f"draw_bank_size must be at least 1, got {draw_bank_size}")
        self.draw_bank_size = int(draw_bank_size)
        if open_cases < 1:
            raise ValueError(f"open_cases must be at least 1, got {open_cases}")
        self.open_cases = int(open_cases)
        # noise from a per-process pool: fresh Gaussian noise would be the costliest step of a render
        self.renderer = ContrastRenderer(protocol_with_settings(self.protocol, self.protocol_settings),
                                         noise_pool=NormalPool())
        self.p_render = float(self.renderer.p_render if p_render is None else p_render)
        if not 0.0 <= self.p_render <= 1.0:
            raise ValueError(f"p_render must be in [0, 1], got {self.p_render}")
        missing = [k for k in base.identifiers if not (Path(self.aligned_folder) / f"{k}.npy").is_file()]
        if missing:
            raise FileNotFoundError(f"aligned tissue maps missing in {self.aligned_folder} for cases {missing[:5]}"
                                    f"{' ...' if len(missing) > 5 else ''}")
        self._rng: Optional[np.random.Generator] = None
        self._rng_pid: Optional[int] = None
        self._arrays: dict = {}
        self._arrays_pid: Optional[int] = None
        self._files: Optional[OpenCaseFiles] = None
        self._files_pid: Optional[int] = None

    # nnU-Net's loader reads these
    @property
    def identifiers(self):
        return self.base.identifiers

    def __getitem__(self, identifier):
        return self.load_case(identifier)

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_rng"] = None
        state["_rng_pid"] = None
        state["_arrays"] = {}  # draw banks are per process
        state["_arrays_pid"] = None
        state["_files"] = None  # open files are per process
        state["_files_pid"] = None
        return state

    @property
    def rng(self) -> np.random.Generator:
        # a fresh OS-entropy stream per process: forked/spawned loader workers must not share draws
        if self._rng is None or self._rng_pid != os.getpid():
            self._rng = np.random.default_rng()
            self._rng_pid = os.getpid()
        return self._rng

    def _case_arrays(self, identifier: str) -> tuple[np.ndarray, np.ndarray, list[Optional[DrawBank]]]:
        """(memory-mapped aligned maps, voxel sample, the :class:`DrawBank` of each posterior sample,
        made on first use) of a case. The maps come from :attr:`files`; the sample and the banks are small
        in-memory arrays (no open file), kept per process for every case."""
        if self._arrays_pid != os.getpid():
            self._arrays, self._arrays_pid = {}, os.getpid()
        maps = self.files.get(identifier, "maps")
        if identifier not in self._arrays:
            sample = np.load(Path(self.aligned_folder) / f"{identifier}_sample.npy", allow_pickle=False)
            self._arrays[identifier] = (sample, [None] * maps.shape[0])
        sample, banks = self._arrays[identifier]
        return maps, sample, banks

    def _blosc2_base(self) -> bool:
        """Whether ``base`` is nnU-Net's blosc2 dataset class with memory mapping (its files can be kept
        open; a subclass may load differently, so other datasets load through ``base.load_case``)."""
        from nnunetv2.training.dataloading.nnunet_dataset import nnUNetDatasetBlosc2

        return type(self.base) is nnUNetDatasetBlosc2 and bool(self.base.mmap_kwargs)

    @property
    def files(self) -> OpenCaseFiles:
        """This process's :class:`OpenCaseFiles`: the aligned maps of every case, and the image, seg
        and previous-stage seg of nnU-Net's blosc2 dataset, opened as ``nnUNetDatasetBlosc2.load_case``
        opens them."""
        if self._files is not None and self._files_pid == os.getpid():
            return self._files
        folder = Path(self.aligned_folder)
        openers = {"maps": lambda k: np.load(folder / f"{k}.npy", mmap_mode="r", allow_pickle=False)}
        if self._blosc2_base():
            # Copied from nnU-Net 2.8.1: nnUNetDatasetBlosc2.load_case (how it opens a case's files), kept open
            import blosc2
            from batchgenerators.utilities.file_and_folder_operations import load_pickle

            base = self.base

            def opener(folder_, suffix):
                return lambda k: blosc2.open(urlpath=os.path.join(folder_, k + suffix), mode="r",
                                             dparams={"nthreads": 1}, **base.mmap_kwargs)

            openers.update(image=opener(base.source_folder, ".b2nd"), seg=opener(base.source_folder, "_seg.b2nd"))
            # read once per open case: nnU-Net's loader only reads them (the class locations of
            # foreground oversampling), where its load_case unpickles them at every load
            openers["properties"] = lambda k: load_pickle(os.path.join(base.source_folder, k + ".pkl"))
            if base.folder_with_segs_from_previous_stage is not None:
                openers["seg_prev"] = opener(base.folder_with_segs_from_previous_stage, ".b2nd")
        self._files, self._files_pid = OpenCaseFiles(openers, self.open_cases), os.getpid()
        return self._files

    def _load(self, identifier: str, image: bool):
        """(image or None, seg, seg_prev, properties) of a case, as ``base.load_case`` returns them.

        For nnU-Net's blosc2 dataset the memory-mapped handles and the properties come from
        :class:`OpenCaseFiles` (opening a case's files costs ~0.1-0.2 ms each and unpickling its
        properties ~0.3-0.5 ms, per load in ``nnUNetDatasetBlosc2.load_case``), and a rendered load
        (``image=False``) never opens the image. The properties are the same dict at every load of an
        open case: nnU-Net's loader only reads them.
        """
        if not self._blosc2_base():
            data, seg, seg_prev, properties = self.base.load_case(identifier)
            return (data if image else None), seg, seg_prev, properties
        files = self.files
        data = files.get(identifier, "image") if image else None
        seg = files.get(identifier, "seg")
        seg_prev = files.get(identifier, "seg_prev") if "seg_prev" in files.openers else None
        return data, seg, seg_prev, files.get(identifier, "properties")

    def load_case(self, identifier: str):
        rng = self.rng
        if rng.random() >= self.p_render:
            return self._load(identifier, image=True)
        _, seg, seg_prev, properties = self._load(identifier, image=False)
        seg = SharedSegCrop(seg)
        maps, sample, banks = self._case_arrays(identifier)
        k = int(rng.integers(maps.shape[0]))  # one posterior sample per load
        if banks[k] is None and self.stats == "case":
            banks[k] = DrawBank(self.renderer, reference_voxels(self.renderer, sample[k], self.use_labels),
                                self.draw_bank_size)
        view = RenderOnCrop(maps[k], seg, sample[k], self.renderer, rng, self.use_mask_for_norm,
                            self.use_labels, self.stats, draws=banks[k])
        view.posterior_sample = k
        return view, seg, seg_prev, properties
