"""Benchmark of the reverse-imaging estimators on phantom slices with known maps.

Runs with no arguments on a fresh checkout: it draws phantom cases (``nnunetv2_physaug.phantom``),
writes the maps of a training set, trains a small phantom prior with ``train_prior`` (or reuses
it from ``~/.cache/nnunetv2_physaug/bench_prior/<settings>``, or takes ``--prior DIR``), then runs
the ``label``, diffusion ``fast`` and diffusion ``paper`` estimators on the same held-out bSSFP
slices and prints per method: seconds (after one untimed warm-up call on two slices), slices/s,
network evaluations per slice (UNet forward passes counted while it runs; the DPS samplers also run
one backward pass per forward, `fast` with ``gradient=jvp`` a second forward instead), bSSFP
re-render NRMSE (percent, mean over slices) and T1/T2 mean absolute percentage error in blood
(labels 1, 3) and myocardium (label 2). Every method runs twice: on the noise-free bSSFP renderings
of the phantom (exactly the forward model being inverted) and on the same slices with a smooth
receive bias field (gain 0.8-1.2) and Rician noise (SNR 30 on blood), like real images.

The last line is::

    speedup=<paper s / fast s> nrmse_fast=<%> nrmse_paper=<%> t1_mape_fast=<%> t2_mape_fast=<%>
    evals_fast=<per slice> evals_paper=<per slice> t1_mape_fast_noisy=<%> t2_mape_fast_noisy=<%>

(on one line) where the MAPE figures are the worse of blood and myocardium; the speed-up is mostly
the ratio of network evaluations (``evals_paper / evals_fast``), printed beside it. Goals (issue 4): speedup >= 30 with
fast no worse than paper, NRMSE <= 2 %, MAPE <= 10 %. The default prior (tiny network, 32² grid,
3000 CPU steps) is far from the authors' 128² prior, so its map errors say as much about the prior
as about the samplers; compare the samplers with each other. ``--size 64 --grid 32`` draws the
phantom at 64² (3.75 mm pixels) and trains the prior on a 32² grid, the paper's ratio of native to
prior resolution: the label estimator's myocardial errors drop (partial volume resolved), and the
diffusion samplers' rise, since a 32² grid cannot resolve the myocardium of a 64² image.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from nnunetv2_physaug.phantom import make_case, write_ground_truth_maps
from nnunetv2_physaug.physics import bssfp
from nnunetv2_physaug.reverse import LabelEstimator
from nnunetv2_physaug.reverse.qc import bssfp_nrmse_pct, mape_pct
from nnunetv2_physaug.reverse.train_prior import BETA_SCHEDULES, PREDICTION_TYPES

CACHE = Path.home() / ".cache" / "nnunetv2_physaug" / "bench_prior"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="scripts/bench_reverse.py", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    p.add_argument("--n-slices", type=int, default=24, help="held-out phantom slices to estimate (default: 24)")
    p.add_argument("--prior", default=None, metavar="DIR", help="use this prior folder instead of training one")
    p.add_argument("--size", type=int, default=32, help="phantom matrix in pixels (default: 32; field of view 240 mm)")
    p.add_argument("--grid", type=int, default=None,
                   help="prior grid in pixels (default: --size); the paper runs a 128 grid on ~256-pixel cine")
    p.add_argument("--unet", default="tiny", choices=["tiny", "small"], help="prior network size (default: tiny)")
    p.add_argument("--train-steps", type=int, default=3000, help="prior training steps (default: 3000, ~5 min on 2 CPU cores)")
    p.add_argument("--train-lr", type=float, default=1e-3, help="prior learning rate (default: 1e-3)")
    p.add_argument("--train-cases", type=int, default=16, help="phantom cases to train the prior on (default: 16)")
    p.add_argument("--prediction-type", default="v_prediction", choices=PREDICTION_TYPES,
                   help="prior training target (default: v_prediction, physaug-train-prior's default)")
    p.add_argument("--beta-schedule", default="squaredcos_cap_v2", choices=BETA_SCHEDULES,
                   help="prior noise schedule (default: squaredcos_cap_v2)")
    p.add_argument("--paper-steps", type=int, default=None,
                   help="override the paper preset's 200 DPS steps (default: keep 200)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.grid is None:
        args.grid = args.size
    return args


def get_prior(args, device: torch.device):
    from nnunetv2_physaug.reverse.prior import PhysicsPrior
    from nnunetv2_physaug.reverse.train_prior import train_prior

    if args.prior:
        return PhysicsPrior.from_pretrained(args.prior, device=device), "given"
    settings = {"size": args.size, "unet": args.unet, "steps": args.train_steps, "cases": args.train_cases,
                "seed": args.seed, "lr": args.train_lr, "v": 2}
    if args.grid != args.size:
        settings["grid"] = args.grid
    if (args.prediction_type, args.beta_schedule) != (PREDICTION_TYPES[0], BETA_SCHEDULES[0]):
        settings["objective"] = f"{args.prediction_type}/{args.beta_schedule}"
    key = json.dumps(settings, sort_keys=True)
    folder = CACHE / hashlib.sha256(key.encode()).hexdigest()[:12]
    if (folder / "unet" / "config.json").is_file():
        try:
            return PhysicsPrior.from_pretrained(folder, device=device), f"cached {folder}"
        except Exception as e:  # a broken cache entry is retrained
            print(f"cached prior {folder} unusable ({e}); retraining")
    with tempfile.TemporaryDirectory() as tmp:
        maps_dir = Path(tmp) / "maps"
        for i in range(args.train_cases):
            c = make_case(np.random.default_rng(10_000 + args.seed * 1000 + i), size=args.size)
            write_ground_truth_maps(maps_dir, f"train{i:03d}", c)
        t0 = time.perf_counter()
        train_prior(maps_dir, folder, size=args.grid, steps=args.train_steps, batch_size=16, lr=args.train_lr,
                    device=str(device),
                    unet_config=args.unet, seed=args.seed, checkpoint_every=max(50, args.train_steps // 4),
                    prediction_type=args.prediction_type, beta_schedule=args.beta_schedule)
        print(f"trained the phantom prior in {time.perf_counter() - t0:.0f} s -> {folder}")
    return PhysicsPrior.from_pretrained(folder, device=device), f"trained {folder}"


def test_slices(args) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Held-out slices showing the heart: images (B, H, W), truth maps (B, 3, H, W), labels (B, H, W)."""
    imgs, truths, labs = [], [], []
    i = 0
    while len(imgs) < args.n_slices:
        c = make_case(np.random.default_rng(90_000 + args.seed * 1000 + i), size=args.size)
        i += 1
        for z in range(c.m0.shape[0]):
            if (c.labels[z] == 2).sum() >= 10 and len(imgs) < args.n_slices:
                m = torch.from_numpy(np.stack([c.m0[z], c.t1[z], c.t2[z]]).astype(np.float32))
                imgs.append(250.0 * bssfp(m[0], m[1], m[2], 45.0, 0.0, short_tr=True))
                truths.append(m)
                labs.append(torch.from_numpy(c.labels[z].astype(np.int64)))
    return torch.stack(imgs), torch.stack(truths), torch.stack(labs)


