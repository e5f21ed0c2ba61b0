"""Echo views other than the apical 4-chamber, for the view classifier.

All views share the sector geometry, the speckle model and the motion machinery of
:mod:`calib.echo_scene` (rendered by :mod:`calib.echo`), and differ in anatomy only, so a
classifier has to learn the view:

* ``a2c``  apical 2-chamber: LV + LA, no right heart, coronary sinus (in ``calib.echo_scene``);
* ``alax`` apical long axis (3-chamber): LV + LA + aortic root / LVOT on the right;
* ``plax`` parasternal long axis: RV(OT) band on top, septum and posterior wall horizontal,
  apex to the left (often out of the sector), aortic root and LA on the right;
* ``psax`` parasternal short axis (papillary level): LV ring, RV crescent anterior-left;
* ``sc4c`` subcostal 4-chamber: the four chambers seen through the liver, apex to the right;
* ``ivc``  subcostal inferior vena cava: liver, IVC tube entering the RA, hepatic vein;
* ``unknown``: lung (pleural line + A-lines), probe in air (reverberations), or random
  tissue blobs -- no cardiac anatomy.

Truth masks exist where the LV is in the plane (a2c, alax, plax, psax, sc4c); strain truth
(centreline, GLS, regional) for the apical views (a4c, a2c, alax) only.
"""

from __future__ import annotations

import math

import numpy as np

from calib import anatomy as an
from calib.echo_scene import (
    EchoPhantomConfig,
    Scene,
    _anisotropy,
    _chest_wall,
    _lv_wall,
    apical_scene,
    lv_state_fn,
)
from calib.kinematics import THETA, EllipticWall
from calib.speckle import SectorGeometry


def _textures(cfg: EchoPhantomConfig, geom: SectorGeometry, rng: np.random.Generator):
    hi = np.array([cfg.rows, cfg.cols]) * geom.spacing_mm
    return an.SmoothField(rng, [0.0, 0.0], hi, 4.0), an.SmoothField(rng, [0.0, 0.0], hi, 9.0)


def _specular(grad_fn, pts, geom, d0, h=0.5):
    """|cos| between a distance function's normal and the beam at pts."""
    g0 = (grad_fn(pts + np.array([h, 0.0])) - d0) / h
    g1 = (grad_fn(pts + np.array([0.0, h])) - d0) / h
    n = np.stack([g0, g1], 1)
    n /= np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-9)
    b = pts - np.asarray(geom.apex_mm)
    b /= np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-9)
    return np.abs(np.sum(n * b, axis=1))


def _ring_state_fn(cfg: EchoPhantomConfig, wall: EllipticWall, circ_peak: float,
                   radial_peak: float, twist_deg: float = 0.0):
    cyc = cfg.cycle
    bounds = np.linspace(-np.pi, np.pi, 7)
    cache: dict = {}

    def state(phase):
        c = round(float(cyc.contraction(phase)), 12)
        if c not in cache:
            cache[c] = wall.ring_state(bounds, np.full(6, circ_peak * c), np.full(6, radial_peak * c),
                                       twist_rad=math.radians(twist_deg) * c)
        return cache[c]

    return state


