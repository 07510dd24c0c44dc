"""The reverse-imaging engine: image folder -> tissue-map folder, batched, resumable and sharded.

Volumes are cut into slices along Z (nibabel axis order (X, Y, Z); a slice is (X, Y) = (H, W));
slices of consecutive cases with the same in-plane shape and the same label availability are
batched into one :meth:`SliceEstimator.estimate` call. The run is planned first (:func:`_plan`: inputs
checked, the folder's identity established, finished cases skipped), slices are batched by
:class:`_SliceBatcher`, and a case whose slices are all estimated is finished by
:mod:`.case_writer` (M0 harmonised, QC, committed). A process computes a case only while holding the
case's lock; a case another process is computing is done last, after waiting for that process, and then
only if it did not finish it.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Union

import numpy as np
import torch

from ..maps.folder import FileLock, TissueMapFolder, input_digest
from ..maps.store import TissueMapError
from . import shard as sharding
from .base import SliceEstimator
from .label_tissues import LabelTissueError, resolve_label_tissues
from .rng import slice_generator
from .io import (ReverseInputError, check_label_coverage, default_labels_dir, default_maps_dir, image_shape,
                 label_file, list_cases, load_image, load_labels)
from .case_writer import MAX_NRMSE_PCT, CaseWork, write_case

#: ``labels_dir="auto"``: use the sibling labelsTr folder when it exists.
AUTO = "auto"
PathLike = Union[str, os.PathLike]


class ReverseError(RuntimeError):
    """Some cases could not be processed; the message lists them with their reasons."""


@dataclass
class ReverseSummary:
    """What a run did. ``qc`` holds the QC figures of the cases written in this run."""

    maps_dir: Path
    estimator: str
    prior_hash: Optional[str]
    shard: tuple[int, int]
    done: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    qc: dict[str, dict] = field(default_factory=dict)
    #: cases of this shard that had no label file in the labels folder (estimated without labels)
    unlabelled: list[str] = field(default_factory=list)
    seconds: float = 0.0
    n_slices: int = 0

    def format(self) -> str:
        """Human-readable summary (several lines)."""
        lines = [f"physaug-reverse: estimator {self.estimator}"
                 + (f" (prior {self.prior_hash})" if self.prior_hash else " (weight-free, no prior)")
                 + (f", shard {self.shard[0]}/{self.shard[1]}" if self.shard[1] > 1 else ""),
                 f"  maps folder: {self.maps_dir}",
                 f"  cases: {len(self.done)} done, {len(self.skipped)} skipped (already complete), "
                 f"{len(self.failed)} failed; {self.n_slices} slices in {self.seconds:.1f} s"
                 + (f" ({self.n_slices / self.seconds:.1f} slices/s)" if self.seconds > 0 and self.n_slices else "")]
        if self.qc:
            nr = np.array([q["nrmse_pct"] for q in self.qc.values()])
            worst = max(self.qc, key=lambda c: self.qc[c]["nrmse_pct"])
            lines.append(f"  data consistency (bSSFP re-render NRMSE): mean {nr.mean():.3g} %, "
                         f"max {nr.max():.3g} % ({worst})")
        if self.unlabelled:
            shown = ", ".join(self.unlabelled[:5]) + (" ..." if len(self.unlabelled) > 5 else "")
            lines.append(f"  WARNING: {len(self.unlabelled)} case(s) had no label file and were estimated without "
                         f"labels (blood and myocardium from intensity classes only): {shown}")
        for case, msg in self.failed.items():
            lines.append(f"  FAILED {case}: {msg}")
        return "\n".join(lines)


def resolve_device(device: Union[str, torch.device]) -> torch.device:
    """``"cuda"`` becomes ``cuda:<LOCAL_RANK>`` under torchrun; a missing GPU is a clear error."""
    dev = torch.device(device)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {device!r} requested but CUDA is not available; use --device cpu")
        if dev.index is None:
            dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return dev


def parse_sampler_options(items: list[str]) -> dict:
    """``["steps=50", "channel_weights=0.25,1,1", "gradient=jvp"]`` ->
    ``{"steps": 50.0, "channel_weights": (0.25, 1.0, 1.0), "gradient": "jvp"}``.

    Values are read as a number, a comma-separated tuple of numbers, or else kept as text; the
    sampler checks the names and gives each value its parameter's type (a word where a number
    belongs is reported there).
    Raises:
        ValueError: an item without ``=``.
    """
    out: dict = {}
    for item in items:
        key, sep, value = item.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not key or not value:
            raise ValueError(f"sampler option {item!r} is not KEY=VALUE (e.g. steps=50)")
        try:
            out[key] = tuple(float(v) for v in value.split(",")) if "," in value else float(value)
        except ValueError:
            out[key] = value
    return out


def make_estimator(method: str = "label", prior: Union[None, PathLike, object] = None, preset: str = "fast",
                   field_strength: str = "1.5T", device: Union[str, torch.device] = "cpu",
                   sampler_options: Optional[dict] = None,
                   label_tissues: Optional[dict[int, str]] = None) -> SliceEstimator:
    """Build a slice estimator.

    Args:
        method: ``"label"`` (weight-free, the default without a prior) or ``"diffusion"``.
        prior: for ``"diffusion"``: a prior folder (diffusers layout) or a loaded ``PhysicsPrior``.
        preset: diffusion sampler preset, ``"fast"`` or ``"paper"``.
        field_strength: tissue-table field ("1.5T", "3T") of the label estimator.
        device: where the prior runs.
        label_tissues: label value -> tissue of the label estimator (default ACDC; see
            :func:`~.label_tissues.resolve_label_tissues`).
        sampler_options: fields of the preset's ``FastParams`` / ``PaperParams`` to override
            (e.g. ``{"steps": 50, "guidance": 10}``); recorded in the manifest like all parameters.
    Raises:
        ValueError: an unknown sampler option, or options given to the label estimator.
        PriorError: the prior folder has the wrong layout or channel count (from ``PhysicsPrior``).
    """
    if method == "label":
        if sampler_options:
            raise ValueError("sampler options apply to the diffusion samplers (--prior), not to method 'label'")
        if prior is not None:
            raise ValueError("method 'label' takes no prior; pass method='diffusion' to use one")
        from .label_estimator import LabelEstimator
        return LabelEstimator(field=field_strength, label_tissues=label_tissues)
    if method == "diffusion":
        if prior is None:
            raise ValueError("method 'diffusion' needs a prior folder (--prior DIR)")
        from .diffusion import DiffusionEstimator  # imported lazily: diffusers is heavy
        from .prior import PhysicsPrior
        if isinstance(prior, (str, os.PathLike)):
            prior = PhysicsPrior.from_pretrained(prior, device=resolve_device(device))
        else:
            prior = prior.to(resolve_device(device))
        return DiffusionEstimator(prior, preset=preset, **(sampler_options or {}))
    raise ValueError(f"unknown method {method!r}; choose 'label' or 'diffusion'")


def _tissue_values(estimator: Optional[SliceEstimator], images_dir: PathLike) -> Optional[dict]:
    """``{"blood": values, "myocardium": values}`` of the label-tissue mapping for the plausibility check: the
    label estimator's own, else the dataset's (dataset.json beside the images, else ACDC); None when the
    dataset's label names do not say (the check is then skipped)."""
    from .label_tissues import values_of

    mapping = getattr(estimator, "label_tissues", None)
    if mapping is None:
        try:
            mapping, _ = resolve_label_tissues(images_dir)
        except LabelTissueError:
            return None
    return {t: values_of(mapping, t) for t in ("blood", "myocardium")}


