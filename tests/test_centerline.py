"""Centreline extraction from myocardium masks (analytic horseshoe)."""

from __future__ import annotations

import time

import numpy as np
import pytest

from streamer.measure import centerline as C
from streamer.measure.centerline import (
    CentrelineConfig,
    extract_centreline,
    project_onto_polyline,
    resample_polyline,
)
from streamer.measure.synthetic import Horseshoe

HS = Horseshoe()
DENSE_U = np.linspace(0, 1, 6000)


@pytest.fixture(scope="module", autouse=True)
def _compiled():
    C.warmup()


def deviation_px(points, t):
    """Distance of each point from the true midline at time t."""
    proj, arc = project_onto_polyline(points, HS.points_px(DENSE_U, t))
    return np.hypot(*(points - proj).T), arc


@pytest.mark.parametrize("t", [0.0, 0.1, 0.2, 0.35, 0.5, 0.8])
def test_horseshoe_centreline_is_accurate(t):
    cl = extract_centreline(HS.mask(t), spacing_mm=HS.spacing_mm)
    assert cl.ok and cl.flags == []
    assert cl.points_px.shape == (120, 2)
    dev, arc = deviation_px(cl.points_px, t)
    assert dev.max() < 0.6, dev.max()  # on the true midline to a fraction of a pixel
    L = HS.L0_px * (1 + HS.e(t))
    assert abs(cl.length_px / L - 1) < 0.003  # length within 0.3 %
    assert arc[0] < 0.7 and L - arc[-1] < 0.7  # both basal ends found
    assert abs(cl.thickness_px - HS.thickness_px) < 1.0
    # equally spaced, basal septum (left) first
    step = np.hypot(*np.diff(cl.points_px, axis=0).T)
    assert step.std() / step.mean() < 0.01
    assert cl.points_px[0, 1] < cl.points_px[-1, 1]
    assert np.allclose(cl.points_mm, cl.points_px * HS.spacing_mm)
    assert len(cl.endo_px) > 100 and len(cl.epi_px) > 100


def test_order_is_stable_frame_to_frame():
    prev = None
    for t in np.arange(0, 1.0, 0.02):
        p = extract_centreline(HS.mask(t)).points_px
        if prev is not None:
            # consecutive frames: each point moves a little (the base up to ~3 px per frame)
            # and its nearest neighbour in the previous frame has (almost) the same index:
            # no flips, no shifts of the ordering
            assert np.hypot(*(p - prev).T).max() < 5.0
            d = np.hypot(p[:, None, 0] - prev[None, :, 0], p[:, None, 1] - prev[None, :, 1])
            assert np.abs(np.argmin(d, axis=1) - np.arange(len(p))).max() <= 2
        prev = p


def test_septum_side_option_and_mirrored_images():
    m = HS.mask(0.2)
    a = extract_centreline(m).points_px
    b = extract_centreline(m, CentrelineConfig(septum_side="right")).points_px
    assert np.allclose(a, b[::-1])
    # a mirrored display with septum on the right gives the mirrored centreline
    W = m.shape[1]
    c = extract_centreline(m[:, ::-1].copy(), CentrelineConfig(septum_side="right")).points_px
    mirrored = np.column_stack([c[:, 0], W - 1 - c[:, 1]])
    assert np.abs(mirrored - a).max() < 0.5


def test_network_like_defects():
    t = 0.3
    ref = extract_centreline(HS.mask(t)).points_px
    m = HS.mask(t).copy()
    # holes inside the wall, on the midline
    for r, c in np.round(HS.points_px([0.2, 0.55, 0.8], t)).astype(int):
        m[r - 1:r + 2, c - 1:c + 2] = 0
    cl = extract_centreline(m)
    assert cl.ok and "holes_filled" in cl.flags
    assert np.abs(cl.points_px - ref).max() < 1.0
    # a small spurious blob: ignored without a flag
    m2 = HS.mask(t).copy()
    m2[240:246, 10:16] = 1
    cl2 = extract_centreline(m2)
    assert cl2.ok and cl2.flags == [] and np.abs(cl2.points_px - ref).max() < 1e-9
    # a second large component: largest kept, flagged
    m3 = HS.mask(t).copy()
    m3[5:70, 2:45] = 1
    cl3 = extract_centreline(m3)
    assert cl3.ok and "two_components" in cl3.flags and np.abs(cl3.points_px - ref).max() < 1e-9
    # float probabilities and bool masks are accepted
    assert extract_centreline(HS.mask(t).astype(np.float32) * 0.9).ok
    assert extract_centreline(HS.mask(t).astype(bool)).ok


