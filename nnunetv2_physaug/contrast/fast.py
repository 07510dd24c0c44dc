"""In-place float32 evaluations of the hottest signal equations for the data loader.

The reference forms live in :mod:`nnunetv2_physaug.physics.signal` (readable, differentiable,
one temporary per operation). Rendering runs per sample in the loader, where every fresh
full-size temporary costs an allocation and page faults, so these versions evaluate the same
equations with two to four temporaries, updated in place. ``tests/test_contrast.py`` checks them
against :mod:`~nnunetv2_physaug.physics.signal` and against hand-written numpy formulas.

``flip_deg`` may be a float or a tensor broadcastable to the maps (a (Y, X) B1-scaled flip map).
Times in ms, angles in degrees. The inputs are never modified.

The transcendental functions (:func:`exp_`, :func:`sqrt_`, :func:`cos_sin`) run numpy's
vectorised kernels on CPU tensors outside autograd (same values to float32 rounding): on the
loader's CPUs they take less time than torch's for a small map (``scripts/bench_render.py``), and a render
evaluates several of them.
"""
from __future__ import annotations

import math
from typing import Union

import numpy as np
import torch

__all__ = ["spoiled_gre", "bssfp", "look_locker", "inversion_recovery", "saturation_recovery", "spin_echo", "gd_t1",
           "exp_", "sqrt_", "cos_sin"]

Flip = Union[float, torch.Tensor]


def _numpy_ok(x: torch.Tensor) -> bool:
    """Whether ``x`` can be updated through a numpy view (CPU float32, no autograd)."""
    return x.device.type == "cpu" and x.dtype == torch.float32 and not x.requires_grad


def _in_place(x: torch.Tensor, numpy_ufunc, torch_method) -> torch.Tensor:
    """``numpy_ufunc`` on ``x``'s memory when :func:`_numpy_ok`, else ``torch_method(x)``; returns ``x``."""
    if not _numpy_ok(x):
        return torch_method(x)
    v = x.numpy()
    numpy_ufunc(v, out=v)
    return x


def exp_(x: torch.Tensor) -> torch.Tensor:
    """``x.exp_()`` (in place, returns ``x``)."""
    return _in_place(x, np.exp, torch.Tensor.exp_)


def sqrt_(x: torch.Tensor) -> torch.Tensor:
    """``x.sqrt_()`` (in place, returns ``x``)."""
    return _in_place(x, np.sqrt, torch.Tensor.sqrt_)


