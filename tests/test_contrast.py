"""Contrast protocols and renderer, checked against independent truth.

Renderings of piecewise-uniform maps are compared with the signal equations written out here in
numpy float64 (not the package's torch implementations); percentiles against numpy's
nearest-rank ("inverted_cdf") percentile; Rician noise against the closed-form Rice mean.
"""
from __future__ import annotations

import copy
import json
import math

import numpy as np
import pytest
import torch
import yaml
from scipy.special import i0e, i1e

from nnunetv2_physaug.contrast import (FAMILIES, PRESETS, ContrastRenderer, ProtocolError, load_protocol,
                                       protocol_from_dict, protocol_with_settings, save_protocol, smooth_field)

# ----------------------------------------------------------------------------- helpers

# Region: (label, M0, T1 ms, T2 ms) — 1.5 T literature values (DESIGN §4).
OTHER, MYO, BLOOD, OUTSIDE = (0, 0.75, 860.0, 30.0), (2, 0.80, 1000.0, 50.0), (3, 0.95, 1550.0, 270.0), (-1, 0.75, 860.0, 30.0)


def region_maps(shape=(32, 32), heterogeneous_myocardium: bool = False):
    """Blood disc, myocardium ring, other tissue, and an invalid (label -1) border column. With
    ``heterogeneous_myocardium`` the ring's T1 runs from 800 to 1200 ms around it (so its median,
    which the LGE TI scout nulls, differs from every other percentile)."""
    y, x = np.mgrid[: shape[-2], : shape[-1]]
    r = np.hypot(y - shape[-2] / 2, x - shape[-1] / 2)
    lab2d = np.where(r < 6, 3, np.where(r < 10, 2, 0))
    lab2d[:, 0] = -1
    labels = np.broadcast_to(lab2d, shape).astype(np.int64).copy()
    m0, t1, t2 = (np.zeros(shape, np.float32) for _ in range(3))
    for lab, a, b, c in (OTHER, MYO, BLOOD, OUTSIDE):
        sel = labels == lab
        m0[sel], t1[sel], t2[sel] = a, b, c
    if heterogeneous_myocardium:
        angle = np.arctan2(y - shape[-2] / 2, x - shape[-1] / 2)  # -pi..pi
        ring = labels == 2
        t1[ring] = np.broadcast_to(1000.0 + 200.0 * angle / np.pi, shape)[ring]
    return m0, t1, t2, labels


def no_imperfections(name="wide"):
    d = load_protocol(name).to_dict()
    d["imperfections"] = {}
    return protocol_from_dict(d, "test")


def nearest_rank(values, q):
    return float(np.percentile(np.asarray(values, np.float64), q, method="inverted_cdf"))


# Independent numpy float64 signal equations (DESIGN §4).
def np_gre(m0, t1, t2, a, tr, te):
    e1 = np.exp(-tr / t1)
    return m0 * np.sin(np.radians(a)) * (1 - e1) / (1 - np.cos(np.radians(a)) * e1) * np.exp(-te / t2)


def np_bssfp(m0, t1, t2, a, tr):
    e1, e2, a = np.exp(-tr / t1), np.exp(-tr / t2), np.radians(a)
    return m0 * np.sin(a) * (1 - e1) * np.sqrt(e2) / (1 - (e1 - e2) * np.cos(a) - e1 * e2)


def np_molli(m0, t1, t2, a, ti):
    a = np.radians(a)
    sss = m0 * np.sin(a) / (1 + np.cos(a) + (1 - np.cos(a)) * t1 / t2)
    inv = 1 + np.sin(a / 2) / np.sin(a) * ((1 + np.cos(a)) + (1 - np.cos(a)) * t1 / t2)
    t1s = 1 / (np.cos(a / 2) ** 2 / t1 + np.sin(a / 2) ** 2 / t2)
    return np.abs(sss * (1 - inv * np.exp(-ti / t1s)))


def np_t1_post(t1_ms, conc, r1=4.5):
    return 1000.0 / (1000.0 / t1_ms + r1 * conc)


def expected_image(family, p, m0, t1, t2, blood, myo):
    """Noise-free rendering of ``family`` with drawn parameters ``p`` (float64)."""
    m0, t1, t2 = (a.astype(np.float64) for a in (m0, t1, t2))
    if family == "spoiled_gre":
        assert p["te_ms"] == pytest.approx(max(p["tr_ms"] * p["te_fraction"], p["te_min_ms"]))
        return np_gre(m0, t1, t2, p["flip_deg"], p["tr_ms"], p["te_ms"])
    if family == "look_locker":
        return np_molli(m0, t1, t2, p["flip_deg"], p["ti_ms"])
    if family == "bssfp":
        return np_bssfp(m0, t1, t2, p["flip_deg"], p["tr_ms"])
    if family == "t2prep_bssfp":
        return np.exp(-p["te_prep_ms"] / t2) * np_bssfp(m0, t1, t2, p["flip_deg"], p["tr_ms"])
    if family == "tse":
        s = m0 * (1 - np.exp(-p["tr_ms"] / t1)) * np.exp(-p["te_ms"] / t2)
        return np.where(blood, s * p["blood_factor"], s)
    conc = np.where(blood, p["conc_blood_mmol"], np.where(myo, p["conc_myocardium_mmol"], p["conc_other_mmol"]))
    t1p = np_t1_post(t1, conc)
    read = np.sin(np.radians(p["flip_deg"])) * np.exp(-p["te_ms"] / t2)
    if family == "saturation_recovery":
        return m0 * (1 - np.exp(-p["ts_ms"] / t1p)) * read
    # lge / psir: TI from the myocardial null time of the median (nearest rank) myocardial T1post.
    t1m = nearest_rank(t1p[myo], 50)
    assert p["t1_myocardium_post_ms"] == pytest.approx(t1m, rel=1e-5)
    null = t1m * math.log(2 / (1 + math.exp(-p["tr_inv_ms"] / t1m)))
    assert p["ti_ms"] == pytest.approx(p["ti_null_factor"] * null, rel=1e-6)
    mz = m0 * (1 - 2 * np.exp(-p["ti_ms"] / t1p) + np.exp(-p["tr_inv_ms"] / t1p))
    return (mz if family == "psir" else np.abs(mz)) * read


