"""nnU-Net v2 trainers with physics-grounded contrast augmentation.

Stock nnU-Net finds these through ``nnUNet_extTrainer`` (``eval "$(physaug-env)"``)::

    nnUNetv2_train DATASET 2d FOLD -tr nnUNetTrainerPhysAug
    nnUNetv2_predict -i NEW_DOMAIN -o OUT -d DATASET -c 2d -tr nnUNetTrainerPhysAug -f FOLD

Only the *training* dataset is wrapped (:class:`~nnunetv2_physaug.nnunet.dataset.PhysAugTrainingDataset`):
plans, preprocessed data, splits, validation and inference are exactly a baseline ``nnUNetTrainer``'s.

Class attributes configure the variants (nnU-Net style), environment variables override them:

- ``physaug_protocol``: preset name or protocol file (env ``PHYSAUG_PROTOCOL``).
- ``physaug_protocol_settings``: ``FAMILY.PARAM=VALUE`` settings on top of the protocol (ablations of
  one preset option; :func:`nnunetv2_physaug.contrast.protocol_with_settings`).
- ``physaug_p_render``: probability that a training load is rendered (None: the protocol's value).
- ``physaug_stats``: "case" or "patch" normalisation statistics.
- ``physaug_compute_missing``: compute missing tissue maps at training start, on the training
  device, into the maps folder (default on; env ``PHYSAUG_COMPUTE_MISSING=0`` turns it off, and then
  a missing case is an error that names it). The weight-free estimator is used unless env
  ``PHYSAUG_PRIOR`` names a diffusion prior folder.
- tissue maps are read from ``$nnUNet_raw/DatasetXXX/tissueMapsTr`` (env ``PHYSAUG_MAPS_DIR``).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from ..maps.folder import CacheMismatchError, TissueMapFolder
from .env import require_nnunet_paths
from .dataset import PhysAugTrainingDataset
from .lengths import add_length_variants

MAPS_DIR_ENV = "PHYSAUG_MAPS_DIR"
PROTOCOL_ENV = "PHYSAUG_PROTOCOL"
COMPUTE_MISSING_ENV = "PHYSAUG_COMPUTE_MISSING"
PRIOR_ENV = "PHYSAUG_PRIOR"
DEFAULT_MAPS_SUBDIR = "tissueMapsTr"


class MissingTissueMapsError(RuntimeError):
    """Training cases have no tissue maps (and computing them is switched off)."""


class nnUNetTrainerPhysAug(nnUNetTrainer):
    """nnU-Net's default trainer plus a random physics-rendered contrast per training load (``wide`` preset)."""

    physaug_protocol: str = "wide"
    physaug_protocol_settings: tuple[str, ...] = ()
    physaug_p_render: Optional[float] = None
    physaug_stats: str = "case"
    physaug_use_labels: bool = True
    physaug_compute_missing: bool = True

    # --- where things are -------------------------------------------------------------------
    def physaug_raw_dataset_folder(self) -> Path:
        raw = require_nnunet_paths(which=("nnUNet_raw",))["nnUNet_raw"]
        return Path(raw) / self.plans_manager.dataset_name

    def physaug_maps_dir(self) -> Path:
        env = os.environ.get(MAPS_DIR_ENV)
        return Path(env) if env else self.physaug_raw_dataset_folder() / DEFAULT_MAPS_SUBDIR

    def physaug_protocol_spec(self) -> str:
        return os.environ.get(PROTOCOL_ENV) or self.physaug_protocol

    def physaug_should_compute_missing(self) -> bool:
        env = os.environ.get(COMPUTE_MISSING_ENV)
        if env is not None:
            return env.strip().lower() not in ("0", "false", "no", "off", "")
        return self.physaug_compute_missing

    def _raw_images(self) -> dict[str, str]:
        """{case: path of its channel-0 raw image}, for shape/affine checks (empty if raw data is absent)."""
        from nnunetv2.utilities.utils import get_filenames_of_train_images_and_targets
        if not os.environ.get("nnUNet_raw"):
            return {}  # maps given through PHYSAUG_MAPS_DIR; nothing to check them against
        raw = self.physaug_raw_dataset_folder()
        if not raw.is_dir():
            return {}
        files = get_filenames_of_train_images_and_targets(str(raw), self.dataset_json)
        return {k: v["images"][0] for k, v in files.items()}

    # --- maps ----------------------------------------------------------------------------------
    def physaug_prepare_maps(self, cases: list[str]) -> Path:
        """Make sure every training case has raw maps, then align them to this configuration."""
        from ..maps.align import align_dataset_maps

        maps_dir = self.physaug_maps_dir()
        missing = TissueMapFolder(maps_dir).missing(cases)
        if missing:
            if self.physaug_should_compute_missing():
                self._compute_missing_maps(maps_dir, missing)
            else:
                shown = ", ".join(missing[:8]) + (f" and {len(missing) - 8} more" if len(missing) > 8 else "")
                raise MissingTissueMapsError(
                    f"{len(missing)} training case(s) have no complete tissue maps in {maps_dir} (missing, or left "
                    f"unfinished by an interrupted run): {shown}. Make them with\n"
                    f"    physaug-reverse -i {self.physaug_raw_dataset_folder() / 'imagesTr'} -o {maps_dir}\n"
                    f"(or point {MAPS_DIR_ENV} at the folder that holds them).")
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
                                        prior=os.environ.get(PRIOR_ENV) or None,
                                        labels_dir=labels if labels.is_dir() else None)
        except CacheMismatchError as e:
            # typically an interrupted physaug-reverse (e.g. --overwrite with other options): its unfinished
            # cases are incomplete, and the trainer's own estimator settings are not the folder's
            raise MissingTissueMapsError(
                f"{len(cases)} training case(s) have no complete tissue maps in {maps_dir} ({', '.join(cases[:8])}"
                f"{' ...' if len(cases) > 8 else ''}), and the trainer cannot add them: {e}\nFinish the folder "
                f"with the physaug-reverse command that made it (a rerun resumes), or point {MAPS_DIR_ENV} "
                f"elsewhere.") from e
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
        wrapped = PhysAugTrainingDataset(dataset_tr, folder, self.physaug_protocol_spec(), self.physaug_p_render,
                                         use_mask_for_norm=self.configuration_manager.use_mask_for_norm[0],
                                         use_labels=self.physaug_use_labels, stats=self.physaug_stats,
                                         protocol_settings=self.physaug_protocol_settings)
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
        identity = {"trainer": type(self).__name__, "protocol": self.physaug_protocol_spec(),
                    "protocol_settings": list(self.physaug_protocol_settings),
                    "protocol_name": protocol.name, "protocol_sha256": run_identity.protocol_sha256(protocol),
                    "maps_dir": str(maps_dir), "maps_identity": run_identity.maps_identity(maps_dir),
                    "p_render": wrapped.p_render, "stats": self.physaug_stats, "use_labels": self.physaug_use_labels}
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
for _trainer in PUBLIC_TRAINERS:
    add_length_variants(_trainer, globals())


