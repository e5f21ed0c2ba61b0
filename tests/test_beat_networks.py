"""engines.beat_networks: the cycle's re-sampling in beat time that the per-beat networks
share (a weights file's errors are tested with each network's loader)."""

from __future__ import annotations

import numpy as np

from engines.beat_networks import resample_cycle


def test_resample_cycle_is_linear_in_circular_beat_time():
    x = np.arange(4.0)[:, None]
    assert resample_cycle(x, 8).ravel().tolist() == [0, 0.5, 1, 1.5, 2, 2.5, 3, 1.5]
    assert resample_cycle(x, 4) is x
    y = resample_cycle(np.arange(8.0), 4)
    assert y.tolist() == [0, 2, 4, 6] and y.dtype == np.float64
    assert resample_cycle(np.zeros((3, 2, 2), np.float32), 5).shape == (5, 2, 2)
