"""Cardiac phantom: anatomy ground truth, domain renderings, written nnU-Net datasets."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from nnunetv2_physaug import physics
from nnunetv2_physaug.maps import TissueMapFolder, read_case_maps, read_manifest
from nnunetv2_physaug.phantom import (CLASS_INDEX, TISSUE_CLASSES, PhantomConfigError, load_domains, make_case,
                                      render_domain, write_phantom_datasets)
from nnunetv2_physaug.phantom.domains import lge_null_ti_ms
from nnunetv2_physaug.physics import tissue_table

N_CASES = 12


@pytest.fixture(scope="module")
def cases():
    return [make_case(np.random.default_rng(1000 + i), size=96) for i in range(N_CASES)]


@pytest.fixture(scope="module")
def domains():
    return load_domains()


def _mean(img, mask):
    return float(img[mask].mean())


# ---------------------------------------------------------------------------------------------- anatomy

def test_deterministic_for_a_seed_and_seeds_differ():
    a = make_case(np.random.default_rng(7), size=64)
    b = make_case(np.random.default_rng(7), size=64)
    c = make_case(np.random.default_rng(8), size=64)
    for name in ("m0", "t1", "t2", "labels", "tissue"):
        assert getattr(a, name).tobytes() == getattr(b, name).tobytes(), name
    assert a.meta == b.meta
    assert a.m0.shape != c.m0.shape or not np.array_equal(a.labels, c.labels)
    dom = load_domains()["lge"]
    ia, _ = render_domain(a, dom, np.random.default_rng(3))
    ib, _ = render_domain(b, dom, np.random.default_rng(3))
    ic, _ = render_domain(a, dom, np.random.default_rng(4))
    assert ia.tobytes() == ib.tobytes()
    assert not np.array_equal(ia, ic)


def test_case_shapes_types_and_geometry(cases):
    for c in cases:
        z = c.meta["n_slices"]
        assert 6 <= z <= 10
        for a in (c.m0, c.t1, c.t2):
            assert a.dtype == np.float32 and a.shape == (z, 96, 96)
            assert np.all(np.isfinite(a))
        assert c.labels.dtype == np.uint8 and c.tissue.dtype == np.uint8
        assert c.m0.min() >= 0 and c.t1.min() >= 1 and c.t2.min() >= 1
        dz, dy, dx = c.spacing_zyx_mm
        assert dy == dx and 200 <= dx * 96 <= 240 and dz == pytest.approx(8.0)
        assert c.meta["phase"] in ("ED", "ES")
        # labels follow from the tissue classes at the pixel centres
        lut = np.array([tc.label for tc in TISSUE_CLASSES])
        assert np.array_equal(c.labels, lut[c.tissue])


def test_labels_are_exactly_the_acdc_set(cases):
    for c in cases:
        assert set(np.unique(c.labels).tolist()) == {0, 1, 2, 3}


def _touches(a: np.ndarray, b: np.ndarray) -> bool:
    """True when a pixel of ``a`` is 4-adjacent to a pixel of ``b``."""
    return bool((a[1:] & b[:-1]).any() or (a[:-1] & b[1:]).any() or (a[:, 1:] & b[:, :-1]).any()
                or (a[:, :-1] & b[:, 1:]).any())


def test_myocardium_encloses_the_lv_cavity(cases):
    slices = enclosed = 0
    for c in cases:
        for z in range(c.labels.shape[0]):
            lv = c.labels[z] == 3
            if not lv.any():
                continue
            slices += 1
            if not _touches(lv, c.labels[z] == 0) and not _touches(lv, c.labels[z] == 1):
                enclosed += 1
    assert slices > 5 * N_CASES
    assert enclosed >= 0.95 * slices


def test_rv_vanishes_towards_the_apex(cases):
    for c in cases:
        area = (c.labels == 1).sum(axis=(1, 2))
        assert area[0] > 0, "the basal slice shows the RV"
        assert area[-1] == 0 or area[-1] == area.min()
        assert area[-1] < area[0]


def test_lv_cavity_shrinks_towards_the_apex_and_liver_appears_apically(cases):
    for c in cases:
        lv = (c.labels == 3).sum(axis=(1, 2))
        assert lv[-1] < 0.5 * lv.max()
        liver = (c.tissue == CLASS_INDEX["liver"]).sum(axis=(1, 2))
        assert liver[0] == 0 and liver[-1] > 0


def test_end_systole_has_smaller_cavities_and_thicker_wall_than_end_diastole():
    for seed in range(4):
        ed = make_case(np.random.default_rng(seed), size=64, phase="ED")
        es = make_case(np.random.default_rng(seed), size=64, phase="ES")
        assert ed.meta["n_slices"] == es.meta["n_slices"]
        assert es.meta["lv_cavity_ml"] < 0.85 * ed.meta["lv_cavity_ml"]
        assert es.meta["rv_cavity_ml"] < 0.9 * ed.meta["rv_cavity_ml"]
        # myocardial volume is about conserved, so the wall (area / perimeter) thickens
        assert es.meta["myocardium_ml"] == pytest.approx(ed.meta["myocardium_ml"], rel=0.25)
        z = ed.meta["n_slices"] // 2
        perimeter = lambda lab: (lab[z] == 3).sum() ** 0.5  # cavity size proxy at mid-ventricle
        assert perimeter(es.labels) < perimeter(ed.labels)


def test_tissue_values_follow_the_reference_table(cases):
    table = tissue_table("1.5T")
    for c in cases:
        # per reference tissue, pooling its classes (thin ones, papillary muscles and the RV wall,
        # are mostly partial-volume pixels on their own)
        for name, props in table.items():
            idx = [i for i, tc in enumerate(TISSUE_CLASSES) if tc.tissue == name]
            mask = np.isin(c.tissue, idx)
            if mask.sum() < 30 or name == "air":
                continue
            for arr, (mean, sd) in ((c.t1, props.t1), (c.t2, props.t2), (c.m0, props.m0)):
                med = float(np.median(arr[mask]))
                assert abs(med - mean) <= 3 * sd + 1e-6, (name, med, mean, sd)
        air = c.tissue == CLASS_INDEX["air"]
        assert np.median(c.m0[air]) == 0.0


def test_texture_varies_within_a_tissue(cases):
    c = cases[0]
    myo = c.tissue == CLASS_INDEX["lv_myocardium"]
    inner = myo.copy()
    for ax in (1, 2):  # drop partial-volume boundary pixels
        inner &= np.roll(myo, 1, ax) & np.roll(myo, -1, ax)
    t1 = c.t1[inner]
    assert 0.5 < np.std(t1) < 3 * tissue_table()["myocardium"].t1[1]


# ---------------------------------------------------------------------------------------------- domains

def _contrast(img, case):
    blood = case.tissue == CLASS_INDEX["lv_blood"]
    myo = case.tissue == CLASS_INDEX["lv_myocardium"]
    b, m = _mean(img, blood), _mean(img, myo)
    return (b - m) / (b + m)


def test_cine_blood_brighter_than_myocardium(cases, domains):
    for i, c in enumerate(cases):
        img, info = render_domain(c, domains["cine"], np.random.default_rng(i))
        assert img.dtype == np.float32 and img.shape == c.m0.shape
        assert _contrast(img, c) > 0.3
        assert 50 <= info["parameters"]["flip_deg"] <= 70


def test_lge_nulls_normal_myocardium_and_enhances_scar(cases, domains):
    n_scar = 0
    for i, c in enumerate(cases):
        img, info = render_domain(c, domains["lge"], np.random.default_rng(i), clean=True)
        myo = (c.tissue == CLASS_INDEX["lv_myocardium"])
        blood = c.tissue == CLASS_INDEX["lv_blood"]
        scar = info["scar"]
        scar_pix = np.zeros_like(myo)
        if scar["present"]:
            n_scar += 1
            # scar = the myocardial pixels far brighter than nulled myocardium in its slices
            for z in scar["slices"]:
                scar_pix[z] = myo[z] & (img[z] > 0.5 * _mean(img, blood))
            assert scar_pix.any()
            assert _mean(img, scar_pix) > _mean(img, blood)
        normal = myo & ~scar_pix
        assert np.median(img[normal]) < 0.4 * _mean(img, blood)
        # the TI used really nulls the myocardium's post-contrast T1 (independent closed-form check)
        p = info["parameters"]
        assert p["ti_ms"] == pytest.approx(p["ti_null_factor"] * lge_null_ti_ms_from_info(c, info), rel=0.02)
    assert 0 < n_scar < len(cases)


def lge_null_ti_ms_from_info(case, info):
    """Recompute the myocardial null TI from the case's maps and the drawn Gd concentration."""
    t1 = float(np.median(case.t1[case.tissue == CLASS_INDEX["lv_myocardium"]]))
    conc = info["gd_mmol"]["myocardium"]
    t1_post = 1.0 / (1.0 / t1 + 4.5 * conc / 1000.0)
    return lge_null_ti_ms(t1_post, info["parameters"]["inversion_interval_ms"])


