"""Shim imported by nnU-Net's trainer lookup when ``physaug-env --experiments`` added this folder to
``nnUNet_extTrainer``; re-exports the ablation trainers (:mod:`nnunetv2_physaug.nnunet.experiments`)."""
from nnunetv2_physaug.nnunet.experiments import *  # noqa: F401,F403
