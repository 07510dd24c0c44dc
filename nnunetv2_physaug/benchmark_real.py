"""Real cross-sequence benchmark on MyoPS 2020: trained on real bSSFP, tested on real C0, LGE and T2.

Steps (stock nnU-Net commands and ours, as a user would run them):

1. ``Dataset913_MyoPS.py`` converter (``--crop``/``--spacing``; reused when it exists with the same settings);
2. ``physaug-reverse --method label [--samples K]`` on the bSSFP training images (``--map-samples K``);
3. ``nnUNetv2_plan_and_preprocess -c 2d`` and ``physaug-narrow-plans --width``;
4. ``nnUNetv2_train`` with the stock ``nnUNetTrainer_<B>epochs`` and ``nnUNetTrainerPhysAug_<B>epochs``
   (plus any ``--variants``), same plans, same split, same budget;
5. ``nnUNetv2_predict`` (no test-time mirroring; ``--jobs`` models at a time) and scoring with nnU-Net's
   metrics (the code of ``physaug-evaluate``), plus the pathology breakdown (which label the network gives
   scar and edema pixels), the structure confusion (which label it gives each expert structure: where the
   Dice is lost) and the share of the baseline's C0 -> LGE / C0 -> T2 drop each model recovers.

``--baseline-from`` reuses the baseline's scores of an earlier report with the same settings (ablations:
only the PhysAug variants are trained).

``--oracle`` adds the reference a cross-sequence result is read against: the stock baseline trainer trained on
the *real* LGE (and T2) images of the same training patients (same labels, split, plans and budget), a
separate nnU-Net dataset per sequence (``Dataset<id+1>_MyoPSLGE``, ``Dataset<id+2>_MyoPST2`` in the work
folder, made with nnU-Net's own commands: fingerprint with the integrity check, the bSSFP dataset's plans
moved over, preprocessing). It says how much of the C0 -> LGE / C0 -> T2 drop a model trained on the
sequence itself keeps at this budget, and the report gives the share of the drop to that reference that each
model recovers.

Modes: ``cv`` trains the 5 folds of the patient-level split inside the training patients and tests each
fold's model on the C0/LGE/T2 of its own 5 validation patients (never seen in training, in any
sequence); scores pool all validation patients. ``final`` trains on all training patients
(nnU-Net fold ``all``) and tests the held-out test patients, once, with settings fixed beforehand.

Last line: ``real_c0_physaug= real_c0_baseline= real_lge_physaug= real_lge_baseline= real_t2_physaug=
real_t2_baseline= seconds=`` (mean foreground Dice over the pooled test patients).
"""
from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import NamedTuple, Optional, Sequence

import numpy as np

from .conversion import myops
from .conversion.common import dataset_name
from .fileio import atomic_write_bytes, atomic_write_json
from .nnunet.env import register_ext_trainers
from .pipeline import StepError, pipeline_env, run_step as _run_step
from .nnunet.plans import default_narrow_name

SEQUENCES = myops.SEQUENCES
STRUCTURES = {"1": "RV", "2": "MYO", "3": "LV"}
#: predicted label names for the pathology breakdown
PRED_NAMES = {0: "background", 1: "RV", 2: "myocardium", 3: "LV"}


class Run(NamedTuple):
    """One trained model family: ``trainer`` under ``plans`` on nnU-Net dataset ``dataset_id``; ``name``
    labels its predictions and rows (the trainer's name, plus ``_r<k>`` for the k-th repeat).
    ``trained_on``: the sequence of its training images (C0 unless it is an ``--oracle`` reference, whose
    dataset holds the real images of that sequence)."""
    name: str
    trainer: str
    plans: str
    dataset_id: int
    repeat: int = 0
    trained_on: str = myops.TRAINING_SEQUENCE

    @property
    def model(self) -> str:
        """The row label of the model: the trainer, or ``<trainer> on <SEQ>`` for an oracle."""
        return self.trainer if self.trained_on == myops.TRAINING_SEQUENCE else f"{self.trainer} on {self.trained_on}"


def repeat_plans(preprocessed_dataset: Path, plans: str, repeat: int) -> str:
    """Plans identifier of repeat ``repeat`` (0: ``plans`` itself): a copy of the plans under another name,
    so that nnU-Net trains an independent model into its own results folder on the same preprocessed
    data (the data identifier is unchanged)."""
    if repeat == 0:
        return plans
    name = f"{plans}_r{repeat}"
    d = json.loads((preprocessed_dataset / f"{plans}.json").read_text())
    d["plans_name"] = name
    target = preprocessed_dataset / f"{name}.json"
    if not target.is_file() or json.loads(target.read_text()) != d:
        atomic_write_json(target, d)
    return name