@dataclass
class ReverseConfig:
    """How :func:`run_reverse` works (every field has a default).

    Attributes:
        estimator: a :class:`SliceEstimator`; default the weight-free ``LabelEstimator``.
        labels_dir: label folder (``CASE.nii.gz``); ``"auto"`` = the sibling ``labelsTr`` when it exists;
            None = no labels. Cases without a label file get none (and a warning); a folder matching no
            case is an error.
        device: torch device for the estimator's inputs.
        batch_size: slices per estimator call.
        n_samples: K maps per case (written as 4D when K > 1).
        shard: ``(i, n)`` to process the i-th of n disjoint case shares; default from the
            torch.distributed / torchrun rank (RANK, WORLD_SIZE), else all cases.
        overwrite: redo finished cases and replace a folder made with other settings.
        cases: restrict to these case identifiers (all must exist in the images folder).
        seed: base seed of the estimator's random numbers.
        progress: show a tqdm bar over slices.
        max_nrmse_pct: a case whose maps re-render its image with a larger NRMSE (percent) fails
            (listed in ``failed``, no maps written) instead of passing with a bad QC figure.
        accept_implausible: write maps whose labelled blood / myocardium have median T1 or T2 outside
            :data:`~.qc.PLAUSIBLE_MEDIANS_MS` (by default such a case fails like one above ``max_nrmse_pct``).
    """
    estimator: Optional[SliceEstimator] = None
    labels_dir: Union[None, PathLike, str] = AUTO
    device: Union[str, torch.device] = "cpu"
    batch_size: int = 16
    n_samples: int = 1
    shard: Optional[tuple[int, int]] = None
    overwrite: bool = False
    cases: Optional[list[str]] = None
    seed: int = 0
    progress: bool = True
    max_nrmse_pct: float = MAX_NRMSE_PCT
    accept_implausible: bool = False