def wide_dict():
    return copy.deepcopy(load_protocol("wide").to_dict())


# ----------------------------------------------------------------------------- validation

def _mut(path_fn):
    d = wide_dict()
    path_fn(d)
    return d


BAD_CASES = [
    ("unknown family", lambda d: d["families"][0].update(family="flash3d"), "families[0].family: unknown family 'flash3d'"),
    ("unknown param", lambda d: d["families"][2]["params"].update(te_ms=[1, 2]), "families[2].params (bssfp): unknown key(s) te_ms"),
    ("missing param", lambda d: d["families"][2]["params"].pop("tr_ms"), "families[2].params (bssfp): missing key(s) tr_ms"),
    ("inverted range", lambda d: d["families"][2]["params"].update(tr_ms=[100, 15]), "families[2].params.tr_ms: inverted range [100, 15]"),
    ("negative time", lambda d: d["families"][0]["params"].update(tr_ms=[-5, 10]), "families[0].params.tr_ms: non-physical range [-5, 10]"),
    ("zero flip", lambda d: d["families"][2]["params"].update(flip_deg=[0, 10]), "families[2].params.flip_deg: non-physical range [0, 10]"),
    ("flip > 180", lambda d: d["families"][2]["params"].update(flip_deg=[10, 200]), "families[2].params.flip_deg: non-physical range [10, 200]"),
    ("te_fraction > 1", lambda d: d["families"][0]["params"].update(te_fraction=[0.5, 1.5]), "families[0].params.te_fraction: non-physical"),
    ("negative conc", lambda d: d["families"][3]["params"].update(conc_blood_mmol=[-1, 1]), "families[3].params.conc_blood_mmol: non-physical"),
    ("family probability > 1", lambda d: d["families"][0].update(probability=1.5), "families[0].probability: probability 1.5 outside [0, 1]"),
    ("p_render < 0", lambda d: d.update(p_render=-0.1), "p_render: probability -0.1 outside [0, 1]"),
    ("imperfection probability", lambda d: d["imperfections"]["noise"].update(probability=2), "imperfections.noise.probability: probability 2 outside [0, 1]"),
    ("snr <= 0", lambda d: d["imperfections"]["noise"].update(snr=[0, 10]), "imperfections.noise.snr: non-physical range [0, 10]"),
    ("b1 scale <= 0", lambda d: d["imperfections"]["b1"].update(scale=[-0.2, 1]), "imperfections.b1.scale: non-physical"),
    ("grid not integer", lambda d: d["imperfections"]["bias"].update(grid=[2.5, 3]), "imperfections.bias.grid: expected integers"),
    ("unknown imperfection", lambda d: d["imperfections"].update(motion={"probability": 1}), "imperfections: unknown key(s) motion"),
    ("probabilities sum", lambda d: d["families"][0].update(probability=0.3), "families: probabilities sum to 1.15, must sum to 1"),
    ("string number", lambda d: d["families"][2]["params"].update(flip_deg="ten"), "families[2].params.flip_deg: expected [low, high] or a number, got 'ten'"),
    ("three-element range", lambda d: d["families"][2]["params"].update(flip_deg=[1, 2, 3]), "families[2].params.flip_deg: expected [low, high]"),
    ("string p_render", lambda d: d.update(p_render="0.7"), "p_render: expected a number, got '0.7'"),
    ("bool probability", lambda d: d["families"][0].update(probability=True), "families[0].probability: expected a number"),
    ("params not a mapping", lambda d: d["families"][0].update(params=[1, 2]), "families[0].params: expected a mapping"),
    ("families not a list", lambda d: d.update(families={"a": 1}), "families: expected a non-empty list"),
    ("unknown top-level key", lambda d: d.update(augment=True), "unknown key(s) augment"),
    ("missing top-level key", lambda d: d.pop("p_render"), "missing key(s) p_render"),
    ("label overlap", lambda d: d["labels"].update(myocardium=[2, 3]), "labels: label(s) [3] are both blood and myocardium"),
    ("nan value", lambda d: d["families"][2]["params"].update(tr_ms=[float("nan"), 3]), "families[2].params.tr_ms: must be finite"),
]


@pytest.mark.parametrize("name,mutate,message", BAD_CASES, ids=[c[0] for c in BAD_CASES])
def test_invalid_protocols_name_the_field(tmp_path, name, mutate, message):
    d = _mut(mutate)
    path = tmp_path / "wide.yaml"
    path.write_text(yaml.safe_dump(d, sort_keys=False))
    with pytest.raises(ProtocolError) as e:
        load_protocol(path)
    assert message in str(e.value)
    assert str(e.value).startswith("wide.yaml: ")
    assert isinstance(e.value, ValueError)


def test_exact_inverted_range_message(tmp_path):
    d = _mut(lambda d: d["families"][2]["params"].update(tr_ms=[100, 15]))
    (tmp_path / "wide.yaml").write_text(yaml.safe_dump(d))
    with pytest.raises(ProtocolError, match=r"^wide\.yaml: families\[2\]\.params\.tr_ms: inverted range \[100, 15\]$"):
        load_protocol(tmp_path / "wide.yaml")


