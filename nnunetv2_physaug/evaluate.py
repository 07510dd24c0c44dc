"""Cross-domain evaluation: nnU-Net prediction + nnU-Net's own metrics, per model and test domain.

For each trained model folder (``$nnUNet_results/DatasetXXX/TRAINER__PLANS__CONF``) and each labeled
test set (``NAME=IMAGES_DIR:LABELS_DIR``), predicts with ``nnUNetPredictor`` and scores with
``compute_metrics_on_folder2``; writes ``results.md`` (Markdown table), ``results.csv``,
``results.json`` and ``dice.png`` (bar chart) into the output folder.
"""
from __future__ import annotations

import csv
import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

from .fileio import FolderBusyError, atomic_write_bytes, atomic_write_json, output_lock
from .nnunet import run_identity
from .nnunet.checkpoints import UnsafeCheckpointError, check_model_checkpoints, check_model_plans
from .nnunet.env import register_ext_trainers


class EvaluationError(ValueError):
    """Bad evaluation input (missing folder, label mismatch); the message says what to fix."""


@dataclass(frozen=True)
class Domain:
    """A labeled test set: images ``CASE_0000<ending>`` and labels ``CASE<ending>``."""

    name: str
    images: Path
    labels: Path

    @classmethod
    def parse(cls, spec: str) -> "Domain":
        """Parse ``NAME=IMAGES_DIR:LABELS_DIR``."""
        if "=" not in spec or ":" not in spec.split("=", 1)[1]:
            raise EvaluationError(f"test set {spec!r} must look like NAME=IMAGES_DIR:LABELS_DIR")
        name, dirs = spec.split("=", 1)
        if not DOMAIN_NAME.fullmatch(name):
            raise EvaluationError(f"test set name {name!r} in {spec!r} is not a plain name: use letters, digits, "
                                  f"'.', '_' and '-' (it names a folder of predictions under -o), e.g. lge=...")
        images, labels = dirs.rsplit(":", 1)
        return cls(name, Path(images), Path(labels))


#: a test set's name: a plain folder name (no separator, no ``..``, not hidden)
DOMAIN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def model_label(model_dir: Path) -> str:
    """Short name of a model folder: its trainer class name."""
    return model_dir.name.split("__")[0]


def model_labels(models: Sequence[Path]) -> list[str]:
    """The report's name of each model: its trainer, or its whole ``TRAINER__PLANS__CONFIGURATION`` folder name
    where two models share a trainer; two models with the same folder name are refused."""
    folders = [m.name for m in models]
    dup = sorted({f for f in folders if folders.count(f) > 1})
    if dup:
        raise EvaluationError(f"two models have the same folder name {dup[0]!r} (from different datasets?): their "
                              f"predictions and columns would mix; evaluate them into separate -o folders")
    trainers = [model_label(m) for m in models]
    return [t if trainers.count(t) == 1 else m.name for t, m in zip(trainers, models)]


def _overlaps(a: Path, b: Path) -> bool:
    a, b = a.resolve(), b.resolve()
    return a == b or a.is_relative_to(b) or b.is_relative_to(a)


def _check_inputs(models: Sequence[Path], domains: Sequence[Domain]) -> None:
    for m in models:
        if not (m / "dataset.json").is_file() or not (m / "plans.json").is_file():
            raise EvaluationError(f"{m} is not a trained nnU-Net model folder (no dataset.json/plans.json); train "
                                  "it first or pass the TRAINER__PLANS__CONFIGURATION folder")
        try:
            ds = json.loads((m / "dataset.json").read_text())
            labels, ending = ds["labels"], ds["file_ending"]
            if not isinstance(labels, dict) or not isinstance(ending, str):
                raise TypeError("labels must be a mapping and file_ending a string")
        except (ValueError, KeyError, TypeError, UnicodeDecodeError, RecursionError) as e:
            raise EvaluationError(f"{m / 'dataset.json'} is not a readable nnU-Net dataset.json ({type(e).__name__}: "
                                  f"{e}); copy the model folder again or retrain it") from None
    names = [d.name for d in domains]
    if len(set(names)) != len(names):
        raise EvaluationError(f"test set names must be unique, got {names}")
    for d in domains:
        for what, p in (("images", d.images), ("labels", d.labels)):
            if not p.is_dir():
                raise EvaluationError(f"test set {d.name!r}: {what} folder {p} does not exist")


