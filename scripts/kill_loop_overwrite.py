#!/usr/bin/env python
"""By hand (issue #12): 20 SIGKILLs of `physaug-reverse --overwrite --seed 1` into a seed-0 folder; counts cases
the folder calls complete whose maps are not the seed-1 reference (must be 0).

Run: .venv/bin/python scripts/kill_loop_overwrite.py (it uses the tests' support package, tests/support/).
"""
from pathlib import Path
import argparse
import random
import shutil
import sys
import tempfile

REPO = Path(__file__).resolve().parents[1]


def main(argv=None) -> None:
    argparse.ArgumentParser(prog="scripts/kill_loop_overwrite.py", description=__doc__,
                            formatter_class=argparse.RawDescriptionHelpFormatter).parse_args(argv)
    sys.path.insert(0, str(REPO / "tests"))  # the tests' support package (fake data, the kill helpers)
    from support.reverse_inputs import interrupted_overwrite, make_dataset, N_CASES
    from nnunetv2_physaug.reverse import run_reverse

    root = Path(tempfile.mkdtemp())
    images = make_dataset(root, N_CASES, labels=True)
    run_reverse(images, root / "seed0", seed=0, progress=False)
    run_reverse(images, root / "seed1", seed=1, progress=False)
    rng = random.Random(0)
    tot_mixed = tot_two = tot_incomplete = 0
    for i in range(20):
        d = rng.uniform(0.0, 2.0)
        r = interrupted_overwrite(root / f"k{i}", images, root / "seed0", root / "seed1", d)
        tot_mixed += len(r["mixed"]); tot_two += len(r["two_runs"]); tot_incomplete += len(r["incomplete"])
        print(f"kill {i:2d} after {d:.2f} s: complete {len(r['complete'])} incomplete {len(r['incomplete'])} "
              f"files-from-both-runs {r['two_runs']} (all incomplete: {set(r['two_runs']) <= set(r['incomplete'])}) "
              f"mixed {r['mixed']}", flush=True)
    print(f"20 kills: mixed cases {tot_mixed}, cases with files of both runs {tot_two} (all "
          f"reported incomplete), incomplete {tot_incomplete}")
    shutil.rmtree(root)


if __name__ == "__main__":
    main()
