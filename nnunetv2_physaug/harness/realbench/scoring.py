"""Scoring of the real-data benchmark: nnU-Net's metrics per (model, sequence), which label a model gives the
expert's scar/edema and structures, repeats pooled, earlier rows reused (``--baseline-from``), and the
training cost read from nnU-Net's own logs."""
from __future__ import annotations

import json
import re
import shutil
from importlib.metadata import version
from pathlib import Path
from typing import Sequence

import numpy as np

from ...conversion import myops
from ...fileio import atomic_write_json
from ...nnunet.env import register_ext_trainers
from .steps import (PRED_NAMES, PREDICT_SETTINGS, SEQUENCES, STRUCTURES, BenchmarkError, Run, linked_test_folder,
                    patients_under_test, predict_all, sequence_sources)

def _label_breakdown(pred_dir: Path, ref_dir: Path, cases: Sequence[str], regions: dict[int, str]) -> dict:
    """For each region (value in the reference volumes -> name): its voxel count and the fraction of it
    predicted as each label, pooled over ``cases``."""
    import nibabel as nib

    counts = {name: np.zeros(4, dtype=np.int64) for name in regions.values()}
    for case in cases:
        pred = np.asarray(nib.load(str(pred_dir / f"{case}.nii.gz")).dataobj).astype(np.int64)
        ref = np.asarray(nib.load(str(ref_dir / f"{case}.nii.gz")).dataobj).astype(np.int64)
        if pred.shape != ref.shape:
            raise BenchmarkError(f"{pred_dir / (case + '.nii.gz')}: shape {pred.shape} differs from "
                                 f"{ref_dir / (case + '.nii.gz')} {ref.shape}")
        for value, name in regions.items():
            counts[name] += np.bincount(pred[ref == value], minlength=4)[:4]
    out = {}
    for name, c in counts.items():
        total = int(c.sum())
        out[name] = {"voxels": total, **{f"as_{PRED_NAMES[k]}": (float(c[k]) / total if total else float("nan"))
                                          for k in range(4)}}
    return out


def pathology_breakdown(pred_dir: Path, pathology_dir: Path, cases: Sequence[str]) -> dict:
    """For edema and scar: voxel counts and the fraction predicted as each label, pooled over ``cases``."""
    return _label_breakdown(pred_dir, pathology_dir, cases, {1: "edema", 2: "scar"})


def structure_confusion(pred_dir: Path, label_dir: Path, cases: Sequence[str]) -> dict:
    """For each expert structure (RV, MYO, LV): voxel count and the fraction predicted as each label, pooled
    over ``cases``; says where the Dice is lost (e.g. myocardium called LV: the endocardial border)."""
    return _label_breakdown(pred_dir, label_dir, cases, {int(k): v for k, v in STRUCTURES.items()})


#: what made a model's pooled predictions (written after the last of them is in place)
PREDICTION_RECORD = "predicted_by.json"


def _file_identity(path: Path) -> dict:
    st = Path(path).stat()
    return {"path": str(path), "bytes": st.st_size, "mtime_ns": st.st_mtime_ns}


def prediction_key(r: Run, folds: Sequence[str], fold_cases: dict[str, list[str]], ds: Path, mode: str,
                   device: str) -> dict:
    """What a model's predictions of the test patients depend on: each fold's checkpoint (path, size and
    modification time: nnU-Net writes a new file whenever it trains), the test images of each fold (the
    same), the device, the predictor's settings and nnU-Net's version. Predictions made under an equal key
    are the ones a new ``nnUNetv2_predict`` would make."""
    from nnunetv2.utilities.file_path_utilities import get_output_folder

    key: dict = {"trainer": r.trainer, "plans": r.plans, "dataset_id": r.dataset_id, "device": device,
                 "predictor": list(PREDICT_SETTINGS), "nnunetv2": version("nnunetv2"), "folds": {}}
    for fold in folds:
        checkpoint = Path(get_output_folder(r.dataset_id, r.trainer, r.plans, "2d", fold)) / "checkpoint_final.pth"
        key["folds"][fold] = {
            "checkpoint": _file_identity(checkpoint),
            "images": [_file_identity(sequence_sources(ds, mode, case, s)[0])
                       for case in fold_cases[fold] for s in SEQUENCES]}
    return key