def _check_output(out_dir: Path, models: Sequence[Path], domains: Sequence[Domain]) -> None:
    """The report and prediction folders never coincide with, contain or lie inside an input folder."""
    inputs = [("model folder", m) for m in models] + [(f"test set {d.name!r} {w}", p) for d in domains
                                                     for w, p in (("images", d.images), ("labels", d.labels))]
    for what, p in inputs:
        if _overlaps(out_dir, p):
            raise EvaluationError(f"-o {out_dir} overlaps the {what} {p}: evaluate into a folder of its own")


def _check_labels(domain: Domain, dataset_json: dict) -> None:
    import nibabel as nib
    import numpy as np

    allowed = {int(v) for v in dataset_json["labels"].values() if not isinstance(v, (list, tuple))}
    ending = dataset_json["file_ending"]
    files = sorted(domain.labels.glob(f"*{ending}"))
    if not files:
        raise EvaluationError(f"test set {domain.name!r}: no *{ending} label files in {domain.labels}")
    labelled = {f.name[: -len(ending)] for f in files}
    unlabelled = sorted(p.name for p in domain.images.glob(f"*_0000{ending}") if p.name[: -len(f"_0000{ending}")]
                        not in labelled)
    if unlabelled:
        raise EvaluationError(f"test set {domain.name!r}: image(s) {', '.join(unlabelled[:3])}"
                              f"{' ...' if len(unlabelled) > 3 else ''} in {domain.images} have no label in "
                              f"{domain.labels}; every test image needs its label (CASE_0000{ending} -> CASE{ending})")
    for f in files:
        values = set(np.unique(np.asarray(nib.load(str(f)).dataobj)).astype(int).tolist())
        extra = values - allowed
        if extra:
            raise EvaluationError(f"test set {domain.name!r}: label file {f} has values {sorted(extra)} that the "
                                  f"model's dataset.json does not define ({sorted(allowed)}); convert the labels "
                                  "to the training convention (e.g. ACDC: 1 RV, 2 MYO, 3 LV)")
        case = f.name[: -len(ending)]
        image = domain.images / f"{case}_0000{ending}"
        if not image.is_file():
            raise EvaluationError(f"test set {domain.name!r}: label {f} has no image {image}")
        label_shape, image_shape = nib.load(str(f)).shape[:3], nib.load(str(image)).shape[:3]
        if label_shape != image_shape:
            raise EvaluationError(f"test set {domain.name!r}: label {f} has shape {label_shape} but its image {image} "
                                  f"has {image_shape}; labels must be on their image's grid")


def predict_folder(model_dir: Path, images: Path, out: Path, folds: Sequence, device: str, tta: bool,
                   checkpoint: str = "checkpoint_final.pth") -> None:
    """Predict every image of ``images`` into ``out`` with nnU-Net's predictor (in this process)."""
    import torch
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    predictor = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=tta,
                                perform_everything_on_device=device != "cpu", device=torch.device(device),
                                verbose=False, verbose_preprocessing=False, allow_tqdm=False)
    predictor.initialize_from_trained_model_folder(str(model_dir), use_folds=tuple(folds), checkpoint_name=checkpoint)
    n_proc = _n_proc()
    if device == "cpu" and n_proc == 1:
        # one worker on the CPU overlaps nothing with the network (they share the cores), and nnU-Net's
        # predict_from_files spawns two fresh interpreters per call (preprocessing, export: seconds of imports
        # for a few small cases); its sequential path gives the same files in this process
        out.mkdir(parents=True, exist_ok=True)
        predictor.predict_from_files_sequential(str(images), str(out), save_probabilities=False, overwrite=True)
    else:
        predictor.predict_from_files(str(images), str(out), save_probabilities=False, overwrite=True,
                                     num_processes_preprocessing=n_proc, num_processes_segmentation_export=n_proc)


def _n_proc() -> int:
    return max(1, int(os.environ.get("nnUNet_def_n_proc", "1")))