def test_bad_files(tmp_path):
    with pytest.raises(ProtocolError, match="not found"):
        load_protocol(tmp_path / "nope.yaml")
    with pytest.raises(ProtocolError, match="not a preset"):
        load_protocol("nonexistent_preset")
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(ProtocolError, match=r"broken\.json: not valid JSON"):
        load_protocol(tmp_path / "broken.json")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ProtocolError, match=r"list\.yaml: expected a mapping"):
        load_protocol(tmp_path / "list.yaml")


@pytest.mark.parametrize("preset", PRESETS)
@pytest.mark.parametrize("suffix", [".json", ".yaml", ".yml"])
def test_round_trip_files_equal_presets(tmp_path, preset, suffix):
    p = load_protocol(preset)
    path = save_protocol(p, tmp_path / f"copy{suffix}")
    assert load_protocol(path) == p
    assert load_protocol(str(path)) == p
    with pytest.raises(FileExistsError):
        save_protocol(p, path)
    # A hand-written JSON file (plain lists/numbers) loads to the same protocol too.
    (tmp_path / "hand.json").write_text(json.dumps(p.to_dict()))
    assert load_protocol(tmp_path / "hand.json") == p


def test_fixed_value_shorthand_and_defaults():
    d = wide_dict()
    d["families"][2]["params"]["tr_ms"] = 3.0
    for k in ("labels", "postprocess", "imperfections", "gd_r1", "description"):
        d.pop(k)
    p = protocol_from_dict(d)
    assert p.families[2].params["tr_ms"] == (3.0, 3.0)
    assert p.labels.blood == (1, 3) and p.labels.myocardium == (2,)
    assert p.postprocess.clip_percentile == 99.5 and p.postprocess.t_min_ms == 1.0
    assert p.imperfections == {}


def test_paper_preset_matches_design():
    p = load_protocol("paper")
    assert p.p_render == 0.7
    fams = {f.family: f for f in p.families}
    assert set(fams) == {"look_locker", "spoiled_gre"}
    assert fams["look_locker"].probability == fams["spoiled_gre"].probability == 0.5
    assert fams["spoiled_gre"].params == {"flip_deg": (3, 15), "tr_ms": (15, 100), "te_fraction": (0.1, 0.8),
                                          "te_min_ms": (5, 5)}
    assert fams["look_locker"].params == {"flip_deg": (4, 15), "ti_min_ms": (180, 180), "ti_max_t1_factor": (1.5, 1.5)}
    assert p.postprocess.t_min_ms == 1.0 and p.postprocess.clip_percentile == 99.5
    assert p.imperfections == {}


def test_wide_preset_has_every_family_and_imperfection():
    p = load_protocol("wide")
    assert {f.family for f in p.families} == set(FAMILIES)
    assert set(p.imperfections) == {"b1", "bias", "noise", "relaxation_scaling"}
    assert p.imperfections["relaxation_scaling"].probability == 0.0  # off by default (an ablation switches it on)


# ----------------------------------------------------------------------------- parameter statistics

def test_paper_parameter_statistics():
    """Family frequencies, ranges and coverage, TE rule and the TI bound over many draws."""
    renderer = ContrastRenderer(load_protocol("paper"))
    rng = np.random.default_rng(1)
    t1 = np.linspace(100, 2000, 100, dtype=np.float32).reshape(10, 10)
    valid = np.ones((10, 10), bool)
    valid[-1, -3:] = False  # the longest T1s are outside the crop: P99 must ignore them
    m0, t2 = np.ones_like(t1), np.full_like(t1, 50.0)
    p99 = nearest_rank(t1[valid], 99)
    n = 3000
    draws = [renderer.render(m0, t1, t2, rng, valid=valid)[1] for _ in range(n)]
    ll = [d for d in draws if d["family"] == "look_locker"]
    gre = [d for d in draws if d["family"] == "spoiled_gre"]
    assert len(ll) + len(gre) == n
    assert abs(len(ll) / n - 0.5) < 4 * math.sqrt(0.25 / n)

    def covers(values, lo, hi):
        values = np.asarray(values)
        assert values.min() >= lo and values.max() <= hi
        assert values.min() - lo < 0.02 * (hi - lo) and hi - values.max() < 0.02 * (hi - lo)

    covers([d["flip_deg"] for d in gre], 3, 15)
    covers([d["tr_ms"] for d in gre], 15, 100)
    covers([d["te_fraction"] for d in gre], 0.1, 0.8)
    te = np.array([d["te_ms"] for d in gre])
    assert te.min() >= 5.0 and te.min() == 5.0  # the floor is hit (TR·0.1 < 5 ms happens)
    np.testing.assert_allclose(te, [max(d["tr_ms"] * d["te_fraction"], 5.0) for d in gre])
    covers(te, 5, 80)
    covers([d["flip_deg"] for d in ll], 4, 15)
    for d in ll:
        assert d["t1_p99_ms"] == pytest.approx(p99)
        assert d["ti_max_ms"] == pytest.approx(1.5 * p99, rel=1e-6)
    covers([d["ti_ms"] for d in ll], 180, 1.5 * p99)


