"""The open files of the cases a loader process read last (a per-process cache of file handles).

nnU-Net's blosc2 dataset opens a case's files and unpickles its properties at every load; :class:`OpenCaseFiles`
keeps the memory-mapped files (aligned maps, image, seg, previous-stage seg) and the properties of the cases a
process loaded last, so a load only reads its crop. It changes what a load costs, never what it returns:
:class:`~.dataset.PhysAugTrainingDataset` can run without it (``keep_files_open=False``), which is how the
loader benchmark compares the augmentation alone with stock nnU-Net's loader.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

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


def case_openers(base, aligned_folder: os.PathLike | str) -> dict:
    """The openers of a case's files, kind -> function of the case identifier: its aligned maps (``maps``,
    a memory map of ``<aligned_folder>/<case>.npy``) always; and where ``base`` is nnU-Net's blosc2 dataset
    with memory mapping, its image, seg, previous-stage seg and properties, opened as
    ``nnUNetDatasetBlosc2.load_case`` opens them (another dataset class may load differently: it loads
    through its own ``load_case``)."""
    from nnunetv2.training.dataloading.nnunet_dataset import nnUNetDatasetBlosc2

    folder = Path(aligned_folder)
    openers = {"maps": lambda k: np.load(folder / f"{k}.npy", mmap_mode="r", allow_pickle=False)}
    if type(base) is not nnUNetDatasetBlosc2 or not base.mmap_kwargs:
        return openers
    # Copied from nnU-Net 2.8.1: nnUNetDatasetBlosc2.load_case (how it opens a case's files), kept open
    import blosc2
    from batchgenerators.utilities.file_and_folder_operations import load_pickle

    def opener(folder_, suffix):
        return lambda k: blosc2.open(urlpath=os.path.join(folder_, k + suffix), mode="r", dparams={"nthreads": 1},
                                     **base.mmap_kwargs)

    openers.update(image=opener(base.source_folder, ".b2nd"), seg=opener(base.source_folder, "_seg.b2nd"))
    # read once per open case: nnU-Net's loader only reads them (the class locations of foreground
    # oversampling), where its load_case unpickles them at every load
    openers["properties"] = lambda k: load_pickle(os.path.join(base.source_folder, k + ".pkl"))
    if base.folder_with_segs_from_previous_stage is not None:
        openers["seg_prev"] = opener(base.folder_with_segs_from_previous_stage, ".b2nd")
    return openers
