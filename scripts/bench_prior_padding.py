#!/usr/bin/env python
"""Cost of the diffusion samplers' fixed-size network evaluations; see
``nnunetv2_physaug/harness/bench/prior_padding.py`` or ``scripts/bench_prior_padding.py --help``."""
from nnunetv2_physaug.harness.bench.prior_padding import main

if __name__ == "__main__":
    main()