# ----------------------------------------------------------------------------- ablations
# One option of a preset switched on or off, as FAMILY.PARAM=VALUE settings (scripts/bench_real.py --variants):
# which realism change moves which real-data Dice.

#: the LGE/PSIR readout train of ``wide_pathology`` (linear k-space ordering: 8-32 pulses of TR 4-8 ms
#: before the k-space centre); ``wide`` reads out centrically (Mz at TI). tests/test_trainer_dataset.py
#: checks these equal the preset's values.
READOUT_TRAIN = ("lge.readout_pulses=[8, 32]", "lge.readout_tr_ms=[4.0, 8.0]",
                 "psir.readout_pulses=[8, 32]", "psir.readout_tr_ms=[4.0, 8.0]")
#: centric LGE/PSIR readout (no readout train), as in ``wide``
CENTRIC_READOUT = ("lge.readout_pulses=0", "psir.readout_pulses=0")
#: centric to linear ordering: 0-32 pulses of TR 4-8 ms before the k-space centre (real protocols use both)
MIXED_READOUT = ("lge.readout_pulses=[0, 32]", "lge.readout_tr_ms=[4.0, 8.0]",
                 "psir.readout_pulses=[0, 32]", "psir.readout_tr_ms=[4.0, 8.0]")
#: the label-aware families whose ``cavity_tissue`` option renders the tissue inside the cavity labels
#: (papillary muscles, trabeculae) as tissue
CAVITY_TISSUE_FAMILIES = ("lge", "psir", "saturation_recovery", "tse")
CAVITY_TISSUE = tuple(f"{family}.cavity_tissue=1" for family in CAVITY_TISSUE_FAMILIES)
#: black-blood TSE for 45 % of renders (the other families keep their proportions)
BLACK_BLOOD = ("tse.probability=0.45",)
#: ``relaxation_scaling`` of the tissue outside the blood and myocardium labels on half the renders
TISSUE_SCALING = ("relaxation_scaling.probability=0.5",)
#: two-compartment black-blood TSE: only the blood share of a blood-mixed myocardium pixel is suppressed
BLOOD_PARTIAL_VOLUME = ("tse.blood_partial_volume=1",)
#: ... with the blood compartment at the wall keeping 0-100 % of the suppressed signal (slow flow near the wall)
SLOW_FLOW = (*BLOOD_PARTIAL_VOLUME, "tse.slow_flow_fraction=[0, 1]")
#: the Gd families' border option: a non-blood pixel next to blood takes the Gd of its blood share (in
#: ``wide`` since 2026-12-02)
GD_FAMILIES = ("lge", "psir", "saturation_recovery")
BORDER_GD = tuple(f"{family}.blood_partial_volume=1" for family in GD_FAMILIES)
NO_BORDER_GD = tuple(f"{family}.blood_partial_volume=0" for family in GD_FAMILIES)
#: the cavity's wall layer (``RenderContext.apply_wall_layer``), ranges matched to the endocardial edge of real MyoPS
#: images (edge position, ``check_realism.py``, 25 development patients): LGE and PSIR a tissue share of 0-50 % at
#: the wall falling to 0 over 1-2 pixels, with border Gd off (its bright rim, 2.51 x the interior myocardium against
#: real LGE's 1.55, moves the renders' edge outwards); black-blood TSE 70-100 % over 2-6 pixels
WALL_LAYER = ("lge.wall_layer_share=[0, 0.5]", "lge.wall_layer_px=[1, 2]",
              "psir.wall_layer_share=[0, 0.5]", "psir.wall_layer_px=[1, 2]",
              "lge.blood_partial_volume=0", "psir.blood_partial_volume=0",
              "tse.wall_layer_share=[0.7, 1]", "tse.wall_layer_px=[2, 6]")
