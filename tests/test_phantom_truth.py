"""Truth helpers on synthetic fields with known answers."""

import numpy as np
import pytest

from calib import truth as T


def test_track_points_in_uniform_flow():
    f = np.zeros((5, 40, 40, 2), np.float32)
    f[..., 0] = 0.5        # dx
    f[..., 1] = -0.25      # dy
    tr = T.track_points(f, np.array([[20.0, 10.0]]))
    assert tr.shape == (5, 1, 2)
    assert tr[-1, 0] == pytest.approx([19.0, 12.0], abs=1e-5)


def test_gls_and_regional_of_uniform_stretch():
    base = np.stack([np.linspace(0, 119, 120), np.zeros(120)], 1)
    cl = np.stack([base, base * 0.8])
    gls, reg = T.gls_and_regional(cl)
    assert gls[1] == pytest.approx(-20.0) and np.allclose(reg[1], -20.0)


def test_warp_to_next_shifts_mask_and_dice():
    m = np.zeros((50, 50), np.uint8)
    m[10:30, 10:25] = 1
    f = np.zeros((50, 50, 2), np.float32)
    f[..., 0] = 3.0
    w = T.warp_to_next(m, f)
    expect = np.roll(m, 3, axis=1)
    assert T.dice(w, expect) == 1.0
    assert T.dice(m, np.zeros_like(m)) == 0.0
    assert T.endpoint_error(f, np.zeros_like(f)) == pytest.approx(3.0)
