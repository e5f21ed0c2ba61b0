"""Exactly invertible myocardial kinematics in elliptic coordinates.

Every phantom deformation in ``calib`` is a map of the image plane built so that both the
forward map (material point at end-diastole -> position in frame t) and its inverse
(pixel in frame t -> material point) are closed-form.  That is what makes the truth exact:
masks are the material regions pulled back to each pixel, the displacement field from
frame t to t+1 is ``forward_{t+1}(inverse_t(pixel)) - pixel``, and the centreline points are
material points pushed forward.

Coordinates
-----------
A wall model lives in fixed (end-diastolic) homothetic elliptic coordinates around an
origin ``O`` with unit vectors ``e_u`` (towards the apex, theta = 0) and ``e_v``
(theta = +90 degrees)::

    x = O + a * rho * cos(theta) * e_u + b * rho * sin(theta) * e_v

The myocardial midline at end-diastole is ``rho = 1`` for ``|theta| <= half_angle``
(a horseshoe open at the base; ``half_angle = pi`` gives a closed ring, as in short-axis).
The wall is ``|rho - 1| <= d0(theta)`` with ``d0 = thickness / 2 / ns(theta)`` where
``ns = a b / sqrt(b^2 cos^2 + a^2 sin^2)`` is the normal distance in mm per unit rho.

The map of frame t is the composition of two triangular maps, each monotone in one
coordinate for a fixed other coordinate, hence invertible one coordinate at a time:

1. *slide* (theta):  ``theta1 = theta0 + w(rho0, theta0) * (g_t(theta0) - theta0)``,
   ``g_t`` the along-wall motion of the midline (longitudinal shortening, regional
   strain, twist), ``w`` = 1 within ``margin_mm`` of the wall and fading smoothly to 0
   over ``fade_mm`` outside it, so distant tissue does not slide.
2. *radial* (rho): ``rho1 = H_t(rho0; theta1)`` piecewise linear in rho with knots
   ``0 -> 0, endo -> endo_t, 1 -> R_t, epi -> epi_t, far -> far`` (identity beyond
   ``far``): wall motion and thickening, fading to rest outside the heart.

Between the 4097 nodes of the theta grid the functions are linear interpolants, and the
model *is* that interpolant, so forward and inverse agree to rounding error.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numba import njit

N_GRID = 4096                                   # theta grid intervals over [-pi, pi]
THETA = np.linspace(-np.pi, np.pi, N_GRID + 1)
DTHETA = 2.0 * np.pi / N_GRID
_MID = N_GRID // 2                              # index of theta = 0


def smoothstep(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3.0 - 2.0 * x)


def circular_smooth(values: np.ndarray, sigma_rad: float) -> np.ndarray:
    """Gaussian smoothing of a periodic profile sampled on THETA (last node == first)."""
    if sigma_rad <= 0:
        return values.copy()
    v = values[:-1]
    half = int(np.ceil(4 * sigma_rad / DTHETA))
    k = np.exp(-0.5 * (np.arange(-half, half + 1) * DTHETA / sigma_rad) ** 2)
    k /= k.sum()
    ext = np.concatenate([v[-half:], v, v[:half]])
    out = np.convolve(ext, k, mode="valid")
    return np.append(out, out[0])


def wrap_angle(theta: np.ndarray) -> np.ndarray:
    return np.mod(theta + np.pi, 2.0 * np.pi) - np.pi


@dataclass
class WallState:
    """Per-frame tables on THETA (see module docstring). ``g`` is indexed by material angle,
    the knot tables by current angle."""

    g: np.ndarray          # current angle of the material midline point at THETA (w = 1)
    kin0: np.ndarray       # material endocardial rho knot
    kout0: np.ndarray      # material epicardial rho knot
    kin_t: np.ndarray      # current endocardial rho
    mid_t: np.ndarray      # current midline rho (R_t)
    kout_t: np.ndarray     # current epicardial rho
    kfar: np.ndarray       # rho beyond which the radial map is the identity
    twist: float = 0.0     # g(-pi) = -pi + twist (closed rings only)
    kcore: np.ndarray | None = None   # rho below which the radial map is the identity (default 0)

    def __post_init__(self) -> None:
        if self.kcore is None:
            self.kcore = np.zeros_like(self.kin0)

    def check(self) -> None:
        """Raise if the tables would make the map fold (non-monotone)."""
        if np.any(np.diff(self.g) <= 0):
            raise ValueError("wall deformation folds: along-wall map is not monotone "
                             "(strain too negative or too varied between segments)")
        k = [self.kcore, self.kin_t, self.mid_t, self.kout_t, self.kfar]
        k0 = [self.kcore, self.kin0, np.ones_like(self.kin0), self.kout0, self.kfar]
        for a, b in zip(k[:-1], k[1:]):
            if np.any(b <= a):
                raise ValueError("wall deformation folds: radial knots out of order "
                                 "(wall thickening or inward motion too large)")
        for a, b in zip(k0[:-1], k0[1:]):
            if np.any(b < a):
                raise ValueError("material radial knots out of order")
        if np.any(self.kin_t <= self.kcore) or np.any(self.kin_t <= 0):
            raise ValueError("wall deformation collapses the cavity (endocardium reaches the centre)")


class EllipticWall:
    """Geometry of one myocardial wall (open horseshoe or closed ring) and its exact map."""

    def __init__(self, origin_mm, apex_dir, a_mm: float, b_mm: float, half_angle_rad: float,
                 thickness_mm, fade_mm: float = 12.0, margin_mm: float = 1.5):
        self.origin = np.asarray(origin_mm, dtype=np.float64)
        eu = np.asarray(apex_dir, dtype=np.float64)
        self.eu = eu / np.hypot(*eu)
        # e_v: e_u turned by +90 degrees on screen (up -> right)
        self.ev = np.array([self.eu[1], -self.eu[0]])
        self.a = float(a_mm)
        self.b = float(b_mm)
        self.half_angle = float(min(half_angle_rad, np.pi))
        self.closed = self.half_angle >= np.pi - 1e-9
        self.fade = float(fade_mm)
        self.margin = float(margin_mm)
        c, s = np.cos(THETA), np.sin(THETA)
        self.ns = self.a * self.b / np.sqrt((self.b * c) ** 2 + (self.a * s) ** 2)
        thick = thickness_mm(THETA) if callable(thickness_mm) else np.broadcast_to(
            np.asarray(thickness_mm, dtype=np.float64), THETA.shape)
        self.half0_mm = 0.5 * np.asarray(thick, dtype=np.float64)
        self.d0 = self.half0_mm / self.ns              # material half-thickness in rho
        self.S0 = self.arc_table(np.ones_like(THETA))
        # rho bounds of the fade weight: w == 1 for all theta below, 0 above
        self.rho_all_slide = 1.0 + np.min(self.d0 + self.margin / self.ns)
        self.rho_no_slide = 1.0 + np.max(self.d0 + (self.margin + self.fade) / self.ns)

    # --------------------------------------------------------------- frames
    def to_local(self, pts_mm: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(..., 2) [row, col] mm -> (theta, rho) in the fixed elliptic frame."""
        p = np.ascontiguousarray(pts_mm, dtype=np.float64)
        th = np.empty(p.shape[:-1], dtype=np.float64)
        rh = np.empty(p.shape[:-1], dtype=np.float64)
        _to_local_kernel(p.reshape(-1, 2), self.origin, self.eu, self.ev, self.a, self.b,
                         th.reshape(-1), rh.reshape(-1))
        return th, rh

    def to_mm(self, theta: np.ndarray, rho: np.ndarray) -> np.ndarray:
        u = self.a * rho * np.cos(theta)
        v = self.b * rho * np.sin(theta)
        out = np.empty(np.shape(theta) + (2,), dtype=np.float64)
        out[..., 0] = self.origin[0] + u * self.eu[0] + v * self.ev[0]
        out[..., 1] = self.origin[1] + u * self.eu[1] + v * self.ev[1]
        return out

    def arc_table(self, radius: np.ndarray) -> np.ndarray:
        """Signed arc length (mm) from theta = 0 along the curve rho = radius(theta)."""
        u = self.a * radius * np.cos(THETA)
        v = self.b * radius * np.sin(THETA)
        seg = np.hypot(np.diff(u), np.diff(v))
        s = np.concatenate([[0.0], np.cumsum(seg)])
        return s - s[_MID]

    # ------------------------------------------------------------- material
    def half_thickness_rho(self, theta0: np.ndarray) -> np.ndarray:
        return interp_theta(theta0, self.d0)

    def in_wall(self, theta0: np.ndarray, rho0: np.ndarray) -> np.ndarray:
        d = self.half_thickness_rho(theta0)
        return (np.abs(theta0) <= self.half_angle) & (np.abs(rho0 - 1.0) <= d)

    def in_cavity(self, theta0: np.ndarray, rho0: np.ndarray) -> np.ndarray:
        d = self.half_thickness_rho(theta0)
        return (np.abs(theta0) <= self.half_angle) & (rho0 < 1.0 - d)

    def outside_distance_mm(self, theta: np.ndarray, rho: np.ndarray) -> np.ndarray:
        """Approximate normal distance (mm) outside the epicardium (negative inside)."""
        j, t = _lookup(theta)
        return (rho - 1.0 - _lerp(self.d0, j, t)) * _lerp(self.ns, j, t)

    # -------------------------------------------------------------- weights
    def _w_nodes(self, rho0: np.ndarray, j: np.ndarray) -> np.ndarray:
        d = (rho0 - 1.0 - self.d0[j]) * self.ns[j] - self.margin
        return smoothstep(1.0 - d / self.fade)

    # ---------------------------------------------------------------- maps
    def forward(self, theta0: np.ndarray, rho0: np.ndarray, st: WallState):
        """Material (theta0, rho0) -> current (theta1, rho1)."""
        th = np.ascontiguousarray(theta0, dtype=np.float64)
        rh = np.ascontiguousarray(rho0, dtype=np.float64)
        o_th = np.empty_like(th)
        o_rh = np.empty_like(rh)
        _forward_kernel(th.ravel(), rh.ravel(), st.g, st.kcore, st.kin0, st.kout0, st.kin_t, st.mid_t,
                        st.kout_t, st.kfar, self.d0, self.ns, self.margin, self.fade,
                        o_th.ravel(), o_rh.ravel())
        return o_th, o_rh

    def forward_mm(self, theta0: np.ndarray, rho0: np.ndarray, st: WallState) -> np.ndarray:
        """Material (theta0, rho0) -> current position [row, col] mm, shape (..., 2)."""
        th = np.ascontiguousarray(theta0, dtype=np.float64)
        rh = np.ascontiguousarray(rho0, dtype=np.float64)
        out = np.empty(th.shape + (2,), dtype=np.float64)
        _forward_mm_kernel(th.ravel(), rh.ravel(), st.g, st.kcore, st.kin0, st.kout0, st.kin_t, st.mid_t,
                           st.kout_t, st.kfar, self.d0, self.ns, self.margin, self.fade,
                           self.origin, self.eu, self.ev, self.a, self.b, out.reshape(-1, 2))
        return out

    def inverse(self, theta1: np.ndarray, rho1: np.ndarray, st: WallState):
        """Current (theta1, rho1) -> material (theta0, rho0); exact inverse of forward."""
        th = np.ascontiguousarray(theta1, dtype=np.float64)
        rh = np.ascontiguousarray(rho1, dtype=np.float64)
        o_th = np.empty_like(th)
        o_rh = np.empty_like(rh)
        _inverse_kernel(th.ravel(), rh.ravel(), st.g, st.kcore, st.kin0, st.kout0, st.kin_t, st.mid_t,
                        st.kout_t, st.kfar, self.d0, self.ns, self.margin, self.fade,
                        self.rho_all_slide, self.rho_no_slide, st.twist != 0.0,
                        o_th.ravel(), o_rh.ravel())
        return o_th, o_rh

    def map_points(self, pts_mm: np.ndarray, st: WallState) -> np.ndarray:
        """ED position(s) [row, col] mm -> position(s) in the frame of state ``st``."""
        th, rh = self.to_local(pts_mm)
        return self.to_mm(*self.forward(th, rh, st))

    # --------------------------------------------------------- state build
    def identity_state(self) -> WallState:
        one = np.ones_like(THETA)
        kfar = 1.0 + self.d0 + (self.margin + self.fade) / self.ns
        return WallState(g=THETA.copy(), kin0=one - self.d0, kout0=one + self.d0,
                         kin_t=one - self.d0, mid_t=one.copy(), kout_t=one + self.d0, kfar=kfar)

    def _thickness_tables(self, g: np.ndarray, ratio_material: np.ndarray, twist: float):
        """Material knots and current half-thickness (rho) at current-angle nodes."""
        if twist != 0.0:
            tgt = np.where(THETA < g[0], THETA + 2 * np.pi, THETA)
            tgt = np.where(tgt > g[-1], tgt - 2 * np.pi, tgt)
        else:
            tgt = THETA
        th0 = np.interp(tgt, g, THETA)                     # material angle at each node
        d0s = np.interp(th0, THETA, self.d0)
        half_mm = np.interp(th0, THETA, self.half0_mm) * np.interp(th0, THETA, ratio_material)
        dt = half_mm / self.ns
        return d0s, dt

    def _g_from_arc(self, radius: np.ndarray, s_target_of_node: np.ndarray,
                    nodes: np.ndarray) -> np.ndarray:
        """Current angles whose arc position on curve ``radius`` equals the targets."""
        st = self.arc_table(radius)
        out = THETA.copy()
        if self.closed:
            total = st[-1] - st[0]
            k = np.floor((s_target_of_node - st[0]) / total)
            out = np.interp(s_target_of_node - k * total, st, THETA) + 2 * np.pi * k
            return out
        out[nodes] = np.interp(s_target_of_node, st, THETA)
        return out

    def open_state(self, seg_strain: np.ndarray, inward_rho: np.ndarray,
                   thickening_exponent: float = 1.5, smooth_rad: float = 0.06,
                   iterations: int = 3) -> WallState:
        """State of an open (horseshoe) wall.

        seg_strain: (K,) longitudinal strain (fraction) of K equal arc-length segments from
            the theta < 0 base over the apex to the theta > 0 base.  The material point at
            theta = 0 (apex) stays at theta = 0.
        inward_rho: (N+1,) inward epicardial motion in rho by current angle.
        The wall thickens by (1 + e)^-thickening_exponent (e the local, smoothed strain);
        the epicardium moves by ``inward_rho`` only, the endocardium by that plus thickening.
        """
        seg = np.asarray(seg_strain, dtype=np.float64)
        K = seg.size
        thb = self.half_angle
        nodes = np.abs(THETA) <= thb
        s_lo = np.interp(-thb, THETA, self.S0)
        s_hi = np.interp(thb, THETA, self.S0)
        bounds = np.linspace(s_lo, s_hi, K + 1)
        seg_len_t = np.diff(bounds) * (1.0 + seg)
        cum_t = np.concatenate([[0.0], np.cumsum(seg_len_t)])
        # current arc position of material arc position s0 (piecewise linear), apex anchored
        s0_nodes = self.S0[nodes]
        s_t_nodes = np.interp(s0_nodes, bounds, cum_t) - np.interp(0.0, bounds, cum_t)

        # local strain profile by material angle, tapering to 0 beyond the base
        seg_idx = np.clip(np.searchsorted(bounds, self.S0, side="right") - 1, 0, K - 1)
        e_node = seg[seg_idx]
        beyond = np.abs(THETA) > thb
        taper = np.clip(1.0 - (np.abs(THETA) - thb) / 0.5, 0.0, 1.0)
        e_node = np.where(beyond, e_node * taper, e_node)
        e_s = circular_smooth(e_node, smooth_rad)
        ratio = np.clip((1.0 + e_s) ** (-thickening_exponent), 0.4, 3.0)

        s_base_t = np.array([cum_t[0], cum_t[-1]]) - np.interp(0.0, bounds, cum_t)

        def g_from(radius):
            g = self._g_from_arc(radius, s_t_nodes, nodes)
            # beyond the base: linear in theta up to +-pi (atria stretch / shorten), through
            # the exact current angle of the material base points
            gb_lo, gb_hi = np.interp(s_base_t, self.arc_table(radius), THETA)
            lo_side = THETA < -thb
            hi_side = THETA > thb
            g[lo_side] = -np.pi + (THETA[lo_side] + np.pi) * (gb_lo + np.pi) / (np.pi - thb)
            g[hi_side] = gb_hi + (THETA[hi_side] - thb) * (np.pi - gb_hi) / (np.pi - thb)
            g[0], g[-1] = -np.pi, np.pi
            return g

        radius = 1.0 - inward_rho
        for _ in range(iterations):
            g = g_from(radius)
            d0s, dt = self._thickness_tables(g, ratio, 0.0)
            radius = 1.0 + d0s - dt - inward_rho
        g = g_from(radius)
        d0s, dt = self._thickness_tables(g, ratio, 0.0)
        kfar = 1.0 + d0s + (self.margin + self.fade) / self.ns
        st = WallState(g=g, kin0=1.0 - d0s, kout0=1.0 + d0s, kin_t=radius - dt, mid_t=radius,
                       kout_t=radius + dt, kfar=np.maximum(kfar, radius + dt + 0.02))
        st.check()
        return st

    def radial_state(self, core: np.ndarray, inner: np.ndarray, outer: np.ndarray,
                     far: np.ndarray, mid_t: np.ndarray) -> WallState:
        """A purely radial state (no slide): identity below ``core`` and beyond ``far``, the
        material reference curve rho = 1 moves to ``mid_t``; ``inner``/``outer`` (material
        rho, unchanged) bound the band that moves rigidly with it.  All arrays on THETA by
        angle.  Used for structures outside the main wall (e.g. the RV free wall)."""
        d = mid_t - 1.0
        st = WallState(g=THETA.copy(), kin0=inner, kout0=outer, kin_t=inner + d, mid_t=mid_t,
                       kout_t=outer + d, kfar=far, kcore=core)
        st.check()
        return st

    def ring_state(self, seg_bounds_rad: np.ndarray, circ_strain: np.ndarray,
                   radial_strain: np.ndarray, twist_rad: float = 0.0,
                   smooth_rad: float = 0.12) -> WallState:
        """State of a closed ring (short axis).

        seg_bounds_rad: (K+1,) increasing material angles of the segment boundaries,
            spanning exactly 2 pi.  circ_strain, radial_strain: (K,) midline circumferential
            strain and wall thickness strain (fractions).  The material point at
            ``seg_bounds_rad[0]`` ends at that angle + ``twist_rad`` (rigid rotation part).
        Segment midline lengths match the prescribed strains exactly; the midline radius
        profile follows the smoothed strain profile plus one constant fixed by the total.
        """
        if not self.closed:
            raise ValueError("ring_state needs a closed wall (half_angle = pi)")
        bnd = np.asarray(seg_bounds_rad, dtype=np.float64)
        ec = np.asarray(circ_strain, dtype=np.float64)
        er = np.asarray(radial_strain, dtype=np.float64)
        K = ec.size
        # material arc positions of the boundaries (unwrapped)
        L0 = self.S0[-1] - self.S0[0]

        def arc0(th):
            k = np.floor((th + np.pi) / (2 * np.pi))
            return np.interp(th - 2 * np.pi * k, THETA, self.S0) + k * L0

        sb = arc0(bnd)
        len0 = np.diff(sb)
        cum_t = np.concatenate([[0.0], np.cumsum(len0 * (1.0 + ec))])
        total_t = cum_t[-1]
        # profiles by angle (material ~ current for the radius shape)
        idx = np.searchsorted(bnd, np.where(THETA < bnd[0], THETA + 2 * np.pi, THETA), side="right") - 1
        idx = np.clip(idx, 0, K - 1)
        ec_s = circular_smooth(ec[idx], smooth_rad)
        er_s = circular_smooth(er[idx], smooth_rad)
        ratio = np.clip(1.0 + er_s, 0.4, 3.0)
        # constant mu so that the current ring length equals the prescribed total
        mu = 0.0
        for _ in range(30):
            radius = 1.0 + ec_s + mu
            ln = self.arc_table(radius)
            err = (ln[-1] - ln[0]) - total_t
            if abs(err) < 1e-10 * total_t:
                break
            mu -= err / (ln[-1] - ln[0]) * np.mean(radius)
        radius = 1.0 + ec_s + mu
        st_tab = self.arc_table(radius)
        anchor_cur = bnd[0] + twist_rad
        ka = np.floor((anchor_cur + np.pi) / (2 * np.pi))
        s_anchor = np.interp(anchor_cur - 2 * np.pi * ka, THETA, st_tab) + ka * (st_tab[-1] - st_tab[0])
        s0_nodes = arc0(THETA)
        # current arc of node: piecewise linear in material arc, periodic continuation
        s0_rel = s0_nodes - sb[0]
        kk = np.floor(s0_rel / L0)
        s_t = np.interp(s0_rel - kk * L0, sb - sb[0], cum_t) + kk * total_t + s_anchor
        g = self._g_from_arc(radius, s_t, np.ones_like(THETA, dtype=bool))
        twist = g[0] + np.pi
        d0s, dt = self._thickness_tables(g, ratio, twist)
        kfar = 1.0 + d0s + (self.margin + self.fade) / self.ns
        st = WallState(g=g, kin0=1.0 - d0s, kout0=1.0 + d0s, kin_t=radius - dt, mid_t=radius,
                       kout_t=radius + dt, kfar=np.maximum(kfar, radius + dt + 0.02), twist=twist)
        st.check()
        return st


