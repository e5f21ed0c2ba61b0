"""The A4C centreline tracker (streamer.measure.tracking) on the synthetic horseshoe: bad
input, both position-measurement modes, the mask's pull against a biased flow, warm-up.
The filter underneath is tested in test_kalman.py."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from streamer.measure import tracking as T
from streamer.measure.kalman import KalmanConfig, PointTracker
from streamer.measure.synthetic import Horseshoe
from streamer.measure.tracking import CentrelineTracker, TrackerConfig


@pytest.fixture(scope="module", autouse=True)
def _compiled():
    T.warmup()


def test_tracker_config_extends_the_filter_config():
    """TrackerConfig is the filter's noise model plus the A4C rules: the same noise fields
    in the same (positional) order, the same defaults but the position noise (a network's
    mask centreline is a coarser measurement), and a PointTracker takes it as is."""
    kf = [f.name for f in dataclasses.fields(KalmanConfig)]
    tc = [f.name for f in dataclasses.fields(TrackerConfig)]
    assert tc[:len(kf)] == kf and "wall_pull" in tc and "wall_pull" not in kf
    cfg = TrackerConfig()
    assert isinstance(cfg, KalmanConfig)
    assert cfg.position_std_mm == 0.6 and KalmanConfig().position_std_mm == 0.3
    same = TrackerConfig(position_std_mm=KalmanConfig().position_std_mm)
    assert np.array_equal(same.R(), KalmanConfig().R())
    assert np.array_equal(same.P0(True), KalmanConfig().P0(True))
    assert CentrelineTracker(cfg).tracker.config is cfg
    assert isinstance(CentrelineTracker().tracker, PointTracker)


# --------------------------------------------------------------------------------------
# acceptance 4: bad input through the frame-level tracker
# --------------------------------------------------------------------------------------


def test_centreline_tracker_bad_input():
    hs = Horseshoe()
    sp = hs.spacing_mm
    tr = CentrelineTracker()
    t = [0.0, 0.02, 0.04, 0.06, 0.08, 0.10, 0.12, 0.14, 0.66, 0.68, 0.70]
    results = []
    for k, tk in enumerate(t):
        mask = hs.mask(tk)
        flow = hs.flow(t[k - 1], tk) if k else None
        if k == 2:
            mask = np.zeros_like(mask)  # empty
        if k == 4:
            mask = mask.copy()
            mask[5:60, 5:40] = 1  # a second large component
        if k == 5:
            flow = flow.copy()
            flow[100:256, :] = np.nan  # NaN flow over the basal half
        if k == 6:
            mask = np.ones_like(mask)  # broken: no cavity
        results.append(tr.step(mask, flow, tk, sp))
    f = [r.flags for r in results]
    assert results[0].valid and "reinitialised" in f[0]
    assert results[1].valid and f[1] == []
    assert not results[2].valid and "empty_mask" in f[2] and np.all(np.isnan(results[2].points_mm))
    assert results[3].valid and "reinitialised" in f[3]
    assert results[4].valid and "two_components" in f[4]
    assert results[5].valid and "nan_flow" in f[5]
    assert np.all(np.isfinite(results[5].points_mm))
    assert not results[6].valid and "broken_mask" in f[6]
    assert results[7].valid and "reinitialised" in f[7]
    # a 0.52 s gap: the interval is bad, the frame is good -> restart from this frame
    assert results[8].valid and "dt_jump" in f[8] and "reinitialised" in f[8]
    assert results[9].valid and f[9] == []
    assert results[10].valid and f[10] == []
    # tracking is right again after re-initialisation: on the true midline, right length
    # (the points restart equally spaced, so they are not the ED material points)
    from streamer.measure.centerline import project_onto_polyline
    from streamer.measure.strain import polyline_length

    true_mm = hs.points_mm(np.linspace(0, 1, 4000), t[10])
    proj, _ = project_onto_polyline(results[10].points_mm, true_mm)
    assert np.hypot(*(proj - results[10].points_mm).T).max() < 0.3
    assert abs(polyline_length(results[10].points_mm) / polyline_length(true_mm) - 1) < 0.005


def test_centreline_tracker_arclength_mode_and_no_flow():
    hs = Horseshoe()
    tr = CentrelineTracker(TrackerConfig(position_measurement="arclength"))
    assert tr.mode == "arclength" == TrackerConfig().position_measurement
    r0 = tr.step(hs.mask(0.0), None, 0.0, hs.spacing_mm)
    r1 = tr.step(hs.mask(0.02), None, 0.02, hs.spacing_mm)
    assert r0.valid and r1.valid and "no_flow" in r1.flags
    with pytest.raises(ValueError, match="position_measurement 'nope' is unknown"):
        TrackerConfig(position_measurement="nope")


def test_warmup_is_idempotent_and_fast_afterwards():
    T.warmup()
    assert T.warmup() == 0.0


# --------------------------------------------------------------------------------------
# the mask keeps a biased flow from dragging the centreline away over many beats
# --------------------------------------------------------------------------------------


def test_centreline_tracker_bounded_drift_with_biased_flow():
    """Five beats of the horseshoe with a systematically wrong flow (0.15 px/frame =
    0.06 mm/frame towards the base everywhere, on top of the true motion): flow alone
    carries the basal ends ~20 mm off the wall within two beats; with the mask's pull (the
    ends every frame, the interior across the wall near ED and along it with the ends'
    lasting correction, ``end_follow``) the ends stay within ~0.6 mm of where the mask
    ends and every point within ~1.3 mm of the mask's centreline, in the last beat no
    worse than in the second.  The default tracker (``arclength``: each point measured on
    the mask's centreline) stays within 0.5 mm throughout."""
    from streamer.measure.centerline import project_onto_polyline

    hs = Horseshoe()
    sp = np.asarray(hs.spacing_mm)
    t = np.arange(0.0, 5.0, 0.04)
    masks = [hs.mask(tk) for tk in t]
    flows = [None] + [hs.flow(t[k - 1], t[k]) + np.float32([0.0, 0.15])
                      for k in range(1, len(t))]

    def run(cfg):
        tr = CentrelineTracker(cfg)
        ends, off = np.zeros(len(t)), np.zeros(len(t))
        prev = None
        for k, tk in enumerate(t):
            r = tr.step(masks[k], flows[k], tk, sp)
            assert r.valid
            m = r.measured_points_mm
            ends[k] = max(np.hypot(*(r.points_mm[0] - m[0])), np.hypot(*(r.points_mm[-1] - m[-1])))
            proj, _ = project_onto_polyline(r.points_mm, m)
            off[k] = np.hypot(*(proj - r.points_mm).T).max()
            prev = r
        assert prev is not None
        per_beat = [(ends[(t >= b) & (t < b + 1)].max(), off[(t >= b) & (t < b + 1)].max())
                    for b in range(5)]
        return np.array(per_beat)

    pulled = run(TrackerConfig(position_measurement="projection", position_std_mm=0.3))
    print("per beat: max end offset, max offset from the mask centreline (mm)\n", np.round(pulled, 2))
    assert pulled[:, 0].max() < 1.0 and pulled[:, 1].max() < 1.6
    assert pulled[4, 0] <= pulled[1, 0] + 0.1 and pulled[4, 1] <= pulled[1, 1] + 0.2
    # the same flow without the mask's pull drifts away (what the test guards against)
    free = run(TrackerConfig(position_measurement="projection", wall_pull=0.0, end_pull=0.0))
    assert free[4, 0] > 10.0
    # the default measures every point on the mask's centreline: the bias cannot build up
    held = run(TrackerConfig())
    print("default (arclength):\n", np.round(held, 2))
    assert held.max() < 0.5
