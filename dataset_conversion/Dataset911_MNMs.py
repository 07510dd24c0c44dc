#!/usr/bin/env python
"""Convert M&Ms (M&Ms-1) into an nnU-Net raw dataset: ED/ES frames of the 4D cines, labels in the
ACDC convention, vendor/centre metadata, patient-level 5-fold splits.

Logic: nnunetv2_physaug.conversion.mnms. Run ``python Dataset911_MNMs.py -h`` for the layout.
"""
import sys

from nnunetv2_physaug.conversion import mnms
from nnunetv2_physaug.conversion.common import make_parser, run_cli


def main(argv=None) -> int:
    parser = make_parser(__doc__.split("\n\n")[0], mnms.DEFAULT_ID)
    parser.epilog = mnms.SOURCE_LAYOUT
    parser.add_argument("--csv", default=mnms.CSV_NAME, metavar="NAME",
                        help="name of the information CSV inside SOURCE")
    parser.add_argument("--by-vendor", action="store_true",
                        help="also link the labeled Validation/Testing cases of each vendor into "
                             "imagesTs_<Vendor>/labelsTs_<Vendor> (one test domain per vendor)")
    parser.add_argument("--by-centre", action="store_true",
                        help="same per centre: imagesTs_centre<N>/labelsTs_centre<N>")
    args = parser.parse_args(argv)
    return run_cli(lambda: mnms.convert_mnms(args.input, args.dataset_id, overwrite=args.overwrite,
                                             seed=args.seed, by_vendor=args.by_vendor,
                                             by_centre=args.by_centre, csv_name=args.csv,
                                             progress=not args.quiet), parser.prog)


if __name__ == "__main__":
    sys.exit(main())
