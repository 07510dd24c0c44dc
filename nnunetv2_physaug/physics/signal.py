"""Closed-form MR signal equations in torch.

Every function broadcasts over tensors of any shape (maps, parameter tensors or Python floats),
is differentiable with autograd, keeps the dtype and device of its tensor inputs and does no I/O.

Units: times in **ms**, flip angles in **degrees**, Gd concentration in **mmol/L**, relaxivity
in **L/(mmol·s)**. M0 is relative (arbitrary units); returned signals are in the units of M0.

References for the equations are in ``DESIGN.md`` §4 and in the docstrings.
"""
from __future__ import annotations

import math
from typing import Optional, Union

import torch

Tensorish = Union[torch.Tensor, float, int]

__all__ = [
    "bssfp",
    "spoiled_gre",
    "inversion_recovery",
    "look_locker",
    "saturation_recovery",
    "t2prep",
    "spin_echo",
    "gd_t1",
    "optimal_bssfp_flip_deg",
]


def _as_tensors(*values: Tensorish) -> tuple[torch.Tensor, ...]:
    """Turn floats into tensors that match the dtype/device of the first tensor argument."""
    ref = next((v for v in values if isinstance(v, torch.Tensor)), None)
    if ref is None:
        dtype, device = torch.get_default_dtype(), None
    else:
        dtype = ref.dtype if ref.is_floating_point() else torch.get_default_dtype()
        device = ref.device
    out = []
    for v in values:
        if isinstance(v, torch.Tensor):
            out.append(v if v.is_floating_point() else v.to(dtype))
        else:
            out.append(torch.as_tensor(float(v), dtype=dtype, device=device))
    return tuple(out)


def _rad(flip_deg: torch.Tensor) -> torch.Tensor:
    return flip_deg * (math.pi / 180.0)


def bssfp(m0: Tensorish, t1: Tensorish, t2: Tensorish, flip_deg: Tensorish, tr_ms: Tensorish,
          short_tr: bool = False) -> torch.Tensor:
    """Balanced SSFP steady state, on resonance, alternating RF phase, echo at TE = TR/2.

    Full form (Freeman-Hill)::

        S = M0 sin(a) (1 - E1) sqrt(E2) / (1 - (E1 - E2) cos(a) - E1 E2),
        E1 = exp(-TR/T1), E2 = exp(-TR/T2)

    The ``sqrt(E2)`` factor is the T2 decay from the RF pulse to the echo at TE = TR/2.
    With ``short_tr=True`` the TR << T1, T2 limit is returned::

        S = M0 sin(a) / (1 + cos(a) + (1 - cos(a)) T1/T2)

    (the seed code additionally drops sin(a) into M0; multiply by 1/sin(a) to get that form).
    Its relative error against the full form is below (TR/T2)²/8 (the echo at TR/2 cancels the
    first-order terms), e.g. at most 4.5e-4 for myocardium at TR = 3 ms.

    Args:
        m0: proton density (relative).
        t1, t2: relaxation times in ms (> 0).
        flip_deg: flip angle in degrees.
        tr_ms: repetition time in ms (ignored with ``short_tr=True``).
        short_tr: use the short-TR limit.
    Returns:
        transverse magnetisation magnitude at the echo, broadcast shape of the inputs.
    """
    m0, t1, t2, flip_deg, tr_ms = _as_tensors(m0, t1, t2, flip_deg, tr_ms)
    a = _rad(flip_deg)
    ca, sa = torch.cos(a), torch.sin(a)
    if short_tr:
        return m0 * sa / (1.0 + ca + (1.0 - ca) * t1 / t2)
    e1 = torch.exp(-tr_ms / t1)
    e2 = torch.exp(-tr_ms / t2)
    return m0 * sa * (1.0 - e1) * torch.sqrt(e2) / (1.0 - (e1 - e2) * ca - e1 * e2)


def optimal_bssfp_flip_deg(t1: Tensorish, t2: Tensorish) -> torch.Tensor:
    """Flip angle (degrees) that maximises the short-TR bSSFP signal: cos a = (T1/T2-1)/(T1/T2+1)."""
    t1, t2 = _as_tensors(t1, t2)
    r = t1 / t2
    return torch.rad2deg(torch.arccos((r - 1.0) / (r + 1.0)))


