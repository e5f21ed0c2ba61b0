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

The per-frame cost is ~2.3 ms for a 256 x 256 phantom mask on the 2-core dev VM (median of
repeated calls; the numba helpers compiled by ``warmup()``); ~0.8 ms of it is the
re-centring of step 5 (two iterations, two ray casts each).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np
from numba import njit
from scipy.ndimage import gaussian_filter1d, median_filter



@dataclass(frozen=True)
class CentrelineConfig:
    n_points: int = 120
    septum_side: str = "left"  # "left": septum at smaller col (standard A4C display)
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

    Segments are bucketed in a uniform grid and each ray walks the grid cells it crosses
    (Amanatides-Woo), stopping once the next cell starts beyond the best hit.
    """
    n = origins.shape[0]
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


def _longest_true_run(flags: np.ndarray, circular: bool) -> tuple[int, int]:
    """(start, length) of the longest run of True; circular runs may wrap around."""
    f = np.asarray(flags, dtype=bool)
    n = len(f)
    if n == 0 or not f.any():
        return 0, 0
    if f.all():
        return 0, n
    shift = 0
    if circular:
        shift = int(np.flatnonzero(~f)[0])
        f = np.roll(f, -shift)
    d = np.diff(np.concatenate([[0], f.astype(np.int8), [0]]))
    starts = np.flatnonzero(d == 1)
    ends = np.flatnonzero(d == -1)
    i = int(np.argmax(ends - starts))
    return (int(starts[i]) + shift) % n, int(ends[i] - starts[i])


def _offset_closed(contour: np.ndarray, dist: float) -> np.ndarray:
    """Move a closed contour ``dist`` px outward along its normal.  A traced contour runs
    through the centres of the mask's boundary pixels, which lie about half a pixel inside
    the region the mask covers (each pixel stands for its whole square); moving out by
    0.5 px puts the borders - and the basal ends of the midline - on the mask's edge.  The
    midline itself does not move (both borders move by the same amount)."""
    tang = np.gradient(np.vstack([contour[-1:], contour, contour[:1]]), axis=0)[1:-1]
    tang /= np.maximum(np.hypot(tang[:, 0], tang[:, 1]), 1e-12)[:, None]
    r_, c_ = contour[:, 0], contour[:, 1]
    area2 = float(np.sum(r_ * np.roll(c_, -1) - np.roll(r_, -1) * c_))
    sgn = 1.0 if area2 > 0 else -1.0  # interior left of the travel direction if > 0
    inward = sgn * np.column_stack([-tang[:, 1], tang[:, 0]])
    return contour - dist * inward


def _recentre(core: np.ndarray, contour: np.ndarray, thickness: float,
              sigma: float) -> np.ndarray:
    """Move each midline point to the middle of the wall chord along the midline's own
    normal (a ray each way to the outer contour).  The endocardial-normal chords of step 4
    are not symmetric about the mid-wall where the wall is curved or tapers; chords normal
    to the midline are.  The shift is smoothed along the line (``sigma`` px); points whose
    chord is missing or implausible (not within 0.5-1.6 x the median thickness) take the
    shift interpolated from their neighbours."""
    tang = np.gradient(core, axis=0)
    tang /= np.maximum(np.hypot(tang[:, 0], tang[:, 1]), 1e-12)[:, None]
    nrm = np.ascontiguousarray(np.column_stack([-tang[:, 1], tang[:, 0]]))
    poly = np.ascontiguousarray(contour)
    pts = np.ascontiguousarray(core)
    tp = _ray_hits(pts, nrm, poly, 0.0)[0]
    tm = _ray_hits(pts, np.ascontiguousarray(-nrm), poly, 0.0)[0]
    with np.errstate(invalid="ignore"):
        ok = np.isfinite(tp) & np.isfinite(tm) & (tp + tm > 0.5 * thickness) & (tp + tm < 1.6 * thickness)
    if ok.sum() < 8:
        return core
    idx = np.arange(len(core))
    shift = np.interp(idx, idx[ok], 0.5 * (tp - tm)[ok])
    shift = gaussian_filter1d(shift, sigma, mode="nearest") if sigma > 0 else shift
    return core + nrm * shift[:, None]


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
    c_raw = outer[:, 0, ::-1].astype(np.float64)  # (row, col)
    nR = len(c_raw)
    cav_idx = (d_start + np.arange((d_end - d_start) % nR + 1)) % nR
    if abs(cv2.contourArea(outer[cav_idx])) < cfg.min_cavity_frac * area:
        return _fail(cfg, flags + ["broken_mask"])

    # 3. contour resampled at 1 px and smoothed; endo = the cavity's side ----------------
    s_raw = arc_length_param(c_raw, closed=True)
    perim = s_raw[-1]
    contour = resample_polyline(c_raw, step=1.0, closed=True)
    nC = len(contour)
    s_new = np.arange(nC) * (perim / nC)
    a0 = s_raw[d_start]
    span = (s_raw[d_end] - a0) % perim
    is_endo = ((s_new - a0) % perim) <= span
    contour = smooth_closed(contour, cfg.smooth_sigma_px)
    if cfg.edge_offset_px:
        contour = _offset_closed(contour, cfg.edge_offset_px)
    start, length = _longest_true_run(is_endo, circular=True)
    if length < 10 or length > nC - 10:
        return _fail(cfg, flags + ["broken_mask"])
    e_idx = (start + np.arange(length)) % nC
    p_idx = (start + length + np.arange(nC - length)) % nC
    endo = contour[e_idx]
    epi = contour[p_idx][::-1]  # now runs from endo[0]'s side to endo[-1]'s side

    # 4. rays from the endocardium into the wall (every ray_step_px) -------------------
    tang = np.gradient(endo, axis=0)
    tang /= np.maximum(np.hypot(tang[:, 0], tang[:, 1]), 1e-12)[:, None]
    r_, c_ = contour[:, 0], contour[:, 1]
    signed_area = 0.5 * float(np.sum(r_ * np.roll(c_, -1) - np.roll(r_, -1) * c_))
    sgn = 1.0 if signed_area > 0 else -1.0  # interior lies left of the travel direction if > 0
    normal = sgn * np.column_stack([-tang[:, 1], tang[:, 0]])
    step = max(1, int(cfg.ray_step_px))
    sel = np.arange(0, len(endo), step)
    if sel[-1] != len(endo) - 1:
        sel = np.append(sel, len(endo) - 1)
    origins = np.ascontiguousarray(endo[sel])
    dirs = np.ascontiguousarray(normal[sel])
    t_hit, _, graze = _ray_hits(origins, dirs, np.ascontiguousarray(contour), 0.5)
    with np.errstate(invalid="ignore"):
        accept = np.isfinite(t_hit) & (graze <= np.sin(np.deg2rad(cfg.max_incidence_deg)))
    # a wall that tapers into an oblique basal cap: its rays are short and hit the cap
    # slantwise; keep only rays with a thickness close to their neighbours'
    if accept.sum() >= 3:
        ta = t_hit[accept]
        local = median_filter(ta, size=min(cfg.thickness_window, len(ta)), mode="nearest")
        ok = ta >= cfg.min_thickness_ratio * local
        accept[np.flatnonzero(accept)[~ok]] = False
    mid = origins + dirs * (0.5 * t_hit)[:, None]
    # the core: from the first to the last run of >= 3 accepted rays
    d = np.diff(np.concatenate([[0], accept.astype(np.int8), [0]]))
    starts = np.flatnonzero(d == 1)
    ends = np.flatnonzero(d == -1)
    keep = (ends - starts) >= 3
    if not keep.any():
        return _fail(cfg, flags + ["broken_mask"])
    i0 = int(starts[keep][0])
    i1 = int(ends[keep][-1])
    core_sel = np.zeros(len(sel), bool)
    core_sel[i0:i1] = True
    core_sel &= accept
    if (i1 - i0) < cfg.min_core_frac * len(sel) or core_sel.sum() < 8:
        return _fail(cfg, flags + ["broken_mask"])
    thickness = float(np.median(t_hit[core_sel]))
    core = mid[core_sel]
    core = core[_forward_only(np.ascontiguousarray(core), len(core) // 2, 0.25)]
    if len(core) < 8:
        return _fail(cfg, flags + ["broken_mask"])

    # 5. smooth, extend to the basal caps, resample --------------------------------------
    core = resample_polyline(core, step=1.0)
    core = smooth_open(core, cfg.midline_sigma_px)
    for _ in range(cfg.recentre_iterations):
        core = _recentre(core, contour, thickness, cfg.midline_sigma_px)
    k = min(max(2, int(round(cfg.tangent_fit_px))), len(core) - 1)
    ends_pts = []
    for end, inner in ((core[0], core[k]), (core[-1], core[-1 - k])):
        dvec = end - inner
        dvec = dvec / max(float(np.hypot(*dvec)), 1e-12)
        t = _ray_hits(end[None, :].copy(), dvec[None, :].copy(), np.ascontiguousarray(contour), 0.0)[0][0]
        if not np.isfinite(t) or t > cfg.max_extension_thickness * thickness:
            if "basal_end_uncertain" not in flags:
                flags.append("basal_end_uncertain")
            ends_pts.append(None)
        else:
            ends_pts.append(end + t * dvec)
    parts = []
    if ends_pts[0] is not None:
        parts.append(ends_pts[0][None, :])
    parts.append(core)
    if ends_pts[1] is not None:
        parts.append(ends_pts[1][None, :])
    points = resample_polyline(np.vstack(parts), n=cfg.n_points)

    # septal end first
    septum_left = cfg.septum_side == "left"
    if (points[0, 1] > points[-1, 1]) == septum_left:
        points = points[::-1].copy()
        endo = endo[::-1].copy()
        epi = epi[::-1].copy()
    length_px = float(arc_length_param(points)[-1])
    pmm = None
    if spacing_mm is not None:
        pmm = points * np.asarray(spacing_mm, dtype=np.float64).reshape(1, 2)
    return Centreline(points, pmm, endo, epi, length_px, thickness, True, flags)
