#!/usr/bin/env python
"""Benchmark: PhysAug training data loader vs nnU-Net's stock loader, same data, same process.

Makes and preprocesses its own phantom dataset in a temporary folder (or uses --root), builds the
training data loader of ``nnUNetTrainer`` and of ``nnUNetTrainerPhysAug`` (single-threaded:
nnUNet_n_proc_DA=0, one torch thread) and times the same number of batches of each, interleaved in
rounds so that machine noise hits both alike. Prints the throughput of each and, as its last line,
``loader_ratio=<PhysAug batches per s / stock batches per s>``.

Run: .venv/bin/python scripts/bench_loader.py [--batches 60] [--rounds 3] [--trainer nnUNetTrainerPhysAug]
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


def _loader(trainer_name: str, dataset: str):
    import torch
    from batchgenerators.utilities.file_and_folder_operations import load_json
    from nnunetv2.paths import nnUNet_preprocessed
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

    pp = Path(os.fspath(nnUNet_preprocessed)) / dataset
    plans = load_json(str(pp / "nnUNetPlans.json"))
    plans["continue_training"] = False
    cls = recursive_find_trainer_class_by_name(trainer_name)
    trainer = cls(plans, "2d", 0, load_json(str(pp / "dataset.json")), torch.device("cpu"))
    trainer.initialize()
    dl_train, _ = trainer.get_dataloaders()
    return dl_train


def _time_batches(loader, n: int) -> float:
    t0 = time.perf_counter()
    for _ in range(n):
        next(loader)
    return time.perf_counter() - t0


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, default=None, help="work folder (default: a temporary folder)")
    parser.add_argument("--batches", type=int, default=40, help="batches per loader per round")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds")
    parser.add_argument("--size", type=int, default=128, help="phantom in-plane size (pixels)")
    parser.add_argument("--n-train", type=int, default=10, help="phantom training cases")
    parser.add_argument("--trainer", default="nnUNetTrainerPhysAug", help="PhysAug trainer to compare")
    args = parser.parse_args(argv)

    os.environ["nnUNet_n_proc_DA"] = "0"  # SingleThreadedAugmenter for both
    os.environ["nnUNet_def_n_proc"] = "1"
    from nnunetv2_physaug.nnunet.env import register_ext_trainers
    register_ext_trainers()
    import torch
    torch.set_num_threads(1)

    with tempfile.TemporaryDirectory() as tmp:
        root = args.root or Path(tmp)
        dataset = _prepare(root, args.size, args.n_train)
        stock = _loader("nnUNetTrainer", dataset)
        phys = _loader(args.trainer, dataset)
        for dl in (stock, phys):  # warm up: file cache, first allocations
            _time_batches(dl, 3)
        t_stock = t_phys = 0.0
        for _ in range(args.rounds):
            t_stock += _time_batches(stock, args.batches)
            t_phys += _time_batches(phys, args.batches)
        n = args.batches * args.rounds
        bs = stock.generator.batch_size if hasattr(stock, "generator") else "?"
        print(f"dataset {dataset}, batch size {bs}, {n} batches per loader, single-threaded")
        print(f"stock  nnUNetTrainer        : {n / t_stock:8.2f} batches/s ({1000 * t_stock / n:7.1f} ms/batch)")
        print(f"physaug {args.trainer:<20}: {n / t_phys:8.2f} batches/s ({1000 * t_phys / n:7.1f} ms/batch)")
        print(f"loader_ratio={t_stock / t_phys:.3f}")


if __name__ == "__main__":
    main()
