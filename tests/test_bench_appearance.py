"""bench/appearance.py: the mask-free appearance statistics on frames with known properties."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest


@pytest.fixture(scope="module")
def app(bench_module):
    return bench_module("appearance")


def blurred_noise(rng, shape, sigma_px):
    """White noise blurred by a Gaussian of sigma_px: its autocorrelation is a Gaussian of
    sigma_px * sqrt(2), FWHM = 2 sqrt(2 ln 2) * sqrt(2) * sigma_px."""
    pad = int(np.ceil(4 * sigma_px))  # blurred with room to spare, then cropped: no border effects
    x = rng.standard_normal((shape[0] + 2 * pad, shape[1] + 2 * pad)).astype(np.float32)
    return cv2.GaussianBlur(x, (0, 0), sigma_px)[pad:pad + shape[0], pad:pad + shape[1]]


def fan_clip(rng, t=12, h=160, w=200, text=True):
    """A drawn fan with changing speckle, a black cavity inside it, and a constant bright text
    box outside it and one constant bright marker inside it."""
    fan = np.zeros((h, w), np.uint8)
    cv2.ellipse(fan, (w // 2, 5), (140, 140), 90, -40, 40, 1, -1)
    level = np.full((h, w), 0.15, np.float32)
    level[105:150] = 0.6                                  # a bright band of tissue
    frames = np.zeros((t, h, w), np.float32)
    for i in range(t):
        speckle = level * (0.4 + np.abs(blurred_noise(rng, (h, w), 1.0)))
        frames[i] = np.where(fan > 0, np.clip(speckle, 0, 1), 0)
    frames[:, 70:95, 85:115] = 0.0                      # black blood pool inside the fan
    if text:
        frames[:, 5:20, 5:45] = 0.9                     # a text box in a corner
        frames[:, 100:104, 98:102] = 1.0                # an overlay marker inside the fan
    return frames, fan.astype(bool)


def test_speckle_fwhm_of_blurred_noise(app):
    rng = np.random.default_rng(1)
    for sigma in (1.0, 1.5):
        expected = 2 * np.sqrt(2 * np.log(2)) * np.sqrt(2) * sigma      # px
        plain = [app.speckle_fwhm_px(blurred_noise(rng, (32, 32), sigma)) for _ in range(40)]
        ax, lat = np.median(plain, axis=0)
        assert ax == pytest.approx(expected, rel=0.2) and lat == pytest.approx(expected, rel=0.2)


def test_speckle_size_in_mm_with_detrend(app):
    """The bench's path: frames, a mask, patches of the bright class, local-mean removal of
    3 mm; 0.5 mm per pixel and a correlation of sigma 1.5 px -> FWHM 2.5 mm."""
    rng = np.random.default_rng(2)
    frames = np.stack([blurred_noise(rng, (128, 128), 1.5) + 2.0 for _ in range(6)])
    mask = np.ones((128, 128), bool)
    expected_mm = 2 * np.sqrt(2 * np.log(2)) * np.sqrt(2) * 1.5 * 0.5
    out = app.speckle_size(frames, mask, thr=0.0, spacing_mm=(0.5, 0.5), patch_mm=16.0,
                           detrend_mm=3.0)
    assert out["speckle_patches"] > 0 and out["speckle_patch_px"] == 32
    assert out["speckle_axial_mm"] == pytest.approx(expected_mm, rel=0.2)
    assert out["speckle_lateral_mm"] == pytest.approx(expected_mm, rel=0.2)
    # anisotropic: stretched 3x along the rows (axial), not along the columns
    wide = np.stack([cv2.resize(f[:, :43], (128, 129), interpolation=cv2.INTER_CUBIC)[:128]
                     for f in frames])
    out = app.speckle_size(wide, mask, 0.0, (0.5, 0.5), 16.0, detrend_mm=0.0)
    assert out["speckle_lateral_mm"] > 2 * out["speckle_axial_mm"]


def test_two_level_image_contrast(app):
    values = np.r_[np.full(7000, 0.1), np.full(3000, 0.8)]
    c = app.contrast(values)
    assert 0.1 <= c["otsu_threshold"] < 0.8
    assert c["contrast_ratio"] == pytest.approx(8.0)
    assert c["dark_fraction"] == pytest.approx(0.7)
    assert c["p90_p50"] == pytest.approx(8.0)
    # with noise on both levels: still close
    rng = np.random.default_rng(3)
    noisy = values + rng.normal(0, 0.02, values.size)
    c = app.contrast(noisy)
    assert c["contrast_ratio"] == pytest.approx(8.0, rel=0.05)
    assert c["dark_fraction"] == pytest.approx(0.7, abs=0.01)


def test_identical_inputs_distance_zero_and_different_ones_not(app):
    rng = np.random.default_rng(4)
    a = app.histograms(rng.gamma(2.0, 0.15, 20000))
    d = app.hist_distances(a, a)
    assert d["hist_w1"] == pytest.approx(0.0, abs=1e-12) and d["hist_js"] == pytest.approx(0.0, abs=1e-6)
    b = app.histograms(rng.gamma(2.0, 0.15, 20000) + 0.1)
    d = app.hist_distances(a, b)
    assert d["hist_w1"] == pytest.approx(0.1, abs=0.01)
    assert 0.05 < d["hist_js"] <= 1.0


def test_sector_mask_finds_the_fan_and_ignores_text(app):
    rng = np.random.default_rng(5)
    frames, fan = fan_clip(rng)
    mask = app.sector_mask(frames)
    iou = (mask & fan).sum() / (mask | fan).sum()
    assert iou > 0.85
    assert not mask[5:20, 5:45].any()               # the constant text box
    assert not mask[100:104, 98:102].any()          # the constant marker inside the fan
    assert mask[75:90, 90:110].all()                # the black cavity belongs to the fan


def test_temporal_and_clip_statistics(app):
    frames = np.zeros((3, 8, 8), np.float32)
    frames[1] = 0.5
    mask = np.ones((8, 8), bool)
    assert app.temporal_mad(frames, mask) == pytest.approx(0.5)
    rng = np.random.default_rng(6)
    clip, _ = fan_clip(rng, t=6)
    cs = app.clip_statistics("fan", clip, (0.5, 0.5), patch_mm=12.0)
    assert cs.stats["speckle_patches"] > 0
    for key, *_ in app.ROWS:
        if not key.startswith("hist_"):
            assert np.isfinite(cs.stats[key]), key
    assert cs.hist["js"].sum() == pytest.approx(1.0)


def test_spacing_of_a_resized_clip(app):
    class Info:
        shape = (240, 320, 3)
        spacing_mm = (0.51, 0.51)
        metadata = {"calibration_region_px": {"x0": 84, "y0": 31, "x1": 595, "y1": 414}}
    spacing, factor = app.corrected_spacing(Info)
    assert factor == 2 and spacing == pytest.approx((1.02, 1.02))
    Info.shape = (480, 640, 3)
    assert app.corrected_spacing(Info) == ((0.51, 0.51), 1.0)


def test_summary_and_table(app, tmp_path):
    rng = np.random.default_rng(7)
    clips = [app.clip_statistics(f"c{i}", fan_clip(rng, t=4)[0], (0.5, 0.5)) for i in range(3)]
    reals = [app.clip_statistics(f"r{i}.dcm", fan_clip(rng, t=4)[0] ** 2, (0.5, 0.5)) for i in range(2)]
    summary = app.summarise(clips, reals)
    assert set(summary["rows"]) == {k for k, *_ in app.ROWS}
    text = app.table(summary, [r.name for r in reals])
    assert text.count("\n") == len(app.ROWS) + 1 and "z r0" in text
    json.dumps(app.jsonable(summary))
