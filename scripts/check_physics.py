#!/usr/bin/env python
"""Every closed-form signal equation against the independent Bloch simulator; see
``nnunetv2_physaug/checks/physics.py`` or ``scripts/check_physics.py --help``."""
from nnunetv2_physaug.checks.physics import main

if __name__ == "__main__":
    main()