@dataclass
class _Plan:
    """The work of one run, decided before any slice is estimated (:func:`_plan`)."""
    cfg: ReverseConfig
    estimator: SliceEstimator
    device: torch.device
    images: dict[str, Path]
    labels_dir: Optional[Path]
    folder: TissueMapFolder
    ident_hash: str
    summary: ReverseSummary
    todo: list[str]
    shapes: dict[str, tuple[int, int, int]]
    inputs: dict[str, dict]
    tissue_values: Optional[dict]


def _check_folders(images_dir: PathLike, maps_dir: Path, labels_dir: Optional[Path]) -> None:
    if maps_dir.exists() and not maps_dir.is_dir():
        raise ReverseInputError(f"-o {maps_dir} is a file, not a folder; give a folder for the maps")
    if maps_dir.resolve() == Path(images_dir).resolve() or (labels_dir is not None
                                                             and maps_dir.resolve() == Path(labels_dir).resolve()):
        raise ReverseInputError(f"the maps folder {maps_dir} is the images or labels folder; maps written there "
                                f"would be read as images by the next run. Use another -o (default: "
                                f"{default_maps_dir(images_dir)})")
    if labels_dir is not None and not Path(labels_dir).is_dir():
        raise ReverseInputError(f"label folder {labels_dir} does not exist; pass an existing folder or no labels")


def _plan(images_dir: PathLike, maps_dir: Optional[PathLike], cfg: ReverseConfig) -> _Plan:
    """Check the inputs, establish the folder's identity and list the cases to compute (the others skipped)."""
    if cfg.batch_size < 1 or cfg.n_samples < 1:
        raise ValueError(f"batch_size ({cfg.batch_size}) and n_samples ({cfg.n_samples}) must be >= 1")
    all_cases = list_cases(images_dir)
    if cfg.cases is not None:
        unknown = sorted(set(cfg.cases) - set(all_cases))
        if unknown:
            raise ReverseInputError(f"cases {unknown} have no image {{case}}_0000.nii.gz in {images_dir}")
    selected = sorted(set(cfg.cases)) if cfg.cases is not None else list(all_cases)
    maps_dir = Path(maps_dir) if maps_dir is not None else default_maps_dir(images_dir)
    labels_given = cfg.labels_dir not in (None, AUTO)
    labels_dir = default_labels_dir(images_dir) if cfg.labels_dir == AUTO else cfg.labels_dir
    labels_dir = Path(labels_dir) if labels_dir is not None else None
    _check_folders(images_dir, maps_dir, labels_dir)
    unlabelled = check_label_coverage(labels_dir, selected, labels_given) if labels_dir is not None else []
    tissue_values = _tissue_values(cfg.estimator, images_dir) if labels_dir is not None else None
    dev = resolve_device(cfg.device)
    estimator = cfg.estimator if cfg.estimator is not None else make_estimator("label")
    shard = sharding.resolve_shard(cfg.shard)
    mine = sharding.shard_cases(selected, shard)

    ident = estimator.identity()
    identity = {"estimator": ident["estimator"], "prior_hash": ident.get("prior_hash"),
                "parameters": {**ident.get("parameters", {}), "n_samples": int(cfg.n_samples), "seed": int(cfg.seed),
                               "slice_axis": "Z (nibabel axis 2)", "m0_harmonisation": "per case, median slice scale"}}
    folder = TissueMapFolder(maps_dir)
    ident_hash = folder.establish(identity, cfg.overwrite)
    summary = ReverseSummary(maps_dir=maps_dir, estimator=identity["estimator"], prior_hash=identity["prior_hash"],
                             shard=shard, unlabelled=[c for c in unlabelled if c in mine])
    if not cfg.overwrite:
        folder.reconcile(ident_hash, mine)
    # what each case's maps are made from: maps of an image (or labels) replaced since are stale and redone
    inputs = {c: input_digest(all_cases[c], label_file(labels_dir, c) if labels_dir is not None else None)
              for c in mine}
    todo, shapes = [], {}
    for c in mine:
        if not cfg.overwrite and folder.is_complete(c, ident_hash, inputs[c]):
            summary.skipped.append(c)
            continue
        try:
            shapes[c] = image_shape(all_cases[c])
            todo.append(c)
        except ReverseInputError as e:
            summary.failed[c] = str(e)
    return _Plan(cfg, estimator, dev, all_cases, labels_dir, folder, ident_hash, summary, todo, shapes, inputs,
                 tissue_values)


