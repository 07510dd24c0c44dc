#!/usr/bin/env python
"""Convert M&Ms-2 into an nnU-Net raw dataset: short-axis (optionally long-axis) ED/ES volumes,
labels in the ACDC convention, vendor/scanner/field metadata, patient-level 5-fold splits.

Logic: nnunetv2_physaug.conversion.mnms2. Run ``python Dataset912_MNMs2.py -h`` for the layout.
"""
import sys

from nnunetv2_physaug.conversion import mnms2
from nnunetv2_physaug.conversion.common import make_parser, run_cli


def main(argv=None) -> int:
    parser = make_parser(__doc__.split("\n\n")[0], mnms2.DEFAULT_ID)
    parser.epilog = mnms2.SOURCE_LAYOUT
    parser.add_argument("--long-axis", action="store_true",
                        help="also convert the long-axis ED/ES images (<id>_LA_ED, <id>_LA_ES cases)")
    parser.add_argument("--train-subjects", default=mnms2.DEFAULT_TRAIN_SUBJECTS, metavar="RANGES",
                        help="subject codes that go to imagesTr (e.g. '1-160' or '1-40,90'); the others "
                             "go to imagesTs/labelsTs")
    parser.add_argument("--by-vendor", action="store_true",
                        help="also link the test cases of each vendor into imagesTs_<Vendor>/labelsTs_<Vendor>")
    args = parser.parse_args(argv)
    return run_cli(lambda: mnms2.convert_mnms2(args.input, args.dataset_id, overwrite=args.overwrite,
                                               seed=args.seed, long_axis=args.long_axis,
                                               train_subjects=args.train_subjects,
                                               by_vendor=args.by_vendor, progress=not args.quiet), parser.prog)


if __name__ == "__main__":
    sys.exit(main())