# ============================================================================ ALAX
def alax_scene(cfg: EchoPhantomConfig, rng: np.random.Generator) -> Scene:
    holder = {}

    def extra(pts, amp, p, v, d_heart, t1, t2):
        W = holder["W"]
        # aortic root: tube from the right end of the base, running down and to the right
        o = np.array([2.0, 0.55 * W])
        d = np.array([-0.8, 0.6])
        rel = np.stack([p - o[0], v - o[1]], -1)
        along = rel @ d
        across = rel @ np.array([-d[1], d[0]])
        inside = (along > -2) & (along < 70)
        r = np.abs(across)
        amp = np.where(inside & (r < 13.0), an.BLOOD, amp)
        amp = np.where(inside & (r >= 13.0) & (r < 15.5), an.VESSEL_WALL * np.exp(0.3 * t1), amp)
        return amp

    cfg2 = cfg
    sc = apical_scene(cfg2, rng, "alax", extra=extra)
    holder["fr"] = sc.frame
    holder["W"] = sc.wall.b * math.sin(sc.wall.half_angle)
    # aortic valve cusps: hinged on the root walls, open in ejection
    W = holder["W"]
    o = np.array([2.0, 0.55 * W])
    d = np.array([-0.8, 0.6])
    nrm = np.array([-d[1], d[0]])
    ang_d = math.atan2(d[1], d[0])
    for sgn in (1, -1):
        hinge = sc.frame.world(*(o + 3.0 * d + sgn * 13.0 * nrm))
        closed = math.atan2(-sgn * nrm[1], -sgn * nrm[0])
        sc.leaflets.append(an.Leaflet(hinge, 12.0, closed, ang_d + sgn * 0.15, curl_rad=0.0,
                                      timing="sl", thickness_mm=1.0))
    return sc


