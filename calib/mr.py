"""Short-axis cine MR phantom (bSSFP look) with AHA-segment strain, wall-motion classes,
optional infarct and velocity-mapping channels derived from the same motion.

Geometry and conventions
------------------------
Image (rows, cols), anterior up, the RV on the image left, the LV cavity centre near the
image centre.  Screen angles are counter-clockwise from the +col axis (anterior = 90 deg),
which is counter-clockwise as viewed from the apex.  AHA 16 segments: basal 1-6, mid 7-12
(60 deg each), apical 13-16 (90 deg each).  The boundaries are anchored at the anterior RV
insertion point: segment 2 (8) anteroseptal starts there and the numbers increase
counter-clockwise (2 anteroseptal, 3 inferoseptal, 4 inferior, 5 inferolateral,
6 anterolateral, 1 anterior, the last one ending at the insertion point); apical: 14
septal is centred on the middle of the septum, then 15 inferior, 16 lateral, 13 anterior.

Motion: an exact closed-ring map (``calib.kinematics``) with per-segment midwall
circumferential strain, wall-thickness (radial) strain and twist, composed with a radial map
of the RV free wall; the two insertion points move with the LV epicardium.  Wall-motion
class per segment scales the normal strains: normal 1, hypokinetic 0.5, akinetic 0,
dyskinetic -0.3 (systolic lengthening / thinning), or by a factor of the segment's own within
its class's range (``wall_motion_factors``, :data:`WALL_MOTION_FACTOR_RANGES`).

Image: intensities per tissue calibrated on the Sunnybrook SSFP cines shipped in
/work/shared/data (blood ~280, myocardium ~80, liver ~105, lung ~10, fat ~450, 12-bit
scale), partial volume by 2x supersampling, k-space truncation to the acquisition matrix
(Gibbs ringing), a smooth coil sensitivity and Rician noise.

Velocity channels (tissue phase mapping): v_col, v_row (in-plane, mm/s, from the map's
time derivative) and v_through (mm/s, positive towards the apex: the slice's longitudinal
motion), with phase noise ~ venc * sigma / (pi * |M|) and wrapping at +-venc.  Truth keeps
the noise-free velocity.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass, field

import cv2
import numpy as np

from calib import anatomy as an
from calib.cycle import CardiacCycleConfig
from calib.errors import PhantomParameterError, require_choice, require_int_range, require_range
from calib.kinematics import THETA, EllipticWall
from streamer.vocab import AHA_SEGMENTS, SAX_LEVELS, WALL_MOTION_CLASSES, MRLabel

# motion factor per wall-motion class code (streamer.vocab.WALL_MOTION_CLASSES):
# (circumferential, radial)
CLASS_FACTORS = {0: (1.0, 1.0), 1: (0.5, 0.45), 2: (0.0, 0.0), 3: (-0.3, -0.25)}
#: the spread of a segment's motion inside its class, as a fraction of the normal strains
#: (``MRPhantomConfig.wall_motion_factors``): normal 75-115 %, hypokinetic 20-60 %, akinetic
#: -10..+10 %, dyskinetic -45..-15 % (systolic lengthening and thinning)
WALL_MOTION_FACTOR_RANGES = {0: (0.75, 1.15), 1: (0.2, 0.6), 2: (-0.1, 0.1), 3: (-0.45, -0.15)}

# bSSFP intensities (Sunnybrook scale)
I_BLOOD, I_MYO, I_FAT, I_LIVER, I_LUNG, I_MUSCLE, I_FLUID, I_BONE = 285., 82., 430., 105., 6., 95., 220., 140.

_SLICE_GEOM = {  # endo radius ED (mm), wall (mm), RV scale, through-plane amplitude (mm), twist (deg)
    "basal": (26.0, 9.5, 1.15, 12.0, -4.0),
    "mid": (23.0, 10.0, 1.0, 8.0, 2.0),
    "apical": (16.0, 8.0, 0.75, 3.0, 8.0),
}


def parse_wall_motion(value) -> int:
    if isinstance(value, str):
        v = value.strip().lower()
        if v in WALL_MOTION_CLASSES:
            return WALL_MOTION_CLASSES.index(v)
        try:
            value = int(v)
        except ValueError:
            raise PhantomParameterError(
                f"wall motion {value!r} is not one of {', '.join(WALL_MOTION_CLASSES)} or 0..3") from None
    return require_int_range("wall motion class", value, 0, 3)


@dataclass
class MRPhantomConfig:
    """One short-axis cine slice covering one cardiac cycle (units in the names)."""

    slice_level: str = "mid"
    rows: int = 256
    cols: int = 256
    pixel_mm: float = 1.367
    frames: int = 25
    heart_rate_bpm: float = 70.0
    fps: float | None = None            # None: frames cover exactly one cycle
    peak_circ_strain_pct: float = -18.0  # midwall, normal segments, at end-systole
    peak_radial_strain_pct: float = 45.0  # wall thickening, normal segments
    wall_motion: dict = field(default_factory=dict)    # AHA segment -> class (0..3 / name)
    #: AHA segment -> its strains as a fraction of the normal ones (circumferential and
    #: radial alike), inside its class's WALL_MOTION_FACTOR_RANGES; a segment not listed
    #: moves by its class's CLASS_FACTORS
    wall_motion_factors: dict = field(default_factory=dict)
    infarct_segments: list = field(default_factory=list)
    infarct_transmurality: float = 0.7   # fraction of the wall from the endocardium
    lv_endo_radius_mm: float | None = None   # None: by slice level
    wall_thickness_mm: float | None = None
    lv_offset_mm: tuple = (0.0, 6.0)     # LV centre offset from the image centre [row, col]
    rv_insertion_deg: float = 120.0      # screen angle of the anterior RV insertion point
    venc_mm_s: float = 200.0
    #: blood signal as a fraction of the bSSFP blood's: 1 = bright blood (cine SSFP); ~0.1-0.3
    #: = the dark blood of a black-blood gradient-echo velocity-mapping acquisition
    blood_signal: float = 1.0
    #: background phase offset (eddy currents, concomitant gradients) of each velocity
    #: channel: a smooth field, linear with a quadratic part, whose largest |value| in the
    #: image is up to this, mm/s (0 = none; drawn per channel from the seed)
    phase_offset_mm_s: float = 0.0
    noise_sigma: float = 7.0             # Rician noise (same scale as the intensities)
    acquisition_fraction: float = 0.875  # k-space matrix / image matrix (224 / 256)
    seed: int = 0

    def __post_init__(self) -> None:
        require_choice("slice_level", self.slice_level, SAX_LEVELS)
        require_int_range("rows", self.rows, 32, 2048)
        require_int_range("cols", self.cols, 32, 2048)
        require_range("pixel_mm", self.pixel_mm, 0.3, 5.0, "mm")
        require_int_range("frames", self.frames, 2, 500)
        if self.fps is not None:
            require_range("fps", self.fps, 1e-3, 2000.0, "frames per second")
        require_range("heart_rate_bpm", self.heart_rate_bpm, 20.0, 250.0, "beats per minute")
        require_range("peak_circ_strain_pct", self.peak_circ_strain_pct, -40.0, 10.0, "%")
        require_range("peak_radial_strain_pct", self.peak_radial_strain_pct, -30.0, 100.0, "%")
        require_range("infarct_transmurality", self.infarct_transmurality, 0.05, 1.0)
        if self.lv_endo_radius_mm is not None:
            require_range("lv_endo_radius_mm", self.lv_endo_radius_mm, 8.0, 45.0, "mm")
        if self.wall_thickness_mm is not None:
            require_range("wall_thickness_mm", self.wall_thickness_mm, 3.0, 25.0, "mm")
        require_range("rv_insertion_deg", self.rv_insertion_deg, 90.0, 160.0, "degrees")
        require_range("venc_mm_s", self.venc_mm_s, 10.0, 5000.0, "mm/s")
        require_range("noise_sigma", self.noise_sigma, 0.0, 200.0)
        require_range("blood_signal", self.blood_signal, 0.0, 2.0)
        require_range("phase_offset_mm_s", self.phase_offset_mm_s, 0.0, 1000.0, "mm/s")
        require_range("acquisition_fraction", self.acquisition_fraction, 0.3, 1.0)
        require_int_range("seed", self.seed, 0, 2**63 - 1)
        wm = {}
        for k, v in dict(self.wall_motion).items():
            seg = require_int_range("wall_motion segment", k, 1, 16)
            wm[str(seg)] = parse_wall_motion(v)
        self.wall_motion = wm
        factors = {}
        for k, v in dict(self.wall_motion_factors).items():
            seg = require_int_range("wall_motion_factors segment", k, 1, 16)
            factors[str(seg)] = float(v)
        self.wall_motion_factors = factors
        for seg, f in factors.items():
            c = self._class_of(int(seg))
            lo, hi = WALL_MOTION_FACTOR_RANGES[c]
            if not lo <= f <= hi:
                raise PhantomParameterError(
                    f"wall_motion_factors: segment {seg} is {WALL_MOTION_CLASSES[c]}, whose "
                    f"strains are {lo:g}..{hi:g} of normal; got {f:g}")
        self.infarct_segments = [require_int_range("infarct segment", s, 1, 16) for s in self.infarct_segments]
        self.lv_offset_mm = tuple(float(x) for x in self.lv_offset_mm)
        _ = self.cycle  # building the cycle validates the timing

    @property
    def fps_value(self) -> float:
        return float(self.fps) if self.fps is not None else self.frames * self.heart_rate_bpm / 60.0

    @property
    def cycle(self) -> CardiacCycleConfig:
        return CardiacCycleConfig(heart_rate_bpm=self.heart_rate_bpm, fps=self.fps_value,
                                  frames=self.frames)

    @property
    def segments(self) -> tuple:
        return AHA_SEGMENTS[self.slice_level]

    def _class_of(self, s: int) -> int:
        if str(s) in self.wall_motion:
            return self.wall_motion[str(s)]
        if s in self.infarct_segments:
            return 2 if self.infarct_transmurality > 0.5 else 1
        return 0

    def segment_classes(self) -> np.ndarray:
        return np.array([self._class_of(s) for s in self.segments], dtype=np.int64)

    def segment_factors(self) -> np.ndarray:
        """(K, 2): each segment's (circumferential, radial) strains as a fraction of the
        normal ones: its ``wall_motion_factors`` entry, else its class's CLASS_FACTORS."""
        out = []
        for s, c in zip(self.segments, self.segment_classes()):
            f = self.wall_motion_factors.get(str(s))
            out.append((f, f) if f is not None else CLASS_FACTORS[int(c)])
        return np.array(out, dtype=np.float64)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["lv_offset_mm"] = list(self.lv_offset_mm)
        return d

    def to_json(self) -> str:
        return json.dumps({"kind": "mr", "params": self.to_dict()}, sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict) -> MRPhantomConfig:
        return cls(**dict(d))


