"""A4C centreline tracking: one frame of mask + flow -> a filtered 120-point centreline.

The A4C policy on top of the generic point filter of :mod:`.kalman` (the numba Kalman
kernels and :class:`~.kalman.PointTracker`, which know nothing of the anatomy):

- :class:`CentrelineTracker`: per frame, the centreline extracted from the myocardium mask
  (:mod:`.centerline`, septum base -> apex -> lateral base) fused with the dense flow
  (:mod:`.sampling`): the flow carries every point along the wall, the mask pulls the two
  basal ends towards where it ends and the interior points across the wall near
  end-diastole only, the interior follows the ends' lasting along-wall correction, and a
  bad frame (empty / broken mask, an interval beyond ``max_gap_s``) re-initialises the
  track at the next good one.
- :class:`TrackerConfig`: the filter's noise model (:class:`~.kalman.KalmanConfig`, whose
  fields it inherits) plus these rules' parameters.
- :class:`TrackResult`: one frame's output.
- :func:`warmup`: compiles (or loads from cache) every numba function of the tracking path
  (the filter's, via :func:`.kalman.warmup`, and the centreline helpers).

Points are (row, col) in mm throughout, as in :mod:`.kalman`.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np

from . import kalman
from .kalman import KalmanConfig, PointTracker

# --------------------------------------------------------------------------------------
# configuration: the filter's noise model + the A4C rules
# --------------------------------------------------------------------------------------


#: the tracker's position measurements (TrackerConfig.position_measurement)
POSITION_MEASUREMENTS = ("arclength", "projection")


@dataclass(frozen=True)
class TrackerConfig(KalmanConfig):
    """Configuration of :class:`CentrelineTracker`.

    The first fields are the point filter's noise model, inherited from
    :class:`~.kalman.KalmanConfig` (same names and order: position_std_mm,
    velocity_std_mm_s, jerk_psd_mm2_s5, init_velocity_std_mm_s, init_accel_std_mm_s2,
    max_dt_ratio, max_gap_s; see there), with one default of its own: position_std_mm
    0.6 mm (the filter's 0.3 mm is for a precise measurement; a network's mask centreline
    on a real clip jitters by more, and on held-out validation phantoms 0.3 and 0.6 mm
    are alike, 1.68 against 1.69 strain-% mean peak-GLS error).  The A4C rules:

    position_measurement  where a point's position measurement comes from (see
                          :class:`CentrelineTracker`): "arclength" (default, Østvik et al.
                          2018) the i-th of the mask centreline's 120 equally spaced points;
                          "projection" the point carried by the flow and pulled towards the
                          mask by the rules below (wall_pull .. end_follow_tau_s, which
                          only this mode reads).  With the shipped networks on 48
                          validation phantoms of the random appearance (seeds no training
                          saw), arclength gives 1.69 strain-% mean peak-GLS error (regional
                          4.1) against projection's 2.09 (regional 6.6): projection keeps
                          material points, which pays where the flow is accurate (truth
                          flow and masks: 0.24 strain-%); the network's flow on a realistic
                          image is not (with it in place of the truth, 2.24).

    wall_pull, end_pull   (CentrelineTracker, "projection" mode) how far the position
                          measurement of a point goes from where the flow carried it towards
                          the mask: 1 = onto this frame's centreline (interior points,
                          across the wall only) or onto its basal ends; smaller values let
                          the flow dominate and the mask correct drift over ~1/pull frames.
                          A mask-derived midline is a geometric layer; the flow follows
                          material, so full pull drags points across layers when the wall
                          thickens unevenly, and basal ends found in a mask jitter by a
                          fraction of a pixel, which the basal segments feel most.
    ed_gate_frac, ed_window_s
                          the interior points' across-wall pull (wall_pull) acts only near
                          end-diastole: in full on frames whose mask centreline is within
                          ed_gate_frac (3 %) of the longest one of the last ed_window_s
                          seconds, falling linearly to none at twice that (0 = always).  The
                          mid-wall is defined as the geometric mid-wall *at ED*, followed
                          through the cycle; during systole the material mid-wall and a
                          mask's geometric midline part by up to ~0.4 mm (uneven
                          thickening), and near the base, where the wall shears across its
                          thickness (~1 mm along the wall per mm across at peak systole in
                          the phantom), a point pulled onto the geometric midline slides
                          along the wall by as much - up to ~1 strain-% in a basal segment.
                          Between EDs the points are carried by the flow alone across the
                          wall, so a flow error drifts for at most one beat.
    end_follow, end_follow_tau_s
                          the interior points take end_follow (0..1) of the lasting part
                          of the two ends' along-wall correction - low-passed over
                          end_follow_tau_s seconds (0: the instantaneous correction) -
                          linearly in arc (all of an end's next to it, none at the other
                          end).  A common along-wall drift of the flow (a bias) is then
                          corrected for the whole wall, not only at the ends, while the
                          points keep their material spacing; the ends' frame-to-frame
                          jitter (a mask's basal end moves by a few tenths of a mm with the
                          phase) is not passed on.  With end_follow < 1 a constant bias is
                          only slowed down; with end_follow = 0 (the interior anchored by
                          nothing along the wall) 0.06 mm/frame of bias carries the
                          interior points past the basal ends within ~2 beats.
    """

    position_std_mm: float = 0.6
    position_measurement: str = "arclength"
    wall_pull: float = 0.5
    end_pull: float = 0.2
    ed_gate_frac: float = 0.03
    end_follow: float = 1.0
    end_follow_tau_s: float = 1.0
    ed_window_s: float = 2.5

    def __post_init__(self) -> None:
        if self.position_measurement not in POSITION_MEASUREMENTS:
            raise ValueError(f"position_measurement {self.position_measurement!r} is unknown; "
                             f"choose {' or '.join(POSITION_MEASUREMENTS)}")


_warm_s: float | None = None
warmup_breakdown_s: dict[str, float] = {}


def warmup() -> float:
    """Compile (or load from numba's on-disk cache) every numba function of the tracking
    path - the filter kernels, the RTS smoother (both :func:`.kalman.warmup`) and the
    centreline helpers; returns the seconds spent (0.0 when already done in this process).

    Call at start-up so that the first frame does not pay the compile cost.
    """
    global _warm_s
    if _warm_s is not None:
        return 0.0
    from . import centerline

    t0 = time.perf_counter()
    spent = kalman.warmup()  # 0.0 if something else (e.g. another tracker) did it already
    t1 = time.perf_counter()
    centerline.warmup()
    t2 = time.perf_counter()
    warmup_breakdown_s.update(kalman.warmup_breakdown_s if spent else {"kalman": 0.0, "rts": 0.0},
                              centreline=t2 - t1)
    _warm_s = t2 - t0
    return _warm_s


# --------------------------------------------------------------------------------------
# frame-level tracker: mask + flow -> filtered centreline
# --------------------------------------------------------------------------------------


@dataclass
class TrackResult:
    """One frame of the centreline tracker.

    points_mm           (N, 2) filtered centreline, [row, col] mm (NaN when not valid)
    velocity_mm_s       (N, 2) filtered velocity, [v_row, v_col] mm/s
    measured_points_mm  (N, 2) the centreline extracted from this frame's mask (NaN if none)
    t_s, dt_s           timestamp of the frame and interval from the previous one
    valid               True when points_mm is a tracked centreline
    flags               e.g. ``empty_mask``, ``two_components``, ``broken_mask``,
                        ``nan_flow``, ``no_flow``, ``dt_jump``, ``reinitialised``
    """

    points_mm: np.ndarray
    velocity_mm_s: np.ndarray
    measured_points_mm: np.ndarray
    t_s: float
    dt_s: float
    valid: bool
    flags: list[str] = field(default_factory=list)


class CentrelineTracker:
    """Per-frame fusion of the segmentation centreline with the dense flow.

    Flow convention (OpenCV's ``calcOpticalFlow*(prev, next)``, and the echo phantom's
    ``displacement``): (rows, cols, 2) in pixels, channels (dx=d_col, dy=d_row), the motion
    from the previous frame to this one, defined on the *previous* frame's pixel grid:
    tissue at (r, c) in the previous frame is at (r + dy, c + dx) in this one.

    Each frame:

    1. extract the centreline from the mask (:func:`.centerline.extract_centreline`);
    2. predict the tracked points over the interval dt_s;
    3. sample the flow at the points' previous (filtered) positions: the displacement d
       over the interval.  Velocity measurement z_v = d / dt, the mean velocity over the
       interval, which the model predicts as v(t) - a(t) dt / 2: the velocity rows of H
       are [0, I, -dt/2 I] (``velocity_lag_s = dt / 2``);
    4. position measurement (``TrackerConfig.position_measurement``):

       - ``"arclength"`` (default): point i is measured at the i-th of the 120 equally
         spaced centreline points (Østvik et al. 2018); the flow's velocity carries the
         points between frames, the mask holds them to the wall and to its two ends.
         Regional strain tends towards the global where the mask is all there is;
       - ``"projection"``: each interior point is carried by the flow
         (previous position + d) and moved ``wall_pull`` of the way to its orthogonal
         projection onto this frame's centreline - near end-diastole only (see
         ``TrackerConfig.ed_gate_frac``); the two end points move ``end_pull`` of the way
         to the centreline's ends, and the interior takes the lasting part of their
         along-wall correction, linearly in arc (``end_follow``).  Along the wall the
         points follow the tissue, across it the mask at ED, so material (regional) strain
         survives where the flow is accurate;
    5. one Kalman update with z = [position, velocity].

    A bad frame (empty or broken mask) gives an invalid result with flags, and the track
    re-initialises at the next good frame; so does an interval beyond ``max_gap_s``
    (``dt_jump``) - at that frame, as the frame itself is good.
    """

    def __init__(self, config: TrackerConfig | None = None, centreline_config=None,
                 record: bool = False):
        from .centerline import CentrelineConfig

        self.config = config or TrackerConfig()
        self.cl_config = centreline_config or CentrelineConfig()
        self.mode = self.config.position_measurement
        self.tracker = PointTracker(self.cl_config.n_points, self.config, record=record)
        self.t_prev: float | None = None
        self._len_hist: list[tuple[float, float]] = []
        self._follow_lp = [0.0, 0.0]

    def reset(self) -> None:
        self.tracker.needs_reinit = True
        self.tracker.initialised = False
        self.t_prev = None
        self._len_hist.clear()

    def smoothed_points_mm(self) -> np.ndarray:
        """Offline: RTS-smoothed centreline (T, N, 2) [row, col] mm over the frames since the
        last (re-)initialisation (needs ``record=True``), e.g. a whole recorded beat."""
        xs, _ = self.tracker.smooth()
        return xs[:, :, 0:2].copy()

    def _ed_gate(self, length_mm: float, t_s: float) -> float:
        """Weight (0..1) of the mask's pull on this frame: 1 near end-diastole - a centreline
        within ``ed_gate_frac`` of the longest one of the last ``ed_window_s`` seconds -
        falling linearly to 0 at ``2 ed_gate_frac`` below it."""
        hist = self._len_hist
        hist.append((t_s, length_mm))
        w = self.config.ed_window_s
        while hist and hist[0][0] < t_s - w:
            hist.pop(0)
        f = self.config.ed_gate_frac
        if not f or f <= 0:
            return 1.0
        lmax = max(v for _, v in hist)
        short = 1.0 - length_mm / lmax  # >= 0
        return float(min(1.0, max(0.0, 2.0 - short / f)))

    def step(self, mask: np.ndarray, flow: np.ndarray | None, t_s: float,
             spacing_mm) -> TrackResult:
        """One frame: mask (rows, cols), flow from the previous frame (or None), timestamp
        t_s in seconds, spacing_mm = (row, col) mm per pixel."""
        from .centerline import extract_centreline, project_onto_polyline
        from .sampling import sample_velocity_mm_s

        n = self.tracker.n
        spacing = np.asarray(spacing_mm, dtype=np.float64).reshape(2)
        flags: list[str] = []
        nan2 = np.full((n, 2), np.nan)
        dt = float("nan") if self.t_prev is None else float(t_s) - self.t_prev
        self.t_prev = float(t_s)

        cl = extract_centreline(mask, self.cl_config)
        flags += cl.flags
        meas_mm = cl.points_px * spacing if cl.ok else nan2.copy()

        reinit = self.tracker.needs_reinit or not self.tracker.initialised
        if not reinit:
            fl, force = self.tracker.check_dt(dt)
            flags += fl
            reinit = force
        if not cl.ok:
            self.tracker.needs_reinit = True
            return TrackResult(nan2, nan2.copy(), meas_mm, float(t_s), dt, False, flags)

        if self.mode == "projection":  # only that rule reads the ED gate (and its history)
            g = self._ed_gate(float(np.hypot(*np.diff(meas_mm, axis=0).T).sum()), float(t_s))
        if reinit:
            v0 = None
            if flow is not None and np.isfinite(dt) and dt > 0:
                # no previous positions to sample at: the displacement field around the
                # new points is close enough for a starting velocity
                sv = sample_velocity_mm_s(flow, cl.points_px, spacing, dt)
                flags += sv.flags
                v0 = sv.velocity_mm_s
            self.tracker.initialise(meas_mm, v0)
            self._follow_lp = [0.0, 0.0]
            flags.append("reinitialised")
            return TrackResult(self.tracker.positions_mm, self.tracker.velocities_mm_s,
                               meas_mm, float(t_s), dt, True, list(dict.fromkeys(flags)))

        prev_mm = self.tracker.positions_mm
        self.tracker.predict(dt)
        z = np.full((n, 4), np.nan)
        moved_mm = None
        if flow is None:
            flags.append("no_flow")
        else:
            sv = sample_velocity_mm_s(flow, prev_mm / spacing, spacing, dt)
            flags += sv.flags
            z[:, 2:] = sv.velocity_mm_s  # mean velocity over the interval: lag dt / 2
            moved_mm = prev_mm + sv.velocity_mm_s * dt  # each point carried by the flow
        if self.mode == "projection":
            # along the wall the points go where the flow carries them (the prediction where
            # there is no flow), across it towards where the mask puts the wall: the carried
            # points are projected onto this frame's centreline (the end segments extended,
            # so nothing piles up at an end) and moved wall_pull * g of the way there (g:
            # 1 near ED, 0 in systole, _ed_gate); the two basal ends move end_pull of the
            # way to where the mask ends.
            carried = self.tracker.x[:, :2].copy()
            has_flow = np.zeros(n, dtype=bool)
            if moved_mm is not None:
                has_flow = np.all(np.isfinite(moved_mm), axis=1)
                carried[has_flow] = moved_mm[has_flow]
            proj_px, _ = project_onto_polyline(carried / spacing, cl.points_px, extend=True)
            target = proj_px * spacing
            cfg = self.config
            pull = np.where(has_flow, cfg.wall_pull * g, 1.0)[:, None]
            pull[[0, -1]] = np.where(has_flow[[0, -1]], cfg.end_pull, 1.0)[:, None]
            target[[0, -1]] = meas_mm[[0, -1]]
            z[:, :2] = carried + pull * (target - carried)
            if cfg.end_follow and has_flow[0] and has_flow[-1]:
                # the interior follows the ends' lasting along-wall correction, linearly in
                # arc (all of it next to an end, none at the other): a common along-wall
                # drift of the flow is corrected for the whole wall, not only for the two
                # ends, and the material spacing of the points is kept.  Directions: unit
                # tangents (increasing arc) of this frame's centreline where the carried
                # points project, independent of the points' own order.
                cl_mm = cl.points_px * spacing
                cl_t = np.gradient(cl_mm, axis=0)
                cl_arc = np.concatenate([[0.0], np.cumsum(np.hypot(*np.diff(cl_mm, axis=0).T))])
                _, arc_mm = project_onto_polyline(carried, cl_mm, extend=True)
                tang = np.column_stack([np.interp(arc_mm, cl_arc, cl_t[:, 0]),
                                        np.interp(arc_mm, cl_arc, cl_t[:, 1])])
                tang /= np.maximum(np.hypot(tang[:, 0], tang[:, 1]), 1e-12)[:, None]
                a0 = float(np.dot(z[0, :2] - carried[0], tang[0]))
                a1 = float(np.dot(z[-1, :2] - carried[-1], tang[-1]))
                if cfg.end_follow_tau_s > 0:
                    # only the lasting part of the ends' correction (low-passed over
                    # end_follow_tau_s): a mask's basal ends jitter by a few tenths of a mm
                    # with the phase, a drift of the flow persists
                    w = 1.0 - math.exp(-dt / cfg.end_follow_tau_s)
                    lp = self._follow_lp
                    lp[0] += w * (a0 - lp[0])
                    lp[1] += w * (a1 - lp[1])
                    a0, a1 = lp[0], lp[1]
                u = np.clip(arc_mm / max(cl_arc[-1], 1e-12), 0.0, 1.0)
                shift = ((1.0 - u) * a0 + u * a1)[1:-1]
                z[1:-1, :2] += cfg.end_follow * shift[:, None] * tang[1:-1]
        else:
            z[:, :2] = meas_mm
        self.tracker.update(z, velocity_lag_s=0.5 * dt)
        flags += self.tracker.flags
        self.tracker.flags = []
        if self.tracker.needs_reinit:
            return TrackResult(nan2, nan2.copy(), meas_mm, float(t_s), dt, False, flags)
        return TrackResult(self.tracker.positions_mm, self.tracker.velocities_mm_s, meas_mm,
                           float(t_s), dt, True, list(dict.fromkeys(flags)))