class BenchmarkError(StepError):
    """The inputs do not fit (a dataset with other settings, missing test images); the message says what."""


def run_step(step: str, cmd: list[str], env: dict, log_dir: Path) -> str:
    return _run_step("bench_real", step, cmd, env, log_dir)


def _dataset_settings_match(ds: Path, crop: Optional[float], spacing: Optional[float]) -> bool:
    meta = json.loads((ds / "dataset.json").read_text()).get("physaug_metadata", {})
    return meta.get("crop_mm") == crop and meta.get("spacing_mm") == spacing


def prepare(myops_dir: Path, env: dict, logs: Path, dataset_id: int, crop: Optional[float],
            spacing: Optional[float], width: float, train_cases: Sequence[int] = myops.DEFAULT_TRAIN_CASES,
            test_cases: Sequence[int] = myops.DEFAULT_TEST_CASES, map_samples: int = 1) -> tuple[Path, str]:
    """Steps 1-3; returns (raw dataset folder, plans identifier). Reuses what is already there.
    ``map_samples``: tissue maps per case (``physaug-reverse --samples``; the trainer draws one per load)."""
    raw = Path(env["nnUNet_raw"])
    ds = raw / dataset_name(dataset_id, myops.NAME)
    if ds.is_dir() and not _dataset_settings_match(ds, crop, spacing):
        raise BenchmarkError(f"{ds} exists with other --crop/--spacing settings; remove it (and its preprocessed "
                             f"and results folders) or use another --work folder")
    if not ds.is_dir():
        print(f"[bench_real] convert: {myops_dir} -> {ds} (crop {crop} mm, spacing {spacing} mm)", flush=True)
        try:
            myops.convert_myops(myops_dir, dataset_id, train_cases=train_cases, test_cases=test_cases, crop_mm=crop,
                                spacing_mm=spacing, progress=False)
        except myops.ConversionError as e:
            raise BenchmarkError(f"step 'convert' failed: {e}") from e
    run_step("reverse imaging", ["physaug-reverse", "-i", str(ds / "imagesTr"), "-o", str(ds / "tissueMapsTr"),
                                 "--method", "label", "--samples", str(map_samples)], env, logs)
    pre = Path(env["nnUNet_preprocessed"]) / ds.name
    if not (pre / "nnUNetPlans.json").is_file() or not (pre / "nnUNetPlans_2d").is_dir():
        run_step("plan and preprocess", ["nnUNetv2_plan_and_preprocess", "-d", str(dataset_id), "-c", "2d", "-np", "1",
                                         "-npfp", "1", "--verify_dataset_integrity"],
                 {**env, "nnUNet_n_proc_DA": "1"}, logs)
    plans = "nnUNetPlans"
    if width != 1.0:
        plans = default_narrow_name("nnUNetPlans", width)
        run_step("narrow plans", ["physaug-narrow-plans", "-d", str(dataset_id), "--width", str(width), "-o", plans,
                                  "--overwrite"], env, logs)
    return ds, plans


def oracle_dataset_id(dataset_id: int, sequence: str) -> int:
    """nnU-Net ID of the ``--oracle`` dataset of ``sequence`` (LGE: ``dataset_id + 1``, T2: ``+ 2``)."""
    return dataset_id + SEQUENCES.index(sequence)


def oracle_dataset_name(dataset_id: int, sequence: str) -> str:
    """Folder name of the ``--oracle`` dataset of ``sequence`` (e.g. ``Dataset914_MyoPSLGE``)."""
    return dataset_name(oracle_dataset_id(dataset_id, sequence), f"{myops.NAME}{sequence}")