class _SliceBatcher:
    """Queues the slices of the cases it starts, estimates them ``batch_size`` at a time (only slices of one
    in-plane shape and labelling share a batch) and writes each case when its last slice is back; holds the
    lock of every case it is computing."""

    def __init__(self, plan: _Plan, bar) -> None:
        self.plan, self.bar = plan, bar
        self.pending: dict[str, CaseWork] = {}
        self.locks: dict[str, FileLock] = {}
        self.queue: list[tuple[str, int]] = []

    def release(self, c: str) -> None:
        lock = self.locks.pop(c, None)
        if lock is not None:
            lock.release()

    def release_all(self) -> None:
        for c in list(self.locks):
            self.release(c)

    def _skip(self, c: str, reason: Optional[str] = None) -> None:
        if reason is None:
            self.plan.summary.skipped.append(c)
        else:
            self.plan.summary.failed[c] = reason
        self.bar.update(self.plan.shapes[c][2])
        self.release(c)

    def start(self, c: str, lock: FileLock) -> None:
        """Queue the slices of case ``c`` (``lock``: its case lock, now held by this batcher)."""
        p, cfg = self.plan, self.plan.cfg
        self.locks[c] = lock
        if not cfg.overwrite and p.folder.is_complete(c, p.ident_hash, p.inputs[c]):
            return self._skip(c)  # another process finished it meanwhile
        try:
            vol, affine = load_image(p.images[c])
            labels = load_labels(p.labels_dir, c, vol.shape)
            if labels is not None and hasattr(p.estimator, "check_labels"):
                p.estimator.check_labels(labels, where=f"label file of case {c} in {p.labels_dir}")
        except (ReverseInputError, LabelTissueError) as e:
            return self._skip(c, str(e))
        x, y, nz = vol.shape
        self.pending[c] = CaseWork(case=c, image=vol, affine=affine, labels=labels, t0=time.perf_counter(),
                                    maps=np.empty((nz, cfg.n_samples, 3, x, y), np.float32), remaining=nz)
        for z in range(nz):
            if self.queue:
                head = self.pending[self.queue[0][0]]
                if (len(self.queue) >= cfg.batch_size or head.image.shape[:2] != vol.shape[:2]
                        or (head.labels is None) != (labels is None)):
                    self.flush()
            self.queue.append((c, z))

    def flush(self) -> None:
        """Estimate the queued slices; write every case whose last slice came back."""
        if not self.queue:
            return
        p, cfg, queue = self.plan, self.plan.cfg, self.queue
        works = [self.pending[c] for c, _ in queue]
        imgs = torch.from_numpy(np.stack([w.image[:, :, z] for w, (_, z) in zip(works, queue)])).to(p.device)
        labs = None
        if works[0].labels is not None:
            labs = torch.from_numpy(np.stack([w.labels[:, :, z] for w, (_, z) in zip(works, queue)])).to(p.device)
        gens = [slice_generator(cfg.seed, c, z, p.device) for c, z in queue]  # streams belong to the slice
        with torch.no_grad():
            est = p.estimator.estimate(imgs, labs, cfg.n_samples, gens)
        out = est.maps.detach().to("cpu", torch.float32).numpy()
        expected = (len(queue), cfg.n_samples, 3) + tuple(imgs.shape[1:])
        if out.shape != expected:
            raise RuntimeError(f"estimator {p.estimator.name} returned maps of shape {out.shape}, expected {expected}")
        for i, (c, z) in enumerate(queue):
            w = self.pending[c]
            w.maps[z] = out[i]
            w.slice_qc.append(est.qc[i] if i < len(est.qc) else {})
            w.remaining -= 1
            if w.remaining == 0:
                self._finish(w)
        self.bar.update(len(queue))
        p.summary.n_slices += len(queue)
        queue.clear()

    def _finish(self, w: CaseWork) -> None:
        p, cfg = self.plan, self.plan.cfg
        try:
            p.summary.qc[w.case] = write_case(p.folder, w, p.ident_hash, p.estimator.forward_model, cfg.max_nrmse_pct,
                                               p.tissue_values, cfg.accept_implausible, p.inputs[w.case])
            p.summary.done.append(w.case)
        except TissueMapError as e:
            p.summary.failed[w.case] = str(e)
        del self.pending[w.case]
        self.release(w.case)


