"""The public nnU-Net v2 trainers with physics-grounded contrast augmentation.

Stock nnU-Net finds these through ``nnUNet_extTrainer`` (``eval "$(physaug-env)"``)::

    nnUNetv2_train DATASET 2d FOLD -tr nnUNetTrainerPhysAug
    nnUNetv2_predict -i NEW_DOMAIN -o OUT -d DATASET -c 2d -tr nnUNetTrainerPhysAug -f FOLD

Only the *training* dataset is wrapped (:class:`~nnunetv2_physaug.nnunet.dataset.PhysAugTrainingDataset`):
plans, preprocessed data, splits, validation and inference are exactly a baseline ``nnUNetTrainer``'s.

One class, one experiment (nnU-Net's convention): everything that changes what is rendered is a class
attribute, so a variant is a small subclass and gets its own results folder:

- ``physaug_protocol``: preset name (``wide``, ``wide_v2``, ``paper``, ...) or protocol file.
- ``physaug_protocol_settings``: ``FAMILY.PARAM=VALUE`` settings on top of the protocol
  (:func:`nnunetv2_physaug.contrast.protocol_with_settings`).
- ``physaug_p_render``: probability that a training load is rendered (None: the protocol's value).
- ``physaug_stats``: "case" or "patch" normalisation statistics.
- ``physaug_compute_missing``: compute missing tissue maps at training start, on the training device,
  into the maps folder (default on; off: a missing case is an error that names it).
- ``physaug_prior``: diffusion prior folder used for those missing maps (None: the weight-free estimator).
- tissue maps are read from ``$nnUNet_raw/DatasetXXX/tissueMapsTr`` (a symbolic link there may point to
  another disk); every fold folder records the maps' identity (``physaug_run.json``).

Each public trainer exists at every stock nnU-Net length (``nnUNetTrainerPhysAug_5epochs``, ...; :mod:`.lengths`).
Ablations of the realism options live in :mod:`.experiments` (opt-in: ``physaug-env --experiments``).
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from ..maps.folder import CacheMismatchError, TissueMapFolder
from .env import require_nnunet_paths
from .setup_checks import TrainerSetupError, check_dataset_fits, check_physaug_attributes
from .dataset import PhysAugTrainingDataset
from .lengths import add_length_variants

DEFAULT_MAPS_SUBDIR = "tissueMapsTr"


class MissingTissueMapsError(TrainerSetupError):
    """Training cases have no tissue maps (and computing them is switched off, or cannot add them)."""


class nnUNetTrainerPhysAug(nnUNetTrainer):
    """nnU-Net's default trainer plus a random physics-rendered contrast per training load (``wide`` preset)."""

    physaug_protocol: str = "wide"
    physaug_protocol_settings: tuple[str, ...] = ()
    physaug_p_render: Optional[float] = None
    physaug_stats: str = "case"
    physaug_use_labels: bool = True
    physaug_compute_missing: bool = True
    physaug_prior: Optional[str] = None
    #: keep each loader process's case files open (nnunet/open_cases.py); off: every load opens them as
    #: nnU-Net's dataset does (the loader benchmark's way to compare the augmentation alone)
    physaug_keep_files_open: bool = True

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        # nnU-Net's signature, parameter for parameter: it records them by name (my_init_kwargs)
        super().__init__(plans, configuration, fold, dataset_json, device)
        # before nnU-Net reads any data: a wrong setting or an unsupported dataset ends here, with one line
        check_physaug_attributes(self)
        check_dataset_fits(self)

    # --- where things are -------------------------------------------------------------------
    def physaug_raw_dataset_folder(self) -> Path:
        raw = require_nnunet_paths(which=("nnUNet_raw",))["nnUNet_raw"]
        return Path(raw) / self.plans_manager.dataset_name

    def physaug_maps_dir(self) -> Path:
        return self.physaug_raw_dataset_folder() / DEFAULT_MAPS_SUBDIR

    def _raw_images(self) -> dict[str, str]:
        """{case: path of its channel-0 raw image}, for shape/affine checks (empty if raw data is absent)."""
        from nnunetv2.utilities.utils import get_filenames_of_train_images_and_targets
        raw = self.physaug_raw_dataset_folder()
        if not raw.is_dir():
            return {}
        files = get_filenames_of_train_images_and_targets(str(raw), self.dataset_json)
        return {k: v["images"][0] for k, v in files.items()}

    def _input_digests(self, cases: list[str]) -> dict[str, dict]:
        """``{case: input_digest}`` of the raw image and label of each case (maps of other inputs are stale);
        empty when the raw dataset is absent."""
        from ..maps.folder import input_digest

        images = self._raw_images()
        labels_dir = self.physaug_raw_dataset_folder() / "labelsTr"
        ending = self.dataset_json.get("file_ending", ".nii.gz")
        out = {}
        for c in cases:
            if c in images:
                label = labels_dir / f"{c}{ending}"
                out[c] = input_digest(images[c], label if label.is_file() else None)
        return out

    # --- maps ----------------------------------------------------------------------------------
    def physaug_prepare_maps(self, cases: list[str]) -> Path:
        """Make sure every training case has raw maps, then align them to this configuration."""
        from ..maps.align import align_dataset_maps

        maps_dir = self.physaug_maps_dir()
        missing = TissueMapFolder(maps_dir).missing(cases, inputs=self._input_digests(cases))
        if missing:
            if self.physaug_compute_missing:
                self._compute_missing_maps(maps_dir, missing)
            else:
                shown = ", ".join(missing[:8]) + (f" and {len(missing) - 8} more" if len(missing) > 8 else "")
                raise MissingTissueMapsError(
                    f"{len(missing)} training case(s) have no complete tissue maps in {maps_dir} (missing, left "
                    f"unfinished by an interrupted run, or made from an image or label file replaced since): "
                    f"{shown}. Make them with\n"
                    f"    physaug-reverse -i {self.physaug_raw_dataset_folder() / 'imagesTr'} -o {maps_dir}\n"
                    f"(or link {maps_dir} to the folder that holds them).", type(self).__name__)
        return align_dataset_maps(maps_dir, self.preprocessed_dataset_folder_base, self.plans_manager,
                                  self.configuration_manager, self.dataset_json, cases,
                                  raw_images=self._raw_images(), verbose=self.local_rank == 0)

    def _compute_missing_maps(self, maps_dir: Path, cases: list[str]) -> None:
        from ..reverse import fill_missing_maps
        self.print_to_log_file(f"PhysAug: computing tissue maps for {len(cases)} case(s) on {self.device} "
                               f"into {maps_dir}")
        raw = self.physaug_raw_dataset_folder()
        labels = raw / "labelsTr"
        try:
            written = fill_missing_maps(raw / "imagesTr", maps_dir, cases, device=str(self.device),
                                        prior=self.physaug_prior,
                                        labels_dir=labels if labels.is_dir() else None)
        except CacheMismatchError as e:
            # typically an interrupted physaug-reverse (e.g. --overwrite with other options): its unfinished
            # cases are incomplete, and the trainer's own estimator settings are not the folder's
            raise MissingTissueMapsError(
                f"{len(cases)} training case(s) have no complete tissue maps in {maps_dir} ({', '.join(cases[:8])}"
                f"{' ...' if len(cases) > 8 else ''}), and the trainer cannot add them: {e}\nFinish the folder "
                f"with the physaug-reverse command that made it (a rerun resumes).", type(self).__name__) from e
        self.print_to_log_file(f"PhysAug: wrote tissue maps of {len(written)} case(s)")

    # --- the one hook into nnU-Net's data path ---------------------------------------------------
    def get_tr_and_val_datasets(self):
        dataset_tr, dataset_val = super().get_tr_and_val_datasets()
        cases = list(dataset_tr.identifiers)
        # one process aligns, the others wait (multi-GPU DDP)
        if self.local_rank == 0:
            folder = self.physaug_prepare_maps(cases)
        if self.is_ddp:
            torch.distributed.barrier()
        if self.local_rank != 0:
            folder = self.physaug_prepare_maps(cases)  # all up to date now: only checks
        wrapped = PhysAugTrainingDataset(dataset_tr, folder, self.physaug_protocol, self.physaug_p_render,
                                         use_mask_for_norm=self.configuration_manager.use_mask_for_norm[0],
                                         use_labels=self.physaug_use_labels, stats=self.physaug_stats,
                                         protocol_settings=self.physaug_protocol_settings,
                                         keep_files_open=self.physaug_keep_files_open)
        self.print_to_log_file(f"PhysAug: protocol {wrapped.renderer.protocol.name!r}, p_render {wrapped.p_render}, "
                               f"stats {self.physaug_stats!r}, maps {folder}")
        if self.local_rank == 0 and self.output_folder is not None:
            self.physaug_record_run(wrapped)
        return wrapped, dataset_val

    def physaug_record_run(self, wrapped) -> None:
        """Write what this run trains on into the fold folder (``physaug_run.json``); a continued run
        (``--c``, current_epoch > 0) with other settings stops with an error (:mod:`.run_identity`)."""
        from . import run_identity

        protocol = wrapped.renderer.protocol
        maps_dir = self.physaug_maps_dir()
        identity = {"trainer": type(self).__name__, "protocol": self.physaug_protocol,
                    "protocol_settings": list(self.physaug_protocol_settings),
                    "protocol_name": protocol.name, "protocol_sha256": run_identity.protocol_sha256(protocol),
                    "maps_dir": str(maps_dir), "maps_identity": run_identity.maps_identity(maps_dir),
                    "prior": self.physaug_prior, "p_render": wrapped.p_render, "stats": self.physaug_stats, "use_labels": self.physaug_use_labels}
        run_identity.record(Path(self.output_folder), identity, continuing=self.current_epoch > 0)