# ============================================================================ PLAX
def plax_scene(cfg: EchoPhantomConfig, rng: np.random.Generator) -> Scene:
    geom = SectorGeometry.fit(cfg.rows, cfg.cols, cfg.depth_mm, cfg.sector_angle_deg)
    ax, ac = geom.apex_mm
    # LV long axis nearly horizontal, apex to the left and slightly deeper
    eu = np.array([0.22, -1.0])
    eu /= np.hypot(*eu)
    base_c = np.array([ax + 0.52 * cfg.depth_mm, ac + 0.12 * cfg.depth_mm])
    wall0, u_m = _lv_wall(cfg, np.zeros(2), eu)
    apex = base_c + (wall0.a - u_m) * eu
    wall, u_m = _lv_wall(cfg, apex, eu)
    fr = an.Frame2D.from_axis(wall.origin + u_m * wall.eu, wall.eu)   # v > 0: anterior (up)
    W = wall.b * math.sin(wall.half_angle)
    wb = cfg.wall_base_mm
    tex, tex2 = _textures(cfg, geom, rng)
    ao_c = (-22.0, W + 4.0)           # aortic root centre line start (p, v)
    ao_dir = np.array([-1.0, 0.12])
    ao_dir /= np.hypot(*ao_dir)
    rv = (30.0, W + wb / 2 + 13.0, 75.0, 12.0 + rng.normal(0, 1.5))
    la = (-40.0, -2.0, 21.0, 20.0)
    dao = (-20.0, -W - 24.0, 10.0)
    thb = wall.half_angle
    d0b = float(np.interp(thb, THETA, wall.d0))
    mv_post = wall.to_mm(np.array(-thb), np.array(1 - d0b))
    mv_ant = wall.to_mm(np.array(thb), np.array(1 - d0b))
    ann = float(np.hypot(*(mv_ant - mv_post)))

    def aorta(p, v):
        rel = np.stack([p - ao_c[0], v - ao_c[1]], -1)
        along = rel @ ao_dir
        across = rel @ np.array([-ao_dir[1], ao_dir[0]])
        return along, across

    def heart_d(q):
        pp, vv = fr.local(q)
        th, rh = wall.to_local(q)
        dlv = np.where(pp > -3, wall.outside_distance_mm(th, rh), 1e3)
        along, across = aorta(pp, vv)
        dao_ = np.where((along > -3) & (along < 80), np.abs(across) - 15.0, 1e3)
        return an.soft_min([dlv, an.ellipse_distance(pp, vv, *la) - 2.0, dao_], 5.0)

    def echogenicity(pts):
        th, rh = wall.to_local(pts)
        p, v = fr.local(pts)
        r, _ = geom.polar(pts)
        t1, t2 = tex(pts), tex2(pts)
        amp = an.surround(t2, cfg.appearance.surround_gain)
        d_heart = heart_d(pts)
        spec = _specular(heart_d, pts, geom, d_heart)
        amp = np.where(an.band(d_heart, 0, 1.5), an.FAT * np.exp(0.3 * t1), amp)
        amp = np.where(an.band(d_heart, 1.5, 5.0) & (v < 0), an.PERICARDIUM * (0.1 + 0.9 * spec ** 3)
                       * np.exp(0.35 * t1), amp)
        # RV outflow band on top of the septum
        d_rv = an.ellipse_distance(p, v, *rv)
        d_lv = wall.outside_distance_mm(th, rh)
        amp = np.where((d_rv < 0) & (d_lv > 0), an.BLOOD, amp)
        amp = np.where(an.band(d_rv, 0, 4) & (d_lv > 0) & (v > W), an.MYOCARDIUM * 0.9 * np.exp(0.3 * t1), amp)
        # aortic root and LA
        along, across = aorta(p, v)
        inside = (along > -3) & (along < 80)
        amp = np.where(inside & (np.abs(across) < 12.5), an.BLOOD, amp)
        amp = np.where(inside & an.band(np.abs(across), 12.5, 15.0), an.VESSEL_WALL * np.exp(0.3 * t1), amp)
        d_la = an.ellipse_distance(p, v, *la)
        amp = np.where((d_la < 0) & ~(inside & (np.abs(across) < 15)), an.BLOOD, amp)
        amp = np.where(an.band(d_la, 0, 2) & ~inside, an.THIN_WALL, amp)
        dd = an.disc_distance(p, v, *dao)
        amp = np.where(dd < 0, an.BLOOD, np.where(an.band(dd, 0, 2.5), an.VESSEL_WALL, amp))
        # LV
        cav = wall.in_cavity(th, rh) & (p > 0)
        amp = np.where(cav, an.BLOOD, amp)
        aniso = _anisotropy(wall, th, pts, geom)
        amp = np.where(wall.in_wall(th, rh), an.MYOCARDIUM * np.exp(0.3 * t1) * (0.35 + 0.65 * aniso), amp)
        amp = an.blood_smoke(amp, t2, cfg.appearance.blood_gain)
        amp = np.where(r < 14.0, _chest_wall(r, 14.0, t1), amp)
        return amp

    leaflets = [
        an.Leaflet(mv_ant, 0.6 * ann, math.radians(-100.0), math.radians(-10.0), curl_rad=0.2),
        an.Leaflet(mv_post, 0.4 * ann, math.radians(100.0), math.radians(20.0), curl_rad=-0.2),
    ]
    for sgn in (1, -1):
        o = np.array(ao_c) + 4.0 * ao_dir + sgn * 12.5 * np.array([-ao_dir[1], ao_dir[0]])
        nrm = np.array([-ao_dir[1], ao_dir[0]])
        closed = math.atan2(-sgn * nrm[1], -sgn * nrm[0])
        leaflets.append(an.Leaflet(fr.world(*o), 11.0, closed, math.atan2(ao_dir[1], ao_dir[0]),
                                   curl_rad=0.0, timing="sl", thickness_mm=1.0))
    return Scene(view="plax", geom=geom, frame=fr, wall=wall, state_fn=lv_state_fn(cfg, wall),
                 echogenicity=echogenicity, leaflets=leaflets, has_lv=True, lv_open=True,
                 strain_truth=False)


