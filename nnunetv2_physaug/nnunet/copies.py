"""Every place where this package repeats a piece of nnU-Net's own code, and the nnU-Net source it repeats.

Where the plugin must do what a piece of nnU-Net does, but inside its own step (the peers' training steps,
scoring in one process, loading a case with its files kept open, normalising a render), the piece is
repeated and marked in the code with ``Copied from nnU-Net 2.8.1: <origin>``. This table is the list of
those places: for each, nnU-Net's function (``module:qualified.name``) and the SHA-256 of its source in the
nnU-Net release it was read from. ``tests/test_nnunet_copies.py`` recomputes the hashes from the installed
nnU-Net: when an upgrade changes an original, the test names it, so the copy is read again against the new
code instead of drifting silently; and it checks that the markers in the code and this table agree.
"""
from __future__ import annotations

#: the nnU-Net release the copies were read from
NNUNET_VERSION = "2.8.1"

#: ``(file of ours, nnU-Net origin, sha256 of the origin's source, first 16 hex digits)``
COPIES: tuple[tuple[str, str, str], ...] = (
    ("nnunetv2_physaug/nnunet/peer_trainers.py",
     "nnunetv2.training.nnUNetTrainer.nnUNetTrainer:nnUNetTrainer.train_step", "c8993de84c8c419f"),
    ("nnunetv2_physaug/evaluate.py",
     "nnunetv2.evaluation.evaluate_predictions:compute_metrics_on_folder2", "c1980b1d8db09830"),
    ("nnunetv2_physaug/nnunet/open_cases.py",
     "nnunetv2.training.dataloading.nnunet_dataset:nnUNetDatasetBlosc2.load_case", "78e996392fbc232e"),
    ("nnunetv2_physaug/nnunet/render_on_crop.py",
     "nnunetv2.preprocessing.normalization.default_normalization_schemes:ZScoreNormalization.run",
     "ff73e1e3a8e1cd08"),
)