def test_lge_null_time_zeroes_inversion_recovery():
    for t1, tr in ((450.0, 1800.0), (300.0, 900.0), (1000.0, 5000.0)):
        ti = lge_null_ti_ms(t1, tr)
        mz = physics.inversion_recovery(1.0, torch.tensor(t1, dtype=torch.float64), ti, tr_ms=tr, signed=True)
        assert float(mz) == pytest.approx(0, abs=1e-12)
        # a 10 % longer TI leaves the tissue clearly positive (it really is the zero crossing)
        assert float(physics.inversion_recovery(1.0, torch.tensor(t1, dtype=torch.float64), 1.1 * ti, tr_ms=tr,
                                                signed=True)) > 0.02


def test_molli_contrast_differs_strongly_from_cine(cases, domains):
    for i, c in enumerate(cases):
        cine, _ = render_domain(c, domains["cine"], np.random.default_rng(i), clean=True)
        molli, _ = render_domain(c, domains["molli"], np.random.default_rng(i), clean=True)
        kc, km = _contrast(cine, c), _contrast(molli, c)
        # both still inverted at a short TI: the magnitude contrast is inverted or at least 30 % weaker
        assert np.sign(kc) != np.sign(km) or abs(km) < 0.7 * abs(kc), (kc, km)


def test_unseen_domains_have_their_expected_contrast(cases, domains):
    c = cases[1]
    sig = {}
    for name in ("t1w_gre", "t2prep", "perfusion", "tse"):
        img, _ = render_domain(c, domains[name], np.random.default_rng(0), clean=True)
        sig[name] = _contrast(img, c)
    assert sig["t1w_gre"] < 0        # long-T1 blood darker without inflow
    assert sig["t2prep"] > 0.2       # long-T2 blood bright
    assert sig["perfusion"] > 0.5    # first-pass Gd in the blood
    assert sig["tse"] < -0.5         # black blood