@pytest.mark.parametrize("preset", PRESETS)
def test_preset_family_frequencies_and_ranges(preset):
    protocol = load_protocol(preset)
    renderer = ContrastRenderer(protocol)
    rng = np.random.default_rng(2)
    m0, t1, t2, labels = region_maps((12, 12))
    n = 2000
    draws = [renderer.render(m0, t1, t2, rng, labels=labels, valid=labels >= 0)[1] for _ in range(n)]
    for spec in protocol.families:
        mine = [d for d in draws if d["family"] == spec.family]
        k, p = len(mine), spec.probability
        assert abs(k / n - p) < 4.5 * math.sqrt(p * (1 - p) / n) + 1e-9, spec.family
        for key, (lo, hi) in spec.params.items():
            vals = [d[key] for d in mine]
            assert min(vals) >= lo and max(vals) <= hi, (spec.family, key)
    for kind, spec in protocol.imperfections.items():
        key = {"b1": "b1_scale_grid", "bias": "bias_gain_grid", "noise": "noise_snr",
               "relaxation_scaling": "relaxation_scaling_grid"}[kind]
        eligible = [d for d in draws if kind != "b1" or FAMILIES[d["family"]].uses_flip]
        frac = sum(key in d for d in eligible) / len(eligible)
        p = spec.probability
        assert abs(frac - p) <= 4.5 * math.sqrt(p * (1 - p) / len(eligible)), kind
    for d in draws:
        json.dumps(d)  # JSON-serialisable


def test_family_probability_setting_gives_that_share_and_keeps_the_others_proportions():
    """``tse.probability=0.4`` on ``wide`` (tse 0.15, spoiled_gre 0.15, bssfp 0.10 of the YAML): tse is
    drawn 40 % of the time, every other family ``p * 0.6 / 0.85`` (by hand: 0.1059, 0.0706), counted in
    draws of the renderer, not read back from the protocol."""
    protocol = protocol_with_settings("wide", ["tse.probability=0.4"])
    assert protocol.name == "wide+tse.probability=0.4"
    renderer = ContrastRenderer(protocol)
    rng = np.random.default_rng(5)
    n = 20000
    counts: dict = {}
    for _ in range(n):
        name = protocol.families[renderer.choose_family(rng)].family
        counts[name] = counts.get(name, 0) + 1
    expected = {"tse": 0.4, "spoiled_gre": 0.15 * 0.6 / 0.85, "bssfp": 0.10 * 0.6 / 0.85, "lge": 0.15 * 0.6 / 0.85}
    for name, p in expected.items():
        assert abs(counts[name] / n - p) < 4.5 * math.sqrt(p * (1 - p) / n), (name, counts[name] / n, p)
    assert protocol_with_settings("wide", ["tse.probability=0"]).families[-1].probability == 0.0
    for bad in ("tse.probability=1.5", "tse.probability=[0.1, 0.2]"):
        with pytest.raises(ProtocolError, match="probability"):
            protocol_with_settings("wide", [bad])


def _scaling_protocol(family: str, factor: float, params: dict) -> "object":
    d = no_imperfections().to_dict()
    d["families"] = [dict(f, probability=1.0) for f in d["families"] if f["family"] == family]
    d["families"][0]["params"].update(params)
    d["imperfections"] = {"relaxation_scaling": {"probability": 1.0, "factor": [factor, factor], "grid": [2, 2]}}
    return protocol_from_dict(d, "test")


@pytest.mark.parametrize("family,params", [
    ("tse", {"tr_ms": 2000.0, "te_ms": 80.0, "blood_factor": 1.0}),
    ("spoiled_gre", {"flip_deg": 20.0, "tr_ms": 30.0, "te_fraction": 0.2, "te_min_ms": 2.0}),
    ("bssfp", {"flip_deg": 60.0, "tr_ms": 2.5}),
])
def test_relaxation_scaling_renders_non_cardiac_tissue_with_k_times_t1_and_t2(family, params):
    """Factor fixed at 4: outside the blood and myocardium labels the image is the signal equation (numpy,
    written here) of 4·T1 and 4·T2, blood and myocardium are untouched; the short-TR bSSFP image of the
    scaled tissue stays within 1 % of the unscaled one (its signal depends on T1/T2 only), while the
    T2-weighted TSE image of that tissue changes by far more."""
    m0, t1, t2, labels = region_maps()
    renderer = ContrastRenderer(_scaling_protocol(family, 4.0, params))
    img, p = renderer.render(m0, t1, t2, np.random.default_rng(0), labels=labels, valid=labels >= 0)
    assert p["relaxation_scaling_min"] == pytest.approx(4.0, rel=1e-5) == p["relaxation_scaling_max"]
    blood, myo = np.isin(labels, (1, 3)), labels == 2
    tissue = ~(blood | myo)
    k = np.where(tissue, 4.0, 1.0)
    want = expected_image(family, p, m0, t1 * k, t2 * k, blood, myo)
    unscaled = expected_image(family, p, m0, t1, t2, blood, myo)
    got = img.numpy().astype(np.float64)
    below = want < p["clip_level"] * (1 - 1e-5)
    assert below[tissue].mean() > 0.5, "the scaled tissue must mostly lie below the clip level to be compared"
    # float32 rendering: 1 - exp(-TR/T1) at TR 2.5 ms and T1 3440 ms cancels to ~1e-4 relative
    np.testing.assert_allclose(got[below], want[below], rtol=5e-4, atol=1e-7)
    change = np.abs(want[tissue] / unscaled[tissue] - 1.0).max()
    if family == "bssfp":
        assert change < 0.01
    if family == "tse":
        assert change > 0.5


def test_relaxation_scaling_probability_setting_and_no_scaling_without_labels():
    renderer = ContrastRenderer(protocol_with_settings("wide", ["relaxation_scaling.probability=0.5"]))
    m0, t1, t2, labels = region_maps((12, 12))
    rng = np.random.default_rng(4)
    n = 600
    hits = sum("relaxation_scaling_grid" in renderer.render(m0, t1, t2, rng, labels=labels)[1] for _ in range(n))
    assert abs(hits / n - 0.5) < 4.5 * math.sqrt(0.25 / n)
    # without labels the renderer cannot tell cardiac from other tissue: nothing is scaled
    assert not any("relaxation_scaling_grid" in renderer.render(m0, t1, t2, rng)[1] for _ in range(50))
    with pytest.raises(ProtocolError, match="no parameter"):
        protocol_with_settings("wide", ["relaxation_scaling.scale=[1, 2]"])


