"""nnunetv2-physaug: physics-grounded contrast augmentation for nnU-Net v2.

Heavy parts (nnU-Net, diffusers) are imported lazily by the submodules that need them, so that
``import nnunetv2_physaug.physics`` stays cheap.
"""
from __future__ import annotations

__version__ = "0.1.0"