def test_scanner_effects_noise_and_bias(cases, domains):
    c = cases[2]
    clean, _ = render_domain(c, domains["cine"], np.random.default_rng(5), clean=True)
    noisy, info = render_domain(c, domains["cine"], np.random.default_rng(5))
    air = c.m0 == 0  # pure air (pixels labelled air at the skin hold some partial-volume fat)
    assert air.sum() > 1000 and clean[air].max() == 0
    assert noisy[air].mean() > 0                      # Rician noise floor
    snr = info["scanner"]["snr"]
    sigma = np.percentile(noisy / info["scanner"]["gain"], 99) / snr
    # Rayleigh mean in pure-noise background = sigma sqrt(pi/2) (bias fields change the P99 a little)
    assert noisy[air].mean() / info["scanner"]["gain"] == pytest.approx(sigma * np.sqrt(np.pi / 2), rel=0.35)


def test_domains_file_errors_name_the_problem(tmp_path):
    bad = tmp_path / "d.yaml"
    bad.write_text("version: 1\ntraining: cine\ndomains:\n  cine:\n    dataset: X\n    channel_name: c\n"
                   "    imitates: x\n    sequence: bssfp\n    parameters: {flip_deg: [70, 50], tr_ms: 3}\n"
                   "    scanner: {snr: 20, bias_amplitude: 0, b1_amplitude: 0, gain: 1}\n")
    with pytest.raises(PhantomConfigError, match=r"d\.yaml.*flip_deg.*inverted"):
        load_domains(bad)
    bad.write_text(bad.read_text().replace("bssfp", "flash2000").replace("[70, 50]", "60"))
    with pytest.raises(PhantomConfigError, match="unknown sequence 'flash2000'"):
        load_domains(bad)