class nnUNetTrainerPhysAug_paper(nnUNetTrainerPhysAug):
    """The authors' setting (their ``InvGreAug``): p = 0.7, MOLLI-style IR or spoiled GRE, 50/50."""

    physaug_protocol = "paper"


class nnUNetTrainerPhysAug_GRE(nnUNetTrainerPhysAug):
    """Ablation: the paper's spoiled-GRE family only (their ``GreAug``)."""

    physaug_protocol = "paper_gre"


class nnUNetTrainerPhysAug_IR(nnUNetTrainerPhysAug):
    """Ablation: the paper's MOLLI-style IR family only (their ``InvAug``)."""

    physaug_protocol = "paper_ir"


class nnUNetTrainerPhysAugPathology(nnUNetTrainerPhysAug):
    """``wide_pathology`` preset: ``wide`` plus simulated scar, MVO and edema, uneven and partial-volume
    Gd uptake, and the LGE/PSIR readout's approach to steady state (tuned on real MyoPS LGE/T2)."""

    physaug_protocol = "wide_pathology"


# Training-length variants pair one-to-one with nnU-Net's own nnUNetTrainer_Xepochs (generated, .lengths):
# each inherits the stock class's __init__ (same signature, same num_epochs), so a comparison changes nothing
# but the augmentation.
PUBLIC_TRAINERS = (nnUNetTrainerPhysAug, nnUNetTrainerPhysAug_paper, nnUNetTrainerPhysAug_GRE,
                   nnUNetTrainerPhysAug_IR, nnUNetTrainerPhysAugPathology)

__all__ = [t.__name__ for t in PUBLIC_TRAINERS] + ["MissingTissueMapsError"]
for _trainer in PUBLIC_TRAINERS:
    __all__ += add_length_variants(_trainer, globals())
