"""Simulated myocardial pathology and the LGE readout train.

Truth: an event-by-event Bloch simulation (nnunetv2_physaug/physics/bloch.py) for the readout's approach to steady
state; geometry computed here independently (atan2 about the drawn LV centre, scipy's Euclidean
distance transform) for scar/edema placement; physics direction (scar brighter than normal
myocardium on LGE, edema brighter on T2-weighted TSE) for the renders.
"""
from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from scipy.ndimage import binary_dilation, distance_transform_edt

from nnunetv2_physaug.physics import bloch
from nnunetv2_physaug.contrast import ContrastRenderer, ProtocolError, load_protocol
from nnunetv2_physaug.contrast.pathology import draw_pathology
from nnunetv2_physaug.contrast.protocol import protocol_from_dict
from nnunetv2_physaug.physics import signal

SIZE, CENTRE, R_LV, R_EPI = 56, (27.0, 29.0), 9.0, 15.0


def ring_labels() -> np.ndarray:
    """(1, Y, X) ACDC labels: LV disk, myocardial ring, an RV blob, background 0."""
    yy, xx = np.mgrid[:SIZE, :SIZE]
    r = np.hypot(yy - CENTRE[0], xx - CENTRE[1])
    lab = np.zeros((SIZE, SIZE), np.int16)
    lab[(r > R_LV) & (r <= R_EPI)] = 2
    lab[r <= R_LV] = 3
    lab[(np.abs(yy - CENTRE[0]) < 6) & (xx < CENTRE[1] - R_EPI - 1) & (xx > 2)] = 1
    return lab[None]


def ring_maps(lab: np.ndarray):
    t1 = np.where(lab == 2, 1000.0, np.where(np.isin(lab, (1, 3)), 1550.0, 860.0)).astype(np.float32)
    t2 = np.where(lab == 2, 50.0, np.where(np.isin(lab, (1, 3)), 270.0, 30.0)).astype(np.float32)
    m0 = np.where(lab == 2, 0.8, np.where(np.isin(lab, (1, 3)), 0.95, 0.75)).astype(np.float32)
    return m0, t1, t2


def spec_with(**entries):
    proto = load_protocol("wide_pathology").to_dict()
    for k, v in entries.items():
        proto["pathology"][k].update(v)
    return protocol_from_dict(proto)


# ----------------------------------------------------------------------------- readout train

@pytest.mark.parametrize("mz0,t1,flip,tr,n", [(-0.4, 450.0, 20.0, 6.0, 12), (0.0, 300.0, 25.0, 5.0, 24),
                                              (0.7, 900.0, 15.0, 8.0, 1), (-1.0, 1200.0, 30.0, 4.0, 40)])
def test_flash_approach_matches_bloch(mz0, t1, flip, tr, n):
    m = np.array([0.0, 0.0, mz0, 1.0])
    for _ in range(n):  # pulse, relax for TR, spoil: Mz before the next pulse
        m = bloch.apply(bloch.chain(bloch.rf(flip), bloch.relax(tr, t1, 50.0), bloch.spoil()), m)
    assert float(signal.flash_approach(mz0, 1.0, t1, flip, tr, n)) == pytest.approx(m[2], rel=1e-5, abs=1e-7)


