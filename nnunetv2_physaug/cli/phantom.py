"""physaug-phantom: write the synthetic cardiac phantom as nnU-Net v2 raw datasets."""
from __future__ import annotations

import argparse
from pathlib import Path

from .argtypes import seed as seed_type
from .contract import add_output, add_quiet, fail, parse_args

DESCRIPTION = """\
Write synthetic short-axis cardiac MRI phantoms as nnU-Net v2 raw datasets (labels in the ACDC
convention: 0 background, 1 RV cavity, 2 LV myocardium, 3 LV cavity):

  Dataset{ID}_PhantomCine        bSSFP cine training set + ground-truth M0/T1/T2 maps in groundTruthMapsTr/
                                 (tissueMapsTr/ is left for physaug-reverse)
  Dataset{ID+1}_PhantomCineTest  new anatomies, bSSFP cine (in-domain test set)
  Dataset{ID+2..}_Phantom<X>     the same test anatomies in each unseen contrast (LGE, MOLLI, T1w GRE,
                                 T2-prep bSSFP, first-pass perfusion, black-blood TSE)
  phantom_summary.json           what was written

Every case is a deterministic function of --seed. Existing dataset folders are never replaced
without --overwrite. The domains are data: see nnunetv2_physaug/phantom/domains.yaml.
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="physaug-phantom", description=DESCRIPTION,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_output(p, "--out", required=True, type=Path, help="output folder, typically $nnUNet_raw (created if missing)")
    p.add_argument("--n-train", type=int, default=20, help="training cases, bSSFP cine with maps (default 20)")
    p.add_argument("--n-test", type=int, default=10,
                   help="test anatomies, written once per test domain (default 10)")
    p.add_argument("--seed", type=seed_type, default=0, help="master random seed (default 0)")
    p.add_argument("--size", type=int, default=128,
                   help="in-plane matrix in pixels; the field of view is fixed at 240 mm (default 128)")
    p.add_argument("--first-id", type=int, default=900,
                   help="nnU-Net dataset id of the training set; test sets take the next ids (default 900)")
    p.add_argument("--field", default="1.5T", choices=["1.5T", "3T"],
                   help="field strength of the tissue relaxation table (default 1.5T)")
    p.add_argument("--domains", type=Path, default=None,
                   help="alternative domains YAML (default: the packaged domains.yaml)")
    p.add_argument("--overwrite", action="store_true", help="replace existing phantom dataset folders")
    add_quiet(p, "progress bar")
    return p


def main(argv=None) -> None:
    args = parse_args(build_parser(), argv)
    from ..fileio import JournalError, describe_os_error
    from ..phantom import PhantomConfigError, format_summary, write_phantom_datasets

    try:
        summary = write_phantom_datasets(args.output, n_train=args.n_train, n_test=args.n_test, seed=args.seed,
                                         size=args.size, first_id=args.first_id, field=args.field,
                                         overwrite=args.overwrite, domains_file=args.domains,
                                         progress=not args.quiet)
    except (FileExistsError, ValueError, PhantomConfigError, JournalError) as e:
        fail("physaug-phantom", str(e))
    except OSError as e:  # read-only or full output disk, and the like
        fail("physaug-phantom", f"{describe_os_error(e, 'output folder (-o)')}. No dataset was replaced by a "
                                f"partial one.")
    print(format_summary(summary))


if __name__ == "__main__":
    main()