def _metrics_in_process(labels: Path, predictions: Path, dataset_json: dict, plans_file: Path) -> None:
    """What nnU-Net's ``compute_metrics_on_folder2`` computes and writes to ``predictions/summary.json`` (its
    per-case ``compute_metrics``, the per-label nan-mean over cases, the foreground mean of those), in this
    process: nnU-Net maps the cases over a spawned process pool even for one process, which costs seconds
    of imports per folder."""
    # Copied from nnU-Net 2.8.1: compute_metrics_on_folder2 (its body without the process pool)
    import numpy as np
    from nnunetv2.evaluation.evaluate_predictions import compute_metrics, save_summary_json
    from nnunetv2.imageio.reader_writer_registry import determine_reader_writer_from_dataset_json
    from nnunetv2.utilities.json_export import recursive_fix_for_json_export
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    ending = dataset_json["file_ending"]
    preds = sorted(f for f in os.listdir(predictions) if f.endswith(ending))
    rw = determine_reader_writer_from_dataset_json(dataset_json, str(labels / preds[0]))()
    lm = PlansManager(str(plans_file)).get_label_manager(dataset_json)
    regions = lm.foreground_regions if lm.has_regions else lm.foreground_labels
    results = [compute_metrics(str(labels / f), str(predictions / f), rw, regions, lm.ignore_label) for f in preds]
    names = list(results[0]["metrics"][regions[0]].keys())
    means = {r: {m: np.nanmean([c["metrics"][r][m] for c in results]) for m in names} for r in regions}
    foreground = {m: np.mean([means[r][m] for r in regions]) for m in names}  # regions: foreground only
    for x in (*results, means, foreground):
        recursive_fix_for_json_export(x)
    save_summary_json({"metric_per_case": results, "mean": means, "foreground_mean": foreground},
                      str(predictions / "summary.json"))


def score_folder(labels: Path, predictions: Path, model_dir: Path) -> dict:
    """nnU-Net's metrics of ``predictions`` against ``labels``: per-label Dice and foreground mean."""
    from nnunetv2.evaluation.evaluate_predictions import compute_metrics_on_folder2, load_summary_json

    n_proc = _n_proc()
    if n_proc == 1:
        _metrics_in_process(labels, predictions, json.loads((model_dir / "dataset.json").read_text()),
                            model_dir / "plans.json")
    else:
        compute_metrics_on_folder2(str(labels), str(predictions), str(model_dir / "dataset.json"),
                                   str(model_dir / "plans.json"), str(predictions / "summary.json"),
                                   num_processes=n_proc, chill=True)
    summary = load_summary_json(str(predictions / "summary.json"))  # read back as nnU-Net reads it
    per_label = {str(k): float(v["Dice"]) for k, v in summary["mean"].items()}
    return {"dice_per_label": per_label, "mean_fg_dice": float(summary["foreground_mean"]["Dice"]),
            "n_cases": len(summary["metric_per_case"])}


def evaluate(models: Sequence[os.PathLike | str], domains: Sequence[Domain], out_dir: os.PathLike | str,
             folds: Sequence = (0,), device: str = "cpu", tta: bool = False, overwrite: bool = False,
             checkpoint: str = "checkpoint_final.pth", progress: bool = True) -> list[dict]:
    """Predict and score every (model, domain) pair; write the report files; return the rows."""
    register_ext_trainers(experiments=True)  # the predictor re-imports the trainer class named in the checkpoint
    models = [Path(m) for m in models]
    out_dir = Path(out_dir)
    _check_inputs(models, domains)
    _check_output(out_dir, models, domains)
    labels = model_labels(models)
    if (out_dir / "results.json").exists() and not overwrite:
        raise FileExistsError(f"{out_dir / 'results.json'} exists; pass --overwrite to evaluate again")
    for m in models:  # before anything is written: the architecture is trusted, every checkpoint loads safely
        try:
            check_model_plans(m)
            check_model_checkpoints(m, folds, checkpoint)
        except UnsafeCheckpointError as e:
            raise EvaluationError(str(e)) from None
    try:
        with output_lock(out_dir, "physaug-evaluate"):
            return _evaluate_locked(models, labels, domains, out_dir, folds, device, tta, checkpoint, progress)
    except FolderBusyError as e:  # raised only when the lock is asked for, before anything is written
        raise EvaluationError(str(e)) from None


