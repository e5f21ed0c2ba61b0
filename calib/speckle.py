"""Ultrasound image model: moving point scatterers -> beamformed I/Q -> B-mode sector.

Each frame the scatterers (positions in mm, amplitudes) are placed in the beam domain
(depth r from the transducer x beam angle alpha) and splatted bilinearly as complex
baseband samples ``a * exp(-i k r)`` with ``k = 4 pi f0 / c`` the two-way wavenumber, so a
sub-sample axial move changes the phase exactly as in a real echo and the speckle moves
coherently with the tissue.  The point-spread function is separable: a Gaussian pulse
envelope in depth (``axial_fwhm_mm``) and a Gaussian beam in angle (``lateral_fwhm_deg``,
i.e. a lateral width growing with depth) with two side lobes.  After convolution of the I/Q
image: round-trip attenuation with partial time-gain compensation, thermal noise (rising
with depth after TGC), per-beam dropout (rib shadows), envelope detection |I/Q|, log
compression to ``dynamic_range_db``, and scan conversion to the Cartesian sector.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np
from numba import njit

from calib.errors import require_positive, require_range

SOUND_SPEED_MM_PER_US = 1.540


@dataclass(frozen=True)
class SpeckleConfig:
    """Image formation parameters of the echo phantoms (units in the names)."""

    center_frequency_mhz: float = 3.0
    axial_fwhm_mm: float = 0.9          # pulse envelope, full width at half maximum
    lateral_fwhm_deg: float = 2.6       # beam width in angle (mm width grows with depth)
    lateral_min_fwhm_mm: float = 3.0    # beam width floor (near field, aperture limited)
    sidelobe_db: float = -22.0          # level of the two lateral side lobes
    scatterers_per_mm2: float = 3.5
    dynamic_range_db: float = 60.0      # display range of the log compression
    myocardium_grey: float = 0.42       # grey level (0..1) of tissue with echogenicity 1
    noise_db: float = -66.0             # thermal noise at the skin, relative to myocardium
    attenuation_db_per_cm_mhz: float = 0.5
    tgc_compensation: float = 0.85      # fraction of the round-trip attenuation undone by TGC
    decorrelation: float = 0.08         # frame-to-frame renewal of scatterer amplitudes (std)
    dropout: float = 0.5                # 0 none .. 1 strong: rib shadows and wall anisotropy
    clutter_db: float = -18.0           # near-field reverberation clutter level
    compression_gamma: float = 1.0      # post-compression grey curve (>1 darkens mid-greys)
    display_blur_mm: float = 0.8        # post-detection smoothing (sigma, mm) of the scanner display

    def __post_init__(self) -> None:
        require_range("center_frequency_mhz", self.center_frequency_mhz, 0.5, 20.0, "MHz")
        require_range("axial_fwhm_mm", self.axial_fwhm_mm, 0.05, 10.0, "mm")
        require_range("lateral_fwhm_deg", self.lateral_fwhm_deg, 0.1, 10.0, "degrees")
        require_range("lateral_min_fwhm_mm", self.lateral_min_fwhm_mm, 0.0, 20.0, "mm")
        require_range("sidelobe_db", self.sidelobe_db, -120.0, -6.0, "dB")
        require_range("scatterers_per_mm2", self.scatterers_per_mm2, 0.2, 100.0, "per mm^2")
        require_range("dynamic_range_db", self.dynamic_range_db, 10.0, 120.0, "dB")
        require_range("myocardium_grey", self.myocardium_grey, 0.0, 1.0)
        require_range("noise_db", self.noise_db, -150.0, 20.0, "dB")
        require_range("attenuation_db_per_cm_mhz", self.attenuation_db_per_cm_mhz, 0.0, 5.0, "dB/cm/MHz")
        require_range("tgc_compensation", self.tgc_compensation, 0.0, 1.0)
        require_range("decorrelation", self.decorrelation, 0.0, 1.0)
        require_range("dropout", self.dropout, 0.0, 1.0)
        require_range("clutter_db", self.clutter_db, -150.0, 20.0, "dB")
        require_range("compression_gamma", self.compression_gamma, 0.2, 5.0)
        require_range("display_blur_mm", self.display_blur_mm, 0.0, 10.0, "mm")

    @property
    def wavenumber_rad_per_mm(self) -> float:
        """Two-way wavenumber 4 pi f0 / c."""
        return 4.0 * math.pi * self.center_frequency_mhz / SOUND_SPEED_MM_PER_US


@dataclass(frozen=True)
class SectorGeometry:
    """Cartesian image and sector placement. Pixel (r, c) centre is at (r, c) * spacing mm."""

    rows: int
    cols: int
    spacing_mm: float
    apex_mm: tuple[float, float]        # transducer position [row, col] in mm
    depth_mm: float
    half_angle_rad: float

    @classmethod
    def fit(cls, rows: int, cols: int, depth_mm: float, sector_angle_deg: float,
            top_margin: float = 0.04, side_margin: float = 0.02,
            bottom_margin: float = 0.02) -> SectorGeometry:
        """Largest isotropic pixel size that keeps the whole sector inside the image."""
        require_positive("depth_mm", depth_mm, "mm")
        require_range("sector_angle_deg", sector_angle_deg, 10.0, 120.0, "degrees")
        half = math.radians(sector_angle_deg) / 2.0
        sp_rows = depth_mm / (rows * (1.0 - top_margin - bottom_margin))
        sp_cols = 2.0 * depth_mm * math.sin(half) / (cols * (1.0 - 2.0 * side_margin))
        sp = max(sp_rows, sp_cols)
        apex = (top_margin * rows * sp, (cols - 1) / 2.0 * sp)
        return cls(rows, cols, sp, apex, float(depth_mm), half)

    def polar(self, pts_mm: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """[row, col] mm -> (depth mm, angle rad; positive towards larger col)."""
        d0 = pts_mm[..., 0] - self.apex_mm[0]
        d1 = pts_mm[..., 1] - self.apex_mm[1]
        return np.hypot(d0, d1), np.arctan2(d1, d0)

    def from_polar(self, r: np.ndarray, a: np.ndarray) -> np.ndarray:
        out = np.empty(np.shape(r) + (2,))
        out[..., 0] = self.apex_mm[0] + r * np.cos(a)
        out[..., 1] = self.apex_mm[1] + r * np.sin(a)
        return out

    def pixel_grid_mm(self) -> np.ndarray:
        rr, cc = np.mgrid[0:self.rows, 0:self.cols].astype(np.float64)
        return np.stack([rr * self.spacing_mm, cc * self.spacing_mm], axis=-1)

    def sector_mask(self) -> np.ndarray:
        r, a = self.polar(self.pixel_grid_mm())
        return (r <= self.depth_mm) & (np.abs(a) <= self.half_angle_rad)


@njit(cache=True, fastmath=True)
def _splat(rows_mm, cols_mm, amp, apex_r, apex_c, dr, a0, da, nr, na, k2, out):
    """Bilinear splat of complex samples amp * exp(-i k2 r) into out (nr, na, 2)."""
    for i in range(rows_mm.size):
        d0 = rows_mm[i] - apex_r
        d1 = cols_mm[i] - apex_c
        r = math.sqrt(d0 * d0 + d1 * d1)
        fi = r / dr
        fj = (math.atan2(d1, d0) - a0) / da
        if fi < 0.0 or fj < 0.0:
            continue
        i0 = int(fi)
        j0 = int(fj)
        if i0 >= nr - 1 or j0 >= na - 1:
            continue
        ti = fi - i0
        tj = fj - j0
        ph = -k2 * r
        vr = amp[i] * math.cos(ph)
        vi = amp[i] * math.sin(ph)
        w00 = (1.0 - ti) * (1.0 - tj)
        w01 = (1.0 - ti) * tj
        w10 = ti * (1.0 - tj)
        w11 = ti * tj
        out[i0, j0, 0] += w00 * vr
        out[i0, j0, 1] += w00 * vi
        out[i0, j0 + 1, 0] += w01 * vr
        out[i0, j0 + 1, 1] += w01 * vi
        out[i0 + 1, j0, 0] += w10 * vr
        out[i0 + 1, j0, 1] += w10 * vi
        out[i0 + 1, j0 + 1, 0] += w11 * vr
        out[i0 + 1, j0 + 1, 1] += w11 * vi


@njit(cache=True)
def _splat_noise(u_r, u_a, u_ph, nrm, g, rmax, a0, amax, dr, da, nr, na, out):
    """Thermal noise as transient random point sources, uniform in area, amplitude g[row]."""
    for i in range(u_r.size):
        r = rmax * math.sqrt(u_r[i])
        a = a0 + u_a[i] * (amax - a0)
        fi = r / dr
        fj = (a - a0) / da
        i0 = int(fi)
        j0 = int(fj)
        if i0 >= nr - 1 or j0 >= na - 1:
            continue
        ti = fi - i0
        tj = fj - j0
        amp = g[i0]
        ph = 6.283185307179586 * u_ph[i]
        vr = amp * nrm[i] * math.cos(ph)
        vi = amp * nrm[i] * math.sin(ph)
        out[i0, j0, 0] += (1.0 - ti) * (1.0 - tj) * vr
        out[i0, j0, 1] += (1.0 - ti) * (1.0 - tj) * vi
        out[i0, j0 + 1, 0] += (1.0 - ti) * tj * vr
        out[i0, j0 + 1, 1] += (1.0 - ti) * tj * vi
        out[i0 + 1, j0, 0] += ti * (1.0 - tj) * vr
        out[i0 + 1, j0, 1] += ti * (1.0 - tj) * vi
        out[i0 + 1, j0 + 1, 0] += ti * tj * vr
        out[i0 + 1, j0 + 1, 1] += ti * tj * vi


class SpeckleRenderer:
    """Renders B-mode frames of one sector geometry; build once per clip, call per frame."""

    NOISE_POINTS_PER_MM2 = 2.0

    def __init__(self, geom: SectorGeometry, cfg: SpeckleConfig, beam_gain: np.ndarray | None = None):
        self.geom = geom
        self.cfg = cfg
        sp = geom.spacing_mm
        sig_z = cfg.axial_fwhm_mm / 2.3548
        sig_a = math.radians(cfg.lateral_fwhm_deg) / 2.3548
        self.dr = min(sp / 1.5, sig_z / 1.4)
        self.nr = int(math.ceil(geom.depth_mm / self.dr)) + 2
        self.da = sig_a / 1.5
        self.a0 = -geom.half_angle_rad - 2 * self.da
        self.na = int(math.ceil((2 * geom.half_angle_rad + 4 * self.da) / self.da)) + 1
        r = np.arange(self.nr) * self.dr
        # axial kernel (peak 1)
        sz = sig_z / self.dr
        hz = int(math.ceil(3.5 * sz))
        self.k_ax = np.exp(-0.5 * (np.arange(-hz, hz + 1) / sz) ** 2).astype(np.float32)
        # lateral kernels per depth band: angular beam width with a floor in mm
        sig_min = cfg.lateral_min_fwhm_mm / 2.3548
        sig_r = np.sqrt(sig_a ** 2 + (sig_min / np.maximum(r, 1.0)) ** 2)   # rad, per row
        band = np.floor(np.log(sig_r / sig_a) / np.log(1.25)).astype(int)
        self.bands = []
        for b in np.unique(band):
            rows = np.nonzero(band == b)[0]
            sa = min(float(np.exp(np.mean(np.log(sig_r[rows])))) / self.da, 12.0)
            self.bands.append((rows[0], rows[-1] + 1, self._lateral_kernel(sa, cfg)))
        # depth-dependent gains: unit mean power for echogenicity 1 (before TGC/attenuation)
        psf_area = cfg.scatterers_per_mm2 * math.pi * sig_z * sig_r * np.maximum(r, 1.0)
        att_db = 2.0 * cfg.attenuation_db_per_cm_mhz * cfg.center_frequency_mhz * r / 10.0
        self.signal_gain = (10 ** (-(1 - cfg.tgc_compensation) * att_db / 20.0)
                            / np.sqrt(psf_area)).astype(np.float32)
        # noise sources: amplitude so that after PSF and signal gain the noise power is
        # noise_db + TGC gain (relative to unit tissue power)
        noise_pow = 10 ** ((cfg.noise_db + cfg.tgc_compensation * att_db) / 10.0)
        noise_psf = self.NOISE_POINTS_PER_MM2 * math.pi * sig_z * sig_r * np.maximum(r, 1.0)
        self.noise_amp = (np.sqrt(noise_pow / noise_psf) / self.signal_gain).astype(np.float64)
        if beam_gain is None:
            beam_gain = np.ones(self.na, dtype=np.float32)
        self.beam_gain = np.asarray(beam_gain, dtype=np.float32)[None, :]
        # scan conversion maps
        rr, aa = geom.polar(geom.pixel_grid_mm())
        self.map_y = (rr / self.dr).astype(np.float32)
        self.map_x = ((aa - self.a0) / self.da).astype(np.float32)
        edge = math.radians(1.0)
        soft = np.clip((geom.half_angle_rad - np.abs(aa)) / edge, 0, 1) * \
            np.clip((geom.depth_mm - rr) / (2 * sp), 0, 1)
        self.sector_weight = soft.astype(np.float32)

    def _lateral_kernel(self, sa: float, cfg: SpeckleConfig) -> np.ndarray:
        sl_off = 2.5 * 2.3548 * sa                  # side lobes 2.5 FWHM off axis
        ha = int(math.ceil(3.5 * sa + sl_off))
        x = np.arange(-ha, ha + 1, dtype=np.float64)
        lobe = 10 ** (cfg.sidelobe_db / 20.0)
        k = np.exp(-0.5 * (x / sa) ** 2) + lobe * (
            np.exp(-0.5 * ((x - sl_off) / sa) ** 2) + np.exp(-0.5 * ((x + sl_off) / sa) ** 2))
        return k.astype(np.float32)

    def beam_angles(self) -> np.ndarray:
        return self.a0 + np.arange(self.na) * self.da

    def iq(self, pts_mm: np.ndarray, amp: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
        """Beamformed complex image (nr, na, 2) after PSF, gains and noise."""
        grid = np.zeros((self.nr, self.na, 2), dtype=np.float32)
        p = np.ascontiguousarray(pts_mm, dtype=np.float64)
        _splat(p[:, 0], p[:, 1], np.ascontiguousarray(amp, dtype=np.float64),
               float(self.geom.apex_mm[0]), float(self.geom.apex_mm[1]), self.dr, self.a0,
               self.da, self.nr, self.na, self.cfg.wavenumber_rad_per_mm, grid)
        if rng is not None and self.cfg.noise_db > -140:
            rmax = self.geom.depth_mm
            amax = -self.a0
            n = int(self.NOISE_POINTS_PER_MM2 * rmax * rmax * amax)
            _splat_noise(rng.random(n), rng.random(n), rng.random(n), rng.standard_normal(n),
                         self.noise_amp, rmax, self.a0, amax,
                         self.dr, self.da, self.nr, self.na, grid)
        out = np.empty_like(grid)
        for r0, r1, k in self.bands:
            lo = max(r0, 0)
            out[lo:r1] = cv2.filter2D(grid[lo:r1], -1, k[None, :], borderType=cv2.BORDER_CONSTANT)
        out = cv2.filter2D(out, -1, self.k_ax[:, None], borderType=cv2.BORDER_CONSTANT)
        out *= (self.signal_gain[:, None] * self.beam_gain)[..., None]
        return out

    def envelope_db(self, iq: np.ndarray) -> np.ndarray:
        env = cv2.magnitude(iq[..., 0], iq[..., 1])
        return (20.0 / math.log(10.0)) * cv2.log(np.maximum(env, 1e-12))

    def compress(self, env_db: np.ndarray) -> np.ndarray:
        """Log-compressed grey level in [0, 1] (polar)."""
        c = self.cfg
        x = np.clip(c.myocardium_grey + env_db * (1.0 / c.dynamic_range_db), 0.0, 1.0)
        return x ** c.compression_gamma if c.compression_gamma != 1.0 else x

    def scan_convert(self, polar01: np.ndarray) -> np.ndarray:
        if self.cfg.display_blur_mm > 0:
            s = self.cfg.display_blur_mm / self.dr
            h = int(math.ceil(3 * s))
            k = np.exp(-0.5 * (np.arange(-h, h + 1) / s) ** 2).astype(np.float32)
            polar01 = cv2.filter2D(polar01.astype(np.float32), -1, (k / k.sum())[:, None],
                                   borderType=cv2.BORDER_REPLICATE)
        img = cv2.remap(polar01.astype(np.float32), self.map_x, self.map_y, cv2.INTER_LINEAR,
                        borderMode=cv2.BORDER_CONSTANT, borderValue=0.0)
        return img * self.sector_weight

    def render(self, pts_mm: np.ndarray, amp: np.ndarray, rng: np.random.Generator | None) -> np.ndarray:
        """One B-mode frame, float32 in [0, 1]."""
        return self.scan_convert(self.compress(self.envelope_db(self.iq(pts_mm, amp, rng))))


def to_uint8(img01: np.ndarray) -> np.ndarray:
    return np.clip(img01 * 255.0 + 0.5, 0, 255).astype(np.uint8)
