"""Random streams of reverse imaging: one torch Generator per (seed, case, slice).

Every random draw an estimator makes for a slice comes from that slice's own generator, in the
same order whatever else is in the batch, so the maps of a case do not depend on the batch size,
the sharding, the micro-batching or on which cases a resumed run still had to do.
Rows of a batch that belong to one slice (its K samples or candidates) draw from its generator
one after the other.
"""
from __future__ import annotations

import zlib
from typing import Sequence, Union

import torch


def slice_seed(seed: int, case: str, z: int) -> int:
    """A 31-bit seed for slice ``z`` of ``case`` under the run's ``seed``."""
    return zlib.crc32(f"{seed}:{case}:{z}".encode()) & 0x7FFFFFFF


def slice_generator(seed: int, case: str, z: int, device: Union[str, torch.device] = "cpu") -> torch.Generator:
    gen = torch.Generator(device=device)
    gen.manual_seed(slice_seed(seed, case, z))
    return gen


def per_row(generators: Sequence[torch.Generator], repeats: int) -> list[torch.Generator]:
    """Each slice's generator ``repeats`` times, slice-major (rows ``i * repeats + k``)."""
    return [g for g in generators for _ in range(repeats)]


def randn_rows(generators: Sequence[torch.Generator], row_shape: Sequence[int],
               device: Union[str, torch.device, None] = None) -> torch.Tensor:
    """Standard normal (len(generators), *row_shape) float32, row i drawn from ``generators[i]``."""
    rows = [torch.randn((1, *row_shape), generator=g, device=g.device) for g in generators]
    out = torch.cat(rows, dim=0)
    return out.to(device) if device is not None else out


def as_slice_generators(generators: Union[torch.Generator, Sequence[torch.Generator]], n: int) -> list[torch.Generator]:
    """``generators`` as a list of ``n`` (a single generator is shared: slices then draw from it in
    batch order, so their maps depend on the batch; the engine passes one per slice)."""
    if isinstance(generators, torch.Generator):
        return [generators] * n
    gens = list(generators)
    if len(gens) != n:
        raise ValueError(f"got {len(gens)} generators for {n} slices; pass one per slice")
    return gens
