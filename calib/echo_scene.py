"""The echo phantom's configuration and scenes: what the sector shows and how it moves.

:class:`EchoPhantomConfig` (one clip's parameters), the wall-motion classes as contraction
factors, and the :class:`Scene` of the apical views (:func:`apical_scene`: A4C, A2C, and
the base of ALAX and SC4C) with the LV wall and its motion.  :mod:`calib.views` builds the
other views on these parts; :mod:`calib.echo` renders a scene into a clip with its truth
(``make_echo_clip``), which is where the conventions are described.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field

import numpy as np

from calib import anatomy as an
from calib.appearance import EchoAppearance
from calib.cycle import CardiacCycleConfig
from calib.display import ScannerDisplay
from calib.errors import PhantomParameterError, require_choice, require_int_range, require_range
from calib.kinematics import THETA, EllipticWall, WallState, circular_smooth
from calib.speckle import SectorGeometry, SpeckleConfig
from streamer.vocab import A4C_SEGMENTS, VIEW_CLASSES, WALL_MOTION_CLASSES

#: contraction factor of each wall-motion class (the classes and their order: streamer.vocab)
WALL_MOTION = dict(zip(WALL_MOTION_CLASSES, (1.0, 0.5, 0.0, -0.3)))
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
    # appearance knobs (calib.appearance); the default is neutral: today's frames exactly
    appearance: EchoAppearance = field(default_factory=EchoAppearance)
    # scanner-display knobs (calib.display: canvas, overlays, palette, JPEG); neutral default
    display: ScannerDisplay = field(default_factory=ScannerDisplay)

    def __post_init__(self) -> None:
        if isinstance(self.speckle, dict):
            self.speckle = SpeckleConfig(**self.speckle)
        self.appearance = EchoAppearance.coerce(self.appearance)
        self.display = ScannerDisplay.coerce(self.display)
        require_choice("view", self.view, VIEW_CLASSES)
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
            require_choice("dysfunction segment", k, A4C_SEGMENTS)
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
        return np.array([self.dysfunction.get(s, 1.0) for s in A4C_SEGMENTS])

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps({"kind": "echo", "params": self.to_dict()}, sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict) -> EchoPhantomConfig:
        d = dict(d)
        if "speckle" in d and isinstance(d["speckle"], dict):
            d["speckle"] = SpeckleConfig(**d["speckle"])
        if "appearance" in d:
            d["appearance"] = EchoAppearance.coerce(d["appearance"])
        if "display" in d:
            d["display"] = ScannerDisplay.coerce(d["display"])
        return cls(**d)


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
    k_rv = cfg.appearance.rv_scale
    if k_rv != 1.0:   # the RV grows about the septum (its septal side stays put)
        p_c, v_c, a_rv, b_rv = ds["rv"]
        ds["rv"] = (p_c, v_sept - (v_sept - v_c) * k_rv, a_rv * k_rv, b_rv * k_rv)
    rv_gain = cfg.appearance.rv_wall_gain
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
        amp = an.surround(t2, cfg.appearance.surround_gain) * (0.6 + 0.4 * np.clip(r / 60.0, 0, 1))
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
            amp = np.where(rv_ok & an.band(d_rv, 0.0, 4.0), an.MYOCARDIUM * 0.9 * rv_gain * np.exp(0.3 * t1), amp)
            amp = np.where(rv_ok & (d_rv < 0) & (p >= p_tv), an.BLOOD, amp)
            # moderator band
            mb = (np.abs(p - 38.0 - 0.3 * (v - v_sept)) < 1.2) & (d_rv < -1) & (d_lv > 1)
            amp = np.where(mb, an.THIN_WALL, amp)
            amp = np.where((p < p_tv) & an.band(d_ra, 0.0, 2.0), an.THIN_WALL * rv_gain * np.exp(0.3 * t1), amp)
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
        amp = an.blood_smoke(amp, t2, cfg.appearance.blood_gain)
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


