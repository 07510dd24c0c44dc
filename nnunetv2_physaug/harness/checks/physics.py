"""Compare every closed-form signal equation with the independent Bloch simulator (nnunetv2_physaug/physics/bloch.py).

Run with no arguments: ``.venv/bin/python scripts/check_physics.py``. Prints one row per equation
with the largest relative error over a sweep of cardiac tissues (1.5 T and 3 T blood, myocardium,
fat, skeletal muscle, a long-T2 fluid) and sequence parameters. The approximations the project
relies on are listed with the regime and the error-scaling constant the tests use as tolerance, and
are in the headline too, at the parameters where they are used. Last line::

    max_rel_error=<x> short_tr_bssfp_tr3=<x> look_locker_tr3=<x> spin_echo_tse=<x>

``max_rel_error``: the largest error over the equations that are exact for the simulated sequence
(full bSSFP, spoiled GRE, IR, saturation recovery, T2 prep). ``short_tr_bssfp_tr3``: the short-TR
bSSFP that every estimator inverts, against the full Bloch steady state at TR = 3 ms (cine TR; the
cardiac tissues, T2 >= 27 ms, all flips). ``look_locker_tr3``: the MOLLI-type IR-TrueFISP curve at TR
= 3 ms, flips <= 90 deg, as a fraction of its steady state. ``spin_echo_tse``: the TSE spin-echo form
at TR 2-12 s, TE 30-120 ms. The Gd relaxivity model ``gd_t1`` (fast exchange, 1/T1 = 1/T1_0 + r1 C)
is a definition, not a signal the Bloch simulator can check; it is listed as such and excluded.
Times in ms, angles in degrees.
"""
from __future__ import annotations

import itertools
import math
import numpy as np
import torch

from nnunetv2_physaug.physics import bloch
from nnunetv2_physaug.physics import signal as sig

T1T2 = [(1550.0, 270.0), (1000.0, 50.0), (343.0, 58.0), (1900.0, 270.0), (1120.0, 48.0), (382.0, 68.0),
        (856.0, 27.0), (4000.0, 2000.0)]
FLIPS = [5.0, 20.0, 35.0, 50.0, 70.0, 90.0, 120.0]


def t(x) -> torch.Tensor:
    return torch.as_tensor(x, dtype=torch.float64)


def rel(a: float, b: float) -> float:
    return abs(a - b) / abs(b)


def check_bssfp_full() -> tuple[float, int]:
    errs = [rel(sig.bssfp(t(1.0), t(t1), t(t2), t(a), t(tr)).item(), bloch.bssfp_echo(1.0, t1, t2, a, tr))
            for (t1, t2), a, tr in itertools.product(T1T2, FLIPS, [2.5, 3.0, 5.0, 10.0])]
    return max(errs), len(errs)


def check_bssfp_short_tr() -> tuple[float, float, int]:
    """Largest error at TR = 0.1 ms and the largest err / (TR/T2)^2 over TR in 0.5..5 ms."""
    err_short, coef, n = 0.0, 0.0, 0
    for (t1, t2), a in itertools.product(T1T2, FLIPS):
        cf = sig.bssfp(t(1.0), t(t1), t(t2), t(a), t(1.0), short_tr=True).item()
        err_short = max(err_short, rel(cf, bloch.bssfp_echo(1.0, t1, t2, a, 0.1)))
        for tr in (0.5, 1.5, 3.0, 5.0):
            coef = max(coef, rel(cf, bloch.bssfp_echo(1.0, t1, t2, a, tr)) / (tr / t2) ** 2)
            n += 1
    return err_short, coef, n


def check_spoiled_gre() -> tuple[float, int]:
    errs = [rel(sig.spoiled_gre(t(1.0), t(t1), t(t2), t(a), t(tr), t(te)).item(),
                bloch.spoiled_gre_echo(1.0, t1, t2, a, tr, te))
            for (t1, t2), a, (tr, te) in itertools.product(T1T2, [3.0, 10.0, 15.0, 60.0],
                                                            [(8.0, 3.0), (15.0, 5.0), (50.0, 20.0), (100.0, 80.0)])]
    return max(errs), len(errs)


