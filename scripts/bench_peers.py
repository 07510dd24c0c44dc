#!/usr/bin/env python
"""Cost of the peers' batch augmentations (GIN-IPA, RandConv, location-scale) per image on the CPU; see
``nnunetv2_physaug/harness/bench/peers.py`` or ``scripts/bench_peers.py --help``."""
from nnunetv2_physaug.harness.bench.peers import main

if __name__ == "__main__":
    main()