def predictions_kept(folder: Path, key: dict, cases: Sequence[str]) -> bool:
    """Whether ``folder`` holds the predictions of every case in ``cases`` on every sequence, made under
    ``key`` (its record equal to it)."""
    try:
        if json.loads((folder / PREDICTION_RECORD).read_text()) != key:
            return False
    except (OSError, ValueError):
        return False
    return all((folder / s / f"{case}.nii.gz").is_file() for case in cases for s in SEQUENCES)


def evaluate_all(ds: Path, mode: str, runs: Sequence[Run], folds: Sequence[str],
                 splits: list[dict], device: str, work: Path, env: dict, logs: Path, jobs: int = 1) -> list[dict]:
    """Predict each model's test patients (all three sequences in one ``nnUNetv2_predict`` per model and
    fold), pool them per (run, sequence), score with nnU-Net's metrics and the pathology breakdown.
    Rows carry ``model`` (the trainer), ``run`` (its name) and ``repeat``."""
    from nnunetv2.utilities.file_path_utilities import get_output_folder
    from ...evaluate import score_folder

    register_ext_trainers(experiments=True)
    pathology_dir = ds / ("labelsPathologyTr" if mode == "cv" else "labelsPathologyTs")
    root = work / "predictions" / mode
    for d in [root / "_labels" / s for s in SEQUENCES]:
        if d.exists():
            shutil.rmtree(d)
        d.mkdir(parents=True)
    fold_cases = {}
    for fold in folds:  # the test patients' links and labels are shared by every model
        cases = fold_cases[fold] = patients_under_test(ds, mode, int(fold) if mode == "cv" else None, splits)
        linked_test_folder(ds, mode, cases, root / "_inputs" / f"fold_{fold}")
        for case in cases:
            for s in SEQUENCES:
                shutil.copyfile(sequence_sources(ds, mode, case, s)[1], root / "_labels" / s / f"{case}.nii.gz")
    keys = {r.name: prediction_key(r, folds, fold_cases, ds, mode, device) for r in runs}
    all_cases = [case for fold in folds for case in fold_cases[fold]]
    to_predict = [r for r in runs if not predictions_kept(root / r.name, keys[r.name], all_cases)]
    for r in runs:
        if r not in to_predict:
            print(f"[bench_real] predict {r.name}: made earlier by the same checkpoints on the same images, kept",
                  flush=True)
    for r in to_predict:
        if (root / r.name).exists():
            shutil.rmtree(root / r.name)
        for s in SEQUENCES:
            (root / r.name / s).mkdir(parents=True)
    print(f"[bench_real] predict {len(to_predict)} model(s) x {len(folds)} fold(s), {jobs} at a time", flush=True)
    predict_all(folds, to_predict, device, env, logs, root / "_inputs", root / "_by_fold", jobs)
    for r in to_predict:
        for fold in folds:
            for case in fold_cases[fold]:
                for s in SEQUENCES:
                    shutil.move(str(root / "_by_fold" / r.name / f"fold_{fold}" / f"{case}__{s}.nii.gz"),
                                root / r.name / s / f"{case}.nii.gz")
        shutil.rmtree(root / "_by_fold" / r.name)
        atomic_write_json(root / r.name / PREDICTION_RECORD, keys[r.name])  # last: the folder is complete
    rows = []
    for r in runs:
        model = Path(get_output_folder(r.dataset_id, r.trainer, r.plans, "2d"))
        for s in SEQUENCES:
            pooled = root / r.name / s
            scores = score_folder(root / "_labels" / s, pooled, model)
            cases = sorted(f.name[:-7] for f in pooled.glob("*.nii.gz"))
            rows.append({"model": r.model, "run": r.name, "repeat": r.repeat, "trained_on": r.trained_on,
                         "sequence": s, **scores,
                         "pathology": pathology_breakdown(pooled, pathology_dir, cases),
                         "confusion": structure_confusion(pooled, root / "_labels" / s, cases)})
            print(f"[bench_real] {r.name} on {s}: mean foreground Dice {scores['mean_fg_dice']:.3f} "
                  f"({scores['n_cases']} patients)", flush=True)
    return rows


