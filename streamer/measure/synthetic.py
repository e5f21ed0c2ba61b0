"""Analytic deforming horseshoe: an A4C-like LV myocardium with exact strain truth.

For tests and demos of the measure stage until (and besides) the calib phantoms: arrays out,
numpy / cv2 / scipy only.

Geometry (pixels, rows down, cols right): the myocardial midline at end-diastole is an
elliptic arc ``(r, c) = (apex_row + A (1 - cos th), centre_col + B sin th)`` for
``th`` in [-th_max, th_max]: apex at the top, septum (th < 0) on the left, the two basal
ends at the bottom.  The wall is a band of ``thickness_px`` around the midline with flat
basal caps.

Motion: a material point u in [0, 1] (0 = basal septum, 1 = basal lateral) sits at arc
fraction ``sigma(u, t) = (u + e(t) W(u)) / (1 + e(t))`` of the ED arc, which is then scaled
by (1 + e(t)) about the apex.  Hence

- the midline length is exactly L0 (1 + e(t)): GLS(t) = 100 e(t) %;
- the strain of the material segment [u_a, u_b] is exactly e(t) (W(u_b) - W(u_a)) / (u_b - u_a),
  with the local weight ``w(u) = W'(u) = 1 - alpha cos(2 pi u) + beta sin(2 pi u)``
  (mean 1): apical segments shorten more than basal ones, the septum more than the lateral
  wall when beta > 0.

``e(t)`` per beat: a half-cosine down to ``gls_peak_pct`` at end-systole, a half-cosine
back up to 0 at the next end-diastole (t = k * period_s).  Velocities are exact time
derivatives (central differences with a 1e-6 s step on the analytic positions); the dense
flow between two frames is the exact displacement, on the earlier frame's grid.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
from scipy.spatial import cKDTree


@dataclass
class Horseshoe:
    shape: tuple[int, int] = (256, 256)
    spacing_mm: tuple[float, float] = (0.4, 0.4)
    apex_row_px: float = 28.0
    centre_col_px: float = 128.3
    A_px: float = 150.0
    B_px: float = 58.0
    th_max: float = 0.6 * np.pi
    thickness_px: float = 20.0
    gls_peak_pct: float = -20.0
    period_s: float = 1.0
    t_es_s: float = 0.35
    alpha: float = 0.3
    beta: float = 0.1

    def __post_init__(self):
        th = np.linspace(-self.th_max, self.th_max, 20001)
        p = self._ellipse(th)
        s = np.concatenate([[0.0], np.cumsum(np.hypot(*np.diff(p, axis=0).T))])
        self._th = th
        self._sigma = s / s[-1]
        self.L0_px = float(s[-1])

    # ---- analytic pieces ------------------------------------------------------------
    def _ellipse(self, th):
        return np.column_stack([self.apex_row_px + self.A_px * (1 - np.cos(th)),
                                self.centre_col_px + self.B_px * np.sin(th)])

    @property
    def apex_px(self) -> np.ndarray:
        return np.array([self.apex_row_px, self.centre_col_px])

    def e(self, t_s) -> np.ndarray:
        """Global strain (fraction) at times t_s."""
        t = np.asarray(t_s, dtype=np.float64)
        phi = np.mod(t, self.period_s)
        es = self.t_es_s
        sys = 0.5 * (1 - np.cos(np.pi * phi / es))
        dia = 0.5 * (1 + np.cos(np.pi * (phi - es) / (self.period_s - es)))
        return self.gls_peak_pct / 100.0 * np.where(phi < es, sys, dia)

    def gls_pct(self, t_s) -> np.ndarray:
        return 100.0 * self.e(t_s)

    def W(self, u):
        u = np.asarray(u, dtype=np.float64)
        tp = 2 * np.pi
        return u - self.alpha * np.sin(tp * u) / tp + self.beta * (1 - np.cos(tp * u)) / tp

    def regional_pct(self, t_s, n_segments: int = 6) -> np.ndarray:
        """Exact strain (%) of the n equal material segments, (T, n)."""
        b = np.linspace(0, 1, n_segments + 1)
        ratio = np.diff(self.W(b)) / np.diff(b)
        return 100.0 * np.multiply.outer(np.atleast_1d(self.e(t_s)), ratio)

    def points_px(self, u, t_s: float) -> np.ndarray:
        """Material midline points (len(u), 2) [row, col] px at time t_s."""
        u = np.asarray(u, dtype=np.float64)
        e = float(self.e(t_s))
        sigma = (u + e * self.W(u)) / (1 + e)
        th = np.interp(sigma, self._sigma, self._th)
        p0 = self._ellipse(th)
        return self.apex_px + (1 + e) * (p0 - self.apex_px)

    def velocity_px_s(self, u, t_s: float, h: float = 1e-6) -> np.ndarray:
        """Exact velocity (len(u), 2) [v_row, v_col] px/s (central difference, step h s)."""
        return (self.points_px(u, t_s + h) - self.points_px(u, t_s - h)) / (2 * h)

    def points_mm(self, u, t_s: float) -> np.ndarray:
        return self.points_px(u, t_s) * np.asarray(self.spacing_mm)

    def velocity_mm_s(self, u, t_s: float) -> np.ndarray:
        return self.velocity_px_s(u, t_s) * np.asarray(self.spacing_mm)

    # ---- images -----------------------------------------------------------------------
    def mask(self, t_s: float, n_dense: int = 1500) -> np.ndarray:
        """Binary myocardium mask (uint8) at t_s: the band around the midline, flat caps.

        A pixel is 1 when its centre lies in the band (the convention of a segmentation
        network's thresholded output and of the calib phantoms).  cv2.fillPoly alone also
        sets pixels the outline merely touches (about half a pixel fatter), so the polygon
        is filled on an 8x finer grid and sampled at the pixel centres."""
        u = np.linspace(0, 1, n_dense)
        c = self.points_px(u, t_s)
        tang = np.gradient(c, axis=0)
        tang /= np.hypot(tang[:, 0], tang[:, 1])[:, None]
        nrm = np.column_stack([-tang[:, 1], tang[:, 0]])
        h = 0.5 * self.thickness_px
        poly = np.vstack([c + h * nrm, (c - h * nrm)[::-1]])
        # cv2 wants (x=col, y=row); 4 fractional bits; pixel centres at integer coordinates
        # (pixel (r, c) of the mask is fine pixel (8 r, 8 c))
        ss = 8
        pts = np.round(poly[:, ::-1] * (16 * ss)).astype(np.int32)
        fine = np.zeros((self.shape[0] * ss, self.shape[1] * ss), np.uint8)
        cv2.fillPoly(fine, [pts], 1, lineType=cv2.LINE_8, shift=4)
        return np.ascontiguousarray(fine[::ss, ::ss])

    def flow(self, t_prev_s: float, t_s: float, n_dense: int = 1500) -> np.ndarray:
        """Dense flow (rows, cols, 2) [dx, dy] in px from frame t_prev_s to frame t_s, on
        the previous frame's grid (OpenCV's convention): at every pixel within the wall at
        t_prev_s (plus a 3 px margin), the exact displacement of the nearest midline
        material point; zero elsewhere."""
        u = np.linspace(0, 1, n_dense)
        c = self.points_px(u, t_prev_s)
        d = self.points_px(u, t_s) - c
        band = cv2.dilate(self.mask(t_prev_s), np.ones((7, 7), np.uint8))
        rr, cc = np.nonzero(band)
        _, j = cKDTree(c).query(np.column_stack([rr, cc]).astype(np.float64))
        f = np.zeros(self.shape + (2,), np.float32)
        f[rr, cc, 0] = d[j, 1]
        f[rr, cc, 1] = d[j, 0]
        return f
