"""streamer.measure.velocity: channel names, the velocity curves' conventions (radial
inwards, circumferential counter-clockwise from the apex, translation removed), background
offset, phase unwrapping, the mask's post-processing, peaks, and the AHA segments from the
anterior direction, against the velocity-mapping phantom's truth."""

from __future__ import annotations

import numpy as np
import pytest

from streamer.measure import velocity as vm


def _ring(shape=(64, 64), centre=(32.0, 30.0), r_in=10.0, r_out=16.0) -> np.ndarray:
    rr, cc = np.mgrid[0:shape[0], 0:shape[1]].astype(float)
    d = np.hypot(rr - centre[0], cc - centre[1])
    return (d >= r_in) & (d <= r_out)


def _field(kind: str, shape=(64, 64), centre=(32.0, 30.0), speed=2.0) -> np.ndarray:
    """(rows, cols, 3) velocity of a pure motion about ``centre``: v_x along columns, v_y
    along rows."""
    rr, cc = np.mgrid[0:shape[0], 0:shape[1]].astype(float)
    dr, dc = rr - centre[0], cc - centre[1]
    n = np.maximum(np.hypot(dr, dc), 1e-9)
    v = np.zeros((*shape, 3))
    if kind == "inward":
        v[..., 0], v[..., 1] = -speed * dc / n, -speed * dr / n
    elif kind == "ccw":  # counter-clockwise on screen (rows down): e_phi = (-e_col, e_row)
        v[..., 0], v[..., 1] = speed * dr / n, -speed * dc / n
    elif kind == "shift":
        v[..., 0] = speed
    elif kind == "through":
        v[..., 2] = speed
    return v


def test_channel_names_units_and_errors():
    m = vm.velocity_channels(["magnitude", "v_x", "v_y", "v_z"])
    assert (m.magnitude, m.velocity, m.to_cm_s) == (0, (1, 2, 3), (1.0, 1.0, 1.0))
    m = vm.velocity_channels(("magnitude", "v_col_mm_s", "v_row_mm_s", "v_through_mm_s"))
    assert m.to_cm_s == (0.1, 0.1, 0.1)
    frame = np.stack([np.full((2, 2), 7.0), np.full((2, 2), 10.0), np.full((2, 2), -20.0),
                      np.full((2, 2), 5.0)], -1)
    magnitude, v = m.split(frame)
    assert magnitude[0, 0] == 7.0 and np.allclose(v[0, 0], [1.0, -2.0, 0.5])
    m = vm.velocity_channels(["VZ_m_s", "Magnitude", "vx", "vy"])
    assert m.magnitude == 1 and m.velocity == (2, 3, 0) and m.to_cm_s[2] == 100.0
    with pytest.raises(vm.VelocityChannelError, match="v_z"):
        vm.velocity_channels(["magnitude", "v_x", "v_y"])
    with pytest.raises(vm.VelocityChannelError, match="magnitude"):
        vm.velocity_channels(["v_x", "v_y", "v_z", "phase"])
    with pytest.raises(vm.VelocityChannelError, match="two"):
        vm.velocity_channels(["magnitude", "v_x", "v_x_mm_s", "v_y", "v_z"])
    with pytest.raises(vm.VelocityChannelError):
        vm.velocity_channels(None)


def test_the_velocity_encoding_from_metadata():
    assert vm.velocity_encoding_cm_s({"venc_cm_s": 20}) == 20.0
    assert vm.velocity_encoding_cm_s({"venc_mm_s": 150.0}) == 15.0
    assert vm.velocity_encoding_cm_s({"venc_mm_s": -1.0}) is None
    assert vm.velocity_encoding_cm_s({"venc_cm_s": True}) is None
    assert vm.velocity_encoding_cm_s({}) is None


@pytest.mark.parametrize("kind, expect", [("inward", (2.0, 0.0, 0.0)), ("ccw", (0.0, 2.0, 0.0)),
                                          ("shift", (0.0, 0.0, 0.0)),
                                          ("through", (0.0, 0.0, 2.0))])
def test_curve_conventions(kind, expect):
    myo = np.stack([_ring()] * 3)
    v = np.stack([_field(kind)] * 3)
    c = vm.velocity_curves(v, myo)
    got = (c.radial[0], c.circumferential[0], c.longitudinal[0])
    assert np.allclose(got, expect, atol=0.05), (kind, got)


def test_translation_is_removed_and_frames_without_myocardium_are_nan():
    myo = np.stack([_ring(), np.zeros((64, 64), bool)])
    v = np.stack([_field("inward") + _field("shift", speed=5.0)] * 2)
    c = vm.velocity_curves(v, myo)
    assert abs(c.radial[0] - 2.0) < 0.05 and abs(c.circumferential[0]) < 0.05
    assert np.isnan(c.radial[1]) and c.pixels[1] == 0


def test_background_offset_is_fitted_on_static_tissue():
    rng = np.random.default_rng(0)
    T, shape = 12, (80, 80)
    magnitude = np.full((T, *shape), 100.0)
    rr, cc = np.mgrid[0:shape[0], 0:shape[1]] / 79.0 * 2 - 1
    offset = np.stack([0.8 * rr + 0.3 * cc * cc, -0.5 * cc, 0.2 + 0.4 * rr * cc], -1)
    heart = _ring(shape, (40.0, 40.0), 8.0, 14.0)
    motion = np.sin(np.linspace(0, 2 * np.pi, T))[:, None, None, None] * _field(
        "inward", shape, (40.0, 40.0), 3.0) * heart[None, ..., None]
    v = motion + offset + rng.normal(0, 0.05, (T, *shape, 3))
    corrected, fitted = vm.correct_background_offset(magnitude, v, exclude=heart)
    assert np.abs(fitted - offset).max() < 0.05
    assert np.abs(corrected - motion).mean() < 0.06


