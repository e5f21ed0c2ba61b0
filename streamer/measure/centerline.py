"""Myocardial centreline from an LV myocardium mask (apical views, e.g. A4C).

Arrays in, arrays out (numpy, cv2, scipy.ndimage, numba).

Geometry convention (A4C)
-------------------------
Rows grow downward and columns to the right; the apex is near the top (small row, near the
transducer), the mitral annulus at the bottom; the septum is the LEFT wall (smaller col)
unless ``CentrelineConfig.septum_side="right"``.  Output points are (row, col) in pixels
(``points_px``), or mm with ``spacing_mm=(row_mm, col_mm)``.

The centreline has ``n_points`` (120) points equally spaced by arc length, from the basal
septum over the apex to the basal lateral wall.  The order depends only on the geometry
(which basal end lies on the septal side), never on where a contour happens to start, so it
is stable from frame to frame.

Method
------
1. Binarise (> 0, or > 0.5 for float masks); keep the largest 8-connected component.
   ``empty_mask`` if nothing of at least ``min_area_px`` is left; ``two_components`` if the
   second largest component has at least ``second_component_frac`` of the largest's area.
   Holes smaller than ``max_hole_frac`` of the myocardium are filled (``holes_filled``).
2. Cavity: the largest component of (convex hull of the myocardium) minus the myocardium,
   i.e. the region the horseshoe encloses, closed at the base by the hull's chord.
   ``broken_mask`` when there is none (a blob, a closed ring, a fragment).
3. The outer contour is resampled at 1 px and smoothed (Gaussian, ``smooth_sigma_px``),
   then moved ``edge_offset_px`` (0.5) outward: a traced contour runs through the centres
   of the boundary pixels, half a pixel inside the area the mask covers, which would put
   the basal ends of the midline half a pixel short of the wall's ends (0.3-0.8 mm
   along-wall at 0.89 mm/px, enough to bias basal strain by ~0.3 %).
   Its longest run of points next to the cavity is the endocardial border; the rest of the
   contour is the epicardial border with the two basal caps.
4. From every other endocardial point a ray is cast along the normal into the wall to the
   first crossing of the contour: its length is the local wall thickness and its middle a
   midline point.  Rays that do not cross the wall squarely are rejected: those that meet
   the far side more than ``max_incidence_deg`` off its normal (along a cap, through the
   base) and those much shorter than their neighbours (a wall tapering into an oblique
   basal cap).  The midline keeps only points that move forward along it.
5. The midline is smoothed and re-centred (``recentre_iterations``, 2): each point moves
   to the middle of the wall chord along the *midline's* normal (a ray each way to the
   contour), the shift smoothed along the line.  The endocardial-normal chords of step 4
   are not symmetric about the mid-wall where the wall is curved and tapers (their
   midpoints sit up to ~0.3 mm off it near the apex); chords normal to the midline are.
   The result is the mid-wall that strain is defined on (see :mod:`.strain`).
6. The midline is extended at each basal end along its tangent to the contour (the middle
   of the basal cap), and resampled to ``n_points`` equally spaced points.

Steps 3-6 run in numba (:func:`_contour_and_endo`, :func:`_wall_midline`,
:func:`_finish_midline`; one segment grid of the contour serves all their ray casts); they
reproduce the former numpy/scipy code (np.interp, np.gradient, gaussian_filter1d,
median_filter, np.median) to ~1e-9 px, and ``tests/test_centerline.py`` checks the numba
helpers against numpy references.  The per-frame cost is ~0.45 ms for an echo-phantom
256 x 256 mask and ~0.75 ms for the synthetic horseshoe on the shared 2-core dev VM (median
of repeated calls, load ~4; formerly ~1.6 and ~2.2-2.7 ms), about a third of it the
re-centring of step 5 (two iterations, two ray casts each).  ``warmup()`` compiles the
numba helpers; the first run after an install or an edit of this file compiles them for
~25 s (cached on disk afterwards).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache

import cv2
import numpy as np
from numba import njit
from scipy.ndimage import gaussian_filter1d

from streamer.options import option


@dataclass(frozen=True)
class CentrelineConfig:
    n_points: int = 120
    septum_side: str = option(
        "left", "side of the image the septum is on: left (the standard A4C display) or "
        "right (a mirrored display)", choices=("left", "right"))
    min_area_px: int = 50
    second_component_frac: float = 0.2
    max_hole_frac: float = 0.05
    min_cavity_frac: float = 0.05  # cavity area relative to the myocardium's
    smooth_sigma_px: float = 1.5  # contour smoothing
    midline_sigma_px: float = 2.0  # midline smoothing
    ray_step_px: int = 2  # one thickness ray every ray_step_px along the endocardium
    max_incidence_deg: float = 20.0  # accept a ray only if it meets the far wall this square
    thickness_window: int = 21  # rays over which the local wall thickness is the median
    min_thickness_ratio: float = 0.75  # reject rays shorter than this x the local thickness
    min_core_frac: float = 0.5  # accepted midline must span this fraction of the endo border
    tangent_fit_px: float = 6.0  # length of the midline end used for the basal extension
    max_extension_thickness: float = 2.0  # basal extension at most this many thicknesses
    edge_offset_px: float = 0.5  # traced contour (pixel centres) -> mask edge, outward
    recentre_iterations: int = 2  # re-centre the midline on chords normal to itself


@dataclass
class Centreline:
    """Result of :func:`extract_centreline`.

    points_px   (n_points, 2) [row, col] px, basal septum -> apex -> basal lateral
                (NaN when ``ok`` is False)
    points_mm   the same in mm when spacing_mm was given, else None
    endo_px     (M, 2) endocardial border, septal -> lateral (smoothed contour points)
    epi_px      (K, 2) rest of the outer contour (epicardium and basal caps), septal -> lateral
    length_px   arc length of the centreline polyline
    thickness_px median wall thickness along the accepted rays
    ok          True when points_px is a valid centreline
    flags       ``empty_mask``, ``two_components``, ``holes_filled``, ``broken_mask``,
                ``basal_end_uncertain``
    """

    points_px: np.ndarray
    points_mm: np.ndarray | None
    endo_px: np.ndarray
    epi_px: np.ndarray
    length_px: float
    thickness_px: float
    ok: bool
    flags: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------------------
# polyline helpers
# --------------------------------------------------------------------------------------


def arc_length_param(points: np.ndarray, closed: bool = False) -> np.ndarray:
    """Cumulative arc length at each vertex (closed: one more entry, back to the start)."""
    p = np.asarray(points, dtype=np.float64)
    if closed:
        p = np.vstack([p, p[:1]])
    seg = np.hypot(*np.diff(p, axis=0).T)
    return np.concatenate([[0.0], np.cumsum(seg)])


def resample_polyline(points: np.ndarray, n: int | None = None, step: float | None = None,
                      closed: bool = False) -> np.ndarray:
    """Resample a polyline to n points equally spaced by arc length (or at ``step`` spacing).

    Open: the first and last points are kept.  Closed: n points around the loop, the
    first one at points[0].
    """
    p = np.asarray(points, dtype=np.float64)
    s = arc_length_param(p, closed)
    if closed:
        p = np.vstack([p, p[:1]])
    total = s[-1]
    if n is None:
        n = max(int(round(total / step)), 2)
    t = np.linspace(0.0, total, n + 1 if closed else n)
    if closed:
        t = t[:-1]
    return np.column_stack([np.interp(t, s, p[:, 0]), np.interp(t, s, p[:, 1])])


def smooth_open(points: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian smoothing of an open polyline (uniformly sampled) with point-reflected ends,
    so that straight ends keep their end points and direction."""
    p = np.asarray(points, dtype=np.float64)
    if sigma <= 0 or len(p) < 3:
        return p.copy()
    k = min(int(np.ceil(4 * sigma)), len(p) - 1)
    head = 2 * p[0] - p[k:0:-1]
    tail = 2 * p[-1] - p[-2:-k - 2:-1]
    q = np.vstack([head, p, tail])
    q = gaussian_filter1d(q, sigma, axis=0, mode="nearest")
    return q[k:k + len(p)]


