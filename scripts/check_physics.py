#!/usr/bin/env python
"""Every closed-form signal equation against the independent Bloch simulator; see
``nnunetv2_physaug/harness/checks/physics.py`` or ``scripts/check_physics.py --help``."""
from nnunetv2_physaug.harness.checks.physics import main

if __name__ == "__main__":
    main()
