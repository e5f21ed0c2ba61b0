"""Scanner-display knobs of the echo phantom (calib.display): neutral by default, bit for bit;
the placement moves the truth exactly with the frame; overlays, palette and JPEG change the
frames only."""

import dataclasses
import json

import numpy as np
import pytest
from scipy import ndimage

from calib.datasets import random_display
from calib.display import (
    PALETTES,
    Placement,
    ScannerDisplay,
    _ecg_mv,
    apply_display,
    display_rng,
)
from calib.echo import EchoPhantomConfig, make_echo_clip
from calib.errors import PhantomParameterError
from calib.speckle import SectorGeometry

BASE = dict(view="a4c", rows=128, cols=128, frames=4, seed=5, fps=25.0)
GEO = dict(sector_scale=0.6, offset_rows_frac=-0.7, offset_cols_frac=0.4)
OVERLAYS = dict(text_overlay=True, depth_scale=True, marker_dot=True, toolbar=True, ecg_trace=True)


@pytest.fixture(scope="module")
def plain():
    return make_echo_clip(EchoPhantomConfig(**BASE))


@pytest.fixture(scope="module")
def geo():
    return make_echo_clip(EchoPhantomConfig(**BASE, display=ScannerDisplay(**GEO)))


@pytest.fixture(scope="module")
def full():
    return make_echo_clip(EchoPhantomConfig(**BASE, display=ScannerDisplay(
        **GEO, **OVERLAYS, native_scale=1.8, palette="bronze", jpeg_quality=50)))


def _geom(clip):
    c = clip.config
    return SectorGeometry.fit(c.rows, c.cols, c.depth_mm, c.sector_angle_deg)


def _apply(clip, **knobs):
    return apply_display(ScannerDisplay(**knobs), clip.frames, clip.truth, _geom(clip),
                         clip.fps, display_rng(clip.config.seed), clip.config.heart_rate_bpm)


def _same_truth(a, b) -> bool:
    ta, tb = a.arrays(), b.arrays()
    assert sorted(ta) == sorted(tb)
    return all(np.array_equal(ta[k], tb[k], equal_nan=ta[k].dtype.kind == "f") for k in ta)


def _flow_error_px(clip):
    """Centreline points moved by the truth flow vs the next frame's points: (mean error,
    mean motion), canvas pixels."""
    sp = clip.spacing_mm[0]
    err, mot = [], []
    for t in range(clip.frames.shape[0] - 1):
        p, q = clip.truth.centreline_mm[t] / sp, clip.truth.centreline_mm[t + 1] / sp
        d = clip.truth.displacement[t]
        step = np.stack([ndimage.map_coordinates(d[..., 1], p.T, order=1),
                         ndimage.map_coordinates(d[..., 0], p.T, order=1)], axis=1)
        err.append(np.hypot(*(p + step - q).T))
        mot.append(np.hypot(*(q - p).T))
    return float(np.mean(err)), float(np.mean(mot))


def _centreline_in_wall(clip) -> float:
    sp = clip.spacing_mm[0]
    hits = []
    for t in range(clip.frames.shape[0]):
        p = np.round(clip.truth.centreline_mm[t] / sp).astype(int)
        hits.append(clip.truth.myocardium[t][p[:, 0], p[:, 1]].mean())
    return float(np.mean(hits))


def _warped_overlap(clip) -> float:
    """Share of the myocardium of frame t that the truth flow carries into that of t+1."""
    out = []
    for t in range(clip.frames.shape[0] - 1):
        rr, cc = np.nonzero(clip.truth.myocardium[t])
        d = clip.truth.displacement[t]
        r2 = np.round(rr + d[rr, cc, 1]).astype(int)
        c2 = np.round(cc + d[rr, cc, 0]).astype(int)
        out.append(clip.truth.myocardium[t + 1][r2, c2].mean())
    return float(np.mean(out))