#: ``wide`` as it was until 2026-12 (``cavity_tissue`` and border Gd off: every blood-labelled pixel takes
#: blood's Gd uptake and black-blood suppression, every other pixel its label's Gd). The ablations below
#: were measured against that ``wide`` (README, real data) and keep it, so each still switches the one
#: option it names.
NO_CAVITY_TISSUE = (*(f"{family}.cavity_tissue=0" for family in CAVITY_TISSUE_FAMILIES), *NO_BORDER_GD)
#: ``wide`` from 2026-12-01 to 12-02: ``cavity_tissue`` on, border Gd off; the ``Cavity*`` ablations were
#: measured against it and keep it
CAVITY_TISSUE_ONLY = (*CAVITY_TISSUE, *NO_BORDER_GD)


class nnUNetTrainerPhysAugNoCavityTissue_5epochs(nnUNetTrainerPhysAug_5epochs):
    """``wide`` without ``cavity_tissue``: the default PhysAug of the README's real-data runs made before
    2026-12 (its held-out ``--final`` run included)."""

    physaug_protocol_settings = NO_CAVITY_TISSUE


class nnUNetTrainerPhysAugNoCavityTissue_10epochs(nnUNetTrainerPhysAug_10epochs):
    """``nnUNetTrainerPhysAugNoCavityTissue_5epochs`` at the stock 10-epoch budget."""

    physaug_protocol_settings = NO_CAVITY_TISSUE


class nnUNetTrainerPhysAugReadout_5epochs(nnUNetTrainerPhysAug_5epochs):
    """Ablation: ``wide`` plus the LGE/PSIR readout train of ``wide_pathology`` (no simulated pathology)."""

    physaug_protocol_settings = (*NO_CAVITY_TISSUE, *READOUT_TRAIN)