def test_scale_relaxation_keeps_the_t1_t2_ratio_and_the_cardiac_labels():
    from nnunetv2_physaug.contrast.imperfections import scale_relaxation

    m0, t1, t2, labels = region_maps((48, 40))
    t1, t2 = torch.from_numpy(t1), torch.from_numpy(t2)
    t1s, t2s = t1.clone(), t2.clone()
    tissue = torch.from_numpy(~np.isin(labels, (1, 2, 3)))
    lo, hi = scale_relaxation(t1s, t2s, tissue, np.random.default_rng(3), 3, (0.5, 6.0))
    k1, k2 = (t1s / t1).numpy(), (t2s / t2).numpy()
    np.testing.assert_allclose(k1, k2, rtol=1e-6)                    # T1/T2 unchanged everywhere
    assert (k1[~tissue.numpy()] == 1.0).all()                          # blood and myocardium untouched
    k = k1[tissue.numpy()]
    assert 0.5 * (1 - 1e-6) <= k.min() and k.max() <= 6.0 * (1 + 1e-6) and k.max() / k.min() > 1.5
    assert lo <= k.min() * (1 + 1e-6) and hi >= k.max() * (1 - 1e-6)  # the field's range covers the tissue's


# ----------------------------------------------------------------------------- renderings vs equations

@pytest.mark.parametrize("family", list(FAMILIES))
def test_rendering_equals_signal_equation(family):
    protocol = no_imperfections("wide")
    renderer = ContrastRenderer(protocol)
    m0, t1, t2, labels = region_maps(heterogeneous_myocardium=True)
    valid = labels >= 0
    blood, myo = np.isin(labels, (1, 3)), labels == 2
    for seed in range(6):
        image, p = renderer.render(m0, t1, t2, np.random.default_rng(seed), labels=labels, valid=valid,
                                   family=family)
        assert image.dtype == torch.float32 and image.shape == m0.shape
        img = image.numpy()
        expected = expected_image(family, p, m0, t1, t2, blood, myo)
        signed = FAMILIES[family].signed
        level = nearest_rank(np.abs(expected[valid]) if signed else expected[valid], 99.5)
        assert p["clip_level"] == pytest.approx(level, rel=2e-4)  # float32 (1 - exp(-TR/T1) at TR 3 ms)
        below = np.abs(expected) < level * (1 - 1e-3)
        assert below.any()
        np.testing.assert_allclose(img[below], expected[below], rtol=2e-4, atol=1e-7)
        np.testing.assert_allclose(img[~below], np.clip(expected[~below], -level, level), rtol=2e-4, atol=1e-7)
        clip = p["clip_level"]  # the renderer's own (float32) level bounds the image exactly
        assert img.min() >= (-clip if signed else 0.0) and img.max() <= clip


def test_label_free_gd_uses_t2_for_blood():
    """Without labels, blood is T2 > 150 ms and every other pixel takes the myocardial concentration
    (border Gd off: the truth here is one concentration per region; tests/test_pathology.py checks the border)."""
    d = no_imperfections("wide").to_dict()
    for fam in d["families"]:
        if fam["family"] == "lge":
            fam["params"]["blood_partial_volume"] = 0
    renderer = ContrastRenderer(protocol_from_dict(d, "test"))
    m0, t1, t2, labels = region_maps()
    image, p = renderer.render(m0, t1, t2, np.random.default_rng(3), family="lge")
    blood = t2 > 150
    expected = expected_image("lge", p, m0, t1, t2, blood, ~blood)
    below = expected < p["clip_level"] * (1 - 1e-5)
    np.testing.assert_allclose(image.numpy()[below], expected[below], rtol=2e-5, atol=1e-7)


def test_t1_t2_clamped_to_one_ms_and_inputs_untouched():
    renderer = ContrastRenderer(no_imperfections("paper"))
    m0 = torch.ones(4, 4)
    t1 = torch.full((4, 4), 0.01)
    t2 = torch.full((4, 4), -3.0)
    t1[0, 0], t2[0, 0] = 1000.0, 50.0
    before = [x.clone() for x in (m0, t1, t2)]
    image, p = renderer.render(m0, t1, t2, np.random.default_rng(0), family="spoiled_gre")
    for a, b in zip((m0, t1, t2), before):
        assert torch.equal(a, b)
    expected = np_gre(1.0, 1.0, 1.0, p["flip_deg"], p["tr_ms"], p["te_ms"])  # clamped pixels
    np.testing.assert_allclose(image.numpy()[1:, 1:], min(expected, p["clip_level"]), rtol=2e-5)


def test_in_place_render_of_the_loader_equals_the_copying_render():
    """The loader hands the renderer its own crop and skips the finiteness check (copy_maps=False,
    check_finite=False): same image and parameters as the copying render for the same seed, with simulated
    edema, relaxation scaling, fields, noise and a T1/T2 below the clamp; only the passed T1/T2 change."""
    renderer = ContrastRenderer(load_protocol("wide_pathology"))
    m0, t1, t2, labels = (torch.from_numpy(a) for a in region_maps((1, 32, 32), heterogeneous_myocardium=True))
    t1[0, 3, 3], t2[0, 4, 4] = 0.01, -2.0  # clamped to t_min_ms by both paths
    families = set()
    for seed in range(40):
        rng_a, rng_b = np.random.default_rng(seed), np.random.default_rng(seed)
        before = [x.clone() for x in (m0, t1, t2)]
        copying, p_copying = renderer.render(m0, t1, t2, rng_a, labels=labels, valid=labels >= 0)
        assert all(torch.equal(a, b) for a, b in zip((m0, t1, t2), before))
        own = [x.clone() for x in (m0, t1, t2)]
        in_place, p_in_place = renderer.render(*own, rng_b, labels=labels, valid=labels >= 0, check_finite=False,
                                               copy_maps=False)
        assert torch.equal(in_place, copying) and p_in_place == p_copying
        assert torch.equal(own[0], m0) and float(own[1].min()) >= 1.0 and float(own[2].min()) >= 1.0
        families.add(p_copying["family"])
    assert len(families) >= 6


