"""Echo phantoms with exact truth: apical 4-chamber first, other views through ``calib.views``.

``make_echo_clip(EchoPhantomConfig(...))`` returns an :class:`EchoClip`: uint8 B-mode frames
(rows grow downward, transducer at the top centre, sector opening downward) and an
:class:`EchoTruth` with, for every frame t,

* ``myocardium`` / ``cavity`` masks (LV), uint8 0/1;
* ``displacement`` (rows, cols, 2) float32 in pixels, channel order (dx = d_col, dy = d_row)
  as OpenCV returns flow: tissue at pixel (r, c) in frame t is at (r + dy, c + dx) in t+1.
  It is the exact tissue motion everywhere in the image plane (also outside the sector and
  in the blood, which moves with the cavity); only the valve leaflets move on their own
  and are not described by it.  The last frame's field maps to the (unrendered) next frame;
* ``centreline_mm`` (120, 2) [row, col] mm: material midline points, equally spaced by arc
  length at end-diastole from basal septum over the apex to basal lateral, moved with the
  tissue (what a tracker follows); ``centreline_equal_mm`` the same midline resampled
  equally spaced in every frame (what a segmentation gives);
* ``gls_pct`` = (l(t) - l0) / l0 * 100 of the midline, l0 at end-diastole, and
  ``regional_pct`` (6) per segment in the order basal septal, mid septal, apical septal,
  apical lateral, mid lateral, basal lateral: the *prescribed* strain of the model's
  reference layer rho = 1, which ``centreline_mm`` follows;
* ``midwall_gls_pct``, ``midwall_regional_pct``, ``midwall_centreline_mm``: the same on the
  **mid-wall** as a reader defines it (see below) - the truth for a measurement;
* ``ed_frames`` / ``es_frames``, ``view`` / ``view_index``, ``segment_scores`` (0 normal,
  1 hypokinetic, 2 akinetic, 3 dyskinetic).

Segment strain is ``factor_k * gls_pct * c(phase)`` with the contraction waveform c of
``calib.cycle``; GLS is the mean over the six equal-length segments, so with no dysfunction
it equals the prescribed ``gls_pct`` at end-systole.

Mid-wall strain (``midwall_*``).  The prescription holds on the reference layer rho = 1,
which is the middle of the wall along rays through the elliptic origin, not along the wall
normal: at ED it lies up to 0.4 mm (0.25 mm mean, A4C defaults) endocardial of the
equidistant mid-wall, and 0.6-0.8 mm at end-systole (thickening is symmetric in rho).
With the wall's transmural strain gradient and curvature that is worth up to ~0.6 strain-%
regionally and ~0.15 % in GLS - more than a measurement is allowed to be off.  A reader
(and :mod:`streamer.measure`) means by regional longitudinal strain the relative length
change of a segment of the **mid-wall**: the material layer halfway between endocardium
and epicardium *along the wall normal* at end-diastole (:func:`midwall_rho`), followed
through the cycle; six segments = equal thirds (by ED arc length along that layer) of
each wall, basal septum -> apex -> basal lateral; GLS = the whole layer's length change
(the mean of the six).  ``midwall_*`` is that quantity, computed exactly from the map
(dense polyline of 4000 material points; l0 from the ED configuration, as for the
prescription).
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass, field

import numpy as np

from calib import anatomy as an
from calib.cycle import CardiacCycleConfig
from calib.errors import (PhantomParameterError, require_choice, require_int_range,
                          require_range)
from calib.kinematics import THETA, EllipticWall, WallState, circular_smooth
from calib.speckle import SectorGeometry, SpeckleConfig, SpeckleRenderer, to_uint8

VIEWS = ("a4c", "a2c", "alax", "plax", "psax", "sc4c", "ivc", "unknown")
SEGMENTS = ("basal_septal", "mid_septal", "apical_septal",
            "apical_lateral", "mid_lateral", "basal_lateral")
WALL_MOTION = {"normal": 1.0, "hypokinetic": 0.5, "akinetic": 0.0, "dyskinetic": -0.3}
WALL_MOTION_CLASSES = ("normal", "hypokinetic", "akinetic", "dyskinetic")
N_CENTRELINE = 120


def wall_motion_class(factor: float) -> int:
    """Segment score from a contraction factor (1 normal, 0.5 hypo, 0 akinetic, <0 dyskinetic)."""
    if factor >= 0.7:
        return 0
    if factor >= 0.2:
        return 1
    if factor >= -0.1:
        return 2
    return 3


def parse_factor(value) -> float:
    if isinstance(value, str):
        key = value.strip().lower()
        if key in WALL_MOTION:
            return WALL_MOTION[key]
        try:
            return float(key)
        except ValueError:
            raise PhantomParameterError(
                f"dysfunction factor {value!r} is neither a number nor one of "
                f"{', '.join(WALL_MOTION)}") from None
    return float(value)


@dataclass
class EchoPhantomConfig:
    """One echo clip. Anatomy in mm at end-diastole; timing as in CardiacCycleConfig."""

    view: str = "a4c"
    rows: int = 256
    cols: int = 256
    frames: int = 60
    fps: float = 60.0
    heart_rate_bpm: float = 70.0
    start_phase: float = 0.0
    es_phase: float | None = None
    gls_pct: float = -20.0
    dysfunction: dict = field(default_factory=dict)   # segment name -> contraction factor
    depth_mm: float = 170.0
    sector_angle_deg: float = 80.0
    lv_length_mm: float = 84.0       # ED endocardial apex to mitral plane
    lv_width_mm: float = 46.0        # ED endocardial diameter near the base
    wall_base_mm: float = 10.0
    wall_apex_mm: float = 6.5
    base_angle_deg: float = 80.0     # elliptic angle of the base (90 = widest at the base)
    apex_depth_mm: float = 30.0      # transducer to the midline apex
    apex_azimuth_deg: float = 2.0    # beam angle of the apex, positive to image right
    axis_tilt_deg: float = 8.0       # apex->base direction from vertical, positive = to the right
    inward_motion_per_strain: float = 0.45  # epicardial inward motion (rho) per unit strain
    thickening_exponent: float = 1.5
    speckle: SpeckleConfig = field(default_factory=SpeckleConfig)
    seed: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.speckle, dict):
            self.speckle = SpeckleConfig(**self.speckle)
        require_choice("view", self.view, VIEWS)
        require_int_range("rows", self.rows, 32, 2048)
        require_int_range("cols", self.cols, 32, 2048)
        require_range("gls_pct", self.gls_pct, -40.0, 20.0, "%")
        require_range("depth_mm", self.depth_mm, 40.0, 300.0, "mm")
        require_range("lv_length_mm", self.lv_length_mm, 40.0, 130.0, "mm")
        require_range("lv_width_mm", self.lv_width_mm, 20.0, 80.0, "mm")
        require_range("wall_base_mm", self.wall_base_mm, 4.0, 25.0, "mm")
        require_range("wall_apex_mm", self.wall_apex_mm, 2.0, 20.0, "mm")
        require_range("base_angle_deg", self.base_angle_deg, 60.0, 100.0, "degrees")
        require_range("apex_depth_mm", self.apex_depth_mm, 5.0, 120.0, "mm")
        require_range("apex_azimuth_deg", self.apex_azimuth_deg, -30.0, 30.0, "degrees")
        require_range("axis_tilt_deg", self.axis_tilt_deg, -45.0, 45.0, "degrees")
        require_range("inward_motion_per_strain", self.inward_motion_per_strain, 0.0, 1.5)
        require_range("thickening_exponent", self.thickening_exponent, 0.0, 3.0)
        require_int_range("seed", self.seed, 0, 2**63 - 1)
        clean = {}
        for k, v in dict(self.dysfunction).items():
            require_choice("dysfunction segment", k, SEGMENTS)
            clean[k] = require_range(f"dysfunction[{k}]", parse_factor(v), -1.0, 1.5, "(contraction factor)")
        self.dysfunction = clean
        _ = self.cycle  # building the cycle validates the timing
        SectorGeometry.fit(self.rows, self.cols, self.depth_mm, self.sector_angle_deg)

    @property
    def cycle(self) -> CardiacCycleConfig:
        return CardiacCycleConfig(heart_rate_bpm=self.heart_rate_bpm, fps=self.fps,
                                  frames=self.frames, start_phase=self.start_phase,
                                  es_phase=self.es_phase)

    @property
    def segment_factors(self) -> np.ndarray:
        return np.array([self.dysfunction.get(s, 1.0) for s in SEGMENTS])

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps({"kind": "echo", "params": self.to_dict()}, sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict) -> "EchoPhantomConfig":
        d = dict(d)
        if "speckle" in d and isinstance(d["speckle"], dict):
            d["speckle"] = SpeckleConfig(**d["speckle"])
        return cls(**d)


@dataclass
class EchoTruth:
    myocardium: np.ndarray          # (n, rows, cols) uint8
    cavity: np.ndarray              # (n, rows, cols) uint8
    myocardium_soft: np.ndarray     # (n, rows, cols) uint8 0..255 area-coverage estimate
    cavity_soft: np.ndarray         # (n, rows, cols) uint8 (>= 128 exactly where the mask is 1)
    displacement: np.ndarray        # (n, rows, cols, 2) float32, (dx, dy) px, t -> t+1
    centreline_mm: np.ndarray       # (n, 120, 2) material midline points [row, col] mm
    centreline_equal_mm: np.ndarray  # (n, 120, 2) midline resampled equally spaced
    gls_pct: np.ndarray             # (n,)
    regional_pct: np.ndarray        # (n, 6)
    ed_frames: np.ndarray
    es_frames: np.ndarray
    phase: np.ndarray               # (n,) cardiac phase in cycles
    view: str
    view_index: int
    segment_scores: np.ndarray      # (6,) int
    segment_factors: np.ndarray     # (6,) float
    sector_mask: np.ndarray         # (rows, cols) uint8
    midwall_centreline_mm: np.ndarray | None = None  # (n, 120, 2) material mid-wall points
    midwall_gls_pct: np.ndarray | None = None        # (n,) GLS of the mid-wall
    midwall_regional_pct: np.ndarray | None = None   # (n, 6) regional strain of the mid-wall

    def arrays(self) -> dict:
        out = {k: v for k, v in dataclasses.asdict(self).items() if isinstance(v, np.ndarray)}
        out["view_index"] = np.int64(self.view_index)
        out["view"] = np.array(self.view)
        return out


@dataclass
class EchoClip:
    frames: np.ndarray              # (n, rows, cols) uint8
    spacing_mm: tuple
    fps: float
    truth: EchoTruth
    config: EchoPhantomConfig
    timings_s: dict = field(default_factory=dict)

    @property
    def metadata(self) -> dict:
        return {"phantom": "echo", "params": self.config.to_dict(), "seed": self.config.seed,
                "view": self.truth.view, "spacing_mm": list(self.spacing_mm), "fps": self.fps,
                "generator": "calib.echo.make_echo_clip"}


# ============================================================================ scenes
@dataclass
class Scene:
    """What a view shows and how it moves; built once per clip."""

    view: str
    geom: SectorGeometry
    frame: an.Frame2D                     # scene frame for valves (u towards the apex)
    wall: EllipticWall | None             # the deforming wall (LV, or another structure)
    state_fn: object                      # phase (cycles) -> WallState
    echogenicity: object                  # ED points (N, 2) mm -> amplitude (N,)
    leaflets: list = field(default_factory=list)
    has_lv: bool = True                   # masks, centreline and strain are meaningful
    lv_open: bool = True                  # horseshoe (apical) or ring (short axis)
    beam_gain: np.ndarray | None = None
    static_clutter: tuple | None = None   # (points, amplitudes) that do not move
    strain_truth: bool = True             # centreline / GLS / regional strain are given


def _lv_wall(cfg: EchoPhantomConfig, apex_mid_mm: np.ndarray, eu: np.ndarray,
             fade_mm: float = 12.0) -> tuple[EllipticWall, float]:
    """LV horseshoe with the requested ED length/width; returns (wall, u of mitral plane)."""
    thb = math.radians(cfg.base_angle_deg)
    B = (cfg.lv_width_mm / 2.0 + cfg.wall_base_mm / 2.0) / math.sin(thb)
    A = cfg.lv_length_mm
    for _ in range(20):
        ns_b = A * B / math.sqrt((B * math.cos(thb)) ** 2 + (A * math.sin(thb)) ** 2)
        d0b = (cfg.wall_base_mm / 2.0) / ns_b
        u_m = A * math.cos(thb) * (1.0 - d0b)
        A = cfg.lv_length_mm + cfg.wall_apex_mm / 2.0 + u_m
    wb, wa = cfg.wall_base_mm, cfg.wall_apex_mm
    s_b = math.sin(thb)

    def thickness(th):
        x = np.minimum(np.abs(np.sin(th)) / s_b, 1.0)
        x = np.where(np.abs(th) > thb, 1.0, x)
        return wa + (wb - wa) * x ** 1.5

    eu = np.asarray(eu, dtype=np.float64) / np.hypot(*eu)
    origin = apex_mid_mm - A * eu
    return EllipticWall(origin, eu, A, B, thb, thickness, fade_mm=fade_mm), u_m


def lv_state_fn(cfg: EchoPhantomConfig, wall: EllipticWall, asym: float = 0.25):
    """phase -> WallState for the horseshoe LV of apical views."""
    cyc = cfg.cycle
    f = cfg.segment_factors
    thb = wall.half_angle
    bounds = np.linspace(np.interp(-thb, THETA, wall.S0), np.interp(thb, THETA, wall.S0), 7)
    seg_idx = np.clip(np.searchsorted(bounds, wall.S0, side="right") - 1, 0, 5)
    f_node = np.where(np.abs(THETA) <= thb, f[seg_idx], 1.0)
    f_s = circular_smooth(f_node, 0.08)
    q = np.sin(THETA) ** 2 * (1.0 + asym * np.sin(THETA)) * f_s
    gls = cfg.gls_pct / 100.0
    cache: dict = {}

    def state(phase: float) -> WallState:
        c = float(cyc.contraction(phase))
        key = round(c, 12)
        if key not in cache:
            seg = f * gls * c
            inward = cfg.inward_motion_per_strain * (-gls) * c * q
            try:
                cache[key] = wall.open_state(seg, inward, cfg.thickening_exponent)
            except ValueError as e:
                raise PhantomParameterError(
                    f"gls_pct={cfg.gls_pct:g} with dysfunction={cfg.dysfunction} is not "
                    f"realisable: {e}") from None
        return cache[key]

    return state


def _chest_wall(r: np.ndarray, depth_mm: float, field_vals: np.ndarray) -> np.ndarray:
    layers = 0.2 + 0.35 * np.sin(2 * np.pi * r / 5.5 + 1.3) ** 2
    return layers * np.exp(0.35 * field_vals) * np.clip(1.0 - (r - depth_mm) / 6.0, 0, 1)


def _rib_shadows(rng: np.random.Generator, renderer_angles: np.ndarray, half: float,
                 strength: float) -> np.ndarray:
    gain = np.ones_like(renderer_angles)
    if strength <= 0:
        return gain.astype(np.float32)
    for _ in range(rng.integers(0, 3)):
        centre = rng.choice([-1, 1]) * rng.uniform(0.55, 1.0) * half
        width = math.radians(rng.uniform(4, 9))
        depth_ = strength * rng.uniform(0.4, 0.85)
        prof = np.exp(-0.5 * ((renderer_angles - centre) / (width / 2.3548)) ** 4)
        gain *= 1.0 - depth_ * prof
    return gain.astype(np.float32)


def apical_scene(cfg: EchoPhantomConfig, rng: np.random.Generator, view: str = "a4c",
                 apex_mm=None, apex_dir=None, extra=None) -> Scene:
    """A4C / A2C: LV horseshoe apex up, base down, LV on the image right (A4C).

    ``apex_mm`` / ``apex_dir`` place the same heart elsewhere (subcostal view) and ``extra``
    (points, amp, p, v, d_heart) -> amp adds view-specific tissue.
    """
    geom = SectorGeometry.fit(cfg.rows, cfg.cols, cfg.depth_mm, cfg.sector_angle_deg)
    if apex_mm is None:
        apex_mid = geom.from_polar(np.array(cfg.apex_depth_mm), np.array(math.radians(cfg.apex_azimuth_deg)))
    else:
        apex_mid = np.asarray(apex_mm, dtype=np.float64)
    if apex_dir is None:
        tilt = math.radians(cfg.axis_tilt_deg)
        eu = np.array([-math.cos(tilt), -math.sin(tilt)])
    else:
        eu = np.asarray(apex_dir, dtype=np.float64)
    wall, u_m = _lv_wall(cfg, apex_mid, eu)
    fr = an.Frame2D.from_axis(wall.origin + u_m * wall.eu, wall.eu)   # origin at mitral centre
    thb = wall.half_angle
    W = wall.b * math.sin(thb)
    wb = cfg.wall_base_mm
    v_sept = -(W + wb / 2.0)                          # septal epicardium (RV side)
    p_tv = 7.0                                        # tricuspid plane (more apical)
    sp = cfg.speckle
    lo = np.array([0.0, 0.0])
    hi = np.array([cfg.rows, cfg.cols]) * geom.spacing_mm
    tex = an.SmoothField(rng, lo, hi, 4.0)
    tex2 = an.SmoothField(rng, lo, hi, 9.0)
    ds = dict(
        rv=(8.0 + rng.normal(0, 3), v_sept - 16.0 + rng.normal(0, 1.5), 56.0 + rng.normal(0, 4), 20.0 + rng.normal(0, 1.5)),
        la=(-26.0 + rng.normal(0, 2), 3.0 + rng.normal(0, 2), 26.0 + rng.normal(0, 2), 0.85 * W + rng.normal(0, 1.5)),
        ra=(p_tv - 21.0, v_sept - 18.0 + rng.normal(0, 1.5), 21.0 + rng.normal(0, 2), 18.0 + rng.normal(0, 1.5)),
        dao=(-64.0 + rng.normal(0, 3), 0.6 * W + rng.normal(0, 3), 10.0),
    )
    if view == "a2c":
        ds["la"] = (-27.0 + rng.normal(0, 2), 0.0 + rng.normal(0, 2), 27.0, 0.92 * W)
    # ED positions of hinge points (mitral on the endocardial base, tricuspid on RV side)
    d0b = float(np.interp(thb, THETA, wall.d0))
    mv_sept = wall.to_mm(np.array(-thb), np.array(1.0 - d0b))
    mv_lat = wall.to_mm(np.array(thb), np.array(1.0 - d0b))
    prv = ds["rv"]
    rv_free_v = prv[1] - prv[3] * math.sqrt(max(0.0, 1 - ((p_tv - prv[0]) / prv[2]) ** 2))
    tv_sept = fr.world(p_tv, v_sept - 0.5)
    tv_lat = fr.world(p_tv, rv_free_v)
    ann = float(np.hypot(*(mv_lat - mv_sept)))
    ann_t = abs(rv_free_v - v_sept)

    def echogenicity(pts: np.ndarray) -> np.ndarray:
        th, rh = wall.to_local(pts)
        p, v = fr.local(pts)
        r, _ = geom.polar(pts)
        t1 = tex(pts)
        t2 = tex2(pts)
        myo = wall.in_wall(th, rh)
        cav = wall.in_cavity(th, rh) & (p > 0.0)
        d_lv = np.where(p > -2.0, wall.outside_distance_mm(th, rh), 1e3)
        amp = an.LUNG * np.exp(0.6 * t2) * (0.6 + 0.4 * np.clip(r / 60.0, 0, 1))
        d_rv = d_la = d_ra = np.full(p.shape, 1e3)
        if view in ("a4c", "sc4c"):
            d_rv = an.ellipse_distance(p, v, *ds["rv"])
            d_ra = an.ellipse_distance(p, v, *ds["ra"])
        d_la = an.ellipse_distance(p, v, *ds["la"])
        rv_ok = (p > p_tv - 3.0) & (d_lv > 0.0)
        at_ok = p < 1.0

        def heart_distance(pp, vv, dlv):
            return an.soft_min([dlv, np.where((pp > p_tv - 3.0) & (dlv > 0.0), an.ellipse_distance(pp, vv, *ds["rv"]) - 4.0, 1e3)
                                if view in ("a4c", "sc4c") else np.full(pp.shape, 1e3),
                                np.where(pp < 1.0, an.ellipse_distance(pp, vv, *ds["la"]) - 2.0, 1e3),
                                np.where(pp < p_tv, an.ellipse_distance(pp, vv, *ds["ra"]) - 2.0, 1e3)
                                if view in ("a4c", "sc4c") else np.full(pp.shape, 1e3)], 5.0)

        d_heart = heart_distance(p, v, d_lv)
        # surface normal of the heart envelope vs beam direction: specular pericardium
        h = 0.5
        gp = heart_distance(p + h, v, d_lv) - d_heart
        gv = heart_distance(p, v + h, d_lv) - d_heart
        nrm = gp[:, None] * fr.eu + gv[:, None] * fr.ev
        nrm /= np.maximum(np.linalg.norm(nrm, axis=1, keepdims=True), 1e-9)
        beam = pts - np.asarray(geom.apex_mm)
        beam /= np.maximum(np.linalg.norm(beam, axis=1, keepdims=True), 1e-9)
        spec = np.abs(np.sum(nrm * beam, axis=1))
        peri_gain = 0.08 + 0.92 * spec ** 3
        amp = np.where(an.band(d_heart, 0.0, 1.5), an.FAT * np.exp(0.3 * t1), amp)
        peri = an.band(d_heart, 1.5, 5.0)
        # the pericardium is brightest behind the atria and along the lateral wall
        amp = np.where(peri, an.PERICARDIUM * np.exp(0.35 * t1) * peri_gain, amp)
        # descending aorta behind the left atrium
        dd = an.disc_distance(p, v, *ds["dao"])
        amp = np.where(dd < 0, an.BLOOD, np.where(an.band(dd, 0, 2.5), an.VESSEL_WALL, amp))
        if view in ("a4c", "sc4c"):
            amp = np.where(rv_ok & an.band(d_rv, 0.0, 4.0), an.MYOCARDIUM * 0.9 * np.exp(0.3 * t1), amp)
            amp = np.where(rv_ok & (d_rv < 0) & (p >= p_tv), an.BLOOD, amp)
            # moderator band
            mb = (np.abs(p - 38.0 - 0.3 * (v - v_sept)) < 1.2) & (d_rv < -1) & (d_lv > 1)
            amp = np.where(mb, an.THIN_WALL, amp)
            amp = np.where((p < p_tv) & an.band(d_ra, 0.0, 2.0), an.THIN_WALL * np.exp(0.3 * t1), amp)
            amp = np.where((p < p_tv - 1.5) & (d_ra < 0), an.BLOOD, amp)
            ias = (p < -1) & (d_la > 0) & (d_ra > 0) & (d_la < 7) & (d_ra < 7)
            amp = np.where(ias, an.THIN_WALL * 0.5, amp)
        amp = np.where(at_ok & an.band(d_la, 0.0, 2.0), an.THIN_WALL * np.exp(0.3 * t1), amp)
        amp = np.where((p < -1.5) & (d_la < 0), an.BLOOD, amp)
        if view == "a2c":
            cs = an.disc_distance(p, v, -3.0, -W - 7.0, 4.5)          # coronary sinus
            amp = np.where(cs < 0, an.BLOOD, np.where(an.band(cs, 0, 1.5), an.THIN_WALL, amp))
        # LV
        amp = np.where(cav, an.BLOOD, amp)
        # endocardial trabeculae: patchy echoes in the first mm of the cavity
        d_endo = (1.0 - np.interp(th, THETA, wall.d0) - rh) * np.interp(th, THETA, wall.ns)
        trab = cav & (d_endo < 2.5) & (t1 > 0.3)
        amp = np.where(trab, 0.35 * an.MYOCARDIUM, amp)
        aniso = _anisotropy(wall, th, pts, geom)
        drop = min(1.0, 1.6 * sp.dropout) * np.where(th > 0, 1.0, 0.35)   # lateral wall drops out
        amp = np.where(myo, an.MYOCARDIUM * np.exp(0.3 * t1) * (1.0 - drop * (1.0 - aniso) ** 0.7), amp)
        # fibrous annuli
        for hp in (mv_sept, mv_lat) + ((tv_sept, tv_lat) if view in ("a4c", "sc4c") else ()):
            amp = np.where(np.hypot(*(pts - hp).T) < 2.0, an.FIBROUS, amp)
        if extra is not None:
            amp = extra(pts, amp, p, v, d_heart, t1, t2)
        # blood smoke and chest wall
        amp = np.where(amp == an.BLOOD, an.BLOOD * np.exp(0.5 * t2), amp)
        cw = r < 14.0
        amp = np.where(cw, _chest_wall(r, 14.0, t1), amp)
        return amp

    leaflets = [
        an.Leaflet(mv_sept, 0.58 * ann, math.radians(106.0), math.radians(14.0), curl_rad=-0.2),
        an.Leaflet(mv_lat, 0.45 * ann, math.radians(-106.0), math.radians(-16.0), curl_rad=0.2),
    ]
    if view in ("a4c", "sc4c"):
        leaflets += [
            an.Leaflet(tv_sept, 0.45 * ann_t, math.radians(-105.0), math.radians(-14.0), curl_rad=0.15),
            an.Leaflet(tv_lat, 0.55 * ann_t, math.radians(105.0), math.radians(16.0), curl_rad=-0.15),
        ]
    return Scene(view=view, geom=geom, frame=fr, wall=wall, state_fn=lv_state_fn(cfg, wall),
                 echogenicity=echogenicity, leaflets=leaflets, has_lv=True, lv_open=True)


def _anisotropy(wall: EllipticWall, th: np.ndarray, pts: np.ndarray, geom: SectorGeometry) -> np.ndarray:
    """|cos| of the angle between the beam and the wall normal (1 = perpendicular incidence)."""
    nu = np.cos(th) / wall.a
    nv = np.sin(th) / wall.b
    n = nu[:, None] * wall.eu + nv[:, None] * wall.ev
    n /= np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-12)
    b = pts - np.asarray(geom.apex_mm)
    b /= np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-12)
    return np.abs(np.sum(n * b, axis=1))


# ======================================================================= clip loop
def _scatterers_in_sector(rng: np.random.Generator, geom: SectorGeometry, density: float,
                          margin_mm: float = 6.0, margin_rad: float = 0.06) -> np.ndarray:
    rmax = geom.depth_mm + margin_mm
    half = geom.half_angle_rad + margin_rad
    n = int(density * 0.5 * rmax * rmax * 2 * half)
    r = rmax * np.sqrt(rng.uniform(0.0, 1.0, n))
    a = rng.uniform(-half, half, n)
    return geom.from_polar(r, a)


def _near_field_clutter(rng: np.random.Generator, geom: SectorGeometry, level_db: float,
                        depth_mm: float = 110.0):
    """Static reverberation haze: strongest at the skin, fading with depth (does not move)."""
    n = int(1.5 * 0.5 * depth_mm ** 2 * 2 * geom.half_angle_rad)
    r = depth_mm * np.sqrt(rng.uniform(0, 1, n))
    a = rng.uniform(-geom.half_angle_rad, geom.half_angle_rad, n)
    amp = 10 ** (level_db / 20.0) * (np.exp(-r / 12.0) + 0.35 * np.exp(-r / 45.0)) * \
        rng.standard_normal(n)
    return geom.from_polar(r, a), amp


def centreline_material(wall: EllipticWall, n: int = N_CENTRELINE) -> np.ndarray:
    """Material angles of the n ED midline points, equally spaced by arc length."""
    thb = wall.half_angle
    s = np.linspace(np.interp(-thb, THETA, wall.S0), np.interp(thb, THETA, wall.S0), n)
    return np.interp(s, wall.S0, THETA)


def midwall_rho(wall: EllipticWall, theta: np.ndarray, iterations: int = 12) -> np.ndarray:
    """Material rho of the mid-wall at material angles ``theta``: on the ray of each angle,
    the point whose normal distances to the endocardium (rho = 1 - d0) and to the
    epicardium (rho = 1 + d0) are equal, at end-diastole (the map is the identity there)."""
    from scipy.spatial import cKDTree

    thb = wall.half_angle
    ext = np.linspace(-thb - 0.3, thb + 0.3, 6001)
    d0e = np.interp(ext, THETA, wall.d0)
    curves = [wall.to_mm(ext, 1.0 - d0e), wall.to_mm(ext, 1.0 + d0e)]
    trees = [cKDTree(c) for c in curves]

    def dist(p, c, tree):
        # nearest vertex, then the exact distance to its two adjacent segments
        j = np.clip(tree.query(p)[1], 1, len(c) - 2)
        best = np.full(len(p), np.inf)
        for a, b in ((j - 1, j), (j, j + 1)):
            ab = c[b] - c[a]
            t = np.clip(np.sum((p - c[a]) * ab, axis=1) / np.sum(ab * ab, axis=1), 0.0, 1.0)
            best = np.minimum(best, np.hypot(*(p - c[a] - t[:, None] * ab).T))
        return best

    ns = np.interp(theta, THETA, wall.ns)
    rho = np.ones_like(theta, dtype=np.float64)
    for _ in range(iterations):
        p = wall.to_mm(theta, rho)
        rho = rho + 0.5 * (dist(p, curves[1], trees[1]) - dist(p, curves[0], trees[0])) / ns
    return rho


def midwall_layer(wall: EllipticWall, n_points: int = N_CENTRELINE, n_segments: int = 6,
                  n_dense: int = 4001):
    """The material mid-wall of an open LV wall and its ED division (module docstring).

    Returns (dense_theta, dense_rho, bound_index, cl_theta, cl_rho): a dense material
    polyline of the layer from basal septum to basal lateral that contains the
    ``n_segments + 1`` segment boundaries (equal arc at ED) at ``bound_index``, and the
    ``n_points`` centreline points equally spaced by arc at ED."""
    thb = wall.half_angle
    th = np.linspace(-thb, thb, n_dense)
    rho = midwall_rho(wall, th)
    s = _arc(wall.to_mm(th, rho))
    th_b = np.interp(np.linspace(0.0, s[-1], n_segments + 1), s, th)
    th_c = np.interp(np.linspace(0.0, s[-1], n_points), s, th)
    dense = np.union1d(th, th_b)
    bidx = np.searchsorted(dense, th_b)
    return dense, np.interp(dense, th, rho), bidx, th_c, np.interp(th_c, th, rho)


def _arc(poly: np.ndarray) -> np.ndarray:
    """Cumulative arc length along a polyline (N, 2), starting at 0."""
    return np.concatenate([[0.0], np.cumsum(np.hypot(*np.diff(poly, axis=0).T))])


def resample_equal(poly: np.ndarray, n: int) -> np.ndarray:
    seg = np.hypot(*np.diff(poly, axis=0).T)
    s = np.concatenate([[0.0], np.cumsum(seg)])
    t = np.linspace(0.0, s[-1], n)
    return np.stack([np.interp(t, s, poly[:, 0]), np.interp(t, s, poly[:, 1])], axis=1)


def _signed_px(f: np.ndarray, f_base: np.ndarray | None) -> np.ndarray:
    """Signed distance in pixels (negative inside) of the region {f <= 0 and f_base <= 0},
    to first order: level-set value over its gradient magnitude on the pixel grid."""
    def conv(v):
        gy, gx = np.gradient(v)
        return v / np.maximum(np.hypot(gx, gy), 1e-9)
    sd = conv(f)
    if f_base is not None:
        sd = np.maximum(sd, conv(f_base))
    return sd


def build_scene(cfg: EchoPhantomConfig, rng: np.random.Generator) -> Scene:
    if cfg.view in ("a4c", "a2c", "alax"):
        if cfg.view == "alax":
            from calib.views import alax_scene
            return alax_scene(cfg, rng)
        return apical_scene(cfg, rng, cfg.view)
    from calib.views import build_view_scene
    return build_view_scene(cfg, rng)


def make_echo_clip(cfg: EchoPhantomConfig | None = None, **overrides) -> EchoClip:
    """Generate one echo clip and its truth (deterministic in ``cfg`` incl. ``cfg.seed``)."""
    if cfg is None:
        cfg = EchoPhantomConfig(**overrides)
    elif overrides:
        cfg = dataclasses.replace(cfg, **overrides)
    t_start = time.perf_counter()
    ss = np.random.SeedSequence(cfg.seed)
    rng_anat, rng_scat, rng_frame, rng_valve, rng_misc = [np.random.default_rng(s) for s in ss.spawn(5)]
    scene = build_scene(cfg, rng_anat)
    geom = scene.geom
    sp = cfg.speckle
    renderer = SpeckleRenderer(geom, sp)
    gain = scene.beam_gain if scene.beam_gain is not None else _rib_shadows(
        rng_misc, renderer.beam_angles(), geom.half_angle_rad, sp.dropout)
    renderer.beam_gain = np.asarray(gain, dtype=np.float32)[None, :]
    wall = scene.wall
    cyc = cfg.cycle
    n = cfg.frames
    phases = cyc.frame_phases(extra=1)

    # scatterers: ED positions, material coordinates and amplitudes (fixed for the clip)
    p0 = _scatterers_in_sector(rng_scat, geom, sp.scatterers_per_mm2)
    echo0 = scene.echogenicity(p0)
    keep = echo0 > 1e-4
    p0, echo0 = p0[keep], echo0[keep]
    n0 = rng_scat.standard_normal(p0.shape[0])
    th0, rh0 = wall.to_local(p0)
    if scene.static_clutter is not None:
        clut_p, clut_a = scene.static_clutter
    else:
        clut_p, clut_a = _near_field_clutter(rng_scat, geom, sp.clutter_db)
    leaf = [(lf, *lf.sample(rng_valve, sp.scatterers_per_mm2 * 2.0)) for lf in scene.leaflets]
    t_setup = time.perf_counter()

    # pixel grid in the wall frame (fixed)
    pix = geom.pixel_grid_mm()
    pth, prh = wall.to_local(pix.reshape(-1, 2))
    rows, cols = cfg.rows, cfg.cols
    frames = np.empty((n, rows, cols), dtype=np.uint8)
    myo = np.zeros((n, rows, cols), dtype=np.uint8)
    cav = np.zeros((n, rows, cols), dtype=np.uint8)
    myo_s = np.zeros((n, rows, cols), dtype=np.uint8)
    cav_s = np.zeros((n, rows, cols), dtype=np.uint8)
    disp = np.empty((n, rows, cols, 2), dtype=np.float32)
    with_strain = scene.has_lv and scene.lv_open and scene.strain_truth
    cl_th = centreline_material(wall) if with_strain else None
    cl = np.full((n, N_CENTRELINE, 2), np.nan)
    cl_eq = np.full((n, N_CENTRELINE, 2), np.nan)
    dense_th = np.linspace(-wall.half_angle, wall.half_angle, 2001) if cl_th is not None else None
    mw = midwall_layer(wall) if cl_th is not None else None
    mw_cl = np.full((n, N_CENTRELINE, 2), np.nan)
    mw_len = np.full((n, 6), np.nan)
    states = [scene.state_fn(ph) for ph in phases]
    thb = wall.half_angle
    d0b = float(np.interp(thb, THETA, wall.d0))
    eps = sp.decorrelation
    t_render = t_truth = 0.0
    for t in range(n):
        st = states[t]
        ta = time.perf_counter()
        # ---- image
        pts = wall.forward_mm(th0, rh0, st)
        amp = echo0 * (math.sqrt(1.0 - eps * eps) * n0 + eps * rng_frame.standard_normal(n0.size))
        all_p = [pts, clut_p]
        all_a = [amp, clut_a]
        if leaf:
            opening_av = float(cyc.valve_opening(phases[t]))
            opening_sl = float(cyc.aortic_opening(phases[t]))
            for lf, s, off, a in leaf:
                hth, hrh = wall.to_local(lf.hinge_ed_mm[None, :])
                hinge = wall.to_mm(*wall.forward(hth, hrh, st))[0]
                op = opening_av if lf.timing == "av" else opening_sl
                all_p.append(lf.place(scene.frame, hinge, op, s, off))
                all_a.append(a)
        img = renderer.render(np.concatenate(all_p), np.concatenate(all_a), rng_frame)
        frames[t] = to_uint8(img)
        tb = time.perf_counter()
        # ---- truth
        mth, mrh = wall.inverse(pth, prh, st)
        if scene.has_lv:
            d0m = np.interp(mth, THETA, wall.d0).reshape(rows, cols)
            th_g, rh_g = mth.reshape(rows, cols), mrh.reshape(rows, cols)
            f_base = np.abs(th_g) - wall.half_angle if scene.lv_open else None
            sd_myo = _signed_px(np.abs(rh_g - 1.0) - d0m, f_base)
            sd_cav = _signed_px(rh_g - (1.0 - d0m), f_base)
            if scene.lv_open:
                ends = wall.to_mm(*wall.forward(np.array([-thb, thb, 0.0]),
                                                np.array([1 - d0b, 1 - d0b, 0.5]), st))
                a_, b_ = ends[0], ends[1]
                nrm = np.array([-(b_ - a_)[1], (b_ - a_)[0]])
                nrm /= np.hypot(*nrm)
                side = np.sign(np.dot(ends[2] - a_, nrm))
                chord = -(((pix.reshape(-1, 2) - a_) @ nrm) * side).reshape(rows, cols) / geom.spacing_mm
                sd_cav = np.maximum(sd_cav, chord)
            myo[t] = sd_myo <= 0
            cav[t] = sd_cav < 0
            myo_s[t] = np.clip((0.5 - sd_myo) * 255.0 + 0.5, 0, 255).astype(np.uint8)
            cav_s[t] = np.clip((0.5 - sd_cav) * 255.0 + 0.5, 0, 255).astype(np.uint8)
            myo_s[t][myo[t] == 0] = np.minimum(myo_s[t][myo[t] == 0], 127)
            myo_s[t][myo[t] == 1] = np.maximum(myo_s[t][myo[t] == 1], 128)
            cav_s[t][cav[t] == 0] = np.minimum(cav_s[t][cav[t] == 0], 127)
            cav_s[t][cav[t] == 1] = np.maximum(cav_s[t][cav[t] == 1], 128)
        d = (wall.forward_mm(mth, mrh, states[t + 1]) - pix.reshape(-1, 2)) / geom.spacing_mm
        disp[t, ..., 0] = d[:, 1].reshape(rows, cols)
        disp[t, ..., 1] = d[:, 0].reshape(rows, cols)
        if cl_th is not None:
            cl[t] = wall.to_mm(*wall.forward(cl_th, np.ones_like(cl_th), st))
            dense = wall.to_mm(*wall.forward(dense_th, np.ones_like(dense_th), st))
            cl_eq[t] = resample_equal(dense, N_CENTRELINE)
            mw_th, mw_rho, mw_b, mw_cth, mw_crho = mw
            mw_cl[t] = wall.to_mm(*wall.forward(mw_cth, mw_crho, st))
            mw_len[t] = np.diff(_arc(wall.to_mm(*wall.forward(mw_th, mw_rho, st)))[mw_b])
        tc = time.perf_counter()
        t_render += tb - ta
        t_truth += tc - tb

    f = cfg.segment_factors
    c_t = cyc.contraction(phases[:n])
    if with_strain:
        regional = 100.0 * (cfg.gls_pct / 100.0) * f[None, :] * c_t[:, None]
        gls = regional.mean(axis=1)
        mw_len0 = np.diff(_arc(wall.to_mm(mw[0], mw[1]))[mw[2]])    # ED = identity map
        mw_regional = 100.0 * (mw_len / mw_len0 - 1.0)
        mw_gls = 100.0 * (mw_len.sum(axis=1) / mw_len0.sum() - 1.0)
    else:
        mw_regional = np.full((n, 6), np.nan)
        mw_gls = np.full(n, np.nan)
        regional = np.full((n, 6), np.nan)
        gls = np.full(n, np.nan)
    ed, es = cyc.ed_es_frames()
    truth = EchoTruth(myocardium=myo, cavity=cav, myocardium_soft=myo_s, cavity_soft=cav_s,
                      displacement=disp, centreline_mm=cl,
                      centreline_equal_mm=cl_eq, gls_pct=gls, regional_pct=regional,
                      ed_frames=ed, es_frames=es, phase=phases[:n], view=cfg.view,
                      view_index=VIEWS.index(cfg.view),
                      segment_scores=np.array([wall_motion_class(x) for x in f]) if with_strain
                      else np.full(6, -1),
                      segment_factors=f, sector_mask=geom.sector_mask().astype(np.uint8),
                      midwall_centreline_mm=mw_cl, midwall_gls_pct=mw_gls,
                      midwall_regional_pct=mw_regional)
    t_end = time.perf_counter()
    timings = {"setup_s": t_setup - t_start, "render_s": t_render, "truth_s": t_truth,
               "total_s": t_end - t_start}
    return EchoClip(frames=frames, spacing_mm=(geom.spacing_mm, geom.spacing_mm), fps=cfg.fps,
                    truth=truth, config=cfg, timings_s=timings)
