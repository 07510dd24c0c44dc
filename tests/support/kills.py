"""The phantom killed at each rename of its final swap, and the seeds of what a phantom folder holds."""
from __future__ import annotations

import json
from pathlib import Path


#: run by a subprocess: write the phantom (seed 4, --overwrite) and SIGKILL the process just before the
#: k-th rename of commit_together (argv: OUT K; K past the last rename: no kill)
PHANTOM_KILLER = """
import os, signal, sys
from nnunetv2_physaug import fileio
from nnunetv2_physaug.phantom import writer
out, k = sys.argv[1], int(sys.argv[2])
real_commit, real_replace = fileio.commit_together, os.replace
def commit(staged, journal):
    count = [0]
    def replace(a, b):
        if count[0] == k:
            os.kill(os.getpid(), signal.SIGKILL)
        count[0] += 1
        real_replace(a, b)
    os.replace = replace
    try:
        real_commit(staged, journal)
    finally:
        os.replace = real_replace
writer.commit_together = commit
writer.write_phantom_datasets(out, n_train=2, n_test=1, size=32, seed=4, overwrite=True, progress=False)
"""


def phantom_seeds(out: Path) -> dict[str, int]:
    """``{dataset folder or summary: seed}`` of a phantom folder (its dataset.json files and summary), and any
    hidden leftover (staging, backup, journal) under the key ``"leftovers"`` as a count."""
    seeds = {d.name: json.loads((d / "dataset.json").read_text())["physaug_phantom"]["seed"]
             for d in sorted(out.glob("Dataset*")) if (d / "dataset.json").is_file()}
    summary = out / "phantom_summary.json"
    if summary.is_file():
        seeds["summary"] = json.loads(summary.read_text())["seed"]
    seeds["leftovers"] = len([p for p in out.iterdir() if p.name.startswith(".")])
    return seeds