class nnUNetTrainerPhysAugPathologyCentric_5epochs(nnUNetTrainerPhysAugPathology_5epochs):
    """Ablation: ``wide_pathology`` without its readout train (simulated pathology and uptake only)."""

    physaug_protocol_settings = CENTRIC_READOUT


class nnUNetTrainerPhysAugBloodPV_5epochs(nnUNetTrainerPhysAug_5epochs):
    """Ablation: ``wide`` with two-compartment black-blood TSE (``tse.blood_partial_volume=1``: only the
    blood share of a blood-mixed myocardium pixel is suppressed, no bright endocardial rim)."""

    physaug_protocol_settings = (*NO_CAVITY_TISSUE, *BLOOD_PARTIAL_VOLUME)


class nnUNetTrainerPhysAugBlackBlood_5epochs(nnUNetTrainerPhysAug_5epochs):
    """Ablation: ``wide`` with black-blood TSE drawn for 45 % of renders instead of 15 % (the other
    families keep their proportions). In ``wide`` blood is darker than myocardium in 28 % of renders of
    real MyoPS maps (tse 91 %, look_locker 58 %, spoiled_gre 35 % of theirs, the others 0-3 %) and the
    unrendered 30 % of loads are bright-blood bSSFP: 20 % of training loads are dark-blood, against 89 %
    of real T2-weighted slices. With 45 % TSE, 50 % of renders (35 % of loads) are dark-blood
    (``scripts/check_realism.py -d DATASET --polarity [--set tse.probability=0.45]``)."""

    physaug_protocol_settings = (*NO_CAVITY_TISSUE, *BLACK_BLOOD)



class nnUNetTrainerPhysAugTissueScaling_5epochs(nnUNetTrainerPhysAug_5epochs):
    """Ablation: ``wide`` with half the renders drawing the scale of T1 and T2 outside the blood and
    myocardium labels (``relaxation_scaling``: a smooth factor 0.5-6 on both, T1/T2 and so the cine image
    unchanged), so that non-cardiac tissue (a stomach, fat, liver) varies between the contrasts the cine
    image is compatible with instead of keeping the estimator's intensity classes."""

    physaug_protocol_settings = (*NO_CAVITY_TISSUE, *TISSUE_SCALING)


class nnUNetTrainerPhysAugBlackBloodTissueScaling_5epochs(nnUNetTrainerPhysAug_5epochs):
    """Ablation: both of the above (45 % black-blood TSE and ``relaxation_scaling`` on half the renders)."""

    physaug_protocol_settings = (*NO_CAVITY_TISSUE, *BLACK_BLOOD, *TISSUE_SCALING)


class nnUNetTrainerPhysAugSoftEdges_5epochs(nnUNetTrainerPhysAugPathology_5epochs):
    """Ablation: no label-shaped intensity edges. ``wide_pathology`` without its readout train (so
    partial-volume, uneven Gd uptake softens the label-shaped LGE/PSIR myocardial ring; simulated scar,
    MVO and edema) plus two-compartment black-blood TSE (no bright endocardial rim). Both edges follow
    the label exactly in ``wide`` renders of real MyoPS maps, and on real T2 and LGE the LV/myocardium
    border is where ``wide`` errs most (predicted vs expert pixels, ``--cv``)."""

    physaug_protocol_settings = (*CENTRIC_READOUT, *BLOOD_PARTIAL_VOLUME)


class nnUNetTrainerPhysAugP1_5epochs(nnUNetTrainerPhysAug_5epochs):
    """Ablation: ``wide`` with every training load rendered (p_render 1 instead of the preset's 0.7: no
    load hands nnU-Net the real bSSFP image; cine-like images then come only from the bssfp family, 10 %
    of renders)."""

    physaug_protocol_settings = NO_CAVITY_TISSUE
    physaug_p_render = 1.0


