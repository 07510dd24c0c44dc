"""The real-data benchmark's report: the Markdown tables (Dice, per structure, pathology, structure
confusion, gap closed, cost), the last line and the contour figure."""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from ...conversion import myops
from .steps import PRED_NAMES, SEQUENCES, STRUCTURES

#: training iterations of an nnU-Net epoch (nnUNetTrainer's num_iterations_per_epoch); an epoch's time also
#: holds its 50 validation iterations, so seconds per iteration are an upper bound of the training step's
ITERATIONS_PER_EPOCH = 250


def _dice_by(rows: list[dict]) -> dict[tuple[str, str], float]:
    """``{(model, sequence): mean foreground Dice}`` of report rows."""
    return {(r["model"], r["sequence"]): r["mean_fg_dice"] for r in rows}


def gap_closed(rows: list[dict], baseline: str, model: str, sequence: str) -> float:
    """Share of the baseline's C0 -> ``sequence`` drop that ``model`` recovers:
    (model on sequence - baseline on sequence) / (baseline on C0 - baseline on sequence); nan when the
    baseline has no drop."""
    by = _dice_by(rows)
    return _share_recovered(by, baseline, model, sequence, by[(baseline, "C0")])


def _share_recovered(by: dict, baseline: str, model: str, sequence: str, reference: float) -> float:
    """(model - baseline) / (reference - baseline) on ``sequence``; nan when the reference is no better."""
    drop = reference - by[(baseline, sequence)]
    return (by[(model, sequence)] - by[(baseline, sequence)]) / drop if drop > 0 else float("nan")


def oracles(rows: list[dict]) -> dict[str, str]:
    """``{sequence: model}`` of the ``--oracle`` references among ``rows`` (models trained on that sequence)."""
    return {r["trained_on"]: r["model"] for r in rows
            if r.get("trained_on", myops.TRAINING_SEQUENCE) != myops.TRAINING_SEQUENCE}


def oracle_gap_closed(rows: list[dict], baseline: str, model: str, sequence: str) -> float:
    """Share of the drop from the ``--oracle`` reference that ``model`` recovers on ``sequence``:
    (model - baseline) / (oracle - baseline), all on ``sequence``, where the oracle is the baseline trainer
    trained on the real ``sequence`` images; nan when the oracle is no better than the baseline."""
    by = _dice_by(rows)
    return _share_recovered(by, baseline, model, sequence, by[(oracles(rows)[sequence], sequence)])


def oracle_line(rows: list[dict]) -> str:
    """``real_<seq>_oracle=`` for each oracle reference, on its own sequence (mean foreground Dice)."""
    by = _dice_by(rows)
    return " ".join(f"real_{s.lower()}_oracle={by[(m, s)]:.3f}" for s, m in oracles(rows).items())