def _lookup(theta: np.ndarray):
    """Uniform-grid index and fraction of angles in [-pi, pi] (linear interpolation on THETA)."""
    x = (np.asarray(theta, dtype=np.float64) + np.pi) * (1.0 / DTHETA)
    j = np.clip(x.astype(np.int64), 0, N_GRID - 1)
    return j, x - j


def _lerp(tab: np.ndarray, j: np.ndarray, t: np.ndarray) -> np.ndarray:
    a = tab[j]
    return a + t * (tab[j + 1] - a)


def interp_theta(theta: np.ndarray, tab: np.ndarray) -> np.ndarray:
    """``np.interp(theta, THETA, tab)`` for angles in [-pi, pi], without the binary search."""
    j, t = _lookup(theta)
    return _lerp(tab, j, t)


# ----------------------------------------------------------------------------- numba kernels
_TWO_PI = 2.0 * np.pi


@njit(cache=True)
def _to_local_kernel(p, origin, eu, ev, a, b, out_th, out_rh):
    for i in range(p.shape[0]):
        d0 = p[i, 0] - origin[0]
        d1 = p[i, 1] - origin[1]
        u = (d0 * eu[0] + d1 * eu[1]) / a
        v = (d0 * ev[0] + d1 * ev[1]) / b
        out_th[i] = math.atan2(v, u)
        out_rh[i] = math.sqrt(u * u + v * v)