def smooth_closed(points: np.ndarray, sigma: float) -> np.ndarray:
    p = np.asarray(points, dtype=np.float64)
    if sigma <= 0:
        return p.copy()
    return gaussian_filter1d(p, sigma, axis=0, mode="wrap")


@njit(cache=True, nogil=True)
def _project(points, poly, extend):
    n = points.shape[0]
    m = poly.shape[0]
    out = np.empty((n, 2))
    arc = np.empty(n)
    cum = np.empty(m)
    cum[0] = 0.0
    for j in range(1, m):
        cum[j] = cum[j - 1] + np.hypot(poly[j, 0] - poly[j - 1, 0], poly[j, 1] - poly[j - 1, 1])
    for i in range(n):
        pr = points[i, 0]
        pc = points[i, 1]
        best = np.inf
        br = np.nan
        bc = np.nan
        ba = np.nan
        for j in range(m - 1):
            ar = poly[j, 0]
            ac = poly[j, 1]
            dr = poly[j + 1, 0] - ar
            dc = poly[j + 1, 1] - ac
            L2 = dr * dr + dc * dc
            t = 0.0
            if L2 > 0.0:
                t = ((pr - ar) * dr + (pc - ac) * dc) / L2
                if t < 0.0 and not (extend and j == 0):
                    t = 0.0
                elif t > 1.0 and not (extend and j == m - 2):
                    t = 1.0
            qr = ar + t * dr
            qc = ac + t * dc
            d2 = (pr - qr) * (pr - qr) + (pc - qc) * (pc - qc)
            if d2 < best:
                best = d2
                br = qr
                bc = qc
                ba = cum[j] + t * np.sqrt(L2)
        out[i, 0] = br
        out[i, 1] = bc
        arc[i] = ba
    return out, arc