def test_lge_render_shows_mz_after_the_readout_train():
    """Uniform blood and myocardium, TI at the myocardial null: with 0 pulses myocardium is black;
    with n pulses both regions equal the Bloch-simulated Mz after n pulses (times the same readout weight)."""
    proto = load_protocol("wide_pathology").to_dict()
    proto["pathology"] = {}
    proto["imperfections"] = {}
    renderer = ContrastRenderer(protocol_from_dict(proto))
    lab = ring_labels()
    m0, t1, t2 = ring_maps(lab)
    fixed = {"flip_deg": 20.0, "te_ms": 2.0, "tr_inv_ms": 2000.0, "ti_null_factor": 1.0, "readout_tr_ms": 6.0,
             "conc_blood_mmol": 0.7, "conc_myocardium_mmol": 0.25, "conc_other_mmol": 0.2}
    for n in (0, 16):
        p = dict(fixed, family="lge", readout_pulses=float(n))
        t1_post_myo = 1.0 / (1.0 / 1000.0 + 4.5e-3 * 0.25)
        t1_post_blood = 1.0 / (1.0 / 1550.0 + 4.5e-3 * 0.7)
        e = math.exp(-2000.0 / t1_post_myo)
        ti = t1_post_myo * math.log(2.0 / (1.0 + e))
        p["ti_ms"] = ti
        img, _ = renderer.render(m0, t1, t2, np.random.default_rng(0), labels=lab, params=p)
        img = img.numpy()[0]

        def simulated(m0_, t1_, t2_):
            mz = m0_ * (1 - 2 * math.exp(-ti / t1_) + math.exp(-2000.0 / t1_))
            m = np.array([0.0, 0.0, mz, 1.0])
            for _ in range(n):
                m = bloch.apply(bloch.chain(bloch.rf(20.0), bloch.relax(6.0, t1_, t2_, m0_), bloch.spoil()), m)
            return abs(m[2]) * math.sin(math.radians(20.0)) * math.exp(-2.0 / t2_)
        myo = simulated(0.8, t1_post_myo, 50.0)
        blood = simulated(0.95, t1_post_blood, 270.0)
        ring = lab[0] == 2
        inner = ring & (distance_transform_edt(ring) > 1)  # away from label-edge interpolation
        if n == 0:
            assert myo == pytest.approx(0.0, abs=1e-9) and np.abs(img[inner]).max() < 1e-4
        else:
            assert img[inner].mean() == pytest.approx(myo, rel=2e-3)
            assert img[lab[0] == 3].mean() / img[inner].mean() == pytest.approx(blood / myo, rel=5e-3)


# ----------------------------------------------------------------------------- geometry

def _angles_about_true_centre() -> np.ndarray:
    yy, xx = np.mgrid[:SIZE, :SIZE]
    return np.degrees(np.arctan2(yy - CENTRE[0], xx - CENTRE[1])) % 360.0


def test_scar_edema_mvo_geometry():
    lab = ring_labels()
    myo = lab[0] == 2
    ang = _angles_about_true_centre()
    d_lv = distance_transform_edt(lab[0] != 3)  # Euclidean distance to the LV cavity
    proto = spec_with(scar={"probability": 1.0, "transmurality": [0.3, 0.3]}, mvo={"probability": 1.0},
                      edema={"probability": 1.0})
    for seed in range(12):
        params: dict = {}
        masks = draw_pathology(proto.pathology, torch.from_numpy(lab), (3,), (2,), np.random.default_rng(seed), params)
        scar, mvo, edema = (m.numpy()[0] for m in (masks.scar, masks.mvo, masks.edema))
        assert scar.any() and edema.any()
        assert not (scar & ~myo).any() and not (edema & ~myo).any() and not (mvo & ~scar).any()
        assert not (scar & ~edema).any()  # the area at risk holds the infarct
        diff = (ang[scar] - params["scar_centre_deg"] + 180.0) % 360.0 - 180.0
        assert np.abs(diff).max() <= params["scar_sector_deg"] / 2 + 8.0  # pixel-centre slack at r ~ 10 px
        # sub-endocardial: 30 % of a 6-pixel wall, plus the rim pixel, from the LV edge
        assert d_lv[scar].max() <= 0.3 * (R_EPI - R_LV) + 2.0
        assert params["scar_transmurality"] == pytest.approx(0.3)


def test_transmural_full_circle_scar_is_the_whole_myocardium_and_labels_are_untouched():
    lab = ring_labels()
    before = lab.copy()
    proto = spec_with(scar={"probability": 1.0, "transmurality": [1.0, 1.0], "sector_deg": [360, 360]})
    masks = draw_pathology(proto.pathology, torch.from_numpy(lab), (3,), (2,), np.random.default_rng(3), {})
    np.testing.assert_array_equal(masks.scar.numpy()[0], lab[0] == 2)
    np.testing.assert_array_equal(lab, before)


def test_no_lv_in_the_region_draws_nothing():
    lab = ring_labels()
    lab[lab == 3] = 0
    proto = spec_with(scar={"probability": 1.0}, edema={"probability": 1.0})
    assert draw_pathology(proto.pathology, torch.from_numpy(lab), (3,), (2,), np.random.default_rng(0), {}) is None


# ----------------------------------------------------------------------------- renders

def _render_means(family: str, entries: dict, seeds=range(30)):
    proto = spec_with(**entries).to_dict()
    proto["imperfections"] = {}
    proto["pathology"]["uptake"]["probability"] = 0.0
    renderer = ContrastRenderer(protocol_from_dict(proto))
    lab = ring_labels()
    m0, t1, t2 = ring_maps(lab)
    out = []
    for seed in seeds:
        img, p = renderer.render(m0, t1, t2, np.random.default_rng(seed), labels=lab, family=family)
        masks = renderer.last_pathology
        img = img.numpy()[0]
        normal = (lab[0] == 2) & ~masks.edema.numpy()[0] & ~masks.scar.numpy()[0]
        out.append((img, masks, normal, p))
    return out


