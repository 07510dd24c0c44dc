"""Time ContrastRenderer.render per family and preset on synthetic cardiac-like maps (no arguments).

Prints ms per render for a 256×256 patch and a 10×256×256 volume, single-threaded (as in an
nnU-Net data-loader worker). Each figure is the best of several batches of this process's CPU
time (time.process_time), so that other processes competing for the cores inflate it as little
as possible; wall time on an idle core is about the same.
"""
from __future__ import annotations

import time

import numpy as np
import torch

from nnunetv2_physaug.contrast import PRESETS, ContrastRenderer, load_protocol


def synthetic_maps(shape: tuple[int, ...], seed: int = 0):
    """Blood disc (label 3), myocardium ring (label 2) and muscle-like background, 1.5 T values."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[: shape[-2], : shape[-1]]
    r = np.hypot(y - shape[-2] / 2, x - shape[-1] / 2)
    labels = np.where(r < 30, 3, np.where(r < 42, 2, 0)).astype(np.int16)
    t1 = np.choose(labels // 2 + (labels == 3), [860.0, 1000.0, 1550.0]).astype(np.float32)
    t2 = np.choose(labels // 2 + (labels == 3), [30.0, 50.0, 270.0]).astype(np.float32)
    m0 = np.choose(labels // 2 + (labels == 3), [0.75, 0.8, 0.95]).astype(np.float32)
    lead = shape[:-2]
    noise = 1 + 0.02 * rng.standard_normal(shape).astype(np.float32)
    b = lambda a: np.ascontiguousarray(np.broadcast_to(a, shape))  # noqa: E731
    return (torch.from_numpy(b(m0) * noise), torch.from_numpy(b(t1) * noise), torch.from_numpy(b(t2) * noise),
            torch.from_numpy(b(labels).copy()))


def time_render(renderer: ContrastRenderer, maps, family: str, reps: int, batches: int = 5) -> float:
    m0, t1, t2, labels = maps
    valid = labels >= 0
    rng = np.random.default_rng(0)
    renderer.render(m0, t1, t2, rng, labels=labels, valid=valid, family=family)  # warm-up
    best = float("inf")
    for _ in range(batches):
        t = time.process_time()
        for _ in range(reps):
            renderer.render(m0, t1, t2, rng, labels=labels, valid=valid, family=family)
        best = min(best, (time.process_time() - t) / reps)
    return best * 1e3


def main(argv=None) -> None:
    import argparse

    argparse.ArgumentParser(prog="scripts/bench_render.py", description=__doc__,
                            formatter_class=argparse.RawDescriptionHelpFormatter).parse_args(argv)  # --help
    torch.set_num_threads(1)
    shapes = {"256x256": (256, 256), "10x256x256": (10, 256, 256)}
    maps = {k: synthetic_maps(s) for k, s in shapes.items()}
    print(f"{'preset':8s} {'family':22s} " + " ".join(f"{k + ' ms':>14s}" for k in shapes))
    for preset in PRESETS:
        protocol = load_protocol(preset)
        renderer = ContrastRenderer(protocol)
        for spec in protocol.families:
            ms = [time_render(renderer, maps[k], spec.family, reps=40 if k == "256x256" else 4) for k in shapes]
            print(f"{preset:8s} {spec.family:22s} " + " ".join(f"{v:14.3f}" for v in ms))


if __name__ == "__main__":
    main()
