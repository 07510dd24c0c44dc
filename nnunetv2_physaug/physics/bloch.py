"""A small, independent Bloch simulator: the oracle of the tests and of ``scripts/check_physics.py`` for
the closed-form signal equations of :mod:`nnunetv2_physaug.physics.signal`.

It knows nothing about the closed-form signal equations: it only rotates and relaxes one
magnetisation vector, event by event, in numpy float64, and runs sequences to steady state by
repeating their period many times.

State: the homogeneous vector ``(Mx, My, Mz, 1)`` (shape (4,)), so that every event — an RF
rotation, free relaxation, ideal spoiling, sampling nothing — is one 4×4 affine matrix and a
sequence period is the product of its events. Units: times in **ms**, angles in **degrees**.

Conventions: an RF pulse of flip ``a`` and phase ``phi`` rotates M by ``a`` about the transverse
axis ``(cos phi, sin phi, 0)`` (right-handed). Phase 0° tips +z towards -y, phase 180° towards +y;
signals are taken as the transverse magnitude (or a signed projection where stated), so the
handedness does not matter.
"""
from __future__ import annotations

import math

import numpy as np

__all__ = [
    "equilibrium", "rf", "relax", "spoil", "saturate", "chain", "apply", "transverse",
    "steady_state", "bssfp_echo", "spoiled_gre_echo", "ir_mz", "ir_single_mz",
    "saturation_recovery_mz", "t2prep_mz", "spin_echo_echo", "ir_bssfp_curve",
]


def equilibrium(m0: float = 1.0) -> np.ndarray:
    """Thermal equilibrium magnetisation ``(0, 0, m0, 1)``."""
    return np.array([0.0, 0.0, float(m0), 1.0])


def rf(flip_deg: float, phase_deg: float = 0.0) -> np.ndarray:
    """Instantaneous RF pulse: rotation by ``flip_deg`` about ``(cos phase, sin phase, 0)`` (Rodrigues)."""
    a, p = math.radians(flip_deg), math.radians(phase_deg)
    n = np.array([math.cos(p), math.sin(p), 0.0])
    k = np.array([[0.0, -n[2], n[1]], [n[2], 0.0, -n[0]], [-n[1], n[0], 0.0]])
    r = np.eye(3) + math.sin(a) * k + (1.0 - math.cos(a)) * (k @ k)
    op = np.eye(4)
    op[:3, :3] = r
    return op


def relax(t_ms: float, t1_ms: float, t2_ms: float, m0: float = 1.0) -> np.ndarray:
    """Free relaxation for ``t_ms`` on resonance: transverse decays with T2, Mz recovers to m0 with T1."""
    e1, e2 = math.exp(-t_ms / t1_ms), math.exp(-t_ms / t2_ms)
    op = np.diag([e2, e2, e1, 1.0])
    op[2, 3] = m0 * (1.0 - e1)
    return op


def spoil() -> np.ndarray:
    """Ideal spoiling: transverse magnetisation destroyed, Mz kept."""
    return np.diag([0.0, 0.0, 1.0, 1.0])


def saturate() -> np.ndarray:
    """Ideal saturating readout / saturation pulse: all magnetisation destroyed (M = 0)."""
    return np.diag([0.0, 0.0, 0.0, 1.0])


def chain(*ops: np.ndarray) -> np.ndarray:
    """One operator for events applied in time order ``ops[0]`` first."""
    out = np.eye(4)
    for op in ops:
        out = op @ out
    return out


def apply(op: np.ndarray, m: np.ndarray) -> np.ndarray:
    return op @ m


def transverse(m: np.ndarray) -> float:
    """Transverse magnitude ``|Mxy|``."""
    return float(math.hypot(m[0], m[1]))


def steady_state(period: np.ndarray, m_start: np.ndarray, rtol: float = 1e-14,
                 max_doublings: int = 60) -> tuple[np.ndarray, int]:
    """Run ``period`` repeatedly from ``m_start`` until the state stops changing.

    The number of repeats doubles each round (the period's 2^k-th power is formed by squaring), so
    millions of very short TRs cost a few dozen matrix products. Converged when one more doubling
    changes the state by less than ``rtol`` relative to its size.
    Returns ``(m_steady, number_of_periods_run)``; raises if it does not converge.
    """
    power, n = period.copy(), 1
    m = power @ m_start
    for _ in range(max_doublings):
        power = power @ power
        n *= 2
        m_new = power @ m_start
        scale = max(np.abs(m_new[:3]).max(), 1e-300)
        if np.abs(m_new[:3] - m[:3]).max() <= rtol * scale and n >= 8:
            return m_new, n
        m = m_new
    raise RuntimeError(f"no steady state after {n} periods")


# --- sequences -------------------------------------------------------------------------------


def bssfp_echo(m0: float, t1: float, t2: float, flip_deg: float, tr: float) -> float:
    """bSSFP on resonance, RF phase alternating 0°/180°, echo at TE = TR/2: steady-state |Mxy|."""
    half = relax(tr / 2.0, t1, t2, m0)
    # period of two TRs, starting just after the echo of the previous TR
    period = chain(half, rf(flip_deg, 0.0), half, half, rf(flip_deg, 180.0), half)
    m, _ = steady_state(period, equilibrium(m0))
    return transverse(m)