class nnUNetTrainerPhysAugCavityTissue_5epochs(nnUNetTrainerPhysAug_5epochs):
    """``wide`` with the tissue inside cavity labels rendered as tissue (``cavity_tissue=1`` in every
    label-aware family: LGE, PSIR, perfusion, black-blood TSE); an ablation when it was made, part of
    ``wide`` since 2026-12 (renders as ``nnUNetTrainerPhysAug_5epochs`` does). Papillary muscles and trabeculae are
    labelled LV/RV; the estimator gives them myocardial T1/T2, but ``wide`` gives every blood-labelled
    pixel blood's Gd uptake and black-blood suppression, so the cavity is uniformly bright in LGE and
    black in TSE renders, while on real MyoPS images its tissue is nulled (LGE) and grey (T2-weighted:
    0.9 x normal myocardium, ``check_realism.py``), where ``wide`` calls the LV myocardium most (``--cv`` structure confusion)."""

    physaug_protocol_settings = CAVITY_TISSUE_ONLY


class nnUNetTrainerPhysAugCavityTissue_10epochs(nnUNetTrainerPhysAug_10epochs):
    """``nnUNetTrainerPhysAugCavityTissue_5epochs`` at the stock 10-epoch budget."""

    physaug_protocol_settings = CAVITY_TISSUE_ONLY


class nnUNetTrainerPhysAugCavityTissueScaling_5epochs(nnUNetTrainerPhysAug_5epochs):
    """Ablation: ``CavityTissue`` and ``TissueScaling`` together (tissue inside the cavity labels rendered
    as tissue, and ``relaxation_scaling`` of the tissue outside the labels on half the renders): the two
    options that each gained on real LGE over ``wide`` in ``--cv`` (TissueScaling in two runs, less
    myocardium called background; CavityTissue, less LV called myocardium)."""

    physaug_protocol_settings = (*CAVITY_TISSUE_ONLY, *TISSUE_SCALING)


class nnUNetTrainerPhysAugCavityPathology_5epochs(nnUNetTrainerPhysAugPathology_5epochs):
    """Ablation: ``wide`` of 2026-12-01 (``cavity_tissue``, no border Gd) plus the simulated pathology of ``wide_pathology`` (scar, MVO, edema,
    uneven and partial-volume Gd uptake; its readout train left out): ``wide_pathology`` with centric
    readout and ``cavity_tissue``. Aimed at what ``wide`` gets wrong on real pathology: scar on LGE called
    LV blood (scar enhances like blood) and edema on T2 called LV (``--cv``: 21 % and 23 % at 10 epochs).
    Measured (``--cv``, one run, docs/real_data_ablations.md): below ``CavityTissue`` on every number, the
    share of real scar and edema called myocardium included."""

    physaug_protocol_settings = (*CENTRIC_READOUT, *CAVITY_TISSUE_ONLY)


class nnUNetTrainerPhysAugCavityBloodPV_5epochs(nnUNetTrainerPhysAug_5epochs):
    """Ablation: ``wide`` of 2026-12-01 (``cavity_tissue``, no border Gd) with two-compartment black-blood TSE (``tse.blood_partial_volume=1``):
    ``cavity_tissue`` suppresses only the blood share of blood-labelled pixels, this does the same for the
    myocardium pixels that touch blood, so neither side of the endocardial border keeps the bright rim of
    unsuppressed blood-mixed pixels that ``wide``'s TSE renders show (rim / interior myocardium 1.53, real
    T2 0.95, ``check_realism.py``); myocardium called LV on T2 is the largest error left against the oracle
    (18 % against 6 %, ``--cv``)."""

    physaug_protocol_settings = (*CAVITY_TISSUE_ONLY, *BLOOD_PARTIAL_VOLUME)


class nnUNetTrainerPhysAugCavityReadoutMix_5epochs(nnUNetTrainerPhysAug_5epochs):
    """Ablation: ``wide`` of 2026-12-01 (``cavity_tissue``, no border Gd) with LGE/PSIR read out anywhere from centric to linear k-space
    ordering (0-32 FLASH pulses of TR 4-8 ms before the k-space centre). ``wide``'s centric readout nulls
    normal myocardium far harder than real LGE (blood / normal myocardium: renders of MyoPS maps median
    5.2, 25 % inside real LGE's 10-90 % range of 1.8-3.9, PSIR 16 %); with this 51 % and 59 %
    (``check_realism.py``), the issue's realism goal, while the low pulse counts keep the hard-nulled renders
    that ``wide_pathology``'s 8-32 pulses drop."""

    physaug_protocol_settings = (*MIXED_READOUT, *NO_BORDER_GD)


