"""Small-budget trainers for CPU tests, found through nnUNet_extTrainer (tests add this folder).

Each pair differs only in the augmentation, like nnUNetTrainer_Xepochs / nnUNetTrainerPhysAug_Xepochs;
a budget is two class attributes.
"""
import os

import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from nnunetv2_physaug.nnunet.trainers import nnUNetTrainerPhysAug


class _BudgetTrainer(nnUNetTrainer):
    """Stock nnU-Net with ``budget_epochs`` x ``budget_iterations`` training iterations."""

    budget_epochs = 2
    budget_iterations = 4
    #: nnU-Net's validation at the end of ``nnUNetv2_train`` (a pool of fresh interpreters predicting and
    #: scoring the fold's validation cases: about half of a smoke training's wall clock). The smoke runs test
    #: the pipeline around training and skip it; the e2e budget keeps it, so stock validation of a PhysAug
    #: trainer stays covered.
    final_validation = False

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device('cuda')):
        super().__init__(plans, configuration, fold, dataset_json, device)
        # nnUNetv2_train gives torch every core on CPU; scripts/test runs two workers with OMP_NUM_THREADS=1,
        # and two trainings of two threads each on two cores spend much of their time waiting for each other
        if os.environ.get("OMP_NUM_THREADS", "").isdigit():
            torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
        self.num_epochs = self.budget_epochs
        self.num_iterations_per_epoch = self.budget_iterations
        self.num_val_iterations_per_epoch = 2

    def on_epoch_end(self):
        # nnU-Net redraws progress.png (a matplotlib figure) after every epoch; the test budgets, with epochs
        # of a few seconds, draw it once, after the last epoch. Training is unchanged.
        if self.current_epoch == self.num_epochs - 1:
            return super().on_epoch_end()
        self.logger.plot_progress_png = lambda output_folder: None
        try:
            super().on_epoch_end()
        finally:
            del self.logger.plot_progress_png

    def perform_actual_validation(self, save_probabilities: bool = False):
        if self.final_validation:
            return super().perform_actual_validation(save_probabilities)
        self.print_to_log_file("final validation skipped (test budget trainer, final_validation = False)")


class nnUNetTrainer_smoke(_BudgetTrainer):
    """2 x 4 iterations: the pipeline runs, nothing is learnt."""


class nnUNetTrainerPhysAug_smoke(nnUNetTrainerPhysAug, nnUNetTrainer_smoke):
    pass


class nnUNetTrainer_e2e(_BudgetTrainer):
    """The budget of ``tests/test_e2e.py``: 40 x 50 = 2000 iterations, where PhysAug's margin on the unseen
    phantom contrasts was measured across phantom seeds (see that test; at 1000 it lost on one seed of 3)."""

    budget_epochs = 40
    budget_iterations = 50
    final_validation = True


class nnUNetTrainerPhysAug_e2e(nnUNetTrainerPhysAug, nnUNetTrainer_e2e):
    pass


# the peers (nnunetv2_physaug.nnunet.peer_trainers) at the smoke budget
from nnunetv2_physaug.nnunet.peer_trainers import (nnUNetTrainerGINIPA, nnUNetTrainerLocationScale,  # noqa: E402
                                                   nnUNetTrainerPhysAugLocationScaleHalf, nnUNetTrainerPhysAugGINIPA)


class nnUNetTrainerGINIPA_smoke(nnUNetTrainerGINIPA, nnUNetTrainer_smoke):
    pass


class nnUNetTrainerLocationScale_smoke(nnUNetTrainerLocationScale, nnUNetTrainer_smoke):
    pass


class nnUNetTrainerPhysAugGINIPA_smoke(nnUNetTrainerPhysAugGINIPA, nnUNetTrainer_smoke):
    pass


class nnUNetTrainerPhysAugLocationScaleHalf_smoke(nnUNetTrainerPhysAugLocationScaleHalf, nnUNetTrainer_smoke):
    pass
