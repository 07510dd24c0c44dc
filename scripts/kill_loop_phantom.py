#!/usr/bin/env python
"""By hand: 24 SIGKILLs of `physaug-phantom -o ph --seed 4 --overwrite` over a seed-1 phantom, at random moments
around its final swap (0-6 ms after its last staged dataset.json appears); after each, a plain rerun's recovery
must leave one whole phantom (every dataset.json and the summary of one seed) and no leftovers. Prints each kill
and the count of mixed phantoms (must be 0); tests/test_phantom.py kills it before each rename of the swap.

Run: .venv/bin/python scripts/kill_loop_phantom.py (it uses the tests' support package, tests/support/).
"""
from pathlib import Path
import argparse
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time

REPO = Path(__file__).resolve().parents[1]


def main(argv=None) -> None:
    argparse.ArgumentParser(prog="scripts/kill_loop_phantom.py", description=__doc__,
                            formatter_class=argparse.RawDescriptionHelpFormatter).parse_args(argv)
    sys.path.insert(0, str(REPO / "tests"))  # the tests' support package (fake data, the kill helpers)
    from support.kills import phantom_seeds
    from nnunetv2_physaug.fileio import recover_together
    from nnunetv2_physaug.phantom import write_phantom_datasets
    from nnunetv2_physaug.phantom.writer import COMMIT_JOURNAL



    exe = Path(sys.executable).parent / "physaug-phantom"
    root = Path(tempfile.mkdtemp())
    base = root / "base"
    write_phantom_datasets(base, n_train=6, n_test=6, size=64, seed=1, progress=False)
    rng = random.Random(0)
    mixed = outcomes_old = outcomes_new = 0
    for i in range(24):
        out = root / f"k{i}"
        shutil.copytree(base, out)
        proc = subprocess.Popen([str(exe), "-o", str(out), "--n-train", "6", "--n-test", "6", "--size", "64", "--seed",
                                 "4", "--overwrite"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        delay = rng.uniform(0.0, 0.006)
        while proc.poll() is None:  # wait for the last staged dataset.json, or the journal
            staged = list(out.glob(".Dataset907_*.partial-*/dataset.json"))
            if (out / COMMIT_JOURNAL).exists() or staged:
                time.sleep(delay)
                break
            pass
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        rc = proc.wait()
        state = recover_together(out / COMMIT_JOURNAL)
        try:
            write_phantom_datasets(out, n_train=6, n_test=6, size=64, seed=9, progress=False)  # the plain run
            refused = False
        except FileExistsError:
            refused = True
        seeds = phantom_seeds(out)
        leftovers = seeds.pop("leftovers")
        whole = len(set(seeds.values())) == 1 and len(seeds) == 9
        mixed += not whole
        outcomes_old += whole and seeds["summary"] == 1
        outcomes_new += whole and seeds["summary"] == 4
        print(f"kill {i:2d} after +{delay * 1000:.0f} ms (rc {rc}): recovery {state}, "
              f"seeds {sorted(set(seeds.values()))}, whole {whole}, leftovers {leftovers}, "
              f"plain rerun refused {refused}", flush=True)
        shutil.rmtree(out)
    print(f"24 kills: mixed phantoms {mixed}, old phantom kept {outcomes_old}, new phantom completed {outcomes_new}")
    shutil.rmtree(root)


if __name__ == "__main__":
    main()
