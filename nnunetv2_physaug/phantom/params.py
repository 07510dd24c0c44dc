"""Reading the phantom's YAML data files: fixed-or-ranged parameters and clear errors.

A parameter in ``anatomy.yaml`` / ``domains.yaml`` is either a number (fixed) or a two-element
list ``[low, high]`` (drawn uniformly per case).
"""
from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np

from ..configfile import ConfigFileError, parse_config_text

Spec = Union[float, int, list]


class PhantomConfigError(ValueError):
    """A phantom data file (anatomy.yaml, domains.yaml) is malformed; the message names file and key."""


def load_yaml(path: Optional[Union[str, Path]], default_name: str) -> tuple[dict, str]:
    """Load a YAML mapping from ``path`` or from the packaged file ``default_name``.

    Returns:
        ``(data, where)`` where ``where`` names the file for error messages.
    """
    if path is None:
        where = f"nnunetv2_physaug/phantom/{default_name}"
        text = resources.files("nnunetv2_physaug.phantom").joinpath(default_name).read_text()
    else:
        where = str(path)
        try:
            text = Path(path).read_text()
        except OSError as e:
            raise PhantomConfigError(f"cannot read {where}: {e}") from e
    try:
        data = parse_config_text(text, "yaml", where)
    except ConfigFileError as e:
        raise PhantomConfigError(str(e)) from None
    if not isinstance(data, dict):
        raise PhantomConfigError(f"{where} must hold a mapping at the top level")
    return data, where


def check_spec(value: Any, where: str, positive: bool = False) -> None:
    """Raise :class:`PhantomConfigError` unless ``value`` is a number or an ordered ``[low, high]`` pair."""
    if isinstance(value, bool):
        raise PhantomConfigError(f"{where}: expected a number or [low, high], got {value!r}")
    if isinstance(value, (int, float)):
        values = [value]
    elif isinstance(value, list) and len(value) == 2 and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
        values = value
        if value[0] > value[1]:
            raise PhantomConfigError(f"{where}: inverted range {value!r}; write [low, high] with low <= high")
    else:
        raise PhantomConfigError(f"{where}: expected a number or [low, high], got {value!r}")
    if not all(np.isfinite(values)):
        raise PhantomConfigError(f"{where}: values must be finite, got {value!r}")
    if positive and min(values) <= 0:
        raise PhantomConfigError(f"{where}: values must be > 0, got {value!r}")


def draw(value: Spec, rng: np.random.Generator) -> float:
    """A fixed value, or a uniform draw from ``[low, high]``. Always consumes one draw from ``rng``
    so that the random stream does not depend on which parameters are fixed."""
    u = rng.random()
    if isinstance(value, list):
        return float(value[0] + u * (value[1] - value[0]))
    return float(value)


def draw_int(value: Spec, rng: np.random.Generator) -> int:
    """An integer from ``[low, high]`` inclusive (or a fixed integer); consumes one draw."""
    u = rng.random()
    if isinstance(value, list):
        lo, hi = int(value[0]), int(value[1])
        return lo + min(int(u * (hi - lo + 1)), hi - lo)
    return int(value)
