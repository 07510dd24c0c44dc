#!/usr/bin/env python
"""Convert MyoPS 2020 (bSSFP, LGE, T2 of each patient on one grid) into an nnU-Net raw dataset: a bSSFP
training set, one labelled test set per sequence, pathology labels beside them.

Logic: nnunetv2_physaug.conversion.myops. Run ``python Dataset913_MyoPS.py -h`` for the layout.
"""
import sys

from nnunetv2_physaug.conversion import myops
from nnunetv2_physaug.conversion.common import make_parser, run_cli


def main(argv=None) -> int:
    parser = make_parser(__doc__.split("\n\n")[0], myops.DEFAULT_ID)
    parser.epilog = myops.SOURCE_LAYOUT
    parser.add_argument("--train-cases", default="3001-3025", metavar="LIST",
                        help="training patients (their bSSFP is the training set; all three sequences for "
                             "cross-validation), e.g. 3001-3025 or 3001,3003-3010")
    parser.add_argument("--test-cases", default="3026-3045", metavar="LIST",
                        help="held-out test patients (one labelled test set per sequence); 'none' for none")
    parser.add_argument("--crop", type=float, default=None, metavar="MM",
                        help="keep a fixed MM x MM square around the image centre (never chosen from the "
                             "labels; the heart lies within ~45 mm of the centre in MyoPS); default: no crop")
    parser.add_argument("--spacing", type=float, default=None, metavar="MM",
                        help="resample in-plane to MM (cubic for images, linear on label masks); default: keep "
                             "the source spacing (~0.73 mm)")
    args = parser.parse_args(argv)

    def run():
        test = () if args.test_cases.strip().lower() == "none" else myops.parse_case_range(args.test_cases)
        return myops.convert_myops(args.input, args.dataset_id, train_cases=myops.parse_case_range(args.train_cases),
                                   test_cases=test, crop_mm=args.crop, spacing_mm=args.spacing,
                                   overwrite=args.overwrite, seed=args.seed, progress=not args.quiet)
    return run_cli(run, parser.prog)


if __name__ == "__main__":
    sys.exit(main())