# ============================================================================ PSAX
def psax_scene(cfg: EchoPhantomConfig, rng: np.random.Generator) -> Scene:
    geom = SectorGeometry.fit(cfg.rows, cfg.cols, cfg.depth_mm, cfg.sector_angle_deg)
    r_endo = cfg.lv_width_mm / 2.0 + rng.normal(0, 1.5)
    wall_mm = cfg.wall_base_mm
    r_mid = r_endo + wall_mm / 2
    centre = geom.from_polar(np.array(0.45 * cfg.depth_mm + 8), np.array(math.radians(rng.normal(4, 3))))
    wall = EllipticWall(centre, (-1.0, 0.0), r_mid * (1 + rng.normal(0, 0.03)), r_mid, math.pi,
                        wall_mm, fade_mm=10.0)
    fr = an.Frame2D.from_axis(centre, (-1.0, 0.0))
    tex, tex2 = _textures(cfg, geom, rng)
    r_epi = r_endo + wall_mm
    rv = (-0.55 * r_epi, -0.55 * r_epi, r_epi + 6.0, r_epi + 14.0)     # (u up, v right) crescent
    paps = [(np.deg2rad(rng.normal(125, 8)), 4.5), (np.deg2rad(rng.normal(235, 8)), 4.0)]

    def heart_d(q):
        u, v = fr.local(q)
        th, rh = wall.to_local(q)
        return an.soft_min([wall.outside_distance_mm(th, rh), an.ellipse_distance(u, v, *rv) - 3.0], 5.0)

    def echogenicity(pts):
        th, rh = wall.to_local(pts)
        u, v = fr.local(pts)
        r, _ = geom.polar(pts)
        t1, t2 = tex(pts), tex2(pts)
        amp = an.surround(t2, cfg.appearance.surround_gain)
        d_heart = heart_d(pts)
        spec = _specular(heart_d, pts, geom, d_heart)
        amp = np.where(an.band(d_heart, 0, 1.5), an.FAT * np.exp(0.3 * t1), amp)
        amp = np.where(an.band(d_heart, 1.5, 5.0), an.PERICARDIUM * (0.08 + 0.92 * spec ** 3) * np.exp(0.35 * t1), amp)
        d_lv = wall.outside_distance_mm(th, rh)
        d_rv = an.ellipse_distance(u, v, *rv)
        amp = np.where((d_rv < 0) & (d_lv > 0), an.BLOOD, amp)
        amp = np.where(an.band(d_rv, 0, 3.5) & (d_lv > 0), an.MYOCARDIUM * 0.9 * np.exp(0.3 * t1), amp)
        cav = wall.in_cavity(th, rh)
        amp = np.where(cav, an.BLOOD, amp)
        for ang, rp in paps:               # papillary muscles just inside the endocardium
            pc = centre + (r_endo - rp) * np.array([-math.cos(ang), math.sin(ang)])
            amp = np.where(cav & (np.hypot(*(pts - pc).T) < rp), an.MYOCARDIUM * 0.9 * np.exp(0.3 * t1), amp)
        aniso = _anisotropy(wall, th, pts, geom)
        amp = np.where(wall.in_wall(th, rh), an.MYOCARDIUM * np.exp(0.3 * t1) * (0.3 + 0.7 * aniso), amp)
        amp = an.blood_smoke(amp, t2, cfg.appearance.blood_gain)
        amp = np.where(r < 14.0, _chest_wall(r, 14.0, t1), amp)
        return amp

    return Scene(view="psax", geom=geom, frame=fr, wall=wall,
                 state_fn=_ring_state_fn(cfg, wall, 0.9 * cfg.gls_pct / 100.0,
                                         -2.0 * cfg.gls_pct / 100.0, twist_deg=3.0),
                 echogenicity=echogenicity, has_lv=True, lv_open=False)