def test_domain_table_covers_the_unseen_contrasts(domains):
    assert [d.role for d in domains.values()].count("training") == 1
    assert list(domains)[0] == "cine"
    assert {d.sequence for d in domains.values()} == {"bssfp", "ir_gre", "look_locker", "spoiled_gre",
                                                      "t2prep_bssfp", "sr_gre", "spin_echo"}
    assert all(d.imitates for d in domains.values())


# ---------------------------------------------------------------------------------------------- datasets

@pytest.fixture(scope="module")
def written(tmp_path_factory):
    out = tmp_path_factory.mktemp("raw")
    summary = write_phantom_datasets(out, n_train=3, n_test=2, seed=1, size=64, first_id=910, progress=False)
    return out, summary


def test_written_datasets_layout(written, domains):
    out, summary = written
    names = [d["name"] for d in summary["datasets"]]
    assert names[0] == "Dataset910_PhantomCine" and names[1] == "Dataset911_PhantomCineTest"
    assert len(names) == len(domains) + 1
    assert json.loads((out / "phantom_summary.json").read_text()) == summary
    assert not [p for p in out.iterdir() if p.name.startswith(".")], "no temporary folders left"
    for d in summary["datasets"]:
        folder = out / d["name"]
        n = 3 if d["role"] == "train" else 2
        assert d["n_cases"] == n
        prefix = "phantom_" if d["role"] == "train" else "phantomtest_"
        images = sorted(p.name for p in (folder / "imagesTr").iterdir())
        labels = sorted(p.name for p in (folder / "labelsTr").iterdir())
        assert images == [f"{prefix}{i:03d}_0000.nii.gz" for i in range(n)]
        assert labels == [f"{prefix}{i:03d}.nii.gz" for i in range(n)]
        dj = json.loads((folder / "dataset.json").read_text())
        assert dj["labels"] == {"background": 0, "RV": 1, "MLV": 2, "LVC": 3}
        assert dj["file_ending"] == ".nii.gz" and dj["numTraining"] == n
        expected_channel = "cineMRI" if d["domain"] == "cine" else domains[d["domain"]].channel_name
        assert dj["channel_names"] == {"0": expected_channel}
        ph = dj["physaug_phantom"]
        assert set(ph["cases"]) == {f"{prefix}{i:03d}" for i in range(n)}
        for meta in ph["cases"].values():
            assert meta["phase"] in ("ED", "ES") and 6 <= meta["n_slices"] <= 10
        assert (folder / "groundTruthMapsTr").is_dir() == (d["role"] == "train")
        assert not (folder / "tissueMapsTr").exists()
        for i in range(n):
            img = nib.load(str(folder / "imagesTr" / images[i]))
            lab = nib.load(str(folder / "labelsTr" / labels[i]))
            assert img.get_data_dtype() == np.float32 and lab.get_data_dtype() == np.uint8
            assert img.shape == lab.shape and img.shape[:2] == (64, 64)
            assert img.shape[2] == ph["cases"][f"{prefix}{i:03d}"]["n_slices"]
            assert np.allclose(img.affine, np.diag([240 / 64, 240 / 64, 8.0, 1.0]))
            assert np.allclose(lab.affine, img.affine)
            assert set(np.unique(np.asarray(lab.dataobj))) <= {0, 1, 2, 3}