def _evaluate_locked(models, labels, domains, out_dir, folds, device, tta, checkpoint, progress) -> list[dict]:
    from tqdm import tqdm

    checked = set()
    for m in models:
        ds = json.loads((m / "dataset.json").read_text())
        key = (json.dumps(ds["labels"], sort_keys=True), ds["file_ending"])
        if key in checked:  # models of one dataset share labels: read each label file once
            continue
        checked.add(key)
        for d in domains:
            _check_labels(d, ds)
    # the commit point of a report is its results.json, written last: the old one goes first, so a run
    # stopped half-way leaves no results.json beside new tables (and a plain rerun goes ahead)
    (out_dir / "results.json").unlink(missing_ok=True)
    rows = []
    pairs = [(m, label, d) for m, label in zip(models, labels) for d in domains]
    for m, label, d in tqdm(pairs, desc="evaluating", unit="model x domain", disable=not progress):
        pred = out_dir / "predictions" / label / d.name
        if pred.exists():  # an earlier evaluation's (--overwrite): no prediction of a case since dropped is scored
            shutil.rmtree(pred)
        predict_folder(m, d.images, pred, folds, device, tta, checkpoint)
        scores = score_folder(d.labels, pred, m)
        rows.append({"model": label, "domain": d.name, **scores, "physaug_run": run_identity.read(m)})
    write_report(rows, out_dir, label_names=json.loads((models[0] / "dataset.json").read_text())["labels"])
    return rows


def write_report(rows: list[dict], out_dir: Path, label_names: dict) -> None:
    """results.json, results.csv, results.md and dice.png for the rows of :func:`evaluate`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    names = {str(v): k for k, v in label_names.items() if str(v) != "0"}

    def write_csv(tmp):
        with open(tmp, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["model", "domain", "n_cases", "mean_fg_dice", *[f"dice_{n}" for n in names.values()]])
            for r in rows:
                w.writerow([r["model"], r["domain"], r["n_cases"], f"{r['mean_fg_dice']:.4f}",
                            *[f"{r['dice_per_label'].get(k, float('nan')):.4f}" for k in names]])
    atomic_write_bytes(out_dir / "results.csv", write_csv, ".csv")
    md = markdown_table(rows)
    runs = run_lines(rows)
    if runs:
        md += "\nTrained on:\n\n" + "\n".join(runs) + "\n"
    atomic_write_bytes(out_dir / "results.md", lambda tmp: Path(tmp).write_text(md), ".md")
    atomic_write_bytes(out_dir / "dice.png", lambda tmp: _bar_chart(rows, tmp), ".png")
    atomic_write_json(out_dir / "results.json", rows)  # last: the report's commit point


def run_lines(rows: list[dict]) -> list[str]:
    """One line per PhysAug model: what it was trained on (its fold folder's physaug_run.json)."""
    out = []
    for model in dict.fromkeys(r["model"] for r in rows):
        run = next((r.get("physaug_run") for r in rows if r["model"] == model and r.get("physaug_run")), None)
        if run:
            out.append(f"- {model}: protocol {run.get('protocol')} (sha256 {run.get('protocol_sha256')}), "
                       f"p_render {run.get('p_render')}, maps {run.get('maps_dir')} (identity "
                       f"{run.get('maps_identity')}), nnunetv2-physaug {run.get('package_version')}")
    return out


def markdown_table(rows: list[dict]) -> str:
    """Mean foreground Dice: one row per domain, one column per model."""
    models = list(dict.fromkeys(r["model"] for r in rows))
    domains = list(dict.fromkeys(r["domain"] for r in rows))
    value = {(r["model"], r["domain"]): r["mean_fg_dice"] for r in rows}
    lines = ["| domain | " + " | ".join(models) + " |", "|---|" + "---|" * len(models)]
    for d in domains:
        lines.append(f"| {d} | " + " | ".join(f"{value.get((m, d), float('nan')):.3f}" for m in models) + " |")
    return "\n".join(lines) + "\n"


def _bar_chart(rows: list[dict], path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    models = list(dict.fromkeys(r["model"] for r in rows))
    domains = list(dict.fromkeys(r["domain"] for r in rows))
    value = {(r["model"], r["domain"]): r["mean_fg_dice"] for r in rows}
    x = np.arange(len(domains))
    width = 0.8 / max(1, len(models))
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(domains) + 2), 4))
    for i, m in enumerate(models):
        ax.bar(x + (i - (len(models) - 1) / 2) * width, [value.get((m, d), np.nan) for d in domains], width, label=m)
    ax.set_xticks(x, domains, rotation=30, ha="right")
    ax.set_ylim(0, 1)
    ax.set_ylabel("mean foreground Dice")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=120)
    plt.close(fig)


def resolve_model_dirs(dataset: Optional[str], configuration: str, trainers: Sequence[str],
                       plans: str = "nnUNetPlans") -> list[Path]:
    """Model folders of ``trainers`` for a dataset in ``$nnUNet_results``."""
    from nnunetv2.utilities.file_path_utilities import get_output_folder

    return [Path(get_output_folder(dataset, t, plans, configuration)) for t in trainers]