def test_valid_mask_sets_clip_level():
    renderer = ContrastRenderer(no_imperfections("paper"))
    m0, t1, t2, labels = region_maps()
    m0 = m0.copy()
    m0[labels == -1] = 100.0  # a huge signal outside the crop must not set the clip level
    _, p_valid = renderer.render(m0, t1, t2, np.random.default_rng(5), labels=labels, valid=labels >= 0,
                                 family="spoiled_gre")
    _, p_all = renderer.render(m0, t1, t2, np.random.default_rng(5), labels=labels, family="spoiled_gre")
    assert p_all["clip_level"] > 10 * p_valid["clip_level"]


def test_percentile_subsample_on_large_input():
    """Beyond stats_max_pixels the clip level comes from a strided subsample: close to the full one."""
    renderer = ContrastRenderer(no_imperfections("paper"))
    rng = np.random.default_rng(0)
    m0 = rng.uniform(0.2, 1.0, (4, 128, 128)).astype(np.float32)
    t1, t2 = np.full_like(m0, 1000.0), np.full_like(m0, 50.0)
    image, p = renderer.render(m0, t1, t2, rng, family="spoiled_gre")
    sig = np_gre(m0.astype(np.float64), 1000.0, 50.0, p["flip_deg"], p["tr_ms"], p["te_ms"])
    assert p["clip_level"] == pytest.approx(np.percentile(sig, 99.5), rel=2e-3)


@pytest.mark.parametrize("name", ["spoiled_gre", "bssfp", "look_locker"])
@pytest.mark.parametrize("flip_map", [False, True])
def test_fast_forms_equal_physics_module(name, flip_map):
    """The in-place loader forms agree with physics.signal (float64) for scalar and per-pixel flips."""
    from nnunetv2_physaug.contrast import fast
    from nnunetv2_physaug.physics import signal
    rng = np.random.default_rng(0)
    shape = (3, 20, 24)
    m0 = torch.from_numpy(rng.uniform(0.1, 1.0, shape).astype(np.float32))
    t1 = torch.from_numpy(rng.uniform(200, 2000, shape).astype(np.float32))
    t2 = torch.from_numpy(rng.uniform(20, 300, shape).astype(np.float32))
    flip = torch.from_numpy(rng.uniform(5, 80, shape[-2:]).astype(np.float32)) if flip_map else 35.0
    before = [x.clone() for x in (m0, t1, t2)]
    args = {"spoiled_gre": (20.0, 6.0), "bssfp": (3.5,), "look_locker": (400.0,)}[name]
    got = getattr(fast, name)(m0, t1, t2, flip, *args)
    d = lambda x: x.double() if isinstance(x, torch.Tensor) else x  # noqa: E731
    ref = getattr(signal, name)(d(m0), d(t1), d(t2), d(flip), *args)
    assert got.dtype == torch.float32 and got.shape == shape
    np.testing.assert_allclose(got.numpy(), ref.numpy(), rtol=3e-4, atol=1e-7)
    for a, b in zip((m0, t1, t2), before):
        assert torch.equal(a, b)


@pytest.mark.parametrize("name", ["inversion_recovery", "inversion_recovery_signed", "saturation_recovery",
                                  "spin_echo", "gd_t1"])
def test_fast_relaxation_forms_equal_physics_module(name):
    """The in-place forms of the Gd families and TSE agree with physics.signal (float64), inputs untouched."""
    from nnunetv2_physaug.contrast import fast
    from nnunetv2_physaug.physics import signal
    rng = np.random.default_rng(1)
    shape = (2, 20, 24)
    m0 = torch.from_numpy(rng.uniform(0.1, 1.0, shape).astype(np.float32))
    t1 = torch.from_numpy(rng.uniform(200, 2000, shape).astype(np.float32))
    t2 = torch.from_numpy(rng.uniform(20, 300, shape).astype(np.float32))
    conc = torch.from_numpy(rng.uniform(0.0, 6.0, shape).astype(np.float32))
    before = [x.clone() for x in (m0, t1, t2, conc)]
    d = lambda x: x.double()  # noqa: E731
    got, ref = {
        "inversion_recovery": lambda: (fast.inversion_recovery(m0, t1, 350.0, 1800.0, signed=False),
                                       signal.inversion_recovery(d(m0), d(t1), 350.0, 1800.0, signed=False)),
        "inversion_recovery_signed": lambda: (fast.inversion_recovery(m0, t1, 350.0, 1800.0, signed=True),
                                              signal.inversion_recovery(d(m0), d(t1), 350.0, 1800.0, signed=True)),
        "saturation_recovery": lambda: (fast.saturation_recovery(m0, t1, 90.0),
                                        signal.saturation_recovery(d(m0), d(t1), 90.0)),
        "spin_echo": lambda: (fast.spin_echo(m0, t1, t2, 2000.0, 60.0), signal.spin_echo(d(m0), d(t1), d(t2), 2000.0, 60.0)),
        "gd_t1": lambda: (fast.gd_t1(t1, conc, 4.5), signal.gd_t1(d(t1), d(conc), 4.5)),
    }[name]()
    assert got.dtype == torch.float32 and got.shape == shape
    np.testing.assert_allclose(got.numpy(), ref.numpy(), rtol=3e-5, atol=1e-6)
    if name == "inversion_recovery_signed":
        assert (got < 0).any() and (got > 0).any()
    for a, b in zip((m0, t1, t2, conc), before):
        assert torch.equal(a, b)