def test_lge_scar_is_bright_and_mvo_dark():
    wins = 0
    runs = _render_means("lge", {"scar": {"probability": 1.0}, "mvo": {"probability": 0.0},
                                 "edema": {"probability": 0.0}})
    for img, masks, normal, _ in runs:
        scar = masks.scar.numpy()[0]
        wins += img[scar].mean() > 1.5 * img[normal].mean()
    assert wins >= 0.9 * len(runs)
    runs = _render_means("lge", {"scar": {"probability": 1.0, "transmurality": [1.0, 1.0]},
                                 "mvo": {"probability": 1.0, "depth_fraction": [0.6, 0.6]},
                                 "edema": {"probability": 0.0}})
    checked = 0
    for img, masks, _, p in runs:
        mvo, scar = masks.mvo.numpy()[0], masks.scar.numpy()[0]
        if mvo.sum() >= 5:
            checked += 1
            assert img[mvo].mean() < img[scar & ~mvo].mean()
    assert checked >= 10


def test_t2_weighted_tse_shows_edema():
    runs = _render_means("tse", {"scar": {"probability": 0.0}, "edema": {"probability": 1.0, "t2_factor": [1.5, 1.5]}})
    for img, masks, normal, p in runs:
        if p["te_ms"] >= 40:
            assert img[masks.edema.numpy()[0]].mean() > 1.1 * img[normal].mean()


def test_pathology_renders_are_reproducible():
    renderer = ContrastRenderer(load_protocol("wide_pathology"))
    lab = ring_labels()
    m0, t1, t2 = ring_maps(lab)
    for family in ("lge", "psir", "tse", "saturation_recovery"):
        a, pa = renderer.render(m0, t1, t2, np.random.default_rng(5), labels=lab, family=family)
        b, pb = renderer.render(m0, t1, t2, np.random.default_rng(5), labels=lab, family=family)
        assert torch.equal(a, b) and pa == pb


def test_pathology_protocol_validation():
    d = load_protocol("wide_pathology").to_dict()
    assert protocol_from_dict(copy.deepcopy(d)) == load_protocol("wide_pathology")
    bad = copy.deepcopy(d)
    del bad["pathology"]["scar"]
    with pytest.raises(ProtocolError, match="mvo"):
        protocol_from_dict(bad)
    bad = copy.deepcopy(d)
    bad["pathology"]["scar"]["transmurality"] = [0.5, 1.5]
    with pytest.raises(ProtocolError, match="transmurality"):
        protocol_from_dict(bad)
    bad = copy.deepcopy(d)
    bad["pathology"]["infarct"] = {"probability": 1.0}
    with pytest.raises(ProtocolError, match="infarct"):
        protocol_from_dict(bad)