def spoiled_gre_echo(m0: float, t1: float, t2: float, flip_deg: float, tr: float, te: float) -> float:
    """Ideally spoiled GRE: transverse zeroed before each RF, echo at TE: steady-state |Mxy|."""
    # period starts at the echo: decay to TR, spoil, RF, decay to TE
    period = chain(relax(tr - te, t1, t2, m0), spoil(), rf(flip_deg), relax(te, t1, t2, m0))
    m, _ = steady_state(period, equilibrium(m0))
    return transverse(m)


def ir_mz(m0: float, t1: float, ti: float, tr_inv: float, t2: float = 50.0) -> float:
    """Signed Mz at TI in an IR experiment repeated every ``tr_inv`` ms with a saturating readout at TI.

    Period starts at TI: saturating readout, recovery to the next inversion, 180°, recovery for TI.
    (T2 is irrelevant to Mz after saturation; it is only needed by the relaxation operator.)
    """
    period = chain(saturate(), relax(tr_inv - ti, t1, t2, m0), rf(180.0), relax(ti, t1, t2, m0))
    m, _ = steady_state(period, equilibrium(m0))
    return float(m[2])


def ir_single_mz(m0: float, t1: float, ti: float, t2: float = 50.0) -> float:
    """Signed Mz at TI after one ideal inversion of fully relaxed magnetisation."""
    return float(apply(chain(rf(180.0), relax(ti, t1, t2, m0)), equilibrium(m0))[2])


def saturation_recovery_mz(m0: float, t1: float, ts: float, t2: float = 50.0,
                           m_before: np.ndarray | None = None) -> float:
    """Mz ``ts`` ms after a 90° saturation pulse and spoiler, from any prior state ``m_before``."""
    m = equilibrium(m0) if m_before is None else m_before
    return float(apply(chain(rf(90.0), spoil(), relax(ts, t1, t2, m0)), m)[2])


def t2prep_mz(m0: float, t1: float, t2: float, te_prep: float) -> float:
    """Mz after a T2 preparation from equilibrium: 90°x, TE/2, 180°y, TE/2, -90°x, spoiler.

    T1 recovery during the prep is simulated (it ends up transverse at tip-up and is spoiled).
    """
    half = relax(te_prep / 2.0, t1, t2, m0)
    prep = chain(rf(90.0, 0.0), half, rf(180.0, 90.0), half, rf(90.0, 180.0), spoil())
    return float(apply(prep, equilibrium(m0))[2])


def spin_echo_echo(m0: float, t1: float, t2: float, tr: float, te: float) -> float:
    """Single-echo spin echo (90°x – TE/2 – 180°y – TE/2 – echo), spoiled before each 90°: steady |Mxy|."""
    half = relax(te / 2.0, t1, t2, m0)
    # period starts at the echo: recover to TR, spoil, excite, refocus, echo
    period = chain(relax(tr - te, t1, t2, m0), spoil(), rf(90.0), half, rf(180.0, 90.0), half)
    m, _ = steady_state(period, equilibrium(m0))
    return transverse(m)


def ir_bssfp_curve(m0: float, t1: float, t2: float, flip_deg: float, tr: float, n_echoes: int,
                   catalyst: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Inversion followed by a continuous bSSFP readout (IR-TrueFISP, Schmitt 2004).

    From equilibrium: ideal 180° inversion at t = 0, then (if ``catalyst``) an α/2 pulse of phase
    180° at t = 0 (a preparation that aligns M with the bSSFP steady-state axis), then α pulses of
    alternating phase 0°/180° at t = TR/2, 3TR/2, ... The echo of the n-th α pulse is at t = n·TR.

    Returns ``(t_ms, signal)`` of shape (n_echoes,): echo times and the *signed* echo signal,
    i.e. the transverse magnetisation projected on the direction it has in the steady state of
    that echo's RF phase (positive once recovered, negative while inverted).
    """
    half = relax(tr / 2.0, t1, t2, m0)
    m = apply(rf(180.0), equilibrium(m0))
    if catalyst:
        m = apply(rf(flip_deg / 2.0, 180.0), m)
    t = np.arange(1, n_echoes + 1) * tr
    my = np.empty(n_echoes)
    for n in range(n_echoes):
        phase = 0.0 if n % 2 == 0 else 180.0
        m = apply(chain(half, rf(flip_deg, phase), half), m)
        my[n] = m[1]
    # on resonance with alternating phase the echo lies along ±y; its steady-state sign alternates
    # with the RF phase. Take that sign from the converged steady state of each parity.
    period = chain(half, rf(flip_deg, 0.0), half, half, rf(flip_deg, 180.0), half)
    m_after180, _ = steady_state(period, equilibrium(m0))         # echo after a phase-180° pulse
    m_after0 = apply(chain(half, rf(flip_deg, 0.0), half), m_after180)  # echo after a phase-0° pulse
    signs = np.where(np.arange(n_echoes) % 2 == 0, np.sign(m_after0[1]), np.sign(m_after180[1]))
    return t, my * signs