def run_reverse(images_dir: PathLike, maps_dir: Optional[PathLike] = None, config: Optional[ReverseConfig] = None,
                **settings) -> ReverseSummary:
    """Estimate tissue maps for the images of an nnU-Net image folder.

    Args:
        images_dir: folder of ``CASE_0000.nii.gz`` 3D images (channel 0000 is used).
        maps_dir: output folder; default ``<images_dir>/../tissueMapsTr``.
        config: a :class:`ReverseConfig`; or give its fields as keyword ``settings``.
    Returns:
        a :class:`ReverseSummary`; per-case input errors are collected in ``failed``, not raised.
    Raises:
        ReverseInputError: missing/empty images folder, wrong file naming, unknown cases, labels matching no case.
        CacheMismatchError: ``maps_dir`` holds maps made with other settings (without ``overwrite``).
    """
    from tqdm.auto import tqdm

    if config is not None and settings:
        raise TypeError("give run_reverse either a ReverseConfig or its fields as keywords, not both")
    t_start = time.perf_counter()
    plan = _plan(images_dir, maps_dir, config or ReverseConfig(**settings))
    bar = tqdm(total=sum(s[2] for s in plan.shapes.values()), unit="slice", disable=not plan.cfg.progress,
               desc=f"reverse ({plan.estimator.name})")
    batcher = _SliceBatcher(plan, bar)
    try:
        busy = []  # cases another process is computing: done last, once it has let go of them
        for c in plan.todo:
            lock = plan.folder.try_lock_case(c)
            if lock is None:
                busy.append(c)
                continue
            batcher.start(c, lock)
        for c in busy:
            batcher.flush()  # hold no case lock while waiting for another process's
            batcher.start(c, plan.folder.try_lock_case(c, blocking=True))
        batcher.flush()
    finally:
        bar.close()
        batcher.release_all()
    plan.summary.seconds = time.perf_counter() - t_start
    return plan.summary


def fill_missing_maps(images_dir: PathLike, maps_dir: PathLike, cases: list[str],
                      device: Union[str, torch.device] = "cpu", prior: Union[None, PathLike, object] = None,
                      labels_dir: Union[None, PathLike, str] = AUTO, preset: str = "fast", n_samples: int = 1,
                      batch_size: int = 16, field_strength: str = "1.5T", seed: int = 0,
                      progress: bool = True) -> list[str]:
    """Compute maps only for the listed cases that have none in ``maps_dir`` (for the trainer).

    Uses the same writer and manifest rules as :func:`run_reverse` (a folder made with other
    settings is an error, nothing is overwritten). Without ``prior`` the weight-free estimator is used.

    Returns:
        the cases written by this call.
    Raises:
        ReverseError: some cases failed (the message lists each with its reason).
        CacheMismatchError, ReverseInputError, PriorError: as for :func:`run_reverse` / the prior.
    """
    todo = sorted(set(cases))  # run_reverse skips the complete ones (same image and labels as recorded)
    if not todo:
        return []
    label_tissues = None
    if prior is None:  # the dataset's own label names (dataset.json beside imagesTr), else ACDC
        label_tissues, _ = resolve_label_tissues(images_dir)
    estimator = make_estimator("diffusion" if prior is not None else "label", prior=prior, preset=preset,
                               field_strength=field_strength, device=device, label_tissues=label_tissues)
    summary = run_reverse(images_dir, maps_dir, estimator=estimator, labels_dir=labels_dir, device=device,
                          batch_size=batch_size, n_samples=n_samples, shard=(0, 1), overwrite=False,
                          cases=todo, seed=seed, progress=progress)
    if summary.failed:
        raise ReverseError("tissue maps could not be computed for: "
                           + "; ".join(f"{c}: {m}" for c, m in summary.failed.items()))
    return summary.done