# ----------------------------------------------------------------------------- tissue contrast

def test_bssfp_blood_brighter_than_myocardium():
    renderer = ContrastRenderer(load_protocol("wide"))
    m0, t1, t2, labels = region_maps()
    for seed in range(40):
        img, _ = renderer.render(m0, t1, t2, np.random.default_rng(seed), labels=labels, family="bssfp")
        img = img.numpy()
        assert img[labels == 3].mean() > img[labels == 2].mean()


def test_lge_nulls_myocardium():
    renderer = ContrastRenderer(load_protocol("wide"))
    m0, t1, t2, labels = region_maps()
    wins = 0
    for seed in range(60):
        img, p = renderer.render(m0, t1, t2, np.random.default_rng(seed), labels=labels, family="lge")
        img = img.numpy()
        wins += img[labels == 2].mean() < 0.5 * img[labels == 3].mean()
    assert wins >= 0.9 * 60


def test_perfusion_blood_enhances():
    renderer = ContrastRenderer(no_imperfections("wide"))
    m0, t1, t2, labels = region_maps()
    for seed in range(20):
        img, _ = renderer.render(m0, t1, t2, np.random.default_rng(seed), labels=labels,
                                 family="saturation_recovery")
        assert img.numpy()[labels == 3].mean() > img.numpy()[labels == 2].mean()


# ----------------------------------------------------------------------------- imperfections

@pytest.mark.parametrize("grid", [2, 3, 5])
def test_smooth_field_range_and_smoothness(grid):
    rng = np.random.default_rng(grid)
    f = smooth_field(rng, (64, 48), grid, (0.7, 1.3)).numpy()
    assert f.shape == (64, 48) and f.dtype == np.float32
    assert f.min() >= 0.7 and f.max() <= 1.3
    assert f.max() - f.min() > 0.05
    # Piecewise-linear interpolation of values in [0.7, 1.3] between knots (n-1)/(grid-1) apart:
    # one pixel step changes the field by at most 0.6 / knot spacing.
    for axis, n in ((0, 64), (1, 48)):
        assert np.abs(np.diff(f, axis=axis)).max() <= 0.6 * (grid - 1) / (n - 1) + 1e-5


def _only(kind, **params):
    d = load_protocol("wide").to_dict()
    d["imperfections"] = {kind: {"probability": 1.0, **params}}
    return ContrastRenderer(protocol_from_dict(d, "test"))


def test_bias_field_multiplies_image_and_broadcasts_over_slices():
    renderer = _only("bias", gain=[0.6, 1.4], grid=[3, 3])
    shape = (3, 40, 40)
    m0, t1, t2 = np.full(shape, 0.8, np.float32), np.full(shape, 1000.0, np.float32), np.full(shape, 50.0, np.float32)
    img, p = renderer.render(m0, t1, t2, np.random.default_rng(0), family="spoiled_gre")
    img = img.numpy()
    base = np_gre(0.8, 1000.0, 50.0, p["flip_deg"], p["tr_ms"], p["te_ms"])
    gain = img / base
    assert np.array_equal(img[0], img[1]) and np.array_equal(img[0], img[2])
    below = img < p["clip_level"] * (1 - 1e-6)
    assert gain[below].min() >= 0.6 - 1e-5 and gain.max() <= 1.4 + 1e-5
    assert 0.6 <= p["bias_gain_min"] <= p["bias_gain_max"] <= 1.4
    assert np.abs(np.diff(gain[0][below[0].all(1)], axis=1)).max() <= 0.8 * 2 / 39 + 1e-4


def test_b1_field_scales_flip_angle():
    renderer = _only("b1", scale=[0.8, 1.2], grid=[2, 2])
    shape = (32, 32)
    m0, t1, t2 = np.full(shape, 0.8, np.float32), np.full(shape, 1000.0, np.float32), np.full(shape, 50.0, np.float32)
    img, p = renderer.render(m0, t1, t2, np.random.default_rng(4), family="bssfp")
    img = img.numpy()
    lo = np_bssfp(0.8, 1000.0, 50.0, p["flip_deg"] * 0.8, p["tr_ms"])
    hi = np_bssfp(0.8, 1000.0, 50.0, p["flip_deg"] * 1.2, p["tr_ms"])
    assert img.std() > 0  # the field varies the signal
    assert img.min() >= min(lo, hi) * (1 - 1e-5)
    # Reconstruct the flip map at the grid corners (align_corners: corners are control values).
    for yy, xx in ((0, 0), (0, -1), (-1, 0), (-1, -1)):
        s = np.linspace(0.8, 1.2, 4001)
        cand = np_bssfp(0.8, 1000.0, 50.0, p["flip_deg"] * s, p["tr_ms"])
        if img[yy, xx] < p["clip_level"] * (1 - 1e-6):
            assert np.abs(cand - img[yy, xx]).min() < 1e-4 * img[yy, xx] + 1e-6


