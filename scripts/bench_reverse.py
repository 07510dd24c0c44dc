#!/usr/bin/env python
"""The reverse-imaging estimators on phantom slices with known maps; see
``nnunetv2_physaug/harness/bench/reverse.py`` or ``scripts/bench_reverse.py --help``."""
from nnunetv2_physaug.harness.bench.reverse import main

if __name__ == "__main__":
    main()
