"""The real-data benchmark's steps (stock nnU-Net commands and ours): convert, reverse, plan, the ``--oracle``
datasets, training every (run, fold), the test sets and prediction. Scores: :mod:`.scoring`; the report:
:mod:`.report`; the whole run: :mod:`nnunetv2_physaug.harness.benchmark_real`."""
from __future__ import annotations

import concurrent.futures as cf
import json
import os
import shutil
import sys
from pathlib import Path
from typing import NamedTuple, Optional, Sequence

from ...conversion import myops
from ...conversion.common import dataset_name
from ...fileio import atomic_write_json
from ...nnunet.plans import default_narrow_name
from ...pipeline import StepError, run_step as _run_step

SEQUENCES = myops.SEQUENCES
STRUCTURES = {"1": "RV", "2": "MYO", "3": "LV"}
#: ``nnUNetv2_predict``'s settings of every benchmark prediction (no test-time mirroring); also part of the
#: record that lets a later run keep predictions (:func:`.scoring.prediction_key`)
PREDICT_SETTINGS = ("-c", "2d", "--disable_tta")
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


def _dataset_differences(ds: Path, source: Path, crop: Optional[float], spacing: Optional[float],
                         train_cases: Sequence[int], test_cases: Sequence[int]) -> list[str]:
    """What the converted dataset ``ds`` was made with that differs from these settings (empty: the same)."""
    meta = json.loads((ds / "dataset.json").read_text()).get("physaug_metadata", {})
    wanted = {"--myops": str(Path(source).resolve()), "--crop": crop, "--spacing": spacing,
              "--train-cases": [f"Case{n}" for n in train_cases], "--test-cases": [f"Case{n}" for n in test_cases]}
    had = {"--myops": meta.get("source_folder"), "--crop": meta.get("crop_mm"), "--spacing": meta.get("spacing_mm"),
           "--train-cases": meta.get("train_cases"), "--test-cases": meta.get("test_cases")}
    return [f"{k} {_short(had[k])} (asked: {_short(wanted[k])})" for k in wanted if had[k] != wanted[k]]


def _short(v) -> str:
    if isinstance(v, list) and len(v) > 4:
        return f"{v[0]} ... {v[-1]} ({len(v)})"
    return str(v)


def prepare(myops_dir: Path, env: dict, logs: Path, dataset_id: int, crop: Optional[float],
            spacing: Optional[float], width: float, train_cases: Sequence[int] = myops.DEFAULT_TRAIN_CASES,
            test_cases: Sequence[int] = myops.DEFAULT_TEST_CASES, map_samples: int = 1) -> tuple[Path, str]:
    """Steps 1-3; returns (raw dataset folder, plans identifier). Reuses what is already there.
    ``map_samples``: tissue maps per case (``physaug-reverse --samples``; the trainer draws one per load)."""
    raw = Path(env["nnUNet_raw"])
    ds = raw / dataset_name(dataset_id, myops.NAME)
    differences = _dataset_differences(ds, myops_dir, crop, spacing, train_cases, test_cases) if ds.is_dir() else []
    if differences:
        raise BenchmarkError(f"{ds} was converted with other settings: {'; '.join(differences)}. Its models and "
                             f"reports belong to those; use another --work folder (or remove this one)")
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


def loader_ratios(dataset: str, plans: str, trainers: Sequence[str], env: dict, logs: Path, out: Path,
                  rounds: int) -> dict[str, float]:
    """``{trainer: its training data loader's batches per second / stock nnU-Net's}`` on the benchmark's own
    dataset and plans (fold 0), measured side by side by :mod:`nnunetv2_physaug.harness.bench.loader` (single-threaded,
    ``rounds`` interleaved rounds of 10 batches, the order rotating). It is what an augmentation costs where it
    runs in the loader (PhysAug's render, DA5's transforms); the peers augment in the training step and have the
    stock loader (their cost is in seconds per epoch). Kept in ``out``: a rerun with the same trainers and rounds
    reuses it."""
    trainers = list(dict.fromkeys(trainers))
    if out.is_file():
        kept = json.loads(out.read_text())
        if kept.get("rounds") == rounds and set(trainers) <= set(kept.get("loader_ratio", {})):
            print(f"[bench_real] loader ratios: measured earlier, kept ({out})", flush=True)
            return kept["loader_ratio"]
    run_step("loader ratios", [sys.executable, "-m", "nnunetv2_physaug.harness.bench.loader", "--dataset", dataset,
                               "--plans", plans, "--also", *trainers,
                               "--rounds", str(rounds), "--json", str(out)], env, logs)
    return json.loads(out.read_text())["loader_ratio"]


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


def predict_all(folds: Sequence[str], runs: Sequence[Run], device: str,
                env: dict, logs: Path, inputs: Path, out: Path, jobs: int = 1) -> None:
    """``nnUNetv2_predict`` of every (run, fold) model on its fold's test inputs into
    ``out/<run name>/fold_<fold>`` (no test-time mirroring), ``jobs`` at a time (one folder per model, so
    parallel runs never share files).

    Where each call would get one worker (``jobs > 1`` or ``nnUNet_def_n_proc`` 1) it runs nnU-Net's
    sequential path (``-npp 0 -nps 0``): a pool of one worker is a fresh interpreter importing torch per pool
    (~10 s per call on a 2-core machine) and buys no overlap; the predictions are the same."""
    def one(item):
        r, fold = item
        dest = out / r.name / f"fold_{fold}"
        if dest.exists():
            shutil.rmtree(dest)
        workers = 1 if jobs > 1 else max(1, int(env.get("nnUNet_def_n_proc", "1")))
        n_proc = "0" if workers == 1 else str(workers)
        return run_step(f"predict {r.name} fold {fold}",
                        ["nnUNetv2_predict", "-i", str(inputs / f"fold_{fold}"), "-o", str(dest),
                         "-d", str(r.dataset_id), *PREDICT_SETTINGS, "-tr", r.trainer, "-p", r.plans, "-f", fold,
                         "-device", device, "-npp", n_proc, "-nps", n_proc,
                         "--disable_progress_bar"], env, logs)
    _in_parallel(one, [(r, fold) for r in runs for fold in folds], jobs)

