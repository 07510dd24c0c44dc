"""The phantom demo: baseline vs PhysAug on unseen contrasts, end to end with stock nnU-Net commands.

Steps (each a stock command or one of ours; any failure stops the demo with that step's output):

1. ``physaug-phantom``: bSSFP training set, in-domain test set, one labeled test set per unseen contrast.
2. ``physaug-reverse --method label``: tissue maps of the training images with the weight-free estimator
   (no prior weights ship and none can be downloaded; training a diffusion prior on CPU would take
   the whole time budget). The phantom's ground-truth maps are not used for training.
3. ``nnUNetv2_plan_and_preprocess -c 2d --verify_dataset_integrity``.
4. ``physaug-narrow-plans``: a copy of nnU-Net's plans with ``--width`` x the feature maps per stage
   (nnU-Net plans its network for a GPU; on a CPU the half-width network trains an epoch in
   about half the time, so 5 epochs of each trainer fit the budget). Both trainers use it.
5. ``nnUNetv2_train -p <narrow plans>`` with a stock ``nnUNetTrainer_*`` budget variant and the paired
   ``nnUNetTrainerPhysAug_*`` variant (identical budget, same plans and splits), on the CPU.
6. ``physaug-evaluate`` on the in-domain test set and every unseen-contrast test set.
7. ``physaug-preview`` gallery of a training case.

A rerun with the same ``--out`` reuses the phantom, and keeps every training that finished
(``checkpoint_final.pth`` in its fold folder): a stopped run resumes; delete a model's folder (or use a new
``--out``) to train it again.

Run: ``scripts/demo [--out DIR]``. The last line printed is
``unseen_dice_physaug=.. unseen_dice_baseline=.. indomain_dice_physaug=.. indomain_dice_baseline=.. seconds=..``.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Sequence

from .cli.argtypes import seed as seed_type
from .cli.contract import add_output, fail_step, parse_args
from .pipeline import StepError, pipeline_env, run_step
from .nnunet.plans import default_narrow_name

FIRST_ID = 900
DEFAULT_WIDTH = 0.5


DemoStepError = StepError  # a demo step failed (the name the demo has always used)


def _run(step: str, cmd: list[str], env: dict, log_dir: Path) -> str:
    return run_step("demo", step, cmd, env, log_dir)


def peer_trainers(baseline: str) -> list[str]:
    """The peers (:data:`nnunetv2_physaug.nnunet.peer_trainers.BENCHMARK_PEERS`) at the baseline's stock length
    (``nnUNetTrainer_5epochs`` -> ``nnUNetTrainerGINIPA_5epochs``, ...)."""
    from .nnunet.peer_trainers import BENCHMARK_PEERS as PEERS

    suffix = baseline[len("nnUNetTrainer"):] if baseline.startswith("nnUNetTrainer_") else ""
    return [p + suffix for p in PEERS]


def run_demo(out: Path, n_train: int, n_test: int, size: int, baseline: str, physaug: str, fold: str,
             seed: int = 0, width: float = DEFAULT_WIDTH, variants: Sequence[str] = ()) -> dict:
    """Run every step in ``out`` (nnU-Net's three folders inside it); return the summary numbers.
    ``variants``: more trainers, trained and evaluated beside the pair (``--peers``: the peers)."""
    t_start = time.time()
    out = out.resolve()
    env = pipeline_env(out)
    logs = out / "logs"
    raw = Path(env["nnUNet_raw"])

    if not (raw / "phantom_summary.json").is_file():
        _run("phantom", ["physaug-phantom", "-o", str(raw), "--n-train", str(n_train), "--n-test", str(n_test),
                         "--size", str(size), "--seed", str(seed), "--first-id", str(FIRST_ID)], env, logs)
    summary = json.loads((raw / "phantom_summary.json").read_text())
    asked = {"--seed": ("seed", seed), "--size": ("size", size), "--n-train": ("n_train", n_train),
             "--n-test": ("n_test", n_test)}
    differ = [f"{opt} {summary.get(key)} (asked: {value})" for opt, (key, value) in asked.items()
              if summary.get(key) != value]
    if differ:  # its models and scores belong to that phantom
        raise DemoStepError(f"{out} holds a phantom made with other settings: {'; '.join(differ)}. Rerun with those "
                            f"settings to resume it, or use another --out")
    datasets = summary["datasets"]
    train_ds = raw / datasets[0]["name"]

    _run("reverse imaging", ["physaug-reverse", "-i", str(train_ds / "imagesTr"), "-o",
                             str(train_ds / "tissueMapsTr"), "--method", "label"], env, logs)
    # planning: nnunetv2 2.8.1's planner crashes on nnUNet_n_proc_DA=0
    _run("plan and preprocess", ["nnUNetv2_plan_and_preprocess", "-d", str(FIRST_ID), "-c", "2d", "-np", "1",
                                 "-npfp", "1", "--verify_dataset_integrity"], {**env, "nnUNet_n_proc_DA": "1"}, logs)
    plans = "nnUNetPlans"
    if width != 1.0:
        plans = default_narrow_name("nnUNetPlans", width)
        _run("narrow plans", ["physaug-narrow-plans", "-d", str(FIRST_ID), "--width", str(width), "-o", plans,
                              "--overwrite"], env, logs)
    trainers = list(dict.fromkeys([baseline, physaug, *variants]))
    # nnU-Net's own naming of a model folder (its get_output_folder reads nnUNet_results of this process's
    # start; the demo's folders are in env)
    from nnunetv2.utilities.file_path_utilities import convert_trainer_plans_config_to_identifier

    results = Path(env["nnUNet_results"]) / datasets[0]["name"]
    for trainer in trainers:
        model = results / convert_trainer_plans_config_to_identifier(trainer, plans, "2d")
        done = model / f"fold_{fold}" / "checkpoint_final.pth"
        if done.is_file():  # an interrupted run (e.g. --peers, ~1 h) resumes where it stopped
            print(f"[demo] train {trainer}: finished earlier, kept ({done.parent}; delete it to train again)",
                  flush=True)
            continue
        _run(f"train {trainer}", ["nnUNetv2_train", str(FIRST_ID), "2d", fold, "-tr", trainer, "-p", plans,
                                  "-device", "cpu"], env, logs)

    domains = []
    for d in datasets[1:]:
        folder = raw / d["name"]
        domains.append(f"{d['domain']}={folder / 'imagesTr'}:{folder / 'labelsTr'}")
    _run("evaluate", ["physaug-evaluate", "-d", str(FIRST_ID), "-c", "2d", "-p", plans, "-tr", *trainers, "-f", fold,
                      "-o", str(out / "evaluation"), "--overwrite", "-t", *domains], env, logs)
    rows = json.loads((out / "evaluation" / "results.json").read_text())
    table = (out / "evaluation" / "results.md").read_text()

    case = sorted((train_ds / "imagesTr").glob("*_0000.nii.gz"))[0]
    _run("preview", ["physaug-preview", "--image", str(case), "--maps", str(train_ds / "tissueMapsTr"),
                     "--labels", str(train_ds / "labelsTr" / case.name.replace("_0000", "")), "--preset", "wide",
                     "-n", "8", "-o", str(out / "preview_wide.png"), "--overwrite"], env, logs)

    in_domain = datasets[1]["domain"]
    dice = {(r["model"], r["domain"]): r["mean_fg_dice"] for r in rows}
    unseen = [d["domain"] for d in datasets[2:]]

    def mean(model, names):
        return sum(dice[(model, n)] for n in names) / len(names)

    result = {"unseen_dice_physaug": mean(physaug, unseen), "unseen_dice_baseline": mean(baseline, unseen),
              "indomain_dice_physaug": dice[(physaug, in_domain)], "indomain_dice_baseline": dice[(baseline, in_domain)],
              **{f"unseen_dice_{v}": mean(v, unseen) for v in trainers[2:]},
              **{f"indomain_dice_{v}": dice[(v, in_domain)] for v in trainers[2:]},
              "seconds": time.time() - t_start}
    print("\nMean foreground Dice (phantom test sets; first row in-domain bSSFP):\n")
    print(table)
    print(f"plot: {out / 'evaluation' / 'dice.png'}   preview gallery: {out / 'preview_wide.png'}")
    return result


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        prog="scripts/demo", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_output(parser, "--out", type=Path, default=Path("physaug_demo"),
                        help="work folder, nnU-Net's raw/preprocessed/results folders go inside (default "
                             "./physaug_demo; a rerun in it keeps the phantom and every finished training)")
    parser.add_argument("--n-train", type=int, default=20, help="phantom training cases (default 20)")
    parser.add_argument("--n-test", type=int, default=10, help="phantom test cases per domain (default 10)")
    parser.add_argument("--size", type=int, default=80,
                        help="phantom in-plane size in pixels (default 80: 3 mm pixels over the 240 mm field of view)")
    parser.add_argument("--baseline", default="nnUNetTrainer_5epochs",
                        help="stock budget trainer (default nnUNetTrainer_5epochs: 1250 iterations, minutes on a CPU "
                             "cores at the default size and width)")
    parser.add_argument("--physaug", default="nnUNetTrainerPhysAug_5epochs",
                        help="paired PhysAug trainer (identical budget)")
    parser.add_argument("--width", type=float, default=DEFAULT_WIDTH,
                        help=f"feature maps per stage relative to nnU-Net's plans (default {DEFAULT_WIDTH}; 1 = "
                             "nnU-Net's own network, slower on a CPU)")
    parser.add_argument("--peers", action="store_true",
                        help="also train and evaluate the peers at the baseline's length (the benchmarks' one list: "
                             "GIN-IPA and SLAug as published, DA5, and PhysAug with each published peer on every and "
                             "on half the images; each trains as long as one of the pair or longer)")
    parser.add_argument("--variants", nargs="*", default=[], metavar="TRAINER",
                        help="more trainers to train and evaluate beside the pair")
    parser.add_argument("--fold", default="0", help="fold to train (default 0)")
    parser.add_argument("--seed", type=seed_type, default=0, help="phantom seed")
    args = parse_args(parser, argv)
    try:
        variants = [*args.variants, *(peer_trainers(args.baseline) if args.peers else [])]
        r = run_demo(args.output, args.n_train, args.n_test, args.size, args.baseline, args.physaug, args.fold,
                     args.seed, args.width, variants)
    except DemoStepError as e:
        fail_step("scripts/demo", e)
    print(" ".join(f"{k}={v:.3f}" if k != "seconds" else f"{k}={v:.0f}" for k, v in r.items()))


if __name__ == "__main__":
    main()