# ========================================================================== neutral
def test_neutral_display_is_todays_phantom(plain):
    explicit = make_echo_clip(EchoPhantomConfig(**BASE, display=ScannerDisplay()))
    assert np.array_equal(explicit.frames, plain.frames)
    assert _same_truth(explicit.truth, plain.truth)
    assert explicit.spacing_mm == plain.spacing_mm
    # metadata written before the knobs existed (no "display") remakes the same clip
    d = plain.config.to_dict()
    assert d["display"] == ScannerDisplay().to_dict()
    d.pop("display")
    old = make_echo_clip(EchoPhantomConfig.from_dict(d))
    assert np.array_equal(old.frames, plain.frames)
    assert ScannerDisplay().is_neutral
    assert ScannerDisplay(overlay_grey=0.3).is_neutral            # brightness alone: nothing drawn


# ======================================================================== placement
@pytest.mark.parametrize("canvas,scale", [((100, 90), 0.7), ((128, 160), 1.0), ((64, 64), 0.55)])
def test_placement_maps_points_as_cv2_resize_does(canvas, scale):
    """A blob's centroid lands where Placement.points_px says (flow: exact; image: area
    averaging within a tenth of a pixel)."""
    shape = (64, 48)
    pl = Placement.fit(ScannerDisplay(canvas_rows=canvas[0], canvas_cols=canvas[1],
                                      sector_scale=scale, offset_rows_frac=0.3,
                                      offset_cols_frac=-0.6), shape)
    rr, cc = np.mgrid[0:shape[0], 0:shape[1]]
    for r0, c0 in ((20.3, 17.8), (40.6, 30.1)):
        blob = np.exp(-0.5 * ((rr - r0) ** 2 + (cc - c0) ** 2) / 3.0 ** 2).astype(np.float32)
        want = pl.points_px(np.array([r0, c0]))
        for smooth, tol in ((False, 0.02), (True, 0.1)):
            got = ndimage.center_of_mass(pl.image(blob, smooth=smooth))
            assert np.allclose(got, want, atol=tol), (smooth, got, want)
    assert pl.placed_shape[0] <= canvas[0] and pl.placed_shape[1] <= canvas[1]


def test_the_truth_moves_with_the_placed_frame(plain, geo):
    k = 0.6
    assert geo.frames.shape == plain.frames.shape                 # canvas = rendered size
    assert geo.spacing_mm[0] == pytest.approx(plain.spacing_mm[0] / k)
    t0, t1 = plain.truth, geo.truth
    # strain truths, timing and labels do not change
    for name in ("gls_pct", "regional_pct", "midwall_gls_pct", "midwall_regional_pct", "phase",
                 "ed_frames", "es_frames", "segment_scores", "segment_factors"):
        assert np.array_equal(getattr(t0, name), getattr(t1, name), equal_nan=True), name
    # areas scale with k^2; hard masks stay the soft masks' >= 128
    assert t1.myocardium.sum() / t0.myocardium.sum() == pytest.approx(k * k, rel=0.05)
    assert t1.sector_mask.sum() / t0.sector_mask.sum() == pytest.approx(k * k, rel=0.03)
    assert np.array_equal(t1.myocardium, (t1.myocardium_soft >= 128).astype(np.uint8))
    assert np.array_equal(t1.cavity, (t1.cavity_soft >= 128).astype(np.uint8))
    # the centreline lies in the new wall as it did in the old one
    assert _centreline_in_wall(geo) >= _centreline_in_wall(plain) - 0.03
    assert _centreline_in_wall(geo) > 0.9
    # the flow carries the material centreline to the next frame (pixels of the canvas)
    err0, mot0 = _flow_error_px(plain)
    err1, mot1 = _flow_error_px(geo)
    assert mot1 == pytest.approx(k * mot0, rel=1e-3) and mot1 > 0.1
    assert err1 < 0.02 * mot1 + 2 * err0
    assert _warped_overlap(geo) > _warped_overlap(plain) - 0.05
    # nothing outside the placed image
    pl = Placement.fit(geo.config.display, plain.frames.shape[1:])
    outside = np.ones(pl.canvas_shape, bool)
    outside[pl.offset_px[0]:pl.offset_px[0] + pl.placed_shape[0],
            pl.offset_px[1]:pl.offset_px[1] + pl.placed_shape[1]] = False
    assert not t1.displacement[:, outside].any() and not t1.myocardium_soft[:, outside].any()
    assert not geo.frames[:, outside].any()
    # the frames are the rendered frames placed (the display draws on its own stream)
    assert np.array_equal(geo.frames, pl.images(plain.frames))