@dataclass
class MRTruth:
    myocardium: np.ndarray        # (n, rows, cols) uint8
    cavity: np.ndarray            # LV blood pool incl. papillary muscles
    rv: np.ndarray                # RV blood pool
    myocardium_soft: np.ndarray   # uint8 0..255 area-coverage estimates (>= 128 where mask is 1)
    cavity_soft: np.ndarray
    rv_soft: np.ndarray
    infarct: np.ndarray           # (n, rows, cols) uint8
    segments: np.ndarray          # (n, rows, cols) uint8 AHA number on myocardium, else 0
    displacement: np.ndarray      # (n, rows, cols, 2) float32 (dx, dy) px, t -> t+1
    velocity_mm_s: np.ndarray     # (n, rows, cols, 3) noise-free (v_col, v_row, v_through)
    segment_ids: np.ndarray       # (K,) AHA numbers of this slice
    segment_scores: np.ndarray    # (K,) wall-motion class 0..3
    segment_factors: np.ndarray   # (K, 2) (circumferential, radial) strains / the normal ones
    circ_strain_pct: np.ndarray   # (n, K) prescribed midwall circumferential strain
    radial_strain_pct: np.ndarray  # (n, K) prescribed wall-thickness strain
    msi: float                    # motion score index of this slice (1 normal .. 4 dyskinetic)
    insertion_points_mm: np.ndarray  # (n, 2, 2) anterior, inferior [row, col]
    lv_centre_mm: np.ndarray      # (2,)
    ed_frames: np.ndarray
    es_frames: np.ndarray
    phase: np.ndarray

    def arrays(self) -> dict:
        out = {k: v for k, v in dataclasses.asdict(self).items() if isinstance(v, np.ndarray)}
        out["msi"] = np.float64(self.msi)
        return out

    def label_map(self) -> np.ndarray:
        """(n, rows, cols) uint8 label images in the values of :class:`streamer.vocab.MRLabel`
        (0 background, 1 LV cavity, 2 LV myocardium, 3 RV cavity)."""
        out = np.full(self.myocardium.shape, MRLabel.BACKGROUND, np.uint8)
        out[self.rv > 0] = MRLabel.RV_CAVITY
        out[self.cavity > 0] = MRLabel.LV_CAVITY
        out[self.myocardium > 0] = MRLabel.LV_MYOCARDIUM
        return out


