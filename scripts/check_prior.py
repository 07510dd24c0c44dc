#!/usr/bin/env python
"""Does a tissue-map prior generate tissue? Unconditional samples against phantom training data; see
``nnunetv2_physaug/harness/checks/prior.py`` or ``scripts/check_prior.py --help``."""
from nnunetv2_physaug.harness.checks.prior import main

if __name__ == "__main__":
    main()
