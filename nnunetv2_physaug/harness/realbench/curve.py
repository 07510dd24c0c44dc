"""The budget curve of the real-data benchmark: Dice against training epochs, per trainer and sequence.

Every ``bench_real`` run writes its report to ``<work>/report_<mode>_<B>epochs/results.json``; this module
reads all of them of one mode in a work folder and draws one panel per test sequence (C0, LGE, T2), one line
per trainer (its name without the length suffix: ``nnUNetTrainerPhysAug_5epochs`` and
``nnUNetTrainerPhysAug_50epochs`` are one line), the mean over the runs (``--repeats``) with their range
as an error bar, and tabulates the same numbers (``budget_curve.md``).
"""
from __future__ import annotations

import json
import re
from pathlib import Path

from ...fileio import atomic_write_bytes
from .steps import SEQUENCES

#: the length suffix of a trainer name (nnU-Net's ``_1epoch``, ``_5epochs``, ...), kept out of the line's name
LENGTH_SUFFIX = re.compile(r"_(\d+)epochs?(?=$| on )")


def report_folder(work: Path, mode: str, budget: int) -> Path:
    """The report folder of one run: ``<work>/report_<mode>_<budget>epochs``."""
    return Path(work) / f"report_{mode}_{budget}epochs"


def trainer_line(model: str) -> str:
    """The curve a model belongs to: its name without the length suffix (an oracle keeps ``on <SEQ>``)."""
    return LENGTH_SUFFIX.sub("", model)


def collect(work: Path, mode: str) -> dict[str, dict[int, dict[str, tuple[float, float, float]]]]:
    """``{line: {epochs: {sequence: (mean, min, max)}}}`` over every report of ``mode`` in ``work`` (min and max
    over the runs; equal to the mean for one run)."""
    out: dict[str, dict[int, dict[str, tuple[float, float, float]]]] = {}
    for f in sorted(Path(work).glob(f"report_{mode}_*epochs/results.json")):
        data = json.loads(f.read_text())
        epochs = int(data["settings"]["budget_epochs"])
        for r in data["rows"]:
            runs = r.get("per_repeat") or [r["mean_fg_dice"]]
            out.setdefault(trainer_line(r["model"]), {}).setdefault(epochs, {})[r["sequence"]] = (
                float(r["mean_fg_dice"]), float(min(runs)), float(max(runs)))
    return out


def markdown(curves: dict) -> str:
    """The curve as a table: one row per (trainer, epochs), mean (range) per sequence."""
    lines = ["| trainer | epochs | " + " | ".join(SEQUENCES) + " |", "|---|---|" + "---|" * len(SEQUENCES)]
    for line, by_epochs in curves.items():
        for epochs in sorted(by_epochs):
            cells = []
            for s in SEQUENCES:
                v = by_epochs[epochs].get(s)
                cells.append("" if v is None else f"{v[0]:.3f}" + (f" ({v[1]:.3f}-{v[2]:.3f})" if v[2] > v[1] else ""))
            lines.append(f"| `{line}` | {epochs} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def budget_figure(curves: dict, out: Path, title: str) -> None:
    """One panel per sequence: mean foreground Dice against epochs (log axis), a line per trainer, the
    runs' range as error bars."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(SEQUENCES), figsize=(5 * len(SEQUENCES), 4.2), sharey=True)
    for ax, s in zip(axes, SEQUENCES):
        for line, by_epochs in curves.items():
            pts = [(e, *by_epochs[e][s]) for e in sorted(by_epochs) if s in by_epochs[e]]
            if not pts:
                continue
            e, m, lo, hi = (list(v) for v in zip(*pts))
            ax.errorbar(e, m, yerr=[[a - b for a, b in zip(m, lo)], [b - a for a, b in zip(m, hi)]], marker="o",
                        capsize=3, label=line.replace("nnUNetTrainer", "") or "stock")
        ax.set_xscale("log")
        ax.set_xlabel("epochs (250 iterations each)")
        ax.set_title(s)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("mean foreground Dice (RV, MYO, LV)")
    axes[-1].legend(fontsize=7, loc="lower right")
    fig.suptitle(title)
    fig.tight_layout()
    atomic_write_bytes(out, lambda tmp: fig.savefig(tmp, dpi=100, format="png"), ".png")
    plt.close(fig)


def write_budget_curve(work: Path, mode: str) -> Path:
    """``<work>/budget_curve_<mode>.png`` and ``.md`` from every report of ``mode``; returns the PNG's path."""
    curves = collect(work, mode)
    png = Path(work) / f"budget_curve_{mode}.png"
    budget_figure(curves, png, f"MyoPS ({mode}), trained on bSSFP: Dice against training budget "
                               f"(mean of the runs, range as bars)")
    md = markdown(curves)
    atomic_write_bytes(png.with_suffix(".md"), lambda tmp: Path(tmp).write_text(md), ".md")
    return png
