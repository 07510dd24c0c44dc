"""physaug-train-prior: train a diffusion prior over (M0, T1, T2) tissue maps."""
from __future__ import annotations

import argparse

from .argtypes import positive_float, positive_int, torch_device, seed as seed_type
from .contract import add_quiet, fail, parse_args

_DESCRIPTION = """\
Train a diffusion prior (diffusers UNet2DModel + DDPM scheduler, 1000 steps) over tissue maps
[M0, T1, T2] and save it as a diffusers folder (unet/, scheduler/, model_index.json,
physaug_prior.json; safetensors weights) that `physaug-reverse --prior PRIOR_DIR` loads.

Training data: a maps folder with CASE_M0.nii.gz, CASE_T1.nii.gz, CASE_T2.nii.gz per case (T1/T2 in
ms; 3D or 4D with samples), e.g. your own quantitative mapping data or the phantom's ground truth
(physaug-phantom). Every slice is one example; M0 is rescaled per slice to the scale the samplers
assume, so any M0 unit works. T1 above 3200 ms and T2 above 300 ms are clipped.

The run is resumable: PRIOR_DIR/checkpoint/state.pt is written atomically every
--checkpoint-every steps, and rerunning the same command continues from it. Multi-GPU / multi-node:
    torchrun --nproc_per_node 4 -m nnunetv2_physaug.cli.train_prior --maps MAPS -o PRIOR
(each process trains on its own batches of --batch-size; rank 0 writes). Works on CPU too (gloo).
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="physaug-train-prior", description=_DESCRIPTION,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--maps", required=True, metavar="MAPS_DIR", help="folder of training maps (CASE_{M0,T1,T2}.nii.gz)")
    p.add_argument("-o", "--output", required=True, metavar="PRIOR_DIR", help="output prior folder")
    p.add_argument("--size", type=positive_int, default=128, help="prior grid side in pixels (default 128, the paper's)")
    p.add_argument("--steps", type=positive_int, default=20000, help="total optimisation steps (default 20000)")
    p.add_argument("--batch-size", type=positive_int, default=16, help="examples per step and per process (default 16)")
    p.add_argument("--lr", type=positive_float, default=1e-4, help="AdamW learning rate (default 1e-4)")
    p.add_argument("--device", type=torch_device, default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--unet", default="paper", metavar="PRESET_OR_JSON",
                   help="network size: 'paper' (default, ~114 M parameters), 'small' (~3 M, CPU-trainable), "
                        "'tiny' (tests), or a JSON file of diffusers UNet2DModel arguments")
    p.add_argument("--checkpoint-every", type=positive_int, default=500, help="steps between checkpoints (default 500)")
    p.add_argument("--seed", type=seed_type, default=0, help="random seed (default 0)")
    p.add_argument("--ema-decay", type=float, default=0.9999, help="maximum EMA decay of the saved weights")
    p.add_argument("--prediction-type", default="v_prediction", choices=["v_prediction", "epsilon", "sample"],
                   help="network target (default v_prediction: learns the global layout of tissue values far "
                        "better than epsilon for small networks and data; the authors' prior is epsilon)")
    p.add_argument("--beta-schedule", default="squaredcos_cap_v2", choices=["squaredcos_cap_v2", "linear"],
                   help="noise schedule (default squaredcos_cap_v2, cosine; the authors' is linear)")
    p.add_argument("--no-resume", action="store_true", help="ignore an existing checkpoint (needs --overwrite)")
    p.add_argument("--overwrite", action="store_true", help="allow --no-resume to replace an existing prior/checkpoint")
    add_quiet(p, "progress bar")
    return p


def main(argv=None) -> None:
    args = parse_args(build_parser(), argv)
    from ..reverse.prior import PriorError
    from ..reverse.train_prior import PriorTrainingError, train_prior
    try:
        out = train_prior(args.maps, args.output, size=args.size, steps=args.steps, batch_size=args.batch_size,
                          lr=args.lr, resume=not args.no_resume, device=args.device, unet_config=args.unet,
                          checkpoint_every=args.checkpoint_every, seed=args.seed, ema_decay=args.ema_decay,
                          overwrite=args.overwrite, progress=not args.quiet,
                          prediction_type=args.prediction_type, beta_schedule=args.beta_schedule)
    except (PriorTrainingError, PriorError, FileExistsError) as e:
        fail("physaug-train-prior", str(e))
    except OSError as e:  # unreadable maps, a full or read-only output disk
        from ..fileio import describe_os_error
        fail("physaug-train-prior", f"{describe_os_error(e, 'prior folder (-o)')}; a rerun resumes from the last "
                                    f"checkpoint")
    import os
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"prior saved to {out} (use: physaug-reverse --prior {out})")


if __name__ == "__main__":
    main()