@pytest.mark.parametrize("kind", ["zeros", "tiny", "disk", "ring", "noise", "1d", "line", "nan"])
def test_bad_masks_flag_without_crash(kind):
    H = W = 128
    rr, cc = np.mgrid[0:H, 0:W]
    rad = np.hypot(rr - 64, cc - 64)
    masks = {
        "zeros": np.zeros((H, W), np.uint8),
        "tiny": (rad < 2).astype(np.uint8),
        "disk": (rad < 40).astype(np.uint8),
        "ring": ((rad > 25) & (rad < 40)).astype(np.uint8),
        "noise": (np.random.default_rng(0).random((H, W)) > 0.5).astype(np.uint8),
        "1d": np.ones(100, np.uint8),
        "line": (np.abs(rr - cc) < 1).astype(np.uint8),
        "nan": np.full((H, W), np.nan, np.float32),
    }
    cl = extract_centreline(masks[kind])
    assert not cl.ok
    assert cl.flags and set(cl.flags) & {"empty_mask", "broken_mask"}
    assert cl.points_px.shape == (120, 2) and np.all(np.isnan(cl.points_px))


def test_projection_onto_polyline():
    rng = np.random.default_rng(2)
    poly = np.column_stack([np.linspace(0, 50, 30), 10 * np.sin(np.linspace(0, 3, 30))])
    pts = rng.uniform([-5, -15], [55, 15], (200, 2))
    proj, arc = project_onto_polyline(pts, poly)
    dense = resample_polyline(poly, step=0.01)
    d_dense = np.min(np.hypot(pts[:, None, 0] - dense[None, :, 0],
                              pts[:, None, 1] - dense[None, :, 1]), axis=1)
    assert np.allclose(np.hypot(*(pts - proj).T), d_dense, atol=1e-3)
    assert np.all(np.diff(arc[np.argsort(proj[:, 0])]) >= -1e-9)  # arc grows along the curve
    p, a = project_onto_polyline(np.array([[np.nan, 0.0]]), poly)
    assert np.all(np.isnan(p)) and np.isnan(a[0])
    # extend=True: past the ends the end segments continue as lines
    line = np.array([[0.0, 0.0], [0.0, 10.0], [0.0, 20.0]])
    p, a = project_onto_polyline(np.array([[2.0, -3.0], [-1.0, 25.0], [1.0, 5.0]]), line, extend=True)
    assert np.allclose(p, [[0.0, -3.0], [0.0, 25.0], [0.0, 5.0]]) and np.allclose(a, [-3.0, 25.0, 5.0])
    p, a = project_onto_polyline(np.array([[2.0, -3.0]]), line)
    assert np.allclose(p, [[0.0, 0.0]]) and a[0] == 0.0


def test_grid_ray_casting_equals_brute_force():
    rng = np.random.default_rng(3)
    cl_poly = C.smooth_closed(C.resample_polyline(
        np.vstack([HS.points_px(DENSE_U[::10], 0.2) + [0, 8], HS.points_px(DENSE_U[::-10], 0.2) - [0, 8]]),
        step=1.0, closed=True), 1.5)
    o = rng.uniform(0, 256, (3000, 2))
    a = rng.uniform(0, 2 * np.pi, 3000)
    d = np.column_stack([np.cos(a), np.sin(a)])
    t_grid = C._ray_hits(o, d, cl_poly, 0.5)[0]
    t_brute = C._ray_hits_brute(o, d, cl_poly, 0.5)
    assert np.array_equal(np.isfinite(t_grid), np.isfinite(t_brute))
    fin = np.isfinite(t_grid)
    assert fin.sum() > 500 and np.allclose(t_grid[fin], t_brute[fin], rtol=0, atol=1e-9)


def test_speed_256():
    m = HS.mask(0.3)
    extract_centreline(m)
    ts = []
    for _ in range(30):
        t0 = time.perf_counter()
        extract_centreline(m)
        ts.append(time.perf_counter() - t0)
    med_ms = 1e3 * float(np.median(ts))
    print(f"centreline 256x256: median {med_ms:.2f} ms")
    assert med_ms < 10.0  # ~0.75 ms on the 2-core dev VM; generous against shared-CPU noise


# --------------------------------------------------------------------------------------
# the numba helpers against small pure-numpy references (the pre-numba implementation)
# --------------------------------------------------------------------------------------

from scipy.ndimage import gaussian_filter1d, median_filter  # noqa: E402


def ref_offset_closed(contour, dist):
    tang = np.gradient(np.vstack([contour[-1:], contour, contour[:1]]), axis=0)[1:-1]
    tang /= np.maximum(np.hypot(tang[:, 0], tang[:, 1]), 1e-12)[:, None]
    r_, c_ = contour[:, 0], contour[:, 1]
    area2 = float(np.sum(r_ * np.roll(c_, -1) - np.roll(r_, -1) * c_))
    sgn = 1.0 if area2 > 0 else -1.0
    inward = sgn * np.column_stack([-tang[:, 1], tang[:, 0]])
    return contour - dist * inward