def prepare_oracle(ds: Path, sequence: str, dataset_id: int, plans: str, env: dict, logs: Path) -> int:
    """The ``--oracle`` dataset of ``sequence``: the training patients' real ``sequence`` images with their
    labels (links into the converted dataset ``ds``), its fingerprint (with nnU-Net's integrity check), the
    bSSFP dataset's ``plans`` moved over (same network, patch and spacing) and its preprocessed data, and
    the bSSFP dataset's ``splits_final.json`` (same folds). Reused when its plans and split are already
    there. Returns its nnU-Net ID."""
    oid = oracle_dataset_id(dataset_id, sequence)
    name = oracle_dataset_name(dataset_id, sequence)
    raw = Path(env["nnUNet_raw"]) / name
    pre_source = Path(env["nnUNet_preprocessed"]) / ds.name
    pre = Path(env["nnUNet_preprocessed"]) / name
    splits = pre_source / "splits_final.json"
    meta = {"oracle_of": ds.name, "sequence": sequence, "images": myops.image_folder("train", sequence)}
    done = (pre / f"{plans}.json").is_file() and (pre / "splits_final.json").is_file() and (raw / "dataset.json").is_file()
    if done and json.loads((raw / "dataset.json").read_text()).get("physaug_metadata") == meta \
            and (pre / "splits_final.json").read_text() == splits.read_text():
        return oid
    source = json.loads((ds / "dataset.json").read_text())
    images = ds / meta["images"]
    cases = sorted(f.name[:-len(".nii.gz")] for f in (ds / "labelsTr").glob("*.nii.gz"))
    missing = [c for c in cases if not (images / f"{c}_0000.nii.gz").is_file()]
    if not cases or missing:
        raise BenchmarkError(f"--oracle {sequence}: {images} lacks the images of {', '.join(missing) or 'every patient'}; "
                             f"convert the dataset again")
    for d in (raw, pre):
        if d.exists():
            shutil.rmtree(d)
    for sub in ("imagesTr", "labelsTr"):
        (raw / sub).mkdir(parents=True)
    for c in cases:
        os.symlink(images / f"{c}_0000.nii.gz", raw / "imagesTr" / f"{c}_0000.nii.gz")
        os.symlink(ds / "labelsTr" / f"{c}.nii.gz", raw / "labelsTr" / f"{c}.nii.gz")
    atomic_write_json(raw / "dataset.json", {
        "channel_names": {"0": sequence}, "labels": source["labels"], "numTraining": len(cases),
        "file_ending": source["file_ending"], "name": name, "physaug_metadata": meta})
    np_env = {**env, "nnUNet_n_proc_DA": "1"}
    run_step(f"oracle {sequence}: fingerprint", ["nnUNetv2_extract_fingerprint", "-d", str(oid), "-np", "1",
                                                 "--verify_dataset_integrity"], np_env, logs)
    run_step(f"oracle {sequence}: plans", ["nnUNetv2_move_plans_between_datasets", "-s", str(dataset_id), "-t",
                                           str(oid), "-sp", plans, "-tp", plans], np_env, logs)
    # nnU-Net's planner copies dataset.json there; moved plans skip the planner and the preprocessor reads it
    shutil.copyfile(raw / "dataset.json", pre / "dataset.json")
    run_step(f"oracle {sequence}: preprocess", ["nnUNetv2_preprocess", "-d", str(oid), "-plans_name", plans,
                                                "-c", "2d", "-np", "1"], np_env, logs)
    shutil.copyfile(splits, pre / "splits_final.json")
    return oid


def _in_parallel(fn, items, jobs: int) -> None:
    if jobs <= 1:
        for item in items:
            fn(item)
    else:
        with cf.ThreadPoolExecutor(jobs) as pool:
            for f in [pool.submit(fn, item) for item in items]:
                f.result()


def train_all(folds: Sequence[str], runs: Sequence[Run], device: str, env: dict,
              logs: Path, jobs: int = 1) -> None:
    """Train every (fold, run); a finished one (checkpoint_final.pth) is kept, so a run can resume."""
    from nnunetv2.utilities.file_path_utilities import get_output_folder

    todo = []
    for fold in folds:
        for r in runs:
            out = Path(get_output_folder(r.dataset_id, r.trainer, r.plans, "2d", fold))
            if (out / "checkpoint_final.pth").is_file():
                print(f"[bench_real] train {r.name} fold {fold}: finished earlier, kept", flush=True)
                continue
            todo.append((r, fold))

    def one(item):
        r, fold = item
        return run_step(f"train {r.name} fold {fold}", ["nnUNetv2_train", str(r.dataset_id), "2d", fold, "-tr",
                                                         r.trainer, "-p", r.plans, "-device", device], env, logs)
    _in_parallel(one, todo, jobs)


# ----------------------------------------------------------------------------- test sets

def patients_under_test(ds: Path, mode: str, fold: Optional[int], splits: list[dict]) -> list[str]:
    """The test patients of one model: a fold's validation patients (``cv``) or the held-out ones (``final``)."""
    if mode == "cv":
        return list(splits[fold]["val"])
    meta = json.loads((ds / "dataset.json").read_text())["physaug_metadata"]
    if not meta.get("test_cases"):
        raise BenchmarkError(f"{ds} has no test patients: convert with --test-cases for --final")
    return list(meta["test_cases"])


