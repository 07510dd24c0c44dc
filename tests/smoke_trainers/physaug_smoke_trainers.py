"""Small-budget trainers for CPU tests, found through nnUNet_extTrainer (tests add this folder).

Each pair differs only in the augmentation, like nnUNetTrainer_Xepochs / nnUNetTrainerPhysAug_Xepochs;
a budget is two class attributes.
"""
import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from nnunetv2_physaug.nnunet.trainers import nnUNetTrainerPhysAug


class _BudgetTrainer(nnUNetTrainer):
    """Stock nnU-Net with ``budget_epochs`` x ``budget_iterations`` training iterations."""

    budget_epochs = 2
    budget_iterations = 4

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device('cuda')):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs = self.budget_epochs
        self.num_iterations_per_epoch = self.budget_iterations
        self.num_val_iterations_per_epoch = 2


class nnUNetTrainer_smoke(_BudgetTrainer):
    """2 x 4 iterations: the pipeline runs, nothing is learnt."""


class nnUNetTrainerPhysAug_smoke(nnUNetTrainerPhysAug, nnUNetTrainer_smoke):
    pass


class nnUNetTrainer_e2e(_BudgetTrainer):
    """The budget of ``tests/test_e2e.py``: 40 x 50 = 2000 iterations, where PhysAug's margin on the unseen
    phantom contrasts was measured across phantom seeds (see that test; at 1000 it lost on one seed of 3)."""

    budget_epochs = 40
    budget_iterations = 50


class nnUNetTrainerPhysAug_e2e(nnUNetTrainerPhysAug, nnUNetTrainer_e2e):
    pass


# the peers (nnunetv2_physaug.nnunet.peer_trainers) at the smoke budget
from nnunetv2_physaug.nnunet.peer_trainers import (nnUNetTrainerGINIPA, nnUNetTrainerLocationScaleSBF,  # noqa: E402
                                                   nnUNetTrainerPhysAugLocationScaleHalf, nnUNetTrainerPhysAugGINIPA)


class nnUNetTrainerGINIPA_smoke(nnUNetTrainerGINIPA, nnUNetTrainer_smoke):
    pass


class nnUNetTrainerLocationScaleSBF_smoke(nnUNetTrainerLocationScaleSBF, nnUNetTrainer_smoke):
    pass


class nnUNetTrainerPhysAugGINIPA_smoke(nnUNetTrainerPhysAugGINIPA, nnUNetTrainer_smoke):
    pass


class nnUNetTrainerPhysAugLocationScaleHalf_smoke(nnUNetTrainerPhysAugLocationScaleHalf, nnUNetTrainer_smoke):
    pass