def test_black_blood_tse_suppresses_only_the_blood_compartment_of_mixed_pixels():
    """Rim pixels hold a volume fraction f of blood (T1/T2 the M0-weighted means, M0 the sum, as the
    estimator mixes); the two-compartment signal written out here is the truth. With ``slow_flow_fraction``
    s the blood compartment at the wall keeps bf + s (1 - bf) of its signal (s = 1: unsuppressed)."""
    lab = ring_labels()
    m0, t1, t2 = ring_maps(lab)
    yy, xx = np.mgrid[:SIZE, :SIZE]
    r = np.hypot(yy - CENTRE[0], xx - CENTRE[1])
    rim = (lab[0] == 2) & (r <= R_LV + 1.0)
    f = 0.4
    mb, mt = 0.95, 0.8
    m_mix = f * mb + (1 - f) * mt
    m0[0][rim] = m_mix
    t1[0][rim] = (f * mb * 1550.0 + (1 - f) * mt * 1000.0) / m_mix
    t2[0][rim] = (f * mb * 270.0 + (1 - f) * mt * 50.0) / m_mix
    proto = load_protocol("wide_pathology").to_dict()
    proto["imperfections"], proto["pathology"] = {}, {}
    renderer = ContrastRenderer(protocol_from_dict(proto))

    def se(t1_, t2_, tr, te):
        return (1 - math.exp(-tr / t1_)) * math.exp(-te / t2_)
    for pv, bf, slow in ((1.0, 0.0, 0.0), (1.0, 0.3, 0.0), (0.0, 0.0, 0.0), (1.0, 0.3, 0.5), (1.0, 0.0, 1.0),
                         (0.0, 0.0, 0.7)):
        p = {"family": "tse", "tr_ms": 2000.0, "te_ms": 80.0, "blood_factor": bf, "blood_partial_volume": pv,
             "slow_flow_fraction": slow, "clip_level": 10.0}
        img, _ = renderer.render(m0, t1, t2, np.random.default_rng(0), labels=lab, params=p)
        got = img.numpy()[0][rim].mean()
        wall = bf + slow * (1 - bf)  # blood signal kept at the wall
        two = (1 - f) * mt * se(1000.0, 50.0, 2000.0, 80.0) + f * mb * wall * se(1550.0, 270.0, 2000.0, 80.0)
        mono = m_mix * se(t1[0][rim][0], t2[0][rim][0], 2000.0, 80.0)
        if pv:
            assert got == pytest.approx(two, rel=1e-3)
        else:  # one compartment: slow flow has nothing to act on
            assert got == pytest.approx(mono, rel=1e-3) and (slow or mono > 2 * two)  # the bright rim it replaces
        interior = img.numpy()[0][(lab[0] == 2) & (r > R_LV + 2.5)].mean()
        assert interior == pytest.approx(mt * se(1000.0, 50.0, 2000.0, 80.0), rel=1e-3)
        cavity = img.numpy()[0][(lab[0] == 3) & (r < R_LV - 2.5)].mean()  # slow flow acts at the wall only
        assert cavity == pytest.approx(mb * bf * se(1550.0, 270.0, 2000.0, 80.0), rel=1e-3, abs=1e-7)


def test_cavity_tissue_renders_papillary_muscle_as_tissue_in_black_blood_tse_and_lge():
    """Inside the LV label: a papillary muscle (myocardial M0/T1/T2, as the estimator maps a dark cavity
    pixel) and pixels holding a volume fraction f of blood (M0-weighted T1/T2). Truth written out here:
    the two-compartment spin echo (only blood is suppressed) and the Bloch-simulated steady-state IR of
    the mixed relaxation rate 1/T1 + r1 [Gd] with the voxel's mean concentration (``ir_mz``)."""
    lab = ring_labels()
    m0, t1, t2 = ring_maps(lab)
    yy, xx = np.mgrid[:SIZE, :SIZE]
    papillary = (lab[0] == 3) & (np.hypot(yy - CENTRE[0], xx - (CENTRE[1] + 5.0)) <= 2.5)
    mixed = (lab[0] == 3) & (np.hypot(yy - CENTRE[0], xx - (CENTRE[1] - 5.0)) <= 2.5)
    blood = (lab[0] == 3) & ~papillary & ~mixed & (np.hypot(yy - CENTRE[0], xx - CENTRE[1]) <= 2.5)
    mb, mt, f = 0.95, 0.8, 0.4
    m_mix = f * mb + (1 - f) * mt
    w = f * mb / m_mix  # blood share of the mixed pixels' M0
    m0[0][papillary], t1[0][papillary], t2[0][papillary] = mt, 1000.0, 50.0
    m0[0][mixed] = m_mix
    t1[0][mixed] = (f * mb * 1550.0 + (1 - f) * mt * 1000.0) / m_mix
    t2[0][mixed] = (f * mb * 270.0 + (1 - f) * mt * 50.0) / m_mix
    assert papillary.sum() >= 15 and mixed.sum() >= 15 and blood.sum() >= 15
    proto = load_protocol("wide").to_dict()
    proto["imperfections"] = {}
    renderer = ContrastRenderer(protocol_from_dict(proto))

    def se(t1_, t2_):
        return (1 - math.exp(-2000.0 / t1_)) * math.exp(-80.0 / t2_)
    for cavity, bf in ((1.0, 0.0), (1.0, 0.3), (0.0, 0.0)):
        p = {"family": "tse", "tr_ms": 2000.0, "te_ms": 80.0, "blood_factor": bf, "blood_partial_volume": 0.0,
             "cavity_tissue": cavity, "clip_level": 10.0}
        img = renderer.render(m0, t1, t2, np.random.default_rng(0), labels=lab, params=p)[0].numpy()[0]
        assert img[blood].mean() == pytest.approx(mb * bf * se(1550.0, 270.0), rel=1e-3, abs=1e-7)
        if cavity:
            assert img[papillary].mean() == pytest.approx(mt * se(1000.0, 50.0), rel=1e-3)  # not suppressed
            two = w * m_mix * bf * se(1550.0, 270.0) + (1 - w) * m_mix * se(1000.0, 50.0)
            assert img[mixed].mean() == pytest.approx(two, rel=1e-3)
        else:  # wide as before: the whole label suppressed
            assert img[papillary].max() == 0.0 and img[mixed].max() == 0.0

    r1, c_b, c_m, tr_inv = 4.5e-3, 0.7, 0.25, 2000.0  # r1 per mmol/L per ms
    t1_post_myo = 1.0 / (1.0 / 1000.0 + r1 * c_m)
    ti = t1_post_myo * math.log(2.0 / (1.0 + math.exp(-tr_inv / t1_post_myo)))  # myocardial null
    fixed = {"family": "lge", "flip_deg": 20.0, "te_ms": 2.0, "tr_inv_ms": tr_inv, "ti_null_factor": 1.0,
             "readout_tr_ms": 6.0, "readout_pulses": 0.0, "conc_blood_mmol": c_b, "conc_myocardium_mmol": c_m,
             "conc_other_mmol": 0.2, "ti_ms": ti, "clip_level": 10.0}

    def lge(m0_, t1_native, t2_, conc):
        t1_post = 1.0 / (1.0 / t1_native + r1 * conc)
        return abs(bloch.ir_mz(m0_, t1_post, ti, tr_inv, t2_)) * math.sin(math.radians(20.0)) * math.exp(-2.0 / t2_)
    bright = lge(mb, 1550.0, 270.0, c_b)
    for cavity in (1.0, 0.0):
        img = renderer.render(m0, t1, t2, np.random.default_rng(0), labels=lab,
                              params=dict(fixed, cavity_tissue=cavity))[0].numpy()[0]
        assert img[blood].mean() == pytest.approx(bright, rel=1e-3)
        if cavity:  # nulled like the myocardium; the mixture in between
            assert lge(mt, 1000.0, 50.0, c_m) == pytest.approx(0.0, abs=1e-9) and img[papillary].max() < 1e-4 * bright
            mix = lge(m_mix, float(t1[0][mixed][0]), float(t2[0][mixed][0]), w * c_b + (1 - w) * c_m)
            assert img[mixed].mean() == pytest.approx(mix, rel=1e-3) and 0.05 * bright < mix < 0.9 * bright
        else:  # wide: the papillary muscle enhances like blood
            assert img[papillary].mean() > 0.5 * bright