def earlier_rows(results_json: Path, trainer: str, settings: dict) -> list[dict]:
    """``trainer``'s rows of an earlier report (``--baseline-from``), refused unless that run had the same
    mode, budget, width, plans, crop, spacing and folds (its patients are then this run's)."""
    try:
        earlier = json.loads(Path(results_json).read_text())
        old, rows = earlier["settings"], [r for r in earlier["rows"] if r["model"] == trainer]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise BenchmarkError(f"--baseline-from {results_json}: not a bench_real results.json ({e})") from None
    keys = ("mode", "budget_epochs", "width", "plans", "crop_mm", "spacing_mm", "folds")
    differ = [f"{k} {old.get(k)!r} (now {settings[k]!r})" for k in keys if old.get(k) != settings[k]]
    if differ:
        raise BenchmarkError(f"--baseline-from {results_json}: that run had other settings: {', '.join(differ)}; "
                             f"rerun the baseline instead")
    if sorted(r["sequence"] for r in rows) != sorted(SEQUENCES):
        raise BenchmarkError(f"--baseline-from {results_json}: no rows of {trainer} for {', '.join(SEQUENCES)}")
    return [{**r, "from": str(results_json)} for r in rows]


def _mean_breakdown(breakdowns: list[dict]) -> dict:
    """The mean of the fractions of several breakdowns of the same regions (voxel counts: the first's)."""
    first = breakdowns[0]
    return {g: {k: (int(v) if k == "voxels" else float(np.mean([b[g][k] for b in breakdowns])))
                for k, v in first[g].items()} for g in first}


def pool_repeats(rows: list[dict]) -> list[dict]:
    """One row per (model, sequence): the mean over the model's repeats of every score (Dice, per-label
    Dice, pathology fractions), with ``per_repeat`` (each repeat's mean foreground Dice). A model trained
    once keeps its row as it is (plus ``per_repeat`` of one)."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["model"], r["sequence"]), []).append(r)
    out = []
    for (model, seq), rs in groups.items():
        rs = sorted(rs, key=lambda r: r.get("repeat", 0))
        if len(rs) == 1:
            out.append({**rs[0], "per_repeat": [rs[0]["mean_fg_dice"]]})
            continue
        labels = rs[0]["dice_per_label"]
        pooled = {"model": model, "sequence": seq, "trained_on": rs[0].get("trained_on", myops.TRAINING_SEQUENCE),
                  "n_cases": rs[0]["n_cases"], "repeats": len(rs),
                  "mean_fg_dice": float(np.mean([r["mean_fg_dice"] for r in rs])),
                  "dice_per_label": {k: float(np.mean([r["dice_per_label"][k] for r in rs])) for k in labels},
                  "pathology": _mean_breakdown([r["pathology"] for r in rs]),
                  "per_repeat": [r["mean_fg_dice"] for r in rs]}
        if all("confusion" in r for r in rs):
            pooled["confusion"] = _mean_breakdown([r["confusion"] for r in rs])
        out.append(pooled)
    return out



#: nnU-Net's line at the end of every training epoch (its training_log_*.txt)
EPOCH_TIME = re.compile(r"Epoch time: ([0-9.]+) s")


def seconds_per_epoch(runs: Sequence[Run], folds: Sequence[str]) -> dict[str, float]:
    """``{trainer: median seconds per training epoch}`` over the epochs of all its models (repeats, folds), as
    nnU-Net logged them (training iterations, the loader's waits and validation): what a method costs in
    time beside the baseline on the same machine. The median, not the mean: an epoch that shared the machine
    with another job takes about twice as long, and a few of them would move a mean by more than the
    differences between trainers. Trainers without logs are left out."""
    from nnunetv2.utilities.file_path_utilities import get_output_folder

    times: dict[str, list[float]] = {}
    for r in runs:
        for fold in folds:
            out = Path(get_output_folder(r.dataset_id, r.trainer, r.plans, "2d", fold))
            for log in sorted(out.glob("training_log_*.txt")):
                times.setdefault(r.model, []).extend(float(m) for m in EPOCH_TIME.findall(log.read_text()))
    return {model: float(np.median(t)) for model, t in times.items() if t}
