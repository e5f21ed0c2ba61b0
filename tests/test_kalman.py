"""The numba Kalman filter (streamer.measure.kalman) against filterpy, PointTracker and the
RTS smoother: x and P to 1e-9, the packed hot path bit for bit, noise reduction, dt checks."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from filterpy.common import Q_continuous_white_noise
from filterpy.kalman import KalmanFilter
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streamer.measure import kalman as K
from streamer.measure.kalman import (
    H_MATRIX,
    KalmanConfig,
    PointTracker,
    kf_step,
    measurement_matrix,
    rts_smooth,
    transition_matrices,
)
from streamer.measure.synthetic import Horseshoe

TOL = 1e-9


@pytest.fixture(scope="module", autouse=True)
def _compiled():
    K.warmup()


def close(a, b, tol=TOL):
    """Normwise relative agreement: max |a - b| <= tol * max(1, max |b|)."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    return float(np.max(np.abs(a - b))) <= tol * max(1.0, float(np.max(np.abs(b))))


def random_spd(rng, n, scales):
    A = rng.normal(size=(n, n))
    C = A @ A.T + n * np.eye(n)
    d = 1.0 / np.sqrt(np.diag(C))
    C = C * np.outer(d, d)  # correlation matrix
    return C * np.outer(scales, scales)


def filterpy_bank(x0, P0, R):
    kfs = []
    for n in range(x0.shape[0]):
        kf = KalmanFilter(dim_x=6, dim_z=4)
        kf.x = x0[n].reshape(6, 1).copy()
        kf.P = P0[n].copy()
        kf.R = R.copy()
        kf.H = H_MATRIX.copy()
        kfs.append(kf)
    return kfs


def filterpy_step(kfs, dt, q, z, valid, R, h=0.0):
    H = measurement_matrix(h)
    F = np.eye(6)
    F[0, 2] = F[1, 3] = F[2, 4] = F[3, 5] = dt
    F[0, 4] = F[1, 5] = 0.5 * dt * dt
    Q = Q_continuous_white_noise(dim=3, dt=dt, spectral_density=q, block_size=2, order_by_dim=False)
    for n, kf in enumerate(kfs):
        kf.predict(F=F, Q=Q)
        kf.H = H
        idx = np.flatnonzero(valid[n] & np.isfinite(z[n]))
        if len(idx) == 4:
            kf.update(z[n])
        elif len(idx) == 0:
            kf.update(None)
        else:
            kf.update(z[n, idx].reshape(-1, 1), R=R[np.ix_(idx, idx)], H=H[idx])
    return F, Q


# --------------------------------------------------------------------------------------
# acceptance 1: numba == filterpy to 1e-9
# --------------------------------------------------------------------------------------


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32 - 1),
       n_points=st.integers(1, 7),
       dts=st.lists(st.floats(1e-3, 0.12), min_size=1, max_size=12),
       p_missing=st.sampled_from([0.0, 0.15, 0.5, 1.0]),
       coupled_P0=st.sampled_from(["none", "some", "all"]),
       coupled_R=st.booleans(),
       log_q=st.floats(2.0, 8.0),
       mean_velocity=st.booleans())