def test_written_training_maps_are_the_ground_truth(written):
    out, summary = written
    folder = out / summary["datasets"][0]["name"]
    maps_dir = folder / "groundTruthMapsTr"
    assert read_manifest(maps_dir)["estimator"] == "ground_truth"
    assert TissueMapFolder(maps_dir).complete_cases() == [f"phantom_{i:03d}" for i in range(3)]  # committed
    for i in range(3):
        case = f"phantom_{i:03d}"
        maps, affine = read_case_maps(maps_dir, case, reference_image=folder / "imagesTr" / f"{case}_0000.nii.gz")
        # the maps are the ones make_case produced for that case's seed stream
        truth = make_case(np.random.default_rng(np.random.SeedSequence([1, 0, i])), size=64)
        assert np.array_equal(maps[1, ..., 0], truth.t1.transpose(2, 1, 0))
        lab = np.asarray(nib.load(str(folder / "labelsTr" / f"{case}.nii.gz")).dataobj)
        assert np.array_equal(lab, truth.labels.transpose(2, 1, 0))
        # the image is a bSSFP rendering of those maps: blood brighter than myocardium
        img = np.asarray(nib.load(str(folder / "imagesTr" / f"{case}_0000.nii.gz")).dataobj)
        assert img[lab == 3].mean() > 1.5 * img[lab == 2].mean()


def test_test_domains_share_anatomies(written):
    out, summary = written
    labels = [np.asarray(nib.load(str(out / d["name"] / "labelsTr" / "phantomtest_000.nii.gz")).dataobj)
              for d in summary["datasets"][1:]]
    assert all(np.array_equal(labels[0], lab) for lab in labels[1:])
    train = np.asarray(nib.load(str(out / summary["datasets"][0]["name"] / "labelsTr" / "phantom_000.nii.gz")).dataobj)
    assert train.shape != labels[0].shape or not np.array_equal(train, labels[0])


def test_refuses_to_overwrite_without_flag(written, tmp_path):
    out, summary = written
    before = (out / summary["datasets"][0]["name"] / "dataset.json").read_text()
    with pytest.raises(FileExistsError, match="Dataset910_PhantomCine.*--overwrite"):
        write_phantom_datasets(out, n_train=2, n_test=1, seed=2, size=64, first_id=910, progress=False)
    assert (out / summary["datasets"][0]["name"] / "dataset.json").read_text() == before
    # CLI: clear error, exit status 2
    r = subprocess.run([sys.executable, "-m", "nnunetv2_physaug.cli.phantom", "-o", str(out), "--first-id", "910",
                        "--n-train", "2", "--n-test", "1", "--size", "64", "--quiet"], capture_output=True, text=True)
    assert r.returncode == 1 and "already exists" in r.stderr and "Dataset910_PhantomCine" in r.stderr
    # a different dataset already holding one of our ids is refused too
    other = tmp_path / "raw"
    (other / "Dataset912_Other").mkdir(parents=True)
    with pytest.raises(FileExistsError, match="Dataset912_Other.*unique"):
        write_phantom_datasets(other, n_train=1, n_test=1, size=32, first_id=911, progress=False)


def test_overwrite_replaces_the_datasets(tmp_path):
    write_phantom_datasets(tmp_path, n_train=2, n_test=1, seed=0, size=32, first_id=920, progress=False)
    s = write_phantom_datasets(tmp_path, n_train=1, n_test=1, seed=0, size=32, first_id=920, overwrite=True,
                               progress=False)
    assert s["datasets"][0]["n_cases"] == 1
    assert len(list((tmp_path / "Dataset920_PhantomCine" / "imagesTr").iterdir())) == 1


def test_cli_help_explains():
    r = subprocess.run([sys.executable, "-m", "nnunetv2_physaug.cli.phantom", "--help"], capture_output=True, text=True)
    assert r.returncode == 0
    for word in ("--n-train", "--first-id", "--overwrite", "ACDC", "groundTruthMapsTr", "deterministic"):
        assert word in r.stdout


