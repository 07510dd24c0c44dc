"""physaug-reverse: estimate tissue maps (M0, T1, T2) for an nnU-Net image folder."""
from __future__ import annotations

import argparse
import sys

from .argtypes import positive_float, positive_int, torch_device, seed as seed_type
from .contract import add_quiet, fail, parse_args

_DESCRIPTION = """\
Estimate tissue maps (M0 relative, T1 and T2 in ms) behind the bSSFP images of an nnU-Net
imagesTr-style folder (CASE_0000.nii.gz; channel 0000 only; 3D volumes, processed slice by slice
along Z; 4D cine is refused: store frames as separate 3D cases). Maps are written as
CASE_{M0,T1,T2}.nii.gz in the image geometry (4D with K samples on the last axis when --samples
K > 1) plus manifest.json (estimator, prior hash, parameters, package version, per-case QC).

Estimators:
  --prior DIR   diffusion prior (a diffusers folder with unet/ and scheduler/, e.g. the authors'
                phys-acdc-128 or one made by physaug-train-prior), sampler --preset fast|paper.
  --method label  (DEFAULT without --prior) weight-free: labels where available, intensity classes
                elsewhere, T1/T2 from the tissue table with smooth variation, M0 solved so the
                bSSFP rendering reproduces the image. Which label is blood and which myocardium is
                read from the label names of the dataset.json beside IMAGES_DIR (RV, LV, MYO,
                myocardium, scar, edema, ...; ACDC 1/3 blood, 2 myocardium without one), or
                given with --label-tissues; a label value with no tissue is an error.

The run is resumable: finished cases are skipped (use --overwrite to redo them), a killed run
leaves no half-written files, and a case counts as finished only when its commit record
(qc/CASE.json, written last) names exactly the map files on disk. Shards (--shard i/n, or torchrun's
RANK/WORLD_SIZE) take disjoint cases and may write into one folder at the same time; runs that
share a folder without shards lock each case, so no case is computed twice. A folder made with another estimator, prior
or parameters is refused unless --overwrite.
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="physaug-reverse", description=_DESCRIPTION,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-i", "--images", required=True, metavar="IMAGES_DIR",
                   help="nnU-Net image folder holding CASE_0000.nii.gz files (e.g. $nnUNet_raw/Dataset900_X/imagesTr)")
    p.add_argument("-o", "--output", default=None, metavar="MAPS_DIR",
                   help="output folder of the maps (default: IMAGES_DIR/../tissueMapsTr, tissueMapsTs for imagesTs)")
    est = p.add_mutually_exclusive_group()
    est.add_argument("--prior", default=None, metavar="PRIOR_DIR",
                     help="diffusion prior folder (unet/ + scheduler/); selects the diffusion sampler")
    est.add_argument("--method", choices=["label"], default=None,
                     help="weight-free estimator; the default when no --prior is given")
    p.add_argument("--preset", choices=["fast", "paper"], default=None,
                   help="diffusion sampler (with --prior only): 'fast' (default; batched, one sample per slice, 30 "
                        "DPS-guided DDPM steps, then a per-pixel fit at native resolution) or 'paper' (the "
                        "authors' DPS: 200 steps, 5 samples, NCC selection)")
    p.add_argument("--sampler-option", action="append", default=[], metavar="KEY=VALUE",
                   help="override one sampler parameter (repeatable), e.g. --sampler-option steps=50 "
                        "--sampler-option guidance=10; fast: steps, guidance, gradient=autograd|jvp (jvp: no backward "
                        "pass, less memory), fd_step, sigma, "
                        "channel_weights=0.25,1,1, final_prior_var, final_gn_iters, micro_batch; paper: steps, xi, "
                        "sigma, candidates, ncc_window, micro_batch")
    lab = p.add_mutually_exclusive_group()
    lab.add_argument("--labels", default=None, metavar="LABELS_DIR",
                     help="label folder (CASE.nii.gz, ACDC convention: 1 RV, 2 myocardium, 3 LV); default: the "
                          "sibling labelsTr folder when it exists")
    lab.add_argument("--no-labels", action="store_true", help="do not use labels even if labelsTr exists")
    p.add_argument("--label-tissues", default=None, metavar="V=TISSUE,...",
                   help="tissue of each label value for --method label, e.g. 1=blood,2=myocardium,3=blood "
                        "(tissues: blood, myocardium, other); default: from dataset.json's label names")
    p.add_argument("--device", type=torch_device, default="cpu", help="torch device, e.g. cpu, cuda, cuda:1 (default: cpu; under "
                                                   "torchrun 'cuda' means cuda:LOCAL_RANK)")
    p.add_argument("--batch-size", type=positive_int, default=16, metavar="N",
                   help="slices per estimator call, batched across cases of equal slice shape (default: 16)")
    p.add_argument("--samples", type=positive_int, default=1, metavar="K",
                   help="maps kept per case; K > 1 writes 4D maps and the trainer draws one per load (default: 1)")
    p.add_argument("--shard", default=None, metavar="i/n",
                   help="process the i-th (from 0) of n disjoint case shares, e.g. $SLURM_ARRAY_TASK_ID/8; "
                        "default: torchrun's RANK/WORLD_SIZE, else all cases")
    p.add_argument("--max-nrmse", type=positive_float, default=None, metavar="PCT",
                   help="a case whose maps re-render its bSSFP image with a larger NRMSE in percent fails and "
                        "gets no maps (default: 30)")
    p.add_argument("--field", choices=["1.5T", "3T"], default="1.5T",
                   help="field strength of the tissue table used by --method label (default: 1.5T)")
    p.add_argument("--accept-implausible", action="store_true",
                   help="write maps whose labelled blood or myocardium have a median T1 or T2 outside the "
                        "physiological range (by default such a case fails: an untrained or wrong prior, or a "
                        "wrong --label-tissues)")
    p.add_argument("--seed", type=seed_type, default=0, help="random seed (default: 0)")
    p.add_argument("--overwrite", action="store_true",
                   help="redo finished cases and replace a folder made with other settings")
    add_quiet(p, "progress bar")
    return p


def main(argv=None) -> None:
    parser = build_parser()
    args = parse_args(parser, argv)
    from ..maps.store import TissueMapError
    from ..reverse import CacheMismatchError, ReverseInputError, make_estimator, run_reverse
    from ..reverse.shard import parse_shard
    from ..reverse.engine import AUTO, parse_sampler_options
    from ..reverse.label_tissues import LabelTissueError, resolve_label_tissues

    if (args.preset is not None or args.sampler_option) and args.prior is None:
        parser.error("--preset and --sampler-option apply to the diffusion sampler and need --prior PRIOR_DIR")
    errors: tuple[type[BaseException], ...] = (ReverseInputError, CacheMismatchError, TissueMapError, LabelTissueError,
                                               ValueError)
    try:
        from ..reverse.prior import PriorError
        errors = errors + (PriorError,)
    except ImportError:  # diffusers missing: only the label method can run
        pass
    try:
        shard = parse_shard(args.shard)
        options = parse_sampler_options(args.sampler_option)
        if args.label_tissues is not None and args.prior:
            parser.error("--label-tissues applies to --method label, not to a diffusion prior")
        label_tissues = None
        if not args.prior:
            label_tissues, source = resolve_label_tissues(args.images, args.label_tissues)
            print(f"label tissues ({source}): " + ", ".join(f"{k}={v}" for k, v in sorted(label_tissues.items())))
        estimator = make_estimator("diffusion" if args.prior else "label", prior=args.prior,
                                   preset=args.preset or "fast", field_strength=args.field, device=args.device,
                                   sampler_options=options, label_tissues=label_tissues)
        summary = run_reverse(args.images, args.output, estimator=estimator,
                              labels_dir=None if args.no_labels else (args.labels or AUTO), device=args.device,
                              batch_size=args.batch_size, n_samples=args.samples, shard=shard,
                              overwrite=args.overwrite, seed=args.seed, progress=not args.quiet,
                              accept_implausible=args.accept_implausible,
                              **({"max_nrmse_pct": args.max_nrmse} if args.max_nrmse is not None else {}))
    except errors as e:
        fail("physaug-reverse", str(e))
    except OSError as e:  # read-only or full output disk, and the like
        from ..fileio import describe_os_error
        fail("physaug-reverse", f"{describe_os_error(e, 'maps folder (-o)')}. Cases already finished are kept, "
                                f"none is left half-written; a rerun resumes.")
    print(summary.format())
    if summary.failed:
        sys.exit(1)


if __name__ == "__main__":
    main()
