"""Appearance knobs of the echo phantom (calib.appearance): neutral by default, bit for bit;
each knob changes the frames where it should and never the truth."""

import dataclasses

import cv2
import numpy as np
import pytest
from scipy import ndimage

from calib.appearance import EchoAppearance, displayed_motion
from calib.datasets import random_anatomy, random_appearance, random_echo_config
from calib.echo import EchoPhantomConfig, make_echo_clip
from calib.errors import PhantomParameterError

BASE = dict(view="a4c", rows=128, cols=128, frames=2, seed=5)


@pytest.fixture(scope="module")
def neutral():
    return make_echo_clip(EchoPhantomConfig(**BASE))


def _with(**knobs):
    return make_echo_clip(EchoPhantomConfig(**BASE, appearance=EchoAppearance(**knobs)))


def _same_truth(a, b) -> bool:
    ta, tb = a.truth.arrays(), b.truth.arrays()
    assert sorted(ta) == sorted(tb)
    return all(np.array_equal(ta[k], tb[k], equal_nan=ta[k].dtype.kind == "f") for k in ta)


def _sides(clip, t=0):
    """(septal, lateral) boolean pixel masks of the LV myocardium, split by the long axis."""
    cl = clip.truth.centreline_mm[t]
    apex, base = cl[len(cl) // 2], 0.5 * (cl[0] + cl[-1])
    rows, cols = clip.frames.shape[1:]
    rr, cc = np.mgrid[0:rows, 0:cols] * clip.spacing_mm[0]

    def side(r, c):
        ax = base - apex
        return np.sign(ax[0] * (c - apex[1]) - ax[1] * (r - apex[0]))
    lat_sign = side(*cl[-1])
    s = side(rr, cc)
    myo = clip.truth.myocardium[t].astype(bool)
    return myo & (s != lat_sign), myo & (s == lat_sign)


def _mean(clip, mask):
    return float(clip.frames[:, mask].astype(np.float64).mean())


def test_neutral_appearance_is_todays_phantom(neutral):
    explicit = make_echo_clip(EchoPhantomConfig(**BASE, appearance=EchoAppearance()))
    assert np.array_equal(explicit.frames, neutral.frames)
    assert _same_truth(explicit, neutral)
    # metadata written before the knobs existed (no "appearance") remakes the same clip
    d = neutral.config.to_dict()
    assert d["appearance"] == EchoAppearance().to_dict()
    d.pop("appearance")
    old = make_echo_clip(EchoPhantomConfig.from_dict(d))
    assert np.array_equal(old.frames, neutral.frames)
    assert EchoAppearance().is_neutral


def test_lateral_wall_gain_dims_the_lateral_wall_only(neutral):
    clip = _with(lateral_wall_gain=0.3)
    sept, lat = _sides(neutral)
    assert _mean(clip, lat) < _mean(clip, sept)
    assert _mean(clip, lat) < _mean(neutral, lat) - 15.0
    assert abs(_mean(clip, sept) - _mean(neutral, sept)) < 3.0
    assert _same_truth(clip, neutral)


def test_wall_echo_variation_changes_the_wall_and_is_reproducible(neutral):
    a, b = _with(wall_echo_variation=0.8), _with(wall_echo_variation=0.8)
    assert np.array_equal(a.frames, b.frames)
    myo = neutral.truth.myocardium[0].astype(bool)
    diff = np.abs(a.frames[0].astype(float) - neutral.frames[0])
    assert diff[myo].mean() > 5.0 * max(diff[~ndimage.binary_dilation(myo, iterations=6)].mean(), 0.1)
    assert _same_truth(a, neutral)


def test_dropout_darkens_its_sector(neutral):
    sept, lat = _sides(neutral)
    clip = _with(dropout_gain=0.1, dropout_region="lateral", dropout_width_deg=25.0)
    assert _mean(clip, lat) < _mean(neutral, lat) - 20.0
    assert abs(_mean(clip, sept) - _mean(neutral, sept)) < 3.0
    assert _same_truth(clip, neutral)
    apical = _with(dropout_gain=0.1, dropout_region="apical")
    cl = neutral.truth.centreline_mm[0]
    rr, cc = np.mgrid[0:128, 0:128] * neutral.spacing_mm[0]
    near_apex = np.hypot(rr - cl[60, 0], cc - cl[60, 1]) < 6.0
    assert _mean(apical, near_apex) < _mean(neutral, near_apex) - 15.0
    assert _same_truth(apical, neutral)


def test_pericardium_gain_brightens_just_outside_the_epicardium(neutral):
    clip = _with(pericardium_gain=3.0)
    myo = neutral.truth.myocardium[0].astype(bool)
    cav = neutral.truth.cavity[0].astype(bool)
    _, lat = _sides(neutral)
    lat_side = ndimage.binary_dilation(lat, iterations=5)
    ring = ndimage.binary_dilation(myo, iterations=5) & ~ndimage.binary_dilation(myo | cav, iterations=1)
    band = ring & lat_side
    assert band.sum() > 20
    assert _mean(clip, band) > _mean(neutral, band) + 10.0
    assert _same_truth(clip, neutral)


def test_bright_annulus_gain_brightens_the_annuli(neutral):
    clip = _with(bright_annulus_gain=3.0)
    cl = neutral.truth.centreline_mm[0]
    rr, cc = np.mgrid[0:128, 0:128] * neutral.spacing_mm[0]
    near = np.zeros((128, 128), bool)
    for p in (cl[0], cl[-1]):
        near |= np.hypot(rr - p[0], cc - p[1]) < 5.0
    far = ~ndimage.binary_dilation(near, iterations=12)
    assert _mean(clip, near) > _mean(neutral, near) + 10.0
    assert abs(_mean(clip, far) - _mean(neutral, far)) < 2.0
    assert _same_truth(clip, neutral)


def test_axial_resolution_makes_speckle_finer(neutral):
    fine = _with(axial_resolution_mm=0.5)
    sector = neutral.truth.sector_mask.astype(bool)
    inner = ndimage.binary_erosion(sector, iterations=3)[1:]

    def axial_roughness(clip):
        return float(np.abs(np.diff(clip.frames.astype(np.float64), axis=1))[:, inner].mean())
    assert axial_roughness(fine) > 1.15 * axial_roughness(neutral)
    assert _same_truth(fine, neutral)


def test_random_appearance_configs():
    a = random_echo_config(2_000_001, appearance="random")
    b = random_echo_config(2_000_001, appearance="random")
    n = random_echo_config(2_000_001)
    assert a.to_dict() == b.to_dict()
    assert n.to_dict() == random_echo_config(2_000_001, appearance="neutral").to_dict()
    assert n.appearance.is_neutral and not a.appearance.is_neutral
    # the random config differs from the neutral one in its appearance and the wider anatomy
    anatomy = random_anatomy(np.random.default_rng(0), "a4c")
    differ = {k for k in n.to_dict() if a.to_dict()[k] != n.to_dict()[k]}
    assert differ <= {"appearance", "display", *anatomy}
    assert 70.0 <= a.lv_length_mm <= 110.0 and 25.0 <= a.fps <= 80.0
    assert random_echo_config(2_000_002, appearance="random").appearance != a.appearance
    with pytest.raises(PhantomParameterError):
        random_echo_config(1, appearance="shiny")
    # every knob is drawn (none stays neutral over a few draws)
    draws = [random_appearance(np.random.default_rng(i)) for i in range(8)]
    for f in dataclasses.fields(EchoAppearance):
        if f.name != "surround_echo_db":   # kept neutral by the draw (its docstring says why)
            assert len({getattr(d, f.name) for d in draws}) > 1, f.name


def test_random_appearance_clip_is_recorded_and_remade():
    cfg = random_echo_config(2_000_003, view="a4c", rows=96, cols=96, frames=2, appearance="random")
    clip = make_echo_clip(cfg)
    md = clip.metadata
    assert md["params"]["appearance"] == cfg.appearance.to_dict()
    again = make_echo_clip(EchoPhantomConfig.from_dict(md["params"]))
    assert np.array_equal(again.frames, clip.frames)
    plain = make_echo_clip(dataclasses.replace(cfg, appearance=EchoAppearance()))
    assert not np.array_equal(plain.frames, clip.frames)
    assert _same_truth(plain, clip)


@pytest.mark.parametrize("view", ["psax", "plax", "a2c"])
def test_knobs_in_other_views_change_frames_not_truth(view):
    cfg = EchoPhantomConfig(view=view, rows=96, cols=96, frames=2, seed=2)
    knobs = EchoAppearance(wall_echo_variation=0.6, lateral_wall_gain=0.4, dropout_gain=0.3,
                           bright_annulus_gain=2.0, pericardium_gain=2.0, axial_resolution_mm=0.7)
    a, b = make_echo_clip(cfg), make_echo_clip(dataclasses.replace(cfg, appearance=knobs))
    assert not np.array_equal(a.frames, b.frames)
    assert _same_truth(a, b)


def test_blood_echo_darkens_the_cavity_only(neutral):
    clip = _with(blood_echo_db=-20.0)
    cav = neutral.truth.cavity[0].astype(bool)
    cav = cav & ~cv2.dilate(neutral.truth.myocardium[0], np.ones((5, 5), np.uint8)).astype(bool)
    myo = neutral.truth.myocardium[0].astype(bool)
    assert _mean(clip, cav) < 0.6 * _mean(neutral, cav)
    assert abs(_mean(clip, myo) - _mean(neutral, myo)) < 0.15 * _mean(neutral, myo)
    assert EchoAppearance(blood_echo_db=0.0).blood_gain == 1.0
    assert _same_truth(clip, neutral)


def test_leaflet_gain_changes_the_leaflets_only(neutral):
    clip = _with(leaflet_gain=4.0)
    diff = np.abs(clip.frames.astype(np.int16) - neutral.frames.astype(np.int16)) > 0
    assert diff.any()
    # the leaflets hang in the cavity near the base; the LV wall elsewhere is untouched
    far = neutral.truth.myocardium[0].astype(bool)
    far[int(0.55 * far.shape[0]):] = False
    assert diff[0][far].mean() < 0.02
    assert _same_truth(clip, neutral)


def test_persistence_averages_frames(neutral):
    base = dict(BASE, frames=4)
    plain = make_echo_clip(EchoPhantomConfig(**base))
    kept = make_echo_clip(EchoPhantomConfig(**base, appearance=EchoAppearance(persistence=0.6)))
    sector = plain.truth.sector_mask.astype(bool)

    def change(c):
        return float(np.abs(np.diff(c.frames.astype(np.float64), axis=0))[:, sector].mean())
    assert np.array_equal(kept.frames[0], plain.frames[0])   # nothing to average yet
    assert change(kept) < 0.7 * change(plain)
    assert _same_truth(plain, kept)


def test_septum_gain_brightens_the_septum_only(neutral):
    clip = _with(septum_gain=2.5)
    sept, lat = _sides(neutral)
    assert _mean(clip, sept) > 1.3 * _mean(neutral, sept)
    assert abs(_mean(clip, lat) - _mean(neutral, lat)) < 0.1 * _mean(neutral, lat)
    assert _same_truth(clip, neutral)


def test_right_heart_knobs_change_the_right_heart_not_the_lv_truth(neutral):
    """rv_wall_gain dims and rv_scale moves tissue beside the septum (image left in A4C);
    the LV wall and every truth array stay as they were."""
    sept, _ = _sides(neutral)
    lv = ndimage.binary_dilation(neutral.truth.myocardium[0] | neutral.truth.cavity[0], iterations=2)
    cols = np.nonzero(sept.any(0))[0]
    rv_side = np.zeros_like(lv)
    rv_side[:, :max(int(cols.min()) - 2, 1)] = True
    rv_side &= neutral.truth.sector_mask.astype(bool) & ~lv
    for knobs in (dict(rv_wall_gain=0.15), dict(rv_scale=1.4)):
        clip = _with(**knobs)
        diff = clip.frames[0].astype(np.int16) != neutral.frames[0].astype(np.int16)
        assert diff[rv_side].mean() > 0.05, knobs
        assert _same_truth(clip, neutral), knobs
    assert _mean(_with(rv_wall_gain=0.15), rv_side) < _mean(neutral, rv_side)


def test_clutter_gain_brightens_the_near_field(neutral):
    clip = _with(clutter_gain_db=12.0)
    sector = neutral.truth.sector_mask.astype(bool)
    rows = np.arange(sector.shape[0])[:, None] * neutral.spacing_mm[0]
    near = sector & (rows < 25.0) & ~neutral.truth.myocardium[0].astype(bool)
    far = sector & (rows > 0.8 * rows[sector[:, sector.shape[1] // 2]].max())
    assert _mean(clip, near) > 1.2 * _mean(neutral, near)
    assert abs(_mean(clip, far) - _mean(neutral, far)) < 0.15 * _mean(neutral, far) + 2.0
    assert _same_truth(clip, neutral)


def test_surround_echo_brightens_around_the_heart_not_the_heart(neutral):
    """The tissue around the heart (lung-dark by default) comes up towards the wall's level;
    the LV wall and cavity stay as they were, and so does every truth array."""
    clip = _with(surround_echo_db=24.0)
    sector = neutral.truth.sector_mask.astype(bool)
    heart = ndimage.binary_dilation(neutral.truth.myocardium[0] | neutral.truth.cavity[0], iterations=3)
    lateral = sector & ~heart
    lateral[:, :int(np.nonzero(heart.any(0))[0].max()) + 4] = False   # beyond the lateral wall
    rows = np.arange(sector.shape[0])[:, None] * neutral.spacing_mm[0]
    lateral &= rows > 20.0                                           # below the chest wall
    assert lateral.sum() > 50
    assert _mean(clip, lateral) > 2.0 * _mean(neutral, lateral) + 5.0
    myo = neutral.truth.myocardium[0].astype(bool)
    assert abs(_mean(clip, myo) - _mean(neutral, myo)) < 0.15 * _mean(neutral, myo)
    assert EchoAppearance(surround_echo_db=0.0).surround_gain == 1.0
    assert _same_truth(clip, neutral)


def test_displayed_motion_is_the_frame_averaged_tissue_motion():
    """Under persistence the frames show the tissue's steps through the display's recursive
    filter: an optical flow of the frames agrees with displayed_motion better than with
    the tissue's own steps (which it underestimates)."""
    v = np.ones((3, 2, 2, 2), np.float32)
    assert displayed_motion(v, 0.0) is v
    np.testing.assert_allclose(displayed_motion(v, 0.5)[:, 0, 0, 0], [0.5, 0.75, 0.875])
    cfg = EchoPhantomConfig(**dict(BASE, rows=192, cols=192, frames=8, fps=30.0, start_phase=0.0),
                            appearance=EchoAppearance(persistence=0.6))
    clip = make_echo_clip(cfg)
    shown = displayed_motion(clip.truth.displacement, 0.6)
    dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
    err_tissue, err_shown = [], []
    for t in range(len(clip.frames) - 1):
        f = dis.calc(clip.frames[t], clip.frames[t + 1], None)
        m = clip.truth.myocardium[t].astype(bool)
        err_tissue.append(np.linalg.norm(f[m] - clip.truth.displacement[t][m], axis=1).mean())
        err_shown.append(np.linalg.norm(f[m] - shown[t][m], axis=1).mean())
    assert np.mean(err_shown) < 0.9 * np.mean(err_tissue)


def test_invalid_knobs_are_refused():
    with pytest.raises(PhantomParameterError):
        EchoAppearance(dropout_region="septal")
    with pytest.raises(PhantomParameterError):
        EchoAppearance(dropout_gain=1.5)
    with pytest.raises(PhantomParameterError, match="persistence"):
        EchoAppearance(persistence=0.95)
    assert EchoPhantomConfig(appearance={"lateral_wall_gain": 0.5}).appearance.lateral_wall_gain == 0.5