def degrade(images: torch.Tensor, seed: int) -> torch.Tensor:
    """Smooth receive bias (gain 0.8-1.2, bilinear over a 3x3 grid) and Rician noise of SNR 30 on the
    mean blood-level signal (the 99th percentile of each slice)."""
    g = torch.Generator().manual_seed(seed)
    b, h, w = images.shape
    coarse = 0.8 + 0.4 * torch.rand((b, 1, 3, 3), generator=g)
    bias = torch.nn.functional.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=True)[:, 0]
    x = images * bias
    sigma = torch.quantile(x.flatten(1), 0.99, dim=1)[:, None, None] / 30.0
    n1, n2 = (torch.randn(x.shape, generator=g) for _ in range(2))
    return torch.sqrt((x + sigma * n1) ** 2 + (sigma * n2) ** 2)


class _CountRows:
    """Counts the rows the prior's UNet sees (forward passes x batch) while installed."""

    def __init__(self, estimator):
        self.unet = getattr(getattr(estimator, "prior", None), "unet", None)
        self.rows = 0

    def __enter__(self):
        if self.unet is not None:
            self._handle = self.unet.register_forward_pre_hook(self._hook)
        return self

    def _hook(self, module, args):
        self.rows += int(args[0].shape[0])

    def __exit__(self, *exc):
        if self.unet is not None:
            self._handle.remove()


