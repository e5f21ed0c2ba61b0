"""Appearance knobs of the echo phantom: how the scene looks, never where anything is.

:class:`EchoAppearance` (held by ``EchoPhantomConfig.appearance``) describes what real
scanners show and the default phantom does not: a myocardium whose echo strength varies
along the wall, a dim lateral wall, drop-out of a sector, bright specular annuli and
pericardium, speckle as fine as a real scanner's, a darker (or hazier) blood pool, brighter
or fainter valve leaflets, tissue around the heart as bright as the wall, and the display's
frame averaging (persistence).  Every knob's default is neutral and a neutral knob is not
applied at all, so a config with the default appearance renders the same frames, bit for
bit, as before the knobs existed.

The knobs change scatterer amplitudes (and, for ``axial_resolution_mm``, the point-spread
function and display blur; for ``persistence``, the displayed frame; for ``clutter_gain_db``,
the static near-field haze) only: scatterer positions, motion and every truth array are
untouched.  Random parts (the shape of the wall profile) come from their own stream,
derived from the clip's seed, so the clip is remade exactly from its config.

Wall knobs (``wall_echo_variation``, ``lateral_wall_gain``, ``septum_gain``,
``pericardium_gain``) act on
the views with an open LV wall (A4C, A2C, ALAX, PLAX, SC4C): material angle theta runs from
the basal septum (-half angle; the image-left wall in A4C) over the apex (0) to the basal
lateral wall (+half angle).  Other views (PSAX, IVC, unknown) get the sector knobs only.
The right-heart knobs (``rv_wall_gain``, ``rv_scale``) act on the apical four-chamber
scenes (A4C, SC4C); ``rv_scale`` moves no LV tissue, so the LV truth stays the same.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np

from calib.errors import require_choice, require_range

DROPOUT_REGIONS = ("lateral", "apical")
#: stream key of the appearance's own random numbers (with the clip seed)
_APPEARANCE_STREAM = 0xA99E


@dataclass(frozen=True)
class EchoAppearance:
    """Appearance knobs (units in the names); the defaults are neutral (not applied)."""

    wall_echo_variation: float = 0.0     # 0..0.8: amplitude of a smooth random myocardial
    #                                      echo profile along the wall (multiplicative)
    lateral_wall_gain: float = 1.0       # 0.2..1: echo of the lateral wall (mid-basal) vs septum
    dropout_gain: float = 1.0            # 0..1: echo left in the drop-out sector (1 = none)
    dropout_region: str = "lateral"      # "lateral" wall sector or "apical" near field
    dropout_width_deg: float = 20.0      # angular width (FWHM) of the drop-out sector
    bright_annulus_gain: float = 0.0     # 0..5: extra echo at the valve annuli (0 = none)
    pericardium_gain: float = 0.0        # 0..5: extra echo just outside the epicardium (0 = none)
    axial_resolution_mm: float | None = None  # pulse FWHM replacing the speckle config's
    #                                      pulse and display blur (None = keep them)
    blood_echo_db: float = 0.0           # -30..+6: change of the blood pool's echo (chambers,
    #                                      vessels); real scanners show it 10-25 dB darker than
    #                                      the default's (-20 dB below myocardium), or hazy
    leaflet_gain: float = 1.0            # 0.2..4: echo of the valve leaflets
    persistence: float = 0.0             # 0..0.8: frame averaging of the display (the weight
    #                                      of the previous displayed frame; 0 = none)
    septum_gain: float = 1.0             # 0.5..3: echo of the (mid-basal) septum vs the rest
    #                                      of the wall: often the brightest structure in A4C
    rv_wall_gain: float = 1.0            # 0.1..1.5: echo of the RV free wall and the RA wall
    #                                      (A4C, SC4C); real ones are often faint
    rv_scale: float = 1.0                # 0.6..1.5: RV size (length and width) about the septum
    clutter_gain_db: float = 0.0         # 0..+15: near-field reverberation haze over the speckle
    #                                      config's level (real apices often sit in it)
    surround_echo_db: float = 0.0        # 0..+26: echo of the tissue around the heart over the
    #                                      lung-dark default (+26 dB = the wall's own level):
    #                                      chest wall, fat and lung artefact often fill a real
    #                                      sector, so the cavities, not a bright ring, show the heart

    def __post_init__(self) -> None:
        require_range("wall_echo_variation", self.wall_echo_variation, 0.0, 0.95)
        require_range("lateral_wall_gain", self.lateral_wall_gain, 0.0, 2.0)
        require_range("dropout_gain", self.dropout_gain, 0.0, 1.0)
        require_choice("dropout_region", self.dropout_region, DROPOUT_REGIONS)
        require_range("dropout_width_deg", self.dropout_width_deg, 2.0, 90.0, "degrees")
        require_range("bright_annulus_gain", self.bright_annulus_gain, 0.0, 10.0)
        require_range("pericardium_gain", self.pericardium_gain, 0.0, 10.0)
        if self.axial_resolution_mm is not None:
            require_range("axial_resolution_mm", self.axial_resolution_mm, 0.1, 10.0, "mm")
        require_range("blood_echo_db", self.blood_echo_db, -40.0, 12.0, "dB")
        require_range("leaflet_gain", self.leaflet_gain, 0.0, 10.0)
        require_range("persistence", self.persistence, 0.0, 0.9)
        require_range("septum_gain", self.septum_gain, 0.0, 5.0)
        require_range("rv_wall_gain", self.rv_wall_gain, 0.0, 3.0)
        require_range("rv_scale", self.rv_scale, 0.4, 2.0)
        require_range("clutter_gain_db", self.clutter_gain_db, -20.0, 30.0, "dB")
        require_range("surround_echo_db", self.surround_echo_db, -20.0, 30.0, "dB")

    @property
    def is_neutral(self) -> bool:
        return (self.wall_echo_variation == 0.0 and self.lateral_wall_gain == 1.0
                and self.dropout_gain == 1.0 and self.bright_annulus_gain == 0.0
                and self.pericardium_gain == 0.0 and self.axial_resolution_mm is None
                and self.blood_echo_db == 0.0 and self.leaflet_gain == 1.0
                and self.persistence == 0.0 and self.septum_gain == 1.0
                and self.rv_wall_gain == 1.0 and self.rv_scale == 1.0
                and self.clutter_gain_db == 0.0 and self.surround_echo_db == 0.0)

    @property
    def blood_gain(self) -> float:
        """Amplitude factor of the blood echo (exactly 1.0 when neutral)."""
        return 1.0 if self.blood_echo_db == 0.0 else 10.0 ** (self.blood_echo_db / 20.0)

    @property
    def surround_gain(self) -> float:
        """Amplitude factor of the tissue around the heart (exactly 1.0 when neutral)."""
        return 1.0 if self.surround_echo_db == 0.0 else 10.0 ** (self.surround_echo_db / 20.0)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def coerce(cls, value) -> EchoAppearance:
        if value is None:
            return cls()
        if isinstance(value, cls):
            return value
        return cls(**dict(value))


# ============================================================================ helpers
def _smoothstep(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3.0 - 2.0 * x)


def appearance_rng(seed: int) -> np.random.Generator:
    """The appearance's own random stream of a clip (does not touch the clip's streams)."""
    return np.random.default_rng([int(seed), _APPEARANCE_STREAM])


def wall_profile(app: EchoAppearance, s: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Multiplicative myocardial echo gain at normalised wall positions ``s`` = theta / half
    angle (-1 basal septum .. 0 apex .. 1 basal lateral)."""
    s = np.asarray(s, dtype=np.float64)
    g = np.ones_like(s)
    if app.wall_echo_variation > 0.0:
        # a few smooth random harmonics over the wall, scaled to a peak of 1
        k = np.arange(1, 5)
        amp = rng.normal(0.0, 1.0, k.size) / k
        ph = rng.uniform(0.0, 2.0 * math.pi, k.size)
        grid = np.linspace(-1.0, 1.0, 401)

        def prof(x):
            return np.sum(amp[:, None] * np.cos(0.5 * math.pi * k[:, None] * (x[None, :] + 1.0)
                                                + ph[:, None]), axis=0)
        peak = max(float(np.max(np.abs(prof(grid)))), 1e-9)
        g = g * np.clip(1.0 + app.wall_echo_variation * prof(np.clip(s, -1.0, 1.0)) / peak, 0.05, None)
    if app.lateral_wall_gain != 1.0:
        # full dimming over the mid and basal lateral wall, none on the septum
        w = _smoothstep((s - 0.05) / 0.4)
        g = g * (1.0 + (app.lateral_wall_gain - 1.0) * w)
    if app.septum_gain != 1.0:
        # the mid and basal septum, seen near perpendicular, none on the lateral wall
        w = _smoothstep((-s - 0.05) / 0.4)
        g = g * (1.0 + (app.septum_gain - 1.0) * w)
    return g


