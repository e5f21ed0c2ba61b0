"""Short-axis wall tracking: endocardial and epicardial points on rays from the LV centre,
followed from frame to frame by the numba Kalman filter (:class:`.kalman.PointTracker`).

The wall is sampled on ``n_rays`` rays from the LV centre: on each ray the endocardial point
is where the LV myocardium starts and the epicardial point where that myocardial run ends
(:func:`wall_boundaries_px`). Point i of the endocardium faces point i of the epicardium
(they lie on one ray), which is what :func:`.strain.sax_strain` needs; their mean is the
mid-wall.

Per frame (:meth:`SaxWallTracker.step`) each of the 2 x ``n_rays`` points gets a ray angle
around this frame's LV centre, and on that ray this frame's endo- or epicardial boundary
is the measured position (the mask says where the wall is radially; it cannot say where
along the wall a material point went). The filter gets z = [row, col, v_row, v_col] (mm,
mm/s). How a point moves along the wall is ``SaxTrackerConfig.along_wall``:

- ``flow``: the point moved by the motion branch's flow gives its new angle (material
  points: rotation, twist and regional shortening follow the flow), and the flow at the
  point over the frame interval is its velocity (a displacement over the last interval,
  hence ``velocity_lag_s = dt / 2``). Exact with an exact flow (the phantom's truth:
  segment strain within 1 %-point), but a network's flow error along the wall adds up
  over a cycle: a tenth of a pixel per frame moves segment boundaries by millimetres.
- ``rays`` (default while the shipped flow is not accurate enough along the wall, see
  docs/benchmarks.md): each point moves across the wall only, to this frame's boundary on
  the ray through it from this frame's LV centre; the flow is not used. Blind to rotation
  and to motion along the wall (Eulerian), robust to a noisy flow and to the jitter of
  the masks' centre; the filter smooths positions alone.

Positions are in mm from the grid's top-left pixel, [row, col].
"""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

from streamer.measure.kalman import KalmanConfig, PointTracker, make_z
from streamer.measure.sampling import sample_velocity_mm_s
from streamer.measure.sax import SaxGeometryError, lv_centre_px, screen_angle
from streamer.vocab import MRLabel


