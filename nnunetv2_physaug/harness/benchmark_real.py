"""Real cross-sequence benchmark on MyoPS 2020: trained on real bSSFP, tested on real C0, LGE and T2.

Steps (stock nnU-Net commands and ours, as a user would run them):

1. ``Dataset913_MyoPS.py`` converter (``--crop``/``--spacing``; reused when it exists with the same settings);
2. ``physaug-reverse --method label [--samples K]`` on the bSSFP training images (``--map-samples K``);
3. ``nnUNetv2_plan_and_preprocess -c 2d`` and ``physaug-narrow-plans --width``;
4. ``nnUNetv2_train`` with the stock ``nnUNetTrainer_<B>epochs`` and ``nnUNetTrainerPhysAug_<B>epochs``
   (plus any ``--variants``), same plans, same split, same budget;
5. ``nnUNetv2_predict`` (no test-time mirroring; ``--jobs`` models at a time; a model whose checkpoints and
   test images are those its predictions in the work folder were made from keeps them) and scoring with nnU-Net's
   metrics (the code of ``physaug-evaluate``), plus the pathology breakdown (which label the network gives
   scar and edema pixels), the structure confusion (which label it gives each expert structure: where the
   Dice is lost) and the share of the baseline's C0 -> LGE / C0 -> T2 drop each model recovers;
6. the cost of each trainer: seconds per epoch from nnU-Net's logs, and its training data loader against stock
   nnU-Net's on the same dataset and plans (``scripts/bench_loader.py --dataset``, ``--loader-rounds``).

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
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

from ..conversion import myops
from ..cli.contract import fail_step, parse_args
from ..fileio import atomic_write_bytes, atomic_write_json
from ..nnunet.peer_trainers import BENCHMARK_PEERS
from ..pipeline import StepError, pipeline_env
from .realbench.curve import report_folder, write_budget_curve
from .realbench.report import contour_figure, markdown_report, oracle_line, oracles, summary_line
from .realbench.scoring import earlier_rows, evaluate_all, pool_repeats, seconds_per_epoch
from .realbench.steps import (SEQUENCES, BenchmarkError, Run, loader_ratios, oracle_dataset_name,
                              patients_under_test, prepare, prepare_oracle, repeat_plans, train_all)

# ----------------------------------------------------------------------------- main

#: the peers of ``--peers`` (their budget suffix is added): the one list of the trainers' module
PEERS = BENCHMARK_PEERS


@dataclass
class BenchConfig:
    """One benchmark run. ``baseline``/``physaug`` default to the stock budget pair
    ``nnUNetTrainer_<budget>epochs``/``nnUNetTrainerPhysAug_<budget>epochs``; ``variants`` are more trainers
    under the same budget (``peers``: :data:`PEERS` at the budget). ``baseline_from``: the baseline's rows of
    an earlier ``results.json`` of the same settings instead of training it again. ``repeats``: every model
    trained that many times (independent nnU-Net runs on the same data, split and plans). ``oracle``: the
    baseline trainer also trained on the real LGE and T2 images of the training patients. ``map_samples``:
    tissue maps per training case (``physaug-reverse --samples K``)."""
    myops_dir: Path
    work: Path
    mode: str
    budget: int = 5
    width: float = 0.5
    crop: Optional[float] = 160.0
    spacing: Optional[float] = 1.5
    device: str = "cpu"
    dataset_id: int = myops.DEFAULT_ID
    variants: Sequence[str] = ()
    peers: bool = False
    jobs: int = 1
    figure_case: Optional[str] = None
    baseline: Optional[str] = None
    physaug: Optional[str] = None
    train_cases: Sequence[int] = myops.DEFAULT_TRAIN_CASES
    test_cases: Sequence[int] = myops.DEFAULT_TEST_CASES
    baseline_from: Optional[Path] = None
    repeats: int = 1
    oracle: bool = False
    map_samples: int = 1
    loader_rounds: int = 10

    @property
    def epochs_suffix(self) -> str:
        return "_1epoch" if self.budget == 1 else f"_{self.budget}epochs"

    def trainers(self) -> list[str]:
        """Baseline, PhysAug, the variants and (``peers``) the peers, each once, in that order."""
        baseline = self.baseline or f"nnUNetTrainer{self.epochs_suffix}"
        physaug = self.physaug or f"nnUNetTrainerPhysAug{self.epochs_suffix}"
        peers = [p + self.epochs_suffix for p in PEERS] if self.peers else []
        return list(dict.fromkeys([baseline, physaug, *self.variants, *peers]))

    def check(self) -> None:
        if self.repeats < 1:
            raise BenchmarkError(f"--repeats must be at least 1, got {self.repeats}")
        if self.loader_rounds < 0:
            raise BenchmarkError(f"--loader-rounds must be 0 or more, got {self.loader_rounds}")
        if self.map_samples < 1:
            raise BenchmarkError(f"--map-samples must be at least 1, got {self.map_samples}")


def _runs(cfg: BenchConfig, pre: Path, plans: str, trainers: list[str], reused: bool) -> list[Run]:
    """Every model to train: each trainer (the baseline unless ``reused``) per repeat."""
    return [Run(t if k == 0 else f"{t}_r{k}", t, repeat_plans(pre, plans, k), cfg.dataset_id, k)
            for k in range(cfg.repeats) for t in trainers if not (reused and t == trainers[0])]


def _oracle_runs(cfg: BenchConfig, ds: Path, plans: str, env: dict, logs: Path, baseline: str) -> list[Run]:
    """The baseline trainer on the real LGE and T2 images (one dataset each), per repeat."""
    runs = []
    for s in SEQUENCES[1:]:
        oid = prepare_oracle(ds, s, cfg.dataset_id, plans, env, logs)
        opre = Path(env["nnUNet_preprocessed"]) / oracle_dataset_name(cfg.dataset_id, s)
        runs += [Run(f"{baseline}_on{s}" + (f"_r{k}" if k else ""), baseline, repeat_plans(opre, plans, k), oid, k, s)
                 for k in range(cfg.repeats)]
    return runs


def run_benchmark(cfg: BenchConfig) -> dict:
    """Run every step in ``cfg.work``; returns ``{"rows": [...], "line": last line}``."""
    cfg.check()
    t_start = time.time()
    work = Path(cfg.work).resolve()
    env = pipeline_env(work)
    # the converter and the predictor run in this process and read nnU-Net's variables from it
    os.environ.update({k: env[k] for k in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")})
    logs = work / "logs"
    trainers = cfg.trainers()
    baseline, physaug = trainers[0], trainers[1]

    ds, plans = prepare(cfg.myops_dir, env, logs, cfg.dataset_id, cfg.crop, cfg.spacing, cfg.width, cfg.train_cases,
                        cfg.test_cases, cfg.map_samples)
    pre = Path(env["nnUNet_preprocessed"]) / ds.name
    splits = json.loads((pre / "splits_final.json").read_text())
    folds = [str(f) for f in range(len(splits))] if cfg.mode == "cv" else ["all"]
    settings = {"mode": cfg.mode, "budget_epochs": cfg.budget, "width": cfg.width, "plans": plans,
                "crop_mm": cfg.crop, "spacing_mm": cfg.spacing, "device": cfg.device, "trainers": trainers,
                "folds": folds, "repeats": cfg.repeats, "map_samples": cfg.map_samples}
    reused = earlier_rows(cfg.baseline_from, baseline, settings) if cfg.baseline_from else []
    if reused:
        settings["baseline_from"] = str(cfg.baseline_from)
        print(f"[bench_real] {baseline}: rows from {cfg.baseline_from}, not trained again", flush=True)
    runs = _runs(cfg, pre, plans, trainers, bool(reused))
    if cfg.oracle:
        settings["oracle"] = True
        runs += _oracle_runs(cfg, ds, plans, env, logs, baseline)
    train_all(folds, runs, cfg.device, env, logs, cfg.jobs)
    per_repeat = evaluate_all(ds, cfg.mode, runs, folds, splits, cfg.device, work, env, logs, cfg.jobs)
    # a reused baseline's cost comes from its own logs where its models are in this work folder: the ratios
    # then compare epochs measured by one rule (the earlier report's value is kept where they are not)
    cost = seconds_per_epoch(runs + ([Run(baseline, baseline, plans, cfg.dataset_id)] if reused else []), folds)
    report_dir = report_folder(work, cfg.mode, cfg.budget)
    report_dir.mkdir(parents=True, exist_ok=True)
    loader = (loader_ratios(ds.name, plans, trainers, env, logs,
                            report_dir / "loader_ratios.json", cfg.loader_rounds) if cfg.loader_rounds > 0 else {})
    rows = [{**r, "seconds_per_epoch": cost.get(baseline, r.get("seconds_per_epoch"))} for r in reused] + \
        [{**r, "seconds_per_epoch": cost.get(r["model"]), "loader_ratio": loader.get(r["model"])}
         for r in pool_repeats(per_repeat)]

    figure_case = cfg.figure_case or sorted(patients_under_test(ds, cfg.mode, 0 if cfg.mode == "cv" else None,
                                                                splits))[0]  # the first test patient
    contour_figure(ds, cfg.mode, work, [r.name for r in runs if r.repeat == 0 and r.trained_on == myops.TRAINING_SEQUENCE],
                   figure_case, report_dir / "contours.png")
    seconds = time.time() - t_start
    atomic_write_json(report_dir / "results.json", {"settings": settings, "rows": rows,
                                                    "rows_per_repeat": per_repeat})
    md = markdown_report(rows, baseline)
    atomic_write_bytes(report_dir / "results.md", lambda tmp: Path(tmp).write_text(md), ".md")
    print(f"\nMyoPS ({cfg.mode}), trained on real bSSFP (C0), mean foreground Dice:\n\n{md}")
    curve = write_budget_curve(work, cfg.mode)
    print(f"report: {report_dir}/results.md, results.json, contours.png ({figure_case}); budget curve of every "
          f"report in {work}: {curve} (.md)")
    if oracles(rows):
        print(oracle_line(rows))
    return {"rows": rows, "line": summary_line(rows, baseline, physaug, seconds)}


def cuda_or_cpu(text: str) -> str:
    """nnU-Net's -device (cpu or cuda), checked to exist on this machine."""
    from ..cli.argtypes import torch_device

    if text not in ("cpu", "cuda"):
        raise argparse.ArgumentTypeError(f"choose cpu or cuda, got {text!r}")
    return torch_device(text)


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
    p.add_argument("--budget", "--epochs", type=int, nargs="+", default=[5], metavar="B",
                   help="epochs of 250 iterations for every trainer (default 5: nnUNetTrainer_5epochs vs "
                   "nnUNetTrainerPhysAug_5epochs); several values run one after another (a stock nnU-Net length "
                   "each: 1, 5, 10, 20, 50, 100, ...). Each budget's report goes to W/report_<mode>_<B>epochs; "
                   "W/budget_curve_<mode>.png (and .md) draws Dice against epochs from every report in W")
    p.add_argument("--width", type=float, default=0.5, help="feature maps per stage relative to nnU-Net's plans "
                   "(default 0.5 for CPU budgets; 1 = nnU-Net's own network)")
    p.add_argument("--crop", type=float, default=160.0, help="converter --crop in mm (default 160)")
    p.add_argument("--spacing", type=float, default=1.5, help="converter --spacing in mm (default 1.5)")
    p.add_argument("--train-cases", default="3001-3025", help="development patients (converter --train-cases)")
    p.add_argument("--test-cases", default="3026-3045", help="held-out patients (converter --test-cases)")
    p.add_argument("--device", type=cuda_or_cpu, default="cpu", help="training and prediction device: cpu or cuda")
    p.add_argument("--variants", nargs="*", default=[], metavar="TRAINER",
                   help="more trainers to compare under the same budget (e.g. ablations, which the benchmark finds "
                   "in the experiments folder)")
    p.add_argument("--peers", action="store_true",
                   help="also train the peers at the budget: " + ", ".join(f"{t}_<B>epochs" for t in PEERS)
                   + " (the augmentations users can already switch on, and PhysAug with each)")
    p.add_argument("--baseline", default=None, help="baseline trainer (default nnUNetTrainer_<budget>epochs)")
    p.add_argument("--physaug", default=None, help="PhysAug trainer (default nnUNetTrainerPhysAug_<budget>epochs)")
    p.add_argument("--jobs", type=int, default=1, help="trainings and predictions at a time (1 on a 2-core CPU; "
                   "more on a GPU)")
    p.add_argument("--baseline-from", type=Path, default=None, metavar="RESULTS_JSON",
                   help="take the baseline's scores from an earlier report_<mode>/results.json of the same settings "
                   "instead of training it again (ablations of PhysAug variants; the report says so)")
    p.add_argument("--repeats", "--seeds", type=int, default=1, metavar="N",
                   help="train every model N times (independent nnU-Net runs on the same data, plans and split: "
                   "nnU-Net draws its own random numbers, so these are seeds in the sense of independent "
                   "repeats, not bitwise-reproducible ones); the report gives mean and range")
    p.add_argument("--oracle", action="store_true", help="also train the baseline trainer on the real LGE and on the "
                   "real T2 images of the training patients (same split, plans, budget): the reference of what "
                   "training on the sequence itself reaches; the report gives each model's share of that drop")
    p.add_argument("--map-samples", type=int, default=1, metavar="K",
                   help="tissue maps per training case (physaug-reverse --samples K: K draws of the tissue values; "
                   "the trainer renders one per load; default 1). The maps of a --work folder are made once: use a "
                   "new --work folder for another K")
    p.add_argument("--loader-rounds", type=int, default=10, metavar="N",
                   help="rounds of 10 batches per loader for the loader ratios of the cost table (single-threaded, "
                   "interleaved, ~1 min at 10 on 2 CPU cores; 0 leaves them out)")
    p.add_argument("--figure-case", default=None, help="patient of the contour figure (default: the first test one)")
    args = parse_args(p, argv)
    budgets = list(dict.fromkeys(args.budget))
    for budget in budgets:
        cfg = BenchConfig(args.myops, args.work, "cv" if args.cv else "final", budget, args.width, args.crop,
                          args.spacing, args.device, variants=args.variants, peers=args.peers, jobs=args.jobs,
                          figure_case=args.figure_case, baseline=args.baseline, physaug=args.physaug,
                          train_cases=myops.parse_case_range(args.train_cases),
                          test_cases=myops.parse_case_range(args.test_cases), baseline_from=args.baseline_from,
                          repeats=args.repeats, oracle=args.oracle, map_samples=args.map_samples,
                          loader_rounds=args.loader_rounds)
        try:
            r = run_benchmark(cfg)
        except (StepError, myops.ConversionError) as e:
            fail_step("scripts/bench_real.py", e)
        print(r["line"] if len(budgets) == 1 else f"budget={budget} {r['line']}", flush=True)
