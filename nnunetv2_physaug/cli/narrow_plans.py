"""physaug-narrow-plans: a copy of a dataset's nnU-Net plans with fewer feature maps, for CPU budgets."""
from __future__ import annotations

import argparse
from pathlib import Path

from ..nnunet.env import require_nnunet_paths
from ..nnunet.plans import PlansError, write_narrow_plans
from .argtypes import positive_float
from .contract import add_output, fail, parse_args


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        prog="physaug-narrow-plans",
        description="Copy $nnUNet_preprocessed/DatasetXXX/<plans>.json to a new plans identifier whose networks "
                    "have WIDTH x the feature maps per stage (nothing else changes; the preprocessed data are "
                    "shared). nnU-Net plans for a GPU; on a CPU a width of 0.5 trains an epoch in about half the "
                    "time (docs/benchmarks.md). Train and predict with `-p NEW_NAME`. Compare trainers only within one plans "
                    "identifier.")
    parser.add_argument("-d", "--dataset", required=True, help="dataset name or id")
    parser.add_argument("-p", "--plans", default="nnUNetPlans", help="plans identifier to copy (default nnUNetPlans)")
    parser.add_argument("--width", type=positive_float, default=0.5, help="factor on feature maps per stage, in (0, 1] "
                        "(default 0.5)")
    add_output(parser, "--output-plans", default=None, metavar="PLANS",
               help="new plans identifier (default <plans>_w<percent>, e.g. nnUNetPlans_w50)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing plans file of that name")
    args = parse_args(parser, argv)
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name
    try:
        pre = require_nnunet_paths(which=("nnUNet_preprocessed",))["nnUNet_preprocessed"]
        name = maybe_convert_to_dataset_name(args.dataset)
        path = write_narrow_plans(Path(pre) / name, args.width, args.plans, args.output, args.overwrite)
    except (PlansError, RuntimeError) as e:
        fail("physaug-narrow-plans", str(e))
    print(f"wrote {path}\ntrain with: nnUNetv2_train {args.dataset} 2d FOLD -tr TRAINER -p {path.stem}")


if __name__ == "__main__":
    main()