def test_numba_equals_filterpy(seed, n_points, dts, p_missing, coupled_P0, coupled_R, log_q,
                               mean_velocity):
    """Same F, H, Q, R, P0 and measurements: same x and P after every step, including
    missing components (per point, per component, and whole points), uneven dt, both
    measurement models (instantaneous velocity, H = [I 0]; mean velocity over the interval,
    velocity rows [0, I, -dt/2 I]) and both kernel paths (axis-decoupled, general 6-state)."""
    rng = np.random.default_rng(seed)
    q = 10.0**log_q
    sp, sv = rng.uniform(0.05, 1.0), rng.uniform(0.5, 20.0)
    R = random_spd(rng, 4, [sp, sp, sv, sv]) if coupled_R else np.diag([sp, sp, sv, sv]) ** 2
    scales = [0.5, 0.5, 30.0, 30.0, 500.0, 500.0]
    P0 = np.tile(np.diag(np.square(scales)), (n_points, 1, 1))
    for i in range(n_points):  # axis-coupled covariances take the general 6-state path
        if coupled_P0 == "all" or (coupled_P0 == "some" and rng.random() < 0.5):
            P0[i] = random_spd(rng, 6, scales)
    x = np.column_stack([rng.uniform(0, 100, (n_points, 2)), rng.normal(0, 30, (n_points, 2)),
                         rng.normal(0, 300, (n_points, 2))])
    P = P0.copy()
    kfs = filterpy_bank(x, P0, R)
    truth = x.copy()
    for dt in dts:
        truth[:, :2] += dt * truth[:, 2:4]
        z = truth[:, :4] + rng.normal(0, 1, (n_points, 4)) * [sp, sp, sv, sv]
        valid = rng.random((n_points, 4)) >= p_missing
        nan_here = rng.random((n_points, 4)) < 0.1 * p_missing  # NaN also means missing
        z[nan_here] = np.nan
        h = 0.5 * dt if mean_velocity else 0.0
        kf_step(x, P, z, valid, dt, q, R, h)
        filterpy_step(kfs, dt, q, z, valid, R, h)
        X = np.stack([k.x.ravel() for k in kfs])
        PP = np.stack([k.P for k in kfs])
        assert close(x, X), np.max(np.abs(x - X))
        assert close(P, PP), np.max(np.abs(P - PP))


def test_predict_update_split_equals_step():
    rng = np.random.default_rng(3)
    cfg = KalmanConfig()
    n = 120
    x0 = np.column_stack([rng.uniform(0, 100, (n, 2)), np.zeros((n, 4))])
    P0 = np.tile(cfg.P0(False), (n, 1, 1))
    z = x0[:, :4] + rng.normal(0, 0.3, (n, 4))
    valid = rng.random((n, 4)) > 0.1
    xa, Pa = x0.copy(), P0.copy()
    xb, Pb = x0.copy(), P0.copy()
    K.kf_step(xa, Pa, z, valid, 0.021, cfg.jerk_psd_mm2_s5, cfg.R())
    K.kf_predict(xb, Pb, 0.021, cfg.jerk_psd_mm2_s5)
    K.kf_update(xb, Pb, z, valid, cfg.R())
    assert np.array_equal(xa, xb) and np.array_equal(Pa, Pb)


@pytest.mark.parametrize("coupled", [False, True])
def test_packed_kf_frame_is_bit_identical_to_kf_step(coupled):
    """The per-frame hot path (kf_frame through FrameKalman's compiled entry point, packed
    arguments, NaN = missing) gives exactly kf_step's x and P: fast path, general path
    (axis-coupled P) and missing components; and so matches filterpy like kf_step does."""
    rng = np.random.default_rng(5)
    cfg = KalmanConfig()
    n, q, R = 120, cfg.jerk_psd_mm2_s5, cfg.R()
    x0 = np.column_stack([rng.uniform(0, 100, (n, 2)), np.zeros((n, 4))])
    P0 = np.tile(cfg.P0(False), (n, 1, 1))
    if coupled:
        P0[::3] = random_spd(rng, 6, [0.3, 0.3, 10.0, 10.0, 200.0, 200.0])
    xa, Pa, xb, Pb = x0.copy(), P0.copy(), x0.copy(), P0.copy()
    kfs = filterpy_bank(x0, P0, R)
    fk = K.FrameKalman(n, q, R)
    for k in range(30):
        z = xa[:, :4] + rng.normal(0, 0.3, (n, 4))
        if k % 4 == 1:
            z[rng.random((n, 4)) < 0.1] = np.nan
        dt = 0.02 + rng.uniform(-0.004, 0.004)
        h = 0.5 * dt
        ra = kf_step(xa, Pa, z, np.isfinite(z), dt, q, R, h)
        fk.z[:] = z
        rb = fk(xb, Pb, dt, h)
        assert (ra == 0) == (rb == 0) and np.array_equal(xa, xb) and np.array_equal(Pa, Pb), k
        filterpy_step(kfs, dt, q, z, np.isfinite(z), R, h)
    assert close(xb, np.stack([kf.x.ravel() for kf in kfs]))
    assert close(Pb, np.stack([kf.P for kf in kfs]))