# ============================================================================ SC4C
def sc4c_scene(cfg: EchoPhantomConfig, rng: np.random.Generator) -> Scene:
    geom = SectorGeometry.fit(cfg.rows, cfg.cols, cfg.depth_mm, cfg.sector_angle_deg)
    eu = np.array([-0.32, 1.0]) + rng.normal(0, 0.05, 2)    # apex to the right, slightly up
    eu /= np.hypot(*eu)
    apex = geom.from_polar(np.array(0.58 * cfg.depth_mm), np.array(math.radians(24.0 + rng.normal(0, 3))))
    liver_depth = 0.33 * cfg.depth_mm + rng.normal(0, 4)
    liver_fields = {}

    def extra(pts, amp, p, v, d_heart, t1, t2):
        r, a = geom.polar(pts)
        edge = liver_depth + 10.0 * np.sin(3.0 * a + 1.0)
        liver = (r < edge) & (d_heart > 6.0)
        lv_amp = an.LIVER * np.exp(0.25 * t1 + 0.15 * t2)
        amp = np.where(liver, lv_amp, amp)
        # hepatic vessels: a few dark discs in the liver
        for (vr, va, vrad) in liver_fields.setdefault("vessels", [
                (rng.uniform(0.3, 0.9) * liver_depth, rng.uniform(-0.6, 0.6), rng.uniform(3, 6)) for _ in range(4)]):
            c = geom.from_polar(np.array(vr), np.array(va))
            dd = np.hypot(*(pts - c).T) - vrad
            amp = np.where(liver & (dd < 0), an.BLOOD, np.where(liver & an.band(dd, 0, 1.2), an.VESSEL_WALL, amp))
        # diaphragm: bright band at the liver edge
        amp = np.where(np.abs(r - edge) < 1.8, an.PERICARDIUM * 0.7, amp)
        return amp

    sc = apical_scene(cfg, rng, "sc4c", apex_mm=apex, apex_dir=eu, extra=extra)
    sc.view = "sc4c"
    return sc


# ============================================================================= IVC
def ivc_scene(cfg: EchoPhantomConfig, rng: np.random.Generator) -> Scene:
    geom = SectorGeometry.fit(cfg.rows, cfg.cols, cfg.depth_mm, cfg.sector_angle_deg)
    tex, tex2 = _textures(cfg, geom, rng)
    ivc_r = 9.0 + rng.normal(0, 1.5)
    centre = geom.from_polar(np.array(0.55 * cfg.depth_mm), np.array(math.radians(rng.normal(-5, 4))))
    axis = np.array([rng.normal(0.12, 0.08), 1.0])
    axis /= np.hypot(*axis)
    tube = EllipticWall(centre, axis, 75.0, ivc_r + 1.0, math.pi, 2.0, fade_mm=8.0)
    fr = an.Frame2D.from_axis(centre, axis)
    ra_c = fr.world(-70.0, -8.0)
    hv = (rng.uniform(-30, 10), rng.uniform(0.5, 1.1))       # hepatic vein: position along, angle
    diaph_depth = 0.55 * cfg.depth_mm + 28.0 + rng.normal(0, 4)

    def echogenicity(pts):
        th, rh = tube.to_local(pts)
        u, v = fr.local(pts)
        r, a = geom.polar(pts)
        t1, t2 = tex(pts), tex2(pts)
        amp = an.LIVER * np.exp(0.25 * t1 + 0.15 * t2)
        # diaphragm and what lies beyond it
        dcurve = diaph_depth + 12.0 * np.cos(1.5 * a)
        amp = np.where(np.abs(r - dcurve) < 2.0, an.PERICARDIUM * 0.8, amp)
        amp = np.where(r > dcurve + 2.0, an.LUNG * np.exp(0.6 * t2), amp)
        # hepatic vein joining the IVC from above
        rel_u = u - hv[0]
        along = rel_u * math.cos(hv[1]) - v * math.sin(hv[1])
        across = rel_u * math.sin(hv[1]) + v * math.cos(hv[1])
        hvm = (np.abs(across) < 4.0) & (along < 0) & (along > -45) & (v < 0)
        amp = np.where(hvm, an.BLOOD, amp)
        # IVC lumen and wall, RA at the cranial end
        in_tube = rh < 1.0 - np.interp(th, THETA, tube.d0)
        wall_t = tube.in_wall(th, rh)
        amp = np.where(wall_t, an.VESSEL_WALL * np.exp(0.3 * t1), amp)
        amp = np.where(in_tube, an.BLOOD, amp)
        dra = np.hypot(*(pts - ra_c).T) - 24.0
        amp = np.where(dra < 0, an.BLOOD, np.where(an.band(dra, 0, 2.5), an.THIN_WALL, amp))
        amp = an.blood_smoke(amp, t2, cfg.appearance.blood_gain)
        amp = np.where(r < 14.0, _chest_wall(r, 14.0, t1), amp)
        return amp

    return Scene(view="ivc", geom=geom, frame=fr, wall=tube,
                 state_fn=_ring_state_fn(cfg, tube, -0.12, 0.2), echogenicity=echogenicity,
                 has_lv=False, lv_open=False)