@njit(cache=True, inline="always")
def _wnode(rho0, d0j, nsj, margin, fade):
    d = (rho0 - 1.0 - d0j) * nsj - margin
    x = 1.0 - d / fade
    if x >= 1.0:
        return 1.0
    if x <= 0.0:
        return 0.0
    return x * x * (3.0 - 2.0 * x)


@njit(cache=True, inline="always")
def _knots(th, kcore, kin0, kout0, kin_t, mid_t, kout_t, kfar, dth, n):
    x = (th + np.pi) / dth
    j = int(x)
    if j < 0:
        j = 0
    elif j > n - 1:
        j = n - 1
    t = x - j
    c = kcore[j] + t * (kcore[j + 1] - kcore[j])
    a0 = kin0[j] + t * (kin0[j + 1] - kin0[j])
    a2 = kout0[j] + t * (kout0[j + 1] - kout0[j])
    a3 = kfar[j] + t * (kfar[j + 1] - kfar[j])
    b0 = kin_t[j] + t * (kin_t[j + 1] - kin_t[j])
    b1 = mid_t[j] + t * (mid_t[j + 1] - mid_t[j])
    b2 = kout_t[j] + t * (kout_t[j + 1] - kout_t[j])
    return c, a0, a2, a3, b0, b1, b2