def test_transition_matrices_match_filterpy():
    for dt in (0.001, 0.0167, 0.04, 0.2):
        F, Q = transition_matrices(dt, 3e6)
        Qf = Q_continuous_white_noise(dim=3, dt=dt, spectral_density=3e6, block_size=2,
                                      order_by_dim=False)
        assert np.allclose(Q, Qf, rtol=1e-14, atol=0)
        assert F[0, 2] == dt and F[0, 4] == 0.5 * dt * dt and F[2, 4] == dt


def test_missing_everything_is_predict_only():
    cfg = KalmanConfig()
    x = np.array([[10.0, 20.0, 5.0, -3.0, 100.0, 50.0]])
    P = cfg.P0(True)[None].copy()
    xe, Pe = x.copy(), P.copy()
    K.kf_predict(xe, Pe, 0.03, cfg.jerk_psd_mm2_s5)
    z = np.full((1, 4), np.nan)
    K.kf_step(x, P, z, np.ones((1, 4), bool), 0.03, cfg.jerk_psd_mm2_s5, cfg.R())
    assert np.array_equal(x, xe) and np.array_equal(P, Pe)
    assert x[0, 0] == pytest.approx(10 + 0.03 * 5 + 0.5 * 0.03**2 * 100)


# --------------------------------------------------------------------------------------
# RTS smoother
# --------------------------------------------------------------------------------------


def test_rts_equals_filterpy():
    rng = np.random.default_rng(7)
    cfg = KalmanConfig()
    q = cfg.jerk_psd_mm2_s5
    n, steps = 3, 25
    R = cfg.R()
    tracker = PointTracker(n, cfg, record=True)
    x0 = rng.uniform(0, 100, (n, 2))
    tracker.initialise(x0)
    kfs = filterpy_bank(tracker.x.copy(), tracker.P.copy(), R)
    Fs, Qs = [np.eye(6)], [np.zeros((6, 6))]
    truth = tracker.x.copy()
    for _ in range(steps):
        dt = rng.uniform(0.01, 0.05)
        truth[:, :2] += dt * 20
        z = np.column_stack([truth[:, :2] + rng.normal(0, 0.3, (n, 2)), np.full((n, 2), 20.0)])
        valid = rng.random((n, 4)) > 0.2
        tracker.step(dt, z, valid)
        F, Q = filterpy_step(kfs, dt, q, z, valid, R)
        Fs.append(F)
        Qs.append(Q)
    xs, Ps, dts = tracker.history()
    xs_s, Ps_s = tracker.smooth()
    for i in range(n):
        Xf = xs[:, i, :, None]
        xr, Pr, _, _ = kfs[i].rts_smoother(Xf, Ps[:, i], Fs=Fs, Qs=Qs)
        assert close(xs_s[:, i], xr[..., 0])
        assert close(Ps_s[:, i], Pr)
    # smoothing reduces the posterior variance
    assert np.all(Ps_s[:-1, :, 0, 0] <= Ps[:-1, :, 0, 0] + 1e-12)
    assert np.array_equal(rts_smooth(xs, Ps, dts, q)[0], xs_s)


# --------------------------------------------------------------------------------------
# acceptance 3: noise is reduced, not amplified
# --------------------------------------------------------------------------------------


