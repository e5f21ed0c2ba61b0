"""Physics-based echo frames from PyMUST: a second image generator for echo motion truth.

Our phantom (:func:`calib.echo.make_echo_clip`) renders moving point scatterers with an
image model (:class:`calib.speckle.SpeckleRenderer`: a separable Gaussian PSF on a beam
grid). :class:`PhysicsRenderer` renders the *same* scatterers, moved by the same deforming-LV
kinematics, with an acoustic simulation instead; the truth of a clip (masks, displacement,
centreline, strain) comes from the kinematics, not from the image, so it is exact for
these frames too. :func:`make_physics_clip` is ``make_echo_clip`` with this renderer.

Image formation, per frame:

1. probe: PyMUST's ``getparam('P4-2v')`` (64-element 2.72 MHz phased array, 19.2 mm aperture,
   74 % bandwidth) with its centre at the sector apex. Our [row, col] mm become PyMUST's
   (x lateral = col - apex col, z depth = row - apex row) in m, so the beam angle of a point
   is the angle of :class:`calib.speckle.SectorGeometry`;
2. transmit: one diverging (circular) wave as wide as the sector
   (``txdelay(param, tilt, width)``); several tilted ones (``PhysicsConfig.tilts_deg``) are
   compounded coherently at a cost of one simulation each;
3. ``simus`` (2-D, frequency domain, with the speckle config's attenuation) -> element RF,
   ``rf2iq`` -> I/Q, Hann receive apodization (``rx_apodization``: without it a single
   diverging wave's -21..-30 dB side lobes draw arcs of bright walls across the cavities),
   delay-and-sum beamforming with the full aperture (``dasmtx``: the matrix is built once per
   clip) on a polar grid (lambda/2 in depth, a third of lambda/D in angle);
4. envelope, gain (below), log compression with the speckle config's dynamic range, grey
   level and gamma, the display smoothing, and scan conversion onto the clip's
   SectorGeometry pixels: the same apex, angle and depth as our frames, so truth pixels align.

Gain. Echogenicity-1 tissue has unit mean power before the time-gain compensation, as in
SpeckleRenderer: once per clip a uniform random medium is simulated and its mean power,
fitted smoothly in depth and angle, divided out (:meth:`PhysicsRenderer._calibrate`).
Then the partial TGC of the speckle config (the ``1 - tgc_compensation`` part of the
round-trip attenuation stays), thermal noise (``noise_db``, after TGC) and the rib shadows
(``beam_gain``, per beam), as in SpeckleRenderer.
The speckle config's PSF fields (centre frequency, axial and lateral widths, side lobes)
are not used: the probe and the beamformer decide them.

Scatterers. The simulation costs about 0.2 ms per scatterer per frame on 2 cores, so the
renderer keeps about ``scatterers_per_cell`` scatterers per resolution cell (axial
0.44 c / B, lateral lambda r / D widened 1.4x by the Hann apodization, at least lambda:
fine near the probe, coarse deep down),
thinning the scene where it is denser (kept with probability p, amplitude / sqrt(p): the
mean power is unchanged). Scatterers whose amplitude lies below ``dark_db`` (relative to
echogenicity-1 tissue; blood, below the display's black level with the usual settings)
are thinned by importance the same way (p = |a| / a_dark). :func:`make_physics_clip`
raises the scene's density (``scatterers_per_mm2``) to what the near field needs. The
selection is drawn at the first frame and kept, so every scatterer keeps its identity and
the speckle moves with the tissue; frame-to-frame decorrelation is the phantom's
(``decorrelation``) plus what the motion itself gives (scatterers crossing the PSF, whose
shape changes with depth and angle).

Why an optional extra (``pip install 'cardiostream[sim]'``): PyMUST is LGPL-3.0 (imported,
not shipped) and slow (~10 s per frame on 2 free cores, 25 s on a shared CPU), so it is kept out of
the default install, the ``test`` extra and CI; tests/test_physics_sim.py skips without it
and is marked slow. The clips are for held-out validation only (``bench/physics_sims.py``
draws their seeds from the ``test`` split): never train on them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import cv2
import numpy as np

from calib.echo import EchoClip, EchoPhantomConfig, make_echo_clip
from calib.speckle import SectorGeometry, SpeckleConfig

__all__ = ["PhysicsClip", "PhysicsConfig", "PhysicsRenderer", "VALIDATION_SPECS",
           "make_physics_clip", "pymust_version", "validation_configs"]

SOUND_SPEED_M_S = 1540.0
F_NUMBER_MIN = 1.0          # lateral resolution floor near the probe: lambda * F
NEAR_FIELD_MM = 25.0        # make_physics_clip gives the scene the density needed from here on
#: lateral resolution of the receive apodizations relative to a uniform aperture (measured
#: -6 dB widths of a point at 40 mm: 1.97 mm uniform, 2.75 mm Hann; Hann's side lobes are
#: 20-30 dB lower, so bright walls draw no arcs across the cavities)
APODIZATION_WIDENING = {"none": 1.0, "hann": 1.4}


def _pymust():
    try:
        import pymust
    except ImportError as e:                      # pragma: no cover - depends on the install
        raise ImportError("the physics echo generator needs PyMUST: pip install 'cardiostream[sim]' "
                          "(or pip install pymust)") from e
    return pymust


def pymust_version() -> str:
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version("pymust")
    except PackageNotFoundError:                  # pragma: no cover
        return "unknown"


@dataclass(frozen=True)
class PhysicsConfig:
    """PyMUST simulation settings (module docstring)."""

    probe: str = "P4-2v"                  # pymust.getparam name (a phased array)
    tilts_deg: tuple = (0.0,)             # diverging waves, compounded coherently (cost x n)
    scatterers_per_cell: float = 4.0      # kept per resolution cell (module docstring)
    dark_db: float | None = -20.0         # thin scatterers below this (re echogenicity 1); None: no
    db_thresh: float = -60.0              # PyMUST: spectral components above this are simulated
    calibration_scatterers: int = 20000   # the gain calibration's random medium (once per clip)
    rx_apodization: str = "hann"          # receive aperture weights: hann | none
    workers: int = 0                      # simus threads; 0: every CPU this process may use

    def __post_init__(self) -> None:
        object.__setattr__(self, "tilts_deg", tuple(float(t) for t in self.tilts_deg))
        if not self.tilts_deg:
            raise ValueError("tilts_deg needs at least one transmit")
        if not 0.1 <= self.scatterers_per_cell <= 100:
            raise ValueError(f"scatterers_per_cell={self.scatterers_per_cell} is outside 0.1..100")
        if self.rx_apodization not in APODIZATION_WIDENING:
            raise ValueError(f"rx_apodization={self.rx_apodization!r}: choose hann or none")
        if self.db_thresh >= 0:
            raise ValueError(f"db_thresh={self.db_thresh} must be negative (dB)")

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["tilts_deg"] = list(self.tilts_deg)
        return d


class PhysicsRenderer:
    """Renders B-mode frames of one sector geometry with PyMUST; build once per clip.

    Same interface as :class:`calib.speckle.SpeckleRenderer` (``render``, ``beam_angles``,
    ``beam_gain``), so ``make_echo_clip(cfg, renderer_factory=...)`` can use it.
    ``progress(frame_index, seconds, n_scatterers)`` is called after every frame.
    """

    def __init__(self, geom: SectorGeometry, cfg: SpeckleConfig, physics: PhysicsConfig | None = None,
                 seed: int = 0, progress: Callable | None = None):
        pm = _pymust()
        self.geom = geom
        self.cfg = cfg
        self.physics = physics = physics or PhysicsConfig()
        self.progress = progress
        self._rng_thin = np.random.default_rng([int(seed), 0x5111])
        t0 = time.perf_counter()
        param = pm.getparam(physics.probe)
        if not math.isinf(param.radius):
            raise ValueError(f"probe {physics.probe!r} is convex; the sector needs a phased array")
        param.c = SOUND_SPEED_M_S
        param.fs = 4.0 * param.fc
        param.attenuation = float(cfg.attenuation_db_per_cm_mhz)
        self.param = param
        c, fc = SOUND_SPEED_M_S, float(param.fc)
        self.wavelength_mm = c / fc * 1e3
        self.aperture_mm = param.Nelements * param.pitch * 1e3
        self.axial_cell_mm = 0.44 * c / (param.bandwidth / 100.0 * fc) * 1e3
        self.workers = physics.workers or _cpu_count()

        # polar beamforming grid: lambda/2 in depth, lambda/(3 D) in angle
        half = geom.half_angle_rad
        self.dr = min(self.wavelength_mm / 2.0, geom.spacing_mm / 1.5)
        self.r_max = geom.depth_mm + 2.0 * geom.spacing_mm
        self.nr = int(math.ceil(self.r_max / self.dr)) + 1
        self.da = self.wavelength_mm / self.aperture_mm / 3.0
        self.a0 = -half - 2.0 * self.da
        self.na = int(math.ceil((2.0 * half + 4.0 * self.da) / self.da)) + 1
        self.r = np.arange(self.nr) * self.dr
        self.a = self.a0 + np.arange(self.na) * self.da
        rr, aa = np.meshgrid(self.r, self.a, indexing="ij")
        x_m, z_m = rr * np.sin(aa) * 1e-3, rr * np.cos(aa) * 1e-3

        # transmits and the DAS matrix of each (fixed signal length)
        width = 2.0 * half
        self.delays = [np.asarray(pm.txdelay(param.copy(), math.radians(t), width), dtype=np.float64)
                       .reshape(1, -1) for t in physics.tilts_deg]
        far_m = math.hypot(self.r_max * 1e-3 + 0.01, self.aperture_mm * 1e-3)
        t_max = 2.0 * far_m / c + max(float(np.nanmax(d)) for d in self.delays) + 4.0 / fc
        self.nt = int(math.ceil(t_max * param.fs)) + 16
        self.das = [pm.dasmtx(1j * np.array([self.nt, param.Nelements]), x_m, z_m, d, param.copy())
                    .tocsr().astype(np.complex64) for d in self.delays]
        self.rx_apodization = _apodization(physics.rx_apodization, int(param.Nelements))
        self.beam_gain = np.ones((1, self.na), dtype=np.float32)
        t1 = time.perf_counter()

        # gain: 1 / sqrt(measured mean speckle power) in depth and angle, then partial TGC
        self._calibrate()
        att_db = 2.0 * cfg.attenuation_db_per_cm_mhz * (fc / 1e6) * self.r / 10.0
        self.tgc = (10 ** (-(1.0 - cfg.tgc_compensation) * att_db / 20.0)).astype(np.float32)[:, None]
        self.noise_pow = (10 ** ((cfg.noise_db + cfg.tgc_compensation * att_db) / 10.0))[:, None]

        # scan conversion (as SpeckleRenderer)
        prr, paa = geom.polar(geom.pixel_grid_mm())
        self.map_y = (prr / self.dr).astype(np.float32)
        self.map_x = ((paa - self.a0) / self.da).astype(np.float32)
        edge = math.radians(1.0)
        soft = np.clip((half - np.abs(paa)) / edge, 0, 1) * np.clip((geom.depth_mm - prr) / (2 * geom.spacing_mm), 0, 1)
        self.sector_weight = soft.astype(np.float32)
        self._keep = None
        self.frames_rendered = 0
        self.n_simulated: list[int] = []
        self.timings_s = {"das_matrix_s": t1 - t0, "calibration_s": time.perf_counter() - t1, "frames_s": []}

    # ------------------------------------------------------------------ scatterers
    def resolution_cell_mm2(self, r_mm) -> np.ndarray:
        """Approximate -6 dB resolution cell area at depth r (axial x lateral, mm^2)."""
        return _cell_mm2(np.asarray(r_mm, dtype=np.float64), self.wavelength_mm, self.aperture_mm,
                         self.axial_cell_mm, self.physics.rx_apodization)

    def target_density(self, r_mm) -> np.ndarray:
        """Scatterers per mm^2 that give ``scatterers_per_cell`` per resolution cell at depth r."""
        return self.physics.scatterers_per_cell / self.resolution_cell_mm2(r_mm)

    def _select(self, pts_mm: np.ndarray, amp: np.ndarray) -> None:
        """Draw the simulated subset (indices, amplitude weights), kept for the clip."""
        r, a = self.geom.polar(pts_mm)
        p = np.minimum(1.0, self.target_density(r) / self.cfg.scatterers_per_mm2)
        if self.physics.dark_db is not None:
            a_dark = 10 ** (self.physics.dark_db / 20.0)
            p = p * np.minimum(1.0, np.abs(amp) / a_dark)
        inside = (r <= self.r_max + 10.0) & (np.abs(a) <= self.geom.half_angle_rad + 0.3) & \
            (pts_mm[:, 0] > self.geom.apex_mm[0])
        keep = np.nonzero(inside & (self._rng_thin.random(len(p)) < p))[0]
        self._n_points = len(p)
        self._keep = keep
        self._weight = (1.0 / np.sqrt(p[keep])).astype(np.float64)

    # ------------------------------------------------------------------ simulation
    def _options(self, n: int):
        pm = _pymust()
        opt = pm.utils.Options()
        opt.dBThresh = float(self.physics.db_thresh)
        opt.WaitBar = False
        if self.workers > 1 and n >= 64 * self.workers:
            opt.ParPool = True
            opt.setParPool(self.workers, "thread")
        return opt

    def beamformed(self, pts_mm: np.ndarray, rc: np.ndarray) -> np.ndarray:
        """Complex beamformed image (nr, na) of point scatterers with reflectivities ``rc``."""
        pm = _pymust()
        out = np.zeros((self.nr, self.na), dtype=np.complex64)
        if len(rc) == 0:
            return out
        x = ((pts_mm[:, 1] - self.geom.apex_mm[1]) * 1e-3).astype(np.float32).reshape(1, -1)
        z = ((pts_mm[:, 0] - self.geom.apex_mm[0]) * 1e-3).astype(np.float32).reshape(1, -1)
        rc = np.asarray(rc, dtype=np.float32).reshape(1, -1)
        for dels, das in zip(self.delays, self.das):
            with _one_blas_thread():
                rf, _ = pm.simus(x, z, rc, dels, self.param.copy(), self._options(x.shape[1]))
            rf = np.asarray(rf, dtype=np.float64)
            if rf.shape[0] >= self.nt:
                rf = rf[: self.nt]
            else:
                rf = np.concatenate([rf, np.zeros((self.nt - rf.shape[0], rf.shape[1]))])
            iq = pm.rf2iq(rf, self.param.copy()).astype(np.complex64) * self.rx_apodization
            out += (das @ iq.reshape(-1, order="F")).reshape(self.nr, self.na, order="F")
        return out

    def _calibrate(self) -> None:
        """Mean speckle power per unit density and unit reflectivity variance, P(r, a) (mm^2).

        Measured, not derived: a uniform random medium (``calibration_scatterers`` points,
        unit-variance reflectivities) is simulated once, its mean power taken in depth x angle
        regions and fitted, in log, with 1, r, r^2, log r (depth) and a, a^2 (angle). (Integrating
        one point's response instead overestimates it by ~1.6x: the single diverging wave's
        side-lobe arcs reach every angle, and a point off axis sends less energy than one on
        axis, so the response is not shift-invariant.)"""
        rng = np.random.default_rng(self._rng_thin.integers(2**63))
        half = self.geom.half_angle_rad + 0.06
        rmax = self.r_max + 4.0
        n = int(self.physics.calibration_scatterers)
        rho = n / (0.5 * rmax * rmax * 2.0 * half)
        r = rmax * np.sqrt(rng.uniform(0.0, 1.0, n))
        a = rng.uniform(-half, half, n)
        power = np.abs(self.beamformed(self.geom.from_polar(r, a), rng.standard_normal(n))) ** 2 / rho
        # regions: 16 depth bands from 4 mm, 7 angle bins inside the sector
        r_edges = np.linspace(4.0, self.r_max - 1.0, 17)
        a_edges = np.linspace(-self.geom.half_angle_rad, self.geom.half_angle_rad, 8)
        rows, cols, vals, wts = [], [], [], []
        for i in range(16):
            ri = (self.r >= r_edges[i]) & (self.r < r_edges[i + 1])
            for j in range(7):
                aj = (self.a >= a_edges[j]) & (self.a < a_edges[j + 1])
                block = power[np.ix_(ri, aj)]
                if block.size and block.mean() > 0:
                    rows.append(0.5 * (r_edges[i] + r_edges[i + 1]))
                    cols.append(0.5 * (a_edges[j] + a_edges[j + 1]))
                    vals.append(np.log(block.mean()))
                    # points behind a region ~ its area: weight the fit by it
                    wts.append(np.sqrt(rows[-1]))
        rows, cols, vals, wts = map(np.asarray, (rows, cols, vals, wts))

        def basis(rr, aa):
            u = rr / self.r_max
            v = aa / self.geom.half_angle_rad
            return np.stack([np.ones_like(u), u, u * u, np.log(u), v, v * v], axis=-1)

        coef, *_ = np.linalg.lstsq(basis(rows, cols) * wts[:, None], vals * wts, rcond=None)
        fit = basis(rows, cols) @ coef
        rr, aa = np.meshgrid(np.clip(self.r, rows.min(), rows.max()),
                             np.clip(self.a, -self.geom.half_angle_rad, self.geom.half_angle_rad),
                             indexing="ij")
        log_p = basis(rr, aa) @ coef
        self.calibration = {"density_per_mm2": rho, "coef": coef.tolist(),
                            "fit_residual_db_rms": float(10 / np.log(10) * np.sqrt(np.mean((vals - fit) ** 2)))}
        self.gain = (1.0 / np.sqrt(self.cfg.scatterers_per_mm2 * np.exp(log_p))).astype(np.float32)

    # ------------------------------------------------------------------ frames
    def beam_angles(self) -> np.ndarray:
        return self.a.copy()

    def iq(self, pts_mm: np.ndarray, amp: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
        """Gain-compensated beamformed I/Q (nr, na) complex64, with noise and beam gain."""
        pts_mm = np.asarray(pts_mm, dtype=np.float64).reshape(-1, 2)
        amp = np.asarray(amp, dtype=np.float64).reshape(-1)
        if self._keep is None or self._n_points != len(amp):
            self._select(pts_mm, amp)
        k = self._keep
        self.n_simulated.append(len(k))
        img = self.beamformed(pts_mm[k], amp[k] * self._weight) * (self.gain * self.tgc)
        if rng is not None and self.cfg.noise_db > -140:
            sd = np.sqrt(self.noise_pow / 2.0)
            img += (sd * (rng.standard_normal(img.shape) + 1j * rng.standard_normal(img.shape))).astype(np.complex64)
        return img * self.beam_gain

    def compress(self, iq: np.ndarray) -> np.ndarray:
        """Log-compressed grey level in [0, 1] (polar)."""
        c = self.cfg
        env_db = 20.0 * np.log10(np.maximum(np.abs(iq), 1e-12))
        x = np.clip(c.myocardium_grey + env_db / c.dynamic_range_db, 0.0, 1.0).astype(np.float32)
        return x ** c.compression_gamma if c.compression_gamma != 1.0 else x

    def scan_convert(self, polar01: np.ndarray) -> np.ndarray:
        # display smoothing in depth (at least the anti-aliasing for the pixel size)
        s = max(self.cfg.display_blur_mm, 0.4 * self.geom.spacing_mm) / self.dr
        h = int(math.ceil(3 * s))
        k = np.exp(-0.5 * (np.arange(-h, h + 1) / s) ** 2).astype(np.float32)
        polar01 = cv2.filter2D(polar01.astype(np.float32), -1, (k / k.sum())[:, None],
                               borderType=cv2.BORDER_REPLICATE)
        img = cv2.remap(polar01, self.map_x, self.map_y, cv2.INTER_LINEAR,
                        borderMode=cv2.BORDER_CONSTANT, borderValue=0.0)
        return np.clip(img * self.sector_weight, 0.0, 1.0)

    def render(self, pts_mm: np.ndarray, amp: np.ndarray, rng: np.random.Generator | None) -> np.ndarray:
        """One B-mode frame, float32 in [0, 1] on the geometry's (rows, cols) pixel grid."""
        t0 = time.perf_counter()
        out = self.scan_convert(self.compress(self.iq(pts_mm, amp, rng)))
        dt = time.perf_counter() - t0
        self.timings_s["frames_s"].append(dt)
        if self.progress is not None:
            self.progress(self.frames_rendered, dt, self.n_simulated[-1])
        self.frames_rendered += 1
        return out

    def summary(self) -> dict:
        fs = self.timings_s["frames_s"]
        return {"probe": self.physics.probe, "center_frequency_mhz": float(self.param.fc) / 1e6,
                "aperture_mm": self.aperture_mm, "elements": int(self.param.Nelements),
                "polar_grid": [self.nr, self.na], "dr_mm": self.dr, "da_rad": self.da,
                "scatterers_in_scene": int(getattr(self, "_n_points", 0)),
                "scatterers_simulated": int(np.mean(self.n_simulated)) if self.n_simulated else 0,
                "workers": self.workers, "das_matrix_s": self.timings_s["das_matrix_s"],
                "calibration_s": self.timings_s["calibration_s"],
                "render_s_per_frame": float(np.mean(fs)) if fs else float("nan")}