@njit(cache=True, inline="always")
def _pl(x, c, x0, x1, x2, x3, y0, y1, y2, y3):
    if x < c:
        return x
    if x < x0:
        return c + (x - c) * (y0 - c) / (x0 - c)
    if x < x1:
        return y0 + (x - x0) * (y1 - y0) / (x1 - x0)
    if x < x2:
        return y1 + (x - x1) * (y2 - y1) / (x2 - x1)
    if x < x3:
        return y2 + (x - x2) * (y3 - y2) / (x3 - x2)
    return x


@njit(cache=True, inline="always")
def _forward_point(th, r, g, kcore, kin0, kout0, kin_t, mid_t, kout_t, kfar, d0, ns, margin,
                   fade, n, dth):
    """The forward map of one material point (theta, rho) -> (theta', rho'), shared by
    the two kernels below (inlined, so each keeps its own compile flags)."""
    x = (th + np.pi) / dth
    j = int(x)
    if j < 0:
        j = 0
    elif j > n - 1:
        j = n - 1
    t = x - j
    tj = -np.pi + j * dth
    tj1 = tj + dth
    w0 = _wnode(r, d0[j], ns[j], margin, fade)
    w1 = _wnode(r, d0[j + 1], ns[j + 1], margin, fade)
    f0 = tj + w0 * (g[j] - tj)
    f1 = tj1 + w1 * (g[j + 1] - tj1)
    th1 = f0 + t * (f1 - f0)
    if th1 > np.pi or th1 < -np.pi:
        th1 = (th1 + np.pi) % _TWO_PI - np.pi
    c, a0, a2, a3, b0, b1, b2 = _knots(th1, kcore, kin0, kout0, kin_t, mid_t, kout_t, kfar, dth, n)
    return th1, _pl(r, c, a0, 1.0, a2, a3, b0, b1, b2, a3)


