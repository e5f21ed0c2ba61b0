"""Myocardial velocities of a velocity-mapping cine (tissue phase mapping, issue 17).

Arrays in, arrays out (numpy, OpenCV). One slice's cine covers one cardiac cycle, frame 0
the ECG-triggered end-diastole.

Conventions
-----------
- Velocity channels, cm/s: ``v_x`` along +columns, ``v_y`` along +rows (image axes) and
  ``v_z`` through the slice, positive towards the apex (the base descends in systole).
  :func:`velocity_channels` maps a frame's channel names onto them.
- **Radial** velocity is positive **inwards** (towards the LV centre: contraction), and
  **circumferential** positive counter-clockwise as viewed from the apex (the screen's
  counter-clockwise with anterior up, as :mod:`calib.mr`); **longitudinal** is ``v_z``.
  Before radial and circumferential components are taken the LV's in-plane translation
  (the mean in-plane velocity of its myocardium in that frame) is subtracted, and the
  centre is that frame's centroid of the myocardium ring, as tissue phase mapping analyses
  do (Jung et al. 2006).
- Global curves are means over the myocardium of each frame; segment curves means over
  the AHA segments' pixels (:func:`aha_segments_by_anterior`).
- Peaks (:func:`peak_velocities`): systole runs from frame 0 to end-systole, the first
  frame after the radial curve's systolic maximum where it turns negative (inward motion
  stops); early diastole is the first half of the rest, late diastole (the atrial kick) the
  cycle's last quarter. Systolic peaks are maxima (radial, longitudinal), diastolic peaks
  minima; a circumferential peak is the signed value of largest magnitude in its window
  (its direction varies with the level: basal and apical rotations are opposed).

Measurement chores before that (each on the whole cycle of one slice):
- :func:`correct_background_offset`: a quadratic surface per channel fitted to the static
  tissue (bright pixels whose velocity hardly varies over the cycle, away from the heart)
  and subtracted (the eddy-current offset of phase-contrast MR; Walker et al. 1993);
- :func:`unwrap_in_time`: phase wraps (a velocity beyond +-VENC reads 2 VENC too low or
  high) undone within the myocardium against each frame's circular mean, itself followed
  along the cycle from end-diastole where myocardial velocities are small; the share of myocardium pixel-frames that needed it is reported, and phase
  too rough to unwrap (noise, not velocity) is told apart;
- :func:`postprocess_myocardium`: the network's mask per frame cleaned the way the 3D-EAR
  pipeline does (its largest connected piece kept, holes in the wall up to
  ``max_hole_px`` filled).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

#: velocity channel names a frame may carry (any case), by axis, with their unit in cm/s
_AXES = {"x": ("v_x", "vx", "v_col"), "y": ("v_y", "vy", "v_row"), "z": ("v_z", "vz", "v_through")}
_UNITS = {"": 1.0, "_cm_s": 1.0, "_mm_s": 0.1, "_m_s": 100.0}
MAGNITUDE_NAMES = ("magnitude", "mag", "m")
CURVES = ("radial", "circumferential", "longitudinal")


class VelocityChannelError(ValueError):
    """A frame's channels are not magnitude plus three velocity components."""


