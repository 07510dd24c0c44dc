"""Training-dataset wrapper: on loading a case, render a random MR contrast from its tissue maps.

Only nnU-Net's *training* dataset is wrapped (:class:`PhysAugTrainingDataset`): with probability p a load
returns a :class:`~.render_on_crop.RenderOnCrop` stand-in for the image, which renders just the crop
nnU-Net's loader keeps; otherwise the case's real image. Everything downstream (foreground oversampling,
spatial and intensity augmentation, mirroring, deep supervision) is nnU-Net's own and unchanged. The case
files stay open per process (:class:`~.open_cases.OpenCaseFiles`, ``keep_files_open``; off, every load opens
them as nnU-Net's dataset does).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from ..contrast import ContrastRenderer, protocol_with_settings
from ..contrast.imperfections import NormalPool
from .open_cases import OPEN_CASES, OpenCaseFiles, case_openers
from .render_on_crop import DRAW_BANK_SIZE, STATS_MODES, DrawBank, RenderOnCrop, SharedSegCrop, reference_voxels


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
        keep_files_open: keep those files open (off: every load opens its files as nnU-Net's dataset does,
            which is how the loader benchmark compares the augmentation alone with stock nnU-Net's loader).
    """

    def __init__(self, base, aligned_folder: os.PathLike | str, protocol: str, p_render: Optional[float],
                 use_mask_for_norm: bool, use_labels: bool = True, stats: str = "case",
                 protocol_settings: Sequence[str] = (), draw_bank_size: int = DRAW_BANK_SIZE,
                 open_cases: int = OPEN_CASES, keep_files_open: bool = True):
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
        self.keep_files_open = bool(keep_files_open)
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
        maps = self.files.get(identifier, "maps") if self.keep_files_open else self.files.openers["maps"](identifier)
        if identifier not in self._arrays:
            sample = np.load(Path(self.aligned_folder) / f"{identifier}_sample.npy", allow_pickle=False)
            self._arrays[identifier] = (sample, [None] * maps.shape[0])
        sample, banks = self._arrays[identifier]
        return maps, sample, banks

    @property
    def files(self) -> OpenCaseFiles:
        """This process's :class:`OpenCaseFiles`: the aligned maps of every case, and the image, seg,
        previous-stage seg and properties of nnU-Net's blosc2 dataset (:func:`~.open_cases.case_openers`)."""
        if self._files is None or self._files_pid != os.getpid():
            self._files, self._files_pid = OpenCaseFiles(case_openers(self.base, self.aligned_folder),
                                                         self.open_cases), os.getpid()
        return self._files

    def _load(self, identifier: str, image: bool):
        """(image or None, seg, seg_prev, properties) of a case, as ``base.load_case`` returns them: from
        :class:`OpenCaseFiles` where the files are kept open (nnU-Net's blosc2 dataset, ``keep_files_open``;
        a rendered load never opens the image; the properties are the same dict at every load of an open
        case: nnU-Net's loader only reads them), from ``base.load_case`` otherwise."""
        if not self.keep_files_open or "seg" not in self.files.openers:
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
