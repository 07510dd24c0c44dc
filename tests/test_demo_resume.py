"""``scripts/demo`` in a work folder it has used before: finished trainings are kept, the rest train.

The steps are recorded instead of run (the demo's own run is ``tests/test_e2e.py``); what is asserted is
which ``nnUNetv2_train`` commands a rerun issues, against folders laid out as nnU-Net writes them.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from nnunetv2_physaug import demo


def test_a_rerun_keeps_finished_trainings_and_trains_the_rest(tmp_path, monkeypatch):
    out = tmp_path / "work"
    raw = out / "nnUNet_raw"
    names = ["Dataset900_PhantomBSSFP", "Dataset901_PhantomBSSFPTest", "Dataset902_PhantomLGE"]
    (raw / names[0] / "imagesTr").mkdir(parents=True)
    (raw / names[0] / "imagesTr" / "case_000_0000.nii.gz").write_bytes(b"")
    datasets = [{"name": names[0], "domain": "bssfp_train"}, {"name": names[1], "domain": "bssfp"},
                {"name": names[2], "domain": "lge"}]
    (raw / "phantom_summary.json").write_text(json.dumps({"seed": 0, "size": 64, "n_train": 5, "n_test": 2,
                                                          "datasets": datasets}))
    trainers = ["nnUNetTrainer_5epochs", "nnUNetTrainerPhysAug_5epochs", "nnUNetTrainerGINIPA_5epochs"]
    # the baseline finished in an earlier run; GIN-IPA was stopped mid-training (no checkpoint_final)
    results = out / "nnUNet_results" / names[0]
    (results / f"{trainers[0]}__nnUNetPlans_w50__2d" / "fold_0").mkdir(parents=True)
    (results / f"{trainers[0]}__nnUNetPlans_w50__2d" / "fold_0" / "checkpoint_final.pth").write_bytes(b"x")
    (results / f"{trainers[2]}__nnUNetPlans_w50__2d" / "fold_0").mkdir(parents=True)
    (results / f"{trainers[2]}__nnUNetPlans_w50__2d" / "fold_0" / "checkpoint_best.pth").write_bytes(b"x")

    steps = []

    def fake_run(step, cmd, env, log_dir):
        steps.append((step, cmd))
        if step == "evaluate":  # what physaug-evaluate writes
            ev = out / "evaluation"
            ev.mkdir(exist_ok=True)
            rows = [{"model": t, "domain": d, "mean_fg_dice": 0.5} for t in trainers for d in ("bssfp", "lge")]
            (ev / "results.json").write_text(json.dumps(rows))
            (ev / "results.md").write_text("table")
        return ""

    monkeypatch.setattr(demo, "_run", fake_run)
    result = demo.run_demo(out, 5, 2, 64, trainers[0], trainers[1], "0", variants=[trainers[2]])
    trained = [cmd[cmd.index("-tr") + 1] for step, cmd in steps if step.startswith("train ")]
    assert trained == [trainers[1], trainers[2]]  # the finished baseline is kept, the stopped GIN-IPA trains again
    assert all(cmd[cmd.index("-p") + 1] == "nnUNetPlans_w50" for step, cmd in steps if step.startswith("train "))
    assert not any(s == "phantom" for s, _ in steps)  # the phantom of the earlier run is reused
    # every model, kept or trained, is evaluated
    evaluate = next(cmd for s, cmd in steps if s == "evaluate")
    assert evaluate[evaluate.index("-tr") + 1:evaluate.index("-f")] == trainers
    assert result["unseen_dice_baseline"] == 0.5

    # a rerun with another phantom setting is refused before any step: the models belong to the old phantom
    steps.clear()
    for kw, message in (({"seed": 3}, "--seed 0 \\(asked: 3\\)"), ({"size": 80}, "--size 64 \\(asked: 80\\)")):
        args = dict(n_train=5, n_test=2, size=64, seed=0)
        args.update(kw)
        with pytest.raises(demo.DemoStepError, match="phantom made with other settings: " + message):
            demo.run_demo(out, args["n_train"], args["n_test"], args["size"], trainers[0], trainers[1], "0",
                          seed=args["seed"], variants=[trainers[2]])
    assert steps == []
