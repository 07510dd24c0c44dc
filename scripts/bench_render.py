#!/usr/bin/env python
"""Time of ContrastRenderer.render per family and preset on synthetic cardiac-like maps; see
``nnunetv2_physaug/harness/bench/render.py`` or ``scripts/bench_render.py --help``."""
from nnunetv2_physaug.harness.bench.render import main

if __name__ == "__main__":
    main()