@pytest.mark.slow
def test_nnunet_plan_and_preprocess_accepts_the_datasets(tmp_path):
    raw, pre, res = tmp_path / "raw", tmp_path / "pre", tmp_path / "res"
    for p in (pre, res):
        p.mkdir()
    summary = write_phantom_datasets(raw, n_train=4, n_test=2, seed=3, size=64, first_id=930, progress=False)
    env = {**os.environ, "nnUNet_raw": str(raw), "nnUNet_preprocessed": str(pre), "nnUNet_results": str(res),
           "nnUNet_def_n_proc": "1", "nnUNet_n_proc_DA": "1"}
    exe = shutil.which("nnUNetv2_plan_and_preprocess", path=str(Path(sys.executable).parent)) \
        or "nnUNetv2_plan_and_preprocess"
    lge = next(d["id"] for d in summary["datasets"] if d["domain"] == "lge")
    r = subprocess.run([exe, "-d", "930", str(lge), "--verify_dataset_integrity", "-c", "2d", "-np", "1",
                        "-npfp", "1"], env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    for name in ("Dataset930_PhantomCine", f"Dataset{lge}_PhantomLGE"):
        assert (pre / name / "nnUNetPlans.json").is_file()
        assert json.loads((pre / name / "dataset.json").read_text())["numTraining"] in (4, 2)


def test_a_phantom_killed_while_put_in_place_is_restored_or_completed_whole(tmp_path):
    """SIGKILL before each rename of the final swap (journal, 8 datasets and the summary, journal done): the
    next run's recovery leaves the previous phantom whole (seed 1 everywhere) when killed before the journal
    says done, the new one whole otherwise; never a mix, no leftovers; then the plain run refuses as usual."""
    from support.kills import PHANTOM_KILLER, phantom_seeds
    from nnunetv2_physaug.fileio import recover_together
    from nnunetv2_physaug.phantom.writer import COMMIT_JOURNAL

    base = tmp_path / "base"
    write_phantom_datasets(base, n_train=2, n_test=1, size=32, seed=1, progress=False)
    n_sets = len(list(base.glob("Dataset*")))
    outcomes = set()
    for k in (0, 1, 2, 9, 18, 19, 20, 99):
        out = tmp_path / f"k{k}"
        shutil.copytree(base, out)
        proc = subprocess.run([sys.executable, "-c", PHANTOM_KILLER, str(out), str(k)], capture_output=True, text=True)
        killed = proc.returncode == -9
        assert killed or proc.returncode == 0, proc.stderr
        recover_together(out / COMMIT_JOURNAL)
        seeds = phantom_seeds(out)
        leftovers = seeds.pop("leftovers")
        assert len(seeds) == n_sets + 1 and len(set(seeds.values())) == 1, (k, seeds)  # one phantom, whole
        outcomes.add(next(iter(seeds.values())))
        with pytest.raises(FileExistsError, match="already exists"):
            write_phantom_datasets(out, n_train=2, n_test=1, size=32, seed=7, progress=False)
        assert leftovers == 0 or not [p for p in out.iterdir() if p.name.startswith(".")], (k, leftovers)
        assert next(iter(seeds.values())) == (1 if killed and k < 20 else 4), (k, killed, seeds)
    assert outcomes == {1, 4}


def test_a_commit_journal_is_read_relative_to_its_folder_and_a_foreign_one_touches_nothing(tmp_path, monkeypatch):
    """The journal of a killed run names its paths relative to its folder: recovered from another working
    directory holding same-named datasets it restores its own folder and leaves the other alone; copied into
    another phantom (no backups there) or crafted to name a folder outside, it is refused and nothing moves."""
    from support.kills import PHANTOM_KILLER, phantom_seeds
    from nnunetv2_physaug.fileio import JournalError, recover_together
    from nnunetv2_physaug.phantom.writer import COMMIT_JOURNAL

    base = tmp_path / "base"
    write_phantom_datasets(base, n_train=2, n_test=1, size=32, seed=1, progress=False)
    killed = tmp_path / "killed"
    shutil.copytree(base, killed)
    proc = subprocess.run([sys.executable, "-c", PHANTOM_KILLER, str(killed), "5"], capture_output=True, text=True)
    assert proc.returncode == -9, proc.stderr
    journal = json.loads((killed / COMMIT_JOURNAL).read_text())
    assert all(not Path(v).is_absolute() for e in journal["entries"] for v in e.values())
    # a copy of the killed folder's journal in another phantom, which has none of its backups
    other = tmp_path / "other"
    shutil.copytree(base, other)
    shutil.copy(killed / COMMIT_JOURNAL, other / COMMIT_JOURNAL)
    with pytest.raises(JournalError, match="not written for this folder"):
        recover_together(other / COMMIT_JOURNAL)
    seeds = phantom_seeds(other)
    assert seeds.pop("leftovers") == 1 and set(seeds.values()) == {1} and len(seeds) == len(phantom_seeds(base)) - 1
    # recovered from a working directory with same-named datasets: only its own folder changes
    monkeypatch.chdir(other)
    assert recover_together(killed / COMMIT_JOURNAL) == "rolled back"
    seeds = phantom_seeds(killed)
    assert seeds.pop("leftovers") == 0 and set(seeds.values()) == {1}
    seeds = phantom_seeds(other)
    assert set(v for k, v in seeds.items() if k != "leftovers") == {1} and len(seeds) == len(phantom_seeds(base))
    # a crafted journal naming a folder outside its own
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "keep.txt").write_text("x")
    for entry in ({"target": "../victim", "staged": ".x.partial-1", "backup": ".victim.old-1/old"},
                  {"target": str(victim), "staged": ".x.partial-1", "backup": ".victim.old-1/old"},
                  {"target": "Dataset900_PhantomCine", "staged": ".x", "backup": "../victim/old"}):
        (killed / COMMIT_JOURNAL).write_text(json.dumps({"state": "swapping", "entries": [entry]}))
        with pytest.raises(JournalError):
            recover_together(killed / COMMIT_JOURNAL)
        assert (victim / "keep.txt").read_text() == "x"
    # a finished journal deletes its backups: never one outside its folder, even of the right shape
    decoy = tmp_path / ".victim.old-1"
    decoy.mkdir()
    (decoy / "keep.txt").write_text("x")
    (killed / COMMIT_JOURNAL).write_text(json.dumps({"state": "done", "entries": [
        {"target": "../victim", "staged": "../x", "backup": "../.victim.old-1/old"}]}))
    with pytest.raises(JournalError, match="not a path inside"):
        recover_together(killed / COMMIT_JOURNAL)
    assert (decoy / "keep.txt").read_text() == "x"
    for entry in ({"target": "../victim", "staged": ".x.partial-1", "backup": ".victim.old-1/old"},):
        (killed / COMMIT_JOURNAL).write_text(json.dumps({"state": "swapping", "entries": [entry]}))
        with pytest.raises(SystemExit) as e:  # the command says so in one line
            from nnunetv2_physaug.cli.phantom import main
            main(["-o", str(killed), "--n-train", "2", "--n-test", "1", "--size", "32", "--overwrite", "--quiet"])
        assert e.value.code == 1
    assert set(v for k, v in phantom_seeds(killed).items() if k != "leftovers") == {1}


