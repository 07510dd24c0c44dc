#!/usr/bin/env python
"""Real cross-sequence benchmark on MyoPS 2020 (bSSFP training, real C0/LGE/T2 tests); see
``nnunetv2_physaug/harness/benchmark_real.py`` or ``scripts/bench_real.py --help``."""
from nnunetv2_physaug.harness.benchmark_real import main

if __name__ == "__main__":
    main()
