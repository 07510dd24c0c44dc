"""Benchmark: PhysAug training data loader vs nnU-Net's stock loader, same data, same process.

Makes and preprocesses its own phantom dataset in a temporary folder (or uses --root), builds the
training data loader of ``nnUNetTrainer`` and of ``nnUNetTrainerPhysAug`` three times: at the trainer's
default render probability p (the ``wide`` preset renders 70 % of loads and hands nnU-Net the real
image otherwise), at p = 1 (every load rendered: the cost of a rendered sample) and at p = 0 (the
wrapper without rendering: what it saves of nnU-Net's own work by keeping case files open, so that
p = 1 against p = 0 is the cost of rendering alone). Single-threaded
(nnUNet_n_proc_DA=0, one torch thread); the same number of batches of each, interleaved in short rounds
(the order rotating) so that machine noise hits all alike; the spread of the per-round ratios is printed
beside the totals. Prints the throughput of each and, as its last line,
``loader_ratio=<PhysAug at default p / stock, batches per s> loader_ratio_p1=<PhysAug at p = 1 / stock>
p_default=<p>``, after a line ``wrapper_ratio_p0=<PhysAug at p = 0 / stock> render_ratio_p1=<p = 1 / p = 0>``.

``--also TRAINER ...`` adds other trainers' loaders to the same rounds at their defaults (one
``also_ratio TRAINER=<stock / it>`` line each): the peers (GIN-IPA, location-scale) augment in the
training step, not in the loader, so theirs is the stock loader (ratio 1 up to timing noise); DA5 changes
nnU-Net's own transforms; PhysAug combined with a peer has PhysAug's loader.

``--profile`` first times the stages of a sample in ms (stock loader and PhysAug at p = 1, again
interleaved): nnU-Net's own work (opening the case, cropping image and seg, its transforms, the
rest of batch assembly) and PhysAug's (the case-level parameter draw, made 16 at a time per case by
``DrawBank`` and so timed as the refills spread over the loads, the crop render with its signal equation and
normalisation, the B1 / bias fields and the noise). Timers wrap the functions
by name, so the profile adds a few microseconds per call; the ratio lines come from an unwrapped run.

Run: .venv/bin/python scripts/bench_loader.py [--batches 10] [--rounds 30] [--trainer nnUNetTrainerPhysAug]
     [--also nnUNetTrainerGINIPA nnUNetTrainerDA5 ...] [--profile]
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _prepare(root: Path, size: int, n_train: int) -> str:
    from nnunetv2_physaug.nnunet.env import nnunet_paths
    from nnunetv2_physaug.phantom import write_phantom_datasets

    paths = nnunet_paths(root)
    os.environ.update(paths)
    raw = Path(paths["nnUNet_raw"])
    summary_file = raw / "phantom_summary.json"
    if not summary_file.is_file():
        write_phantom_datasets(raw, n_train=n_train, n_test=1, seed=0, size=size, first_id=950)
    dataset = next(p.name for p in raw.iterdir() if p.name.startswith("Dataset950_"))
    plans = Path(paths["nnUNet_preprocessed"]) / dataset / "nnUNetPlans.json"
    if not plans.is_file():
        env = {**os.environ, "nnUNet_def_n_proc": "1", "nnUNet_n_proc_DA": "1"}
        bin_dir = Path(sys.executable).parent
        subprocess.run([str(bin_dir / "nnUNetv2_plan_and_preprocess"), "-d", "950", "-c", "2d", "-np", "1",
                        "-npfp", "1"], env=env, check=True, capture_output=True)
    return dataset


def _loader(trainer_name: str, dataset: str, p_render=None, plans_name: str = "nnUNetPlans",
            keep_files_open: bool = True):
    import torch
    from batchgenerators.utilities.file_and_folder_operations import load_json
    from nnunetv2.paths import nnUNet_preprocessed
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

    pp = Path(os.fspath(nnUNet_preprocessed)) / dataset
    plans = load_json(str(pp / f"{plans_name}.json"))
    plans["continue_training"] = False
    cls = recursive_find_trainer_class_by_name(trainer_name)
    trainer = cls(plans, "2d", 0, load_json(str(pp / "dataset.json")), torch.device("cpu"))
    if p_render is not None:
        trainer.physaug_p_render = p_render
    if hasattr(trainer, "physaug_keep_files_open"):
        trainer.physaug_keep_files_open = keep_files_open
    trainer.initialize()
    dl_train, _ = trainer.get_dataloaders()
    return dl_train


def _seed_global_streams(seed: int) -> None:
    """Seed the streams nnU-Net's loader and transforms draw from (case choice, crop position, spatial
    and intensity augmentation: numpy's and torch's global RNGs), so that every loader of a round gets
    the same cases, crops and augmentations and the comparison is paired: what differs is PhysAug's
    rendering (which draws from its own per-process generator), not the luck of the draw (a batch with
    a rotation costs ~2x one without)."""
    import random

    import numpy as np
    import torch
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _time_batches(loader, n: int) -> float:
    t0 = time.perf_counter()
    for _ in range(n):
        next(loader)
    return time.perf_counter() - t0


class _StageTimer:
    """Accumulates wall time (s) per stage name; :meth:`wrap` times every call of a function."""

    def __init__(self):
        self.total: dict[str, float] = {}
        self.active = True

    def add(self, stage: str, seconds: float) -> None:
        if self.active:
            self.total[stage] = self.total.get(stage, 0.0) + seconds

    def wrap(self, fn, stage):
        """``fn`` timed under ``stage`` (a name, or a callable of the call's arguments giving one)."""
        def timed(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.add(stage(*args, **kwargs) if callable(stage) else stage, time.perf_counter() - t0)
        timed.__wrapped__ = fn
        return timed


def _instrument(loaders: dict, timer: _StageTimer) -> list:
    """Wrap the stage functions of the loaders' code with ``timer``; returns the undo list."""
    import nnunetv2.training.dataloading.data_loader as nnunet_dl
    from nnunetv2_physaug.contrast import renderer as renderer_mod
    from nnunetv2_physaug.nnunet import dataset as physaug_ds

    undo = []

    def patch(owner, name, stage):
        old = getattr(owner, name)
        undo.append((owner, name, old))
        setattr(owner, name, timer.wrap(old, stage))

    # the loader crops the image with pad value 0 and the seg with -1; a PhysAug crop renders inside
    patch(nnunet_dl, "crop_and_pad_nd",
          lambda image, bbox, pad_value=0, *a, **k: "crop seg" if pad_value == -1 else "crop image (incl. render)")
    patch(physaug_ds.PhysAugTrainingDataset, "load_case", "load_case (physaug incl. base)")
    patch(physaug_ds.RenderOnCrop, "__getitem__", "render crop (total)")
    patch(physaug_ds.RenderOnCrop, "draw_on_case", "parameter draw")
    patch(renderer_mod, "smooth_field", "fields (B1, bias, uptake)")
    patch(renderer_mod, "add_rician_noise", "noise")
    for dl in loaders.values():
        inner = getattr(dl, "data_loader", None) or getattr(dl, "generator", None) or dl
        base = inner._data.base if isinstance(inner._data, physaug_ds.PhysAugTrainingDataset) else inner._data
        patch(base, "load_case", "base load_case")
        if inner.transforms is not None:
            patch(inner, "transforms", "transforms")
    return undo


def _profile(loaders: dict, batches: int, rounds: int) -> None:
    """Print ms per sample of each stage for the stock and the p = 1 loader (interleaved rounds)."""
    timer = _StageTimer()
    undo = _instrument(loaders, timer)
    try:
        per = {}
        for k in ("stock", "p1"):
            per[k] = {}
        t = {"stock": 0.0, "p1": 0.0}
        for _ in range(rounds):
            for k in ("stock", "p1"):
                timer.total = {}
                t[k] += _time_batches(loaders[k], batches)
                for stage, sec in timer.total.items():
                    per[k][stage] = per[k].get(stage, 0.0) + sec
    finally:
        for owner, name, old in reversed(undo):
            setattr(owner, name, old)
    stock_inner = getattr(loaders["stock"], "data_loader", None) or getattr(loaders["stock"], "generator", None)
    n = batches * rounds * stock_inner.batch_size
    print(f"profile, ms per sample ({n} samples each; PhysAug at p = 1, every sample rendered):")
    for k, label in (("stock", "stock nnUNetTrainer"), ("p1", "PhysAug p = 1")):
        stages = per[k]
        ms = {s: 1000 * v / n for s, v in stages.items()}
        total = 1000 * t[k] / n
        if k == "p1":
            render = ms.get("render crop (total)", 0.0)
            ms["render: signal + normalise (rest)"] = (render - ms.get("parameter draw", 0.0) - ms.get("noise", 0.0)
                                                       - ms.get("fields (B1, bias, uptake)", 0.0))
            ms["crop image (excl. render)"] = ms.pop("crop image (incl. render)", 0.0) - render
            ms["load_case wrapper (excl. base)"] = ms.pop("load_case (physaug incl. base)", 0.0) - ms.get(
                "base load_case", 0.0)
        accounted = sum(v for s, v in ms.items() if s not in ("parameter draw", "noise", "fields (B1, bias, uptake)",
                                                              "render: signal + normalise (rest)"))
        ms["other (batch assembly, threadpool limits, timers)"] = total - accounted
        print(f"  {label}: {total:.3f} ms/sample")
        for s in sorted(ms, key=lambda s: -ms[s]):
            print(f"    {s:<52}: {ms[s]:7.3f}")


def main(argv=None) -> None:
    from ...cli.contract import run_reporting

    run_reporting("scripts/bench_loader.py", lambda: _main(argv), (ValueError, RuntimeError, KeyError))


def _main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="scripts/bench_loader.py", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, default=None, help="work folder (default: a temporary folder)")
    parser.add_argument("--batches", type=int, default=10, help="batches per loader per round")
    parser.add_argument("--rounds", type=int, default=30, help="interleaved rounds (short rounds, the loaders' "
                        "order rotating, so that drifts of a shared machine hit all loaders alike)")
    parser.add_argument("--size", type=int, default=128, help="phantom in-plane size (pixels)")
    parser.add_argument("--n-train", type=int, default=10, help="phantom training cases")
    parser.add_argument("--trainer", default="nnUNetTrainerPhysAug", help="PhysAug trainer to compare")
    parser.add_argument("--dataset", default=None, help="an nnU-Net dataset already preprocessed in "
                        "$nnUNet_preprocessed (e.g. Dataset913_MyoPS; the PhysAug trainer needs its tissue maps) "
                        "instead of the phantom")
    parser.add_argument("--plans", default="nnUNetPlans", help="plans identifier of --dataset (2d configuration)")
    parser.add_argument("--json", type=Path, default=None, help="also write the ratios (stock / each loader, "
                        "batches per s) and stock's ms per batch to this JSON file")
    parser.add_argument("--also", nargs="*", default=[], metavar="TRAINER",
                        help="more trainers whose loader joins the rounds at their defaults (e.g. the peers: "
                        "nnUNetTrainerGINIPA, nnUNetTrainerDA5); each gets a line also_ratio TRAINER=<x> against stock")
    parser.add_argument("--no-file-cache", action="store_true",
                        help="PhysAug's loaders open every case's files at each load, as stock nnU-Net's does "
                        "(physaug_keep_files_open = False): the ratios then compare the augmentation alone")
    parser.add_argument("--profile", action="store_true",
                        help="first print ms per sample of each loader stage (stock and PhysAug at p = 1)")
    args = parser.parse_args(argv)

    os.environ["nnUNet_n_proc_DA"] = "0"  # SingleThreadedAugmenter for both
    os.environ["nnUNet_def_n_proc"] = "1"
    from nnunetv2_physaug.nnunet.env import register_ext_trainers
    register_ext_trainers(experiments=True)
    import torch
    torch.set_num_threads(1)

    with tempfile.TemporaryDirectory() as tmp:
        dataset = args.dataset or _prepare(args.root or Path(tmp), args.size, args.n_train)
        from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name
        from nnunetv2_physaug.contrast import load_protocol
        cls = recursive_find_trainer_class_by_name(args.trainer)
        p_default = cls.physaug_p_render
        if p_default is None:
            p_default = load_protocol(cls.physaug_protocol).p_render
        keep = not args.no_file_cache
        loaders = {"stock": _loader("nnUNetTrainer", dataset, plans_name=args.plans),
                   "default": _loader(args.trainer, dataset, plans_name=args.plans, keep_files_open=keep),
                   "p1": _loader(args.trainer, dataset, p_render=1.0, plans_name=args.plans, keep_files_open=keep),
                   "p0": _loader(args.trainer, dataset, p_render=0.0, plans_name=args.plans, keep_files_open=keep)}
        loaders.update({name: _loader(name, dataset, plans_name=args.plans) for name in args.also})
        for dl in loaders.values():  # warm up: file cache, first allocations
            _time_batches(dl, 3)
        if args.profile:
            _profile({k: loaders[k] for k in ("stock", "default", "p1", "p0")}, args.batches, args.rounds)
        t = dict.fromkeys(loaders, 0.0)
        per_round = {k: [] for k in loaders}
        order = list(loaders)
        for r in range(args.rounds):
            for k in order[r % len(order):] + order[:r % len(order)]:
                _seed_global_streams(1000 + r)
                dt = _time_batches(loaders[k], args.batches)
                t[k] += dt
                per_round[k].append(dt)
        n = args.batches * args.rounds
        stock = loaders["stock"]
        inner = getattr(stock, "data_loader", None) or getattr(stock, "generator", None)
        bs = getattr(inner, "batch_size", "?")
        print(f"dataset {dataset}, batch size {bs}, {n} batches per loader, single-threaded")
        for k, label in (("stock", "stock nnUNetTrainer"), ("default", f"{args.trainer}, p = {p_default:g}"),
                         ("p1", f"{args.trainer}, p = 1"), ("p0", f"{args.trainer}, p = 0")):
            print(f"{label:<38}: {n / t[k]:8.2f} batches/s ({1000 * t[k] / n:7.1f} ms/batch)")
        import numpy as np
        for k, label in (("default", f"p = {p_default:g}"), ("p1", "p = 1"), ("p0", "p = 0")):
            ratios = np.array(per_round["stock"]) / np.array(per_round[k])
            lo, med, hi = np.percentile(ratios, (10, 50, 90))
            print(f"ratio per round at {label:<8}: median {med:.3f}, 10-90 % {lo:.3f}-{hi:.3f} ({args.rounds} rounds "
                  f"of {args.batches} batches)")
        for name in args.also:
            print(f"{name:<38}: {n / t[name]:8.2f} batches/s ({1000 * t[name] / n:7.1f} ms/batch)")
        for name in args.also:
            print(f"also_ratio {name}={t['stock'] / t[name]:.3f}")
        print(f"wrapper_ratio_p0={t['stock'] / t['p0']:.3f} render_ratio_p1={t['p0'] / t['p1']:.3f} "
              "(p = 0: the wrapper without rendering, against stock; p = 1 against p = 0: rendering alone)")
        if args.json is not None:
            from nnunetv2_physaug.fileio import atomic_write_json
            ratios = {args.trainer: t["stock"] / t["default"], **{name: t["stock"] / t[name] for name in args.also}}
            atomic_write_json(args.json, {"dataset": dataset, "plans": args.plans, "rounds": args.rounds,
                                          "batches_per_round": args.batches, "stock_ms_per_batch": 1000 * t["stock"] / n,
                                          "loader_ratio": ratios, "loader_ratio_p1": t["stock"] / t["p1"],
                                          "p_default": p_default})
        print(f"loader_ratio={t['stock'] / t['default']:.3f} loader_ratio_p1={t['stock'] / t['p1']:.3f} "
              f"p_default={p_default:g}")


if __name__ == "__main__":
    main()
