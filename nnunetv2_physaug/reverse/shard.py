"""Which cases a ``physaug-reverse`` process computes: ``--shard i/n`` or the torchrun rank.

Shares are disjoint and cover all cases, so several processes can fill one maps folder at once
(the folder's per-case locks and commit records, :mod:`nnunetv2_physaug.maps.folder`, keep them
from redoing each other's cases even without shards).
"""
from __future__ import annotations

import os
from typing import Optional


def parse_shard(text: Optional[str]) -> Optional[tuple[int, int]]:
    """``"i/n"`` (0 <= i < n) -> (i, n); None stays None."""
    if text is None:
        return None
    try:
        i_s, n_s = text.split("/")
        i, n = int(i_s), int(n_s)
    except ValueError:
        raise ValueError(f"--shard {text!r} is not of the form i/n (e.g. 0/4)") from None
    if n < 1 or not 0 <= i < n:
        raise ValueError(f"--shard {text!r}: need 0 <= i < n (shards are numbered from 0)")
    return i, n


def _env_int(name: str, default: int) -> int:
    """A whole-number environment variable (torchrun's RANK, WORLD_SIZE); a clear error naming it otherwise."""
    text = os.environ.get(name)
    if text is None or not text.strip():
        return default
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"environment variable {name}={text!r} is not a whole number; torchrun sets it, unset it "
                         f"(or use --shard i/n) when not running under torchrun") from None


def resolve_shard(shard: Optional[tuple[int, int]]) -> tuple[int, int]:
    """The explicit shard, else the torch.distributed / torchrun rank and world size, else (0, 1)."""
    if shard is not None:
        return shard
    try:
        import torch.distributed as dist
        if dist.is_available() and dist.is_initialized():
            return dist.get_rank(), dist.get_world_size()
    except ImportError:  # torch built without distributed support
        pass
    world, rank = _env_int("WORLD_SIZE", 1), _env_int("RANK", 0)
    if world > 1 and not 0 <= rank < world:
        raise ValueError(f"environment RANK={rank} is outside WORLD_SIZE={world}")
    return (rank, world) if world > 1 else (0, 1)


def shard_cases(cases: list[str], shard: tuple[int, int]) -> list[str]:
    """Round-robin share ``shard = (i, n)`` of the sorted ``cases``; the n shares are disjoint and cover all."""
    i, n = shard
    return sorted(cases)[i::n]
