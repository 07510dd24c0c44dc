"""physaug-evaluate: predict every labeled test domain with every model, score with nnU-Net's metrics."""
from __future__ import annotations

import argparse

from ..evaluate import Domain, EvaluationError, evaluate, markdown_table, resolve_model_dirs, run_lines
from .argtypes import fold, torch_device
from .contract import add_quiet, fail, parse_args


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        prog="physaug-evaluate",
        description="Run nnU-Net prediction of one or more trained models on one or more labeled test sets "
                    "(domains) and score them with nnU-Net's own metric code. Writes results.md (Markdown "
                    "table of mean foreground Dice), results.csv, results.json (per-label Dice too) and dice.png "
                    "into -o. Models are given as model folders (-m) or as -d DATASET -c CONF -tr TRAINER ...")
    parser.add_argument("-t", "--test", dest="domains", nargs="+", required=True, metavar="NAME=IMAGES:LABELS",
                        help="labeled test sets: images CASE_0000.nii.gz in IMAGES, labels CASE.nii.gz in LABELS")
    parser.add_argument("-m", "--models", nargs="+", default=None, help="trained model folders "
                        "($nnUNet_results/DatasetXXX/TRAINER__PLANS__CONF)")
    parser.add_argument("-d", "--dataset", default=None, help="dataset name or id (with -tr)")
    parser.add_argument("-c", "--configuration", default="2d", help="configuration (with -tr; default 2d)")
    parser.add_argument("-tr", "--trainers", nargs="+", default=None, help="trainer names (with -d)")
    parser.add_argument("-p", "--plans", default="nnUNetPlans", help="plans identifier (default nnUNetPlans)")
    parser.add_argument("-f", "--folds", nargs="+", type=fold, default=[0], help="folds to ensemble (default 0)")
    parser.add_argument("-o", "--output", required=True, help="output folder for predictions and the report")
    parser.add_argument("--device", type=torch_device, default="cpu", help="torch device: cpu, cuda, cuda:N or mps "
                        "(default cpu)")
    parser.add_argument("--tta", action="store_true",
                        help="mirroring test-time augmentation (more network passes, slower on CPU)")
    parser.add_argument("--chk", default="checkpoint_final.pth", help="checkpoint name")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing report in -o")
    add_quiet(parser, "progress bar")
    args = parse_args(parser, argv)
    try:
        if args.models:
            models = args.models
        elif args.dataset and args.trainers:
            models = resolve_model_dirs(args.dataset, args.configuration, args.trainers, args.plans)
        else:
            parser.error("give model folders with -m, or -d DATASET with -tr TRAINER [TRAINER ...]")
        rows = evaluate(models, [Domain.parse(s) for s in args.domains], args.output, folds=args.folds,
                        device=args.device, tta=args.tta, overwrite=args.overwrite, checkpoint=args.chk,
                        progress=not args.quiet)
    except (EvaluationError, FileExistsError) as e:
        fail("physaug-evaluate", str(e))
    except OSError as e:  # a full or read-only output disk
        from ..fileio import describe_os_error
        fail("physaug-evaluate", f"{describe_os_error(e, 'output folder (-o)')}; no report was committed "
                                 f"(results.json is written last)")
    print(markdown_table(rows), end="")
    for line in run_lines(rows):
        print(line)
    print(f"report: {args.output}/results.md, results.csv, results.json, dice.png")


if __name__ == "__main__":
    main()