@dataclass(frozen=True)
class ChannelMap:
    """Where a frame's magnitude and its v_x, v_y, v_z are, and each velocity's factor to
    cm/s."""

    magnitude: int
    velocity: tuple[int, int, int]
    to_cm_s: tuple[float, float, float]

    def split(self, frame: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(rows, cols, C) -> magnitude (rows, cols) float32, velocity (rows, cols, 3) cm/s."""
        f = np.asarray(frame, np.float32)
        v = f[..., list(self.velocity)] * np.float32(self.to_cm_s)
        return f[..., self.magnitude], v


def velocity_channels(channels) -> ChannelMap:
    """Channel names -> :class:`ChannelMap`. Velocities are ``v_x``, ``v_y``, ``v_z`` (cm/s;
    also ``vx`` ..., or ``v_col``, ``v_row``, ``v_through``), optionally with their unit as a
    suffix (``_cm_s``, ``_mm_s``, ``_m_s``); the magnitude is ``magnitude``. Raises
    VelocityChannelError naming what is missing."""
    names = [str(c).lower() for c in (channels or ())]
    mag = [i for i, n in enumerate(names) if n in MAGNITUDE_NAMES]
    found: dict[str, tuple[int, float]] = {}
    for i, n in enumerate(names):
        for axis, stems in _AXES.items():
            for stem in stems:
                for suffix, factor in _UNITS.items():
                    if n == stem + suffix:
                        if axis in found:
                            raise VelocityChannelError(f"channels {list(channels)}: two "
                                                       f"channels for v_{axis}")
                        found[axis] = (i, factor)
    missing = [f"v_{a}" for a in _AXES if a not in found] + ([] if mag else ["magnitude"])
    if missing:
        raise VelocityChannelError(
            f"channels {list(channels or ())} lack {', '.join(missing)}: velocity mapping "
            "needs magnitude, v_x, v_y and v_z (cm/s, or with a unit suffix such as _mm_s)")
    return ChannelMap(mag[0], tuple(found[a][0] for a in _AXES),
                      tuple(found[a][1] for a in _AXES))


def velocity_encoding_cm_s(metadata: dict) -> float | None:
    """A clip's or stream's velocity encoding (VENC: the speed at which the phase wraps),
    cm/s, from its metadata: ``venc_cm_s``, or ``venc_mm_s`` as the phantoms write it; None
    when it does not say (or says something that is not a positive number)."""
    for key, scale in (("venc_cm_s", 1.0), ("venc_mm_s", 0.1)):
        value = metadata.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0:
            return round(float(value) * scale, 6)
    return None


# --------------------------------------------------------------------------------------
# measurement chores: background offset, wraps, the mask
# --------------------------------------------------------------------------------------


def _quadratic_design(rows: np.ndarray, cols: np.ndarray, shape) -> np.ndarray:
    y = rows / max(shape[0] - 1, 1) * 2 - 1
    x = cols / max(shape[1] - 1, 1) * 2 - 1
    return np.stack([np.ones_like(y), y, x, y * y, x * x, x * y], axis=-1)


def static_tissue(magnitude: np.ndarray, velocity_cm_s: np.ndarray,
                  exclude: np.ndarray | None = None) -> np.ndarray:
    """(rows, cols) bool: pixels of static tissue over the cycle: brighter than the 40th
    percentile of the mean magnitude, with a temporal velocity spread (all three channels)
    in the lowest third of those, outside ``exclude`` (e.g. the heart, dilated)."""
    m = np.nanmean(np.asarray(magnitude, np.float32), axis=0)
    spread = np.nanstd(np.asarray(velocity_cm_s, np.float32), axis=0).sum(-1)
    ok = np.isfinite(m) & np.isfinite(spread) & (m >= np.nanpercentile(m, 40))
    if exclude is not None:
        ok &= ~np.asarray(exclude, bool)
    if ok.sum() < 50:
        return ok
    return ok & (spread <= np.percentile(spread[ok], 33))


def correct_background_offset(magnitude: np.ndarray, velocity_cm_s: np.ndarray,
                              exclude: np.ndarray | None = None
                              ) -> tuple[np.ndarray, np.ndarray]:
    """(T, rows, cols) magnitude, (T, rows, cols, 3) velocity -> the velocity with a
    quadratic surface per channel, fitted to the static tissue's mean velocity over the
    cycle (:func:`static_tissue`), subtracted; and that offset (rows, cols, 3). With fewer
    than 50 static pixels nothing is subtracted (offset zero)."""
    v = np.asarray(velocity_cm_s, np.float32)
    shape = v.shape[1:3]
    static = static_tissue(magnitude, v, exclude)
    offset = np.zeros((*shape, 3), np.float32)
    if static.sum() < 50:
        return v.copy(), offset
    r, c = np.nonzero(static)
    A = _quadratic_design(r.astype(np.float64), c.astype(np.float64), shape)
    rr, cc = np.mgrid[0:shape[0], 0:shape[1]].astype(np.float64)
    full = _quadratic_design(rr, cc, shape)
    mean_v = np.nanmean(v, axis=0)
    for k in range(3):
        coef, *_ = np.linalg.lstsq(A, mean_v[r, c, k].astype(np.float64), rcond=None)
        offset[..., k] = (full @ coef).astype(np.float32)
    return v - offset, offset


def unwrap_in_time(velocity_cm_s: np.ndarray, venc_cm_s: float,
                   where: np.ndarray) -> tuple[np.ndarray, float, float]:
    """Undo phase wraps within the myocardium ``where`` ((T, rows, cols) bool, or (rows,
    cols) for every frame), channel by channel:

    1. each frame's reference, the circular mean of its ``where`` pixels (the phase as an
       angle pi v / VENC: a mean that wraps do not bias), followed in time from frame 0,
       where myocardial velocities are small: a step of more than VENC from the previous
       frame's reference is a wrap of the reference, and 2 VENC is added or subtracted;
    2. each pixel brought within VENC of its frame's reference (multiples of 2 VENC).

    Myocardial velocity varies within a frame by less than VENC (the reference carries the
    common motion) and between frames by less than VENC (the reference follows it), where
    unwrapping pixel by pixel in time breaks at pixels that enter the myocardium from the
    noisy blood pool.

    Returns the unwrapped velocity, the share of the ``where`` pixel-frames that were
    changed, and the **roughness**: the median |step| of a pixel between consecutive frames
    (where it is myocardium in both) after unwrapping, in VENC. Myocardium moving smoothly
    under moderate phase noise gives a few hundredths; phase that is noise (a VENC far too
    low, a channel that holds no velocity) about a half."""
    v = np.array(velocity_cm_s, np.float32, copy=True)
    if not venc_cm_s > 0:
        raise ValueError(f"venc_cm_s must be > 0, got {venc_cm_s}")
    w = np.asarray(where, bool)
    if w.ndim == 2:
        w = np.broadcast_to(w, v.shape[:3])
    two = 2.0 * venc_cm_s
    changed = 0
    previous = np.zeros(v.shape[-1])
    for t in range(v.shape[0]):
        if not w[t].any():
            continue
        x = v[t][w[t]]                                            # (M, 3)
        angle = np.angle(np.exp(1j * np.pi * x / venc_cm_s).mean(0))
        ref = angle / np.pi * venc_cm_s
        ref = ref - two * np.round((ref - previous) / two) if t else ref
        previous = ref
        k = np.round((x - ref) / two)
        changed += int((k != 0).any(-1).sum())
        v[t][w[t]] = x - k * two
    steps = [np.abs(v[t] - v[t - 1])[w[t] & w[t - 1]] for t in range(1, v.shape[0])]
    flat = np.concatenate(steps) if steps else np.zeros(0)
    roughness = float(np.median(flat)) / venc_cm_s if flat.size else 0.0
    total = int(w.sum())
    return v, (changed / total if total else 0.0), roughness


def postprocess_myocardium(mask: np.ndarray, max_hole_px: int = 20) -> np.ndarray:
    """(T, rows, cols) bool -> the same with, per frame, only the largest 8-connected piece
    of myocardium kept and holes in it of at most ``max_hole_px`` pixels filled (the LV
    cavity, a large hole, stays open)."""
    m = np.asarray(mask, bool)
    out = np.zeros_like(m)
    for t in range(m.shape[0]):
        n, lab, stats, _ = cv2.connectedComponentsWithStats(m[t].astype(np.uint8), connectivity=8)
        if n <= 1:
            continue
        keep = lab == 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
        n_h, lab_h, st_h, _ = cv2.connectedComponentsWithStats((~keep).astype(np.uint8),
                                                               connectivity=4)
        for j in range(1, n_h):
            x, y, w, h, area = st_h[j]
            touches = x == 0 or y == 0 or x + w == m.shape[2] or y + h == m.shape[1]
            if area <= max_hole_px and not touches:
                keep |= lab_h == j
        out[t] = keep
    return out


# --------------------------------------------------------------------------------------
# curves and peaks
# --------------------------------------------------------------------------------------


@dataclass
class VelocityCurves:
    """One slice's cycle: global curves (T,) cm/s and, where segments were given, per
    segment (T, K) with their AHA numbers; ``pixels`` the myocardium pixels per frame."""

    radial: np.ndarray
    circumferential: np.ndarray
    longitudinal: np.ndarray
    pixels: np.ndarray
    segment_ids: tuple[int, ...] = ()
    segment_radial: np.ndarray | None = None
    segment_circumferential: np.ndarray | None = None
    segment_longitudinal: np.ndarray | None = None

    def curve(self, name: str) -> np.ndarray:
        return getattr(self, name)


def velocity_curves(velocity_cm_s: np.ndarray, myocardium: np.ndarray,
                    segments: np.ndarray | None = None) -> VelocityCurves:
    """(T, rows, cols, 3) velocity (v_x, v_y, v_z cm/s) and (T, rows, cols) bool myocardium
    -> :class:`VelocityCurves` (module docstring: radial inwards, circumferential
    counter-clockwise from the apex, translation removed). ``segments``: (T, rows, cols)
    AHA numbers (0 outside) for the segment curves. A frame without myocardium gives NaN."""
    v = np.asarray(velocity_cm_s, np.float64)
    m = np.asarray(myocardium, bool)
    T = v.shape[0]
    out = {name: np.full(T, np.nan) for name in CURVES}
    pixels = m.reshape(T, -1).sum(1)
    ids = tuple(int(s) for s in np.unique(segments) if s > 0) if segments is not None else ()
    seg = {name: np.full((T, len(ids)), np.nan) for name in CURVES}
    for t in range(T):
        r, c = np.nonzero(m[t])
        if len(r) < 3:
            continue
        vx, vy, vz = v[t, r, c, 0], v[t, r, c, 1], v[t, r, c, 2]
        vx, vy = vx - vx.mean(), vy - vy.mean()
        dr, dc = r - r.mean(), c - c.mean()
        norm = np.maximum(np.hypot(dr, dc), 1e-9)
        er_row, er_col = dr / norm, dc / norm
        radial_in = -(vy * er_row + vx * er_col)
        # counter-clockwise on screen with rows down: e_phi = (-er_col, er_row) in (row, col)
        circ = vy * (-er_col) + vx * er_row
        values = {"radial": radial_in, "circumferential": circ, "longitudinal": vz}
        for name, val in values.items():
            out[name][t] = float(np.mean(val))
        if ids:
            s = np.asarray(segments)[t, r, c]
            for j, sid in enumerate(ids):
                sel = s == sid
                if sel.any():
                    for name, val in values.items():
                        seg[name][t, j] = float(np.mean(val[sel]))
    if ids:
        return VelocityCurves(out["radial"], out["circumferential"], out["longitudinal"], pixels,
                              ids, seg["radial"], seg["circumferential"], seg["longitudinal"])
    return VelocityCurves(out["radial"], out["circumferential"], out["longitudinal"], pixels)


def end_systole_frame(radial: np.ndarray) -> int | None:
    """End-systole from the global radial curve: the first frame after its systolic maximum
    (sought in the first 60 % of the cycle) where it is no longer positive; None when the
    curve has no positive systolic maximum or never turns."""
    x = np.asarray(radial, np.float64)
    T = len(x)
    if T < 4 or not np.isfinite(x).all():
        return None
    head = x[: max(2, int(round(0.6 * T)))]
    k = int(np.argmax(head))
    if head[k] <= 0:
        return None
    after = np.nonzero(x[k:] <= 0)[0]
    return None if not len(after) else k + int(after[0])


def _signed_extreme(x: np.ndarray) -> float:
    return float(x[int(np.argmax(np.abs(x)))])


def peak_velocities(curves: VelocityCurves, es_frame: int | None = None) -> dict[str, float | None]:
    """Peak systolic, early- and late-diastolic velocity of each global curve, cm/s, named
    ``peak_{systolic,early_diastolic,late_diastolic}_{radial,circumferential,longitudinal}_
    velocity_cm_s`` (module docstring), with ``es_frame`` (default from the radial curve,
    :func:`end_systole_frame`); None where the window is empty or the curve unknown."""
    T = len(curves.radial)
    es = end_systole_frame(curves.radial) if es_frame is None else int(es_frame)
    out: dict[str, float | None] = {}
    for name in CURVES:
        x = curves.curve(name)
        for phase in ("systolic", "early_diastolic", "late_diastolic"):
            out[f"peak_{phase}_{name}_velocity_cm_s"] = None
        if es is None or not np.isfinite(x).all() or es >= T - 2:
            continue
        windows = {"systolic": x[: es + 1],
                   "early_diastolic": x[es: es + max(1, (T - es) // 2)],
                   "late_diastolic": x[T - max(1, T // 4):]}
        for phase, w in windows.items():
            if name == "circumferential":
                value = _signed_extreme(w)
            else:
                value = float(w.max() if phase == "systolic" else w.min())
            out[f"peak_{phase}_{name}_velocity_cm_s"] = round(value, 3)
    return out


def aha_segments_by_anterior(myocardium: np.ndarray, level: str, anterior_rad: float = np.pi / 2,
                             insertion_offset_deg: float = 30.0, ccw: bool = True) -> np.ndarray:
    """(T, rows, cols) AHA segment numbers of the myocardium pixels by their screen angle
    about each frame's ring centroid (:func:`streamer.measure.strain.aha_segment_ids`), the
    anterior RV insertion point taken ``insertion_offset_deg`` towards the septum from the
    anterior direction ``anterior_rad`` (screen angle; pi / 2 = up). Without the RV in the
    labels, this is where the insertion usually lies; a heart whose insertion lies elsewhere
    has its segments turned by the difference."""
    from streamer.measure.strain import aha_segment_ids

    m = np.asarray(myocardium, bool)
    out = np.zeros(m.shape, np.uint8)
    anchor = anterior_rad + np.radians(insertion_offset_deg) * (1 if ccw else -1)
    for t in range(m.shape[0]):
        r, c = np.nonzero(m[t])
        if len(r) < 3:
            continue
        out[t, r, c] = aha_segment_ids(np.stack([r, c], 1).astype(np.float64),
                                       (float(r.mean()), float(c.mean())), anchor, level, ccw)
    return out
