"""Shim imported by nnU-Net's trainer lookup (``nnUNet_extTrainer``); re-exports the PhysAug trainers."""
from nnunetv2_physaug.nnunet.trainers import *  # noqa: F401,F403