def test_overwrite_with_fewer_domains_leaves_no_dataset_of_the_old_phantom(tmp_path):
    """--overwrite --domains with two domains over a full phantom: the old phantom's other datasets go in the same
    unit as the new ones are put in place (no dataset of the old seed stays); folders it did not list stay."""
    import yaml
    from support.kills import phantom_seeds
    from nnunetv2_physaug.phantom import domains as phantom_domains

    out = tmp_path / "ph"
    full = write_phantom_datasets(out, n_train=2, n_test=1, size=32, seed=1, progress=False)
    (out / "Dataset999_Mine").mkdir()  # not the phantom's
    keep = {name for name, d in phantom_domains.load_domains(None).items() if d.role == "training" or name == "lge"}
    assert len(keep) == 2
    raw = yaml.safe_load((Path(phantom_domains.__file__).parent / "domains.yaml").read_text())
    small = tmp_path / "two.yaml"
    small.write_text(yaml.safe_dump({**raw, "domains": {k: v for k, v in raw["domains"].items() if k in keep}}))
    new = write_phantom_datasets(out, n_train=2, n_test=1, size=32, seed=4, overwrite=True, domains_file=small,
                                 progress=False)
    seeds = phantom_seeds(out)
    assert seeds.pop("leftovers") == 0 and set(seeds.values()) == {4}, seeds
    assert set(seeds) - {"summary"} == {d["name"] for d in new["datasets"]} and len(full["datasets"]) > 3
    assert (out / "Dataset999_Mine").is_dir()