def test_a_larger_canvas_keeps_the_truth_consistent(plain):
    frames, truth, sp = _apply(plain, canvas_rows=150, canvas_cols=200, sector_scale=0.9,
                               offset_cols_frac=1.0)
    k = 0.9 * 150 / 128
    assert frames.shape == (4, 150, 200)
    assert sp == pytest.approx(plain.spacing_mm[0] / k)
    clip = dataclasses.replace(plain, frames=frames, truth=truth, spacing_mm=(sp, sp))
    err, mot = _flow_error_px(clip)
    assert mot == pytest.approx(k * _flow_error_px(plain)[1], rel=1e-3)
    assert err < 0.02 * mot + 0.01
    assert _centreline_in_wall(clip) > 0.9
    assert not truth.sector_mask[:, :20].any()                       # flush right


# ==================================================================== frame-only knobs
def test_overlays_palette_and_jpeg_never_touch_the_truth(geo, full):
    assert _same_truth(full.truth, geo.truth)
    assert full.spacing_mm == geo.spacing_mm
    assert full.frames.shape == geo.frames.shape + (3,) and full.frames.dtype == np.uint8


@pytest.mark.parametrize("palette", PALETTES)
def test_frames_per_palette(plain, palette):
    frames, truth, _ = _apply(plain, palette=palette, sector_scale=0.8)
    n, rows, cols = plain.frames.shape
    if palette == "grey":
        assert frames.shape == (n, rows, cols)
    else:
        assert frames.shape == (n, rows, cols, 3)
        lit = frames.max(axis=-1) > 40
        r, g, b = (frames[..., i][lit].astype(float).mean() for i in range(3))
        if palette == "bronze":
            assert r > g > b
        elif palette in ("blue", "ybr"):
            assert b > g > r
        else:
            assert r == g == b
    assert frames.dtype == np.uint8


