#!/usr/bin/env python
"""Blood / normal-myocardium ratios of renders beside real LGE, T2 and bSSFP (MyoPS); see
``nnunetv2_physaug/harness/realism.py`` or ``scripts/check_realism.py --help``."""
from nnunetv2_physaug.harness.realism import main

if __name__ == "__main__":
    main()