@dataclass
class MRClip:
    frames: np.ndarray            # (n, rows, cols) uint16 magnitude
    velocity_mm_s: np.ndarray     # (n, rows, cols, 3) float32, measured (noisy, wrapped)
    spacing_mm: tuple
    fps: float
    truth: MRTruth
    config: MRPhantomConfig
    modality: str = "MR"
    timings_s: dict = field(default_factory=dict)

    @property
    def metadata(self) -> dict:
        return {"phantom": "mr", "params": self.config.to_dict(), "seed": self.config.seed,
                "slice_level": self.config.slice_level, "spacing_mm": list(self.spacing_mm),
                "fps": self.fps, "velocity_channels": ["v_col_mm_s", "v_row_mm_s", "v_through_mm_s"],
                "venc_mm_s": self.config.venc_mm_s, "generator": "calib.mr.make_mr_clip"}


def _screen_to_theta(phi_deg):
    """Screen angle (ccw from +col) -> wall angle theta (rad, clockwise from up)."""
    return np.deg2rad(90.0 - np.asarray(phi_deg, dtype=np.float64))


def _theta_to_screen(theta):
    return 90.0 - np.rad2deg(theta)


class _Scene:
    """Everything about one MR slice that does not change with time."""

    def __init__(self, cfg: MRPhantomConfig, rng: np.random.Generator):
        self.cfg = cfg
        sp = cfg.pixel_mm
        r_endo, wall, rv_scale, self.through_mm, twist_deg = _SLICE_GEOM[cfg.slice_level]
        if cfg.lv_endo_radius_mm is not None:
            r_endo = cfg.lv_endo_radius_mm
        if cfg.wall_thickness_mm is not None:
            wall = cfg.wall_thickness_mm
        self.twist_rad = math.radians(twist_deg)
        self.r_endo, self.wall = r_endo, wall
        centre = np.array([(cfg.rows - 1) / 2.0 * sp + cfg.lv_offset_mm[0],
                           (cfg.cols - 1) / 2.0 * sp + cfg.lv_offset_mm[1]])
        self.centre = centre
        r_mid = r_endo + wall / 2.0
        self.r_epi = r_endo + wall
        self.lv = EllipticWall(centre, (-1.0, 0.0), r_mid, r_mid, math.pi, wall, fade_mm=10.0,
                               margin_mm=1.0)
        # RV: ellipse left of the LV, placed so the anterior insertion point sits at the
        # requested screen angle; the inferior one follows from the geometry
        self.rv_wall_mm = 3.0
        a_rv = (self.r_epi + 10.0) * rv_scale          # half height (rows)
        b_rv = (self.r_epi * 0.42 + 6.0) * rv_scale      # half width (cols): a crescent
        phis = np.deg2rad(np.arange(0.0, 360.0, 0.25))
        ring = centre + (self.r_epi + 0.5) * np.stack([-np.sin(phis), np.cos(phis)], 1)

        def insertions(f):
            cen = centre + np.array([0.12 * self.r_epi, -(self.r_epi + b_rv * (f - 1.0))])
            d = an.ellipse_distance(ring[:, 0], ring[:, 1], cen[0], cen[1], a_rv, b_rv) - self.rv_wall_mm
            ph = np.rad2deg(phis[d < 0])
            up = ph[(ph > 45) & (ph <= 180)]
            dn = ph[(ph >= 180) & (ph < 315)]
            if up.size == 0 or dn.size == 0:
                return cen, None, None
            return cen, float(up.min()), float(dn.max())

        best = None
        for f in np.linspace(0.05, 1.6, 300):
            cen, up, dn = insertions(f)
            if up is None:
                continue
            err = abs(up - cfg.rv_insertion_deg)
            if best is None or err < best[0]:
                best = (err, cen, up, dn)
        if best is None or best[0] > 12.0:
            raise PhantomParameterError(
                f"rv_insertion_deg={cfg.rv_insertion_deg:g} cannot be met by the RV geometry")
        _, cen, self.phi_ant, self.phi_inf = best
        self.rv_ell = (cen, a_rv, b_rv)
        # RV free wall radial map (identity inside the LV epicardium)
        self.rv_r_ref = float(self.r_epi + 2 * b_rv * 0.9)
        self.rvmap = EllipticWall(centre, (-1.0, 0.0), self.rv_r_ref, self.rv_r_ref, math.pi, 0.0,
                                  fade_mm=1.0)
        # segment boundaries (screen angles, ccw) and material theta boundaries (increasing)
        segs = cfg.segments
        if len(segs) == 6:
            start = self.phi_ant - 60.0
            phi_b = start + 60.0 * np.arange(7)          # seg 1 starts 60 deg before the insertion
        else:
            phi_s = self.phi_ant + 60.0                 # middle of the septum
            start = phi_s - 135.0                        # segment 13 anterior
            phi_b = start + 90.0 * np.arange(5)
        self.phi_bounds = phi_b
        th_b = _screen_to_theta(phi_b)[::-1]              # increasing theta
        th_b = th_b - 2 * np.pi * np.floor((th_b[0] + np.pi) / (2 * np.pi))
        self.theta_bounds = th_b                          # segment order reversed
        self.seg_order = np.array(segs[::-1])             # AHA id of each theta segment
        classes = cfg.segment_classes()
        self.classes = classes
        factors_by_theta = cfg.segment_factors()[::-1]
        self.fc, self.fr = factors_by_theta[:, 0].copy(), factors_by_theta[:, 1].copy()
        # infarct: material angular extent (theta) and transmurality
        self.infarct_theta = []
        for s in cfg.infarct_segments:
            if s in segs:
                k = list(self.seg_order).index(s)
                self.infarct_theta.append((th_b[k], th_b[k + 1]))
        # textures and papillary muscles (material, in the cavity)
        lo = np.zeros(2)
        hi = np.array([cfg.rows, cfg.cols]) * sp
        self.tex = an.SmoothField(rng, lo, hi, 6.0)
        self.tex_body = an.SmoothField(rng, lo, hi, 15.0)
        self.papillary = []
        if cfg.slice_level in ("mid", "basal"):
            rpap = 4.0 if cfg.slice_level == "mid" else 2.5
            for phi in (rng.normal(-30, 8), rng.normal(215, 8)):      # anterolateral, inferomedial
                pr = r_endo - rpap - 0.5
                p = centre + pr * np.array([-math.sin(math.radians(phi)), math.cos(math.radians(phi))])
                self.papillary.append((p, rpap))
        self.body = (centre + np.array([8.0, -12.0]), 122.0 + rng.normal(0, 4), 158.0 + rng.normal(0, 5))
        self.body_wobble = (rng.uniform(3, 9), rng.uniform(0, 6.3), rng.uniform(2, 6), rng.uniform(0, 6.3))
        self.lung_vessels = [(centre[0] + rng.uniform(-80, 60), centre[1] + rng.choice([-1, 1]) * rng.uniform(60, 120),
                              rng.uniform(1.0, 2.5)) for _ in range(rng.integers(8, 20))]
        # ED intensity image (2x supersampled) and label images
        self.ss = 2
        self._build_ed_images()

    # ------------------------------------------------------------------ anatomy
    def labels(self, pts: np.ndarray) -> dict:
        """Boolean regions of ED (material) points."""
        th, rh = self.lv.to_local(pts)
        myo = self.lv.in_wall(th, rh)
        cav = self.lv.in_cavity(th, rh)
        (cen, a_rv, b_rv) = self.rv_ell
        d_rv = an.ellipse_distance(pts[..., 0], pts[..., 1], cen[0], cen[1], a_rv, b_rv)
        r_lv = np.hypot(pts[..., 0] - self.centre[0], pts[..., 1] - self.centre[1])
        outside_lv = r_lv > self.r_epi
        rv = (d_rv < 0) & outside_lv
        rv_wall = (d_rv >= 0) & (d_rv < self.rv_wall_mm) & outside_lv
        return dict(myo=myo, cav=cav, rv=rv, rv_wall=rv_wall, th=th, rh=rh, d_rv=d_rv, r_lv=r_lv)

    def intensity(self, pts: np.ndarray) -> np.ndarray:
        L = self.labels(pts)
        r0, r1 = pts[..., 0], pts[..., 1]
        bc, ba, bb = self.body
        ang = np.arctan2(r0 - bc[0], r1 - bc[1])
        wob = self.body_wobble
        d_body = an.ellipse_distance(r0, r1, bc[0], bc[1], ba, bb) - (
            wob[0] * np.cos(2 * ang + wob[1]) + wob[2] * np.cos(3 * ang + wob[3]))
        t = self.tex(pts)
        tb = self.tex_body(pts)
        c = self.centre
        blood = I_BLOOD * self.cfg.blood_signal   # exact I_BLOOD for bright blood (1.0)
        img = np.zeros(r0.shape)
        # body: skin/subcutaneous fat of varying thickness, muscle, mediastinal fat
        fat_th = 9.0 + 6.0 * (0.5 + 0.5 * np.sin(ang * 2 + 0.7)) + 3.0 * tb
        img = np.where(d_body < 0, I_MUSCLE * np.exp(0.15 * tb), img)
        img = np.where((d_body > -fat_th) & (d_body < 0), I_FAT * np.exp(0.12 * tb), img)
        img = np.where((d_body > -fat_th - 12) & (d_body <= -fat_th), I_MUSCLE * 1.1 * np.exp(0.25 * t), img)
        heart_r = self.r_epi + 30.0
        inner = d_body < -fat_th - 12
        lungL = an.ellipse_distance(r0, r1, c[0] - 10, c[1] - heart_r - 30, 70, 36) + 4 * tb
        lungR = an.ellipse_distance(r0, r1, c[0] - 16, c[1] + heart_r + 26, 72, 42) + 4 * tb
        lung = ((lungL < 0) | (lungR < 0)) & inner
        img = np.where(lung, I_LUNG * (1 + 0.6 * np.abs(t)), img)
        # pulmonary vessels: small bright dots in the lungs
        for (vr, vc, rad) in self.lung_vessels:
            img = np.where(lung & (np.hypot(r0 - vr, r1 - vc) < rad), blood * 0.7, img)
        liver = an.ellipse_distance(r0, r1, c[0] + 88, c[1] - 55, 50, 90) + 3 * tb
        img = np.where((liver < 0) & inner, I_LIVER * np.exp(0.06 * t), img)
        stomach = an.ellipse_distance(r0, r1, c[0] + 70, c[1] + 85, 28, 38) + 3 * tb
        img = np.where((stomach < 0) & inner & (liver >= 0), I_FLUID * np.exp(0.1 * t), img)
        spine = an.disc_distance(r0, r1, bc[0] + ba - 38, bc[1] + 5, 16)
        img = np.where(spine < 0, I_BONE * np.exp(0.3 * t), img)
        aorta = an.disc_distance(r0, r1, bc[0] + ba - 48, bc[1] + 32, 10)
        img = np.where(aorta < 0, blood * 1.05, img)
        sternum = an.ellipse_distance(r0, r1, c[0] - heart_r - 22, c[1] - 20, 7, 14)
        img = np.where(sternum < 0, I_BONE * 0.8, img)
        # mediastinum: patchy epicardial fat in the grooves and along the RV, thin dark pericardium
        dist_heart = np.minimum(L["r_lv"] - self.r_epi, L["d_rv"] - self.rv_wall_mm)
        fat_w = np.clip(2.5 + 5.0 * t, 0.0, 8.0)
        med = (dist_heart > 0) & (dist_heart < 22.0) & ~lung
        img = np.where(med, I_MUSCLE * 0.9 * np.exp(0.2 * t), img)
        img = np.where(med & (dist_heart < fat_w), I_FAT * 0.85 * np.exp(0.15 * t), img)
        img = np.where(med & (dist_heart >= fat_w) & (dist_heart < fat_w + 1.3), I_MUSCLE * 0.35, img)
        # heart
        img = np.where(L["rv_wall"], I_MYO * np.exp(0.05 * t), img)
        img = np.where(L["rv"], blood * 1.08 * np.exp(0.04 * t), img)
        img = np.where(L["cav"], blood * np.exp(0.04 * t), img)
        for p, rp in self.papillary:
            dp = np.hypot(r0 - p[0], r1 - p[1]) - rp
            img = np.where(L["cav"] & (dp < 0), I_MYO * 1.05, img)
        # trabeculae: dark specks just inside the endocardium
        d_endo = (1.0 - np.interp(L["th"], THETA, self.lv.d0) - L["rh"]) * self.lv.a
        img = np.where(L["cav"] & (d_endo < 2.5) & (t > 0.7), 0.5 * (blood + I_MYO), img)
        img = np.where(L["myo"], I_MYO * np.exp(0.05 * t), img)
        return img

    def _build_ed_images(self) -> None:
        cfg = self.cfg
        ss = self.ss
        sp = cfg.pixel_mm / ss
        rr, cc = np.mgrid[0:cfg.rows * ss, 0:cfg.cols * ss].astype(np.float64)
        # supersample centres so that (rr + 0.5) / ss - 0.5 maps to output pixel coordinates
        pts = np.stack([(rr + 0.5) / ss - 0.5, (cc + 0.5) / ss - 0.5], -1) * cfg.pixel_mm
        self.ed_image = self.intensity(pts.reshape(-1, 2)).reshape(rr.shape).astype(np.float32)
        self.ss_sp = sp

    # -------------------------------------------------------------------- motion
    def lv_state(self, phase: float):
        cfg = self.cfg
        c = float(cfg.cycle.contraction(phase))
        ec = cfg.peak_circ_strain_pct / 100.0 * c * self.fc
        er = cfg.peak_radial_strain_pct / 100.0 * c * self.fr
        return self.lv.ring_state(self.theta_bounds, ec, er, twist_rad=self.twist_rad * c)

    def rv_state(self, phase: float):
        cfg = self.cfg
        c = float(cfg.cycle.contraction(phase))
        phi = _theta_to_screen(THETA)
        phi_mid = 0.5 * (self.phi_ant + self.phi_inf)
        half = 0.5 * (self.phi_inf - self.phi_ant) + 25.0
        dphi = (phi - phi_mid + 180.0) % 360.0 - 180.0
        amp_mm = 5.0 * c * np.clip(1.0 - (np.abs(dphi) / half) ** 2, 0.0, 1.0) ** 2
        R = self.rv_r_ref
        core = np.full_like(THETA, (self.r_epi + 2.0) / R)
        far = np.full_like(THETA, 1.0 + 25.0 / R)
        inner = np.full_like(THETA, 1.0 - 2.0 / R)
        outer = np.full_like(THETA, 1.0 + 2.0 / R)
        return self.rvmap.radial_state(core, inner, outer, far, 1.0 - amp_mm / R)

    def forward_mm(self, pts: np.ndarray, st_lv, st_rv, local=None) -> np.ndarray:
        th, rh = self.rvmap.to_local(pts) if local is None else local
        p = self.rvmap.forward_mm(th, rh, st_rv)
        th, rh = self.lv.to_local(p)
        return self.lv.forward_mm(th, rh, st_lv)

    def inverse_mm(self, pts: np.ndarray, st_lv, st_rv) -> np.ndarray:
        th, rh = self.lv.to_local(pts)
        th0, rh0 = self.lv.inverse(th, rh, st_lv)
        p = self.lv.to_mm(th0, rh0)
        th, rh = self.rvmap.to_local(p)
        return self.rvmap.to_mm(*self.rvmap.inverse(th, rh, st_rv))