def test_border_gd_gives_blood_mixed_myocardium_its_blood_share_of_gd_in_lge():
    """Myocardium pixels at the endocardial border hold a volume fraction f of blood (M0-weighted T1/T2, as
    the estimator mixes). With ``blood_partial_volume`` their blood compartment carries blood's Gd: truth
    written out here, the Bloch-simulated steady-state IR (``ir_mz``) of the mixed relaxation rate
    1/T1 + r1 [Gd] at the voxel's mean concentration w c_blood + (1 - w) c_myo (w the blood share of M0).
    Without it (``wide``) the label decides: the whole pixel takes myocardium's Gd."""
    lab = ring_labels()
    m0, t1, t2 = ring_maps(lab)
    yy, xx = np.mgrid[:SIZE, :SIZE]
    r = np.hypot(yy - CENTRE[0], xx - CENTRE[1])
    rim = (lab[0] == 2) & (r <= R_LV + 1.0)
    interior = (lab[0] == 2) & (r > R_LV + 2.5) & (r < R_EPI - 1.5)
    mb, mt, f = 0.95, 0.8, 0.4
    m_mix = f * mb + (1 - f) * mt
    w = f * mb / m_mix
    m0[0][rim] = m_mix
    t1[0][rim] = (f * mb * 1550.0 + (1 - f) * mt * 1000.0) / m_mix
    t2[0][rim] = (f * mb * 270.0 + (1 - f) * mt * 50.0) / m_mix
    assert rim.sum() >= 30 and interior.sum() >= 30
    proto = load_protocol("wide").to_dict()
    proto["imperfections"] = {}
    renderer = ContrastRenderer(protocol_from_dict(proto))
    r1, c_b, c_m, tr_inv = 4.5e-3, 0.7, 0.25, 2000.0  # r1 per mmol/L per ms
    t1_post_myo = 1.0 / (1.0 / 1000.0 + r1 * c_m)
    ti = t1_post_myo * math.log(2.0 / (1.0 + math.exp(-tr_inv / t1_post_myo)))  # myocardial null
    fixed = {"family": "lge", "flip_deg": 20.0, "te_ms": 2.0, "tr_inv_ms": tr_inv, "ti_null_factor": 1.0,
             "readout_tr_ms": 6.0, "readout_pulses": 0.0, "conc_blood_mmol": c_b, "conc_myocardium_mmol": c_m,
             "conc_other_mmol": 0.2, "ti_ms": ti, "clip_level": 10.0, "cavity_tissue": 1.0}

    def lge(conc):
        t1_post = 1.0 / (1.0 / float(t1[0][rim][0]) + r1 * conc)
        t2_ = float(t2[0][rim][0])
        return abs(bloch.ir_mz(m_mix, t1_post, ti, tr_inv, t2_)) * math.sin(math.radians(20.0)) * math.exp(-2.0 / t2_)
    bright = abs(bloch.ir_mz(mb, 1.0 / (1.0 / 1550.0 + r1 * c_b), ti, tr_inv, 270.0)) * math.sin(math.radians(20.0)) \
        * math.exp(-2.0 / 270.0)
    images = {}
    for pv in (1.0, 0.0):
        img = renderer.render(m0, t1, t2, np.random.default_rng(0), labels=lab,
                              params=dict(fixed, blood_partial_volume=pv))[0].numpy()[0]
        images[pv] = img
        assert img[interior].max() < 1e-4 * bright  # normal myocardium nulled either way
        assert img[lab[0] == 3].mean() == pytest.approx(bright, rel=1e-3)
    assert images[1.0][rim].mean() == pytest.approx(lge(w * c_b + (1 - w) * c_m), rel=1e-3)
    assert images[0.0][rim].mean() == pytest.approx(lge(c_m), rel=1e-3)
    # the bright rim of partial volume that real LGE shows (rim / interior 1.23 on MyoPS), absent without it
    assert images[1.0][rim].mean() > 3 * images[0.0][rim].mean()
    # pixels away from blood are untouched: the option changes the border only
    away = ~rim & ~np.isin(lab[0], (1, 3))
    near_rv = binary_dilation(lab[0] == 1) & (lab[0] != 1)
    assert np.array_equal(images[1.0][away & ~near_rv], images[0.0][away & ~near_rv])


