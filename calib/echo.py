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
import math
import time
from dataclasses import dataclass, field

import numpy as np

# the configuration and the scenes live in calib.echo_scene (calib.views builds on them
# too); the names are re-exported here, where users of the phantom look for them
from calib.appearance import apply_static, dropout_fn, speckle_with
from calib.display import apply_display, display_rng
from calib.echo_scene import (
    N_CENTRELINE,
    WALL_MOTION,
    EchoPhantomConfig,
    Scene,
    apical_scene,
    lv_state_fn,
    parse_factor,
    wall_motion_class,
)
from calib.kinematics import THETA, EllipticWall
from calib.speckle import SectorGeometry, SpeckleRenderer, to_uint8
from streamer.vocab import VIEW_CLASSES

__all__ = ["N_CENTRELINE", "WALL_MOTION", "EchoClip", "EchoPhantomConfig", "EchoTruth", "Scene",
           "apical_scene", "build_scene", "centreline_material", "lv_state_fn", "make_echo_clip",
           "midwall_layer", "midwall_rho", "parse_factor", "resample_equal", "wall_motion_class"]


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
    frames: np.ndarray              # (n, rows, cols) uint8; (n, rows, cols, 3) RGB (display palette)
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


# ======================================================================= clip loop
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


def make_echo_clip(cfg: EchoPhantomConfig | None = None, *, renderer_factory=None,
                   **overrides) -> EchoClip:
    """Generate one echo clip and its truth (deterministic in ``cfg`` incl. ``cfg.seed``).

    ``renderer_factory(geom, speckle_config)``: another image model with SpeckleRenderer's
    interface (e.g. calib.physics_sim.PhysicsRenderer); the truth does not depend on it."""
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
    app = cfg.appearance
    # appearance knobs (calib.appearance): each one is skipped when neutral
    renderer = (renderer_factory or SpeckleRenderer)(geom, speckle_with(app, sp))
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
    echo0 = apply_static(app, scene, cfg, p0, th0, rh0, echo0)
    dropout = dropout_fn(app, scene)
    if scene.static_clutter is not None:
        clut_p, clut_a = scene.static_clutter
    else:
        clut_p, clut_a = _near_field_clutter(rng_scat, geom, sp.clutter_db)
    if app.clutter_gain_db != 0.0:
        clut_a = clut_a * 10.0 ** (app.clutter_gain_db / 20.0)
    leaf = [(lf, *lf.sample(rng_valve, sp.scatterers_per_mm2 * 2.0)) for lf in scene.leaflets]
    if app.leaflet_gain != 1.0:
        leaf = [(lf, s, off, a * app.leaflet_gain) for lf, s, off, a in leaf]
    shown = None    # the displayed frame of the last step (persistence)
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
        if dropout is not None:
            amp = amp * dropout(pts)
        all_p = [pts, clut_p]
        all_a = [amp, clut_a]
        if leaf:
            opening_av = float(cyc.valve_opening(phases[t]))
            opening_sl = float(cyc.aortic_opening(phases[t]))
            for lf, s, off, a in leaf:
                hth, hrh = wall.to_local(lf.hinge_ed_mm[None, :])
                hinge = wall.to_mm(*wall.forward(hth, hrh, st))[0]
                op = opening_av if lf.timing == "av" else opening_sl
                lp = lf.place(scene.frame, hinge, op, s, off)
                all_p.append(lp)
                all_a.append(a if dropout is None else a * dropout(lp))
        img = renderer.render(np.concatenate(all_p), np.concatenate(all_a), rng_frame)
        if app.persistence > 0.0:
            # the scanner's frame averaging: a recursive filter over the displayed frames
            shown = img if shown is None else (1.0 - app.persistence) * img + app.persistence * shown
            img = shown
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
                      view_index=VIEW_CLASSES.index(cfg.view),
                      segment_scores=np.array([wall_motion_class(x) for x in f]) if with_strain
                      else np.full(6, -1),
                      segment_factors=f, sector_mask=geom.sector_mask().astype(np.uint8),
                      midwall_centreline_mm=mw_cl, midwall_gls_pct=mw_gls,
                      midwall_regional_pct=mw_regional)
    spacing = geom.spacing_mm
    if not cfg.display.is_neutral:
        # scanner display (calib.display): canvas, overlays, palette, JPEG; truth mapped along
        frames, truth, spacing = apply_display(cfg.display, frames, truth, geom, cfg.fps,
                                               display_rng(cfg.seed), cfg.heart_rate_bpm)
    t_end = time.perf_counter()
    timings = {"setup_s": t_setup - t_start, "render_s": t_render, "truth_s": t_truth,
               "total_s": t_end - t_start}
    return EchoClip(frames=frames, spacing_mm=(spacing, spacing), fps=cfg.fps,
                    truth=truth, config=cfg, timings_s=timings)
