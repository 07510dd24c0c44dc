"""The reverse-imaging engine: image folder -> tissue-map folder, batched, resumable and sharded.

Volumes are cut into slices along Z (nibabel axis order (X, Y, Z); a slice is (X, Y) = (H, W));
slices of consecutive cases with the same in-plane shape and the same label availability are
batched into one :meth:`SliceEstimator.estimate` call. When all slices of a case are estimated,
the case is finished:

* **Per-case M0 harmonisation.** Estimators explain each slice up to its own global scale (the
  diffusion samplers normalise every slice by its percentiles). M0 of each slice and sample is
  rescaled so that the bSSFP rendering of the whole volume is proportional to the image with one
  factor (the median of the slice factors), keeping the relative intensity of slices of one case.
* T1/T2 are clamped to >= 1 ms and M0 to >= 0 (the clamp of DESIGN §6; estimators may return 0).
* QC: ``nrmse_pct`` = data-consistency NRMSE of the whole volume with one scale (mean over samples),
  ``nrmse_pct_slice_max`` = worst per-slice NRMSE, plus the means of the estimator's numeric
  per-slice figures (``slice_mean_<name>``).
* Written in the image's geometry (3D, or 4D with K samples on the last axis) and committed by
  :class:`nnunetv2_physaug.maps.folder.TissueMapFolder`. A process computes a case only while
  holding the case's lock; a case another process is computing is done last, after waiting for that
  process, and then only if it did not finish it.
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
from .forward import BSSFPForwardModel
from .qc import implausible_medians, labelled_tissue_medians, fit_scale, nrmse_pct

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


@dataclass
class _CaseWork:
    case: str
    image: np.ndarray          # (X, Y, Z) float32
    affine: np.ndarray
    labels: Optional[np.ndarray]
    t0: float
    maps: Optional[np.ndarray] = None   # (Z, K, 3, X, Y)
    slice_qc: list = field(default_factory=list)
    remaining: int = 0


def _finish_maps(image: np.ndarray, maps: np.ndarray, model: BSSFPForwardModel) -> tuple[np.ndarray, dict]:
    """Clamp, harmonise M0 across slices, and compute the case QC with the estimator's forward model.
    image (X,Y,Z), maps (Z,K,3,X,Y)."""
    x = torch.from_numpy(np.ascontiguousarray(np.moveaxis(image, 2, 0))).double()  # (Z, X, Y)
    m = torch.from_numpy(maps).double()
    m[:, :, 0].clamp_(min=0.0)
    m[:, :, 1:].clamp_(min=1.0)
    r = model.render_maps(m)                                 # (Z, K, X, Y)
    c = fit_scale(x[:, None], r)                             # (Z, K) slice factors
    valid = c > 0
    ref = c[valid].median() if bool(valid.any()) else torch.tensor(1.0, dtype=c.dtype)
    factor = torch.where(valid, c / ref, torch.ones_like(c))
    m[:, :, 0] *= factor[:, :, None, None]
    r = r * factor[:, :, None, None]
    per_sample = nrmse_pct(x[:, None].permute(1, 0, 2, 3), r.permute(1, 0, 2, 3), dims=(-3, -2, -1))  # (K,)
    per_slice = nrmse_pct(x[:, None], r).mean(dim=1)        # (Z,)
    qc = {"nrmse_pct": float(per_sample.mean()), "nrmse_pct_slice_max": float(per_slice.max()),
          "n_slices": int(x.shape[0]), "n_samples": int(m.shape[1])}
    return m.float().numpy(), qc


#: default largest bSSFP re-render NRMSE (percent) of a case's maps; above it the case fails. The weight-free
#: estimator re-renders exactly, the fast sampler to ~0.2-0.6 %, the paper sampler to ~10-15 % on phantoms;
#: maps of a broken prior or a wrong latent mapping miss by far more.
MAX_NRMSE_PCT = 30.0


def _write_case(folder: TissueMapFolder, work: _CaseWork, ident_hash: str, model: BSSFPForwardModel,
                max_nrmse_pct: float = MAX_NRMSE_PCT, tissue_values: Optional[dict] = None,
                accept_implausible: bool = False, inputs: Optional[dict] = None) -> dict:
    maps, qc = _finish_maps(work.image, work.maps, model)
    if not qc["nrmse_pct"] <= max_nrmse_pct:  # also catches NaN
        raise TissueMapError(f"case {work.case}: its maps re-render the bSSFP image with NRMSE "
                             f"{qc['nrmse_pct']:.1f} % > {max_nrmse_pct:g} % (max_nrmse); not written. A prior that "
                             f"does not fit these images, or images that are not bSSFP?")
    if work.labels is not None and tissue_values:
        # a fit to the image alone passes for maps of any scale (M0 absorbs it): the labelled tissues' T1/T2
        # must also be a heart's
        medians = labelled_tissue_medians(maps, work.labels, tissue_values)
        qc["tissue_medians_ms"] = medians
        bad = implausible_medians(medians)
        if bad and not accept_implausible:
            raise TissueMapError(f"case {work.case}: the median T1/T2 of its labelled tissues are outside the "
                                 f"physiological range: {'; '.join(bad)}; not written. An untrained or wrong prior, "
                                 f"or a wrong label-tissue mapping? --accept-implausible writes such maps anyway")
    for key in sorted({k for q in work.slice_qc for k, v in q.items()
                       if isinstance(v, (int, float)) and not isinstance(v, bool)}):
        vals = [q[key] for q in work.slice_qc if key in q]
        qc[f"slice_mean_{key}"] = float(np.mean(vals))
    qc["labels"] = work.labels is not None
    arrays = []
    for ch in range(3):
        a = np.transpose(maps[:, :, ch], (2, 3, 0, 1))     # (Z, K, X, Y) -> (X, Y, Z, K)
        arrays.append(a[..., 0] if a.shape[-1] == 1 else a)
    qc["seconds"] = round(time.perf_counter() - work.t0, 3)
    folder.write_case(work.case, *arrays, affine=work.affine, ident_hash=ident_hash, qc=qc, inputs=inputs)
    return qc


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


def run_reverse(images_dir: PathLike, maps_dir: Optional[PathLike] = None, *,
                estimator: Optional[SliceEstimator] = None, labels_dir: Union[None, PathLike, str] = AUTO,
                device: Union[str, torch.device] = "cpu", batch_size: int = 16, n_samples: int = 1,
                shard: Optional[tuple[int, int]] = None, overwrite: bool = False,
                cases: Optional[list[str]] = None, seed: int = 0, progress: bool = True,
                max_nrmse_pct: float = MAX_NRMSE_PCT, accept_implausible: bool = False) -> ReverseSummary:
    """Estimate tissue maps for the images of an nnU-Net image folder.

    Args:
        images_dir: folder of ``CASE_0000.nii.gz`` 3D images (channel 0000 is used).
        maps_dir: output folder; default ``<images_dir>/../tissueMapsTr``.
        estimator: a :class:`SliceEstimator`; default the weight-free ``LabelEstimator``.
        labels_dir: label folder (``CASE.nii.gz``, ACDC convention); ``"auto"`` = the sibling
            ``labelsTr`` when it exists; None = no labels. Cases without a label file get none.
        device: torch device for the estimator's inputs.
        batch_size: slices per estimator call.
        n_samples: K maps per case (written as 4D when K > 1).
        shard: ``(i, n)`` to process the i-th of n disjoint case shares; default from the
            torch.distributed / torchrun rank (RANK, WORLD_SIZE), else all cases.
        overwrite: redo finished cases and replace a folder made with other settings.
        cases: restrict to these case identifiers (all must exist in ``images_dir``).
        seed: base seed of the estimator's random numbers.
        progress: show a tqdm bar over slices.
        max_nrmse_pct: a case whose maps re-render its image with a larger NRMSE (percent) fails
            (listed in ``failed``, no maps written) instead of passing with a bad QC figure.
        accept_implausible: write maps whose labelled blood / myocardium have median T1 or T2 outside
            :data:`~.qc.PLAUSIBLE_MEDIANS_MS` (by default such a case fails like one above ``max_nrmse_pct``).
    Returns:
        a :class:`ReverseSummary`; per-case input errors are collected in ``failed``, not raised.
    Raises:
        ReverseInputError: missing/empty images folder, wrong file naming, unknown cases.
        CacheMismatchError: ``maps_dir`` holds maps made with other settings (without ``overwrite``).
    """
    from tqdm.auto import tqdm

    t_start = time.perf_counter()
    if batch_size < 1 or n_samples < 1:
        raise ValueError(f"batch_size ({batch_size}) and n_samples ({n_samples}) must be >= 1")
    all_cases = list_cases(images_dir)
    if cases is not None:
        unknown = sorted(set(cases) - set(all_cases))
        if unknown:
            raise ReverseInputError(f"cases {unknown} have no image {{case}}_0000.nii.gz in {images_dir}")
    selected = sorted(set(cases)) if cases is not None else list(all_cases)
    maps_dir = Path(maps_dir) if maps_dir is not None else default_maps_dir(images_dir)
    if maps_dir.exists() and not maps_dir.is_dir():
        raise ReverseInputError(f"-o {maps_dir} is a file, not a folder; give a folder for the maps")
    labels_given = labels_dir not in (None, AUTO)
    if labels_dir == AUTO:
        labels_dir = default_labels_dir(images_dir)
    if maps_dir.resolve() == Path(images_dir).resolve() or (labels_dir is not None
                                                             and maps_dir.resolve() == Path(labels_dir).resolve()):
        raise ReverseInputError(f"the maps folder {maps_dir} is the images or labels folder; maps written there "
                                f"would be read as images by the next run. Use another -o (default: "
                                f"{default_maps_dir(images_dir)})")
    if labels_dir is not None and not Path(labels_dir).is_dir():
        raise ReverseInputError(f"label folder {labels_dir} does not exist; pass an existing folder or no labels")
    unlabelled = check_label_coverage(labels_dir, selected, labels_given) if labels_dir is not None else []
    tissue_values = _tissue_values(estimator, images_dir) if labels_dir is not None else None
    dev = resolve_device(device)
    if estimator is None:
        estimator = make_estimator("label")
    shard = sharding.resolve_shard(shard)
    mine = sharding.shard_cases(selected, shard)

    identity = estimator.identity()
    identity = {"estimator": identity["estimator"], "prior_hash": identity.get("prior_hash"),
                "parameters": {**identity.get("parameters", {}), "n_samples": int(n_samples), "seed": int(seed),
                               "slice_axis": "Z (nibabel axis 2)", "m0_harmonisation": "per case, median slice scale"}}
    folder = TissueMapFolder(maps_dir)
    ident_hash = folder.establish(identity, overwrite)
    summary = ReverseSummary(maps_dir=maps_dir, estimator=identity["estimator"],
                             prior_hash=identity["prior_hash"], shard=shard,
                             unlabelled=[c for c in unlabelled if c in mine])
    if not overwrite:
        folder.reconcile(ident_hash, mine)
    # what each case's maps are made from: maps of an image (or labels) replaced since are stale and redone
    inputs = {c: input_digest(all_cases[c], label_file(labels_dir, c) if labels_dir is not None else None)
              for c in mine}
    todo = []
    for c in mine:
        if not overwrite and folder.is_complete(c, ident_hash, inputs[c]):
            summary.skipped.append(c)
        else:
            todo.append(c)

    shapes: dict[str, tuple[int, int, int]] = {}
    for c in list(todo):
        try:
            shapes[c] = image_shape(all_cases[c])
        except ReverseInputError as e:
            summary.failed[c] = str(e)
            todo.remove(c)
    bar = tqdm(total=sum(s[2] for s in shapes.values() if s), unit="slice", disable=not progress,
               desc=f"reverse ({estimator.name})")

    pending: dict[str, _CaseWork] = {}
    locks: dict[str, FileLock] = {}
    queue: list[tuple[str, int]] = []

    def release(c: str) -> None:
        lock = locks.pop(c, None)
        if lock is not None:
            lock.release()

    def flush() -> None:
        if not queue:
            return
        works = [pending[c] for c, _ in queue]
        imgs = torch.from_numpy(np.stack([w.image[:, :, z] for w, (_, z) in zip(works, queue)])).to(dev)
        labs = None
        if works[0].labels is not None:
            labs = torch.from_numpy(np.stack([w.labels[:, :, z] for w, (_, z) in zip(works, queue)])).to(dev)
        gens = [slice_generator(seed, c, z, dev) for c, z in queue]  # streams belong to the slice
        with torch.no_grad():
            est = estimator.estimate(imgs, labs, n_samples, gens)
        out = est.maps.detach().to("cpu", torch.float32).numpy()
        if out.shape != (len(queue), n_samples, 3) + tuple(imgs.shape[1:]):
            raise RuntimeError(f"estimator {estimator.name} returned maps of shape {out.shape}, expected "
                               f"{(len(queue), n_samples, 3) + tuple(imgs.shape[1:])}")
        for i, (c, z) in enumerate(queue):
            w = pending[c]
            w.maps[z] = out[i]
            w.slice_qc.append(est.qc[i] if i < len(est.qc) else {})
            w.remaining -= 1
            if w.remaining == 0:
                try:
                    summary.qc[c] = _write_case(folder, w, ident_hash, estimator.forward_model, max_nrmse_pct,
                                                tissue_values, accept_implausible, inputs[c])
                    summary.done.append(c)
                except TissueMapError as e:
                    summary.failed[c] = str(e)
                del pending[c]
                release(c)
        bar.update(len(queue))
        summary.n_slices += len(queue)
        queue.clear()

    def start(c: str) -> None:
        """Queue the slices of case ``c`` (its lock is held)."""
        if not overwrite and folder.is_complete(c, ident_hash, inputs[c]):  # another process finished it meanwhile
            summary.skipped.append(c)
            bar.update(shapes[c][2])
            release(c)
            return
        try:
            vol, affine = load_image(all_cases[c])
            labels = load_labels(labels_dir, c, vol.shape)
            if labels is not None and hasattr(estimator, "check_labels"):
                estimator.check_labels(labels, where=f"label file of case {c} in {labels_dir}")
        except (ReverseInputError, LabelTissueError) as e:
            summary.failed[c] = str(e)
            bar.update(shapes[c][2])
            release(c)
            return
        x, y, nz = vol.shape
        work = _CaseWork(case=c, image=vol, affine=affine, labels=labels, t0=time.perf_counter(),
                         maps=np.empty((nz, n_samples, 3, x, y), np.float32), remaining=nz)
        pending[c] = work
        for z in range(nz):
            if queue:
                head = pending[queue[0][0]]
                if (len(queue) >= batch_size or head.image.shape[:2] != vol.shape[:2]
                        or (head.labels is None) != (labels is None)):
                    flush()
            queue.append((c, z))

    try:
        busy = []  # cases another process is computing: done last, once it has let go of them
        for c in todo:
            lock = folder.try_lock_case(c)
            if lock is None:
                busy.append(c)
                continue
            locks[c] = lock
            start(c)
        for c in busy:
            flush()  # hold no case lock while waiting for another process's
            locks[c] = folder.try_lock_case(c, blocking=True)
            start(c)
        flush()
    finally:
        bar.close()
        for c in list(locks):
            release(c)
    summary.seconds = time.perf_counter() - t_start
    return summary


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