def test_crop_renders_take_the_compartment_medians_of_the_case_draw():
    """A loader renders a crop with the parameters drawn on the case's reference voxels; the blood share of
    ``cavity_tissue`` then uses the case's blood / myocardium medians (T2 270 / 50 ms), not the crop's. The
    crop's blood pixels all hold T2 160 ms (T1 1275 ms), an equal M0 mixture by the case's compartments
    (w = (160 - 50) / (270 - 50) = 1/2), which the crop's own median (160 ms) would call pure blood (w = 1,
    fully suppressed). Truth written out: M0 (1 - w) SE(T1 1000, T2 50) with blood_factor 0."""
    lab = ring_labels()
    m0, t1, t2 = ring_maps(lab)
    proto = load_protocol("wide").to_dict()
    proto["imperfections"] = {}
    renderer = ContrastRenderer(protocol_from_dict(proto))
    draw = renderer.draw(m0.reshape(1, -1), t1.reshape(1, -1), t2.reshape(1, -1), np.random.default_rng(0),
                         labels=lab.reshape(1, -1), family="tse")
    assert draw["cavity_tissue"] == 1.0  # wide's TSE renders cavity tissue
    assert (draw["t2_blood_median_ms"], draw["t2_myocardium_median_ms"]) == (270.0, 50.0)
    assert (draw["t1_blood_median_ms"], draw["t1_myocardium_median_ms"]) == (1550.0, 1000.0)
    blood = np.isin(lab, (1, 3))
    t1c, t2c = t1.copy(), t2.copy()
    t1c[blood], t2c[blood] = 1275.0, 160.0
    params = dict(draw, tr_ms=2000.0, te_ms=80.0, blood_factor=0.0, blood_partial_volume=0.0, clip_level=10.0)
    img, out = renderer.render(m0, t1c, t2c, np.random.default_rng(1), labels=lab, params=params)
    se_t = (1 - math.exp(-2000.0 / 1000.0)) * math.exp(-80.0 / 50.0)
    assert img.numpy()[blood].mean() == pytest.approx(0.95 * 0.5 * se_t, rel=1e-3)
    assert out["t2_blood_median_ms"] == 270.0
    # a render drawn on the crop itself records the crop's medians, and its parameters render it again
    img1, own = renderer.render(m0, t1c, t2c, np.random.default_rng(2), labels=lab, family="tse")
    assert own["t2_blood_median_ms"] == 160.0 and own["t2_myocardium_median_ms"] == 50.0
    img2, _ = renderer.render(m0, t1c, t2c, np.random.default_rng(2), labels=lab, params=own)
    assert torch.equal(img1, img2)


