"""End to end with nnU-Net's real commands: the demo at a small budget, then stock predict + evaluate.

phantom -> physaug-reverse -> nnUNetv2_plan_and_preprocess -> nnUNetv2_train (stock baseline and
PhysAug, 2000 iterations each on 5 phantom cases at 64², CPU) -> physaug-evaluate -> physaug-preview,
all through ``scripts/demo``'s module; then ``nnUNetv2_predict`` on an unseen contrast and
``nnUNetv2_evaluate_folder``. The product's claim is asserted at this scale: PhysAug's mean Dice over
the six unseen phantom contrasts beats the baseline's by a margin measured across phantom seeds.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from support.nnunet import nnunet_env, run

SMOKE_TRAINERS = Path(__file__).parent / "smoke_trainers"
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    env = nnunet_env(out)
    env["nnUNet_extTrainer"] = str(SMOKE_TRAINERS)  # the demo appends ours
    env.pop("nnUNet_n_proc_DA")  # the demo sets its own
    t0 = time.time()
    proc = subprocess.run([sys.executable, "-m", "nnunetv2_physaug.demo", "--out", str(out), "--n-train", "5",
                           "--n-test", "2", "--size", "64", "--seed", "0", "--baseline", "nnUNetTrainer_e2e",
                           "--physaug", "nnUNetTrainerPhysAug_e2e"], env=env, capture_output=True, text=True,
                          timeout=2400)
    seconds = time.time() - t0
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return out, proc.stdout, seconds


def test_demo_runs_every_step_and_reports(demo_run):
    out, stdout, seconds = demo_run
    last = stdout.strip().splitlines()[-1]
    fields = dict(kv.split("=") for kv in last.split())
    assert set(fields) == {"unseen_dice_physaug", "unseen_dice_baseline", "indomain_dice_physaug",
                           "indomain_dice_baseline", "seconds"}
    for k, v in fields.items():
        assert 0.0 <= float(v) <= (1.0 if k != "seconds" else 1e5)
    rows = json.loads((out / "evaluation" / "results.json").read_text())
    domains = {r["domain"] for r in rows}
    assert len(domains) == 7 and {r["model"] for r in rows} == {"nnUNetTrainer_e2e", "nnUNetTrainerPhysAug_e2e"}
    for name in ("results.md", "results.csv", "dice.png"):
        assert (out / "evaluation" / name).stat().st_size > 0
    assert (out / "preview_wide.png").stat().st_size > 10_000
    # the PhysAug trainer trained on maps estimated by physaug-reverse, not the phantom's ground truth
    train = next((out / "nnUNet_raw").glob("Dataset900_*"))
    manifest = json.loads((train / "tissueMapsTr" / "manifest.json").read_text())
    assert manifest["estimator"] != "ground_truth"
    log = next((out / "nnUNet_results").rglob("nnUNetTrainerPhysAug_e2e__*/fold_0/training_log_*.txt")).read_text()
    assert "PhysAug: protocol 'wide'" in log
    print(f"demo wall clock: {seconds:.0f} s")


#: PhysAug's unseen-contrast margin must exceed this. Measured with this test's settings (5 cases at 64²,
#: 2000 iterations, stock nnU-Net training is not seeded) on phantom seeds 0-3, unseen mean Dice PhysAug -
#: baseline: +0.198, +0.447, +0.263, +0.588 (PhysAug in-domain 0.845-0.893); at 1000 iterations the margin was +0.136, +0.321 and -0.071 (seeds 0-2), so the
#: budget was doubled. Mutation check: the PhysAug trainer with p_render = 0 on seed 0 gave +0.016 (fails).
#: Reproduce one seed with
#:   nnUNet_extTrainer=tests/smoke_trainers python -m nnunetv2_physaug.demo --out OUT --n-train 5 --n-test 2 \
#:       --size 64 --seed S --baseline nnUNetTrainer_e2e --physaug nnUNetTrainerPhysAug_e2e
UNSEEN_MARGIN = 0.10


def test_physaug_beats_the_baseline_on_unseen_contrasts(demo_run):
    """The product's claim at smoke scale (seed 0): better on the six unseen phantom contrasts, by a margin."""
    _, stdout, _ = demo_run
    fields = {k: float(v) for k, v in (kv.split("=") for kv in stdout.strip().splitlines()[-1].split())}
    margin = fields["unseen_dice_physaug"] - fields["unseen_dice_baseline"]
    assert margin > UNSEEN_MARGIN, fields
    # and it has learnt the task in-domain too (it is not winning by the baseline failing everywhere)
    assert fields["indomain_dice_physaug"] > 0.7, fields


def test_stock_predict_and_evaluate_on_an_unseen_contrast(demo_run, tmp_path):
    out, _, _ = demo_run
    env = nnunet_env(out)
    lge = next((out / "nnUNet_raw").glob("Dataset90*_PhantomLGE"))
    pred = tmp_path / "pred"
    # stock nnUNetv2_predict re-imports the trainer named in the checkpoint through nnUNet_extTrainer
    env["nnUNet_extTrainer"] = env["nnUNet_extTrainer"] + os.pathsep + str(SMOKE_TRAINERS)
    run(["nnUNetv2_predict", "-i", str(lge / "imagesTr"), "-o", str(pred), "-d", "900", "-c", "2d",
         "-tr", "nnUNetTrainerPhysAug_e2e", "-p", "nnUNetPlans_w50", "-f", "0", "-device", "cpu", "--disable_tta",
         "-npp", "1", "-nps", "1"], env)
    n_images = len(list((lge / "imagesTr").glob("*_0000.nii.gz")))
    assert len(list(pred.glob("*.nii.gz"))) == n_images
    model = next((out / "nnUNet_results").rglob("nnUNetTrainerPhysAug_e2e__nnUNetPlans_w50__2d"))
    # both models trained with the demo's half-width copy of nnU-Net's plans
    stock = json.loads(next((out / "nnUNet_preprocessed").glob("Dataset900_*/nnUNetPlans.json")).read_text())
    full = stock["configurations"]["2d"]["architecture"]["arch_kwargs"]["features_per_stage"]
    for trainer in ("nnUNetTrainer_e2e", "nnUNetTrainerPhysAug_e2e"):
        used = json.loads(next((out / "nnUNet_results").rglob(f"{trainer}__nnUNetPlans_w50__2d/plans.json")).read_text())
        assert used["configurations"]["2d"]["architecture"]["arch_kwargs"]["features_per_stage"] == [
            max(4, round(f / 2)) for f in full]
    run(["nnUNetv2_evaluate_folder", str(lge / "labelsTr"), str(pred), "-djfile", str(model / "dataset.json"),
         "-pfile", str(model / "plans.json"), "-np", "1"], env)
    summary = json.loads((pred / "summary.json").read_text())
    assert set(summary["mean"]) == {"1", "2", "3"}
    assert 0.0 <= summary["foreground_mean"]["Dice"] <= 1.0