def sequence_sources(ds: Path, mode: str, case: str, sequence: str) -> tuple[Path, Path]:
    """(image, anatomy label) files of one patient's sequence in the converted dataset."""
    subset = "train" if mode == "cv" else "test"
    image = ds / myops.image_folder(subset, sequence) / f"{case}_0000.nii.gz"
    label = ds / ("labelsTr" if mode == "cv" else f"labelsTs_{sequence}") / f"{case}.nii.gz"
    return image, label


def linked_test_folder(ds: Path, mode: str, cases: Sequence[str], folder: Path) -> None:
    """A folder of links ``<case>__<SEQ>_0000.nii.gz`` to every sequence of ``cases`` (one predictor
    call per model instead of one per sequence)."""
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    for case in cases:
        for s in SEQUENCES:
            image, _ = sequence_sources(ds, mode, case, s)
            if not image.is_file():
                raise BenchmarkError(f"missing test image {image}")
            os.symlink(image, folder / f"{case}__{s}_0000.nii.gz")


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


def predict_all(folds: Sequence[str], runs: Sequence[Run], device: str,
                env: dict, logs: Path, inputs: Path, out: Path, jobs: int = 1) -> None:
    """``nnUNetv2_predict`` of every (run, fold) model on its fold's test inputs into
    ``out/<run name>/fold_<fold>`` (no test-time mirroring), ``jobs`` at a time (one folder per model, so
    parallel runs never share files)."""
    def one(item):
        r, fold = item
        dest = out / r.name / f"fold_{fold}"
        if dest.exists():
            shutil.rmtree(dest)
        n_proc = "1" if jobs > 1 else str(max(1, int(env.get("nnUNet_def_n_proc", "1"))))
        return run_step(f"predict {r.name} fold {fold}",
                        ["nnUNetv2_predict", "-i", str(inputs / f"fold_{fold}"), "-o", str(dest),
                         "-d", str(r.dataset_id), "-c", "2d", "-tr", r.trainer, "-p", r.plans, "-f", fold,
                         "--disable_tta", "-device", device, "-npp", n_proc, "-nps", n_proc,
                         "--disable_progress_bar"], env, logs)
    _in_parallel(one, [(r, fold) for r in runs for fold in folds], jobs)


def evaluate_all(ds: Path, mode: str, runs: Sequence[Run], folds: Sequence[str],
                 splits: list[dict], device: str, work: Path, env: dict, logs: Path, jobs: int = 1) -> list[dict]:
    """Predict each model's test patients (all three sequences in one ``nnUNetv2_predict`` per model and
    fold), pool them per (run, sequence), score with nnU-Net's metrics and the pathology breakdown.
    Rows carry ``model`` (the trainer), ``run`` (its name) and ``repeat``."""
    from nnunetv2.utilities.file_path_utilities import get_output_folder
    from .evaluate import score_folder

    register_ext_trainers(experiments=True)
    pathology_dir = ds / ("labelsPathologyTr" if mode == "cv" else "labelsPathologyTs")
    root = work / "predictions" / mode
    for d in [root / "_labels" / s for s in SEQUENCES] + [root / r.name / s for r in runs for s in SEQUENCES]:
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
    print(f"[bench_real] predict {len(runs)} model(s) x {len(folds)} fold(s), {jobs} at a time", flush=True)
    predict_all(folds, runs, device, env, logs, root / "_inputs", root / "_by_fold", jobs)
    rows = []
    for r in runs:
        model = Path(get_output_folder(r.dataset_id, r.trainer, r.plans, "2d"))
        for fold in folds:
            for case in fold_cases[fold]:
                for s in SEQUENCES:
                    shutil.move(str(root / "_by_fold" / r.name / f"fold_{fold}" / f"{case}__{s}.nii.gz"),
                                root / r.name / s / f"{case}.nii.gz")
        shutil.rmtree(root / "_by_fold" / r.name)
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


# ----------------------------------------------------------------------------- report

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


# ----------------------------------------------------------------------------- main

