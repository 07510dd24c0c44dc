"""Ablation trainers of the realism options (opt-in: ``physaug-env --experiments``).

Each row of :data:`ABLATIONS` is one experiment: a class name, the preset *version* it changes (so that it
renders the same whatever the latest preset becomes; ``contrast/presets/versions.yaml``), the
``FAMILY.PARAM=VALUE`` settings it switches, an optional p_render, the base trainer and the stock lengths it
exists at. The classes are generated from the rows (``<name>_<X>epochs``) and are found by nnU-Net only when
the experiments folder is in ``nnUNet_extTrainer`` (``eval "$(physaug-env --experiments)"``); their results
and the commands that made them are in ``docs/experiments/``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from nnunetv2.training.nnUNetTrainer.variants.training_length import nnUNetTrainer_Xepochs as _stock

from .trainers import nnUNetTrainerPhysAug, nnUNetTrainerPhysAugPathology

# ----------------------------------------------------------------------------- the options, as settings

#: the LGE/PSIR readout train of ``wide_pathology`` (linear k-space ordering: 8-32 pulses of TR 4-8 ms before
#: the k-space centre); ``wide`` reads out centrically (Mz at TI)
READOUT_TRAIN = ("lge.readout_pulses=[8, 32]", "lge.readout_tr_ms=[4.0, 8.0]",
                 "psir.readout_pulses=[8, 32]", "psir.readout_tr_ms=[4.0, 8.0]")
#: centric LGE/PSIR readout (no readout train), as in ``wide``
CENTRIC_READOUT = ("lge.readout_pulses=0", "psir.readout_pulses=0")
#: centric to linear ordering: 0-32 pulses of TR 4-8 ms before the k-space centre (real protocols use both)
MIXED_READOUT = ("lge.readout_pulses=[0, 32]", "lge.readout_tr_ms=[4.0, 8.0]",
                 "psir.readout_pulses=[0, 32]", "psir.readout_tr_ms=[4.0, 8.0]")
#: the label-aware families whose ``cavity_tissue`` option renders the tissue inside the cavity labels as tissue
CAVITY_TISSUE_FAMILIES = ("lge", "psir", "saturation_recovery", "tse")
CAVITY_TISSUE = tuple(f"{family}.cavity_tissue=1" for family in CAVITY_TISSUE_FAMILIES)
#: the Gd families, whose border option (``blood_partial_volume``) gives a pixel next to blood its blood share's Gd
GD_FAMILIES = ("lge", "psir", "saturation_recovery")
NO_BORDER_GD = tuple(f"{family}.blood_partial_volume=0" for family in GD_FAMILIES)
#: black-blood TSE for 45 % of renders (the other families keep their proportions)
BLACK_BLOOD = ("tse.probability=0.45",)
#: ``relaxation_scaling`` of the tissue outside the blood and myocardium labels on half the renders
TISSUE_SCALING = ("relaxation_scaling.probability=0.5",)
#: two-compartment black-blood TSE: only the blood share of a blood-mixed myocardium pixel is suppressed
BLOOD_PARTIAL_VOLUME = ("tse.blood_partial_volume=1",)
#: ... with the blood compartment at the wall keeping 0-100 % of the suppressed signal (slow flow near the wall)
SLOW_FLOW = (*BLOOD_PARTIAL_VOLUME, "tse.slow_flow_fraction=[0, 1]")
#: the cavity's wall layer (``RenderContext.apply_wall_layer``), ranges matched to the endocardial edge of real
#: MyoPS images (``check_realism.py``): LGE/PSIR a tissue share of 0-50 % over 1-2 pixels with border Gd off,
#: black-blood TSE 70-100 % over 2-6 pixels
WALL_LAYER = ("lge.wall_layer_share=[0, 0.5]", "lge.wall_layer_px=[1, 2]",
              "psir.wall_layer_share=[0, 0.5]", "psir.wall_layer_px=[1, 2]",
              "lge.blood_partial_volume=0", "psir.blood_partial_volume=0",
              "tse.wall_layer_share=[0.7, 1]", "tse.wall_layer_px=[2, 6]")


@dataclass(frozen=True)
class Ablation:
    """One experiment: ``name`` (the class name without its length), the preset version it changes, the
    settings it switches, p_render (None: the preset's), the base trainer and its lengths (epochs)."""
    name: str
    preset: str
    settings: tuple[str, ...] = ()
    p_render: Optional[float] = None
    base: type = nnUNetTrainerPhysAug
    epochs: tuple[int, ...] = (5,)
    doc: str = ""


ABLATIONS: tuple[Ablation, ...] = (
    Ablation("nnUNetTrainerPhysAugNoCavityTissue", "wide_v1", epochs=(5, 10),
             doc="the first wide (no cavity_tissue, no border Gd)"),
    Ablation("nnUNetTrainerPhysAugReadout", "wide_v1", READOUT_TRAIN,
             doc="wide_v1 plus the LGE/PSIR readout train of wide_pathology"),
    Ablation("nnUNetTrainerPhysAugPathologyCentric", "wide_pathology", CENTRIC_READOUT,
             base=nnUNetTrainerPhysAugPathology, doc="wide_pathology without its readout train"),
    Ablation("nnUNetTrainerPhysAugBloodPV", "wide_v1", BLOOD_PARTIAL_VOLUME,
             doc="wide_v1 with two-compartment black-blood TSE"),
    Ablation("nnUNetTrainerPhysAugBlackBlood", "wide_v1", BLACK_BLOOD,
             doc="wide_v1 with black-blood TSE for 45 % of renders"),
    Ablation("nnUNetTrainerPhysAugTissueScaling", "wide_v1", TISSUE_SCALING,
             doc="wide_v1 with relaxation_scaling of the tissue outside the labels on half the renders"),
    Ablation("nnUNetTrainerPhysAugBlackBloodTissueScaling", "wide_v1", (*BLACK_BLOOD, *TISSUE_SCALING),
             doc="both of the last two"),
    Ablation("nnUNetTrainerPhysAugSoftEdges", "wide_pathology", (*CENTRIC_READOUT, *BLOOD_PARTIAL_VOLUME),
             base=nnUNetTrainerPhysAugPathology,
             doc="wide_pathology without its readout train, with two-compartment black-blood TSE"),
    Ablation("nnUNetTrainerPhysAugP1", "wide_v1", p_render=1.0, doc="wide_v1 with every training load rendered"),
    Ablation("nnUNetTrainerPhysAugCavityTissue", "wide_v2", epochs=(5, 10),
             doc="wide_v2: the tissue inside the cavity labels rendered as tissue"),
    Ablation("nnUNetTrainerPhysAugCavityTissueScaling", "wide_v2", TISSUE_SCALING,
             doc="wide_v2 with relaxation_scaling on half the renders"),
    Ablation("nnUNetTrainerPhysAugCavityPathology", "wide_pathology",
             (*CENTRIC_READOUT, *CAVITY_TISSUE, *NO_BORDER_GD), base=nnUNetTrainerPhysAugPathology,
             doc="wide_pathology with centric readout and cavity_tissue"),
    Ablation("nnUNetTrainerPhysAugCavityBloodPV", "wide_v2", BLOOD_PARTIAL_VOLUME,
             doc="wide_v2 with two-compartment black-blood TSE"),
    Ablation("nnUNetTrainerPhysAugCavityReadoutMix", "wide_v2", MIXED_READOUT,
             doc="wide_v2 with LGE/PSIR read out anywhere from centric to linear ordering"),
    Ablation("nnUNetTrainerPhysAugSlowFlow", "wide_v3", SLOW_FLOW,
             doc="wide_v3 with two-compartment black blood whose wall blood is partly unsuppressed"),
    Ablation("nnUNetTrainerPhysAugWallLayer", "wide_v3", WALL_LAYER,
             doc="wide_v3 with the cavity's wall layer in LGE, PSIR and TSE (border Gd off in LGE/PSIR)"),
)


def _stock_length(epochs: int) -> type:
    return getattr(_stock, "nnUNetTrainer_1epoch" if epochs == 1 else f"nnUNetTrainer_{epochs}epochs")


def ablation_class(row: Ablation, epochs: int) -> type:
    """The trainer class of ``row`` at ``epochs`` (bases: the row's base trainer and nnU-Net's stock length)."""
    stock = _stock_length(epochs)
    name = row.name + stock.__name__[len("nnUNetTrainer"):]
    attrs = {"__module__": __name__, "__qualname__": name,
             "__doc__": f"Ablation ({stock.__name__}): {row.doc}. Preset {row.preset}, settings {list(row.settings)}"
                        + (f", p_render {row.p_render}" if row.p_render is not None else "") + ".",
             "physaug_protocol": row.preset, "physaug_protocol_settings": tuple(row.settings)}
    if row.p_render is not None:
        attrs["physaug_p_render"] = row.p_render
    return type(name, (row.base, stock), attrs)


__all__: list[str] = []
for _row in ABLATIONS:
    for _epochs in _row.epochs:
        _cls = ablation_class(_row, _epochs)
        globals()[_cls.__name__] = _cls
        __all__.append(_cls.__name__)
