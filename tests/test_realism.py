"""The realism measures of one slice (nnunetv2_physaug/harness/realism.py) on drawn images whose truth is known:
an intensity edge placed a known distance inside or outside the LV label, and a rim of scar."""
import numpy as np
import pytest

from nnunetv2_physaug.harness import realism

SIZE, CENTRE, R_LV, R_EPI = 64, (31.5, 32.5), 12.0, 19.0


def _labels() -> np.ndarray:
    yy, xx = np.mgrid[:SIZE, :SIZE]
    r = np.hypot(yy - CENTRE[0], xx - CENTRE[1])
    lab = np.zeros((SIZE, SIZE), np.int16)
    lab[(r > R_LV) & (r <= R_EPI)] = realism.MYO
    lab[r <= R_LV] = realism.LV
    return lab


def _edge_image(radius: float, blood: float = 3.0, myo: float = 1.0) -> np.ndarray:
    """Blood intensity inside a disc of ``radius`` pixels about the LV centre, myocardium outside, with a
    linear partial-volume ramp one pixel wide (the intensity crosses half-way exactly at ``radius``)."""
    yy, xx = np.mgrid[:SIZE, :SIZE]
    r = np.hypot(yy - CENTRE[0], xx - CENTRE[1])
    frac = np.clip(radius - r + 0.5, 0.0, 1.0)
    return (myo + (blood - myo) * frac).astype(np.float32)


@pytest.mark.parametrize("shift", [-2.5, -1.0, 0.0, 1.0])
def test_edge_position_finds_an_edge_moved_inside_or_outside_the_label(shift):
    """The label's LV disc has radius 12; the image's bright disc 12 + shift. The measure counts distance
    from the label border in rounded pixels (the last LV pixel at -1, the first myocardium pixel at +1,
    nothing at 0), so the truth it should find is the shift mapped onto that scale: edges inside the label
    at shift - 0.5, outside at shift + 0.5 (a ramp centred on the border crosses between -1 and +1: 0)."""
    lab = _labels()
    normal = lab == realism.MYO
    prof = realism.edge_profile(_edge_image(R_LV + shift), lab, normal)
    got = realism.edge_position(prof)
    want = 0.0 if shift == 0 else shift + (0.5 if shift > 0 else -0.5)
    assert got == pytest.approx(want, abs=0.35)
    # bright or dark blood alike: the profile is scaled between the two levels
    assert realism.edge_position(realism.edge_profile(_edge_image(R_LV + shift, 0.3, 1.0), lab, normal)) == \
        pytest.approx(got, abs=1e-6)
    deep = prof[list(realism.EDGE_DISTANCES).index(-4)]
    assert deep == pytest.approx(1.0, abs=0.05) and np.isnan(prof[list(realism.EDGE_DISTANCES).index(0)])


def test_edge_and_rim_of_a_uniform_or_unlabelled_slice_are_none():
    lab = _labels()
    flat = np.ones((SIZE, SIZE), np.float32)
    assert realism.edge_profile(flat, lab, lab == realism.MYO) is None  # blood and myocardium do not differ
    assert realism.edge_profile(flat, np.zeros_like(lab), np.zeros((SIZE, SIZE), bool)) is None


def test_rim_ratio_of_normal_myocardium_leaves_out_sub_endocardial_scar():
    """A rim of scar (twice as bright as normal myocardium) along the endocardium: over the whole label the
    rim looks bright; over normal myocardium (scar left out) rim and interior are equal."""
    lab = _labels()
    yy, xx = np.mgrid[:SIZE, :SIZE]
    r = np.hypot(yy - CENTRE[0], xx - CENTRE[1])
    img = np.where(lab == realism.LV, 3.0, 1.0).astype(np.float32)
    scar = (lab == realism.MYO) & (r <= R_LV + 1.5) & (xx > CENTRE[1])  # half the circumference
    img[scar] = 2.0
    assert realism.rim_ratio(img, lab) > 1.2
    assert realism.rim_ratio(img, lab, (lab == realism.MYO) & ~scar) == pytest.approx(1.0)
    out = realism.slice_ratios(img[..., None], lab[..., None], np.where(scar, 2, 0)[..., None])
    assert out["rim"] == [pytest.approx(1.0)] and len(out["edge"]) == 1