def project_onto_polyline(points: np.ndarray, polyline: np.ndarray,
                          extend: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Closest points on an open polyline (M, 2) to points (N, 2), and their arc positions.

    ``extend``: the first and last segments continue as straight lines beyond the ends, so
    a point past an end moves only across the line, not along it (arc < 0 or > length).
    Returns (projections (N, 2), arc_length (N,)) in the units of the inputs; non-finite
    points give NaN.
    """
    pts = np.ascontiguousarray(points, dtype=np.float64).reshape(-1, 2)
    poly = np.ascontiguousarray(polyline, dtype=np.float64).reshape(-1, 2)
    out, arc = _project(pts, poly, bool(extend))
    bad = ~np.all(np.isfinite(pts), axis=1)
    out[bad] = np.nan
    arc[bad] = np.nan
    return out, arc


@njit(cache=True, nogil=True)
def _seg_hit(orr, oc, dr, dc, ar, ac, br, bc, t_min):
    er = br - ar
    ec = bc - ac
    den = dr * ec - dc * er
    if den == 0.0:
        return np.inf
    wr = ar - orr
    wc = ac - oc
    t = (wr * ec - wc * er) / den
    if t <= t_min:
        return np.inf
    u = (wr * dc - wc * dr) / den
    if u < 0.0 or u > 1.0:
        return np.inf
    return t


@njit(cache=True, nogil=True)
def _ray_hits(origins, dirs, poly, t_min):
    """First crossing of each ray (origin + t * dir, |dir| = 1, t > t_min) with the closed
    polygon poly (M, 2): returns (t (N,), inf if none; segment index (N,), -1 if none;
    |cos| of the angle between the ray and the crossed segment (N,)).

    Segments are bucketed in a uniform grid (:func:`_seg_grid`) and each ray walks the grid
    cells it crosses (Amanatides-Woo), stopping once the next cell starts beyond the best
    hit (:func:`_grid_cast`).
    """
    r0, c0, nr, nc, count, items = _seg_grid(poly)
    return _grid_cast(origins, dirs, poly, t_min, r0, c0, nr, nc, count, items)


@njit(cache=True, nogil=True)
def _seg_grid(poly):
    """Bucket the segments of the closed polygon poly (M, 2) in a grid of 6 px cells:
    (r0, c0, nr, nc, count (cell offsets, nr * nc + 1), items (segment indices))."""
    m = poly.shape[0]
    g = 6.0  # cell size, px
    r0 = poly[0, 0]
    c0 = poly[0, 1]
    r1 = r0
    c1 = c0
    for j in range(m):
        r0 = min(r0, poly[j, 0])
        r1 = max(r1, poly[j, 0])
        c0 = min(c0, poly[j, 1])
        c1 = max(c1, poly[j, 1])
    nr = int((r1 - r0) / g) + 1
    nc = int((c1 - c0) / g) + 1
    count = np.zeros(nr * nc + 1, np.int64)
    for j in range(m):
        k = j + 1 if j + 1 < m else 0
        ra = int((min(poly[j, 0], poly[k, 0]) - r0) / g)
        rb = int((max(poly[j, 0], poly[k, 0]) - r0) / g)
        ca = int((min(poly[j, 1], poly[k, 1]) - c0) / g)
        cb = int((max(poly[j, 1], poly[k, 1]) - c0) / g)
        for a in range(ra, rb + 1):
            for b in range(ca, cb + 1):
                count[a * nc + b + 1] += 1
    for i in range(nr * nc):
        count[i + 1] += count[i]
    fill = count[:-1].copy()
    items = np.empty(count[-1], np.int64)
    for j in range(m):
        k = j + 1 if j + 1 < m else 0
        ra = int((min(poly[j, 0], poly[k, 0]) - r0) / g)
        rb = int((max(poly[j, 0], poly[k, 0]) - r0) / g)
        ca = int((min(poly[j, 1], poly[k, 1]) - c0) / g)
        cb = int((max(poly[j, 1], poly[k, 1]) - c0) / g)
        for a in range(ra, rb + 1):
            for b in range(ca, cb + 1):
                items[fill[a * nc + b]] = j
                fill[a * nc + b] += 1

    return r0, c0, nr, nc, count, items


@njit(cache=True, nogil=True)
def _grid_cast(origins, dirs, poly, t_min, r0, c0, nr, nc, count, items):
    """Cast rays through a segment grid built by :func:`_seg_grid` (see :func:`_ray_hits`)."""
    n = origins.shape[0]
    m = poly.shape[0]
    g = 6.0
    out = np.full(n, np.inf)
    seg = np.full(n, -1, np.int64)
    graze = np.full(n, np.nan)
    for i in range(n):
        orr = origins[i, 0]
        oc = origins[i, 1]
        dr = dirs[i, 0]
        dc = dirs[i, 1]
        best = np.inf
        bj = -1
        # enter the grid: clip the ray to the grid box
        t_enter = 0.0
        t_exit = np.inf
        for ax in range(2):
            o = orr if ax == 0 else oc
            d = dr if ax == 0 else dc
            lo = r0 if ax == 0 else c0
            hi = (r0 + nr * g) if ax == 0 else (c0 + nc * g)
            if d == 0.0:
                if o < lo or o > hi:
                    t_exit = -1.0
            else:
                ta = (lo - o) / d
                tb = (hi - o) / d
                if ta > tb:
                    ta, tb = tb, ta
                t_enter = max(t_enter, ta)
                t_exit = min(t_exit, tb)
        if t_exit < t_enter:
            continue
        pr = orr + (t_enter + 1e-9) * dr
        pc = oc + (t_enter + 1e-9) * dc
        cr = min(max(int((pr - r0) / g), 0), nr - 1)
        cc = min(max(int((pc - c0) / g), 0), nc - 1)
        step_r = 1 if dr > 0 else -1
        step_c = 1 if dc > 0 else -1
        if dr != 0.0:
            nb = r0 + (cr + (1 if dr > 0 else 0)) * g
            tmax_r = (nb - orr) / dr
            tdel_r = g / abs(dr)
        else:
            tmax_r = np.inf
            tdel_r = np.inf
        if dc != 0.0:
            nb = c0 + (cc + (1 if dc > 0 else 0)) * g
            tmax_c = (nb - oc) / dc
            tdel_c = g / abs(dc)
        else:
            tmax_c = np.inf
            tdel_c = np.inf
        while True:
            cell = cr * nc + cc
            for q in range(count[cell], count[cell + 1]):
                j = items[q]
                k = j + 1 if j + 1 < m else 0
                t = _seg_hit(orr, oc, dr, dc, poly[j, 0], poly[j, 1], poly[k, 0], poly[k, 1], t_min)
                if t < best:
                    best = t
                    bj = j
            t_next = min(tmax_r, tmax_c)
            if best <= t_next:
                break
            if tmax_r < tmax_c:
                cr += step_r
                tmax_r += tdel_r
                if cr < 0 or cr >= nr:
                    break
            else:
                cc += step_c
                tmax_c += tdel_c
                if cc < 0 or cc >= nc:
                    break
        out[i] = best
        seg[i] = bj
        if bj >= 0:
            k = bj + 1 if bj + 1 < m else 0
            er = poly[k, 0] - poly[bj, 0]
            ec = poly[k, 1] - poly[bj, 1]
            le = np.sqrt(er * er + ec * ec)
            if le > 0.0:
                graze[i] = abs(dr * er + dc * ec) / le
    return out, seg, graze


@njit(cache=True, nogil=True)
def _ray_hits_brute(origins, dirs, poly, t_min):
    """Reference for :func:`_ray_hits` (tests): every segment for every ray."""
    n = origins.shape[0]
    m = poly.shape[0]
    out = np.full(n, np.inf)
    for i in range(n):
        best = np.inf
        for j in range(m):
            k = j + 1 if j + 1 < m else 0
            t = _seg_hit(origins[i, 0], origins[i, 1], dirs[i, 0], dirs[i, 1],
                         poly[j, 0], poly[j, 1], poly[k, 0], poly[k, 1], t_min)
            if t < best:
                best = t
        out[i] = best
    return out


@njit(cache=True, nogil=True)
def _forward_only(pts, start, min_step):
    """Keep the points of an ordered midline that move forward: walking from ``start`` to
    either end, a point is kept only if it lies at least ``min_step`` ahead of the last
    kept one along the current direction of travel.  Drops the midpoints of rays near the
    basal corners, which fall back onto midline already covered."""
    n = pts.shape[0]
    keep = np.zeros(n, np.bool_)
    keep[start] = True
    for sgn in (1, -1):
        j = start + 3 * sgn
        if j < 0 or j >= n:
            continue
        dr = pts[j, 0] - pts[start, 0]
        dc = pts[j, 1] - pts[start, 1]
        last = start
        i = start + sgn
        while 0 <= i < n:
            nrm = np.sqrt(dr * dr + dc * dc)
            if nrm > 0.0:
                adv = ((pts[i, 0] - pts[last, 0]) * dr + (pts[i, 1] - pts[last, 1]) * dc) / nrm
                if adv >= min_step:
                    # direction: smoothed over the last few px travelled
                    dr = 0.5 * dr / nrm + 0.5 * (pts[i, 0] - pts[last, 0]) / adv
                    dc = 0.5 * dc / nrm + 0.5 * (pts[i, 1] - pts[last, 1]) / adv
                    keep[i] = True
                    last = i
            i += sgn
    return keep


@njit(cache=True, nogil=True)
def _longest_true_run(flags, circular):
    """(start, length) of the longest run of True; circular runs may wrap around (the
    first longest run counted from the first False wins)."""
    n = flags.shape[0]
    n_true = 0
    for i in range(n):
        if flags[i]:
            n_true += 1
    if n_true == 0:
        return 0, 0
    if n_true == n:
        return 0, n
    shift = 0
    if circular:
        while flags[shift]:
            shift += 1
    best_start = 0
    best_len = 0
    run_start = 0
    run = 0
    for i in range(n):
        j = i + shift
        if j >= n:
            j -= n
        if flags[j]:
            if run == 0:
                run_start = i
            run += 1
            if run > best_len:
                best_len = run
                best_start = run_start
        else:
            run = 0
    return (best_start + shift) % n, best_len


@njit(cache=True, nogil=True)
def _interp_sorted(x, xp, fp):
    """np.interp(x, xp, fp) for ascending x (same arithmetic; plain loops keep numba's
    compile time down)."""
    n = x.shape[0]
    m = xp.shape[0]
    out = np.empty(n)
    j = 0
    for i in range(n):
        v = x[i]
        if v < xp[0]:
            out[i] = fp[0]
            continue
        if v > xp[m - 1]:
            out[i] = fp[m - 1]
            continue
        while j + 1 < m and xp[j + 1] <= v:
            j += 1
        if j == m - 1 or xp[j] == v:
            out[i] = fp[j]
        else:
            slope = (fp[j + 1] - fp[j]) / (xp[j + 1] - xp[j])
            r = slope * (v - xp[j]) + fp[j]
            if np.isnan(r):
                r = slope * (v - xp[j + 1]) + fp[j + 1]
                if np.isnan(r) and fp[j] == fp[j + 1]:
                    r = fp[j]
            out[i] = r
    return out


@njit(cache=True, nogil=True)
def _round_half_even(x):
    """int(round(x)) as Python rounds (halves to even)."""
    f = np.floor(x)
    d = x - f
    r = int(f)
    if d > 0.5 or (d == 0.5 and r % 2 == 1):
        r += 1
    return r


@njit(cache=True, nogil=True)
def _insertion_sort(a, n):
    """Sort a[:n] in place (short arrays)."""
    for i in range(1, n):
        v = a[i]
        k = i - 1
        while k >= 0 and a[k] > v:
            a[k + 1] = a[k]
            k -= 1
        a[k + 1] = v


@njit(cache=True, nogil=True)
def _gauss_kernel(sigma):
    """scipy.ndimage.gaussian_filter1d's kernel (truncate 4, order 0)."""
    radius = int(4.0 * sigma + 0.5)
    w = np.empty(2 * radius + 1)
    s2 = sigma * sigma
    tot = 0.0
    for i in range(2 * radius + 1):
        x = float(i - radius)
        w[i] = np.exp(-0.5 / s2 * x * x)
        tot += w[i]
    for i in range(2 * radius + 1):
        w[i] /= tot
    return w


@njit(cache=True, nogil=True)
def _gauss_rows(p, w, wrap):
    """Gaussian filter of the columns of p (N, 2) along axis 0 with kernel w, as
    ``gaussian_filter1d(p, sigma, axis=0, mode="wrap" if wrap else "nearest")``."""
    n = p.shape[0]
    r = (w.shape[0] - 1) // 2
    q = np.empty((n + 2 * r, 2))  # the rows extended by r each side
    for i in range(n + 2 * r):
        k = i - r
        if wrap:
            k %= n
        elif k < 0:
            k = 0
        elif k >= n:
            k = n - 1
        q[i, 0] = p[k, 0]
        q[i, 1] = p[k, 1]
    out = np.empty((n, 2))
    for i in range(n):
        a0 = 0.0
        a1 = 0.0
        for j in range(2 * r + 1):
            a0 += w[j] * q[i + j, 0]
            a1 += w[j] * q[i + j, 1]
        out[i, 0] = a0
        out[i, 1] = a1
    return out


@njit(cache=True, nogil=True)
def _unit_tangents(p):
    """np.gradient(p, axis=0) normalised to unit length (open polyline, N >= 2)."""
    n = p.shape[0]
    t = np.empty((n, 2))
    for i in range(n):
        if i == 0:
            dr = p[1, 0] - p[0, 0]
            dc = p[1, 1] - p[0, 1]
        elif i == n - 1:
            dr = p[n - 1, 0] - p[n - 2, 0]
            dc = p[n - 1, 1] - p[n - 2, 1]
        else:
            dr = (p[i + 1, 0] - p[i - 1, 0]) / 2.0
            dc = (p[i + 1, 1] - p[i - 1, 1]) / 2.0
        h = max(np.hypot(dr, dc), 1e-12)
        t[i, 0] = dr / h
        t[i, 1] = dc / h
    return t


@njit(cache=True, nogil=True)
def _orientation(p):
    """+1.0 if the closed polygon p runs with its interior on the left (signed area > 0)."""
    n = p.shape[0]
    a = 0.0
    for i in range(n):
        k = i + 1 if i + 1 < n else 0
        a += p[i, 0] * p[k, 1] - p[k, 0] * p[i, 1]
    return 1.0 if a > 0 else -1.0


@njit(cache=True, nogil=True)
def _arc_length(p, closed):
    """:func:`arc_length_param` (numba)."""
    n = p.shape[0]
    m = n + 1 if closed else n
    s = np.empty(m)
    s[0] = 0.0
    for i in range(1, m):
        k = i if i < n else 0
        s[i] = s[i - 1] + np.hypot(p[k, 0] - p[i - 1, 0], p[k, 1] - p[i - 1, 1])
    return s


@njit(cache=True, nogil=True)
def _resample(p, s, n, step, closed):
    """:func:`resample_polyline` (numba) given the arc length s of p (closed: with the
    closing vertex); n <= 0: spacing ``step``."""
    total = s[-1]
    if n <= 0:
        n = max(_round_half_even(total / step), 2)
    num = n + 1 if closed else n
    t = np.empty(num)
    if num > 1:
        dt = total / (num - 1)
        for i in range(num):
            t[i] = i * dt
        t[num - 1] = total
    else:
        t[0] = 0.0
    if closed:
        t = t[:num - 1]
    m = p.shape[0]
    fr = np.empty(s.shape[0])
    fc = np.empty(s.shape[0])
    for i in range(s.shape[0]):
        k = i if i < m else 0
        fr[i] = p[k, 0]
        fc[i] = p[k, 1]
    ir = _interp_sorted(t, s, fr)
    ic = _interp_sorted(t, s, fc)
    out = np.empty((t.shape[0], 2))
    for i in range(t.shape[0]):
        out[i, 0] = ir[i]
        out[i, 1] = ic[i]
    return out


@njit(cache=True, nogil=True)
def _smooth_open(p, sigma):
    """:func:`smooth_open` (numba)."""
    n = p.shape[0]
    if sigma <= 0 or n < 3:
        return p.copy()
    k = min(int(np.ceil(4 * sigma)), n - 1)
    q = np.empty((n + 2 * k, 2))
    for i in range(k):
        for a in range(2):
            q[i, a] = 2 * p[0, a] - p[k - i, a]
            q[k + n + i, a] = 2 * p[n - 1, a] - p[n - 2 - i, a]
    for i in range(n):
        q[k + i, 0] = p[i, 0]
        q[k + i, 1] = p[i, 1]
    f = _gauss_rows(q, _gauss_kernel(sigma), False)
    out = np.empty((n, 2))
    for i in range(n):
        out[i, 0] = f[k + i, 0]
        out[i, 1] = f[k + i, 1]
    return out


@njit(cache=True, nogil=True)
def _offset_closed(contour, dist):
    """Move a closed contour ``dist`` px outward along its normal.  A traced contour runs
    through the centres of the mask's boundary pixels, which lie about half a pixel inside
    the region the mask covers (each pixel stands for its whole square); moving out by
    0.5 px puts the borders - and the basal ends of the midline - on the mask's edge.  The
    midline itself does not move (both borders move by the same amount)."""
    n = contour.shape[0]
    sgn = _orientation(contour)  # interior left of the travel direction if > 0
    out = np.empty((n, 2))
    for i in range(n):
        k = i + 1 if i + 1 < n else 0
        j = i - 1 if i > 0 else n - 1
        dr = (contour[k, 0] - contour[j, 0]) / 2.0
        dc = (contour[k, 1] - contour[j, 1]) / 2.0
        h = max(np.hypot(dr, dc), 1e-12)
        dr /= h
        dc /= h
        out[i, 0] = contour[i, 0] - dist * (sgn * -dc)
        out[i, 1] = contour[i, 1] - dist * (sgn * dr)
    return out


@njit(cache=True, nogil=True)
def _recentre_grid(core, poly, thickness, w, r0, c0, nr, nc, count, items):
    """:func:`_recentre` with the contour's segment grid built (:func:`_seg_grid`) and the
    smoothing kernel w (empty: no smoothing)."""
    n = core.shape[0]
    tang = _unit_tangents(core)
    nrm = np.empty((n, 2))
    neg = np.empty((n, 2))
    for i in range(n):
        nrm[i, 0] = -tang[i, 1]
        nrm[i, 1] = tang[i, 0]
        neg[i, 0] = -nrm[i, 0]
        neg[i, 1] = -nrm[i, 1]
    tp = _grid_cast(core, nrm, poly, 0.0, r0, c0, nr, nc, count, items)[0]
    tm = _grid_cast(core, neg, poly, 0.0, r0, c0, nr, nc, count, items)[0]
    ok = np.zeros(n, np.bool_)
    n_ok = 0
    for i in range(n):
        ch = tp[i] + tm[i]
        if np.isfinite(tp[i]) and np.isfinite(tm[i]) and ch > 0.5 * thickness and ch < 1.6 * thickness:
            ok[i] = True
            n_ok += 1
    if n_ok < 8:
        return core
    xp = np.empty(n_ok)
    fp = np.empty(n_ok)
    j = 0
    for i in range(n):
        if ok[i]:
            xp[j] = float(i)
            fp[j] = 0.5 * (tp[i] - tm[i])
            j += 1
    x = np.empty(n)
    for i in range(n):
        x[i] = float(i)
    shift = _interp_sorted(x, xp, fp)
    sh = np.empty((n, 2))
    for i in range(n):
        sh[i, 0] = shift[i]
        sh[i, 1] = 0.0
    if w.shape[0] > 0:
        sh = _gauss_rows(sh, w, False)
    out = np.empty((n, 2))
    for i in range(n):
        out[i, 0] = core[i, 0] + nrm[i, 0] * sh[i, 0]
        out[i, 1] = core[i, 1] + nrm[i, 1] * sh[i, 0]
    return out


@njit(cache=True, nogil=True)
def _recentre(core, contour, thickness, sigma):
    """Move each midline point to the middle of the wall chord along the midline's own
    normal (a ray each way to the outer contour).  The endocardial-normal chords of step 4
    are not symmetric about the mid-wall where the wall is curved or tapers; chords normal
    to the midline are.  The shift is smoothed along the line (``sigma`` px); points whose
    chord is missing or implausible (not within 0.5-1.6 x the median thickness) take the
    shift interpolated from their neighbours."""
    r0, c0, nr, nc, count, items = _seg_grid(contour)
    w = _gauss_kernel(sigma) if sigma > 0 else np.empty(0)
    return _recentre_grid(core, contour, thickness, w, r0, c0, nr, nc, count, items)


@njit(cache=True, nogil=True)
def _contour_and_endo(c_raw, d_start, d_end, sigma, edge_offset):
    """Step 3: the raw contour (row, col) resampled at 1 px around the loop, smoothed
    (``sigma``; mode wrap), moved ``edge_offset`` outward; and which resampled points lie on
    the cavity's side (the contour between d_start and d_end)."""
    s_raw = _arc_length(c_raw, True)
    perim = s_raw[-1]
    contour = _resample(c_raw, s_raw, 0, 1.0, True)
    nC = contour.shape[0]
    a0 = s_raw[d_start]
    span = (s_raw[d_end] - a0) % perim
    is_endo = np.empty(nC, np.bool_)
    ds = perim / nC
    for i in range(nC):
        x = i * ds - a0
        if -perim < x < 0.0:
            x += perim  # = x % perim (exact in this range)
        elif not 0.0 <= x < perim:
            x %= perim
        is_endo[i] = x <= span
    if sigma > 0:
        contour = _gauss_rows(contour, _gauss_kernel(sigma), True)
    if edge_offset != 0.0:
        contour = _offset_closed(contour, edge_offset)
    return contour, is_endo


@njit(cache=True, nogil=True)
def _median_nearest(x, size):
    """scipy.ndimage.median_filter(x, size, mode="nearest") of a 1-d array."""
    n = x.shape[0]
    half = size // 2
    buf = np.empty(size)
    out = np.empty(n)
    for i in range(n):
        for j in range(size):
            k = min(max(i - half + j, 0), n - 1)
            buf[j] = x[k]
        _insertion_sort(buf, size)
        out[i] = buf[size // 2]
    return out


@njit(cache=True, nogil=True)
def _wall_midline(contour, start, length, step, max_graze, window, min_ratio, min_core_frac,
                  r0, c0, nr, nc, count, items):
    """Step 4: endocardium, epicardium and the midpoints of the accepted thickness rays.
    Returns (ok, core (K, 2), thickness, endo, epi); ok False: a broken mask."""
    nC = contour.shape[0]
    endo = np.empty((length, 2))
    for i in range(length):
        k = (start + i) % nC
        endo[i, 0] = contour[k, 0]
        endo[i, 1] = contour[k, 1]
    ne = nC - length
    epi = np.empty((ne, 2))
    for i in range(ne):
        k = (start + length + i) % nC
        epi[ne - 1 - i, 0] = contour[k, 0]
        epi[ne - 1 - i, 1] = contour[k, 1]
    tang = _unit_tangents(endo)
    sgn = _orientation(contour)
    n_sel = (length + step - 1) // step
    extra = (n_sel - 1) * step != length - 1
    ns = n_sel + 1 if extra else n_sel
    origins = np.empty((ns, 2))
    dirs = np.empty((ns, 2))
    for q in range(ns):
        i = q * step if q < n_sel else length - 1
        origins[q, 0] = endo[i, 0]
        origins[q, 1] = endo[i, 1]
        dirs[q, 0] = sgn * -tang[i, 1]
        dirs[q, 1] = sgn * tang[i, 0]
    t_hit, _, graze = _grid_cast(origins, dirs, contour, 0.5, r0, c0, nr, nc, count, items)
    accept = np.zeros(ns, np.bool_)
    n_acc = 0
    for q in range(ns):
        if np.isfinite(t_hit[q]) and graze[q] <= max_graze:
            accept[q] = True
            n_acc += 1
    # a wall that tapers into an oblique basal cap: its rays are short and hit the cap
    # slantwise; keep only rays with a thickness close to their neighbours'
    if n_acc >= 3:
        idx = np.empty(n_acc, np.int64)
        ta = np.empty(n_acc)
        j = 0
        for q in range(ns):
            if accept[q]:
                idx[j] = q
                ta[j] = t_hit[q]
                j += 1
        local = _median_nearest(ta, min(window, n_acc))
        for j in range(n_acc):
            if not ta[j] >= min_ratio * local[j]:
                accept[idx[j]] = False
    # the core: from the first to the last run of >= 3 accepted rays
    i0 = -1
    i1 = -1
    q = 0
    while q < ns:
        if accept[q]:
            e = q
            while e < ns and accept[e]:
                e += 1
            if e - q >= 3:
                if i0 < 0:
                    i0 = q
                i1 = e
            q = e
        else:
            q += 1
    empty = np.empty((0, 2))
    if i0 < 0:
        return False, empty, np.nan, endo, epi
    n_core = 0
    for q in range(i0, i1):
        if accept[q]:
            n_core += 1
    if (i1 - i0) < min_core_frac * ns or n_core < 8:
        return False, empty, np.nan, endo, epi
    core = np.empty((n_core, 2))
    th = np.empty(n_core)
    j = 0
    for q in range(i0, i1):
        if accept[q]:
            th[j] = t_hit[q]
            h = 0.5 * t_hit[q]
            core[j, 0] = origins[q, 0] + dirs[q, 0] * h
            core[j, 1] = origins[q, 1] + dirs[q, 1] * h
            j += 1
    _insertion_sort(th, n_core)  # the median, as np.median
    h = n_core // 2
    thickness = th[h] if n_core % 2 else (th[h - 1] + th[h]) / 2.0
    keep = _forward_only(core, n_core // 2, 0.25)
    n_keep = 0
    for q in range(n_core):
        if keep[q]:
            n_keep += 1
    if n_keep < 8:
        return False, empty, thickness, endo, epi
    kept = np.empty((n_keep, 2))
    j = 0
    for q in range(n_core):
        if keep[q]:
            kept[j, 0] = core[q, 0]
            kept[j, 1] = core[q, 1]
            j += 1
    return True, kept, thickness, endo, epi


@njit(cache=True, nogil=True)
def _finish_midline(core, contour, thickness, sigma, iterations, k_fit, max_ext, n_points,
                    r0, c0, nr, nc, count, items):
    """Step 5: resample the midline at 1 px, smooth, re-centre, extend to the basal caps
    along its end tangents (when the contour is within ``max_ext`` thicknesses) and resample
    to ``n_points``.  Returns (points, first end found, last end found)."""
    core = _resample(core, _arc_length(core, False), 0, 1.0, False)
    core = _smooth_open(core, sigma)
    w = _gauss_kernel(sigma) if sigma > 0 else np.empty(0)
    for _ in range(iterations):
        core = _recentre_grid(core, contour, thickness, w, r0, c0, nr, nc, count, items)
    n = core.shape[0]
    k = min(k_fit, n - 1)
    found = np.zeros(2, np.bool_)
    ext = np.empty((2, 2))
    o = np.empty((1, 2))
    d = np.empty((1, 2))
    for e in range(2):
        ie = 0 if e == 0 else n - 1
        ii = k if e == 0 else n - 1 - k
        dr = core[ie, 0] - core[ii, 0]
        dc = core[ie, 1] - core[ii, 1]
        h = max(np.hypot(dr, dc), 1e-12)
        dr = dr / h
        dc = dc / h
        o[0, 0] = core[ie, 0]
        o[0, 1] = core[ie, 1]
        d[0, 0] = dr
        d[0, 1] = dc
        t = _grid_cast(o, d, contour, 0.0, r0, c0, nr, nc, count, items)[0][0]
        if np.isfinite(t) and not t > max_ext * thickness:
            found[e] = True
            ext[e, 0] = core[ie, 0] + t * dr
            ext[e, 1] = core[ie, 1] + t * dc
    m = n + int(found[0]) + int(found[1])
    full = np.empty((m, 2))
    j = 1 if found[0] else 0
    if found[0]:
        full[0, 0] = ext[0, 0]
        full[0, 1] = ext[0, 1]
    for i in range(n):
        full[j + i, 0] = core[i, 0]
        full[j + i, 1] = core[i, 1]
    if found[1]:
        full[m - 1, 0] = ext[1, 0]
        full[m - 1, 1] = ext[1, 1]
    points = _resample(full, _arc_length(full, False), n_points, 1.0, False)
    return points, found[0], found[1]


@lru_cache(maxsize=16)
def _max_graze(max_incidence_deg: float) -> float:
    return float(np.sin(np.deg2rad(max_incidence_deg)))


def _fail(cfg: CentrelineConfig, flags: list[str]) -> Centreline:
    nan = np.full((cfg.n_points, 2), np.nan)
    empty = np.empty((0, 2))
    return Centreline(nan, None, empty, empty, float("nan"), float("nan"), False, flags)


def warmup() -> None:
    """Compile the numba helpers (call at start-up; cached on disk afterwards)."""
    _project(np.zeros((1, 2)), np.array([[0.0, 0.0], [1.0, 1.0]]), True)
    _forward_only(np.array([[0.0, 0.0], [1.0, 0.0], [2.0, 0.0], [3.0, 0.0]]), 0, 0.25)
    _ray_hits(np.zeros((1, 2)), np.array([[1.0, 0.0]]), np.array([[1.0, -1.0], [1.0, 1.0], [2.0, 0.0]]),
              0.0)
    # the whole extraction path, with the argument types it is called with: a horseshoe
    rr, cc = np.mgrid[0:96, 0:96]
    rad = np.hypot(rr - 48.0, cc - 48.0)
    horseshoe = ((rad > 22) & (rad < 32) & (rr < 60)).astype(np.uint8)
    extract_centreline(horseshoe)
    _recentre(np.array([[0.0, 0.0], [1.0, 0.0]]), np.array([[1.0, -1.0], [1.0, 1.0], [2.0, 0.0]]),
              1.0, 2.0)


# --------------------------------------------------------------------------------------
# extraction
# --------------------------------------------------------------------------------------


def extract_centreline(mask: np.ndarray, config: CentrelineConfig | None = None,
                       spacing_mm=None) -> Centreline:
    """Centreline of an LV myocardium mask (see the module docstring).  Never raises on a
    bad mask: the result has ``ok=False`` and flags instead."""
    cfg = config or CentrelineConfig()
    flags: list[str] = []
    m = np.asarray(mask)
    if m.ndim != 2 or m.shape[0] < 8 or m.shape[1] < 8:
        return _fail(cfg, ["broken_mask"])
    if m.dtype.kind == "f":
        with np.errstate(invalid="ignore"):
            m8 = (m > 0.5).astype(np.uint8)
    elif m.dtype == np.uint8 and m.flags.c_contiguous:
        m8 = m
    else:
        m8 = (m > 0).astype(np.uint8)

    # 1. largest component (outer contours with their holes) -------------------------
    contours, hier = cv2.findContours(m8, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_NONE)
    if not contours:
        return _fail(cfg, ["empty_mask"])
    hier = hier[0]
    outer_ids = [i for i in range(len(contours)) if hier[i, 3] < 0]
    areas = np.array([cv2.contourArea(contours[i]) + len(contours[i]) / 2.0 for i in outer_ids])
    order = np.argsort(areas)[::-1]
    ko = outer_ids[order[0]]
    area = float(areas[order[0]])
    if area < cfg.min_area_px:
        return _fail(cfg, ["empty_mask"])
    if len(order) > 1 and areas[order[1]] >= cfg.second_component_frac * area:
        flags.append("two_components")
    outer = contours[ko]
    for i in range(len(contours)):
        if hier[i, 3] == ko:
            if cv2.contourArea(contours[i]) >= cfg.max_hole_frac * area:
                return _fail(cfg, flags + ["broken_mask"])  # a closed ring: no basal opening
            if "holes_filled" not in flags:
                flags.append("holes_filled")  # small holes: treated as myocardium
    if len(outer) < 20:
        return _fail(cfg, flags + ["broken_mask"])

    # 2. the cavity = the deepest convexity defect of the outer contour -----------------
    try:
        hull_idx = cv2.convexHull(outer, returnPoints=False)
        defects = cv2.convexityDefects(outer, hull_idx)
    except cv2.error:
        defects = None
    if defects is None or len(defects) == 0:
        return _fail(cfg, flags + ["broken_mask"])
    defects = defects.reshape(-1, 4)
    d_start, d_end, _, _ = defects[int(np.argmax(defects[:, 3]))]
    c_raw = np.ascontiguousarray(outer[:, 0, ::-1], dtype=np.float64)  # (row, col)
    nR = len(c_raw)
    cav_idx = (d_start + np.arange((d_end - d_start) % nR + 1)) % nR
    if abs(cv2.contourArea(outer[cav_idx])) < cfg.min_cavity_frac * area:
        return _fail(cfg, flags + ["broken_mask"])

    # 3. contour resampled at 1 px and smoothed; endo = the cavity's side ----------------
    contour, is_endo = _contour_and_endo(c_raw, int(d_start), int(d_end),
                                         float(cfg.smooth_sigma_px), float(cfg.edge_offset_px))
    nC = len(contour)
    start, length = _longest_true_run(is_endo, True)
    if length < 10 or length > nC - 10:
        return _fail(cfg, flags + ["broken_mask"])

    # 4. rays from the endocardium into the wall (every ray_step_px) -------------------
    grid = _seg_grid(contour)
    ok, core, thickness, endo, epi = _wall_midline(
        contour, start, length, max(1, int(cfg.ray_step_px)), _max_graze(cfg.max_incidence_deg),
        int(cfg.thickness_window), float(cfg.min_thickness_ratio), float(cfg.min_core_frac), *grid)
    if not ok:
        return _fail(cfg, flags + ["broken_mask"])
    thickness = float(thickness)

    # 5. smooth, re-centre, extend to the basal caps, resample ----------------------------
    points, found0, found1 = _finish_midline(
        core, contour, thickness, float(cfg.midline_sigma_px), int(cfg.recentre_iterations),
        max(2, int(round(cfg.tangent_fit_px))), float(cfg.max_extension_thickness),
        int(cfg.n_points), *grid)
    if not (found0 and found1):
        flags.append("basal_end_uncertain")

    # septal end first
    septum_left = cfg.septum_side == "left"
    if (points[0, 1] > points[-1, 1]) == septum_left:
        points = points[::-1].copy()
        endo = endo[::-1].copy()
        epi = epi[::-1].copy()
    length_px = float(_arc_length(points, False)[-1])
    pmm = None
    if spacing_mm is not None:
        pmm = points * np.asarray(spacing_mm, dtype=np.float64).reshape(1, 2)
    return Centreline(points, pmm, endo, epi, length_px, thickness, True, flags)