@njit(cache=True)
def _forward_kernel(theta0, rho0, g, kcore, kin0, kout0, kin_t, mid_t, kout_t, kfar, d0, ns,
                    margin, fade, out_th, out_rho):
    n = g.size - 1
    dth = _TWO_PI / n
    for i in range(theta0.size):
        th = theta0[i]
        r = rho0[i]
        th1, r1 = _forward_point(th, r, g, kcore, kin0, kout0, kin_t, mid_t, kout_t, kfar, d0,
                                 ns, margin, fade, n, dth)
        out_th[i] = th1
        out_rho[i] = r1


@njit(cache=True, fastmath=True)
def _forward_mm_kernel(theta0, rho0, g, kcore, kin0, kout0, kin_t, mid_t, kout_t, kfar, d0, ns,
                       margin, fade, origin, eu, ev, a, b, out):
    n = g.size - 1
    dth = _TWO_PI / n
    for i in range(theta0.size):
        th = theta0[i]
        r = rho0[i]
        th1, r1 = _forward_point(th, r, g, kcore, kin0, kout0, kin_t, mid_t, kout_t, kfar, d0,
                                 ns, margin, fade, n, dth)
        u = a * r1 * np.cos(th1)
        v = b * r1 * np.sin(th1)
        out[i, 0] = origin[0] + u * eu[0] + v * ev[0]
        out[i, 1] = origin[1] + u * eu[1] + v * ev[1]