def spoiled_gre(m0: Tensorish, t1: Tensorish, t2: Tensorish, flip_deg: Tensorish, tr_ms: Tensorish,
                te_ms: Tensorish) -> torch.Tensor:
    """Spoiled gradient echo (FLASH) steady state (Ernst equation) with echo decay.

    ``S = M0 sin(a) (1 - E1) / (1 - cos(a) E1) * exp(-TE/T2)``, E1 = exp(-TR/T1).
    T2 stands in for T2* (no T2* map is estimated).

    Args:
        m0: proton density (relative). t1, t2: ms. flip_deg: degrees. tr_ms, te_ms: ms.
    """
    m0, t1, t2, flip_deg, tr_ms, te_ms = _as_tensors(m0, t1, t2, flip_deg, tr_ms, te_ms)
    a = _rad(flip_deg)
    e1 = torch.exp(-tr_ms / t1)
    return m0 * torch.sin(a) * (1.0 - e1) / (1.0 - torch.cos(a) * e1) * torch.exp(-te_ms / t2)


def inversion_recovery(m0: Tensorish, t1: Tensorish, ti_ms: Tensorish, tr_ms: Optional[Tensorish] = None,
                       signed: bool = False) -> torch.Tensor:
    """Longitudinal magnetisation after an ideal 180° inversion, before the readout.

    ``Mz(TI) = M0 (1 - 2 exp(-TI/T1) + exp(-TR/T1))`` where TR is the time from one inversion to
    the next. This is the exact steady state when each readout at TI saturates the magnetisation
    (Mz = 0 after it, recovering for TR - TI until the next inversion); checked against a Bloch
    simulation in ``tests/test_physics.py``. ``tr_ms=None`` means full recovery between
    inversions (the exp(-TR/T1) term vanishes); the null is then at TI = T1 ln 2.

    Args:
        m0: proton density. t1: ms. ti_ms: inversion time in ms. tr_ms: inversion repetition (ms).
        signed: keep the sign (phase-sensitive IR, PSIR); otherwise the magnitude is returned.
    """
    if tr_ms is None:
        m0, t1, ti_ms = _as_tensors(m0, t1, ti_ms)
        mz = m0 * (1.0 - 2.0 * torch.exp(-ti_ms / t1))
    else:
        m0, t1, ti_ms, tr_ms = _as_tensors(m0, t1, ti_ms, tr_ms)
        mz = m0 * (1.0 - 2.0 * torch.exp(-ti_ms / t1) + torch.exp(-tr_ms / t1))
    return mz if signed else mz.abs()


def flash_approach(mz0: Tensorish, m0: Tensorish, t1: Tensorish, flip_deg: Tensorish, tr_ms: Tensorish,
                   n_pulses: Tensorish) -> torch.Tensor:
    """Longitudinal magnetisation just before the ``n+1``-th pulse of a spoiled FLASH train that starts at ``mz0``.

    Each pulse tips Mz to ``Mz cos(a)``; between pulses it relaxes for ``TR``: ``M0 + (Mz - M0) E1``,
    ``E1 = exp(-TR/T1)``. The recursion has the closed form::

        Mz_n = Mss + (Mz0 - Mss) (cos(a) E1)^n,   Mss = M0 (1 - E1) / (1 - cos(a) E1)

    (ideal spoiling). In segmented LGE with linear ordering, ``n`` pulses precede the k-space centre,
    so the image shows ``Mz_n`` rather than the prepared ``Mz(TI)``: a tissue nulled at TI regains
    ``Mss (1 - (cos(a) E1)^n)``. Signed (no magnitude). Units: T1, TR in ms; flip in degrees.
    """
    mz0, m0, t1, flip_deg, tr_ms, n_pulses = _as_tensors(mz0, m0, t1, flip_deg, tr_ms, n_pulses)
    e1 = torch.exp(-tr_ms / t1)
    c = torch.cos(torch.deg2rad(flip_deg))
    mss = m0 * (1.0 - e1) / (1.0 - c * e1)
    return mss + (mz0 - mss) * (c * e1) ** n_pulses