def apply_static(app: EchoAppearance, scene, cfg, p0: np.ndarray, th0: np.ndarray,
                 rh0: np.ndarray, echo0: np.ndarray) -> np.ndarray:
    """Scatterer echogenicities with the wall, annulus and pericardium knobs applied.

    ``p0`` / ``th0`` / ``rh0``: the scatterers' ED positions and material coordinates; the
    gains are material, so they move with the tissue."""
    wall = scene.wall
    open_lv = scene.has_lv and scene.lv_open and wall is not None
    out = echo0
    if not open_lv:
        return out
    thb = wall.half_angle
    if app.wall_echo_variation > 0.0 or app.lateral_wall_gain != 1.0 or app.septum_gain != 1.0:
        rng = appearance_rng(cfg.seed)
        myo = wall.in_wall(th0, rh0)
        g = wall_profile(app, th0[myo] / thb, rng)
        out = out.copy()
        out[myo] = out[myo] * g
    if app.bright_annulus_gain > 0.0 and scene.leaflets:
        d = np.full(p0.shape[0], np.inf)
        for lf in scene.leaflets:
            d = np.minimum(d, np.hypot(*(p0 - np.asarray(lf.hinge_ed_mm)).T))
        w = np.exp(-0.5 * (d / 2.0) ** 2)
        out = out * (1.0 + app.bright_annulus_gain * w)
    if app.pericardium_gain > 0.0:
        d_out = wall.outside_distance_mm(th0, rh0)
        s = th0 / thb
        band = np.exp(-0.5 * ((d_out - 2.5) / 1.2) ** 2) * (np.abs(th0) <= thb + 0.05)
        if scene.view in ("a4c", "sc4c", "alax", "plax"):
            # the septum borders the RV: the pericardium wraps the apex and the free wall
            band = band * _smoothstep((s + 0.35) / 0.3)
        out = out * (1.0 + app.pericardium_gain * band)
    return out


