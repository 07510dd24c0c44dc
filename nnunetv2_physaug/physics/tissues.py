"""Reference tissue properties (M0, T1, T2) at 1.5 T and 3 T, loaded from ``data/tissues.toml``.

The table is data, not code: edit the TOML (its comments cite the sources) to change values.
"""
from __future__ import annotations

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

import numpy as np

TISSUES: tuple[str, ...] = ("myocardium", "blood", "fat", "liver", "skeletal_muscle", "lung", "air")
FIELD_STRENGTHS: tuple[str, ...] = ("1.5T", "3T")


@dataclass(frozen=True)
class TissueProperties:
    """Mean and spread (one standard deviation) of one tissue. T1/T2 in ms, M0 relative."""

    name: str
    m0: tuple[float, float]
    t1: tuple[float, float]
    t2: tuple[float, float]

    def sample(self, rng: np.random.Generator, size=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Draw (m0, t1, t2) from independent normals clipped to physical ranges (T1, T2 >= 1 ms)."""
        m0 = np.clip(rng.normal(*self.m0, size=size), 0.0, None)
        t1 = np.clip(rng.normal(*self.t1, size=size), 1.0, None)
        t2 = np.clip(rng.normal(*self.t2, size=size), 1.0, None)
        return m0, t1, t2


@lru_cache(maxsize=None)
def _table() -> dict:
    text = resources.files("nnunetv2_physaug.physics").joinpath("data/tissues.toml").read_text()
    return tomllib.loads(text)["field"]


def tissue_table(field: str = "1.5T") -> dict[str, TissueProperties]:
    """All tissues at field strength ``field`` ("1.5T" or "3T")."""
    table = _table()
    if field not in table:
        raise ValueError(f"unknown field strength {field!r}; choose one of {sorted(table)}")
    return {name: TissueProperties(name, tuple(v["m0"]), tuple(v["t1"]), tuple(v["t2"]))
            for name, v in table[field].items()}


def tissue(name: str, field: str = "1.5T") -> TissueProperties:
    """Properties of one tissue (see :data:`TISSUES`) at field strength ``field``."""
    table = tissue_table(field)
    if name not in table:
        raise ValueError(f"unknown tissue {name!r}; choose one of {sorted(table)}")
    return table[name]