def evaluate(name: str, estimator, images, truth, labels, device, use_labels: bool, seed: int) -> dict:
    x = images.to(device)
    lab = labels.to(device) if use_labels else None
    with torch.no_grad():  # warm-up: first-call allocations and kernel selection are not timed
        estimator.estimate(x[:2], None if lab is None else lab[:2], 1, torch.Generator(device=device).manual_seed(seed))
    gen = torch.Generator(device=device)
    gen.manual_seed(seed)
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    with torch.no_grad(), _CountRows(estimator) as count:
        est = estimator.estimate(x, lab, 1, gen)
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    maps = est.maps.detach().float().cpu()[:, 0]  # (B, 3, H, W)
    blood, myo = (labels == 1) | (labels == 3), labels == 2
    row = {"method": name, "seconds": seconds, "slices_per_s": images.shape[0] / seconds,
           "evals_per_slice": count.rows / images.shape[0], "nrmse_pct": float(bssfp_nrmse_pct(images, maps).mean())}
    for ch, par in ((1, "t1"), (2, "t2")):
        row[f"{par}_blood"] = mape_pct(maps[:, ch], truth[:, ch], blood)
        row[f"{par}_myo"] = mape_pct(maps[:, ch], truth[:, ch], myo)
    return row


def main(argv=None) -> None:
    args = parse_args(argv)
    device = torch.device(args.device)
    torch.manual_seed(args.seed)
    from nnunetv2_physaug.reverse.diffusion import DiffusionEstimator

    prior, how = get_prior(args, device)
    images, truth, labels = test_slices(args)
    print(f"prior: {how} (hash {prior.hash}, grid {prior.sample_size}); {images.shape[0]} slices "
          f"{tuple(images.shape[1:])} on {device}")
    paper_kw = {"steps": args.paper_steps} if args.paper_steps else {}
    runs = [("label", LabelEstimator(), True),
            ("fast", DiffusionEstimator(prior, preset="fast"), False),
            ("paper", DiffusionEstimator(prior, preset="paper", **paper_kw), False)]
    rows = {}
    noisy = degrade(images, args.seed + 1)
    for tag, imgs in (("clean", images), ("noisy", noisy)):
        print(f"-- {'noise-free renderings' if tag == 'clean' else 'bias field 0.8-1.2 + Rician noise SNR 30'}")
        for name, est, use_labels in runs:
            r = rows[(tag, name)] = evaluate(name, est, imgs, truth, labels, device, use_labels, args.seed)
            print(f"{name:>6}: {r['seconds']:8.2f} s ({r['slices_per_s']:7.2f} slices/s, {r['evals_per_slice']:5.0f} "
                  f"network evaluations/slice)  NRMSE {r['nrmse_pct']:6.2f} %  "
                  f"T1 MAPE blood {r['t1_blood']:5.1f} % myo {r['t1_myo']:5.1f} %  "
                  f"T2 MAPE blood {r['t2_blood']:5.1f} % myo {r['t2_myo']:5.1f} %", flush=True)
    fast, paper, fast_n = rows[("clean", "fast")], rows[("clean", "paper")], rows[("noisy", "fast")]
    print(f"speedup={paper['seconds'] / fast['seconds']:.1f} nrmse_fast={fast['nrmse_pct']:.2f} "
          f"nrmse_paper={paper['nrmse_pct']:.2f} t1_mape_fast={max(fast['t1_blood'], fast['t1_myo']):.1f} "
          f"t2_mape_fast={max(fast['t2_blood'], fast['t2_myo']):.1f} evals_fast={fast['evals_per_slice']:.0f} "
          f"evals_paper={paper['evals_per_slice']:.0f} "
          f"t1_mape_fast_noisy={max(fast_n['t1_blood'], fast_n['t1_myo']):.1f} "
          f"t2_mape_fast_noisy={max(fast_n['t2_blood'], fast_n['t2_myo']):.1f}")


if __name__ == "__main__":
    main()
