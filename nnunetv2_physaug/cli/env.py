"""physaug-env: print the shell lines that make stock nnU-Net commands find the PhysAug trainers."""
from __future__ import annotations

import argparse

from ..nnunet.env import shell_exports


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        prog="physaug-env",
        description="Print `export` lines for nnU-Net: nnUNet_extTrainer (appended to any existing value) so "
                    "that `nnUNetv2_train ... -tr nnUNetTrainerPhysAug` and `nnUNetv2_predict ... -tr "
                    "nnUNetTrainerPhysAug` find our trainers, and optionally nnU-Net's three path variables. "
                    "Use it as: eval \"$(physaug-env)\"")
    parser.add_argument("--paths", metavar="ROOT", default=None,
                        help="also print nnUNet_raw, nnUNet_preprocessed and nnUNet_results as "
                             "ROOT/nnUNet_raw, ROOT/nnUNet_preprocessed, ROOT/nnUNet_results")
    parser.add_argument("--experiments", action="store_true",
                        help="also add the folder of the ablation trainers of the realism options "
                             "(docs/experiments/; not needed for the public trainers and the peers)")
    args = parser.parse_args(argv)
    print(shell_exports(args.paths, experiments=args.experiments))


if __name__ == "__main__":
    main()