# ========================================================================= UNKNOWN
def unknown_scene(cfg: EchoPhantomConfig, rng: np.random.Generator) -> Scene:
    geom = SectorGeometry.fit(cfg.rows, cfg.cols, cfg.depth_mm, cfg.sector_angle_deg)
    tex, tex2 = _textures(cfg, geom, rng)
    kind = rng.choice(["lung", "air", "blobs"], p=[0.35, 0.2, 0.45])
    centre = geom.from_polar(np.array(rng.uniform(0.3, 0.7) * cfg.depth_mm), np.array(rng.uniform(-0.4, 0.4)))
    size = rng.uniform(15, 40)
    pulse = EllipticWall(centre, (-1.0, rng.uniform(-1, 1)), size * rng.uniform(0.7, 1.4), size,
                         math.pi, rng.uniform(3, 10), fade_mm=15.0)
    fr = an.Frame2D.from_axis(centre, (-1.0, 0.0))
    pleura = rng.uniform(15, 35)
    blobs = [(geom.from_polar(np.array(rng.uniform(10, cfg.depth_mm)), np.array(rng.uniform(-0.7, 0.7))),
              rng.uniform(5, 35), rng.uniform(5, 35), rng.uniform(0, np.pi),
              float(np.exp(rng.normal(-1.0, 1.2)))) for _ in range(rng.integers(3, 10))]

    def echogenicity(pts):
        r, a = geom.polar(pts)
        t1, t2 = tex(pts), tex2(pts)
        if kind == "lung":
            amp = an.LUNG * np.exp(0.8 * t2)
            pl = pleura + 3.0 * np.cos(2 * a)
            amp = np.where(r < pl - 2, 0.5 * np.exp(0.3 * t1), amp)
            for k, lvl in enumerate((an.PERICARDIUM, 1.5, 0.7, 0.35)):
                amp = np.where(np.abs(r - (k + 1) * pl) < 1.8, lvl * np.exp(0.2 * t1), amp)
        elif kind == "air":
            amp = 0.02 * np.exp(0.5 * t2)
            for k in range(1, 6):
                amp = np.where(np.abs(r - k * 9.0) < 1.5, 2.0 / k * np.exp(0.2 * t1), amp)
        else:
            amp = rng_bg * np.exp(0.7 * t2)
            for c, ra, rb, rot, lvl in blobs:
                d = pts - c
                x = d[:, 0] * math.cos(rot) + d[:, 1] * math.sin(rot)
                y = -d[:, 0] * math.sin(rot) + d[:, 1] * math.cos(rot)
                amp = np.where((x / ra) ** 2 + (y / rb) ** 2 < 1, lvl * np.exp(0.3 * t1), amp)
        amp = np.where(r < 12.0, _chest_wall(r, 12.0, t1), amp)
        return amp

    rng_bg = float(np.exp(rng.normal(-1.5, 0.8)))
    return Scene(view="unknown", geom=geom, frame=fr, wall=pulse,
                 state_fn=_ring_state_fn(cfg, pulse, rng.uniform(-0.1, 0.05), rng.uniform(0, 0.3)),
                 echogenicity=echogenicity, has_lv=False, lv_open=False)


_BUILDERS = {"alax": alax_scene, "plax": plax_scene, "psax": psax_scene, "sc4c": sc4c_scene,
             "ivc": ivc_scene, "unknown": unknown_scene}


def build_view_scene(cfg: EchoPhantomConfig, rng: np.random.Generator) -> Scene:
    return _BUILDERS[cfg.view](cfg, rng)