def test_filter_reduces_measurement_noise():
    hs = Horseshoe()
    rng = np.random.default_rng(11)
    u = np.linspace(0, 1, 120)
    t = np.cumsum(np.r_[0.0, 0.02 + rng.uniform(-0.004, 0.004, 99)])
    sp, sv = 0.4, 6.0  # mm, mm/s: noise added to the measurements
    cfg = KalmanConfig(position_std_mm=sp, velocity_std_mm_s=sv)
    tr = PointTracker(120, cfg)
    raw_err, filt_err, truth_pts, raw_pts, filt_pts = [], [], [], [], []
    for k, tk in enumerate(t):
        p = hs.points_mm(u, tk)
        v = hs.velocity_mm_s(u, tk)
        zp = p + rng.normal(0, sp, p.shape)
        zv = v + rng.normal(0, sv, v.shape)
        if k == 0:
            tr.initialise(zp, zv)
            out = tr.positions_mm
        else:
            out = tr.step(t[k] - t[k - 1], np.column_stack([zp, zv]))
        if k >= 5:  # after the start-up transient
            raw_err.append(zp - p)
            filt_err.append(out - p)
        truth_pts.append(p)
        raw_pts.append(zp)
        filt_pts.append(out)
    rms_raw = np.sqrt(np.mean(np.square(raw_err)))
    rms_filt = np.sqrt(np.mean(np.square(filt_err)))
    assert rms_filt < 0.6 * rms_raw, (rms_raw, rms_filt)
    # ... and so is the strain computed from the points
    from streamer.measure.strain import polyline_length, strain_pct

    # second beat, l0 at its ED (the first frame is the unfiltered initialisation)
    ed = int(np.argmin(np.abs(t - hs.period_s)))

    def gls(pts):
        L = polyline_length(np.asarray(pts)[ed:])
        return strain_pct(L, L[0])

    g_true = gls(truth_pts)
    e_raw = np.sqrt(np.mean((gls(raw_pts) - g_true) ** 2))
    e_filt = np.sqrt(np.mean((gls(filt_pts) - g_true) ** 2))
    print(f"RMS point error raw {rms_raw:.3f} mm, filtered {rms_filt:.3f} mm; "
          f"RMS GLS error raw {e_raw:.3f} %, filtered {e_filt:.3f} %")
    assert e_filt < 0.5 * e_raw, (e_raw, e_filt)


# --------------------------------------------------------------------------------------
# PointTracker bookkeeping
# --------------------------------------------------------------------------------------


def test_point_tracker_dt_checks():
    tr = PointTracker(4, KalmanConfig())
    out = tr.step(0.02, np.zeros((4, 4)))
    assert "not_initialised" in tr.flags and np.all(np.isnan(out))
    tr.initialise(np.zeros((4, 2)))
    for _ in range(5):
        tr.step(0.02, np.zeros((4, 4)))
        assert tr.flags == []
    tr.step(0.07, np.zeros((4, 4)))  # 3.5x the usual interval: flagged, still tracked
    assert tr.flags == ["dt_jump"] and not tr.needs_reinit
    for bad in (0.0, -0.01, float("nan"), 1.0):
        tr.initialise(np.zeros((4, 2)))
        out = tr.step(bad, np.zeros((4, 4)))
        assert "dt_jump" in tr.flags and tr.needs_reinit and np.all(np.isnan(out))


def test_point_tracker_validates_shape():
    tr = PointTracker(5)
    with pytest.raises(ValueError):
        tr.initialise(np.zeros((4, 2)))


def test_warmup_is_idempotent():
    K.warmup()
    assert K.warmup() == 0.0
    assert set(K.warmup_breakdown_s) == {"kalman", "rts"}


def test_filter_module_stands_alone():
    """The filter imports no A4C policy (no cycle with tracking.py) and nothing else of the
    side-car: a fresh interpreter importing it loads no other cardiostream module."""
    code = ("import sys, streamer.measure.kalman; "
            "print(' '.join(sorted(m for m in sys.modules "
            "if m.split('.')[0] in ('streamer', 'engines', 'calib'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[1]).stdout.split()
    assert out == ["streamer", "streamer.measure", "streamer.measure.kalman"], out
