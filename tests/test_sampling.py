"""Bilinear flow sampling and conversion to mm/s."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.ndimage import map_coordinates

from streamer.measure.sampling import (
    bilinear,
    flow_to_velocity_mm_s,
    sample_flow,
    sample_velocity_mm_s,
)


def test_bilinear_reproduces_linear_fields_and_pixels():
    rng = np.random.default_rng(0)
    H, W = 40, 60
    r, c = np.mgrid[0:H, 0:W].astype(np.float64)
    flow = np.stack([0.3 + 0.02 * r - 0.05 * c, -1.0 + 0.07 * r + 0.01 * c], axis=-1)
    pts = np.column_stack([rng.uniform(0, H - 1, 500), rng.uniform(0, W - 1, 500)])
    d, valid = sample_flow(flow, pts)
    assert valid.all()
    exp = np.column_stack([0.3 + 0.02 * pts[:, 0] - 0.05 * pts[:, 1],
                           -1.0 + 0.07 * pts[:, 0] + 0.01 * pts[:, 1]])
    assert np.allclose(d, exp, atol=1e-12)
    # integer points give the pixel itself, corners and edges included
    ip = np.array([[0, 0], [H - 1, W - 1], [H - 1, 0], [0, W - 1], [17, 23]], dtype=float)
    d, valid = sample_flow(flow, ip)
    assert valid.all() and np.array_equal(d, flow[ip[:, 0].astype(int), ip[:, 1].astype(int)])


def test_bilinear_matches_scipy_order1():
    rng = np.random.default_rng(1)
    img = rng.normal(size=(32, 48))
    pts = np.column_stack([rng.uniform(0, 31, 300), rng.uniform(0, 47, 300)])
    v, inside = bilinear(img, pts)
    ref = map_coordinates(img, pts.T, order=1)
    assert inside.all() and np.allclose(v, ref, atol=1e-12)


def test_channel_order_and_units():
    # OpenCV order: channel 0 = dx (along cols), channel 1 = dy (along rows), px/frame
    flow = np.zeros((10, 10, 2), np.float32)
    flow[..., 0] = 1.0  # 1 px/frame to the right
    flow[..., 1] = -2.0  # 2 px/frame up
    sv = sample_velocity_mm_s(flow, np.array([[4.5, 4.5]]), spacing_mm=(0.5, 0.3), dt_s=0.02)
    assert sv.valid.all() and sv.flags == []
    assert np.allclose(sv.velocity_mm_s, [[-2.0 * 0.5 / 0.02, 1.0 * 0.3 / 0.02]])  # [v_row, v_col]
    assert np.allclose(sv.displacement_px, [[1.0, -2.0]])
    assert np.allclose(flow_to_velocity_mm_s([[1.0, -2.0]], (0.5, 0.3), 0.02), sv.velocity_mm_s)


def test_nan_flow_and_outside_points_are_missing_not_errors():
    flow = np.ones((20, 20, 2))
    flow[10:, :, :] = np.nan
    pts = np.array([[2.0, 2.0], [9.5, 5.0], [15.0, 5.0], [-1.0, 3.0], [5.0, 19.5], [np.nan, 1.0]])
    sv = sample_velocity_mm_s(flow, pts, (1.0, 1.0), 0.05)
    assert sv.valid.tolist() == [True, False, False, False, False, False]
    assert np.all(np.isnan(sv.velocity_mm_s[1:]))
    assert "nan_flow" in sv.flags and "points_outside" in sv.flags
    assert np.allclose(sv.velocity_mm_s[0], [20.0, 20.0])


def test_bad_dt_gives_no_velocity():
    flow = np.ones((8, 8, 2))
    for dt in (0.0, -0.02, float("nan"), float("inf")):
        sv = sample_velocity_mm_s(flow, np.array([[3.0, 3.0]]), (1.0, 1.0), dt)
        assert not sv.valid.any() and "bad_dt" in sv.flags and np.all(np.isnan(sv.velocity_mm_s))


def test_step_flow_from_reference_inverts_the_previous_motion():
    """Two affine motions against one reference: the step between them, on the previous
    frame's grid, is (I + A2)(I + A1)^-1 y - y."""
    from streamer.measure.sampling import step_flow_from_reference

    n = 128
    gx, gy = np.meshgrid(np.arange(n, dtype=np.float64), np.arange(n, dtype=np.float64))
    X = np.stack([gx - 64.0, gy - 64.0], -1)                 # (dx, dy) order, about the centre

    def aff(s, r):
        return np.array([[1 + s, -r], [r, 1 + s]])
    A1, A2 = aff(0.03, 0.01), aff(0.06, 0.02)
    phi1, phi2 = X @ A1.T - X, X @ A2.T - X
    step = step_flow_from_reference(phi1.astype(np.float32), phi2.astype(np.float32))
    truth = X @ np.linalg.inv(A1).T @ A2.T - X
    assert np.abs(step - truth)[10:-10, 10:-10].max() < 0.01
    first = step_flow_from_reference(None, phi2.astype(np.float32))   # the previous frame is the reference
    assert np.allclose(first, phi2, atol=1e-5)
    with pytest.raises(ValueError, match="two"):
        step_flow_from_reference(phi1[:10].astype(np.float32), phi2.astype(np.float32))