def check_inversion_recovery() -> tuple[float, int]:
    errs = []
    for (t1, _), ti, tr in itertools.product(T1T2, [50.0, 200.0, 500.0, 1200.0], [1500.0, 3000.0, 8000.0]):
        errs.append(rel(sig.inversion_recovery(t(1.0), t(t1), t(ti), t(tr), signed=True).item(), bloch.ir_mz(1.0, t1, ti, tr)))
        if abs(ti - t1 * math.log(2.0)) > 1.0:  # the relative error is undefined at the null
            errs.append(rel(sig.inversion_recovery(t(1.0), t(t1), t(ti), signed=True).item(), bloch.ir_single_mz(1.0, t1, ti)))
    return max(errs), len(errs)


def check_saturation_recovery() -> tuple[float, int]:
    errs = [rel(sig.saturation_recovery(t(1.0), t(t1), t(ts)).item(), bloch.saturation_recovery_mz(1.0, t1, ts))
            for (t1, _), ts in itertools.product(T1T2, [5.0, 50.0, 300.0, 1000.0, 4000.0])]
    return max(errs), len(errs)


def check_t2prep() -> tuple[float, int]:
    errs = [rel(sig.t2prep(t(1.0), t(t2), t(te)).item(), bloch.t2prep_mz(1.0, t1, t2, te))
            for (t1, t2), te in itertools.product(T1T2, [0.0, 25.0, 40.0, 60.0, 80.0])]
    return max(errs), len(errs)


def check_spin_echo() -> tuple[float, float, int]:
    """Largest error where the dropped term is < 5e-4, and the largest over realistic TSE T2w/PDw."""
    in_regime, realistic, n = 0.0, 0.0, 0
    for (t1, t2), (tr, te) in itertools.product(T1T2, [(2000.0, 80.0), (3000.0, 30.0), (3000.0, 100.0), (6000.0, 30.0),
                                                        (8000.0, 100.0), (12000.0, 120.0)]):
        err = rel(sig.spin_echo(t(1.0), t(t1), t(t2), t(tr), t(te)).item(), bloch.spin_echo_echo(1.0, t1, t2, tr, te))
        e1 = math.exp(-tr / t1)
        if 2.0 * e1 * (math.exp(te / (2.0 * t1)) - 1.0) / (1.0 - e1) < 5e-4:
            in_regime = max(in_regime, err)
        if t1 < 2500.0:
            realistic = max(realistic, err)
        n += 1
    return in_regime, realistic, n


def check_look_locker(flips: list[float]) -> tuple[float, float, float, int]:
    """Max |error|/Sss at TR = 3 ms, largest err/Sss/(TR/T2)^2 (TR 1.5 and 3 ms), max T1* fit error."""
    err3, coef, rate_err, n = 0.0, 0.0, 0.0, 0
    for (t1, t2), a in itertools.product(T1T2[:-1], flips):
        half = math.radians(a) / 2.0
        rate = math.cos(half) ** 2 / t1 + math.sin(half) ** 2 / t2
        sss = sig.bssfp(t(1.0), t(t1), t(t2), t(a), t(1.0), short_tr=True).item()
        for tr in (3.0, 1.5):
            tt, sim = bloch.ir_bssfp_curve(1.0, t1, t2, a, tr, int(6.0 / rate / tr))
            cf = sig.look_locker(t(1.0), t(t1), t(t2), t(a), torch.from_numpy(tt), signed=True).numpy()
            err = float(np.abs(cf - sim).max() / sss)
            coef = max(coef, err / (tr / t2) ** 2)
            n += 1
            if tr == 3.0:
                err3 = max(err3, err)
                keep = tt <= 3.0 / rate
                slope = np.polyfit(tt[keep], np.log(bloch.bssfp_echo(1.0, t1, t2, a, tr) - sim[keep]), 1)[0]
                rate_err = max(rate_err, rel(-slope, rate))
    return err3, coef, rate_err, n


