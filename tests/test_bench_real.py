"""The real-data benchmark (scripts/bench_real.py) and the realism check (scripts/check_realism.py) on
fake MyoPS trees with the real names (no real images in the repository).

Truth: hand-written prediction/pathology volumes for the pathology breakdown; the fake builder's
intensities for the real-image ratios (blood / myocardium of C0 is exactly 300 / 120); nnU-Net's own
commands for the end-to-end run.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from support.fake_trees import MYOPS_INTENSITY, make_fake_myops
from support.nnunet import nnunet_env
from nnunetv2_physaug.harness import benchmark_real as br
from nnunetv2_physaug.harness.realbench import report, scoring, steps
from nnunetv2_physaug.harness import realism
from nnunetv2_physaug.contrast import ProtocolError, protocol_with_settings

REPO = Path(__file__).resolve().parents[1]
SMOKE_TRAINERS = Path(__file__).parent / "smoke_trainers"


def _save(path: Path, data: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data.astype(np.uint8), np.eye(4)), str(path))


def test_pathology_breakdown_counts_by_hand(tmp_path):
    path = np.zeros((4, 4, 1), np.uint8)
    path[0, :, 0] = 2          # 4 scar voxels
    path[1, :2, 0] = 1         # 2 edema voxels
    pred = np.zeros((4, 4, 1), np.uint8)
    pred[0, :3, 0] = 2         # 3 of 4 scar voxels called myocardium
    pred[0, 3, 0] = 3          # 1 called LV
    pred[1, 0, 0] = 2          # 1 of 2 edema voxels myocardium, the other background
    _save(tmp_path / "pred" / "Case1.nii.gz", pred)
    _save(tmp_path / "path" / "Case1.nii.gz", path)
    out = scoring.pathology_breakdown(tmp_path / "pred", tmp_path / "path", ["Case1"])
    assert out["scar"]["voxels"] == 4 and out["scar"]["as_myocardium"] == 0.75 and out["scar"]["as_LV"] == 0.25
    assert out["edema"]["voxels"] == 2 and out["edema"]["as_myocardium"] == 0.5 and out["edema"]["as_background"] == 0.5


def test_structure_confusion_counts_by_hand_and_reaches_the_report(tmp_path):
    label = np.zeros((4, 4, 1), np.uint8)
    label[0, :, 0] = 2         # 4 myocardium voxels
    label[1, :2, 0] = 3        # 2 LV voxels
    label[2, 0, 0] = 1         # 1 RV voxel
    pred = np.zeros((4, 4, 1), np.uint8)
    pred[0, :2, 0] = 2         # myocardium: 2 of 4 right, 1 called LV, 1 background
    pred[0, 2, 0] = 3
    pred[1, :2, 0] = 2         # both LV voxels called myocardium
    _save(tmp_path / "pred" / "Case1.nii.gz", pred)
    _save(tmp_path / "lab" / "Case1.nii.gz", label)
    out = scoring.structure_confusion(tmp_path / "pred", tmp_path / "lab", ["Case1"])
    assert out["MYO"] == {"voxels": 4, "as_background": 0.25, "as_RV": 0.0, "as_myocardium": 0.5, "as_LV": 0.25}
    assert out["LV"]["voxels"] == 2 and out["LV"]["as_myocardium"] == 1.0
    assert out["RV"]["voxels"] == 1 and out["RV"]["as_background"] == 1.0
    rows = [{"model": "P", "sequence": s, "mean_fg_dice": 0.5, "n_cases": 1, "dice_per_label": {"1": 0.5, "2": 0.5, "3": 0.5},
             "pathology": {p: {"voxels": 1, "as_myocardium": 1.0, "as_LV": 0.0} for p in ("scar", "edema")},
             "confusion": out} for s in steps.SEQUENCES]
    md = report.markdown_report(rows)
    assert "| MYO on T2 | 25.0% / 0.0% / 50.0% / 25.0% |" in md
    # repeats pool the confusion to the mean of their fractions
    other = {**out, "MYO": {**out["MYO"], "as_myocardium": 1.0, "as_LV": 0.0, "as_background": 0.0}}
    pooled = scoring.pool_repeats([{**rows[1], "run": "P", "repeat": 0}, {**rows[1], "run": "P_r1", "repeat": 1, "confusion": other}])
    assert pooled[0]["confusion"]["MYO"]["as_myocardium"] == pytest.approx(0.75)
    assert pooled[0]["confusion"]["MYO"]["as_LV"] == pytest.approx(0.125)


def test_summary_line_and_tables():
    def row(model, seq, d):
        return {"model": model, "sequence": seq, "mean_fg_dice": d, "n_cases": 5,
                "dice_per_label": {"1": d, "2": d, "3": d},
                "pathology": {p: {"voxels": 10, "as_myocardium": 0.5, "as_LV": 0.1} for p in ("scar", "edema")}}
    rows = [row(m, s, d) for m, base in (("B", 0.5), ("P", 0.7)) for s, d in zip(steps.SEQUENCES, (base, base - 0.1, base - 0.2))]
    line = report.summary_line(rows, "B", "P", 12.4)
    assert line == ("real_c0_physaug=0.700 real_c0_baseline=0.500 real_lge_physaug=0.600 real_lge_baseline=0.400 "
                    "real_t2_physaug=0.500 real_t2_baseline=0.300 seconds=12")
    md = report.markdown_report(rows)
    assert "| LGE | 0.400 | 0.600 |" in md and "scar on LGE" in md and "Gap closed" not in md
    # baseline C0 0.5, LGE 0.4, T2 0.3; P: LGE 0.6 (200 % of the 0.1 drop), T2 0.5 (100 % of 0.2)
    md = report.markdown_report(rows, "B")
    assert "| C0 -> LGE | 200% |" in md and "| C0 -> T2 | 100% |" in md and "| C0 vs baseline | +0.200 |" in md
    # the README's figure: (0.800 - 0.641) / (0.874 - 0.641) = 68 %
    real = [{"model": m, "sequence": s, "mean_fg_dice": d} for m, ds in (("B", (0.874, 0.641)), ("P", (0.864, 0.800)))
            for s, d in zip(("C0", "LGE"), ds)]
    assert round(100 * report.gap_closed(real, "B", "P", "LGE")) == 68


def _converted(tmp_path, monkeypatch, test_cases):
    """A fake MyoPS tree (Case3001-3007) converted with Case3001-3005 as training patients."""
    env = nnunet_env(tmp_path)
    for k in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        monkeypatch.setenv(k, env[k])
    make_fake_myops(tmp_path / "Train")
    from nnunetv2_physaug.conversion import convert_myops
    return convert_myops(tmp_path / "Train", train_cases=range(3001, 3006), test_cases=test_cases, progress=False)


def test_cv_test_sets_are_the_folds_validation_patients(tmp_path, monkeypatch):
    res = _converted(tmp_path, monkeypatch, (3006, 3007))
    splits = json.loads(res.splits_file.read_text())
    for fold in range(5):
        cases = steps.patients_under_test(res.dataset_dir, "cv", fold, splits)
        assert cases == splits[fold]["val"] and not set(cases) & set(splits[fold]["train"])
        folder = tmp_path / f"links{fold}"
        steps.linked_test_folder(res.dataset_dir, "cv", cases, folder)
        for case in cases:
            for seq in steps.SEQUENCES:
                img = nib.load(str(folder / f"{case}__{seq}_0000.nii.gz")).get_fdata()
                assert img[20, 18, 1] == MYOPS_INTENSITY[seq][2]  # the right sequence behind each link
    assert steps.patients_under_test(res.dataset_dir, "final", None, splits) == ["Case3006", "Case3007"]


def test_real_ratios_of_the_fake_tree(tmp_path, monkeypatch):
    res = _converted(tmp_path, monkeypatch, ())
    cases = [f"Case{n}" for n in range(3001, 3006)]
    for seq in ("C0", "LGE", "T2"):
        bg, myo, blood = MYOPS_INTENSITY[seq]
        r = realism.real_ratios(res.dataset_dir, seq, cases)
        # two heart slices per patient; scar of the fake is as bright as its myocardium
        assert len(r["blood"]) == 10 and np.allclose(r["blood"], blood / myo)
        assert np.allclose(r["scar"], 1.0)


@pytest.mark.slow
def test_bench_real_final_end_to_end(tmp_path):
    make_fake_myops(tmp_path / "Train", cases=range(3001, 3009))
    work = tmp_path / "work"
    env = nnunet_env(work)
    env["nnUNet_extTrainer"] = str(SMOKE_TRAINERS)  # the benchmark appends ours
    env.pop("nnUNet_n_proc_DA", None)
    cmd = [sys.executable, str(REPO / "scripts" / "bench_real.py"), "--myops", str(tmp_path / "Train"), "--final",
           "--work", str(work), "--crop", "24", "--spacing", "1.5", "--baseline", "nnUNetTrainer_smoke",
           "--physaug", "nnUNetTrainerPhysAug_smoke", "--test-cases", "3006-3008", "--train-cases", "3001-3005",
           "--loader-rounds", "1"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1500)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    # the cost table's loader ratios, measured by the loader benchmark on this dataset and plans
    loader = json.loads((work / "report_final_5epochs" / "loader_ratios.json").read_text())
    assert loader["dataset"] == "Dataset913_MyoPS" and loader["plans"] == "nnUNetPlans_w50"
    assert set(loader["loader_ratio"]) >= {"nnUNetTrainer_smoke", "nnUNetTrainerPhysAug_smoke"}
    assert all(0.05 < v < 20 for v in loader["loader_ratio"].values())
    assert "| loader / stock |" in (work / "report_final_5epochs" / "results.md").read_text()
    fields = dict(kv.split("=") for kv in proc.stdout.strip().splitlines()[-1].split())
    assert set(fields) == {f"real_{s}_{m}" for s in ("c0", "lge", "t2") for m in ("physaug", "baseline")} | {"seconds"}
    report = json.loads((work / "report_final_5epochs" / "results.json").read_text())
    assert report["settings"]["folds"] == ["all"]
    rows = report["rows"]
    assert {r["sequence"] for r in rows} == {"C0", "LGE", "T2"} and all(r["n_cases"] == 3 for r in rows)
    assert all(0.0 <= r["mean_fg_dice"] <= 1.0 for r in rows)
    assert (work / "report_final_5epochs" / "contours.png").stat().st_size > 10_000
    assert (work / "budget_curve_final.png").stat().st_size > 10_000
    assert "| `nnUNetTrainerPhysAug_smoke` | 5 |" in (work / "budget_curve_final.md").read_text()
    # a rerun reuses the trained models and the converted data
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1500)
    assert proc.returncode == 0 and "finished earlier, kept" in proc.stdout
    assert "loader ratios: measured earlier, kept" in proc.stdout
    # ... and their predictions: same checkpoints, same test images
    for m in ("nnUNetTrainer_smoke", "nnUNetTrainerPhysAug_smoke"):
        assert f"predict {m}: made earlier by the same checkpoints" in proc.stdout
    assert "predict 0 model(s)" in proc.stdout
    rerun = json.loads((work / "report_final_5epochs" / "results.json").read_text())["rows"]
    assert {(r["model"], r["sequence"]): r["mean_fg_dice"] for r in rerun} == {
        (r["model"], r["sequence"]): r["mean_fg_dice"] for r in rows}
    # a checkpoint written again (nnU-Net trained that fold anew) is predicted again
    checkpoint = (work / "nnUNet_results" / "Dataset913_MyoPS" / "nnUNetTrainerPhysAug_smoke__nnUNetPlans_w50__2d"
                  / "fold_all" / "checkpoint_final.pth")
    st = checkpoint.stat()
    os.utime(checkpoint, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    # an ablation run takes the baseline from that report and trains PhysAug a second time (--repeats 2);
    # predictions two at a time give the first model the same scores as before
    earlier = work / "report_final_5epochs" / "results_first.json"
    first_report = json.loads((work / "report_final_5epochs" / "results.json").read_text())
    base_cost = {r["seconds_per_epoch"] for r in first_report["rows"] if r["model"] == "nnUNetTrainer_smoke"}
    assert len(base_cost) == 1 and None not in base_cost
    for r in first_report["rows"]:  # an earlier report without the cost: the baseline's logs here give it
        r["seconds_per_epoch"] = None
    earlier.write_text(json.dumps(first_report))
    proc = subprocess.run(cmd + ["--baseline-from", str(earlier), "--jobs", "2", "--repeats", "2"], env=env,
                          capture_output=True, text=True, timeout=1500)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert "predict nnUNetTrainer_smoke" not in proc.stdout and "nnUNetTrainer_smoke: rows from" in proc.stdout
    assert "predict nnUNetTrainerPhysAug_smoke: made earlier" not in proc.stdout
    assert "predict nnUNetTrainerPhysAug_smoke fold all: nnUNetv2_predict" in proc.stdout
    assert "train nnUNetTrainerPhysAug_smoke fold all: finished earlier, kept" in proc.stdout
    assert "train nnUNetTrainerPhysAug_smoke_r1 fold all: nnUNetv2_train" in proc.stdout
    again = json.loads((work / "report_final_5epochs" / "results.json").read_text())
    assert again["settings"]["baseline_from"] == str(earlier) and again["settings"]["repeats"] == 2
    first = {(r["model"], r["sequence"]): r["mean_fg_dice"] for r in rows}
    per_repeat = {(r["run"], r["sequence"]): r["mean_fg_dice"] for r in again["rows_per_repeat"]}
    for (m, s), d in first.items():
        pooled = [r for r in again["rows"] if (r["model"], r["sequence"]) == (m, s)][0]
        if m == "nnUNetTrainer_smoke":
            assert pooled["mean_fg_dice"] == d
            assert {pooled["seconds_per_epoch"]} == base_cost  # from its logs in this work folder
        else:
            assert per_repeat[(m, s)] == d  # the first repeat is the model trained before
            assert pooled["per_repeat"] == [d, per_repeat[(m + "_r1", s)]]
            assert pooled["mean_fg_dice"] == pytest.approx((d + per_repeat[(m + "_r1", s)]) / 2)
    md = (work / "report_final_5epochs" / "results.md").read_text()
    assert "not trained in this run" in md and "With repeats" in md
    assert "| MYO on LGE |" in md and all("confusion" in r for r in again["rows"])  # where the Dice is lost
    assert (work / "nnUNet_results" / "Dataset913_MyoPS" / "nnUNetTrainerPhysAug_smoke__nnUNetPlans_w50_r1__2d"
            / "fold_all" / "checkpoint_final.pth").is_file()

    # --oracle: the two bSSFP models are kept; the baseline trainer trains on the real LGE and on the real T2
    # (datasets 914/915) and is scored on all three sequences like the others
    proc = subprocess.run(cmd + ["--oracle"], env=env, capture_output=True, text=True, timeout=1500)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    out_lines = proc.stdout.strip().splitlines()
    for s, oid in (("LGE", 914), ("T2", 915)):
        assert f"train nnUNetTrainer_smoke_on{s} fold all: nnUNetv2_train {oid} 2d all" in proc.stdout
        assert (work / "nnUNet_results" / f"Dataset{oid}_MyoPS{s}" / "nnUNetTrainer_smoke__nnUNetPlans_w50__2d"
                / "fold_all" / "checkpoint_final.pth").is_file()
        # the oracle trained on that sequence's images (truth: the fake builder's LV blood of that sequence)
        raw = work / "nnUNet_raw" / f"Dataset{oid}_MyoPS{s}"
        for f in sorted((raw / "imagesTr").iterdir()):
            lab = nib.load(str(raw / "labelsTr" / f.name.replace("_0000", ""))).get_fdata()
            lv = np.median(nib.load(str(f)).get_fdata()[lab == 3])
            assert lv == pytest.approx(MYOPS_INTENSITY[s][2], rel=0.1), (f, lv)
        # nnU-Net's own commands built it: the converter's labels, the bSSFP dataset's (narrowed) plans and split
        ds, pre = work / "nnUNet_raw" / "Dataset913_MyoPS", work / "nnUNet_preprocessed" / raw.name
        assert sorted(f.name for f in (raw / "imagesTr").iterdir()) == [f"Case{n}_0000.nii.gz" for n in range(3001, 3006)]
        for f in sorted((raw / "labelsTr").iterdir()):
            assert np.array_equal(nib.load(str(f)).get_fdata(), nib.load(str(ds / "labelsTr" / f.name)).get_fdata())
        source = json.loads((work / "nnUNet_preprocessed" / ds.name / "nnUNetPlans_w50.json").read_text())
        moved = json.loads((pre / "nnUNetPlans_w50.json").read_text())
        assert moved["dataset_name"] == raw.name
        assert moved["configurations"]["2d"]["architecture"] == source["configurations"]["2d"]["architecture"]
        assert (pre / "splits_final.json").read_text() == (
            work / "nnUNet_preprocessed" / ds.name / "splits_final.json").read_text()
        data_dir = pre / moved["configurations"]["2d"]["data_identifier"]
        assert len([f for f in data_dir.iterdir() if f.name.startswith("Case")]) >= 5
    assert "train nnUNetTrainerPhysAug_smoke fold all: finished earlier, kept" in proc.stdout
    oracle = json.loads((work / "report_final_5epochs" / "results.json").read_text())
    assert oracle["settings"]["oracle"] is True
    by = {(r["model"], r["sequence"]): r for r in oracle["rows"]}
    for s in ("LGE", "T2"):
        assert {by[(f"nnUNetTrainer_smoke on {s}", q)]["trained_on"] for q in ("C0", "LGE", "T2")} == {s}
    # the models kept from before score as they did
    for (m, s), d in first.items():
        assert by[(m, s)]["mean_fg_dice"] == d
    refs = dict(kv.split("=") for kv in out_lines[-2].split())
    assert refs == {f"real_{s.lower()}_oracle": f"{by[(f'nnUNetTrainer_smoke on {s}', s)]['mean_fg_dice']:.3f}"
                    for s in ("LGE", "T2")}
    assert "Oracle references (--oracle)" in (work / "report_final_5epochs" / "results.md").read_text()
    # a second call reuses the oracle datasets
    from nnunetv2_physaug.harness.benchmark_real import prepare_oracle
    plans_file = work / "nnUNet_preprocessed" / "Dataset914_MyoPSLGE" / "nnUNetPlans_w50.json"
    stamp = plans_file.stat().st_mtime_ns
    assert prepare_oracle(work / "nnUNet_raw" / "Dataset913_MyoPS", "LGE", 913, "nnUNetPlans_w50", env,
                          tmp_path) == 914
    assert plans_file.stat().st_mtime_ns == stamp


def test_repeats_pool_to_their_mean_and_keep_each_value():
    def row(repeat, d, scar):
        return {"model": "P", "run": "P" if repeat == 0 else f"P_r{repeat}", "repeat": repeat, "sequence": "LGE",
                "mean_fg_dice": d, "n_cases": 5, "dice_per_label": {"1": d, "2": d / 2, "3": 1.0},
                "pathology": {"scar": {"voxels": 40, "as_myocardium": scar, "as_LV": 0.1}}}
    pooled = scoring.pool_repeats([row(1, 0.6, 0.5), row(0, 0.8, 0.9), row(2, 0.7, 0.7)])
    assert len(pooled) == 1
    p = pooled[0]
    assert p["per_repeat"] == [0.8, 0.6, 0.7] and p["repeats"] == 3  # in repeat order
    assert p["mean_fg_dice"] == pytest.approx(0.7) and p["dice_per_label"]["2"] == pytest.approx(0.35)
    assert p["pathology"]["scar"] == {"voxels": 40, "as_myocardium": pytest.approx(0.7), "as_LV": pytest.approx(0.1)}
    single = scoring.pool_repeats([row(0, 0.8, 0.7)])[0]
    assert single["per_repeat"] == [0.8] and single["mean_fg_dice"] == 0.8


def test_baseline_from_a_run_with_other_settings_is_refused(tmp_path):
    settings = {"mode": "cv", "budget_epochs": 5, "width": 0.5, "plans": "nnUNetPlans_w50", "crop_mm": 160.0,
                "spacing_mm": 1.5, "folds": ["0", "1", "2", "3", "4"]}
    rows = [{"model": "B", "sequence": s, "mean_fg_dice": 0.5} for s in ("C0", "LGE", "T2")]
    f = tmp_path / "results.json"
    f.write_text(json.dumps({"settings": {**settings, "budget_epochs": 10}, "rows": rows}))
    with pytest.raises(steps.BenchmarkError, match="budget_epochs 10 .now 5."):
        scoring.earlier_rows(f, "B", settings)
    f.write_text(json.dumps({"settings": settings, "rows": rows}))
    assert [r["from"] for r in scoring.earlier_rows(f, "B", settings)] == [str(f)] * 3
    with pytest.raises(steps.BenchmarkError, match="no rows of A"):
        scoring.earlier_rows(f, "A", settings)
    f.write_text("{")
    with pytest.raises(steps.BenchmarkError, match="not a bench_real results.json"):
        scoring.earlier_rows(f, "B", settings)


def test_polarity_counts_dark_blood_slices_of_real_images_and_renders(tmp_path, monkeypatch):
    """Fake tree: T2 blood 20 < myocardium 110 on every slice, C0 and LGE bright blood (tests/support/fake_trees.py);
    renders: bSSFP blood is brighter than myocardium at every flip angle (T2/T1 of blood >> myocardium's),
    fully suppressed black-blood TSE at short TE is dark-blood (noise floor aside)."""
    from nnunetv2_physaug.reverse import run_reverse
    res = _converted(tmp_path, monkeypatch, ())
    run_reverse(res.dataset_dir / "imagesTr", progress=False)
    cases = [f"Case{n}" for n in range(3001, 3006)]
    others = ("spoiled_gre", "look_locker", "lge", "psir", "saturation_recovery", "t2prep_bssfp")
    out = realism.polarity(res.dataset_dir, cases, "wide", n=12,
                           settings=[f"{f}.probability=0" for f in others] + [
                               "bssfp.probability=0.25", "tse.blood_factor=0", "tse.te_ms=[10, 20]"])
    assert out["real"] == {"C0": 0.0, "LGE": 0.0, "T2": 1.0}
    fams = out["families"]
    assert set(fams) == {"bssfp", "tse"}, "families of probability 0 are not rendered"
    assert fams["bssfp"]["dark_blood"] == 0.0 and fams["tse"]["dark_blood"] >= 0.9
    assert fams["tse"]["probability"] == pytest.approx(0.75)
    assert out["dark_blood_renders"] == pytest.approx(0.75 * fams["tse"]["dark_blood"])
    assert out["dark_blood_loads"] == pytest.approx(0.7 * out["dark_blood_renders"])  # wide: p_render 0.7
    assert "| real T2 | | 100% |" in realism.format_polarity(out)


def test_check_realism_runs_on_a_fake_tree_and_settings_apply(tmp_path, monkeypatch):
    from nnunetv2_physaug.reverse import run_reverse
    res = _converted(tmp_path, monkeypatch, ())
    run_reverse(res.dataset_dir / "imagesTr", progress=False)
    cases = [f"Case{n}" for n in range(3001, 3006)]
    out = realism.check_realism(res.dataset_dir, cases, "wide_pathology", n=6, families=("lge", "tse"),
                                settings=["tse.blood_partial_volume=1", "lge.readout_pulses=[8, 8]"])
    assert out["protocol"].startswith("wide_pathology+")
    for fam in ("lge", "tse"):
        r = out["renders"][fam]
        assert r["n"] == 6 and 0.0 <= r["coverage"] <= 1.0
    assert "| `lge` renders" in realism.format_report(out)
    with pytest.raises(ProtocolError, match="no parameter"):
        protocol_with_settings("wide", ["tse.flip_deg=3"])


def test_oracle_gap_closed_by_hand():
    """Baseline LGE 0.4, oracle (baseline trainer on real LGE) 0.8, PhysAug 0.7: 75 % of the 0.4 drop."""
    rows = [{"model": m, "sequence": s, "mean_fg_dice": d, "trained_on": on}
            for m, on, ds in (("B", "C0", (0.9, 0.4)), ("P", "C0", (0.88, 0.7)), ("B on LGE", "LGE", (0.5, 0.8)))
            for s, d in zip(("C0", "LGE"), ds)]
    assert report.oracles(rows) == {"LGE": "B on LGE"}
    assert report.oracle_gap_closed(rows, "B", "P", "LGE") == pytest.approx(0.75)
    assert report.oracle_line(rows) == "real_lge_oracle=0.800"
    # an oracle no better than the baseline has no drop to recover
    rows[-1]["mean_fg_dice"] = 0.4
    assert np.isnan(report.oracle_gap_closed(rows, "B", "P", "LGE"))


def test_oracle_refuses_a_dataset_without_that_sequence(tmp_path, monkeypatch):
    res = _converted(tmp_path, monkeypatch, ())
    (res.dataset_dir / "imagesTr_T2" / "Case3002_0000.nii.gz").unlink()
    env = nnunet_env(tmp_path)
    with pytest.raises(steps.BenchmarkError, match="imagesTr_T2 lacks the images of Case3002; convert"):
        steps.prepare_oracle(res.dataset_dir, "T2", 913, "nnUNetPlans", env, tmp_path / "logs")
    assert not (Path(env["nnUNet_raw"]) / "Dataset915_MyoPST2").exists()


def test_map_samples_reach_the_maps_and_the_baseline_of_another_k_is_kept(tmp_path, monkeypatch):
    """--map-samples K: physaug-reverse writes K maps per case (4D, K on the last axis; truth: the tissue values
    differ between the samples, as K draws of the estimator's tissue table must), and a baseline scored with
    another K is taken as it is (the baseline reads no maps)."""
    res = _converted(tmp_path, monkeypatch, ())
    env = {**nnunet_env(tmp_path), "nnUNet_n_proc_DA": "1"}
    logs = tmp_path / "logs"
    logs.mkdir()
    # plans already there and nnU-Net's width: of the preparation steps only physaug-reverse runs
    pre = Path(env["nnUNet_preprocessed"]) / res.dataset_dir.name
    (pre / "nnUNetPlans_2d").mkdir(parents=True)
    (pre / "nnUNetPlans.json").write_text("{}")
    ds, _ = steps.prepare(tmp_path / "Train", env, logs, 913, None, None, 1.0, range(3001, 3006), (), map_samples=2)
    assert sorted(f.name for f in logs.iterdir()) == ["reverse_imaging.log"]
    assert ds == res.dataset_dir
    t2 = nib.load(str(ds / "tissueMapsTr" / "Case3001_T2.nii.gz")).get_fdata()
    lab = nib.load(str(ds / "labelsTr" / "Case3001.nii.gz")).get_fdata()
    assert t2.ndim == 4 and t2.shape[-1] == 2 and t2.shape[:3] == lab.shape
    blood = lab == 3
    # two draws of the slices' blood T2 (ms): the same pixel differs between the samples
    assert np.mean(np.abs(t2[..., 0][blood] - t2[..., 1][blood])) > 5.0
    settings = {"mode": "cv", "budget_epochs": 5, "width": 0.5, "plans": "nnUNetPlans_w50", "crop_mm": 160.0,
                "spacing_mm": 1.5, "folds": ["0"], "map_samples": 2}
    f = tmp_path / "results.json"
    f.write_text(json.dumps({"settings": {**settings, "map_samples": 1},
                             "rows": [{"model": "B", "sequence": s, "mean_fg_dice": 0.5} for s in ("C0", "LGE", "T2")]}))
    assert len(scoring.earlier_rows(f, "B", settings)) == 3
    with pytest.raises(steps.BenchmarkError, match="--map-samples must be at least 1"):
        br.run_benchmark(br.BenchConfig(tmp_path / "Train", tmp_path / "w2", "cv", map_samples=0))


def test_peers_shortcut_and_the_cost_table(tmp_path, monkeypatch):
    """``--peers`` adds every peer at the budget after the named trainers; seconds per epoch come from nnU-Net's
    own log lines (written here as nnU-Net writes them) and the report gives them beside the baseline's."""
    from nnunetv2_physaug.harness.realbench.scoring import seconds_per_epoch

    cfg = br.BenchConfig(tmp_path, tmp_path, "cv", budget=10, peers=True, variants=["nnUNetTrainerGINIPA_10epochs"])
    assert cfg.trainers() == ["nnUNetTrainer_10epochs", "nnUNetTrainerPhysAug_10epochs", "nnUNetTrainerGINIPA_10epochs",
                              "nnUNetTrainerLocationScale_10epochs", "nnUNetTrainerDA5_10epochs",
                              "nnUNetTrainerPhysAugGINIPA_10epochs", "nnUNetTrainerPhysAugGINIPAHalf_10epochs",
                              "nnUNetTrainerPhysAugLocationScale_10epochs",
                              "nnUNetTrainerPhysAugLocationScaleHalf_10epochs"]
    assert br.BenchConfig(tmp_path, tmp_path, "cv", budget=1, peers=True).trainers()[2] == "nnUNetTrainerGINIPA_1epoch"
    monkeypatch.setenv("nnUNet_results", str(tmp_path / "results"))
    runs = [steps.Run("A", "A", "P", 913), steps.Run("B", "B", "P", 913), steps.Run("B_r1", "B", "P_r1", 913, 1)]
    # A's 40 s epoch shared the machine with another job: the median leaves it out (a mean would give 16.8)
    for run, fold, times in ((runs[0], "0", (10.0, 11.0, 12.0, 40.0, 11.0)), (runs[1], "0", (30.0,)),
                             (runs[2], "1", (33.0, 36.0))):
        out = tmp_path / "results" / "Dataset913_MyoPS" / f"{run.trainer}__{run.plans}__2d" / f"fold_{fold}"
        out.mkdir(parents=True)
        (out / "training_log_2026_1_1_00_00_00.txt").write_text("".join(
            f"2026-01-01 00:00:00.000000: Epoch {i}\n2026-01-01 00:00:01.000000: Epoch time: {t:.2f} s\n"
            for i, t in enumerate(times)))
    (tmp_path / "nnUNet_raw").mkdir()
    monkeypatch.setenv("nnUNet_raw", str(tmp_path / "nnUNet_raw"))
    (tmp_path / "nnUNet_raw" / "Dataset913_MyoPS").mkdir()
    cost = seconds_per_epoch(runs, ["0", "1"])
    assert cost == {"A": pytest.approx(11.0), "B": pytest.approx(33.0)}  # B: its two repeats' epochs together
    rows = [{"model": m, "sequence": s, "mean_fg_dice": 0.5, "dice_per_label": {"1": 0.5, "2": 0.5, "3": 0.5},
             "pathology": {p: {"as_myocardium": 0.5, "as_LV": 0.1} for p in ("scar", "edema")},
             "seconds_per_epoch": cost[m], "loader_ratio": {"A": 1.0, "B": 0.9}[m]} for m in ("A", "B")
            for s in steps.SEQUENCES]
    md = report.markdown_report(rows, "A")
    assert "| s / epoch | 11 | 33 |" in md and "| x baseline | 1.00 | 3.00 |" in md
    assert "| s / iteration | 0.04 | 0.13 |" in md  # 11 / 250, 33 / 250
    assert "| loader / stock | 1.00 | 0.90 |" in md


def test_budget_curve_joins_the_reports_of_every_budget(tmp_path):
    from nnunetv2_physaug.harness.realbench import curve

    def report(budget, rows):
        d = curve.report_folder(tmp_path, "final", budget)
        d.mkdir()
        (d / "results.json").write_text(json.dumps({"settings": {"budget_epochs": budget}, "rows": rows}))

    def row(model, seq, runs):
        return {"model": model, "sequence": seq, "mean_fg_dice": sum(runs) / len(runs), "per_repeat": runs}
    report(5, [row("nnUNetTrainer_5epochs", "LGE", [0.5, 0.6, 0.7]), row("nnUNetTrainerPhysAug_5epochs", "LGE", [0.8]),
               row("nnUNetTrainer_5epochs on LGE", "LGE", [0.85])])
    report(50, [row("nnUNetTrainer_50epochs", "LGE", [0.75]), row("nnUNetTrainerPhysAug_50epochs", "LGE", [0.82, 0.86])])
    (tmp_path / "report_cv_5epochs").mkdir()  # another mode: not on this curve
    (tmp_path / "report_cv_5epochs" / "results.json").write_text(json.dumps(
        {"settings": {"budget_epochs": 5}, "rows": [row("nnUNetTrainer_5epochs", "LGE", [0.1])]}))
    curves = curve.collect(tmp_path, "final")
    assert set(curves) == {"nnUNetTrainer", "nnUNetTrainerPhysAug", "nnUNetTrainer on LGE"}
    assert curves["nnUNetTrainer"] == {5: {"LGE": (pytest.approx(0.6), 0.5, 0.7)}, 50: {"LGE": (0.75, 0.75, 0.75)}}
    assert curves["nnUNetTrainerPhysAug"][50]["LGE"] == (pytest.approx(0.84), 0.82, 0.86)
    assert curve.trainer_line("nnUNetTrainerGINIPA_1epoch") == "nnUNetTrainerGINIPA"
    png = curve.write_budget_curve(tmp_path, "final")
    assert png.stat().st_size > 10_000
    md = png.with_suffix(".md").read_text()
    assert "| `nnUNetTrainer` | 5 |  | 0.600 (0.500-0.700) |  |" in md
    assert "| `nnUNetTrainerPhysAug` | 50 |  | 0.840 (0.820-0.860) |  |" in md


def test_a_work_folder_converted_with_other_inputs_is_refused(tmp_path, monkeypatch):
    from nnunetv2_physaug.harness.realbench import steps

    res = _converted(tmp_path, monkeypatch, (3006, 3007))
    ds, src = res.dataset_dir, tmp_path / "Train"
    same = steps._dataset_differences(ds, src, None, None, range(3001, 3006), (3006, 3007))
    assert same == []
    other = steps._dataset_differences(ds, tmp_path / "Elsewhere", 160.0, None, range(3001, 3004), (3006, 3007))
    assert [d.split()[0] for d in other] == ["--myops", "--crop", "--train-cases"]
    assert other[2] == "--train-cases Case3001 ... Case3005 (5) (asked: ['Case3001', 'Case3002', 'Case3003'])"
    env = {"nnUNet_raw": str(ds.parent)}
    with pytest.raises(steps.BenchmarkError, match="converted with other settings: --test-cases"):
        steps.prepare(src, env, tmp_path / "logs", 913, None, None, 0.5, range(3001, 3006), (3006,))
