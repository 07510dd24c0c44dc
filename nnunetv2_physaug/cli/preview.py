"""physaug-preview: a PNG sheet of one slice, its tissue maps and random renderings from a protocol."""
from __future__ import annotations

import argparse

from .argtypes import seed as seed_type
from .contract import fail
from ..contrast import PRESETS
from ..maps.store import TissueMapError
from ..preview import make_preview


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        prog="physaug-preview",
        description="Write one PNG showing a slice of CASE_0000.nii.gz, its M0/T1/T2 tissue maps (colour bars; T1 "
                    "and T2 in ms) and N random renderings from a contrast protocol, each captioned with its "
                    "sequence family and drawn parameters. Use it to check that the maps and a protocol give "
                    "plausible images before training.")
    parser.add_argument("--image", required=True, metavar="CASE_0000.nii.gz", help="the case's 3D image")
    parser.add_argument("--maps", required=True, metavar="MAPS_DIR",
                        help="folder with CASE_M0/T1/T2.nii.gz (from physaug-reverse); with K samples the first "
                             "is shown")
    parser.add_argument("--case", default=None,
                        help="case identifier (default: the image name minus _0000.nii.gz)")
    parser.add_argument("--labels", default=None, metavar="LABEL.nii.gz",
                        help="optional label map of the case (ACDC convention: 1 RV, 2 myocardium, 3 LV) for "
                             "label-aware Gd uptake and black blood; without it blood is T2 > 150 ms")
    parser.add_argument("--preset", default="wide",
                        help=f"protocol: a preset ({', '.join(PRESETS)}) or a .yaml/.yml/.json file "
                             "(default: wide)")
    parser.add_argument("--set", action="append", default=[], dest="settings", metavar="FAMILY.PARAM=VALUE",
                        help="change one protocol parameter (repeatable; a number or [low,high]), e.g. "
                             "tse.blood_partial_volume=1 or \"lge.wall_layer_share=[0,0.5]\", to see an option "
                             "before training with it")
    parser.add_argument("--family", default=None,
                        help="render only this sequence family of the protocol, e.g. lge or tse (default: each "
                             "rendering draws one by the protocol's probabilities)")
    parser.add_argument("-n", type=int, default=8, help="number of random renderings (default: 8)")
    parser.add_argument("--slice", type=int, default=None, dest="slice_index", metavar="K",
                        help="slice index along the image's third axis (default: the middle slice)")
    parser.add_argument("--seed", type=seed_type, default=0, help="random seed of the renderings (default: 0)")
    parser.add_argument("-o", "--output", required=True, metavar="OUT.png", help="PNG to write")
    parser.add_argument("--overwrite", action="store_true", help="replace OUT.png if it exists")
    args = parser.parse_args(argv)
    try:
        result = make_preview(args.image, args.maps, args.output, case=args.case, labels=args.labels,
                              preset=args.preset, n=args.n, slice_index=args.slice_index, seed=args.seed,
                              overwrite=args.overwrite, settings=args.settings, family=args.family)
    except (FileNotFoundError, FileExistsError, TissueMapError, ValueError) as e:
        fail("physaug-preview", str(e))
    except OSError as e:  # a full or read-only output disk
        from ..fileio import describe_os_error
        fail("physaug-preview", f"{describe_os_error(e, 'output (-o)')}; nothing was written")
    print(f"wrote {result.path} ({result.width_px}x{result.height_px} px, slice {result.slice_index})")


if __name__ == "__main__":
    main()
