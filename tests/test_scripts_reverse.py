"""The reverse-imaging benchmark scripts: the prior check's tissue counting, and a smoke run of the bench."""
from __future__ import annotations

import re

import torch

from nnunetv2_physaug.harness.bench import reverse as bench_reverse
from nnunetv2_physaug.harness.checks import prior as check_prior
from nnunetv2_physaug.reverse.prior import PhysicsPrior, tiny_prior_config


def test_check_prior_counts_pixels_near_a_tissue_class():
    check = check_prior
    prior = PhysicsPrior.create(tiny_prior_config(16))
    n = 8 * 16 * 16
    m0 = torch.full((n,), 0.8)
    t1, t2 = torch.full((n,), 1000.0), torch.full((n,), 50.0)       # myocardium at 1.5 T
    t1[: n // 4], t2[: n // 4] = 3000.0, 5.0                         # a quarter matches no tissue
    m0[-n // 8:] = 0.0                                               # an eighth has no signal: not counted
    z = prior.to_latent(m0.view(8, 16, 16), t1.view(8, 16, 16), t2.view(8, 16, 16))
    frac, per, t2p = check.on_tissue(prior, z)
    assert abs(frac - (n // 2 + n // 8) / (n - n // 8)) < 1e-6
    assert per["myocardium"] > 0 and per["lung"] == 0.0
    assert t2p[0] < 10 and abs(t2p[2] - 50.0) < 0.2


def test_bench_reverse_runs_and_prints_its_last_line(tmp_path, capsys):
    bench = bench_reverse
    torch.manual_seed(0)
    PhysicsPrior.create(tiny_prior_config(16)).save_pretrained(tmp_path / "prior")
    bench.main(["--prior", str(tmp_path / "prior"), "--size", "32",  # native 32², prior grid 16²
                "--n-slices", "2", "--paper-steps", "2"])
    lines = capsys.readouterr().out.strip().splitlines()
    assert any(line.strip().startswith("label:") for line in lines)
    m = re.fullmatch(r"speedup=[\d.]+ nrmse_fast=[\d.]+ nrmse_paper=[\d.]+ t1_mape_fast=[\d.]+ "
                     r"t2_mape_fast=[\d.]+ evals_fast=(\d+) evals_paper=(\d+) t1_mape_fast_noisy=[\d.]+ "
                     r"t2_mape_fast_noisy=[\d.]+", lines[-1])
    assert m, lines[-1]
    # counted, not assumed: every evaluation has a multiple of 8 rows (diffusion.evaluation_rows), so the 2 slices'
    # rows are padded: fast = 30 steps x 16 rows (micro-batch 16) / 2 slices; paper (steps overridden to 2) =
    # 2 steps x 2 micro-batches of 8 rows (2 slices x 5 candidates = 10 rows) / 2 slices
    assert (int(m.group(1)), int(m.group(2))) == (30 * 16 // 2, 2 * 2 * 8 // 2)
    assert any("Rician" in line for line in lines)