def displayed_motion(displacement: np.ndarray, persistence: float) -> np.ndarray:
    """The motion the displayed frames show, (T-1, rows, cols, 2) px, from the tissue's
    ``displacement`` (frame t -> t + 1, the same shape) under frame averaging.

    The display's recursive filter (shown_t = (1 - a) image_t + a shown_t-1) makes each
    pattern sit at the weighted mean of its recent positions, so the displayed step is the
    same filter over the tissue's steps: v'_t = (1 - a) v_t + a v'_t-1, starting from the
    first frame (shown as it is, no history).  Steps are added on the grid (a sub-pixel
    step in a smooth field barely moves between frames).  ``persistence`` 0 returns
    ``displacement`` itself.  Over a cycle the displayed steps add up to the tissue's, a
    few frames late; a flow network trained on the tissue's steps of averaged frames would
    learn to shrink the motion it sees."""
    a = float(persistence)
    if a <= 0.0:
        return displacement
    out = np.empty(displacement.shape, np.float32)
    prev = np.zeros(displacement.shape[1:], np.float64)
    for t, v in enumerate(displacement):
        prev = (1.0 - a) * v + a * prev
        out[t] = prev
    return out


def dropout_fn(app: EchoAppearance, scene):
    """Gain of the drop-out sector as a function of current positions (N, 2) mm, or None."""
    if app.dropout_gain >= 1.0:
        return None
    geom = scene.geom
    wall = scene.wall
    open_lv = scene.has_lv and scene.lv_open and wall is not None
    half_w = math.radians(app.dropout_width_deg) / 2.0
    r_lo = r_hi = None
    if app.dropout_region == "lateral":
        if open_lv:
            _, centre = geom.polar(wall.to_mm(np.array(0.55 * wall.half_angle), np.array(1.0)))
            centre = float(centre)
        else:
            centre = 0.55 * geom.half_angle_rad
    else:
        if open_lv:
            r_apex, centre = geom.polar(wall.to_mm(np.array(0.0), np.array(1.0)))
            r_apex, centre = float(r_apex), float(centre)
        else:
            r_apex, centre = 0.25 * geom.depth_mm, 0.0
        r_lo, r_hi = r_apex - 12.0, r_apex + 15.0
    loss = 1.0 - app.dropout_gain

    def gain(pts: np.ndarray) -> np.ndarray:
        r, a = geom.polar(pts)
        w = np.exp(-0.5 * ((a - centre) / (half_w / 1.1774)) ** 4)      # flat-topped
        if r_lo is not None:
            w = w * _smoothstep((r - r_lo) / 5.0) * _smoothstep((r_hi - r) / 8.0)
        return 1.0 - loss * w

    return gain


def speckle_with(app: EchoAppearance, sp):
    """The speckle config with ``axial_resolution_mm`` applied (``sp`` itself when neutral).

    The pulse FWHM becomes ``axial_resolution_mm`` and the post-detection display blur
    (sigma) a fifth of it, so the speckle's axial size follows the knob."""
    if app.axial_resolution_mm is None:
        return sp
    return dataclasses.replace(sp, axial_fwhm_mm=float(app.axial_resolution_mm),
                               display_blur_mm=0.2 * float(app.axial_resolution_mm))