def test_cavity_tissue_defaults_to_off_and_protocols_without_it_load():
    from nnunetv2_physaug.contrast import protocol_with_settings
    from nnunetv2_physaug.nnunet.run_identity import protocol_sha256
    from nnunetv2_physaug.nnunet.experiments import CAVITY_TISSUE_FAMILIES, GD_FAMILIES
    old = load_protocol("wide_pathology")  # a preset written before the parameter existed
    proto = old.to_dict()
    # left out of the dict at its default, filled in on loading: files written before the parameter
    # load, render as before, and keep their hash (continued runs recorded then are not refused)
    assert not any("cavity_tissue" in fam["params"] for fam in proto["families"])
    assert [f.params["cavity_tissue"] for f in old.families if f.family == "tse"] == [(0.0, 0.0)]
    assert [f.params["blood_partial_volume"] for f in old.families if f.family in ("lge", "psir")] == [(0.0, 0.0)] * 2
    assert not any("blood_partial_volume" in fam["params"] for fam in proto["families"] if fam["family"] != "tse")
    assert protocol_from_dict(proto) == old
    # wide has it on since 2026-12; switched off again it is the wide every earlier run recorded: same
    # content, so the hash those runs wrote (physaug_run.json) under the old name and description
    wide = load_protocol("wide")
    assert {f.family for f in wide.families if f.params.get("cavity_tissue") == (1.0, 1.0)} == set(CAVITY_TISSUE_FAMILIES)
    # border Gd joined wide on 2026-12-02 (LGE, PSIR, perfusion); the wide of before renders without it
    assert {f.family for f in wide.families if f.params.get("blood_partial_volume") == (1.0, 1.0)} == set(GD_FAMILIES)
    off = load_protocol("wide_v1")  # the preset version of that wide
    d = off.to_dict()
    assert not any("cavity_tissue" in fam["params"] for fam in d["families"])
    assert not any("blood_partial_volume" in fam["params"] for fam in d["families"] if fam["family"] != "tse")
    assert protocol_with_settings("wide_v1") == off
    d.update(name="wide", description="All sequence families with label-aware Gd uptake, B1 / receive-bias fields "
                                      "and Rician noise")
    assert protocol_sha256(protocol_from_dict(d)) == "1b4c0eb0d0a67261"
    assert protocol_from_dict(wide.to_dict()) == wide and protocol_sha256(off) != protocol_sha256(wide)
    bad = load_protocol("wide").to_dict()
    del bad["families"][0]["params"]["flip_deg"]  # parameters without a default stay required
    with pytest.raises(ProtocolError, match="missing key"):
        protocol_from_dict(bad)


