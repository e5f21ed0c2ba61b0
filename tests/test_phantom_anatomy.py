"""Anatomy helpers: distances, smooth union, random fields, leaflets."""

import numpy as np
import pytest

from calib import anatomy as an


def test_ellipse_distance_on_axes():
    d = an.ellipse_distance(np.array([0.0, 15.0, 0.0]), np.array([20.0, 0.0, 0.0]), 0, 0, 10, 15)
    assert d[0] == pytest.approx(5.0) and d[1] == pytest.approx(5.0) and d[2] < 0


def test_soft_min_fills_gaps():
    a, b = np.array([2.0, 10.0]), np.array([2.0, -1.0])
    s = an.soft_min([a, b], 5.0)
    assert s[0] < 0                     # midway between two chambers 2 mm apart: inside
    assert s[1] <= -1.0


def test_smooth_field_stats_and_determinism():
    f1 = an.SmoothField(np.random.default_rng(0), [0, 0], [100, 100], 5.0)
    f2 = an.SmoothField(np.random.default_rng(0), [0, 0], [100, 100], 5.0)
    pts = np.random.default_rng(1).uniform(0, 100, (5000, 2))
    v = f1(pts)
    assert np.array_equal(v, f2(pts))
    assert abs(v.mean()) < 0.3 and 0.4 < v.std() < 1.6


def test_leaflet_swings_with_opening():
    fr = an.Frame2D.from_axis([0.0, 0.0], [-1.0, 0.0])
    lf = an.Leaflet(np.zeros(2), 20.0, np.pi / 2, 0.0, curl_rad=0.0)
    s, off, _ = lf.sample(np.random.default_rng(0), 5.0)
    closed = lf.place(fr, np.zeros(2), 0.0, s, off)
    opened = lf.place(fr, np.zeros(2), 1.0, s, off)
    assert closed[:, 1].max() > 15 and abs(closed[:, 0]).max() < 2      # points to e_v (right)
    assert opened[:, 0].min() < -15                                     # points to e_u (up)