def test_unwrap_restores_a_wrapped_cycle_and_reports_pure_noise():
    T, venc = 40, 3.0
    true = 5.0 * np.sin(np.linspace(0, 2 * np.pi, T, endpoint=False))[:, None, None, None] \
        * np.ones((T, 4, 4, 3))
    wrapped = (true + venc) % (2 * venc) - venc
    assert np.abs(wrapped - true).max() > 5
    where = np.ones((T, 4, 4), bool)
    out, share, roughness = vm.unwrap_in_time(wrapped, venc, where)
    assert np.allclose(out, true, atol=1e-4)
    assert share == pytest.approx((np.abs(wrapped - true) > 1).any(-1).mean())
    assert roughness < 0.3
    noise = np.random.default_rng(1).uniform(-venc, venc, (T, 4, 4, 3))
    assert vm.unwrap_in_time(noise, venc, where)[2] > 0.4
    with pytest.raises(ValueError):
        vm.unwrap_in_time(wrapped, 0.0, where)


def test_postprocessing_keeps_the_ring_and_fills_small_holes():
    ring = _ring()
    m = ring.copy()
    m[32, 17] = False            # a one-pixel hole in the wall
    m[2:5, 2:5] = True           # a stray island
    out = vm.postprocess_myocardium(m[None])[0]
    assert out[32, 17] and not out[2:5, 2:5].any()
    assert not out[32, 30]       # the cavity stays open
    assert (out == ring).all()
    assert not vm.postprocess_myocardium(np.zeros((1, 8, 8), bool)).any()


def test_end_systole_and_peaks_of_a_cycle():
    T = 50
    t = np.arange(T) / T
    radial = np.where(t < 0.36, 3 * np.sin(np.pi * t / 0.36),
                      np.where(t < 0.6, -4 * np.sin(np.pi * (t - 0.36) / 0.24),
                               np.where(t > 0.85, -1.5 * np.sin(np.pi * (t - 0.85) / 0.15), 0.0)))
    c = vm.VelocityCurves(radial, -0.5 * radial, radial * 2, np.ones(T))
    es = vm.end_systole_frame(radial)
    assert es == 18
    p = vm.peak_velocities(c)
    assert p["peak_systolic_radial_velocity_cm_s"] == pytest.approx(3.0, abs=0.05)
    assert p["peak_early_diastolic_radial_velocity_cm_s"] == pytest.approx(-4.0, abs=0.1)
    assert p["peak_late_diastolic_radial_velocity_cm_s"] == pytest.approx(-1.5, abs=0.1)
    assert p["peak_systolic_longitudinal_velocity_cm_s"] == pytest.approx(6.0, abs=0.1)
    assert p["peak_early_diastolic_circumferential_velocity_cm_s"] == pytest.approx(2.0, abs=0.05)
    assert vm.end_systole_frame(-np.abs(radial)) is None
    none = vm.peak_velocities(vm.VelocityCurves(np.full(T, np.nan), radial, radial, np.ones(T)))
    assert none["peak_systolic_radial_velocity_cm_s"] is None


@pytest.fixture(scope="module")
def phantom():
    from calib.mr import make_mr_clip

    # basal (the fastest longitudinal motion: -8.8 cm/s in early diastole, steps of up to
    # 4.4 cm/s between frames) with a VENC of 6 cm/s: it wraps, within reach of unwrapping
    return make_mr_clip(slice_level="basal", frames=30, rows=160, cols=160, venc_mm_s=60.0,
                        blood_signal=0.2, phase_offset_mm_s=15.0, seed=3)


def test_phantom_truth_curves_contract_in_systole_and_segments_follow_the_insertion(phantom):
    tr = phantom.truth
    myo = tr.myocardium > 0
    c = vm.velocity_curves(tr.velocity_mm_s / 10.0, myo, tr.segments)
    es = int(tr.es_frames[0])
    assert (c.radial[1:es - 1] > 0).all()              # inward in systole
    assert (c.longitudinal[1:es - 1] > 0).all()        # towards the apex in systole
    assert vm.end_systole_frame(c.radial) in range(es - 1, es + 2)
    # the phantom's anterior RV insertion is at 120 deg on screen: anterior (90) + 30
    seg = vm.aha_segments_by_anterior(myo, "basal", np.pi / 2, 30.0)
    agree = (seg[myo] == tr.segments[myo]).mean()
    assert agree > 0.9


def test_phantom_measured_curves_match_truth_after_the_chores(phantom):
    tr = phantom.truth
    myo = tr.myocardium > 0
    v = phantom.velocity_mm_s / 10.0
    import cv2

    heart = cv2.dilate(myo.any(0).astype(np.uint8), np.ones((31, 31), np.uint8)) > 0
    corrected, offset = vm.correct_background_offset(phantom.frames.astype(np.float32), v, heart)
    assert np.abs(offset[myo.any(0)]).max() > 0.1   # there was an offset to take out
    wrapped = vm.velocity_curves(corrected, myo)
    truth = vm.velocity_curves(tr.velocity_mm_s / 10.0, myo)
    assert np.abs(wrapped.longitudinal - truth.longitudinal).max() > 1.0  # wraps hurt
    unwrapped, share, roughness = vm.unwrap_in_time(corrected, 6.0, myo)
    assert share > 0.01 and roughness < 0.1
    measured = vm.velocity_curves(unwrapped, myo)
    for name in vm.CURVES:
        rms = np.sqrt(np.mean((truth.curve(name) - measured.curve(name)) ** 2))
        assert rms < 0.2, (name, rms)