def wall_boundaries_px(myocardium: np.ndarray, centre_px, angles_rad, *, step_px: float = 0.25,
                       max_radius_px: float | None = None
                       ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Endo- and epicardial points on rays from ``centre_px`` at screen angles ``angles_rad``
    (counter-clockwise from +col, as :func:`.sax.screen_angle`).

    ``myocardium``: (rows, cols) the LV myocardium as a map in [0, 1] (a probability or
    area-coverage map gives sub-pixel boundaries; a 0/1 mask works too). On each ray,
    sampled every ``step_px`` (bilinear), the endocardial point is the first crossing of 0.5
    and the epicardial point the next crossing back (the end of that myocardial run), each
    interpolated linearly between its two samples. Returns endo (M, 2), epi (M, 2)
    [row, col] px and valid (M,): the ray left a cavity and met myocardium (NaN points
    where not). A ray that starts in the myocardium (the centre lies in the wall: no
    cavity on it, as on a slice through the apical cap or a stray blob the segmentation
    called myocardium) has no endocardial point and is not valid."""
    p_map = np.ascontiguousarray(myocardium, dtype=np.float32)
    if p_map.ndim != 2:
        raise ValueError(f"myocardium must be (rows, cols), got {p_map.shape}")
    h, w = p_map.shape
    angles = np.asarray(angles_rad, np.float64).reshape(-1)
    centre = np.asarray(centre_px, np.float64).reshape(2)
    if max_radius_px is None:
        max_radius_px = 0.5 * float(np.hypot(h, w))
    r = np.arange(0.0, max_radius_px, step_px)
    d = np.stack([-np.sin(angles), np.cos(angles)], 1)                  # (M, 2) [row, col]
    pts = centre[None, None, :] + r[None, :, None] * d[:, None, :]       # (M, K, 2)
    p = cv2.remap(p_map, pts[..., 1].astype(np.float32), pts[..., 0].astype(np.float32),
                  cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0.0)
    p = p.astype(np.float64)
    inside = p >= 0.5
    rows = np.arange(len(angles))
    first = np.argmax(inside, 1)
    valid = inside.any(1) & (first > 0)
    k = np.arange(r.size)[None, :]
    after = ~inside & (k > first[:, None])
    end = np.where(after.any(1), np.argmax(after, 1), r.size - 1)

    def crossing(k_in: np.ndarray, k_out: np.ndarray) -> np.ndarray:
        """Radius where p crosses 0.5 between samples k_out and k_in (adjacent)."""
        p_in, p_out = p[rows, k_in], p[rows, k_out]
        frac = np.clip((0.5 - p_out) / np.where(p_in != p_out, p_in - p_out, 1.0), 0.0, 1.0)
        return r[k_out] + frac * (r[k_in] - r[k_out])

    r_endo = crossing(first, np.maximum(first - 1, 0))
    r_epi = crossing(np.maximum(end - 1, 0), end)
    endo = centre + r_endo[:, None] * d
    epi = centre + r_epi[:, None] * d
    endo[~valid] = np.nan
    epi[~valid] = np.nan
    return endo, epi, valid


def _fill_gaps(points_mm: np.ndarray, valid: np.ndarray, centre_mm: np.ndarray,
               angles: np.ndarray) -> np.ndarray:
    """Points on rays that met no wall: at the radius interpolated (periodically, by angle)
    between the rays that did."""
    radius = np.hypot(*(points_mm[valid] - centre_mm).T)
    r = np.interp(angles[~valid], angles[valid], radius, period=2 * np.pi)
    out = points_mm.copy()
    out[~valid] = centre_mm + r[:, None] * np.stack([-np.sin(angles[~valid]),
                                                     np.cos(angles[~valid])], 1)
    return out


#: how the tracked points move along the wall (:class:`SaxTrackerConfig`)
ALONG_WALL = ("rays", "flow")


@dataclass(frozen=True)
class SaxTrackerConfig(KalmanConfig):
    """The short-axis wall tracker: the Kalman noise model (:class:`.kalman.KalmanConfig`)
    and the ray sampling.

    n_rays               rays from the LV centre (points per contour)
    along_wall           how points move along the wall: ``flow`` (material points,
                         carried by the flow; velocity measured by it) or ``rays`` (across
                         the wall only, on the ray from the LV centre; the flow is not
                         used)
    min_valid_fraction   a frame whose rays cross from cavity into myocardium on fewer
                         than this share gives no position measurement (flag
                         ``wall_lost``; a slice with no cavity has none); at
                         (re-)initialisation it starts no track
    max_radius_mm        how far from the LV centre a ray looks for the wall
    """

    n_rays: int = 48
    along_wall: str = "rays"
    min_valid_fraction: float = 0.9
    max_radius_mm: float = 80.0

    def __post_init__(self) -> None:
        if self.n_rays < 8:
            raise ValueError(f"n_rays must be >= 8, got {self.n_rays}")
        if self.along_wall not in ALONG_WALL:
            raise ValueError(f"along_wall {self.along_wall!r} is not one of {ALONG_WALL}")
        if not 0.0 < self.min_valid_fraction <= 1.0:
            raise ValueError(f"min_valid_fraction must be in (0, 1], got {self.min_valid_fraction}")


@dataclass
class SaxTrack:
    """One frame's tracked wall: ``endo_mm`` and ``epi_mm`` (M, 2) [row, col] mm on the
    grid (NaN when not ``valid``), at time ``t_s``."""

    t_s: float
    endo_mm: np.ndarray
    epi_mm: np.ndarray
    valid: bool
    flags: list[str] = field(default_factory=list)


class SaxWallTracker:
    """Follows the endo- and epicardium of one short-axis slice (2 x ``n_rays`` points).

    :meth:`step` takes each frame's label image (on the grid), the flow from the previous
    frame (``None`` on the first) and the grid's spacing. The track (re-)initialises on the
    first frame with a wall, and after a frame that lost it; then the flag
    ``reinitialised`` says that the points are new material points."""

    def __init__(self, config: SaxTrackerConfig = SaxTrackerConfig()):
        self.config = config
        m = config.n_rays
        self.angles0 = 2.0 * np.pi * np.arange(m) / m
        self.filter = PointTracker(2 * m, config)
        self._t_s: float | None = None

    def reset(self) -> None:
        self.filter = PointTracker(2 * self.config.n_rays, self.config)
        self._t_s = None

    def _measure(self, myocardium: np.ndarray, centre_px: np.ndarray, angles: np.ndarray,
                 spacing: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        radius = self.config.max_radius_mm / float(spacing.min())
        endo, epi, valid = wall_boundaries_px(myocardium, centre_px, angles,
                                              max_radius_px=radius)
        return endo * spacing, epi * spacing, valid

    def _fail(self, t_s: float, flags: list[str]) -> SaxTrack:
        nan = np.full((self.config.n_rays, 2), np.nan)
        return SaxTrack(t_s, nan, nan.copy(), False, flags)

    def step(self, labels: np.ndarray, flow: np.ndarray | None, t_s: float,
             spacing_mm, myocardium: np.ndarray | None = None) -> SaxTrack:
        """One frame: ``labels`` (the MR label image: the LV centre), ``myocardium`` (its
        LV-myocardium probability in [0, 1], for sub-pixel boundaries; default the label
        image's myocardium as 0/1), the flow from the previous frame (rows, cols, 2)
        [dx, dy] px or None, the frame's time and the grid's spacing (row, col) mm."""
        cfg, m = self.config, self.config.n_rays
        if myocardium is None:
            myocardium = (np.asarray(labels) == MRLabel.LV_MYOCARDIUM).astype(np.float32)
        spacing = np.asarray(spacing_mm, np.float64).reshape(2)
        try:
            centre_px = lv_centre_px(labels)
        except SaxGeometryError:
            self.reset()
            return self._fail(t_s, ["no_lv"])
        if not self.filter.initialised:
            centre_mm = centre_px * spacing
            endo, epi, valid = self._measure(myocardium, centre_px, self.angles0, spacing)
            if valid.mean() < cfg.min_valid_fraction:
                return self._fail(t_s, ["wall_lost"])
            if not valid.all():  # a gap in the wall: the rays there get their neighbours' radii
                endo = _fill_gaps(endo, valid, centre_mm, self.angles0)
                epi = _fill_gaps(epi, valid, centre_mm, self.angles0)
            self.filter.initialise(np.concatenate([endo, epi]))
            self._t_s = t_s
            return SaxTrack(t_s, endo, epi, True, ["reinitialised"])
        dt = t_s - self._t_s
        previous_px = self.filter.positions_mm / spacing
        flags: list[str] = []
        velocity = np.full((2 * m, 2), np.nan)
        moved_px = previous_px.copy()
        if flow is None:
            flags.append("no_flow")
        elif cfg.along_wall == "flow":
            sampled = sample_velocity_mm_s(flow, previous_px, spacing, dt)
            flags += sampled.flags
            ok = sampled.valid
            moved_px[ok] += sampled.displacement_px[ok][:, ::-1]  # [dx, dy] -> [row, col]
            velocity = sampled.velocity_mm_s
        # "rays": the point stays where it was, to be moved across the wall only, along
        # the ray through it from this frame's LV centre
        angles = screen_angle(0.5 * (moved_px[:m] + moved_px[m:]), centre_px)
        endo, epi, valid = self._measure(myocardium, centre_px, angles, spacing)
        if valid.mean() < cfg.min_valid_fraction:
            self.reset()  # start afresh on the next frame with a wall
            return self._fail(t_s, [*flags, "wall_lost"])
        self.filter.step(dt, make_z(np.concatenate([endo, epi]), velocity),
                         velocity_lag_s=0.5 * dt)
        flags += self.filter.flags
        self._t_s = t_s
        if not self.filter.initialised:
            self.reset()
            return self._fail(t_s, flags)
        x = self.filter.positions_mm
        return SaxTrack(t_s, x[:m], x[m:], True, flags)
