#!/usr/bin/env python
"""PhysAug's training data loader against nnU-Net's stock loader, same data, same process; see
``nnunetv2_physaug/harness/bench/loader.py`` or ``scripts/bench_loader.py --help``."""
from nnunetv2_physaug.harness.bench.loader import main

if __name__ == "__main__":
    main()