def phase_offset_field(rng: np.random.Generator, rows: int, cols: int,
                       max_mm_s: float) -> np.ndarray | None:
    """(rows, cols, 3) float32 background phase offsets of the three velocity channels, mm/s:
    per channel a plane with a quadratic part (random directions and curvature), scaled so
    that its largest |value| in the image is max_mm_s times a factor in [0.3, 1]; None
    for max_mm_s = 0 (and then nothing is drawn)."""
    if max_mm_s <= 0:
        return None
    y = np.linspace(-1.0, 1.0, rows)[:, None]
    x = np.linspace(-1.0, 1.0, cols)[None, :]
    out = np.empty((rows, cols, 3), np.float32)
    for k in range(3):
        a = rng.normal(size=6)
        f = a[0] * 0.3 + a[1] * y + a[2] * x + 0.4 * (a[3] * y * y + a[4] * x * x + a[5] * x * y)
        out[..., k] = f * (max_mm_s * rng.uniform(0.3, 1.0) / max(float(np.abs(f).max()), 1e-9))
    return out


def _signed_px(f: np.ndarray) -> np.ndarray:
    gy, gx = np.gradient(f)
    return f / np.maximum(np.hypot(gx, gy), 1e-9)


def make_mr_clip(cfg: MRPhantomConfig | None = None, **overrides) -> MRClip:
    """Generate one short-axis cine slice with magnitude, velocity channels and truth."""
    if cfg is None:
        cfg = MRPhantomConfig(**overrides)
    elif overrides:
        cfg = dataclasses.replace(cfg, **overrides)
    t0 = time.perf_counter()
    ss_seq = np.random.SeedSequence(cfg.seed)
    # a fourth generator (the background phase) leaves the first three's draws as they were
    rng_anat, rng_noise, rng_coil, rng_phase = [np.random.default_rng(s) for s in ss_seq.spawn(4)]
    sc = _Scene(cfg, rng_anat)
    cyc = cfg.cycle
    n, rows, cols, sp = cfg.frames, cfg.rows, cfg.cols, cfg.pixel_mm
    phases = cyc.frame_phases(extra=1)
    rr, cc = np.mgrid[0:rows, 0:cols].astype(np.float64)
    pix = np.stack([rr * sp, cc * sp], -1).reshape(-1, 2)
    # coil sensitivity: smooth, brighter anteriorly
    coil = (1.0 + 0.25 * np.cos(np.linspace(0, np.pi, rows))[:, None]
            * np.ones((1, cols))) * np.exp(0.08 * an.SmoothField(rng_coil, [0, 0], [rows * sp, cols * sp], 60.0)(pix).reshape(rows, cols))
    ky = np.fft.fftfreq(rows)
    kx = np.fft.fftfreq(cols)
    kmask = ((np.abs(ky)[:, None] <= 0.5 * cfg.acquisition_fraction) &
             (np.abs(kx)[None, :] <= 0.5 * cfg.acquisition_fraction)).astype(np.float32)
    out = np.empty((n, rows, cols), dtype=np.uint16)
    vel_noisy = np.empty((n, rows, cols, 3), dtype=np.float32)
    vel = np.empty((n, rows, cols, 3), dtype=np.float32)
    myo = np.zeros((n, rows, cols), np.uint8)
    cav = np.zeros_like(myo)
    rvm = np.zeros_like(myo)
    soft = {k: np.zeros_like(myo) for k in ("myo", "cav", "rv")}
    inf = np.zeros_like(myo)
    segmap = np.zeros_like(myo)
    disp = np.empty((n, rows, cols, 2), np.float32)
    ins = np.empty((n, 2, 2))
    states = [(sc.lv_state(p), sc.rv_state(p)) for p in phases]
    rr_s = cyc.rr_s
    dph = 0.004
    ed_img = sc.ed_image
    ss = sc.ss
    ins_ed = sc.centre + sc.r_epi * np.stack([
        [-math.sin(math.radians(sc.phi_ant)), math.cos(math.radians(sc.phi_ant))],
        [-math.sin(math.radians(sc.phi_inf)), math.cos(math.radians(sc.phi_inf))]])
    offset = phase_offset_field(rng_phase, rows, cols, cfg.phase_offset_mm_s)
    # through-plane displacement waveform (towards the apex in systole)
    for t in range(n):
        st_lv, st_rv = states[t]
        X = sc.inverse_mm(pix, st_lv, st_rv)                       # material points of pixels
        # magnitude: sample the supersampled ED image at the material points
        mx = (X[:, 1] / sp + 0.5) * ss - 0.5
        my = (X[:, 0] / sp + 0.5) * ss - 0.5
        img = cv2.remap(ed_img, mx.reshape(rows, cols).astype(np.float32),
                        my.reshape(rows, cols).astype(np.float32), cv2.INTER_LINEAR,
                        borderMode=cv2.BORDER_CONSTANT, borderValue=0.0)
        img = img * coil
        k = np.fft.fft2(img) * kmask
        cimg = np.fft.ifft2(k)
        if cfg.noise_sigma > 0:
            cimg = cimg + cfg.noise_sigma * (rng_noise.standard_normal((rows, cols))
                                             + 1j * rng_noise.standard_normal((rows, cols)))
        mag = np.abs(cimg)
        out[t] = np.clip(np.round(mag), 0, 65535).astype(np.uint16)
        # truth masks from material labels
        L = sc.labels(X)
        m = L["myo"]
        myo[t] = m.reshape(rows, cols)
        c_ = L["cav"]
        cav[t] = c_.reshape(rows, cols)
        rvm[t] = L["rv"].reshape(rows, cols)
        th_m = L["th"]
        d0m = np.interp(th_m, THETA, sc.lv.d0)
        levels = {"myo": np.abs(L["rh"] - 1.0) - d0m, "cav": L["rh"] - (1.0 - d0m),
                  "rv": np.maximum(L["d_rv"], sc.r_epi - L["r_lv"])}
        hard = {"myo": myo[t], "cav": cav[t], "rv": rvm[t]}
        for key, f in levels.items():
            sd = _signed_px(f.reshape(rows, cols))
            v = np.clip((0.5 - sd) * 255.0 + 0.5, 0, 255).astype(np.uint8)
            h = hard[key] > 0
            v[~h] = np.minimum(v[~h], 127)
            v[h] = np.maximum(v[h], 128)
            soft[key][t] = v
        # AHA segment of myocardium pixels by material angle
        tb = sc.theta_bounds
        thw = np.where(th_m < tb[0], th_m + 2 * np.pi, th_m)
        kseg = np.clip(np.searchsorted(tb, thw, side="right") - 1, 0, len(tb) - 2)
        segmap[t] = np.where(m, sc.seg_order[kseg], 0).reshape(rows, cols)
        if sc.infarct_theta:
            d0 = np.interp(th_m, THETA, sc.lv.d0)
            depth = (L["rh"] - (1.0 - d0)) / (2 * d0)                # 0 endo .. 1 epi
            inside = np.zeros_like(m)
            for a, b in sc.infarct_theta:
                inside |= (thw >= a) & (thw < b)
            inf[t] = (m & inside & (depth <= cfg.infarct_transmurality)).reshape(rows, cols)
        # displacement to the next frame
        loc = sc.rvmap.to_local(X)
        nxt = sc.forward_mm(X, *states[t + 1], local=loc)
        d = (nxt - pix) / sp
        disp[t, ..., 0] = d[:, 1].reshape(rows, cols)
        disp[t, ..., 1] = d[:, 0].reshape(rows, cols)
        # velocity (mm/s): central difference of the map in time
        sa = (sc.lv_state(phases[t] + dph), sc.rv_state(phases[t] + dph))
        sb = (sc.lv_state(phases[t] - dph), sc.rv_state(phases[t] - dph))
        v = (sc.forward_mm(X, *sa, local=loc) - sc.forward_mm(X, *sb, local=loc)) / (2 * dph * rr_s)
        heart = (m | c_ | L["rv"] | L["rv_wall"]).reshape(rows, cols)
        cp = float(cyc.contraction(phases[t] + dph) - cyc.contraction(phases[t] - dph)) / (2 * dph * rr_s)
        vz = sc.through_mm * cp * heart
        vel[t, ..., 0] = v[:, 1].reshape(rows, cols) * heart
        vel[t, ..., 1] = v[:, 0].reshape(rows, cols) * heart
        vel[t, ..., 2] = vz
        # measured velocity: phase noise and wrapping
        sig_v = cfg.venc_mm_s / math.pi * cfg.noise_sigma / np.maximum(mag, 1e-3)
        noisy = vel[t] + rng_noise.standard_normal((rows, cols, 3)).astype(np.float32) * np.minimum(sig_v, 10 * cfg.venc_mm_s)[..., None]
        if offset is not None:
            noisy = noisy + offset
        vel_noisy[t] = (noisy + cfg.venc_mm_s) % (2 * cfg.venc_mm_s) - cfg.venc_mm_s
        ins[t] = sc.forward_mm(ins_ed, st_lv, st_rv)
    c_t = cyc.contraction(phases[:n])
    classes = sc.classes
    factors = cfg.segment_factors()
    fc, fr = factors[:, 0], factors[:, 1]
    circ = cfg.peak_circ_strain_pct * c_t[:, None] * fc[None, :]
    radial = cfg.peak_radial_strain_pct * c_t[:, None] * fr[None, :]
    ed, es = cyc.ed_es_frames()
    truth = MRTruth(myocardium=myo, cavity=cav, rv=rvm, myocardium_soft=soft["myo"],
                    cavity_soft=soft["cav"], rv_soft=soft["rv"], infarct=inf, segments=segmap,
                    displacement=disp, velocity_mm_s=vel, segment_ids=np.array(cfg.segments),
                    segment_scores=classes, segment_factors=factors, circ_strain_pct=circ, radial_strain_pct=radial,
                    msi=float(np.mean(classes + 1)),  # score = class code + 1
                    insertion_points_mm=ins,
                    lv_centre_mm=sc.centre.copy(), ed_frames=ed, es_frames=es, phase=phases[:n])
    return MRClip(frames=out, velocity_mm_s=vel_noisy, spacing_mm=(sp, sp), fps=cfg.fps_value,
                  truth=truth, config=cfg, timings_s={"total_s": time.perf_counter() - t0})