def check_bssfp_short_tr_at(tr: float) -> float:
    """Largest relative error of the short-TR bSSFP against the Bloch steady state at ``tr`` (ms),
    cardiac tissues only (the long-T2 fluid aside), every flip of FLIPS."""
    errs = [rel(sig.bssfp(t(1.0), t(t1), t(t2), t(a), t(tr), short_tr=True).item(), bloch.bssfp_echo(1.0, t1, t2, a, tr))
            for (t1, t2), a in itertools.product(T1T2[:-1], FLIPS)]
    return max(errs)


def gd_t1_post_blood_ms() -> float:
    """Post-contrast blood T1 (ms) of the relaxivity model at 0.5 mmol/L gadobutrol (r1 5.2 L/(mmol s), 1.5 T)."""
    return sig.gd_t1(t(1550.0), t(0.5), 5.2).item()


def main(argv=None) -> None:
    import argparse

    argparse.ArgumentParser(prog="scripts/check_physics.py", description=__doc__,
                            formatter_class=argparse.RawDescriptionHelpFormatter).parse_args(argv)  # --help
    rows = []
    exact = []

    def add(name, kind, err, n, note):
        rows.append((name, kind, err, n, note))
        if kind == "exact":
            exact.append(err)

    e, n = check_bssfp_full()
    add("bssfp (Freeman-Hill, TE=TR/2)", "exact", e, n, "vs Bloch steady state")
    e, c, n = check_bssfp_short_tr()
    add("bssfp short_tr, TR=0.1 ms", "approx", e, n, f"err <= {c:.3f} (TR/T2)^2 for TR 0.5-5 ms (tests: 0.13)")
    e, n = check_spoiled_gre()
    add("spoiled_gre (ideal spoiling)", "exact", e, n, "vs Bloch steady state")
    e, n = check_inversion_recovery()
    add("inversion_recovery (TR and None)", "exact", e, n, "saturating readout at TI / single inversion")
    e, n = check_saturation_recovery()
    add("saturation_recovery", "exact", e, n, "90 deg + spoiler")
    e, n = check_t2prep()
    add("t2prep", "exact", e, n, "90x-180y-(-90x)+spoiler, T1 recovery simulated")
    e_in, e_real, n = check_spin_echo()
    add("spin_echo, dropped term < 5e-4", "approx", e_in, n,
        f"max {e_real:.2e} for TSE TR 2-12 s, TE 30-120 ms (dropped term, see tests)")
    e3, c, r, n = check_look_locker([10.0, 35.0, 50.0, 70.0, 90.0])
    add("look_locker (IR-TrueFISP, a/2 prep), TR=3 ms", "approx", e3, n,
        f"a<=90: |err|/Sss <= {c:.3f} (TR/T2)^2 (tests: 1.0); fitted 1/T1* rel err {r:.1e}")
    e3, c, r, n = check_look_locker([110.0, 130.0, 150.0])
    add("look_locker, a=110-150 deg, TR=3 ms", "approx", e3, n,
        f"|err|/Sss <= {c:.3f} (TR/T2)^2; fitted 1/T1* rel err {r:.1e}")
    add("gd_t1 (relaxivity model)", "model", float("nan"), 0,
        f"a definition, not Bloch-checkable: blood 1550 ms + 0.5 mmol/L (r1 5.2) -> {gd_t1_post_blood_ms():.0f} ms")
    tr3 = check_bssfp_short_tr_at(3.0)
    add("bssfp short_tr at TR=3 ms (estimators' model)", "approx", tr3, len(T1T2[:-1]) * len(FLIPS),
        "cardiac tissues, all flips, vs full Bloch steady state")

    w = max(len(r[0]) for r in rows)
    print(f"{'equation':<{w}}  {'kind':<6}  {'cases':>5}  {'max_rel_err':>11}  note")
    for name, kind, err, n, note in rows:
        print(f"{name:<{w}}  {kind:<6}  {n:>5}  {err:>11.3e}  {note}")
    ll3 = next(r for r in rows if r[0].startswith("look_locker (IR-TrueFISP"))[2]
    print(f"max_rel_error={max(exact):.3e} short_tr_bssfp_tr3={tr3:.3e} look_locker_tr3={ll3:.3e} "
          f"spin_echo_tse={e_real:.3e}")


if __name__ == "__main__":
    main()
