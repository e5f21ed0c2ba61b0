"""Small geometric building blocks of the phantom anatomy (vectorised, mm, [row, col]).

Regions are described in a local frame (``u`` along a unit vector ``e_u``, ``v`` along
``e_v``) by ellipses with an approximate signed distance, so walls, pericardium and fat can be
drawn as distance bands.  Echogenicity is a linear amplitude relative to myocardium (= 1).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Echogenicity (linear amplitude, myocardium = 1) of the tissue classes used by all views.
BLOOD = 0.10
MYOCARDIUM = 1.0
THIN_WALL = 0.45
VALVE = 1.1
FIBROUS = 2.5
PERICARDIUM = 6.0
FAT = 0.35
LUNG = 0.05
LIVER = 0.8
VESSEL_WALL = 2.5


def surround(t2: np.ndarray, gain: float = 1.0) -> np.ndarray:
    """The tissue around the heart (lung-dark, ``LUNG``, by default) with texture ``t2``, times
    the appearance's ``gain`` (``EchoAppearance.surround_gain``; 1.0 leaves it as it was)."""
    amp = LUNG * np.exp(0.6 * t2)
    return amp if gain == 1.0 else amp * gain


def blood_smoke(amp: np.ndarray, t2: np.ndarray, gain: float = 1.0) -> np.ndarray:
    """Blood (amplitude exactly ``BLOOD``) as faint moving smoke: texture ``t2`` and the
    appearance's blood ``gain`` (``EchoAppearance.blood_gain``; 1.0 leaves it as it was)."""
    return np.where(amp == BLOOD, BLOOD * gain * np.exp(0.5 * t2), amp)


@dataclass(frozen=True)
class Frame2D:
    """Local frame: x = origin + u * eu + v * ev (all [row, col] mm)."""

    origin: np.ndarray
    eu: np.ndarray
    ev: np.ndarray

    @classmethod
    def from_axis(cls, origin, eu) -> Frame2D:
        eu = np.asarray(eu, dtype=np.float64)
        eu = eu / np.hypot(*eu)
        return cls(np.asarray(origin, dtype=np.float64), eu, np.array([eu[1], -eu[0]]))

    def local(self, pts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        d = pts - self.origin
        return d @ self.eu, d @ self.ev

    def world(self, u, v) -> np.ndarray:
        u = np.asarray(u, dtype=np.float64)
        v = np.asarray(v, dtype=np.float64)
        return self.origin + u[..., None] * self.eu + v[..., None] * self.ev

    def direction(self, angle_rad) -> np.ndarray:
        """Unit vector at ``angle`` from e_u towards e_v."""
        a = np.asarray(angle_rad, dtype=np.float64)
        return np.cos(a)[..., None] * self.eu + np.sin(a)[..., None] * self.ev


def ellipse_distance(u, v, uc: float, vc: float, au: float, bv: float) -> np.ndarray:
    """Approximate signed normal distance (mm) to an axis-aligned ellipse (negative inside)."""
    x = (u - uc) / au
    y = (v - vc) / bv
    rho = np.hypot(x, y)
    c = np.where(rho > 0, x / np.maximum(rho, 1e-12), 1.0)
    s = np.where(rho > 0, y / np.maximum(rho, 1e-12), 0.0)
    ns = au * bv / np.sqrt((bv * c) ** 2 + (au * s) ** 2)
    return (rho - 1.0) * ns


def disc_distance(u, v, uc: float, vc: float, r: float) -> np.ndarray:
    return np.hypot(u - uc, v - vc) - r


class SmoothField:
    """Zero-mean, unit-variance random field with correlation length ``corr_mm`` (bilinear
    interpolation of a coarse Gaussian grid), sampled at arbitrary points."""

    def __init__(self, rng: np.random.Generator, lo_mm, hi_mm, corr_mm: float):
        self.lo = np.asarray(lo_mm, dtype=np.float64) - 2 * corr_mm
        hi = np.asarray(hi_mm, dtype=np.float64) + 2 * corr_mm
        self.step = float(corr_mm)
        n = np.ceil((hi - self.lo) / self.step).astype(int) + 2
        g = rng.standard_normal(tuple(n))
        # light smoothing so the bilinear field has no grid texture
        g = (g + 0.5 * (np.roll(g, 1, 0) + np.roll(g, -1, 0) + np.roll(g, 1, 1) + np.roll(g, -1, 1))) / 1.73
        self.grid = g

    def __call__(self, pts: np.ndarray) -> np.ndarray:
        x = (pts - self.lo) / self.step
        i = np.clip(x[..., 0].astype(np.int64), 0, self.grid.shape[0] - 2)
        j = np.clip(x[..., 1].astype(np.int64), 0, self.grid.shape[1] - 2)
        ti = np.clip(x[..., 0] - i, 0, 1)
        tj = np.clip(x[..., 1] - j, 0, 1)
        g = self.grid
        return ((1 - ti) * ((1 - tj) * g[i, j] + tj * g[i, j + 1])
                + ti * ((1 - tj) * g[i + 1, j] + tj * g[i + 1, j + 1]))


def soft_min(ds, k_mm: float) -> np.ndarray:
    """Smooth union of signed distances (fills gaps narrower than about k_mm)."""
    d = np.stack(ds)
    m = d.min(axis=0)
    return m - k_mm * np.log(np.sum(np.exp(-(d - m) / k_mm), axis=0))


def band(d: np.ndarray, lo: float, hi: float) -> np.ndarray:
    return (d >= lo) & (d <= hi)


@dataclass
class Leaflet:
    """A valve leaflet hinged at a point that moves with the tissue.

    Direction angles are measured in the scene frame (from e_u towards e_v); the leaflet
    swings from ``closed_rad`` to ``open_rad`` with the opening signal of its ``timing``
    ("av": mitral/tricuspid, "sl": aortic/pulmonary).
    """

    hinge_ed_mm: np.ndarray
    length_mm: float
    closed_rad: float
    open_rad: float
    curl_rad: float = 0.25
    thickness_mm: float = 1.1
    timing: str = "av"
    amplitude: float = VALVE

    def sample(self, rng: np.random.Generator, density_per_mm2: float):
        n = max(8, int(density_per_mm2 * 2.0 * self.length_mm * self.thickness_mm * 2))
        s = rng.uniform(0.0, 1.0, n)
        off = rng.uniform(-0.5, 0.5, n)
        amp = self.amplitude * rng.standard_normal(n) * np.where(s > 0.9, 1.6, 1.0)
        return s, off, amp

    def place(self, frame: Frame2D, hinge_mm: np.ndarray, opening: float, s, off) -> np.ndarray:
        ang = self.closed_rad + opening * (self.open_rad - self.closed_rad)
        # integrate a gently curling centre line
        a = ang + self.curl_rad * s * (1.0 - 0.6 * opening)
        # closed form of the integral of (cos a, sin a) along s for linear a(s)
        k = self.curl_rad * (1.0 - 0.6 * opening)
        if abs(k) < 1e-6:
            du = s * np.cos(ang)
            dv = s * np.sin(ang)
        else:
            du = (np.sin(ang + k * s) - np.sin(ang)) / k
            dv = (np.cos(ang) - np.cos(ang + k * s)) / k
        n_u = -np.sin(a)
        n_v = np.cos(a)
        uu = self.length_mm * du + off * self.thickness_mm * n_u
        vv = self.length_mm * dv + off * self.thickness_mm * n_v
        return hinge_mm + uu[:, None] * frame.eu + vv[:, None] * frame.ev