def ref_recentre(core, contour, thickness, sigma):
    tang = np.gradient(core, axis=0)
    tang /= np.maximum(np.hypot(tang[:, 0], tang[:, 1]), 1e-12)[:, None]
    nrm = np.ascontiguousarray(np.column_stack([-tang[:, 1], tang[:, 0]]))
    poly = np.ascontiguousarray(contour)
    tp = C._ray_hits_brute(np.ascontiguousarray(core), nrm, poly, 0.0)
    tm = C._ray_hits_brute(np.ascontiguousarray(core), np.ascontiguousarray(-nrm), poly, 0.0)
    with np.errstate(invalid="ignore"):
        ok = np.isfinite(tp) & np.isfinite(tm) & (tp + tm > 0.5 * thickness) & (tp + tm < 1.6 * thickness)
    if ok.sum() < 8:
        return core
    idx = np.arange(len(core))
    shift = np.interp(idx, idx[ok], 0.5 * (tp - tm)[ok])
    shift = gaussian_filter1d(shift, sigma, mode="nearest") if sigma > 0 else shift
    return core + nrm * shift[:, None]


def ref_longest_true_run(f, circular):
    n = len(f)
    if n == 0 or not f.any():
        return 0, 0
    if f.all():
        return 0, n
    shift = int(np.flatnonzero(~f)[0]) if circular else 0
    f = np.roll(f, -shift)
    d = np.diff(np.concatenate([[0], f.astype(np.int8), [0]]))
    starts, ends = np.flatnonzero(d == 1), np.flatnonzero(d == -1)
    i = int(np.argmax(ends - starts))
    return (int(starts[i]) + shift) % n, int(ends[i] - starts[i])


@pytest.fixture(scope="module")
def phantom_masks():
    import cv2

    from calib.datasets import random_echo_config
    from calib.echo import make_echo_clip
    clip = make_echo_clip(random_echo_config(2000013, view="a4c", frames=4, fps=5.0))
    ms = [np.ascontiguousarray(m) for m in clip.truth.myocardium]
    ms.append(cv2.resize(ms[0], (192, 192), interpolation=cv2.INTER_NEAREST))
    ms.append(cv2.resize(ms[2], (320, 320), interpolation=cv2.INTER_NEAREST))
    return ms + [HS.mask(t) for t in (0.1, 0.4)]


def _smoothed_contour(mask):
    import cv2
    cs, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    raw = max(cs, key=len)[:, 0, ::-1].astype(np.float64)
    return C.smooth_closed(resample_polyline(raw, step=1.0, closed=True), 1.5)


def test_numba_helpers_match_numpy_references(phantom_masks):
    rng = np.random.default_rng(7)
    for mask in phantom_masks:
        cl = extract_centreline(mask)
        assert cl.ok
        smooth = _smoothed_contour(mask)
        contour = ref_offset_closed(smooth, 0.5)
        for dist in (0.5, -0.7):
            assert np.abs(C._offset_closed(smooth, dist) - ref_offset_closed(smooth, dist)).max() < 0.01
        for dist in (0.5, 1.3):  # reversed travel direction: still outward
            assert np.abs(C._offset_closed(smooth[::-1].copy(), dist)
                          - ref_offset_closed(smooth[::-1].copy(), dist)).max() < 0.01
        # a midline pushed off the mid-wall by up to ~1 px, re-centred
        core = resample_polyline(cl.points_px, step=1.0)
        s = np.linspace(0, 3 * np.pi, len(core))
        tang = np.gradient(core, axis=0)
        tang /= np.hypot(*tang.T)[:, None]
        pushed = core + np.column_stack([-tang[:, 1], tang[:, 0]]) * np.sin(s)[:, None]
        for sigma in (2.0, 0.0):
            for c in (core, pushed):
                a = C._recentre(np.ascontiguousarray(c), contour, cl.thickness_px, sigma)
                b = ref_recentre(c, contour, cl.thickness_px, sigma)
                assert np.abs(a - b).max() < 0.01
        # implausible thickness: no chord accepted, the midline stays put
        assert np.array_equal(C._recentre(np.ascontiguousarray(pushed), contour, 100.0, 2.0), pushed)
        # the other helpers of the extraction
        assert np.abs(C._smooth_open(core, 2.0) - C.smooth_open(core, 2.0)).max() < 1e-9
        assert np.abs(C._gauss_rows(smooth, C._gauss_kernel(1.5), True)
                      - gaussian_filter1d(smooth, 1.5, axis=0, mode="wrap")).max() < 1e-9
        x = rng.random(rng.integers(3, 60))
        for size in (1, 2, 4, 7, min(21, len(x))):
            assert np.array_equal(C._median_nearest(x, size), median_filter(x, size=size, mode="nearest"))
        f = rng.random(rng.integers(1, 80)) < rng.uniform(0.2, 0.95)
        for circular in (True, False):
            assert tuple(C._longest_true_run(f, circular)) == ref_longest_true_run(f, circular)
    for f in (np.zeros(5, bool), np.ones(5, bool)):
        assert tuple(C._longest_true_run(f, True)) == ref_longest_true_run(f, True)