class nnUNetTrainerPhysAugCavityBorderGd_5epochs(nnUNetTrainerPhysAug_5epochs):
    """``wide`` of 2026-12-01 with Gd at the blood border by the maps (``blood_partial_volume=1`` in
    LGE, PSIR and perfusion): a myocardium (or other) pixel next to blood holds blood's Gd in its blood share
    (``w [Gd]_blood + (1 - w) [Gd]_tissue``, the converse of ``cavity_tissue``). In ``wide`` the label decides,
    so the endocardial rim of LGE renders is nulled with the myocardium (rim / interior myocardium 0.68 on
    MyoPS maps) while real LGE shows a bright rim of partial volume (1.23 over the whole label, 1.55 over
    normal myocardium, ``check_realism.py``); with it 2.51 and the blood / normal myocardium ratio 3.9 (48 %
    inside real LGE's range). Aimed at the LV / myocardium border on LGE (LV called myocardium 15 %, myocardium called LV 10 %, ``--cv``); an ablation
    when it was made, part of ``wide`` since 2026-12-02 (renders as ``nnUNetTrainerPhysAug_5epochs`` does)."""

    physaug_protocol_settings = BORDER_GD


class nnUNetTrainerPhysAugCavityReadoutMixBorderGd_5epochs(nnUNetTrainerPhysAug_5epochs):
    """Ablation: both of the last two (``CavityReadoutMix`` and ``CavityBorderGd``): LGE renders of MyoPS maps
    then show rim / interior myocardium 1.41 (real 1.23 over the whole label, 1.55 over normal myocardium) and
    blood / normal myocardium 2.02 (real 2.45; 43 % of ``lge``, 53 % of ``psir`` renders inside real LGE's 10-90 %
    range)."""

    physaug_protocol_settings = (*MIXED_READOUT, *BORDER_GD)


class nnUNetTrainerPhysAugSlowFlow_5epochs(nnUNetTrainerPhysAug_5epochs):
    """``wide`` (as of 2026-12-02, border Gd) with two-compartment black-blood TSE whose wall blood is partly
    unsuppressed: ``tse.blood_partial_volume=1`` and ``tse.slow_flow_fraction=[0, 1]``. In ``wide`` the
    blood-mixed myocardium pixels at the endocardium escape the suppression (rim / interior myocardium 1.42 on
    MyoPS maps: a bright line along the label border); ``BloodPV`` suppresses their blood share fully (0.65, a
    dark line); real T2-weighted images lie between (0.95: slow blood at the wall is only partly nulled), and
    with the blood compartment at the wall keeping a random 0-100 % of its signal the renders give 0.97
    (``check_realism.py``). Aimed at myocardium called LV on T2 (18 %, oracle 6 %); two ``--cv`` runs (README:
    T2 0.728 and 0.687, that error unmoved) left it an ablation."""

    physaug_protocol_settings = SLOW_FLOW


class nnUNetTrainerPhysAugWallLayer_5epochs(nnUNetTrainerPhysAug_5epochs):
    """``wide`` (as of 2026-12-02) with the cavity's wall layer (``WALL_LAYER``): blood-labelled pixels next to
    the wall rendered as part tissue in LGE, PSIR and black-blood TSE (``RenderContext.apply_wall_layer``), and
    LGE/PSIR without border Gd. On real MyoPS LGE and T2-weighted images the blood-myocardium edge lies inside
    the LV label (``check_realism.py``, edge position: median -0.54 px on LGE, -2.51 px on T2; the cine -0.09 px),
    renders of ``wide`` put it at the label border (+0.11 px ``lge``, -0.51 px ``tse``); with the layer -1.05 and -1.43.
    Aimed at LV called myocardium on LGE and T2 (18 % and 15 %, oracles 11 % and 10 %, ``--cv``); two ``--cv`` runs
    (README) moved that error (15.5 % and 13.1 %) but not the Dice (LGE 0.798, T2 0.704 against 0.801, 0.726): an
    ablation."""

    physaug_protocol_settings = WALL_LAYER


__all__ = [name for name in dict(globals()) if name.startswith("nnUNetTrainerPhysAug")] + ["MissingTissueMapsError"]