def run_benchmark(myops_dir: Path, work: Path, mode: str, budget: int = 5, width: float = 0.5,
                  crop: Optional[float] = 160.0, spacing: Optional[float] = 1.5, device: str = "cpu",
                  dataset_id: int = myops.DEFAULT_ID, variants: Sequence[str] = (), jobs: int = 1,
                  figure_case: Optional[str] = None, baseline: Optional[str] = None,
                  physaug: Optional[str] = None, train_cases: Sequence[int] = myops.DEFAULT_TRAIN_CASES,
                  test_cases: Sequence[int] = myops.DEFAULT_TEST_CASES,
                  baseline_from: Optional[Path] = None, repeats: int = 1, oracle: bool = False,
                  map_samples: int = 1) -> dict:
    """Run every step in ``work``; returns ``{"rows": [...], "line": last line}``. ``baseline``/``physaug``
    default to the stock budget pair ``nnUNetTrainer_<budget>epochs``/``nnUNetTrainerPhysAug_<budget>epochs``.
    ``baseline_from``: take the baseline's rows from an earlier ``results.json`` of the same settings instead
    of training it again (for ablations of PhysAug variants; the report marks them). ``repeats``: train
    every model that many times (independent nnU-Net runs on the same data, split and plans); the report
    gives their mean and range, so a difference can be told from run-to-run spread. ``oracle``: also train
    the baseline trainer on the real LGE and T2 images of the training patients (one dataset each,
    :func:`prepare_oracle`) as the reference of what training on the sequence itself reaches.
    ``map_samples``: tissue maps per training case (``physaug-reverse --samples K``; the baseline does not
    read maps, so ``baseline_from`` may come from a run with another K)."""
    if repeats < 1:
        raise BenchmarkError(f"--repeats must be at least 1, got {repeats}")
    if map_samples < 1:
        raise BenchmarkError(f"--map-samples must be at least 1, got {map_samples}")
    t_start = time.time()
    work = work.resolve()
    env = pipeline_env(work)
    # the converter and the predictor run in this process and read nnU-Net's variables from it
    os.environ.update({k: env[k] for k in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")})
    logs = work / "logs"
    epochs = "1epoch" if budget == 1 else f"{budget}epochs"
    baseline = baseline or f"nnUNetTrainer_{epochs}"
    physaug = physaug or f"nnUNetTrainerPhysAug_{epochs}"
    trainers = [baseline, physaug, *variants]

    ds, plans = prepare(myops_dir, env, logs, dataset_id, crop, spacing, width, train_cases, test_cases, map_samples)
    pre = Path(env["nnUNet_preprocessed"]) / ds.name
    splits = json.loads((pre / "splits_final.json").read_text())
    folds = [str(f) for f in range(len(splits))] if mode == "cv" else ["all"]
    settings = {"mode": mode, "budget_epochs": budget, "width": width, "plans": plans, "crop_mm": crop,
                "spacing_mm": spacing, "device": device, "trainers": trainers, "folds": folds, "repeats": repeats,
                "map_samples": map_samples}
    reused = earlier_rows(baseline_from, baseline, settings) if baseline_from else []
    if reused:
        settings["baseline_from"] = str(baseline_from)
        print(f"[bench_real] {baseline}: rows from {baseline_from}, not trained again", flush=True)
    runs = [Run(t if k == 0 else f"{t}_r{k}", t, repeat_plans(pre, plans, k), dataset_id, k)
            for k in range(repeats) for t in trainers if not (reused and t == baseline)]
    if oracle:
        settings["oracle"] = True
        for s in SEQUENCES[1:]:
            oid = prepare_oracle(ds, s, dataset_id, plans, env, logs)
            opre = Path(env["nnUNet_preprocessed"]) / oracle_dataset_name(dataset_id, s)
            runs += [Run(f"{baseline}_on{s}" + (f"_r{k}" if k else ""), baseline, repeat_plans(opre, plans, k), oid, k, s)
                     for k in range(repeats)]
    train_all(folds, runs, device, env, logs, jobs)
    per_repeat = evaluate_all(ds, mode, runs, folds, splits, device, work, env, logs, jobs)
    rows = reused + pool_repeats(per_repeat)

    report_dir = work / f"report_{mode}"
    report_dir.mkdir(parents=True, exist_ok=True)
    if figure_case is None:  # the first test patient (of fold 0 in cv)
        figure_case = sorted(patients_under_test(ds, mode, 0 if mode == "cv" else None, splits))[0]
    contour_figure(ds, mode, work, [r.name for r in runs if r.repeat == 0 and r.trained_on == myops.TRAINING_SEQUENCE], figure_case,
                   report_dir / "contours.png")
    seconds = time.time() - t_start
    atomic_write_json(report_dir / "results.json", {"settings": settings, "rows": rows,
                                                    "rows_per_repeat": per_repeat})
    md = markdown_report(rows, baseline)
    atomic_write_bytes(report_dir / "results.md", lambda tmp: Path(tmp).write_text(md), ".md")
    print(f"\nMyoPS ({mode}), trained on real bSSFP (C0), mean foreground Dice:\n\n{md}")
    print(f"report: {report_dir}/results.md, results.json, contours.png ({figure_case})")
    if oracles(rows):
        print(oracle_line(rows))
    return {"rows": rows, "line": summary_line(rows, baseline, physaug, seconds)}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="scripts/bench_real.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--myops", type=Path, required=True, metavar="DIR",
                   help="MyoPS 2020 training release (CaseNNNN/CaseNNNN_{C0,LGE,T2,gd}.nii.gz)")
    mode = p.add_mutually_exclusive_group(required=True)
    mode.add_argument("--cv", action="store_true", help="development: 5 folds inside the training patients")
    mode.add_argument("--final", action="store_true", help="train on all training patients, test the held-out "
                      "test patients (run once, settings fixed beforehand)")
    p.add_argument("--work", type=Path, default=Path("bench_real_work"),
                   help="work folder (nnU-Net's three folders inside; reused and resumed)")
    p.add_argument("--budget", type=int, default=5, help="epochs of 250 iterations for every trainer (default 5: "
                   "nnUNetTrainer_5epochs vs nnUNetTrainerPhysAug_5epochs)")
    p.add_argument("--width", type=float, default=0.5, help="feature maps per stage relative to nnU-Net's plans "
                   "(default 0.5 for CPU budgets; 1 = nnU-Net's own network)")
    p.add_argument("--crop", type=float, default=160.0, help="converter --crop in mm (default 160)")
    p.add_argument("--spacing", type=float, default=1.5, help="converter --spacing in mm (default 1.5)")
    p.add_argument("--train-cases", default="3001-3025", help="development patients (converter --train-cases)")
    p.add_argument("--test-cases", default="3026-3045", help="held-out patients (converter --test-cases)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="training and prediction device")
    p.add_argument("--variants", nargs="*", default=[], metavar="TRAINER",
                   help="more trainers to compare under the same budget (e.g. ablations)")
    p.add_argument("--baseline", default=None, help="baseline trainer (default nnUNetTrainer_<budget>epochs)")
    p.add_argument("--physaug", default=None, help="PhysAug trainer (default nnUNetTrainerPhysAug_<budget>epochs)")
    p.add_argument("--jobs", type=int, default=1, help="trainings and predictions at a time (1 on a 2-core CPU; "
                   "more on a GPU)")
    p.add_argument("--baseline-from", type=Path, default=None, metavar="RESULTS_JSON",
                   help="take the baseline's scores from an earlier report_<mode>/results.json of the same settings "
                   "instead of training it again (ablations of PhysAug variants; the report says so)")
    p.add_argument("--repeats", type=int, default=1, help="train every model this many times (independent "
                   "runs; the report gives mean and range: run-to-run spread of 5-epoch runs is ~0.01-0.03 Dice)")
    p.add_argument("--oracle", action="store_true", help="also train the baseline trainer on the real LGE and on the "
                   "real T2 images of the training patients (same split, plans, budget): the reference of what "
                   "training on the sequence itself reaches; the report gives each model's share of that drop")
    p.add_argument("--map-samples", type=int, default=1, metavar="K",
                   help="tissue maps per training case (physaug-reverse --samples K: K draws of the tissue values; "
                   "the trainer renders one per load; default 1). The maps of a --work folder are made once: use a "
                   "new --work folder for another K")
    p.add_argument("--figure-case", default=None, help="patient of the contour figure (default: the first test one)")
    args = p.parse_args(argv)
    try:
        r = run_benchmark(args.myops, args.work, "cv" if args.cv else "final", args.budget, args.width, args.crop,
                          args.spacing, args.device, variants=args.variants, jobs=args.jobs,
                          figure_case=args.figure_case, baseline=args.baseline, physaug=args.physaug,
                          train_cases=myops.parse_case_range(args.train_cases),
                          test_cases=myops.parse_case_range(args.test_cases), baseline_from=args.baseline_from,
                          repeats=args.repeats, oracle=args.oracle, map_samples=args.map_samples)
    except (StepError, myops.ConversionError) as e:
        print(f"[bench_real] FAILED: {e}", file=sys.stderr)
        sys.exit(1)
    print(r["line"])
