"""Exactly invertible wall maps: round trips, prescribed arc lengths, fold detection."""

import math

import numpy as np
import pytest

from calib.kinematics import THETA, EllipticWall, wrap_angle


def _open_wall():
    return EllipticWall((40.0, 110.0), (-1.0, 0.1), 85.0, 28.0, math.radians(82), lambda t: 6 + 4 * np.sin(t) ** 2)


def test_open_state_roundtrip_is_exact():
    w = _open_wall()
    q = np.sin(THETA) ** 2
    st = w.open_state(np.array([-0.2, -0.25, -0.1, 0.0, -0.15, 0.05]), 0.1 * q)
    rng = np.random.default_rng(0)
    pts = rng.uniform([0, 0], [220, 220], (20000, 2))
    th0, rh0 = w.to_local(pts)
    th1, rh1 = w.forward(th0, rh0, st)
    a, b = w.inverse(th1, rh1, st)
    assert np.abs(a - th0).max() < 1e-9 and np.abs(b - rh0).max() < 1e-9
    assert np.allclose(w.forward_mm(th0, rh0, st), w.to_mm(th1, rh1), atol=1e-9)


def test_open_state_segment_lengths_match_strain():
    w = _open_wall()
    strain = np.array([-0.2, -0.25, -0.1, 0.0, -0.15, 0.05])
    st = w.open_state(strain, np.zeros_like(THETA))
    thb = w.half_angle
    s0 = np.linspace(np.interp(-thb, THETA, w.S0), np.interp(thb, THETA, w.S0), 7)
    lengths0, lengths1 = [], []
    for k in range(6):
        th = np.interp(np.linspace(s0[k], s0[k + 1], 400), w.S0, THETA)
        p0 = w.to_mm(th, np.ones_like(th))
        p1 = w.forward_mm(th, np.ones_like(th), st)
        lengths0.append(np.sum(np.linalg.norm(np.diff(p0, axis=0), axis=1)))
        lengths1.append(np.sum(np.linalg.norm(np.diff(p1, axis=0), axis=1)))
    e = np.array(lengths1) / np.array(lengths0) - 1
    assert np.abs(e - strain).max() < 5e-4          # 0.05 strain-%


def test_identity_state_is_identity():
    w = _open_wall()
    st = w.open_state(np.zeros(6), np.zeros_like(THETA))
    pts = np.random.default_rng(1).uniform(0, 200, (500, 2))
    th, rh = w.to_local(pts)
    assert np.allclose(w.forward_mm(th, rh, st), pts, atol=1e-9)


def test_ring_state_roundtrip_and_twist():
    w = EllipticWall((100.0, 100.0), (-1.0, 0.0), 30.0, 30.0, math.pi, 8.0)
    bnd = np.deg2rad(np.arange(7) * 60.0 - 150.0)
    st = w.ring_state(bnd, np.array([-.2, -.18, -.1, 0, .05, -.2]), np.array([.4, .3, .1, 0, -.1, .4]),
                      twist_rad=0.1)
    pts = np.random.default_rng(2).uniform(0, 200, (20000, 2))
    th0, rh0 = w.to_local(pts)
    th1, rh1 = w.forward(th0, rh0, st)
    a, b = w.inverse(th1, rh1, st)
    assert np.abs(wrap_angle(a - th0)).max() < 1e-9 and np.abs(b - rh0).max() < 1e-9
    # far away tissue does not move
    far = np.hypot(*(pts - 100.0).T) > 60
    assert np.allclose(w.forward_mm(th0[far], rh0[far], st), pts[far], atol=1e-9)


def test_radial_state_keeps_core_fixed():
    w = EllipticWall((100.0, 100.0), (-1.0, 0.0), 50.0, 50.0, math.pi, 0.0, fade_mm=1.0)
    one = np.ones_like(THETA)
    st = w.radial_state(0.6 * one, 0.95 * one, 1.05 * one, 1.5 * one, 0.9 * one)
    pts = np.random.default_rng(3).uniform(0, 200, (5000, 2))
    th, rh = w.to_local(pts)
    moved = w.forward_mm(th, rh, st)
    core = rh < 0.6
    assert np.allclose(moved[core], pts[core], atol=1e-12)
    a, b = w.inverse(*w.forward(th, rh, st), st)
    assert np.abs(b - rh).max() < 1e-9


def test_fold_is_detected():
    w = _open_wall()
    with pytest.raises(ValueError, match="folds|collapses"):
        w.open_state(np.zeros(6), 2.0 * np.ones_like(THETA))
