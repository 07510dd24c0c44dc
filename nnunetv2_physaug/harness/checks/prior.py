"""Does a tissue-map prior generate tissue? Unconditional samples against phantom training data.

Draws ``--samples`` maps from the prior by ancestral DDPM sampling (diffusers ``DDPMScheduler``,
``--steps`` strided steps) and compares them with phantom maps prepared exactly as
``physaug-train-prior`` prepares its training data (same grid, same M0 scale). For every pixel with
signal (M0 > 0.15) it asks whether (T1, T2) lies within 15 % / 20 % of the mean of a tissue in the
tissue table (any field strength; air excluded), and prints the fraction per tissue, the total
("on tissue") and T2 percentiles. A prior whose samples are rarely on tissue cannot give reverse
imaging useful maps, whatever the sampler.

Last line: ``on_tissue_data=<fraction> on_tissue_prior=<fraction>``.

    python scripts/check_prior.py --prior PRIOR_DIR
"""
from __future__ import annotations

import argparse
import copy
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from nnunetv2_physaug.phantom import make_case, write_ground_truth_maps
from nnunetv2_physaug.physics.tissues import FIELD_STRENGTHS, tissue_table
from nnunetv2_physaug.reverse.prior import PhysicsPrior
from nnunetv2_physaug.reverse.train_prior import load_training_latents

T1_TOL, T2_TOL, MIN_M0 = 0.15, 0.20, 0.15


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="scripts/check_prior.py", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--prior", required=True, metavar="DIR", help="prior folder (diffusers layout)")
    p.add_argument("--samples", type=int, default=32, help="unconditional samples to draw (default: 32)")
    p.add_argument("--steps", type=int, default=200, help="DDPM sampling steps (default: 200)")
    p.add_argument("--cases", type=int, default=16, help="phantom cases for the data reference (default: 16)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def tissue_classes() -> dict[str, tuple[float, float]]:
    """(T1 ms, T2 ms) means of every tissue with signal, over all field strengths in the table."""
    out = {}
    for field in FIELD_STRENGTHS:
        for name, props in tissue_table(field).items():
            if props.m0[0] > 0:
                out[f"{name}@{field}"] = (props.t1[0], props.t2[0])
    return out


def on_tissue(prior: PhysicsPrior, z: torch.Tensor) -> tuple[float, dict[str, float], np.ndarray]:
    """Fraction of signal pixels near any tissue class, per tissue (fields merged), T2 P10/50/90 (ms)."""
    m0, t1, t2 = prior.to_physical(z.float().cpu())
    keep = m0 > MIN_M0
    t1, t2 = t1[keep], t2[keep]
    near_any = torch.zeros_like(t1, dtype=torch.bool)
    per: dict[str, float] = {}
    for key, (a, b) in tissue_classes().items():
        near = ((t1 / a - 1).abs() < T1_TOL) & ((t2 / b - 1).abs() < T2_TOL)
        name = key.split("@")[0]
        per[name] = per.get(name, 0.0) + float(near.float().mean())
        near_any |= near
    return float(near_any.float().mean()), per, np.percentile(t2.numpy(), [10, 50, 90])


def main(argv=None) -> None:
    from ...cli.contract import run_reporting

    run_reporting("scripts/check_prior.py", lambda: _main(argv), (ValueError, RuntimeError))


def _main(argv=None) -> None:
    args = parse_args(argv)
    dev = torch.device(args.device)
    prior = PhysicsPrior.from_pretrained(args.prior, device=dev)
    size = prior.sample_size
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.cases):
            c = make_case(np.random.default_rng(10_000 + args.seed * 1000 + i), size=size)
            write_ground_truth_maps(Path(tmp), f"c{i:03d}", c)
        data = load_training_latents(tmp, size)
    sched = copy.deepcopy(prior.scheduler)
    sched.set_timesteps(args.steps, device=dev)
    gen = torch.Generator(device="cpu").manual_seed(args.seed)
    z = torch.randn((args.samples, 3, size, size), generator=gen).to(dev)
    t0 = time.perf_counter()
    with torch.inference_mode():
        for t in sched.timesteps:
            z = sched.step(prior.unet(z, t).sample[:, :3], t, z, generator=gen).prev_sample
    print(f"prior {args.prior} (hash {prior.hash}, {prior.scheduler.config.prediction_type}, "
          f"{prior.scheduler.config.beta_schedule}): {args.samples} samples in {time.perf_counter() - t0:.0f} s")
    results = {}
    for name, lat in (("data", data), ("prior", z)):
        frac, per, t2p = on_tissue(prior, lat)
        results[name] = frac
        print(f"{name:>5}: on tissue {frac:.2f} (" + ", ".join(f"{k} {v:.2f}" for k, v in per.items())
              + f"); T2 P10/50/90 {t2p[0]:.0f}/{t2p[1]:.0f}/{t2p[2]:.0f} ms")
    print(f"on_tissue_data={results['data']:.2f} on_tissue_prior={results['prior']:.2f}")


if __name__ == "__main__":
    main()