def test_wall_layer_renders_the_blood_next_to_the_wall_as_part_tissue():
    """``wall_layer_share`` s, ``wall_layer_px`` L: a blood pixel at chessboard distance r from the nearest
    non-blood pixel (truth: scipy's distance transform) holds tissue share f = s max(0, 1 - (r - 1) / L) of its
    volume (T1/T2 moved towards the myocardium's, M0 kept). Truth written out: the two-compartment spin echo
    of black-blood TSE (only the blood share is suppressed) and the Bloch-simulated steady-state IR of LGE at
    the voxel's mean Gd concentration (1 - f) c_blood + f c_myo."""
    from scipy.ndimage import distance_transform_cdt

    lab = ring_labels()
    m0, t1, t2 = ring_maps(lab)
    before = [a.copy() for a in (m0, t1, t2)]
    blood = np.isin(lab[0], (1, 3))
    r = distance_transform_cdt(blood, metric="chessboard")
    proto = load_protocol("wide").to_dict()
    proto["imperfections"] = {}
    renderer = ContrastRenderer(protocol_from_dict(proto))

    def share(s, depth):
        return np.where(blood, s * np.clip(1.0 - (r - 1.0) / depth, 0.0, None), 0.0)

    def se(t1_, t2_):
        return (1 - math.exp(-2000.0 / t1_)) * math.exp(-80.0 / t2_)
    tse = {"family": "tse", "tr_ms": 2000.0, "te_ms": 80.0, "blood_factor": 0.2, "blood_partial_volume": 0.0,
           "cavity_tissue": 1.0, "clip_level": 10.0}
    for s, depth in ((0.0, 1.0), (0.8, 2.5), (1.0, 1.0), (0.5, 4.0)):
        img = renderer.render(m0, t1, t2, np.random.default_rng(0), labels=lab,
                              params=dict(tse, wall_layer_share=s, wall_layer_px=depth))[0].numpy()[0]
        f = share(s, depth)
        want = 0.95 * ((1 - f) * 0.2 * se(1550.0, 270.0) + f * se(1000.0, 50.0))
        np.testing.assert_allclose(img[blood], want[blood], rtol=1e-3, atol=1e-7)
        np.testing.assert_allclose(img[lab[0] == 2], 0.8 * se(1000.0, 50.0), rtol=1e-3)  # the wall itself untouched
        if s:
            assert (f[blood] > 0).sum() > 30 and (f[blood] == 0).sum() > 30  # a layer, not the whole cavity
    for a, b in zip((m0, t1, t2), before):
        np.testing.assert_array_equal(a, b)  # the caller's maps stay as they were

    r1, c_b, c_m, tr_inv = 4.5e-3, 0.7, 0.25, 2000.0  # r1 per mmol/L per ms
    t1_post_myo = 1.0 / (1.0 / 1000.0 + r1 * c_m)
    ti = t1_post_myo * math.log(2.0 / (1.0 + math.exp(-tr_inv / t1_post_myo)))  # myocardial null
    lge = {"family": "lge", "flip_deg": 20.0, "te_ms": 2.0, "tr_inv_ms": tr_inv, "ti_null_factor": 1.0,
           "readout_tr_ms": 6.0, "readout_pulses": 0.0, "conc_blood_mmol": c_b, "conc_myocardium_mmol": c_m,
           "conc_other_mmol": 0.2, "ti_ms": ti, "clip_level": 10.0, "cavity_tissue": 1.0,
           "blood_partial_volume": 0.0, "wall_layer_share": 0.6, "wall_layer_px": 2.0}
    img = renderer.render(m0, t1, t2, np.random.default_rng(0), labels=lab, params=lge)[0].numpy()[0]
    f = share(0.6, 2.0)
    for value in (0.6, 0.3, 0.0):  # r = 1, 2, >= 3
        sel = blood & np.isclose(f, value)
        t1_mix, t2_mix = 1550.0 + value * (1000.0 - 1550.0), 270.0 + value * (50.0 - 270.0)
        t1_post = 1.0 / (1.0 / t1_mix + r1 * ((1 - value) * c_b + value * c_m))
        want = abs(bloch.ir_mz(0.95, t1_post, ti, tr_inv, t2_mix)) * math.sin(math.radians(20.0)) * math.exp(-2.0 / t2_mix)
        assert sel.sum() > 10 and img[sel].mean() == pytest.approx(want, rel=1e-3)
    assert img[blood & (f == 0.6)].mean() < 0.6 * img[blood & (f == 0)].mean()  # the layer is darker than the cavity


def test_wall_layer_is_off_in_wide_and_left_out_of_the_case_draw():
    """Protocols that do not list it render without it (share 0 draws nothing); the case-level draw on
    reference voxels (a voxel list without neighbours) has no layer, so its clip level and statistics are
    those of the same draw without it."""
    from nnunetv2_physaug.contrast import protocol_with_settings
    wide = load_protocol("wide")
    for fam in wide.families:
        if "wall_layer_share" in fam.params:
            assert fam.params["wall_layer_share"] == (0.0, 0.0)
    assert {f.family for f in wide.families if "wall_layer_share" in f.params} == {"lge", "psir", "saturation_recovery", "tse"}
    lab = ring_labels()
    m0, t1, t2 = ring_maps(lab)
    draws = []
    for s in (0.0, 1.0):
        proto = protocol_with_settings("wide", [f"tse.wall_layer_share={s}", "tse.wall_layer_px=3"])
        renderer = ContrastRenderer(proto)
        draws.append(renderer.draw(m0.reshape(1, -1), t1.reshape(1, -1), t2.reshape(1, -1), np.random.default_rng(3),
                                   labels=lab.reshape(1, -1), family="tse"))
    assert draws[1]["wall_layer_share"] == 1.0
    for key in ("clip_level", "reference_mean_signal", "reference_mean", "reference_std", "tr_ms", "te_ms"):
        assert draws[0][key] == draws[1][key]