def look_locker(m0: Tensorish, t1: Tensorish, t2: Tensorish, flip_deg: Tensorish, ti_ms: Tensorish,
                signed: bool = False) -> torch.Tensor:
    """Inversion-recovery TrueFISP (IR-bSSFP, the MOLLI readout) signal at inversion time TI.

    Schmitt et al., MRM 51:661 (2004)::

        S(TI) = Sss (1 - INV exp(-TI/T1*))
        Sss   = M0 sin(a) / (1 + cos(a) + (1 - cos(a)) T1/T2)         (short-TR bSSFP)
        INV   = 1 + sin(a/2)/sin(a) ((1 + cos(a)) + (1 - cos(a)) T1/T2)
        1/T1* = cos²(a/2)/T1 + sin²(a/2)/T2

    The sin(a) in Sss is kept (the seed drops it into M0), so this function and
    :func:`bssfp` (short TR) agree as TI -> infinity; at TI = 0 it gives -M0 sin(a/2).

    The form assumes an a/2 preparation pulse after the inversion (it puts M on the bSSFP
    steady-state axis) and a continuous readout, TR << T2. Against a Bloch simulation of that
    sequence the error is second order in TR: at most (TR/T2)² × Sss for flip angles up to 90°
    (about 0.1-0.2 % of Sss for myocardium at TR = 3 ms), up to 1.7 (TR/T2)² × Sss above 90°.
    Without the a/2 pulse the first echoes oscillate and differ strongly.

    Args:
        m0: proton density. t1, t2: ms. flip_deg: bSSFP readout flip angle in degrees (> 0).
        ti_ms: time after the inversion in ms.
        signed: keep the sign of the recovering signal; otherwise the magnitude (as in MOLLI
            magnitude images).
    """
    m0, t1, t2, flip_deg, ti_ms = _as_tensors(m0, t1, t2, flip_deg, ti_ms)
    a = _rad(flip_deg)
    ca, sa = torch.cos(a), torch.sin(a)
    r = t1 / t2
    sss = m0 * sa / (1.0 + ca + (1.0 - ca) * r)
    inv = 1.0 + torch.sin(a / 2.0) / sa * ((1.0 + ca) + (1.0 - ca) * r)
    rate = torch.cos(a / 2.0) ** 2 / t1 + torch.sin(a / 2.0) ** 2 / t2
    s = sss * (1.0 - inv * torch.exp(-ti_ms * rate))
    return s if signed else s.abs()


def saturation_recovery(m0: Tensorish, t1: Tensorish, ts_ms: Tensorish) -> torch.Tensor:
    """Longitudinal magnetisation TS ms after an ideal 90° saturation: ``M0 (1 - exp(-TS/T1))``."""
    m0, t1, ts_ms = _as_tensors(m0, t1, ts_ms)
    return m0 * (1.0 - torch.exp(-ts_ms / t1))


def t2prep(m0: Tensorish, t2: Tensorish, te_prep_ms: Tensorish) -> torch.Tensor:
    """Longitudinal magnetisation after an ideal T2 preparation of duration TEprep (ms).

    ``Mz = M0 exp(-TEprep/T2)`` (tip-down, refocused T2 decay, tip-up; T1 recovery during the
    prep is neglected). Multiply by a readout factor to get an image.
    """
    m0, t2, te_prep_ms = _as_tensors(m0, t2, te_prep_ms)
    return m0 * torch.exp(-te_prep_ms / t2)


def spin_echo(m0: Tensorish, t1: Tensorish, t2: Tensorish, tr_ms: Tensorish, te_ms: Tensorish) -> torch.Tensor:
    """Spin echo / TSE (90°-180°) signal with full spoiling between repetitions.

    ``S = M0 (1 - exp(-TR/T1)) exp(-TE/T2)``, the textbook approximation. For a single echo the
    exact steady state is ``M0 (1 - 2 exp(-(TR - TE/2)/T1) + exp(-TR/T1)) exp(-TE/T2)`` (Mz
    recovering during TE/2 is inverted by the 180°), i.e. this form times
    ``1 - 2 E1 (exp(TE/(2 T1)) - 1) / (1 - E1)``, E1 = exp(-TR/T1): the approximation needs
    TE << T1 or TR >> T1, not just TE << TR (about 2 % off for blood at TR = 2 s, TE = 80 ms).
    """
    m0, t1, t2, tr_ms, te_ms = _as_tensors(m0, t1, t2, tr_ms, te_ms)
    return m0 * (1.0 - torch.exp(-tr_ms / t1)) * torch.exp(-te_ms / t2)


def gd_t1(t1: Tensorish, conc_mmol: Tensorish, r1: Tensorish = 4.5) -> torch.Tensor:
    """T1 (ms) after gadolinium uptake: ``1/T1post = 1/T1pre + r1 [Gd]``.

    Args:
        t1: pre-contrast T1 in ms.
        conc_mmol: Gd concentration in mmol/L (>= 0).
        r1: longitudinal relaxivity in L/(mmol·s) (about 4.5 for gadobutrol-class agents at 1.5 T).
    Returns:
        post-contrast T1 in ms. The relaxation rate r1·[Gd] is in 1/s, hence the factor 1000.
    """
    t1, conc_mmol, r1 = _as_tensors(t1, conc_mmol, r1)
    return 1.0 / (1.0 / t1 + r1 * conc_mmol / 1000.0)
