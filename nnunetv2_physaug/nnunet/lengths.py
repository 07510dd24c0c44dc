"""Training-length variants generated from nnU-Net's own ``nnUNetTrainer_Xepochs`` classes.

For a trainer ``T`` and every stock length class ``nnUNetTrainer_<X>`` (``_1epoch``, ``_5epochs``, ...,
``_8000epochs``), :func:`add_length_variants` defines ``T_<X>`` with bases ``(T, nnUNetTrainer_<X>)``: the
stock class's ``__init__`` (same signature, same ``num_epochs``) and ``T``'s augmentation, so a comparison of
``nnUNetTrainer_5epochs`` with ``T_5epochs`` changes nothing but the augmentation. The classes are made
with their module's name and qualified name, so they pickle into nnU-Net's data-loader workers like
written-out classes.
"""
from __future__ import annotations

import importlib
from typing import MutableMapping

from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.training.nnUNetTrainer.variants.training_length import nnUNetTrainer_Xepochs as _stock_module

STOCK_PREFIX = "nnUNetTrainer"


def stock_lengths() -> dict[str, type]:
    """``{suffix: stock class}`` of nnU-Net's training lengths, e.g. ``{"_5epochs": nnUNetTrainer_5epochs}``,
    shortest first."""
    found = {name[len(STOCK_PREFIX):]: cls for name, cls in vars(_stock_module).items()
             if isinstance(cls, type) and issubclass(cls, nnUNetTrainer) and name.startswith(STOCK_PREFIX + "_")
             and cls.__module__ == _stock_module.__name__}

    def epochs(suffix: str) -> int:
        return int("".join(ch for ch in suffix if ch.isdigit()))
    return dict(sorted(found.items(), key=lambda kv: epochs(kv[0])))


def _defined_by_nnunet(name: str, base: type) -> bool:
    """Whether nnU-Net itself ships ``name`` beside ``base`` (e.g. ``nnUNetTrainerDA5_10epochs``): nnU-Net's
    lookup would find its own class first, so none is generated."""
    if not base.__module__.startswith("nnunetv2."):
        return False
    return hasattr(importlib.import_module(base.__module__), name)


def add_length_variants(base: type, namespace: MutableMapping[str, object]) -> list[str]:
    """Define ``<base>_<X>`` in ``namespace`` (a module's globals) for every stock length ``X``; names
    already in ``namespace`` or shipped by nnU-Net are left alone. Returns the names defined."""
    module = namespace["__name__"]
    made = []
    for suffix, stock in stock_lengths().items():
        name = base.__name__ + suffix
        if name in namespace or _defined_by_nnunet(name, base):
            continue
        doc = f"``{stock.__name__}`` with ``{base.__name__}``'s augmentation: same epochs, same everything else."
        namespace[name] = type(name, (base, stock), {"__module__": module, "__qualname__": name, "__doc__": doc})
        made.append(name)
    return made