def _apodization(kind: str, n: int) -> np.ndarray:
    """Receive weights per element (a row, applied to the I/Q columns before DAS)."""
    x = (np.arange(n) + 0.5) / n
    if kind == "none":
        w = np.ones(n)
    elif kind == "hann":
        w = np.sin(np.pi * x) ** 2
    else:
        raise ValueError(f"rx_apodization={kind!r}: choose hann or none")
    return w.astype(np.float32)[None, :]


def _one_blas_thread():
    """simus makes two small BLAS products per frequency (thousands per frame): with a
    multi-threaded BLAS they cost ~3x the CPU (measured), so BLAS runs single-threaded and
    the parallelism is simus's own thread pool (``workers``). Needs threadpoolctl (in the
    ``sim`` extra); without it, set OPENBLAS_NUM_THREADS=1 before numpy is imported."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:                           # pragma: no cover - depends on the install
        return contextlib.nullcontext()
    return threadpool_limits(limits=1, user_api="blas")


def _cpu_count() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:                        # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


# ====================================================================== clips
@dataclass
class PhysicsClip(EchoClip):
    """An EchoClip whose frames PyMUST made; ``metadata`` says so (``generator: pymust``).

    ``calib.io.remake`` would remake it with the speckle renderer (same truth, other frames):
    remake it with ``make_physics_clip(EchoPhantomConfig.from_dict(md["params"]),
    PhysicsConfig(**md["physics"]["config"]), densify=False)``.
    """

    physics: dict = field(default_factory=dict)

    @property
    def metadata(self) -> dict:
        md = dict(super().metadata)
        md["generator"] = "pymust"
        md["physics"] = self.physics
        return md


def scene_density(physics: PhysicsConfig | None = None, probe_near_mm: float = NEAR_FIELD_MM) -> float:
    """Scene scatterer density (per mm^2) that gives the renderer its target from ``probe_near_mm`` on."""
    pm = _pymust()
    physics = physics or PhysicsConfig()
    param = pm.getparam(physics.probe)
    lam = SOUND_SPEED_M_S / float(param.fc) * 1e3
    aperture = param.Nelements * param.pitch * 1e3
    axial = 0.44 * SOUND_SPEED_M_S / (param.bandwidth / 100.0 * float(param.fc)) * 1e3
    cell = _cell_mm2(np.float64(probe_near_mm), lam, aperture, axial, physics.rx_apodization)
    return float(min(100.0, physics.scatterers_per_cell / cell))


def _cell_mm2(r_mm, wavelength_mm: float, aperture_mm: float, axial_mm: float, apodization: str):
    """Approximate -6 dB resolution cell (mm^2): axial 0.44 c / B x lateral lambda r / D
    (times the apodization's widening, at least lambda * F_NUMBER_MIN)."""
    lat = APODIZATION_WIDENING[apodization] * np.maximum(wavelength_mm * r_mm / aperture_mm,
                                                         wavelength_mm * F_NUMBER_MIN)
    return axial_mm * lat


def make_physics_clip(cfg: EchoPhantomConfig | None = None, physics: PhysicsConfig | None = None, *,
                      densify: bool = True, progress: Callable | None = None, **overrides) -> PhysicsClip:
    """``make_echo_clip`` with PyMUST frames: same scene, kinematics and truth.

    ``densify``: raise the scene's scatterer density (``speckle.scatterers_per_mm2``, recorded
    in the metadata) to what the renderer needs near the probe (:func:`scene_density`).
    ``progress(frame_index, seconds, n_scatterers)`` after every frame.
    """
    if cfg is None:
        cfg = EchoPhantomConfig(**overrides)
    elif overrides:
        cfg = dataclasses.replace(cfg, **overrides)
    physics = physics or PhysicsConfig()
    if densify:
        rho = max(cfg.speckle.scatterers_per_mm2, scene_density(physics))
        cfg = dataclasses.replace(cfg, speckle=dataclasses.replace(cfg.speckle, scatterers_per_mm2=rho))
    made = []

    def factory(geom: SectorGeometry, sp: SpeckleConfig) -> PhysicsRenderer:
        made.append(PhysicsRenderer(geom, sp, physics, seed=cfg.seed, progress=progress))
        return made[-1]

    clip = make_echo_clip(cfg, renderer_factory=factory)
    info = {"config": physics.to_dict(), "pymust_version": pymust_version(), **made[0].summary()}
    fields = {f.name: getattr(clip, f.name) for f in dataclasses.fields(EchoClip)}
    return PhysicsClip(**fields, physics=info)


# ====================================================================== validation set
#: the held-out set's clips, cycled: peak GLS (mean segment factor x gls_pct) -22, -17,
#: -12.5 (apical lateral akinetic), -8 %; fps * 60 / heart rate is a whole number of frames
VALIDATION_SPECS = (
    {"gls_pct": -22.0, "heart_rate_bpm": 60.0, "fps": 32.0},
    {"gls_pct": -17.0, "heart_rate_bpm": 72.0, "fps": 36.0},
    {"gls_pct": -15.0, "heart_rate_bpm": 66.0, "fps": 33.0, "dysfunction": {"apical_lateral": 0.0}},
    {"gls_pct": -8.0, "heart_rate_bpm": 80.0, "fps": 40.0},
)
VALIDATION_OFFSET = 90_000      # seeds split_seeds("test", n, offset=90000): no training set reaches them


def validation_configs(n: int = 4, rows: int = 256, cols: int = 256, frames: int | None = None,
                       offset: int = VALIDATION_OFFSET) -> list[EchoPhantomConfig]:
    """The held-out physics clips: A4C, anatomy and imaging drawn from ``test``-split seeds,
    timing and strain from :data:`VALIDATION_SPECS`; one cardiac cycle from end-diastole to
    the next end-diastole inclusive (``frames`` overrides the count)."""
    from calib.datasets import random_echo_config, split_seeds

    out = []
    for i, seed in enumerate(split_seeds("test", n, offset=offset)):
        spec = dict(VALIDATION_SPECS[i % len(VALIDATION_SPECS)])
        spec.setdefault("dysfunction", {})
        cycle = int(round(spec["fps"] * 60.0 / spec["heart_rate_bpm"]))
        out.append(random_echo_config(int(seed), view="a4c", rows=rows, cols=cols,
                                      frames=frames if frames else cycle + 1, start_phase=0.0, **spec))
    return out