@njit(cache=True)
def _inverse_kernel(theta1, rho1, g, kcore, kin0, kout0, kin_t, mid_t, kout_t, kfar, d0, ns,
                    margin, fade, rho_all, rho_none, wraps, out_th, out_rho):
    n = g.size - 1
    dth = _TWO_PI / n
    for i in range(theta1.size):
        th1 = theta1[i]
        r1 = rho1[i]
        c, a0, a2, a3, b0, b1, b2 = _knots(th1, kcore, kin0, kout0, kin_t, mid_t, kout_t, kfar, dth, n)
        r0 = _pl(r1, c, b0, b1, b2, a3, a0, 1.0, a2, a3)
        out_rho[i] = r0
        if r0 >= rho_none:
            out_th[i] = th1
            continue
        full = r0 <= rho_all
        # f(k) = THETA[k] + w(r0, k) * (g[k] - THETA[k]) is increasing in k
        if full:
            f_lo = g[0]
        else:
            f_lo = -np.pi + _wnode(r0, d0[0], ns[0], margin, fade) * (g[0] + np.pi)
        tgt = th1
        if wraps:
            while tgt < f_lo:
                tgt += _TWO_PI
            while tgt >= f_lo + _TWO_PI:
                tgt -= _TWO_PI
        lo = 0
        hi = n
        while hi - lo > 1:
            mid = (lo + hi) >> 1
            tm = -np.pi + mid * dth
            if full:
                fm = g[mid]
            else:
                fm = tm + _wnode(r0, d0[mid], ns[mid], margin, fade) * (g[mid] - tm)
            if fm <= tgt:
                lo = mid
            else:
                hi = mid
        tl = -np.pi + lo * dth
        th_ = tl + dth
        if full:
            fl = g[lo]
            fh = g[hi]
        else:
            fl = tl + _wnode(r0, d0[lo], ns[lo], margin, fade) * (g[lo] - tl)
            fh = th_ + _wnode(r0, d0[hi], ns[hi], margin, fade) * (g[hi] - th_)
        tt = (tgt - fl) / (fh - fl) if fh > fl else 0.0
        if tt < 0.0:
            tt = 0.0
        elif tt > 1.0:
            tt = 1.0
        th0 = tl + tt * dth
        if wraps and (th0 > np.pi or th0 < -np.pi):
            th0 = (th0 + np.pi) % _TWO_PI - np.pi
        out_th[i] = th0