def test_overlays_are_drawn_where_a_scanner_draws_them(plain):
    base, _, _ = _apply(plain, sector_scale=0.7, offset_rows_frac=-1.0)
    over, _, _ = _apply(plain, sector_scale=0.7, offset_rows_frac=-1.0, **OVERLAYS)
    diff = over.astype(int) != base
    rows, cols = base.shape[1:]
    assert diff[:, :rows // 6, :cols // 5].any() and diff[:, :rows // 6, -cols // 5:].any()   # text
    assert diff[:, -4:, cols // 2].all()                                                       # toolbar
    # the ECG sweeps (it changes from frame to frame); the static overlays do not
    strip = slice(int(0.75 * rows), int(0.93 * rows))
    assert not np.array_equal(over[0, strip], over[-1, strip])
    corner = (slice(0, rows // 6), slice(0, cols // 5))
    assert not base[(slice(None),) + corner].any()
    assert np.array_equal(over[0][corner], over[-1][corner])
    # each overlay alone changes the frame
    for name in OVERLAYS:
        one, _, _ = _apply(plain, sector_scale=0.7, offset_rows_frac=-1.0, **{name: True})
        assert not np.array_equal(one, base), name


def test_ecg_r_peak_is_at_end_diastole():
    ph = np.linspace(-0.5, 0.5, 2001)
    v = _ecg_mv(ph, 0.85)
    assert abs(ph[np.argmax(v)]) < 1e-3 and v.max() == pytest.approx(1.0, abs=0.02)
    assert np.allclose(_ecg_mv(ph + 3.0, 0.85), v)


def test_jpeg_changes_pixels_a_little(plain):
    raw, _, _ = _apply(plain, sector_scale=0.8, palette="grey_rgb")
    for q in (30, 90):
        jpg, _, _ = _apply(plain, sector_scale=0.8, palette="grey_rgb", jpeg_quality=q)
        d = np.abs(jpg.astype(int) - raw)
        assert d.any() and d.mean() < 6.0, q
    grey, _, _ = _apply(plain, jpeg_quality=40)
    assert grey.shape == plain.frames.shape and not np.array_equal(grey, plain.frames)


def test_native_scale_blurs_without_moving(plain):
    fine, _, _ = _apply(plain, sector_scale=0.9)
    coarse, _, _ = _apply(plain, sector_scale=0.9, native_scale=2.5)
    def grad(a):
        return float(np.abs(np.diff(a.astype(float), axis=-1)).mean())
    assert grad(coarse) < 0.8 * grad(fine)
    got = ndimage.center_of_mass(coarse[0].astype(float))
    want = ndimage.center_of_mass(fine[0].astype(float))
    assert np.allclose(got, want, atol=0.3)


# ================================================================ reproducibility
def test_the_display_is_remade_from_the_config(full):
    again = make_echo_clip(EchoPhantomConfig.from_dict(json.loads(full.config.to_json())["params"]))
    assert again.config == full.config
    assert np.array_equal(again.frames, full.frames)
    assert _same_truth(again.truth, full.truth)
    assert full.metadata["spacing_mm"] == list(full.spacing_mm)
    # another seed draws other scanner text
    a, _, _ = _apply(full, **OVERLAYS)
    b = apply_display(ScannerDisplay(**OVERLAYS), full.frames, full.truth, _geom(full), full.fps,
                      display_rng(6))[0]
    assert not np.array_equal(a, b)


@pytest.mark.parametrize("knobs,needle", [
    (dict(sector_scale=1.5), "sector_scale=1.5 is outside 0.1..1"),
    (dict(sector_scale=0.0), "sector_scale"),
    (dict(offset_rows_frac=-2), "offset_rows_frac=-2 is outside -1..+1"),
    (dict(canvas_rows=10), "canvas_rows=10 is outside 32..2048"),
    (dict(canvas_cols=100.5), "canvas_cols=100.5 must be an integer"),
    (dict(native_scale=0.5), "native_scale"),
    (dict(palette="pink"), "palette='pink' is unknown; choose one of grey"),
    (dict(jpeg_quality=5), "jpeg_quality=5 is outside 10..100"),
    (dict(overlay_grey=1.2), "overlay_grey"),
    (dict(toolbar="yes"), "toolbar='yes' must be true or false"),
])
def test_invalid_display_knobs_are_refused(knobs, needle):
    with pytest.raises(PhantomParameterError, match=needle.replace(".", r"\.").replace("+", r"\+")):
        ScannerDisplay(**knobs)
    with pytest.raises(PhantomParameterError):
        EchoPhantomConfig(**BASE, display=knobs)
    with pytest.raises(TypeError):
        ScannerDisplay.coerce({"no_such_knob": 1})


def test_random_display_draws_valid_network_size_displays(plain):
    rng = np.random.default_rng(0)
    draws = [random_display(rng) for _ in range(40)]
    assert all(d.canvas_rows is None and d.canvas_cols is None for d in draws)
    assert all(0.4 <= d.sector_scale <= 1.0 and 1.0 <= d.native_scale <= 2.5 for d in draws)
    assert {d.palette for d in draws} > {"grey"}
    assert any(d.jpeg_quality is None for d in draws) and any(d.jpeg_quality for d in draws)
    assert all(ScannerDisplay.coerce(d.to_dict()) == d for d in draws)
    frames, _, _ = apply_display(draws[0], plain.frames, plain.truth, _geom(plain), plain.fps,
                                 display_rng(1))
    assert frames.shape[1:3] == plain.frames.shape[1:3]