def test_b1_is_not_applied_to_tse():
    """A B1 field of half the flip angle leaves a TSE render as it is with no field (scale 1, same random
    stream), and is neither logged; the same field does change a bSSFP render (the control)."""
    m0, t1, t2, labels = region_maps()
    renders = {}
    for family in ("tse", "bssfp"):
        for scale in (0.5, 1.0):
            renderer = _only("b1", scale=[scale, scale], grid=[2, 2])
            img, p = renderer.render(m0, t1, t2, np.random.default_rng(0), labels=labels, family=family)
            renders[family, scale] = (img.numpy(), p)
    np.testing.assert_array_equal(renders["tse", 0.5][0], renders["tse", 1.0][0])
    assert "b1_scale_grid" not in renders["tse", 0.5][1]
    assert not np.allclose(renders["bssfp", 0.5][0], renders["bssfp", 1.0][0])
    assert "b1_scale_grid" in renders["bssfp", 0.5][1]


@pytest.mark.parametrize("snr", [1.5, 3.0])
def test_rician_noise_mean_bias(snr):
    renderer = _only("noise", snr=[snr, snr])
    shape = (256, 256)
    m0, t1, t2 = np.full(shape, 0.8, np.float32), np.full(shape, 1000.0, np.float32), np.full(shape, 50.0, np.float32)
    img, p = renderer.render(m0, t1, t2, np.random.default_rng(7), family="spoiled_gre")
    a = np_gre(0.8, 1000.0, 50.0, p["flip_deg"], p["tr_ms"], p["te_ms"])
    sigma = a / snr
    assert p["noise_sigma"] == pytest.approx(sigma, rel=1e-5)
    nu = a * a / (2 * sigma * sigma)
    rice_mean = sigma * math.sqrt(math.pi / 2) * ((1 + nu) * i0e(nu / 2) + nu * i1e(nu / 2))
    assert rice_mean > 1.05 * a  # the bias is real at this SNR
    img = img.numpy()
    # Clipping at P99.5 trims the top 0.5 % of the tail: compare the unclipped part's mean instead
    # of adding its small share, using the Rice distribution's own truncated mean (numerical).
    level = p["clip_level"]
    x = np.linspace(0, level, 200001)
    pdf = x / sigma**2 * np.exp(-(x - a) ** 2 / (2 * sigma**2)) * i0e(x * a / sigma**2)
    mass = np.trapezoid(pdf, x)
    expected = np.trapezoid(x * pdf, x) + (1 - mass) * level
    assert img.mean() == pytest.approx(expected, rel=0.01)
    assert img.mean() == pytest.approx(rice_mean, rel=0.03)


def test_psir_noise_is_gaussian_and_signed():
    """Phase-sensitive images keep the real channel: zero signal plus noise has mean 0 and sd sigma."""
    renderer = _only("noise", snr=[4, 4])
    m0, t1, t2, labels = region_maps((128, 128))
    air = np.zeros_like(labels, bool)
    air[:, 1:40] = True
    m0[air] = 0.0
    img, p = renderer.render(m0, t1, t2, np.random.default_rng(8), labels=labels, valid=labels >= 0, family="psir")
    noise = img.numpy()[air]
    sigma = p["noise_sigma"]
    assert sigma > 0 and sigma * 3 < p["clip_level"]
    assert abs(noise.mean()) < 4 * sigma / math.sqrt(noise.size)
    assert noise.std() == pytest.approx(sigma, rel=0.03)
    assert img.min() >= -p["clip_level"]


# ----------------------------------------------------------------------------- input handling

@pytest.mark.parametrize("bad", ["M0", "T1", "T2"])
@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_map_names_the_map(bad, value):
    renderer = ContrastRenderer(load_protocol("paper"))
    maps = {k: torch.full((8, 8), v) for k, v in (("M0", 1.0), ("T1", 1000.0), ("T2", 50.0))}
    maps[bad][3, 3] = value
    with pytest.raises(ValueError, match=f"{bad} map contains NaN or Inf"):
        renderer.render(maps["M0"], maps["T1"], maps["T2"], np.random.default_rng(0))


def test_shape_mismatch():
    renderer = ContrastRenderer(load_protocol("paper"))
    with pytest.raises(ValueError, match="shape mismatch.*T2"):
        renderer.render(torch.ones(8, 8), torch.ones(8, 8), torch.ones(8, 7), np.random.default_rng(0))
    with pytest.raises(ValueError, match="shape mismatch.*labels"):
        renderer.render(torch.ones(8, 8), torch.ones(8, 8), torch.ones(8, 8), np.random.default_rng(0),
                        labels=torch.ones(4, 4, dtype=torch.int64))


def test_deterministic_and_numpy_input():
    renderer = ContrastRenderer(load_protocol("wide"))
    m0, t1, t2, labels = region_maps((2, 32, 32))
    outs = []
    for seed in (11, 11, 12):
        img, p = renderer.render(m0, t1, t2, np.random.default_rng(seed), labels=labels, valid=labels >= 0)
        outs.append((img, p))
        assert torch.isfinite(img).all()
    assert torch.equal(outs[0][0], outs[1][0]) and outs[0][1] == outs[1][1]
    assert outs[0][1] != outs[2][1]
    img_t, p_t = renderer.render(*(torch.from_numpy(a) for a in (m0, t1, t2)), np.random.default_rng(11),
                                 labels=torch.from_numpy(labels), valid=torch.from_numpy(labels >= 0))
    assert torch.equal(img_t, outs[0][0]) and p_t == outs[0][1]


def test_torch_global_rng_not_used():
    renderer = ContrastRenderer(load_protocol("wide"))
    m0, t1, t2, labels = region_maps()
    torch.manual_seed(0)
    state = torch.get_rng_state()
    for seed in range(20):
        renderer.render(m0, t1, t2, np.random.default_rng(seed), labels=labels)
    assert torch.equal(torch.get_rng_state(), state)