def markdown_report(rows: list[dict], baseline: Optional[str] = None) -> str:
    models = list(dict.fromkeys(r["model"] for r in rows))
    by = {(r["model"], r["sequence"]): r for r in rows}
    def dice(m, s):
        r = by[(m, s)]
        rep = r.get("per_repeat", [])
        spread = f" ({min(rep):.3f}-{max(rep):.3f})" if len(rep) > 1 else ""
        return f"{r['mean_fg_dice']:.3f}{spread}"

    lines = ["| sequence | " + " | ".join(models) + " |", "|---|" + "---|" * len(models)]
    for s in SEQUENCES:
        lines.append(f"| {s} | " + " | ".join(dice(m, s) for m in models) + " |")
    if any(len(r.get("per_repeat", [])) > 1 for r in rows):
        lines += ["", "With repeats: the mean of independently trained models, their range in brackets."]
    lines += ["", "Per structure (RV / MYO / LV Dice):", "",
              "| sequence | " + " | ".join(models) + " |", "|---|" + "---|" * len(models)]
    for s in SEQUENCES:
        cells = []
        for m in models:
            d = by[(m, s)]["dice_per_label"]
            cells.append(" / ".join(f"{d.get(k, float('nan')):.3f}" for k in STRUCTURES))
        lines.append(f"| {s} | " + " | ".join(cells) + " |")
    lines += ["", "Pathology called myocardium (scar on LGE, edema on T2; in brackets: called LV blood):", "",
              "| | " + " | ".join(models) + " |", "|---|" + "---|" * len(models)]
    for s, p in (("LGE", "scar"), ("T2", "edema"), ("C0", "scar"), ("C0", "edema")):
        cells = [f"{by[(m, s)]['pathology'][p]['as_myocardium']:.1%} ({by[(m, s)]['pathology'][p]['as_LV']:.1%})"
                 for m in models]
        lines.append(f"| {p} on {s} | " + " | ".join(cells) + " |")
    with_confusion = [m for m in models if all("confusion" in by[(m, s)] for s in SEQUENCES)]
    if with_confusion:
        lines += ["", "Where each expert structure goes: share of its voxels predicted as background / RV / MYO / LV "
                  "(e.g. MYO called LV: the endocardial border):", "",
                  "| | " + " | ".join(with_confusion) + " |", "|---|" + "---|" * len(with_confusion)]
        for s in SEQUENCES:
            for name in STRUCTURES.values():
                cells = [" / ".join(f"{by[(m, s)]['confusion'][name][f'as_{PRED_NAMES[k]}']:.1%}" for k in range(4))
                         for m in with_confusion]
                lines.append(f"| {name} on {s} | " + " | ".join(cells) + " |")
    if baseline is not None:
        others = [m for m in models if m != baseline]
        lines += ["", f"Gap closed: share of {baseline}'s drop from C0 that each model recovers, "
                  "(model - baseline) / (baseline on C0 - baseline):", "",
                  "| | " + " | ".join(others) + " |", "|---|" + "---|" * len(others)]
        for s in SEQUENCES[1:]:
            lines.append(f"| C0 -> {s} | " + " | ".join(f"{gap_closed(rows, baseline, m, s):.0%}" for m in others)
                         + " |")
        lines.append("| C0 vs baseline | " + " | ".join(
            f"{by[(m, 'C0')]['mean_fg_dice'] - by[(baseline, 'C0')]['mean_fg_dice']:+.3f}" for m in others) + " |")
    cost = {m: by[(m, "C0")].get("seconds_per_epoch") for m in models}
    if any(v is not None for v in cost.values()):
        base_cost = cost.get(baseline) if baseline is not None else None
        lines += ["", "Cost: seconds per training epoch (nnU-Net's log, median over the epochs of all folds and "
                  "repeats) and its ratio to the baseline's on the same machine:", "",
                  "| | " + " | ".join(models) + " |", "|---|" + "---|" * len(models),
                  "| s / epoch | " + " | ".join("-" if cost[m] is None else f"{cost[m]:.0f}" for m in models) + " |"]
        lines.append("| s / iteration | " + " | ".join(
            "-" if cost[m] is None else f"{cost[m] / ITERATIONS_PER_EPOCH:.2f}" for m in models) + " |")
        if base_cost:
            lines.append("| x baseline | " + " | ".join("-" if cost[m] is None else f"{cost[m] / base_cost:.2f}"
                                                       for m in models) + " |")
    loader = {m: by[(m, "C0")].get("loader_ratio") for m in models}
    if any(v is not None for v in loader.values()):
        lines += ["", "Training data loader: batches per second against stock nnU-Net's, single-threaded, same dataset, "
                  "plans and batches (scripts/bench_loader.py; the peers augment in the training step, so theirs is "
                  "the stock loader up to timing noise):", "",
                  "| | " + " | ".join(models) + " |", "|---|" + "---|" * len(models),
                  "| loader / stock | " + " | ".join("-" if loader[m] is None else f"{loader[m]:.2f}"
                                                     for m in models) + " |"]
    refs = oracles(rows)
    if baseline is not None and refs:
        others = [m for m in models if m != baseline and m not in refs.values()]
        lines += ["", "Oracle references (--oracle): the baseline trainer trained on the real images of the sequence "
                  "itself (same patients, labels, split, plans and budget). Share of the drop from the oracle that "
                  "each model recovers, (model - baseline) / (oracle - baseline), on that sequence:", "",
                  "| | oracle | " + " | ".join(others) + " |", "|---|---|" + "---|" * len(others)]
        for s, ref in refs.items():
            lines.append(f"| {s} | {by[(ref, s)]['mean_fg_dice']:.3f} | "
                         + " | ".join(f"{oracle_gap_closed(rows, baseline, m, s):.0%}" for m in others) + " |")
    for m in models:
        if by[(m, SEQUENCES[0])].get("from"):
            lines += ["", f"{m}: scores taken from {by[(m, SEQUENCES[0])]['from']} (--baseline-from), "
                      f"not trained in this run."]
    return "\n".join(lines) + "\n"


def summary_line(rows: list[dict], baseline: str, physaug: str, seconds: float) -> str:
    by = _dice_by(rows)
    parts = []
    for s in SEQUENCES:
        parts += [f"real_{s.lower()}_physaug={by[(physaug, s)]:.3f}", f"real_{s.lower()}_baseline={by[(baseline, s)]:.3f}"]
    return " ".join(parts) + f" seconds={seconds:.0f}"


def contour_figure(ds: Path, mode: str, work: Path, trainers: Sequence[str], case: str, out: Path) -> None:
    """One patient's real C0/LGE/T2 (rows), with the ground truth and each model's contours (columns)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import nibabel as nib

    colours = {1: "#1f77b4", 2: "#ffbf00", 3: "#d62728"}
    labels_dir = ds / ("labelsTr" if mode == "cv" else "labelsTs_C0")
    gt = np.asarray(nib.load(str(labels_dir / f"{case}.nii.gz")).dataobj)
    k = int(np.argmax((gt > 0).sum(axis=(0, 1))))  # the slice with most heart
    cols = ["ground truth", *trainers]
    fig, axes = plt.subplots(len(SEQUENCES), len(cols), figsize=(3 * len(cols), 3 * len(SEQUENCES)))
    for i, s in enumerate(SEQUENCES):
        folder = myops.image_folder("train" if mode == "cv" else "test", s)
        img = np.asarray(nib.load(str(ds / folder / f"{case}_0000.nii.gz")).dataobj)[:, :, k].astype(float)
        lo, hi = np.percentile(img, (1, 99.5))
        for j, c in enumerate(cols):
            ax = axes[i, j]
            ax.imshow(img.T, cmap="gray", vmin=lo, vmax=hi, origin="lower")
            seg = gt if c == "ground truth" else np.asarray(
                nib.load(str(work / "predictions" / mode / c / s / f"{case}.nii.gz")).dataobj)
            for v, col in colours.items():
                m = (seg[:, :, k] == v).astype(float)
                if m.any():
                    ax.contour(m.T, levels=[0.5], colors=[col], linewidths=1.0, origin="lower")
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(c, fontsize=8)
            if j == 0:
                ax.set_ylabel(f"{s} ({myops.SEQUENCE_NAMES[s]})", fontsize=9)
    fig.suptitle(f"MyoPS {case}, slice {k} ({mode}): RV blue, myocardium yellow, LV red", fontsize=10)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)

