#!/usr/bin/env python
"""Convert ACDC into an nnU-Net raw dataset (ED/ES frames, patient-level 5-fold splits).

Logic: nnunetv2_physaug.conversion.acdc. Run ``python Dataset910_ACDC.py -h`` for the layout.
"""
import sys

from nnunetv2_physaug.conversion import acdc
from nnunetv2_physaug.conversion.common import make_parser, run_cli


def main(argv=None) -> int:
    parser = make_parser(__doc__.splitlines()[0], acdc.DEFAULT_ID)
    parser.epilog = acdc.SOURCE_LAYOUT
    args = parser.parse_args(argv)
    return run_cli(lambda: acdc.convert_acdc(args.input, args.dataset_id, overwrite=args.overwrite,
                                             seed=args.seed, progress=not args.quiet), parser.prog)


if __name__ == "__main__":
    sys.exit(main())
