"""Batched constant-acceleration Kalman filter for tracked points (numba), and PointTracker.

Generic point tracking, no anatomy: N independent points, each with a constant-acceleration
state, filtered in one numba call per frame.  Nothing here knows about views, walls or the
A4C centreline; that policy (:class:`.tracking.CentrelineTracker`) is built on top of this
module, and any other tracker (e.g. for MR) can reuse the filter the same way.  Arrays in,
arrays out (numpy and numba only).  The reference in the tests is filterpy
(``filterpy.kalman.KalmanFilter`` and its ``rts_smoother``): x and P agree to 1e-9
(tests/test_kalman.py).

Layers
------
- :func:`kf_batch` (and :func:`kf_step`, :func:`kf_predict`, :func:`kf_update` around it):
  one ``@njit(cache=True, nogil=True)`` call filters all N points of a frame in place.
- :func:`kf_frame` + :class:`FrameKalman`: the per-frame hot path - the same arithmetic as
  ``kf_batch(..., True, True)`` bit for bit, with packed arguments (x, P and one buffer
  holding z, dt, q, h and R; NaN = missing) called through the compiled entry point of its
  one specialisation, so the call skips numba's type dispatch (~20 us for 10 arguments
  after other Python work, vs ~8 us for this call).  PointTracker.step uses it.
- :class:`PointTracker` + :class:`KalmanConfig`: x and P for N points, noise in physical
  units, dt checks, re-initialisation flags, optional history for the RTS smoother.
- :func:`rts_smooth`: offline Rauch-Tung-Striebel smoother over stored posteriors.
- :func:`warmup`: compiles (or loads from cache) the filter kernels and the smoother.

State and measurement
---------------------
Every point n carries its own state and covariance::

    x[n] = [x, y, vx, vy, ax, ay]        (mm, mm/s, mm/s^2)
    z[n] = [x, y, vx, vy]                (mm, mm/s)
    H    = [I_4 | 0]

**Convention: the filter's x is the image row and y the image column** (both in mm),
i.e. the same order as ``points_mm`` (N x [row, col]) everywhere else in cardiostream, so
no axis swap happens anywhere in the data path.  (The dense flow field uses OpenCV's
channel order (dx=d_col, dy=d_row); :mod:`streamer.measure.sampling` swaps it once.)

Motion model: per axis a constant-acceleration model driven by continuous white-noise jerk
with spectral density ``q`` in mm^2/s^5 (``KalmanConfig.jerk_psd_mm2_s5``)::

    F(dt) = [[1, dt, dt^2/2], [0, 1, dt], [0, 0, 1]]
    Q(dt) = q * [[dt^5/20, dt^4/8, dt^3/6],
                 [dt^4/8,  dt^3/3, dt^2/2],
                 [dt^3/6,  dt^2/2, dt    ]]

interleaved over the two axes (order_by_dim=False in filterpy's terms).  Over a time T the
acceleration then random-walks with a standard deviation of sqrt(q*T) mm/s^2: q = 1e7
means about 1000 mm/s^2 per 100 ms.  F and Q are rebuilt from ``dt`` (seconds) on every
step, so uneven frame intervals are exact.

R is diagonal from ``position_std_mm`` and ``velocity_std_mm_s``.

Update: K = P H' S^-1 and the Joseph form P = (I - K H) P (I - K H)' + K R K' (evaluated
as B + (K R - B H') K' with B = (I - K H) P, the same product), i.e. filterpy's
``KalmanFilter.predict`` then ``update``, which the tests use as the reference to 1e-9.
No np.linalg anywhere: in the general 6-state path the (up to) 4x4 S is factorised by a
written-out Cholesky; in the axis-decoupled path (taken whenever P and R have no row/col
cross terms, which the physical model keeps for ever) each axis has a 2x2 (or 1x1) S
inverted in closed form.

Missing measurements: ``valid`` is a boolean (N, 4) mask (or NaN in z); an invalid
component is simply dropped from H, z and R for that point; with no valid component the
point is only predicted.

Offline: :func:`rts_smooth` is the Rauch-Tung-Striebel smoother over stored posteriors
(filterpy's ``rts_smoother`` convention: the transition into step k uses ``dts[k]``).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numba
import numpy as np
from numba import njit

DIM_X = 6
DIM_Z = 4


# --------------------------------------------------------------------------------------
# numba kernels (hot path: no np.linalg, no allocation per point)
# --------------------------------------------------------------------------------------
#
# Two code paths give the same result:
# - the general 6-state path (any P, any R), and
# - the axis-decoupled path, taken for a point whenever its P has no row/col cross terms
#   (exact zeros) and R has none either.  F and Q never couple the axes, so with the
#   physical R and P0 of KalmanConfig every point stays on this path for ever: two
#   3-state filters with a 2-component measurement each, ~4x less arithmetic.  Zeros are
#   preserved exactly by the general algebra as well, so both paths agree to rounding.


@njit(cache=True, nogil=True)
def _fill_FQ(F, Q, dt, q):
    """Fill 6x6 F and Q for the interleaved CA model [x, y, vx, vy, ax, ay]."""
    dt2 = dt * dt
    dt3 = dt2 * dt
    dt4 = dt3 * dt
    dt5 = dt4 * dt
    f = np.empty((3, 3))
    f[0, 0] = 1.0
    f[0, 1] = dt
    f[0, 2] = 0.5 * dt2
    f[1, 0] = 0.0
    f[1, 1] = 1.0
    f[1, 2] = dt
    f[2, 0] = 0.0
    f[2, 1] = 0.0
    f[2, 2] = 1.0
    qa = np.empty((3, 3))
    qa[0, 0] = dt5 / 20.0
    qa[0, 1] = dt4 / 8.0
    qa[0, 2] = dt3 / 6.0
    qa[1, 1] = dt3 / 3.0
    qa[1, 2] = dt2 / 2.0
    qa[2, 2] = dt
    qa[1, 0] = qa[0, 1]
    qa[2, 0] = qa[0, 2]
    qa[2, 1] = qa[1, 2]
    for i in range(6):
        for j in range(6):
            if (i & 1) == (j & 1):
                F[i, j] = f[i >> 1, j >> 1]
                Q[i, j] = q * qa[i >> 1, j >> 1]
            else:
                F[i, j] = 0.0
                Q[i, j] = 0.0


@njit(cache=True, nogil=True, inline="always")
def _cross_free(A, n):
    """True if A (n x n, interleaved axes) has exact zeros in every cross-axis entry."""
    for i in range(n):
        for j in range(i + 1, n, 2):
            if A[i, j] != 0.0 or A[j, i] != 0.0:
                return False
    return True


# ---- general 6-state path -------------------------------------------------------------


@njit(cache=True, nogil=True)
def _predict_point(xn, Pn, F, Q, FP, tmp):
    # x = F x  (F[i, j] != 0 only for j in {i, i+2, i+4})
    for i in range(6):
        s = 0.0
        for k in range(i, 6, 2):
            s += F[i, k] * xn[k]
        tmp[i] = s
    for i in range(6):
        xn[i] = tmp[i]
    # P = F P F' + Q
    for i in range(6):
        for j in range(6):
            s = 0.0
            for k in range(i, 6, 2):
                s += F[i, k] * Pn[k, j]
            FP[i, j] = s
    for i in range(6):
        for j in range(6):
            s = 0.0
            for k in range(j, 6, 2):
                s += FP[i, k] * F[j, k]
            Pn[i, j] = s + Q[i, j]


@njit(cache=True, nogil=True)
def _update_point(xn, Pn, zn, R, idx, m, h, Hm, PHT, L, w, K, B, D):
    """Kalman update of one point with the m measurement components idx[:m]: z[c] measures
    x[c] for a position (c < 2), x[c] - h x[c+2] for a velocity (c >= 2).  Returns False,
    leaving x and P untouched, if S is not positive definite."""
    for k in range(m):
        for j in range(6):
            Hm[k, j] = 0.0
        Hm[k, idx[k]] = 1.0
        if idx[k] >= 2:
            Hm[k, idx[k] + 2] = -h
    for i in range(6):  # P H'
        for k in range(m):
            s = 0.0
            for j in range(6):
                s += Pn[i, j] * Hm[k, j]
            PHT[i, k] = s
    # Cholesky S = L L' of S = H P H' + R (lower triangle)
    for j in range(m):
        for i in range(j, m):
            s = R[idx[i], idx[j]]
            for l in range(6):
                s += Hm[i, l] * PHT[l, j]
            for k in range(j):
                s -= L[i, k] * L[j, k]
            if i == j:
                if not s > 0.0:
                    return False
                L[j, j] = math.sqrt(s)
            else:
                L[i, j] = s / L[j, j]
    # K = P H' S^-1, row by row: S K[i, :]' = (P H')[i, :]'  (forward, then back substitution)
    for i in range(6):
        for k in range(m):
            s = PHT[i, k]
            for l in range(k):
                s -= L[k, l] * w[l]
            w[k] = s / L[k, k]
        for k in range(m - 1, -1, -1):
            s = w[k]
            for l in range(k + 1, m):
                s -= L[l, k] * K[i, l]
            K[i, k] = s / L[k, k]
    # x = x + K (z - H x)
    for k in range(m):
        s = zn[idx[k]]
        for j in range(6):
            s -= Hm[k, j] * xn[j]
        w[k] = s
    for i in range(6):
        s = 0.0
        for k in range(m):
            s += K[i, k] * w[k]
        xn[i] += s
    # Joseph form, factorised: with A = I - K H,
    #   A P A' + K R K' = B + (K R - B H') K',   B = A P = P - K (H P)
    for i in range(6):
        for j in range(6):
            s = Pn[i, j]
            for k in range(m):
                t = 0.0
                for l in range(6):
                    t += Hm[k, l] * Pn[l, j]
                s -= K[i, k] * t
            B[i, j] = s
    for i in range(6):
        for l in range(m):
            s = 0.0
            for j in range(6):
                s -= B[i, j] * Hm[l, j]
            for k in range(m):
                s += K[i, k] * R[idx[k], idx[l]]
            D[i, l] = s
    for i in range(6):
        for j in range(6):
            s = B[i, j]
            for k in range(m):
                s += D[i, k] * K[j, k]
            Pn[i, j] = s
    return True


# ---- axis-decoupled path: per axis a, state indices (a, a+2, a+4) ------------------------


@njit(cache=True, nogil=True, inline="always")
def _predict_axis(xn, Pn, a, f01, f02, q00, q01, q02, q11, q12, q22):
    i0 = a
    i1 = a + 2
    i2 = a + 4
    x0 = xn[i0]
    x1 = xn[i1]
    x2 = xn[i2]
    xn[i0] = x0 + f01 * x1 + f02 * x2
    xn[i1] = x1 + f01 * x2
    p00 = Pn[i0, i0]
    p01 = Pn[i0, i1]
    p02 = Pn[i0, i2]
    p10 = Pn[i1, i0]
    p11 = Pn[i1, i1]
    p12 = Pn[i1, i2]
    p20 = Pn[i2, i0]
    p21 = Pn[i2, i1]
    p22 = Pn[i2, i2]
    # rows of F P
    a00 = p00 + f01 * p10 + f02 * p20
    a01 = p01 + f01 * p11 + f02 * p21
    a02 = p02 + f01 * p12 + f02 * p22
    a10 = p10 + f01 * p20
    a11 = p11 + f01 * p21
    a12 = p12 + f01 * p22
    # (F P) F' + Q
    Pn[i0, i0] = a00 + f01 * a01 + f02 * a02 + q00
    Pn[i0, i1] = a01 + f01 * a02 + q01
    Pn[i0, i2] = a02 + q02
    Pn[i1, i0] = a10 + f01 * a11 + f02 * a12 + q01
    Pn[i1, i1] = a11 + f01 * a12 + q11
    Pn[i1, i2] = a12 + q12
    Pn[i2, i0] = p20 + f01 * p21 + f02 * p22 + q02
    Pn[i2, i1] = p21 + f01 * p22 + q12
    Pn[i2, i2] = p22 + q22


@njit(cache=True, nogil=True)
def _update_axis(xn, Pn, zn, R, a, ok_pos, ok_vel, h):
    """Update axis a with its position (z[a]) and/or velocity (z[a+2]) measurement;
    the velocity row of H is [0, 1, -h] (h = 0: instantaneous velocity).

    Written out in scalars (S is 1x1 or 2x2, inverted in closed form); Joseph-form
    covariance P = B + (K R - B H') K', B = P - K H P.  Returns False, leaving x and P
    untouched, if S is not positive definite."""
    i0 = a
    i1 = a + 2
    i2 = a + 4
    p00 = Pn[i0, i0]
    p01 = Pn[i0, i1]
    p02 = Pn[i0, i2]
    p10 = Pn[i1, i0]
    p11 = Pn[i1, i1]
    p12 = Pn[i1, i2]
    p20 = Pn[i2, i0]
    p21 = Pn[i2, i1]
    p22 = Pn[i2, i2]
    if ok_pos and ok_vel:
        return _update_axis_full(xn, Pn, zn, R, a, h)
    if ok_pos:
        rjj = R[i0, i0]
        g0 = p00
        g1 = p01
        g2 = p02
        c0 = p00
        c1 = p10
        c2 = p20
        s = g0 + rjj
        if not s > 0.0:
            return False
        k0 = c0 / s
        k1 = c1 / s
        k2 = c2 / s
        y = zn[i0] - xn[i0]
        xn[i0] += k0 * y
        xn[i1] += k1 * y
        xn[i2] += k2 * y
        b00 = p00 - k0 * g0
        b01 = p01 - k0 * g1
        b02 = p02 - k0 * g2
        b10 = p10 - k1 * g0
        b11 = p11 - k1 * g1
        b12 = p12 - k1 * g2
        b20 = p20 - k2 * g0
        b21 = p21 - k2 * g1
        b22 = p22 - k2 * g2
        d0 = k0 * rjj - b00
        d1 = k1 * rjj - b10
        d2 = k2 * rjj - b20
        Pn[i0, i0] = b00 + d0 * k0
        Pn[i0, i1] = b01 + d0 * k1
        Pn[i0, i2] = b02 + d0 * k2
        Pn[i1, i0] = b10 + d1 * k0
        Pn[i1, i1] = b11 + d1 * k1
        Pn[i1, i2] = b12 + d1 * k2
        Pn[i2, i0] = b20 + d2 * k0
        Pn[i2, i1] = b21 + d2 * k1
        Pn[i2, i2] = b22 + d2 * k2
        return True
    if ok_vel:
        rjj = R[i1, i1]
        g0 = p10 - h * p20
        g1 = p11 - h * p21
        g2 = p12 - h * p22
        c0 = p01 - h * p02
        c1 = p11 - h * p12
        c2 = p21 - h * p22
        s = g1 - h * g2 + rjj
        if not s > 0.0:
            return False
        k0 = c0 / s
        k1 = c1 / s
        k2 = c2 / s
        y = zn[i1] - (xn[i1] - h * xn[i2])
        xn[i0] += k0 * y
        xn[i1] += k1 * y
        xn[i2] += k2 * y
        b00 = p00 - k0 * g0
        b01 = p01 - k0 * g1
        b02 = p02 - k0 * g2
        b10 = p10 - k1 * g0
        b11 = p11 - k1 * g1
        b12 = p12 - k1 * g2
        b20 = p20 - k2 * g0
        b21 = p21 - k2 * g1
        b22 = p22 - k2 * g2
        d0 = k0 * rjj - (b01 - h * b02)
        d1 = k1 * rjj - (b11 - h * b12)
        d2 = k2 * rjj - (b21 - h * b22)
        Pn[i0, i0] = b00 + d0 * k0
        Pn[i0, i1] = b01 + d0 * k1
        Pn[i0, i2] = b02 + d0 * k2
        Pn[i1, i0] = b10 + d1 * k0
        Pn[i1, i1] = b11 + d1 * k1
        Pn[i1, i2] = b12 + d1 * k2
        Pn[i2, i0] = b20 + d2 * k0
        Pn[i2, i1] = b21 + d2 * k1
        Pn[i2, i2] = b22 + d2 * k2
        return True
    return True


@njit(cache=True, nogil=True, inline="always")
def _update_axis_full(xn, Pn, zn, R, a, h):
    """:func:`_update_axis` with both components valid (the common case), branch-light."""
    i0 = a
    i1 = a + 2
    i2 = a + 4
    p00 = Pn[i0, i0]
    p01 = Pn[i0, i1]
    p02 = Pn[i0, i2]
    p10 = Pn[i1, i0]
    p11 = Pn[i1, i1]
    p12 = Pn[i1, i2]
    p20 = Pn[i2, i0]
    p21 = Pn[i2, i1]
    p22 = Pn[i2, i2]
    r00 = R[i0, i0]
    r01 = R[i0, i1]
    r10 = R[i1, i0]
    r11 = R[i1, i1]
    g00 = p00
    g10 = p10 - h * p20
    g01 = p01
    g11 = p11 - h * p21
    g02 = p02
    g12 = p12 - h * p22
    c00 = p00
    c01 = p01 - h * p02
    c10 = p10
    c11 = p11 - h * p12
    c20 = p20
    c21 = p21 - h * p22
    s00 = g00 + r00
    s01 = g01 - h * g02 + r01
    s10 = g10 + r10
    s11 = g11 - h * g12 + r11
    det = s00 * s11 - s01 * s10
    if not (s00 > 0.0 and det > 0.0):
        return False
    idet = 1.0 / det
    t00 = s11 * idet
    t01 = -s01 * idet
    t10 = -s10 * idet
    t11 = s00 * idet
    k00 = c00 * t00 + c01 * t10
    k01 = c00 * t01 + c01 * t11
    k10 = c10 * t00 + c11 * t10
    k11 = c10 * t01 + c11 * t11
    k20 = c20 * t00 + c21 * t10
    k21 = c20 * t01 + c21 * t11
    y0 = zn[i0] - xn[i0]
    y1 = zn[i1] - (xn[i1] - h * xn[i2])
    xn[i0] += k00 * y0 + k01 * y1
    xn[i1] += k10 * y0 + k11 * y1
    xn[i2] += k20 * y0 + k21 * y1
    b00 = p00 - k00 * g00 - k01 * g10
    b01 = p01 - k00 * g01 - k01 * g11
    b02 = p02 - k00 * g02 - k01 * g12
    b10 = p10 - k10 * g00 - k11 * g10
    b11 = p11 - k10 * g01 - k11 * g11
    b12 = p12 - k10 * g02 - k11 * g12
    b20 = p20 - k20 * g00 - k21 * g10
    b21 = p21 - k20 * g01 - k21 * g11
    b22 = p22 - k20 * g02 - k21 * g12
    d00 = k00 * r00 + k01 * r10 - b00
    d01 = k00 * r01 + k01 * r11 - (b01 - h * b02)
    d10 = k10 * r00 + k11 * r10 - b10
    d11 = k10 * r01 + k11 * r11 - (b11 - h * b12)
    d20 = k20 * r00 + k21 * r10 - b20
    d21 = k20 * r01 + k21 * r11 - (b21 - h * b22)
    Pn[i0, i0] = b00 + d00 * k00 + d01 * k01
    Pn[i0, i1] = b01 + d00 * k10 + d01 * k11
    Pn[i0, i2] = b02 + d00 * k20 + d01 * k21
    Pn[i1, i0] = b10 + d10 * k00 + d11 * k01
    Pn[i1, i1] = b11 + d10 * k10 + d11 * k11
    Pn[i1, i2] = b12 + d10 * k20 + d11 * k21
    Pn[i2, i0] = b20 + d20 * k00 + d21 * k01
    Pn[i2, i1] = b21 + d20 * k10 + d21 * k11
    Pn[i2, i2] = b22 + d20 * k20 + d21 * k21
    return True


@njit(cache=True, nogil=True, inline="always")
def _step_axis_full(xn, Pn, zn, R, a, f01, f02, q00, q01, q02, q11, q12, q22, h):
    """Predict and update axis a with both components valid (both inlined, so numba keeps
    the predicted covariance in registers across the two)."""
    _predict_axis(xn, Pn, a, f01, f02, q00, q01, q02, q11, q12, q22)
    return _update_axis_full(xn, Pn, zn, R, a, h)


# ---- batched entry points ---------------------------------------------------------------


@njit(cache=True, nogil=True, inline="always")
def _count_nonfinite(x):
    bad = 0
    for n in range(x.shape[0]):
        for i in range(x.shape[1]):
            if not abs(x[n, i]) < np.inf:
                bad += 1
                break
    return bad


@njit(cache=True, nogil=True, inline="always")
def _fq_scalars(dt, q):
    """f01, f02, q00, q01, q02, q11, q12, q22 of one axis: the same floating-point
    expressions as :func:`_fill_FQ` (so every path gives bit-identical results)."""
    dt2 = dt * dt
    dt3 = dt2 * dt
    dt4 = dt3 * dt
    dt5 = dt4 * dt
    return (dt, 0.5 * dt2, q * (dt5 / 20.0), q * (dt4 / 8.0), q * (dt3 / 6.0),
            q * (dt3 / 3.0), q * (dt2 / 2.0), q * dt)


@njit(cache=True, nogil=True)
def kf_batch(x, P, z, valid, dt, q, R, h, do_predict, do_update):
    """The batched filter: predict (over dt s, jerk PSD q) and/or update (z, valid, R) all
    N points in place.  Returns 0 when all is well, else a positive count of failed updates
    (S not positive definite; such a point keeps its prior) and of points whose state is
    not finite afterwards.

    x (N, 6) float64, P (N, 6, 6) float64, z (N, 4) float64, valid (N, 4) bool, R (4, 4);
    h (s): the velocity rows of H are [0, I, -h I] - 0 for an instantaneous velocity,
    dt / 2 for the mean velocity over the interval that ends now (a displacement / dt).
    """
    # the per-axis entries of F and Q, exactly as _fill_FQ computes them (no allocation:
    # the work arrays of the general path are made only when that path is taken)
    f01, f02, q00, q01, q02, q11, q12, q22 = _fq_scalars(dt, q)
    decoupled_R = _cross_free(R, 4)
    N = x.shape[0]
    # Fast path: every point axis-decoupled and (if updating) every component valid.
    # Deciding this once per call keeps the per-point loop free of branches (2-3x faster).
    fast = decoupled_R
    if fast:
        acc = 0.0  # branch-free: |cross-axis terms| summed over all points (NaN -> not fast)
        for n in range(N):
            for i in range(6):
                for j in range(i + 1, 6, 2):
                    acc += abs(P[n, i, j]) + abs(P[n, j, i])
        fast = acc == 0.0
    if fast and do_update:
        allv = True
        for n in range(N):
            for c in range(4):
                allv &= valid[n, c] & (abs(z[n, c]) < np.inf)
        fast = allv
    if fast:
        bad = 0
        for n in range(N):
            xn = x[n]
            Pn = P[n]
            zn = z[n] if do_update else xn
            for a in range(2):
                if do_predict and do_update:
                    if not _step_axis_full(xn, Pn, zn, R, a, f01, f02, q00, q01, q02,
                                           q11, q12, q22, h):
                        bad += 1  # counts axes here; only "0 = all well" matters
                elif do_predict:
                    _predict_axis(xn, Pn, a, f01, f02, q00, q01, q02, q11, q12, q22)
                elif not _update_axis_full(xn, Pn, zn, R, a, h):
                    bad += 1
        return bad + _count_nonfinite(x)
    F = np.empty((6, 6))
    Q = np.empty((6, 6))
    _fill_FQ(F, Q, dt, q)
    FP = np.empty((6, 6))
    tmp = np.empty(6)
    idx = np.empty(4, np.int64)
    Hm = np.empty((4, 6))
    PHT = np.empty((6, 4))
    L = np.empty((4, 4))
    w = np.empty(4)
    K = np.empty((6, 4))
    B = np.empty((6, 6))
    D = np.empty((6, 4))
    bad = 0
    for n in range(N):
        xn = x[n]
        Pn = P[n]
        if decoupled_R and _cross_free(Pn, 6):
            ok = True
            for a in range(2):
                if do_predict:
                    _predict_axis(xn, Pn, a, f01, f02, q00, q01, q02, q11, q12, q22)
                if do_update:
                    ok_pos = valid[n, a] and math.isfinite(z[n, a])
                    ok_vel = valid[n, a + 2] and math.isfinite(z[n, a + 2])
                    if ok_pos or ok_vel:
                        ok &= _update_axis(xn, Pn, z[n], R, a, ok_pos, ok_vel, h)
            if not ok:
                bad += 1
            continue
        if do_predict:
            _predict_point(xn, Pn, F, Q, FP, tmp)
        if not do_update:
            continue
        m = 0
        for c in range(4):
            if valid[n, c] and math.isfinite(z[n, c]):
                idx[m] = c
                m += 1
        if m > 0 and not _update_point(xn, Pn, z[n], R, idx, m, h, Hm, PHT, L, w, K, B, D):
            bad += 1
    return bad + _count_nonfinite(x)


# ---- packed entry point: the per-frame hot path ----------------------------------------
#
# A numba dispatcher call costs ~1 us per argument to type and unbox, and much more when
# the interpreter's caches are cold (right after other Python work - the usual case in a
# per-frame pipeline): an empty @njit function with kf_batch's 10 arguments costs ~20 us
# there.  kf_frame takes three arrays - x, P and one measurement buffer that also carries
# dt, q, h and R - and is called through the compiled entry point of its one
# specialisation (FrameKalman), which skips type dispatch.

FRAME_PARAM_ROWS = 5  # rows after the N measurement rows: [dt, q, h, 0], then R (4 rows)


@njit(cache=True, nogil=True)
def kf_frame(x, P, zp):
    """One frame for all N points in place (predict over dt, update), packed arguments.

    zp (N + 5, 4) float64: rows 0..N-1 the measurements z = [row, col, v_row, v_col]
    (NaN = missing); row N = [dt (s), q (mm^2/s^5), h (s), unused]; rows N+1..N+4 = R.
    Same arithmetic as ``kf_batch(x, P, z, isfinite(z), dt, q, R, h, True, True)`` (x and P
    bit for bit); returns 0 when all is well, else a positive count of problems.

    One pass over the points: a point whose P has no cross-axis terms and whose z is
    complete (the physical case, every frame) takes the register-only step at once; any
    other point is noted and filtered afterwards by :func:`kf_batch` on its own."""
    N = x.shape[0]
    dt = zp[N, 0]
    q = zp[N, 1]
    h = zp[N, 2]
    R = zp[N + 1:N + 5]
    decoupled_R = _cross_free(R, 4)
    f01, f02, q00, q01, q02, q11, q12, q22 = _fq_scalars(dt, q)
    bad = 0
    n_slow = 0
    slow = np.empty(0, np.int64)
    for n in range(N):
        Pn = P[n]
        zn = zp[n]
        acc = 0.0  # |cross-axis terms| + 0 * z: zero exactly when decoupled and z finite
        for i in range(6):
            for j in range(i + 1, 6, 2):
                acc += abs(Pn[i, j]) + abs(Pn[j, i])
        for c in range(4):
            acc += 0.0 * zn[c]
        if decoupled_R and acc == 0.0:
            xn = x[n]
            for a in range(2):
                if not _step_axis_full(xn, Pn, zn, R, a, f01, f02, q00, q01, q02, q11, q12,
                                       q22, h):
                    bad += 1
        else:
            if n_slow == 0:
                slow = np.empty(N, np.int64)
            slow[n_slow] = n
            n_slow += 1
    if n_slow:
        Rc = np.ascontiguousarray(R)
        valid = np.empty((1, 4), np.bool_)
        for k in range(n_slow):
            n = slow[k]
            for c in range(4):
                valid[0, c] = math.isfinite(zp[n, c])
            bad += kf_batch(x[n:n + 1], P[n:n + 1], zp[n:n + 1], valid, dt, q, Rc, h, True, True)
    return bad + _count_nonfinite(x)


class FrameKalman:
    """Calls :func:`kf_frame` for N points through its compiled entry point, with a
    preallocated measurement buffer: ``fk = FrameKalman(n, q, R)``, then per frame
    ``fk.z[:] = z`` (NaN = missing) and ``fk(x, P, dt, h)``.  x (N, 6), P (N, 6, 6) float64
    C-contiguous.  No argument checks on this path: it is for callers that hold their
    arrays in the right form (PointTracker, the benchmark)."""

    def __init__(self, n_points: int, q: float, R: np.ndarray):
        n = int(n_points)
        self.n = n
        self.zp = np.zeros((n + FRAME_PARAM_ROWS, 4))
        self.z = self.zp[:n]
        self.zp[n, 1] = float(q)
        self.zp[n + 1:] = np.asarray(R, dtype=np.float64)
        x = np.zeros((n, DIM_X))
        P = np.zeros((n, DIM_X, DIM_X))
        kf_frame(x, P, self.zp)  # compile or load from cache
        sig = tuple(numba.typeof(a) for a in (x, P, self.zp))
        self.entry = kf_frame.overloads[sig].entry_point  # the compiled specialisation
        self._prm = self.zp[n]

    def __call__(self, x: np.ndarray, P: np.ndarray, dt: float, h: float = 0.0) -> int:
        prm = self._prm
        prm[0] = dt
        prm[2] = h
        return self.entry(x, P, self.zp)


_EMPTY_Z = np.empty((0, 4))
_EMPTY_VALID = np.empty((0, 4), dtype=np.bool_)
_EYE4 = np.eye(4)


def kf_predict(x, P, dt, q):
    """Predict all N points in place.  x (N, 6), P (N, 6, 6), dt in s, q in mm^2/s^5."""
    kf_batch(x, P, _EMPTY_Z, _EMPTY_VALID, float(dt), float(q), _EYE4, 0.0, True, False)


def kf_update(x, P, z, valid, R, h=0.0):
    """Update all N points in place with z (N, 4) where valid (N, 4) and z is finite;
    h: velocity lag (see :func:`kf_batch`).  Returns 0 when all is well."""
    return kf_batch(x, P, z, valid, 0.0, 0.0, R, float(h), False, True)


def kf_step(x, P, z, valid, dt, q, R, h=0.0):
    """One frame for all N points, in place: predict over dt (s), then update with z.

    x (N, 6), P (N, 6, 6), z (N, 4), valid (N, 4) bool, q jerk PSD (mm^2/s^5), R (4, 4),
    all float64 / C-contiguous; h velocity lag (s, see :func:`kf_batch`).  One call of the
    compiled :func:`kf_batch`.  Returns 0 when all is well."""
    return kf_batch(x, P, z, valid, float(dt), float(q), R, float(h), True, True)


def measurement_matrix(h: float = 0.0) -> np.ndarray:
    """H (4 x 6) for z = [row, col, v_row, v_col] with a velocity lag h (s)."""
    H = np.hstack([np.eye(4), np.zeros((4, 2))])
    H[2, 4] = H[3, 5] = -h
    return H


H_MATRIX = measurement_matrix(0.0)  # instantaneous velocity: [I_4 | 0]


@njit(cache=True, nogil=True)
def _chol_solve_rows(A, M, out, L, w):
    """out = M A^-1 for symmetric positive definite A (n x n), M (r x n). False if not SPD."""
    n = A.shape[0]
    for j in range(n):
        s = A[j, j]
        for k in range(j):
            s -= L[j, k] * L[j, k]
        if not s > 0.0:
            return False
        d = math.sqrt(s)
        L[j, j] = d
        for i in range(j + 1, n):
            s = A[i, j]
            for k in range(j):
                s -= L[i, k] * L[j, k]
            L[i, j] = s / d
    for i in range(M.shape[0]):
        for k in range(n):
            s = M[i, k]
            for l in range(k):
                s -= L[k, l] * w[l]
            w[k] = s / L[k, k]
        for k in range(n - 1, -1, -1):
            s = w[k]
            for l in range(k + 1, n):
                s -= L[l, k] * out[i, l]
            out[i, k] = s / L[k, k]
    return True


@njit(cache=True, nogil=True)
def rts_smooth(xs, Ps, dts, q):
    """Rauch-Tung-Striebel smoother over a stored sequence of filter posteriors.

    xs (T, N, 6), Ps (T, N, 6, 6): posteriors after each step; dts (T,): dts[k] is the
    interval (s) from step k-1 to step k (dts[0] unused); q: jerk PSD (mm^2/s^5) used by
    the filter.  Returns smoothed copies (xs_s, Ps_s); the last step is unchanged.
    Same algebra as filterpy's ``KalmanFilter.rts_smoother(Xs, Ps, Fs, Qs)``.
    """
    T = xs.shape[0]
    N = xs.shape[1]
    xs_s = xs.copy()
    Ps_s = Ps.copy()
    F = np.empty((6, 6))
    Q = np.empty((6, 6))
    Pp = np.empty((6, 6))
    PFt = np.empty((6, 6))
    FP = np.empty((6, 6))
    Ks = np.empty((6, 6))
    L = np.empty((6, 6))
    w = np.empty(6)
    dx = np.empty(6)
    dP = np.empty((6, 6))
    KdP = np.empty((6, 6))
    for k in range(T - 2, -1, -1):
        _fill_FQ(F, Q, dts[k + 1], q)
        for n in range(N):
            Pk = Ps_s[k, n]
            # Pp = F P F' + Q
            for i in range(6):
                for j in range(6):
                    s = 0.0
                    for l in range(6):
                        s += F[i, l] * Pk[l, j]
                    FP[i, j] = s
            for i in range(6):
                for j in range(6):
                    s = 0.0
                    for l in range(6):
                        s += FP[i, l] * F[j, l]
                    Pp[i, j] = s + Q[i, j]
            # K = P F' Pp^-1
            for i in range(6):
                for j in range(6):
                    s = 0.0
                    for l in range(6):
                        s += Pk[i, l] * F[j, l]
                    PFt[i, j] = s
            if not _chol_solve_rows(Pp, PFt, Ks, L, w):
                continue
            # x[k] += K (x[k+1] - F x[k])
            for i in range(6):
                s = 0.0
                for l in range(6):
                    s += F[i, l] * xs_s[k, n, l]
                dx[i] = xs_s[k + 1, n, i] - s
            for i in range(6):
                s = 0.0
                for l in range(6):
                    s += Ks[i, l] * dx[l]
                xs_s[k, n, i] += s
            # P[k] += K (P[k+1] - Pp) K'
            for i in range(6):
                for j in range(6):
                    dP[i, j] = Ps_s[k + 1, n, i, j] - Pp[i, j]
            for i in range(6):
                for j in range(6):
                    s = 0.0
                    for l in range(6):
                        s += Ks[i, l] * dP[l, j]
                    KdP[i, j] = s
            for i in range(6):
                for j in range(6):
                    s = 0.0
                    for l in range(6):
                        s += KdP[i, l] * Ks[j, l]
                    Pk[i, j] += s
    return xs_s, Ps_s

# --------------------------------------------------------------------------------------
# physical parameterisation
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class KalmanConfig:
    """Noise model of the point tracker, in physical units.

    position_std_mm       std of a segmentation-derived position measurement (per axis)
    velocity_std_mm_s     std of a flow-derived velocity measurement (per axis)
    jerk_psd_mm2_s5       spectral density q of the white-noise jerk driving the model;
                          acceleration random-walks by sqrt(q*T) mm/s^2 over T seconds
                          (1e7: ~1000 mm/s^2 per 100 ms, the scale of basal motion in
                          early systole)
    init_velocity_std_mm_s, init_accel_std_mm_s2
                          prior std of velocity / acceleration at (re-)initialisation when
                          no velocity is given (position prior = position_std_mm, velocity
                          prior = velocity_std_mm_s when a measured velocity is given).
                          Modest on purpose: a wide prior lets the first velocity
                          measurements push the points along the wall, and that start-up
                          drift stays in the regional strain of the first beat.
    max_dt_ratio          an interval larger than this multiple of the recent median
                          interval is flagged ``dt_jump`` (the filter still uses it exactly)
    max_gap_s             an interval longer than this (or <= 0, or non-finite) is flagged
                          ``dt_jump`` and the track is re-initialised at that frame

    :class:`.tracking.TrackerConfig` (the A4C centreline tracker's configuration) extends
    this with the A4C rules; a PointTracker takes either.
    """

    position_std_mm: float = 0.3
    velocity_std_mm_s: float = 4.0
    jerk_psd_mm2_s5: float = 1.0e7
    init_velocity_std_mm_s: float = 10.0
    init_accel_std_mm_s2: float = 200.0
    max_dt_ratio: float = 2.5
    max_gap_s: float = 0.25

    def R(self) -> np.ndarray:
        """Measurement covariance (4, 4) for z = [row, col, v_row, v_col]."""
        p2 = self.position_std_mm**2
        v2 = self.velocity_std_mm_s**2
        return np.diag([p2, p2, v2, v2]).astype(np.float64)

    def P0(self, with_velocity: bool) -> np.ndarray:
        """Initial covariance (6, 6) of one point."""
        p2 = self.position_std_mm**2
        v2 = (self.velocity_std_mm_s if with_velocity else self.init_velocity_std_mm_s) ** 2
        a2 = self.init_accel_std_mm_s2**2
        return np.diag([p2, p2, v2, v2, a2, a2]).astype(np.float64)


def transition_matrices(dt_s: float, jerk_psd_mm2_s5: float) -> tuple[np.ndarray, np.ndarray]:
    """F and Q (6 x 6) for one interval, as used inside the kernels (for tests/reference)."""
    F = np.empty((6, 6))
    Q = np.empty((6, 6))
    _fill_FQ(F, Q, float(dt_s), float(jerk_psd_mm2_s5))
    return F, Q


def make_z(points_mm: np.ndarray, velocity_mm_s: np.ndarray | None = None) -> np.ndarray:
    """Measurement array (N, 4) = [row, col, v_row, v_col] (missing velocity -> NaN)."""
    points_mm = np.asarray(points_mm, dtype=np.float64)
    z = np.full((points_mm.shape[0], 4), np.nan)
    z[:, :2] = points_mm
    if velocity_mm_s is not None:
        z[:, 2:] = velocity_mm_s
    return z


_ALL_VALID: dict[int, np.ndarray] = {}


def _valid_mask(valid, n: int) -> np.ndarray:
    if valid is None:
        v = _ALL_VALID.get(n)
        if v is None:
            v = _ALL_VALID[n] = np.ones((n, 4), dtype=np.bool_)
        return v
    v = np.asarray(valid, dtype=np.bool_)
    if v.ndim == 1:
        v = np.repeat(v[:, None], 4, axis=1)
    return np.ascontiguousarray(v)


_warm_s: float | None = None
warmup_breakdown_s: dict[str, float] = {}


def warmup() -> float:
    """Compile (or load from numba's on-disk cache) the filter kernels and the RTS smoother;
    returns the seconds spent (0.0 when already done in this process).  Seconds per part in
    ``warmup_breakdown_s`` (``kalman``, ``rts``).

    Call at start-up so that the first frame does not pay the compile cost
    (:func:`.tracking.warmup` calls it).
    """
    global _warm_s
    if _warm_s is not None:
        return 0.0
    t0 = time.perf_counter()
    x = np.zeros((2, 6))
    P = np.tile(np.eye(6), (2, 1, 1))
    z = np.zeros((2, 4))
    valid = np.ones((2, 4), dtype=np.bool_)
    kf_step(x, P, z, valid, 0.02, 1.0, np.eye(4))
    FrameKalman(2, 1.0, np.eye(4))(x, P, 0.02)
    kf_predict(x, P, 0.02, 1.0)
    kf_update(x, P, z, valid, np.eye(4))
    t1 = time.perf_counter()
    rts_smooth(np.zeros((2, 2, 6)), np.tile(np.eye(6), (2, 2, 1, 1)), np.full(2, 0.02), 1.0)
    t2 = time.perf_counter()
    warmup_breakdown_s.update(kalman=t1 - t0, rts=t2 - t1)
    _warm_s = t2 - t0
    return _warm_s


# --------------------------------------------------------------------------------------
# stateful wrapper
# --------------------------------------------------------------------------------------


class PointTracker:
    """Holds x (N, 6) and P (N, 6, 6) for N points; thin Python shell around the kernels.

    Positions in and out are (row, col) in mm, velocities (v_row, v_col) in mm/s.
    ``flags`` after each call lists what was wrong (``not_initialised``, ``dt_jump``,
    ``nonfinite_state``, ``update_failed``); ``needs_reinit`` says the caller should call
    :meth:`initialise` at the next good frame.
    """

    def __init__(self, n_points: int = 120, config: KalmanConfig | None = None,
                 record: bool = False):
        self.n = int(n_points)
        self.config = config or KalmanConfig()
        self._R = self.config.R()
        self._q = float(self.config.jerk_psd_mm2_s5)
        self._fk: FrameKalman | None = None  # packed hot path, made at the first step
        self.x = np.zeros((self.n, DIM_X))
        self.P = np.tile(self.config.P0(False), (self.n, 1, 1))
        self.initialised = False
        self.needs_reinit = True
        self.flags: list[str] = []
        self.record = record
        self._hist_x: list[np.ndarray] = []
        self._hist_P: list[np.ndarray] = []
        self._hist_dt: list[float] = []
        self._recent_dt: list[float] = []

    # -- state -----------------------------------------------------------------------
    @property
    def positions_mm(self) -> np.ndarray:
        return self.x[:, 0:2].copy()

    @property
    def velocities_mm_s(self) -> np.ndarray:
        return self.x[:, 2:4].copy()

    def initialise(self, points_mm: np.ndarray, velocity_mm_s: np.ndarray | None = None) -> None:
        """(Re)start all tracks at the given positions (and velocities if known)."""
        pts = np.asarray(points_mm, dtype=np.float64)
        if pts.shape != (self.n, 2):
            raise ValueError(f"points_mm must be ({self.n}, 2), got {pts.shape}")
        self.x = np.zeros((self.n, DIM_X))
        self.x[:, 0:2] = pts
        have_v = velocity_mm_s is not None
        if have_v:
            v = np.asarray(velocity_mm_s, dtype=np.float64)
            ok = np.all(np.isfinite(v), axis=1)
            self.x[ok, 2:4] = v[ok]
        self.P = np.tile(self.config.P0(False), (self.n, 1, 1))
        if have_v:
            self.P[ok] = self.config.P0(True)
        self.initialised = True
        self.needs_reinit = False
        self._recent_dt.clear()
        if self.record:
            self._hist_x = [self.x.copy()]
            self._hist_P = [self.P.copy()]
            self._hist_dt = [0.0]

    def check_dt(self, dt_s: float) -> tuple[list[str], bool]:
        """Flags for an interval, and whether it forces a re-initialisation."""
        cfg = self.config
        if not np.isfinite(dt_s) or dt_s <= 0.0 or dt_s > cfg.max_gap_s:
            return ["dt_jump"], True
        if len(self._recent_dt) >= 3:
            srt = sorted(self._recent_dt)
            ref = srt[len(srt) // 2]
            if dt_s > cfg.max_dt_ratio * ref or dt_s < ref / cfg.max_dt_ratio:
                return ["dt_jump"], False
        return [], False

    def _note_dt(self, dt_s: float) -> None:
        self._recent_dt.append(float(dt_s))
        if len(self._recent_dt) > 16:
            del self._recent_dt[0]

    def predict(self, dt_s: float) -> np.ndarray:
        """Prior positions (N, 2) for the next frame (modifies the state; call update next)."""
        kf_predict(self.x, self.P, float(dt_s), self._q)
        self._pending_dt = float(dt_s)
        return self.x[:, 0:2].copy()

    def update(self, z: np.ndarray, valid=None, velocity_lag_s: float = 0.0,
               final: bool = True) -> np.ndarray:
        """Posterior positions (N, 2) after the measurement z (N, 4) = [row, col, v_row, v_col].

        ``velocity_lag_s``: see :meth:`step`.  ``final=False`` for all but the last of
        several sequential updates of one frame (the frame is then recorded, and its
        interval noted, only once)."""
        self.flags = []
        z = np.ascontiguousarray(z, dtype=np.float64)
        bad = kf_update(self.x, self.P, z, _valid_mask(valid, self.n), self._R, velocity_lag_s)
        if final:
            self._after_step(getattr(self, "_pending_dt", 0.0), bad)
        elif bad:
            self.flags.append("update_failed")
        return self.x[:, 0:2].copy()

    def step(self, dt_s: float, z: np.ndarray, valid=None,
             velocity_lag_s: float = 0.0) -> np.ndarray:
        """Predict over dt_s seconds and update with z; returns filtered positions (N, 2) mm.

        z (N, 4) = [row, col, v_row, v_col] in mm and mm/s; ``valid`` (N,) or (N, 4) bool,
        NaN in z also counts as missing.  A point with nothing valid is only predicted.
        ``velocity_lag_s``: 0 when the velocity is instantaneous (at this frame); dt_s / 2
        when it is a displacement over the last interval divided by dt_s (a flow field),
        whose expectation under the model is v - a dt_s / 2.
        """
        self.flags = []
        if not self.initialised:
            self.flags.append("not_initialised")
            self.needs_reinit = True
            return np.full((self.n, 2), np.nan)
        fl, reinit = self.check_dt(dt_s)
        self.flags += fl
        if reinit:
            self.needs_reinit = True
            self.initialised = False
            return np.full((self.n, 2), np.nan)
        fk = self._fk
        if fk is None:
            fk = self._fk = FrameKalman(self.n, self._q, self._R)
        fk.z[:] = z  # (N, 4); missing components -> NaN (kf_frame's convention)
        if valid is not None:
            v = _valid_mask(valid, self.n)
            if not v.all():
                fk.z[~v] = np.nan
        bad = fk(self.x, self.P, float(dt_s), float(velocity_lag_s))
        self._after_step(float(dt_s), bad)
        return self.x[:, 0:2].copy()

    def _after_step(self, dt_s: float, bad: int) -> None:
        if bad:  # rare: tell the two causes apart
            if not (np.all(np.isfinite(self.x)) and np.all(np.isfinite(self.P))):
                self.flags.append("nonfinite_state")
                self.needs_reinit = True
                self.initialised = False
            else:
                self.flags.append("update_failed")
        self._note_dt(dt_s)
        if self.record:
            self._hist_x.append(self.x.copy())
            self._hist_P.append(self.P.copy())
            self._hist_dt.append(dt_s)

    # -- offline ---------------------------------------------------------------------
    def history(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Recorded posteriors since the last initialise: xs (T, N, 6), Ps (T, N, 6, 6), dts (T,)."""
        if not self.record or not self._hist_x:
            raise RuntimeError("PointTracker(record=True) and initialise() first")
        return (np.stack(self._hist_x), np.stack(self._hist_P), np.asarray(self._hist_dt))

    def smooth(self) -> tuple[np.ndarray, np.ndarray]:
        """RTS-smoothed states over the recorded history: (xs (T, N, 6), Ps (T, N, 6, 6))."""
        xs, Ps, dts = self.history()
        return rts_smooth(xs, Ps, dts, self._q)
