"""What a trainer checks when nnU-Net constructs it, before any data is loaded or any map computed.

nnU-Net builds the trainer in ``nnUNetv2_train`` before it reads the dataset; our trainers check there that
their class attributes have the types and ranges they mean (a string ``"False"`` is not ``False``), that the
protocol they name exists and takes their settings, and that the dataset and plans are ones PhysAug can
render for (one input channel, z-score normalisation, a configuration that is not a cascade stage). A
failed check raises :class:`TrainerSetupError`: a ``SystemExit`` whose message is the whole output, so
``nnUNetv2_train`` ends with one line that names the setting and what to do, not a traceback.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Iterable

#: nnU-Net's normalisation scheme the render's intensities are normalised with (:mod:`.dataset`)
SUPPORTED_NORMALIZATION = "ZScoreNormalization"


class TrainerSetupError(SystemExit):
    """A trainer's setting, or the dataset it is asked to train on, does not fit. Uncaught, Python prints the
    message alone and exits with status 1; ``.message`` holds it without the trainer's name."""

    def __init__(self, message: str, trainer: str = "PhysAug"):
        super().__init__(f"{trainer}: error: {message}")
        self.message = message


def _fail(trainer: Any, message: str) -> None:
    raise TrainerSetupError(message, type(trainer).__name__)


def require_bool(trainer: Any, name: str) -> None:
    value = getattr(trainer, name)
    if not isinstance(value, bool):
        _fail(trainer, f"{name} must be True or False, got {value!r} ({type(value).__name__}); set the class "
                       f"attribute to a bool")


def require_number(trainer: Any, name: str, low: float, high: float = math.inf, optional: bool = False,
                   integer: bool = False, low_open: bool = False) -> None:
    """``name`` is a finite number in [low, high] ((low, high] with ``low_open``), an int where ``integer``,
    or None where ``optional``."""
    value = getattr(trainer, name)
    if value is None and optional:
        return
    kind = "an integer" if integer else "a number"
    ok = isinstance(value, int) if integer else isinstance(value, (int, float))
    if isinstance(value, bool) or not ok or not math.isfinite(value):
        _fail(trainer, f"{name} must be {kind}{' or None' if optional else ''}, got {value!r}")
    if value < low or value > high or (low_open and value == low):
        bounds = f"{'(' if low_open else '['}{low:g}, {high:g}]"
        _fail(trainer, f"{name} must be in {bounds}, got {value!r}")


def require_choice(trainer: Any, name: str, choices: Iterable[str]) -> None:
    value, choices = getattr(trainer, name), tuple(choices)
    if value not in choices:
        _fail(trainer, f"{name} must be one of {', '.join(map(repr, choices))}, got {value!r}")


def require_str_tuple(trainer: Any, name: str) -> None:
    value = getattr(trainer, name)
    if isinstance(value, str) or not isinstance(value, (tuple, list)) or not all(isinstance(v, str) for v in value):
        _fail(trainer, f"{name} must be a tuple of strings, e.g. ('lge.ti_ms=[250, 350]',), got {value!r}")


def check_physaug_attributes(trainer: Any) -> None:
    """The ``physaug_*`` class attributes of a PhysAug trainer; the protocol built with its settings; the
    prior folder where one is named."""
    from ..contrast import protocol_with_settings
    from .dataset import STATS_MODES

    protocol = trainer.physaug_protocol
    if not isinstance(protocol, (str, Path)) or not str(protocol):
        _fail(trainer, f"physaug_protocol must be a preset name or a protocol file, got {protocol!r}")
    require_str_tuple(trainer, "physaug_protocol_settings")
    require_number(trainer, "physaug_p_render", 0.0, 1.0, optional=True)
    require_choice(trainer, "physaug_stats", STATS_MODES)
    require_bool(trainer, "physaug_use_labels")
    require_bool(trainer, "physaug_compute_missing")
    require_bool(trainer, "physaug_keep_files_open")
    prior = trainer.physaug_prior
    if prior is not None and (not isinstance(prior, (str, Path)) or not Path(prior).is_dir()):
        _fail(trainer, f"physaug_prior {prior!r} is not a folder; name a prior folder (physaug-train-prior's "
                       f"output) or None for the weight-free estimator")
    try:
        protocol_with_settings(protocol, tuple(trainer.physaug_protocol_settings))
    except (ValueError, OSError, KeyError) as e:
        _fail(trainer, f"physaug_protocol {str(protocol)!r} with settings {tuple(trainer.physaug_protocol_settings)}: "
                       f"{e}")


def check_dataset_fits(trainer: Any) -> None:
    """One input channel, z-score normalisation and no cascade: what PhysAug's render assumes (it replaces the
    one image of a case by a rendered one and normalises it as ``ZScoreNormalization`` does)."""
    channels = trainer.dataset_json.get("channel_names") or trainer.dataset_json.get("modality") or {}
    if len(channels) != 1:
        _fail(trainer, f"the dataset has {len(channels)} input channels ({', '.join(map(str, channels.values()))}); "
                       f"PhysAug renders one MR image per case from its tissue maps, so it trains single-channel "
                       f"datasets only: train this one with a stock or peer trainer, or make a dataset of the "
                       f"one MR channel")
    schemes = list(trainer.configuration_manager.normalization_schemes)
    if schemes != [SUPPORTED_NORMALIZATION]:
        _fail(trainer, f"the plans normalise the input with {', '.join(schemes)}; PhysAug normalises each render "
                       f"as {SUPPORTED_NORMALIZATION} does (validation and inference images are normalised by "
                       f"the plans), so it supports {SUPPORTED_NORMALIZATION} only. MR channels get it by default: "
                       f"name the channel e.g. 'MRI' in dataset.json (not 'CT' or 'noNorm') and plan again, or set "
                       f"normalization_schemes to [\"{SUPPORTED_NORMALIZATION}\"] in the plans")
    if trainer.is_cascaded:
        _fail(trainer, f"configuration {trainer.configuration_name!r} is a cascade stage (it reads the previous "
                       f"stage's segmentation as input); PhysAug supports 2d, 3d_fullres and 3d_lowres: train the "
                       f"cascade's stages with stock trainers, or a non-cascade configuration with PhysAug")


def check_peer_attributes(trainer: Any) -> None:
    """The ``peer_*`` class attributes of a peer trainer (those it has)."""
    require_number(trainer, "peer_probability", 0.0, 1.0)
    if hasattr(trainer, "peer_seed") and trainer.peer_seed is not None:
        require_number(trainer, "peer_seed", -math.inf, integer=True)
    if hasattr(trainer, "peer_gin_layers"):
        require_number(trainer, "peer_gin_layers", 1, integer=True)
        require_number(trainer, "peer_gin_interm", 1, integer=True)
        ks = trainer.peer_gin_kernel_sizes
        if not isinstance(ks, (tuple, list)) or not ks or not all(
                isinstance(k, int) and not isinstance(k, bool) and k >= 1 and k % 2 for k in ks):
            _fail(trainer, f"peer_gin_kernel_sizes must be a tuple of odd positive integers, got {ks!r}")
        require_bool(trainer, "peer_ipa")
    if hasattr(trainer, "peer_ipa_cells"):
        require_number(trainer, "peer_ipa_cells", 0.0, low_open=True)
        require_number(trainer, "peer_consistency_weight", 0.0)
    if hasattr(trainer, "peer_saliency_grid"):
        require_number(trainer, "peer_saliency_grid", 1, integer=True)