def cos_sin(a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """New tensors ``cos(a)``, ``sin(a)`` (a in radians)."""
    if not _numpy_ok(a):
        return torch.cos(a), torch.sin(a)
    v = a.numpy()
    return torch.from_numpy(np.cos(v)), torch.from_numpy(np.sin(v))


def _trig(flip_deg: Flip):
    if isinstance(flip_deg, torch.Tensor):
        a = flip_deg * (math.pi / 180.0)
        return (*cos_sin(a), a)
    a = math.radians(flip_deg)
    return math.cos(a), math.sin(a), a


def _decay(t: torch.Tensor, time_ms: float) -> torch.Tensor:
    """A new tensor ``exp(-time_ms / t)``."""
    return exp_(torch.reciprocal(t).mul_(-time_ms))


def spoiled_gre(m0: torch.Tensor, t1: torch.Tensor, t2: torch.Tensor, flip_deg: Flip, tr_ms: float,
                te_ms: float) -> torch.Tensor:
    """Same as :func:`nnunetv2_physaug.physics.signal.spoiled_gre`:
    ``M0 sin(a) (1 - E1) / (1 - cos(a) E1) exp(-TE/T2)``, E1 = exp(-TR/T1)."""
    ca, sa, _ = _trig(flip_deg)
    s = _decay(t1, tr_ms)                       # E1
    den = torch.mul(s, ca).neg_().add_(1.0)     # 1 - cos(a) E1
    s.neg_().add_(1.0).div_(den)                # (1 - E1) / (1 - cos(a) E1)
    exp_(torch.reciprocal(t2, out=den).mul_(-te_ms))
    return s.mul_(den).mul_(m0).mul_(sa)


def bssfp(m0: torch.Tensor, t1: torch.Tensor, t2: torch.Tensor, flip_deg: Flip, tr_ms: float) -> torch.Tensor:
    """Same as :func:`nnunetv2_physaug.physics.signal.bssfp` (full form, ``short_tr=False``):
    ``M0 sin(a) (1-E1) sqrt(E2) / (1 - (E1-E2) cos(a) - E1 E2)``."""
    ca, sa, _ = _trig(flip_deg)
    e1 = _decay(t1, tr_ms)
    e2 = _decay(t2, tr_ms)
    den = torch.sub(e1, e2).mul_(ca).neg_().add_(1.0).addcmul_(e1, e2, value=-1.0)
    return e1.neg_().add_(1.0).mul_(sqrt_(e2)).div_(den).mul_(m0).mul_(sa)


def look_locker(m0: torch.Tensor, t1: torch.Tensor, t2: torch.Tensor, flip_deg: Flip, ti_ms: float) -> torch.Tensor:
    """Same as :func:`nnunetv2_physaug.physics.signal.look_locker` (magnitude):
    ``|Sss (1 - INV exp(-TI/T1*))|`` with Sss = M0 sin(a) / D, D = (1+cos a) + (1-cos a) T1/T2,
    INV = 1 + sin(a/2)/sin(a) D, 1/T1* = cos²(a/2)/T1 + sin²(a/2)/T2."""
    ca, sa, a = _trig(flip_deg)
    if isinstance(a, torch.Tensor):
        ch, sh = cos_sin(a / 2.0)
    else:
        sh, ch = math.sin(a / 2.0), math.cos(a / 2.0)
    den = torch.div(t1, t2).mul_(1.0 - ca).add_(1.0 + ca)          # D
    inv = torch.mul(den, sh / sa).add_(1.0)                          # INV
    rate = torch.reciprocal(t2).mul_(sh * sh)
    rate.add_(torch.reciprocal(t1).mul_(ch * ch))                    # 1/T1*
    inv.mul_(exp_(rate.mul_(-ti_ms))).neg_().add_(1.0)               # 1 - INV exp(-TI/T1*)
    return inv.mul_(m0).mul_(sa).div_(den).abs_()


def inversion_recovery(m0: torch.Tensor, t1: torch.Tensor, ti_ms: float, tr_ms: float, signed: bool) -> torch.Tensor:
    """Same as :func:`nnunetv2_physaug.physics.signal.inversion_recovery` with an inversion repetition:
    ``M0 (1 - 2 exp(-TI/T1) + exp(-TR/T1))``, its magnitude unless ``signed``."""
    rate = torch.reciprocal(t1)
    mz = exp_(torch.mul(rate, -ti_ms)).mul_(-2.0).add_(1.0).add_(exp_(rate.mul_(-tr_ms)))
    mz.mul_(m0)
    return mz if signed else mz.abs_()


def saturation_recovery(m0: torch.Tensor, t1: torch.Tensor, ts_ms: float) -> torch.Tensor:
    """Same as :func:`nnunetv2_physaug.physics.signal.saturation_recovery`: ``M0 (1 - exp(-TS/T1))``."""
    return _decay(t1, ts_ms).neg_().add_(1.0).mul_(m0)


def spin_echo(m0: torch.Tensor, t1: torch.Tensor, t2: torch.Tensor, tr_ms: float, te_ms: float) -> torch.Tensor:
    """Same as :func:`nnunetv2_physaug.physics.signal.spin_echo`: ``M0 (1 - exp(-TR/T1)) exp(-TE/T2)``."""
    return _decay(t1, tr_ms).neg_().add_(1.0).mul_(_decay(t2, te_ms)).mul_(m0)


def gd_t1(t1: torch.Tensor, conc_mmol: torch.Tensor, r1: float) -> torch.Tensor:
    """Same as :func:`nnunetv2_physaug.physics.signal.gd_t1`: T1 (ms) after Gd uptake,
    ``1 / (1/T1 + r1 [Gd] / 1000)`` (r1 in L/(mmol s), [Gd] in mmol/L)."""
    return torch.mul(conc_mmol, r1 / 1000.0).add_(torch.reciprocal(t1)).reciprocal_()
