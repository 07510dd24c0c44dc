"""Shim imported by nnU-Net's trainer lookup (``nnUNet_extTrainer``); re-exports the PhysAug trainers and
their peers (GIN-IPA, location-scale, DA5 lengths)."""
from nnunetv2_physaug.nnunet.trainers import *  # noqa: F401,F403
from nnunetv2_physaug.nnunet.peer_trainers import *  # noqa: F401,F403
