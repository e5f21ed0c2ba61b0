"""The cardiac-MR short-axis app: joint segmentation and motion (Qin et al. 2018), AHA
segments, circumferential and radial strain, per slice.

Routed by ``modality: "MR"``. Each slice of a stack travels as its own stream
(``NAME/slice-K``), so the app's per-stream state is one slice's. In the order of the
method::

    Preprocess -> SegmentAndMove -> SaxGeometry -> TrackWall -> MeasureSaxStrain
               -> CheckSaxMeasurability                                   (per frame)
    SummariseSaxBeat, SummariseStack                                       (per closed beat)

- :class:`SegmentAndMove` runs the joint network (role ``mr``) on the cycle's first frame
  (the reference) and this frame with the recurrent state the previous call returned:
  this frame's labels (0 background, 1 LV cavity, 2 LV myocardium, 3 RV cavity), its
  myocardium probability and, for the tracker, the motion from the previous frame.
- :class:`SaxGeometry`: areas, the LV centre, the RV insertion points (ends of the
  RV-myocardium contact) and the slice's AHA level.
- :class:`TrackWall`: 48 endo- and epicardial points on rays from the LV centre, followed
  by the numba Kalman filter (:mod:`streamer.measure.sax_tracking`; along the wall by the
  rays by default, by the flow on request, see there why).
- :class:`MeasureSaxStrain`: circumferential strain (mid-wall contour length) and radial
  strain (wall thickness) against the beat's end-diastole, globally and per AHA segment.
- :class:`CheckSaxMeasurability`: publishes the strains only where the frame passes
  quality control (else flags ``not_measurable:REASON``).

Beats: a cine MR series is ECG-gated, so phase 0 (``phase_index``) is end-diastole. A beat
closes at the last phase the stream's start announces (``n_phases``) or when the phase
index wraps; its summary (:class:`SummariseSaxBeat`) gives end-systole (smallest cavity),
peak strains globally and per segment, and the cavity's fractional area change. When every
slice of a stack has closed a beat, :class:`SummariseStack` adds the stack's volumes, EF
and mass to the last one's beat message (the app's one state shared between its streams,
bounded).

The slice's AHA level comes from its place in the stack (``slice_index`` of ``n_slices``
in the start, thirds base to apex; which end is basal from the stack's patient geometry,
the start's ``base_first``, or ``--sax-base``) or from ``--sax-level``; a live slice cannot
know which of the other slices contain LV (the stack summary can, and says so).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from engines.beat_networks import resample_cycle
from engines.spec import fit_to_input, percentile_normalise
from streamer.app import BEAT_CLOSED, SEND, App, BeatBoundary, BeatFrames, BeatStage, Field, Stage
from streamer.apps.common import Preprocess, TrackingGrid, beat_grade, softmax
from streamer.io.protocol import FrameMessage, WallMotionMessage
from streamer.measure.kalman import warmup as kalman_warmup
from streamer.measure.labels import argmax_labels
from streamer.measure.labels import warmup as labels_warmup
from streamer.measure.polar import epicardial_radius_px, normalised_crops, polar_segments
from streamer.measure.roi import LvRoi, normalise_beat, roi_flow
from streamer.measure.sampling import step_flow_from_reference
from streamer.measure.sax import (
    RvInsertion,
    SaxGeometryError,
    aha_segment_map,
    base_is_first,
    largest_lv_component,
    lv_centre_px,
    rv_insertion_points,
    sax_levels,
    screen_angle,
    slice_spacing_mm,
    stack_volumes,
)
from streamer.measure.sax_tracking import SaxTrack, SaxTrackerConfig, SaxWallTracker
from streamer.measure.strain import sax_strain
from streamer.options import option
from streamer.vocab import (
    AHA_NAMES,
    AHA_SEGMENTS,
    SAX_LEVELS,
    WALL_MOTION_CLASSES,
    WALL_MOTION_SCORES,
    MRLabel,
)

#: which LV pixels the segmentation keeps (MrShortAxisConfig.lv_component)
LV_COMPONENTS = ("largest", "all")
#: the joint engine's output channels (engines.nets.mr_joint)
_LOGITS, _FLOW, _STATE = slice(0, 4), slice(4, 6), 6


def labels_on_frame(grid_labels: np.ndarray, grid: TrackingGrid,
                    frame_shape: tuple[int, int], *, nearest: bool = True) -> np.ndarray:
    """A label map on the network's grid -> the same in the frame's rows and columns
    (nearest label; bilinear for a map of values with ``nearest=False``)."""
    fit = grid.fit
    inner = grid_labels[fit.top:fit.top + fit.rows, fit.left:fit.left + fit.cols]
    if inner.shape == tuple(frame_shape):
        return np.ascontiguousarray(inner)
    return cv2.resize(inner, (frame_shape[1], frame_shape[0]),
                      interpolation=cv2.INTER_NEAREST if nearest else cv2.INTER_LINEAR)


class SegmentAndMove(Stage):
    """Image -> ``grid_labels`` (uint8 on the network's grid), ``myocardium_p`` (the LV
    myocardium's probability there), ``flow`` (rows, cols, 2) [dx, dy] px from the previous
    frame to this one on the previous frame's grid (None on a cycle's first frame, and
    always None without ``step_flow``), the ``grid`` and the image on it as the network
    saw it (``grid_image``, normalised); with ``send_labels``, ``labels``: the label map in
    the frame's rows and columns (the result's array part). With
    ``lv_component="largest"`` the LV pixels outside the largest connected LV region become
    background, in the labels and in ``myocardium_p``
    (:func:`streamer.measure.sax.largest_lv_component`).

    The network's motion is against a reference, as it was trained: the cycle's first
    frame (the stream's first, then each frame whose phase index wraps: end-diastole of a
    gated cine), with the recurrent state starting at zero there. The frame-to-frame
    ``flow`` that :class:`TrackWall` reads when it follows the wall by the flow is derived
    from two consecutive motions against the reference
    (:func:`~streamer.measure.sampling.step_flow_from_reference`, ~2 ms), only when
    ``step_flow`` asks for it. Images are normalised per image
    (:func:`engines.spec.percentile_normalise`)."""

    name = "mr_net"
    inputs = ("frame", "image")
    outputs = ("grid_labels", "myocardium_p", "flow", "grid", "labels", "grid_image")

    def __init__(self, engine, send_labels: bool = False, *, lv_component: str,
                 step_flow: bool = False):
        if lv_component not in LV_COMPONENTS:
            raise ValueError(f"lv_component {lv_component!r} is unknown; choose "
                             f"{' or '.join(LV_COMPONENTS)}")
        self.engine, self.send_labels, self.lv_component = engine, send_labels, lv_component
        self.step_flow = step_flow
        self.size = tuple(engine.spec.size)
        self._reference: np.ndarray | None = None  # the cycle's first image, normalised
        self._state = np.zeros(self.size, np.float32)
        self._motion: np.ndarray | None = None     # reference -> previous frame (None: it is the reference)
        self._last_phase: int | None = None

    def process(self, frame: FrameMessage, image: np.ndarray) -> dict[str, Any]:
        x, fit = fit_to_input(percentile_normalise(image), self.size)
        phase = frame.phase_index
        wrapped = phase is not None and self._last_phase is not None and phase <= self._last_phase
        self._last_phase = phase
        first = self._reference is None or wrapped
        if first:  # a new cycle: this frame is the reference, the state starts at zero
            self._reference, self._motion = x, None
            self._state = np.zeros(self.size, np.float32)
        out = self.engine(np.stack([self._reference, x, self._state])[None])[0]
        flow = None
        if not first:
            self._state = np.ascontiguousarray(out[_STATE], np.float32)
            if self.step_flow:
                motion = np.ascontiguousarray(out[_FLOW].transpose(1, 2, 0), np.float32)
                flow = step_flow_from_reference(self._motion, motion)
                self._motion = motion
        p = softmax(out[_LOGITS].astype(np.float32))
        labels = argmax_labels(p)
        myocardium_p = p[MRLabel.LV_MYOCARDIUM]
        if self.lv_component == "largest":
            kept = largest_lv_component(labels)
            if kept is not labels:
                myocardium_p = np.where(kept == labels, myocardium_p, 0.0).astype(np.float32)
                labels = kept
        spacing = (frame.spacing_mm[0] / fit.scale, frame.spacing_mm[1] / fit.scale)
        grid = TrackingGrid(fit, spacing, tuple(image.shape[:2]))
        return {"grid_labels": labels, "myocardium_p": myocardium_p, "flow": flow,
                "grid": grid, "labels": labels_on_frame(labels, grid, image.shape[:2])
                if self.send_labels else None, "grid_image": x}


@dataclass(frozen=True)
class SliceConfig:
    """Where a slice lies in the heart (its AHA level)."""

    level: str = option(
        "auto", "AHA level of each slice: auto = its third of the stack (slice_index of "
        "n_slices in the stream's start), or basal, mid, apical for every slice",
        flag="--sax-level", choices=("auto", *SAX_LEVELS))
    base: str = option(
        "auto", "which end of a stack is basal for --sax-level auto: auto = as the stack's "
        "patient geometry says (the start's base_first; the first slice where it does not "
        "say), first (slice 0) or last", flag="--sax-base", choices=("auto", "first", "last"))

    def __post_init__(self):
        if self.level not in ("auto", *SAX_LEVELS):
            raise ValueError(f"level {self.level!r} is not auto or one of {SAX_LEVELS}")
        if self.base not in ("auto", "first", "last"):
            raise ValueError(f"base {self.base!r} is not auto, first or last")


def slice_level(meta: dict, config: SliceConfig) -> str | None:
    """A slice's AHA level: the configured one, else its third of the stack by the start's
    ``slice_index`` / ``n_slices``, the base at the end the start's ``base_first`` says
    (``--sax-base``); None when the start does not say where the slice lies."""
    if config.level != "auto":
        return config.level
    n, k = meta.get("n_slices"), meta.get("slice_index")
    if not isinstance(n, int) or not isinstance(k, int) or not 0 <= k < n:
        return None
    first = (meta.get("base_first") is not False) if config.base == "auto" \
        else config.base == "first"
    return sax_levels(np.ones(n, bool), base_first=first)[k]


#: the patient's anterior direction in DICOM patient axes (LPS: +y is posterior)
_ANTERIOR_LPS = np.array([0.0, -1.0, 0.0])


def anterior_direction(meta: dict) -> tuple[float, float]:
    """The patient's anterior in image axes [row, col] from the start's
    ``image_orientation_patient`` (row then column direction cosines: the direction of
    increasing column, then of increasing row); up (-1, 0), the standard display, when the
    start does not say or the anterior lies across the slice."""
    iop = meta.get("image_orientation_patient")
    if not isinstance(iop, (list, tuple)) or len(iop) != 6:
        return (-1.0, 0.0)
    along_cols, along_rows = np.asarray(iop[:3], float), np.asarray(iop[3:], float)
    d = np.array([_ANTERIOR_LPS @ along_rows, _ANTERIOR_LPS @ along_cols])
    norm = float(np.hypot(*d))
    if not np.isfinite(norm) or norm < 0.3:
        return (-1.0, 0.0)
    return (float(d[0] / norm), float(d[1] / norm))


@dataclass(frozen=True)
class Insertion:
    """The RV insertion points of a frame, on the grid: angles (screen, around the LV
    centre, in mm) and points (mm), with the AHA numbering direction ``ccw``."""

    anterior_rad: float
    anterior_mm: np.ndarray
    inferior_mm: np.ndarray
    ccw: bool


class SaxGeometry(Stage):
    """Labels -> ``areas_mm2`` (LV cavity, LV myocardium, RV cavity), the RV ``insertion``
    (None where the RV does not touch the myocardium: flag ``no_rv_insertion``),
    ``rv_insertion_mm`` (in the frame's mm), the slice's ``aha_level`` and the frame's
    ``cardiac_phase`` (its phase index, for the stack's summary). Which insertion point is
    anterior follows the start's ``image_orientation_patient`` (:func:`anterior_direction`;
    up on screen when it does not say)."""

    name = "geometry"
    inputs = ("frame", "grid_labels", "grid", "stream_meta")
    outputs = ("areas_mm2", "insertion", "rv_insertion_mm", "aha_level", "cardiac_phase")

    def __init__(self, config: SliceConfig = SliceConfig()):
        self.config = config
        self._meta: dict | None = None  # the stream's start meta, read once

    def _read_meta(self, meta: dict) -> None:
        self._meta = meta
        self._level = slice_level(meta, self.config)
        self._anterior = anterior_direction(meta)

    def process(self, frame: FrameMessage, grid_labels: np.ndarray, grid: TrackingGrid,
                stream_meta: dict) -> dict[str, Any]:
        if stream_meta is not self._meta:
            self._read_meta(stream_meta)
        sp = np.asarray(grid.spacing_mm, np.float64)
        px_mm2 = float(sp[0] * sp[1])
        counts = np.bincount(grid_labels.ravel(), minlength=4)
        areas = {name: round(float(counts[label]) * px_mm2, 2) for name, label in
                 (("lv_cavity", MRLabel.LV_CAVITY), ("lv_myocardium", MRLabel.LV_MYOCARDIUM),
                  ("rv_cavity", MRLabel.RV_CAVITY))}
        level = self._level
        flags = [] if level is not None else ["no_aha_level"]
        insertion = None
        try:
            ins = rv_insertion_points(grid_labels, anterior_dir=self._anterior)
        except SaxGeometryError:
            flags.append("no_rv_insertion")
        else:
            centre = ins.centre_px * sp
            ant, inf = ins.anterior_px * sp, ins.inferior_px * sp
            insertion = Insertion(float(screen_angle(ant, centre)[0]), ant, inf, ins.ccw)
        points = None if insertion is None else {
            "anterior": grid.to_frame_mm(insertion.anterior_mm).round(2).tolist(),
            "inferior": grid.to_frame_mm(insertion.inferior_mm).round(2).tolist()}
        return {"areas_mm2": areas, "insertion": insertion, "rv_insertion_mm": points,
                "aha_level": level, "cardiac_phase": frame.phase_index, "flags": flags}


class TrackWall(Stage):
    """Labels, myocardium probability and flow -> the tracked wall (``track``, a
    :class:`~streamer.measure.sax_tracking.SaxTrack` on the grid) and its contours in the
    frame's mm (``endo_mm``, ``epi_mm``: 48 [row, col] each, point i of one facing point i
    of the other)."""

    name = "track"
    inputs = ("frame", "grid_labels", "myocardium_p", "flow", "grid")
    outputs = ("track", "endo_mm", "epi_mm")

    def __init__(self, config: SaxTrackerConfig = SaxTrackerConfig()):
        self.tracker = SaxWallTracker(config)

    def process(self, frame: FrameMessage, grid_labels, myocardium_p, flow,
                grid) -> dict[str, Any]:
        track = self.tracker.step(grid_labels, flow, frame.t_acq_ns / 1e9, grid.spacing_mm,
                                  myocardium_p)
        if not track.valid:
            return {"track": track, "endo_mm": None, "epi_mm": None, "flags": track.flags}
        return {"track": track,
                "endo_mm": grid.to_frame_mm(track.endo_mm).round(3).tolist(),
                "epi_mm": grid.to_frame_mm(track.epi_mm).round(3).tolist(),
                "flags": track.flags}


@dataclass(frozen=True)
class SaxSample:
    """What the beat summary keeps of a frame: time, tracked contours (grid mm), cavity
    area, and the AHA frame of its beat's end-diastole (RV insertion, level)."""

    t_s: float
    endo_mm: np.ndarray
    epi_mm: np.ndarray
    cavity_mm2: float
    insertion: Insertion | None
    level: str | None


@dataclass
class _Reference:
    """The beat's end-diastole: its contours, LV centre, RV insertion and level."""

    seq: int
    phase_index: int | None
    endo_mm: np.ndarray
    epi_mm: np.ndarray
    insertion: Insertion | None
    level: str | None


def strain_of(endo_mm: np.ndarray, epi_mm: np.ndarray, insertion: Insertion | None,
              level: str | None):
    """:func:`~streamer.measure.strain.sax_strain` of (T, M, 2) contours against the first,
    in the AHA frame of ``insertion`` and ``level`` (without them the segments are
    meaningless: the caller publishes only the global values)."""
    return sax_strain(endo_mm, epi_mm, insertion.anterior_rad if insertion is not None else 0.0,
                      level or "mid", ed_index=0,
                      ccw=insertion.ccw if insertion is not None else True)


def _segments(values: np.ndarray, ids: np.ndarray) -> dict[str, float]:
    return {str(int(i)): round(float(v), 3) for i, v in zip(ids, values) if np.isfinite(v)}


class MeasureSaxStrain(Stage):
    """Tracked wall -> circumferential and radial strain against the beat's end-diastole,
    global (``*_unchecked_pct``) and per AHA segment, the circumferential strain rate,
    ``beat``, ``phase``; ``sax_sample`` for the beat summary and ``beat_closed`` when the
    slice's cycle completes.

    Beats follow the gated cine's phases: one opens at phase 0 (end-diastole; or at the
    stream's first frame) and closes at the start's last phase (``n_phases - 1``:
    ``closed_by`` last_phase) or at the next phase 0 (``next_ed``), whether or not the wall
    was tracked throughout. Strain is against the beat's first tracked frame (flag
    ``reference_not_ed`` when that is not phase 0). A track that is lost and found again
    follows new points: strain restarts there (flag ``strain_restarted``). The closed beat
    says the phase of its first reference (``reference_phase``) and the last frame tracked
    against it without a break (``reference_until_seq``): the part of the beat whose strain
    is against end-diastole."""

    name = "strain"
    inputs = ("frame", "stream_meta", "track", "insertion", "aha_level", "areas_mm2")
    outputs = ("circumferential_unchecked_pct", "radial_unchecked_pct",
               "segment_circumferential_unchecked_pct", "segment_radial_unchecked_pct",
               "circumferential_strain_rate_pct_s", "beat", "phase", "sax_sample", BEAT_CLOSED)

    def __init__(self):
        self.ref: _Reference | None = None
        self.beat_index = 0
        self.beat_start_seq: int | None = None  # None: no beat open
        self.last_phase: int | None = None
        self._previous: tuple[float, float] | None = None  # (t_s, circumferential %)
        # the beat's first reference: its phase and the last frame tracked against it
        # without a break ([phase, seq]; None before the beat's first tracked frame), and
        # whether it is still the reference
        self._first: list | None = None
        self._first_live = False

    def _close(self, end_seq: int, closed_by: str) -> BeatBoundary:
        first = self._first or [None, None]
        boundary = BeatBoundary(self.beat_index, self.beat_start_seq, end_seq,
                                {"closed_by": closed_by, "reference_phase": first[0],
                                 "reference_until_seq": first[1]})
        self.beat_index += 1
        self.beat_start_seq, self.ref = None, None
        return boundary

    def process(self, frame: FrameMessage, stream_meta: dict, track: SaxTrack, insertion,
                aha_level, areas_mm2) -> dict[str, Any]:
        out: dict[str, Any] = dict.fromkeys(self.outputs)
        flags: list[str] = []
        phase, n_phases = frame.phase_index, stream_meta.get("n_phases")
        wrapped = phase is not None and self.last_phase is not None and phase <= self.last_phase
        self.last_phase = phase
        if wrapped and self.beat_start_seq is not None:  # this phase 0 closes the open beat
            out[BEAT_CLOSED] = self._close(frame.seq, "next_ed")
        if self.beat_start_seq is None:
            self.beat_start_seq, self.ref = frame.seq, None
            self._first, self._first_live = None, False
        out["beat"] = self.beat_index
        last = isinstance(n_phases, int) and phase == n_phases - 1
        if not track.valid:
            self.ref = None  # a gap in the track: strain starts afresh after it
        elif "reinitialised" in track.flags and self.ref is not None:
            self.ref = None
            flags.append("strain_restarted")
        if self.ref is None:
            self._first_live = False
        if track.valid:
            if self.ref is None:
                self.ref = _Reference(frame.seq, phase, track.endo_mm, track.epi_mm,
                                      insertion, aha_level)
                self._previous = None
                if self._first is None:
                    self._first, self._first_live = [phase, frame.seq], True
                if phase != 0:
                    flags.append("reference_not_ed")
            if self._first_live:
                self._first[1] = frame.seq
            out.update(self._strain(frame, track, areas_mm2))
        if last and out[BEAT_CLOSED] is None:
            out[BEAT_CLOSED] = self._close(frame.seq, "last_phase")
        return {**out, "flags": flags}

    def _strain(self, frame: FrameMessage, track: SaxTrack, areas_mm2) -> dict[str, Any]:
        ref = self.ref
        out = {"phase": "ED" if frame.seq == ref.seq and ref.phase_index == 0 else None,
               "sax_sample": SaxSample(track.t_s, track.endo_mm, track.epi_mm,
                                       areas_mm2["lv_cavity"], ref.insertion, ref.level)}
        s = strain_of(np.stack([ref.endo_mm, track.endo_mm]),
                      np.stack([ref.epi_mm, track.epi_mm]), ref.insertion, ref.level)
        circ, rad = float(s.circumferential_pct[1]), float(s.radial_pct[1])
        rate = None
        if self._previous is not None and track.t_s > self._previous[0]:
            rate = round((circ - self._previous[1]) / (track.t_s - self._previous[0]), 2)
        self._previous = (track.t_s, circ)
        out.update(circumferential_unchecked_pct=round(circ, 3),
                   radial_unchecked_pct=round(rad, 3),
                   circumferential_strain_rate_pct_s=rate)
        if ref.insertion is not None and ref.level is not None:
            out.update(segment_circumferential_unchecked_pct=_segments(
                           s.segment_circumferential_pct[1], s.segment_ids),
                       segment_radial_unchecked_pct=_segments(s.segment_radial_pct[1],
                                                              s.segment_ids))
        return out


@dataclass(frozen=True)
class SaxQualityConfig:
    """When a frame's short-axis strain is a measurement; ranges are (low, high) %."""

    circumferential_range_pct: tuple[float, float] = (-45.0, 25.0)
    radial_range_pct: tuple[float, float] = (-60.0, 150.0)
    #: the share of a beat's frames whose wall was followed, for its grade: good, fair
    good_fraction: float = 0.9
    fair_fraction: float = 0.6

    def in_range(self, circ: float, rad: float) -> bool:
        lo_c, hi_c = self.circumferential_range_pct
        lo_r, hi_r = self.radial_range_pct
        return lo_c <= circ <= hi_c and lo_r <= rad <= hi_r


class CheckSaxMeasurability(Stage):
    """Strain -> the published ``circumferential_strain_pct``, ``radial_strain_pct`` and
    their per-segment values, or none and the reasons why.

    A frame's strain is a measurement when the wall is tracked (``tracking``), the beat's
    end-diastole found the RV insertion points and the slice's level (``segments``: only
    the per-segment values are withheld) and the strains are in physiological ranges
    (``strain_range``)."""

    name = "quality"
    inputs = ("track", "circumferential_unchecked_pct", "radial_unchecked_pct",
              "segment_circumferential_unchecked_pct", "segment_radial_unchecked_pct")
    outputs = ("circumferential_strain_pct", "radial_strain_pct",
               "segment_circumferential_strain_pct", "segment_radial_strain_pct",
               "measurable")

    def __init__(self, config: SaxQualityConfig = SaxQualityConfig()):
        self.config = config

    def process(self, track, circumferential_unchecked_pct, radial_unchecked_pct,
                segment_circumferential_unchecked_pct,
                segment_radial_unchecked_pct) -> dict[str, Any]:
        out = dict.fromkeys(self.outputs)
        circ, rad = circumferential_unchecked_pct, radial_unchecked_pct
        if not track.valid or circ is None:
            return {**out, "measurable": False, "flags": ["not_measurable:tracking"]}
        if not self.config.in_range(circ, rad):
            return {**out, "measurable": False, "flags": ["not_measurable:strain_range"]}
        out.update(circumferential_strain_pct=circ, radial_strain_pct=rad, measurable=True)
        seg_c, seg_r = segment_circumferential_unchecked_pct, segment_radial_unchecked_pct
        if seg_c is None:
            return {**out, "flags": ["not_measurable:segments"]}
        out.update(segment_circumferential_strain_pct=seg_c, segment_radial_strain_pct=seg_r)
        return out


class SummariseSaxBeat(BeatStage):
    """Per slice and beat: end-systole (the frame of smallest LV cavity), the cavity's
    areas at ED and ES and its fractional area change, peak circumferential (most negative)
    and radial (largest) strain, globally and per AHA segment; and a grade from the share
    of its frames that were measurable (good >= 90 %, fair >= 60 %, else poor: no peak
    numbers). The peaks are over the frames tracked against end-diastole without a break
    (up to the boundary's ``reference_until_seq``): a track lost and found again in
    diastole leaves the systolic peaks measured, one lost before end-systole makes the
    beat poor (flag ``es_not_tracked``), as does a track that did not start at
    end-diastole (phase 0)."""

    name = "beat_summary"
    keeps = ("sax_sample", "measurable")
    outputs = ("es_seq", "ed_cavity_area_mm2", "es_cavity_area_mm2",
               "fractional_area_change_pct", "peak_circumferential_strain_pct",
               "peak_radial_strain_pct", "segment_peak_circumferential_strain_pct",
               "segment_peak_radial_strain_pct", "aha_level", "quality",
               "measurable_fraction", "duration_s")

    def __init__(self, config: SaxQualityConfig = SaxQualityConfig()):
        self.config = config

    def process(self, beat: BeatFrames) -> dict[str, Any]:
        out = dict.fromkeys(self.outputs)
        samples, measurable = beat.values["sax_sample"], beat.values["measurable"]
        if beat.boundary.fields.get("closed_by") == "next_ed":  # the closing frame opens the next
            samples, measurable = samples[:-1], measurable[:-1]
        if (len(samples) < 3 or beat.seqs[0] != beat.boundary.ed_seq
                or beat.boundary.fields.get("reference_phase") != 0):  # not from end-diastole
            return {**out, "quality": "poor"}
        fraction = sum(bool(m) for m in measurable) / len(measurable)
        cfg = self.config
        quality = beat_grade(fraction, cfg.good_fraction, cfg.fair_fraction)
        cavity = np.array([s.cavity_mm2 for s in samples])
        es = int(np.argmin(cavity))
        out.update(es_seq=beat.seqs[es], ed_cavity_area_mm2=round(float(cavity[0]), 2),
                   es_cavity_area_mm2=round(float(cavity[es]), 2),
                   fractional_area_change_pct=round(100.0 * (1 - cavity[es] / cavity[0]), 2)
                   if cavity[0] > 0 else None,
                   quality=quality, measurable_fraction=round(fraction, 3),
                   duration_s=round(samples[-1].t_s - samples[0].t_s, 4))
        until = beat.boundary.fields.get("reference_until_seq")
        if until is not None:  # the frames whose strain is against end-diastole
            samples = [x for x, q in zip(samples, beat.seqs) if q <= until]
        if es >= len(samples):
            return {**out, "quality": "poor", "flags": ["es_not_tracked"]}
        first = samples[0]
        s = strain_of(np.stack([x.endo_mm for x in samples]),
                      np.stack([x.epi_mm for x in samples]), first.insertion, first.level)
        circ, rad = float(np.min(s.circumferential_pct)), float(np.max(s.radial_pct))
        if quality == "poor" or not cfg.in_range(circ, rad):
            return {**out, "quality": "poor"}
        out.update(peak_circumferential_strain_pct=round(circ, 3),
                   peak_radial_strain_pct=round(rad, 3), aha_level=first.level)
        if first.insertion is not None and first.level is not None:
            out.update(segment_peak_circumferential_strain_pct=_segments(
                           np.min(s.segment_circumferential_pct, 0), s.segment_ids),
                       segment_peak_radial_strain_pct=_segments(
                           np.max(s.segment_radial_pct, 0), s.segment_ids))
        return out


@dataclass
class SliceCycle:
    """One slice's areas over a cycle, for its stack's volumes: (phases,) mm², NaN where a
    phase was not analysed."""

    slice_index: int
    position_mm: float | None
    thickness_mm: float | None
    cavity_mm2: np.ndarray
    myocardium_mm2: np.ndarray


class StackCycles:
    """The latest cycle of every slice of the stacks one app follows, by stack id: what a
    per-stack measurement needs (a :class:`SliceCycle`, a :class:`SliceBeat`: anything with a
    ``slice_index``), gathered slice stream by slice stream. Bounded: at most ``max_stacks``
    stacks are waiting for slices (beyond that the stack heard of longest ago is
    forgotten), and a stack of more than ``max_slices`` slices is not gathered."""

    def __init__(self, max_stacks: int = 16, max_slices: int = 64):
        self.max_stacks, self.max_slices = max_stacks, max_slices
        self._stacks: dict[str, dict[int, Any]] = {}
        #: how often each stack has been completed (the most recent ``max_stacks`` stacks)
        self.rounds: dict[str, int] = {}
        # slice streams of one stack may close beats at once (serve --max-batch runs
        # streams in threads)
        self._lock = threading.Lock()

    def add(self, stack_id: str, n_slices: int, cycle) -> list | None:
        """Record a slice's cycle; every slice's, in slice order, once all ``n_slices`` have
        one (the stack then starts afresh)."""
        if not 0 < n_slices <= self.max_slices:
            return None
        with self._lock:
            return self._add(stack_id, n_slices, cycle)

    def _add(self, stack_id: str, n_slices: int, cycle) -> list | None:
        slices = self._stacks.pop(stack_id, {})
        slices[cycle.slice_index] = cycle
        if len(slices) >= n_slices:
            self.rounds[stack_id] = self.rounds.pop(stack_id, 0) + 1
            while len(self.rounds) > self.max_stacks:
                del self.rounds[next(iter(self.rounds))]
            return [slices[k] for k in sorted(slices)]
        self._stacks[stack_id] = slices  # most recent last
        while len(self._stacks) > self.max_stacks:
            del self._stacks[next(iter(self._stacks))]
        return None


#: a slice holds LV when its end-diastolic myocardium covers at least this area
MIN_LV_MYOCARDIUM_MM2 = 50.0


def stack_levels(myocardium_ed_mm2, lv_ed_mm2) -> list[str | None]:
    """Each slice's AHA level (None: no LV) from the slices that hold LV myocardium at
    end-diastole, thirds base to apex, the base where the LV (cavity and myocardium) is
    larger; :class:`SaxGeometryError` when no slice holds LV."""
    holds_lv = np.nan_to_num(np.asarray(myocardium_ed_mm2, float)) >= MIN_LV_MYOCARDIUM_MM2
    lv_area = np.where(holds_lv, np.nan_to_num(np.asarray(lv_ed_mm2, float)), 0.0)
    return sax_levels(holds_lv, base_first=base_is_first(lv_area))


def _cover_fraction(cavity_ed_mm2: np.ndarray) -> float:
    largest = float(np.nanmax(cavity_ed_mm2)) if np.isfinite(cavity_ed_mm2).any() else 0.0
    if largest <= 0:
        return float("inf")
    return float(max(np.nan_to_num(cavity_ed_mm2[0]), np.nan_to_num(cavity_ed_mm2[-1])) / largest)


class SummariseStack(BeatStage):
    """Per stack: when every slice of the stack (``stack_id``, ``n_slices`` and
    ``slice_index`` of each slice's start) has closed a beat, the LV volumes by disk
    summation of their areas (:func:`streamer.measure.sax.stack_volumes`: end-diastole and
    end-systole the phases of the largest and smallest total cavity), stroke volume, EF and
    myocardial mass, and each slice's AHA level from the slices that hold LV myocardium
    (thirds base to apex, the base where the LV is larger). Written as ``stack`` on the
    beat message of the slice that completes the stack; volumes only when the stack covers
    the LV (``covers_lv``: each end slice's end-diastolic cavity is under
    ``max_end_cavity_fraction`` of the largest slice's)."""

    name = "stack_summary"
    keeps = ("areas_mm2", "cardiac_phase", "stream_meta")
    outputs = ("stack",)
    max_end_cavity_fraction = 0.25

    def __init__(self, cycles: StackCycles):
        self.cycles = cycles

    def process(self, beat: BeatFrames) -> dict[str, Any]:
        meta = beat.values["stream_meta"][0] if beat.seqs else {}
        stack_id, n_slices = meta.get("stack_id"), meta.get("n_slices")
        k, n_phases = meta.get("slice_index"), meta.get("n_phases")
        if not (isinstance(stack_id, str) and isinstance(n_slices, int)
                and isinstance(k, int) and isinstance(n_phases, int)):
            return {"stack": None}
        cavity, myo = np.full(n_phases, np.nan), np.full(n_phases, np.nan)
        for areas, phase in zip(beat.values["areas_mm2"], beat.values["cardiac_phase"]):
            if 0 <= phase < n_phases:
                cavity[phase], myo[phase] = areas["lv_cavity"], areas["lv_myocardium"]
        slices = self.cycles.add(stack_id, n_slices, SliceCycle(
            k, meta.get("slice_position_mm"), meta.get("slice_thickness_mm"), cavity, myo))
        return {"stack": None if slices is None else self.summary(stack_id, slices)}

    def summary(self, stack_id: str, slices: list[SliceCycle]) -> dict[str, Any]:
        cav = np.stack([s.cavity_mm2 for s in slices])
        myo = np.stack([s.myocardium_mm2 for s in slices])
        out: dict[str, Any] = {"stack_id": stack_id, "n_slices": len(slices)}
        try:
            levels = stack_levels(myo[:, 0], cav[:, 0] + myo[:, 0])
        except SaxGeometryError:
            return {**out, "slice_levels": None, "covers_lv": False}
        out.update(slice_levels=levels)
        positions = [s.position_mm for s in slices]
        thickness = slices[0].thickness_mm
        missing = int(np.isnan(cav).any(axis=0).sum())
        covers = _cover_fraction(cav[:, 0]) < self.max_end_cavity_fraction
        out.update(covers_lv=bool(covers), phases_missing=missing)
        if not covers or missing or any(p is None for p in positions):
            return out
        spacing = slice_spacing_mm(positions, thickness)
        v = stack_volumes(cav, myo, spacing)
        return {**out, "slice_spacing_mm": round(spacing, 3), "ed_phase": v.ed_phase,
                "es_phase": v.es_phase,
                "edv_ml": round(v.edv_ml, 2), "esv_ml": round(v.esv_ml, 2),
                "sv_ml": round(v.sv_ml, 2), "ef_pct": round(v.ef_pct, 2),
                "mass_g": round(v.mass_g, 2)}


@dataclass
class SliceBeat:
    """What one slice's beat gives its stack's wall-motion scoring: the LV crops over the
    beat (``crops``: (T, 160, 160) uint8, :func:`streamer.measure.polar.normalised_crops`),
    its end-diastolic RV insertion points (the sectors' anchor) and areas (the stack's
    levels), or, where the slice cannot be scored, ``reason``."""

    slice_index: int
    myocardium_ed_mm2: float = 0.0
    lv_ed_mm2: float = 0.0
    crops: np.ndarray | None = None
    insertion: RvInsertion | None = None
    reason: str | None = None


def starts_at_end_diastole(beat: BeatFrames) -> bool:
    """Whether a beat's kept frames start at its first frame and that frame is phase 0 of
    the gated cine (end-diastole), whether or not the wall tracker could start there."""
    return bool(beat.seqs) and beat.seqs[0] == beat.boundary.ed_seq \
        and beat.values["cardiac_phase"][0] == 0


def beat_images(beat: BeatFrames, min_frames: int) -> tuple[list, list, str | None]:
    """A beat's images and labels as the MR network saw them (the closing frame of a beat
    closed by the next end-diastole left out: it opens the next beat), and why the beat
    cannot be analysed (``beat_incomplete``, ``not_from_end_diastole``, ``too_few_frames``;
    None when it can)."""
    images, labels = beat.values["grid_image"], beat.values["grid_labels"]
    if beat.boundary.fields.get("closed_by") == "next_ed":
        images, labels = images[:-1], labels[:-1]
    if beat.incomplete:
        return images, labels, "beat_incomplete"
    if not labels or not starts_at_end_diastole(beat):
        return images, labels, "not_from_end_diastole"
    if len(images) < min_frames:
        return images, labels, "too_few_frames"
    return images, labels, None


def stack_stream(stream: str) -> str:
    """The stack's name of a slice stream ``NAME/slice-K`` (streamer.replay.slice_stream_name):
    ``NAME``."""
    name, sep, k = stream.rpartition("/slice-")
    return name if sep and k.isdigit() else stream


@dataclass(frozen=True)
class WallMotionConfig:
    """Segmental wall-motion scores per stack and beat (Cardiac-MOS)."""

    mode: str = option(
        "on", "score the 16 AHA segments of each short-axis stack per beat (Cardiac-MOS: "
        "normal, hypokinetic, akinetic, dyskinetic, and the motion score index) once every "
        "slice of the stack has closed a beat, as a wall_motion message; the network runs "
        "in eager torch fp32 on the CPU whatever --backend says (once per stack and beat); "
        "off: none", flag="--wall-motion", choices=("on", "off"))
    weights: str | None = option(
        None, "Cardiac-MOS weights, a state dict from python -m engines.train.wall_motion "
        "(default: the shipped engines/weights/wall_motion.pt)", flag="--wall-motion-weights",
        metavar="PATH")

    def __post_init__(self):
        if self.mode not in ("on", "off"):
            raise ValueError(f"wall motion {self.mode!r} is not on or off")


class ScoreWallMotion(BeatStage):
    """Per stack and beat: the 16 AHA segments scored by Cardiac-MOS (Xue et al. 2018).

    Each slice's closed beat becomes a :class:`SliceBeat`: its frames as the network saw
    them (``grid_image``) cropped around the LV of its end-diastolic labels at 1.6 x the
    epicardial radius, 160 x 160, percentile-scaled and CLAHE'd. When every slice of the
    stack has one (:class:`StackCycles`), the slices that hold LV are split into thirds
    base to apex (:func:`stack_levels`); per level the usable slice nearest the third's
    middle is resampled to polar coordinates per AHA segment
    (:func:`streamer.measure.polar.polar_segments`, sectors from the RV insertion points
    of the level :attr:`anchor_order` names) and all segments go through the network at
    once (the subject-level blocks see the whole heart). The result is a ``wall_motion`` message (docs/protocol.md): per segment
    the score 1-4, its label and the four probabilities, the motion score index over the
    scored segments, and which segments are missing and why. Slices of other frame counts
    are resampled in beat time to the first scored slice's.

    The network was trained on phantom hearts with exact per-segment labels (no public
    data carries them); the message says so (``trained_on``)."""

    name = "wall_motion"
    keeps = ("grid_image", "grid_labels", "grid", "stream_meta", "cardiac_phase")
    outputs = ()
    sends = ("wall_motion",)
    #: frames kept per beat: 64 covers a cine of up to 64 phases (the paper's are 20-25)
    max_frames = 64
    #: the fewest frames of a beat that is scored
    min_frames = 8
    #: what the scores were learnt on
    trained_on = "phantom hearts (calib.datasets.wall_motion_stack_configs)"
    #: whose RV insertion points anchor each level's sectors, in order of preference (the
    #: first level scored that found them): the apex's own are the least reliable (the RV
    #: barely reaches it: its contact arc is short and its ends wander), so the apical
    #: sectors take the mid slice's angles, around the apical slice's own LV centre
    anchor_order = {"basal": ("basal", "mid", "apical"), "mid": ("mid", "basal", "apical"),
                    "apical": ("mid", "apical", "basal")}

    def __init__(self, scorer, stacks: StackCycles):
        self.scorer, self.stacks = scorer, stacks   # both shared by the app's streams

    def process(self, beat: BeatFrames) -> dict[str, Any]:
        meta = beat.values["stream_meta"][0] if beat.seqs else {}
        stack_id, n_slices, k = meta.get("stack_id"), meta.get("n_slices"), meta.get("slice_index")
        if not (isinstance(stack_id, str) and isinstance(n_slices, int) and isinstance(k, int)):
            return {}                                   # a single slice: no stack to score
        slices = self.stacks.add(stack_id, n_slices, self.slice_beat(beat, meta, k))
        if slices is None:
            return {}
        index = self.stacks.rounds[stack_id] - 1          # read before another stack's
        fields = {"stack_id": stack_id, **self.score(slices)}
        return {SEND: [WallMotionMessage(stream=stack_stream(beat.stream), beat=index,
                                         fields=fields)]}

    def slice_beat(self, beat: BeatFrames, meta: dict, k: int) -> SliceBeat:
        """A slice's beat as its stack's scoring needs it (or why it cannot be used)."""
        images, labels, reason = beat_images(beat, self.min_frames)
        if not labels:
            return SliceBeat(k, reason="no_frames")
        spacing = np.asarray(beat.values["grid"][0].spacing_mm, float)
        counts = np.bincount(labels[0].ravel(), minlength=4) * float(spacing[0] * spacing[1])
        myo = float(counts[MRLabel.LV_MYOCARDIUM])
        base = SliceBeat(k, myo, float(counts[MRLabel.LV_CAVITY] + myo), reason=reason)
        if base.reason is not None or myo < MIN_LV_MYOCARDIUM_MM2:
            base.reason = base.reason or "no_lv"
            return base
        try:
            base.insertion = rv_insertion_points(labels[0], anterior_dir=anterior_direction(meta))
        except SaxGeometryError:   # another slice's insertion may anchor its sectors
            centre = lv_centre_px(labels[0])
        else:
            centre = base.insertion.centre_px
        base.crops = normalised_crops(np.stack(images), centre, epicardial_radius_px(labels[0]))
        return base

    def score(self, slices: list[SliceBeat]) -> dict[str, Any]:
        """The wall_motion fields of a stack whose slices are all in."""
        chosen, reasons = {}, {}
        try:
            levels = stack_levels([s.myocardium_ed_mm2 for s in slices],
                                  [s.lv_ed_mm2 for s in slices])
        except SaxGeometryError:
            levels = [None] * len(slices)
        for level in SAX_LEVELS:
            idx = [i for i, lv in enumerate(levels) if lv == level]
            usable = [i for i in idx if slices[i].crops is not None]
            if usable:
                middle = (idx[0] + idx[-1]) / 2
                chosen[level] = min(usable, key=lambda i: (abs(i - middle), i))
            else:
                reasons[level] = ("no_lv_slice" if not idx else
                                  slices[idx[(len(idx) - 1) // 2]].reason)
        found = [level for level in chosen if slices[chosen[level]].insertion is not None]
        anchors = {level: next((a for a in self.anchor_order[level] if a in found), None)
                   for level in chosen}
        for level in [level for level, a in anchors.items() if a is None]:
            reasons[level] = "no_rv_insertion"
            del chosen[level], anchors[level]
        polar: dict[int, np.ndarray] = {}
        frames = None
        for level, i in chosen.items():
            anchor = slices[chosen[anchors[level]]].insertion
            for aha, segment in polar_segments(slices[i].crops, anchor, level).items():
                frames = segment.shape[0] if frames is None else frames
                polar[aha] = resample_cycle(segment, frames)
        ids = sorted(polar)
        p = self.scorer(np.stack([polar[a] for a in ids])) if ids else np.zeros((0, 4))
        segments = []
        for aha in range(1, 17):
            if aha in polar:
                q = p[ids.index(aha)]
                label = WALL_MOTION_CLASSES[int(np.argmax(q))]
                segments.append({"aha": aha, "name": AHA_NAMES[aha],
                                 "score": WALL_MOTION_SCORES[label], "label": label,
                                 "p": [round(float(v), 4) for v in q]})
            else:
                segments.append({"aha": aha, "name": AHA_NAMES[aha], "score": None,
                                 "label": None, "p": None})
        scores = [s["score"] for s in segments if s["score"] is not None]
        return {"segments": segments,
                "msi": round(float(np.mean(scores)), 3) if scores else None,
                "scored_segments": len(scores),
                "missing_segments": [a for a in range(1, 17) if a not in polar],
                "missing_reasons": reasons,
                "slices": {level: chosen.get(level) for level in SAX_LEVELS},
                "anchors": {level: anchors.get(level) for level in SAX_LEVELS},
                "frames": frames, "trained_on": self.trained_on}


@dataclass(frozen=True)
class InfarctConfig:
    """Pixel-level infarct maps per slice and beat from motion (OF-RNN)."""

    mode: str = option(
        "on", "map the infarct of each slice's beat from its motion, no contrast agent (OF-RNN: "
        "the LV region's 11x11 patches over the beat and its DIS optical flow): the beat "
        "message's infarct_area_mm2 and infarct_segment_share, and with --mr-labels the "
        "map itself (infarct_p); eager torch fp32 on one CPU thread whatever --backend "
        "says; off: none", flag="--infarct", choices=("on", "off"))
    weights: str | None = option(
        None, "OF-RNN weights, a state dict from python -m engines.train.infarct (default: "
        "the shipped engines/weights/infarct.pt)", flag="--infarct-weights", metavar="PATH")

    def __post_init__(self):
        if self.mode not in ("on", "off"):
            raise ValueError(f"infarct {self.mode!r} is not on or off")


class MapInfarct(BeatStage):
    """Per slice and beat: the infarct probability of every myocardial pixel (OF-RNN, Xu et
    al. 2018), from how the wall moves, with no contrast agent.

    The LV region of interest of the beat's end-diastolic labels
    (:class:`streamer.measure.roi.LvRoi`: 64 x 64, 1.5 LV radii either side of the LV
    centre) is cut from every frame as the MR network saw it, scaled over the beat
    (:func:`~streamer.measure.roi.normalise_beat`), its DIS optical flow computed
    (:func:`~streamer.measure.roi.roi_flow`), and the network maps the end-diastolic
    myocardium's pixels. Beat fields: the infarct's area (pixels over ``threshold``),
    each AHA segment's infarcted share of its myocardium (where the level and the RV
    insertion points are known), the largest probability, ``infarct_status`` (``mapped``
    or why not), and with ``send_map`` the probability map in the frame's rows and columns
    (``infarct_p``). The segments are the slice's own level (its place in the stack, as
    the frame results' ``aha_level``) anchored on its own RV insertion points. Trained on
    phantom slices (exact infarct truth; no public cine data carries it): the app's
    declaration says so (``engines.infarct.trained_on``)."""

    name = "infarct"
    keeps = ("grid_image", "grid_labels", "grid", "stream_meta", "cardiac_phase")
    outputs = ("infarct_area_mm2", "infarct_segment_share", "infarct_p_max", "infarct_status",
               "infarct_p")
    max_frames = ScoreWallMotion.max_frames
    min_frames = ScoreWallMotion.min_frames
    #: a pixel is infarct above this probability
    threshold = 0.5
    trained_on = "phantom slices (calib.datasets.infarct_slice_config)"

    def __init__(self, mapper, slices: SliceConfig, send_map: bool):
        self.mapper, self.slices, self.send_map = mapper, slices, send_map

    def process(self, beat: BeatFrames) -> dict[str, Any]:
        out = dict.fromkeys(self.outputs)
        images, labels, reason = beat_images(beat, self.min_frames)
        if reason is not None:
            return {**out, "infarct_status": reason}
        grid, meta, ed = beat.values["grid"][0], beat.values["stream_meta"][0], labels[0]
        px_mm2 = float(np.prod(grid.spacing_mm))
        myocardium = ed == MRLabel.LV_MYOCARDIUM
        if myocardium.sum() * px_mm2 < MIN_LV_MYOCARDIUM_MM2:
            return {**out, "infarct_status": "no_lv"}
        roi = LvRoi.around(lv_centre_px(ed), epicardial_radius_px(ed))
        region = normalise_beat(roi.images(np.stack(images)))
        mask = roi.images(myocardium.astype(np.uint8), nearest=True) > 0
        p_region = self.mapper(region, roi_flow(region), mask)
        p = np.where(myocardium, roi.to_image(p_region, ed.shape), 0.0).astype(np.float32)
        infarct = p > self.threshold
        out.update(infarct_area_mm2=round(float(infarct.sum()) * px_mm2, 1),
                   infarct_p_max=round(float(p.max()), 4), infarct_status="mapped")
        level = slice_level(meta, self.slices)
        if level is not None:
            try:
                insertion = rv_insertion_points(ed, anterior_dir=anterior_direction(meta))
            except SaxGeometryError:
                insertion = None
            if insertion is not None:
                segments = aha_segment_map(ed, level, insertion)
                out["infarct_segment_share"] = {
                    str(aha): round(float(infarct[segments == aha].mean()), 3)
                    for aha in AHA_SEGMENTS[level] if (segments == aha).any()}
        if self.send_map and grid.frame_shape is not None:
            out["infarct_p"] = labels_on_frame(p, grid, grid.frame_shape, nearest=False)
        return out


@dataclass(frozen=True)
class MrShortAxisConfig:
    """The MR short-axis app's options."""

    slices: SliceConfig = SliceConfig()
    send_labels: bool = option(
        False, "send each frame's label map (uint8: 0 background, 1 LV cavity, 2 LV "
        "myocardium, 3 RV cavity; the frame's rows and columns) as the result's array part "
        "labels, and each beat's infarct probability map as the beat's array part infarct_p",
        flag="--mr-labels")
    lv_component: str = option(
        "largest", "LV pixels kept: largest (the largest connected region of LV cavity and "
        "myocardium; stray LV islands become background) or all (the network's labels as "
        "they are)", flag="--mr-lv-component", choices=LV_COMPONENTS)
    tracker: SaxTrackerConfig = SaxTrackerConfig()
    quality: SaxQualityConfig = SaxQualityConfig()
    wall_motion: WallMotionConfig = WallMotionConfig()
    infarct: InfarctConfig = InfarctConfig()


class MrShortAxisApp(App):
    """Short-axis cine MR, one slice per stream: labels, RV insertion points, AHA segments,
    tracked wall, circumferential and radial strain per frame; ES and peak strains per
    beat."""

    name = "mr-sax"
    modalities = ("MR",)
    roles = ("mr",)
    gate = "every frame"
    Config = MrShortAxisConfig
    result_fields = (
        Field("labels", "array", "uint8 label map in the frame's rows and columns (0 "
              "background, 1 LV cavity, 2 LV myocardium, 3 RV cavity); with --mr-labels"),
        Field("areas_mm2", "object", "areas of this frame's labels, mm^2: {lv_cavity, "
              "lv_myocardium, rv_cavity}"),
        Field("rv_insertion_mm", "object", "RV insertion points (ends of the "
              "RV-myocardium contact), [row, col] mm from the frame's top-left pixel: "
              "{anterior, inferior}; null where the RV does not touch the LV"),
        Field("aha_level", "string", "the slice's AHA level: basal, mid or apical (from "
              "its place in the stack or --sax-level)"),
        Field("endo_mm", "list", "tracked endocardium: 48 [row, col] mm from the frame's "
              "top-left pixel, on rays from the LV centre"),
        Field("epi_mm", "list", "tracked epicardium: 48 [row, col] mm, point i on the ray "
              "of endo_mm's point i"),
        Field("circumferential_strain_pct", "number", "global circumferential strain "
              "(mid-wall contour length) against the beat's end-diastole, %; null where "
              "not measurable"),
        Field("radial_strain_pct", "number", "global radial strain (mean wall thickness) "
              "against the beat's end-diastole, %; null where not measurable"),
        Field("segment_circumferential_strain_pct", "object", "circumferential strain per "
              "AHA segment of this slice ({\"7\": -17.2, ...}), %"),
        Field("segment_radial_strain_pct", "object", "radial strain per AHA segment, %"),
        Field("circumferential_strain_rate_pct_s", "number", "change of the global "
              "circumferential strain since the previous frame, %/s"),
        Field("measurable", "boolean", "the frame's strain passed quality control (else "
              "flags not_measurable:REASON say why)"),
        Field("beat", "integer", "number of the slice's beat this frame belongs to"),
        Field("phase", "string", "\"ED\" on the beat's end-diastole (its reference), else "
              "null"),
    )
    beat_fields = (
        Field("es_seq", "integer", "end-systole: the frame of the smallest LV cavity"),
        Field("ed_cavity_area_mm2", "number", "LV cavity area at end-diastole, mm^2"),
        Field("es_cavity_area_mm2", "number", "LV cavity area at end-systole, mm^2"),
        Field("fractional_area_change_pct", "number", "(ED - ES) / ED cavity area, %"),
        Field("peak_circumferential_strain_pct", "number", "most negative global "
              "circumferential strain of the beat, %; null for a poor beat"),
        Field("peak_radial_strain_pct", "number", "largest global radial strain of the "
              "beat, %; null for a poor beat"),
        Field("segment_peak_circumferential_strain_pct", "object", "per AHA segment, the "
              "most negative circumferential strain of the beat, %"),
        Field("segment_peak_radial_strain_pct", "object", "per AHA segment, the largest "
              "radial strain of the beat, %"),
        Field("aha_level", "string", "the slice's AHA level the segments belong to"),
        Field("quality", "string", "good (measurable on >= 90 % of its frames), fair "
              "(>= 60 %) or poor (no peak numbers)"),
        Field("measurable_fraction", "number", "share of the beat's frames that were "
              "measurable"),
        Field("duration_s", "number", "end-diastole to the beat's last frame, s"),
        Field("closed_by", "string", "last_phase (the start's n_phases) or next_ed (the "
              "phase index wrapped)"),
        Field("stack", "object", "on the beat of the slice that completes its stack: "
              "{stack_id, n_slices, slice_levels, covers_lv, phases_missing} and, when the "
              "stack covers the LV, slice_spacing_mm, ed_phase, es_phase, edv_ml, esv_ml, "
              "sv_ml, ef_pct, mass_g (disk summation); null on the other slices' beats"),
        Field("reference_phase", "integer", "phase index of the beat's first reference "
              "frame: 0 (end-diastole) unless the track started later in the cycle (then "
              "the beat is poor)"),
        Field("reference_until_seq", "integer", "the last frame tracked against that "
              "reference without a break: the peaks are over the frames up to it (a track "
              "lost before end-systole makes the beat poor, flag es_not_tracked)"),
        Field("infarct_area_mm2", "number", "area of the end-diastolic myocardium whose "
              "infarct probability (OF-RNN, from motion) is over 0.5, mm^2; null when not "
              "mapped (infarct_status)"),
        Field("infarct_segment_share", "object", "per AHA segment of the slice, the share of "
              "its end-diastolic myocardium over 0.5 ({\"9\": 0.42, ...}); null where the "
              "level or the RV insertion points are unknown"),
        Field("infarct_p_max", "number", "the largest infarct probability of the myocardium"),
        Field("infarct_status", "string", "mapped, or why not: no_lv, not_from_end_diastole, "
              "too_few_frames, beat_incomplete"),
        Field("infarct_p", "array", "float32 infarct probability of each pixel (the frame's "
              "rows and columns; 0 off the end-diastolic myocardium); with --mr-labels"),
    )

    message_fields = {"wall_motion": (
        Field("stack_id", "string", "the stack's id (its slices' start stack_id)"),
        Field("segments", "list", "the 16 AHA segments in order: {aha (1-16), name, score "
              "(1 normal, 2 hypokinetic, 3 akinetic, 4 dyskinetic), label, p (the four "
              "classes' probabilities, that order)}; score, label and p null for a missing "
              "segment"),
        Field("msi", "number", "motion score index: the mean score of the scored segments "
              "(1 = all normal); null when none was scored"),
        Field("scored_segments", "integer", "how many of the 16 were scored"),
        Field("missing_segments", "list", "AHA numbers of the segments not scored"),
        Field("missing_reasons", "object", "per level without a scored slice, why: "
              "no_lv_slice, not_from_end_diastole, too_few_frames, beat_incomplete, no_lv, "
              "no_rv_insertion (no scored slice of the stack found them)"),
        Field("slices", "object", "slice_index scored per level {basal, mid, apical} (the "
              "usable slice nearest the middle of its third of the LV), null where none"),
        Field("anchors", "object", "per level, whose RV insertion points set its sectors "
              "(basal, mid or apical; the apical level takes the mid slice's: the RV barely "
              "reaches the apex); null where the level was not scored"),
        Field("frames", "integer", "frames of the beat the scores are from"),
        Field("trained_on", "string", "what the network learnt from (phantom hearts: no "
              "public data has per-segment wall-motion labels)"),
    )}

    def stages(self) -> list[Stage]:
        cfg, engine = self.config, self.engines["mr"]
        return [Preprocess(), SegmentAndMove(engine, cfg.send_labels, lv_component=cfg.lv_component,
                                             step_flow=cfg.tracker.along_wall == "flow"),
                SaxGeometry(cfg.slices),
                TrackWall(cfg.tracker), MeasureSaxStrain(), CheckSaxMeasurability(cfg.quality)]

    def __init__(self, config=None, engines=None):
        self.stacks = StackCycles()  # every slice stream's cycle, until its stack is whole
        # every slice stream's beat for the wall-motion scores (LV crops: ~0.5 MB a slice)
        self.wall_motion_stacks = StackCycles(max_stacks=4)
        config = self.Config() if config is None else config
        self.wall_motion = self.infarct = None
        if config.wall_motion.mode == "on":
            from engines.wall_motion import load_scorer

            self.wall_motion = load_scorer(config.wall_motion.weights)
        if config.infarct.mode == "on":
            from engines.infarct import load_mapper

            self.infarct = load_mapper(config.infarct.weights)
        super().__init__(config, engines)

    def beat_stages(self) -> list[BeatStage]:
        cfg = self.config
        stages = [SummariseSaxBeat(cfg.quality), SummariseStack(self.stacks)]
        if self.wall_motion is not None:
            stages.append(ScoreWallMotion(self.wall_motion, self.wall_motion_stacks))
        if self.infarct is not None:
            stages.append(MapInfarct(self.infarct, cfg.slices, cfg.send_labels))
        return stages

    def declaration(self) -> dict:
        """The app's declaration; its ``engines`` also name the per-beat Cardiac-MOS
        (``wall_motion``: eager torch fp32 on the CPU) where it runs."""
        out = super().declaration()
        if self.wall_motion is not None:
            out["engines"]["wall_motion"] = {**self.wall_motion.provenance(),
                                             "variant": self.wall_motion.variant,
                                             "trained_on": ScoreWallMotion.trained_on}
        if self.infarct is not None:
            out["engines"]["infarct"] = {**self.infarct.provenance(),
                                         "trained_on": MapInfarct.trained_on}
        return out

    def warmup(self) -> None:
        kalman_warmup()  # numba compiles (or loads its cache) now, not on the first frame
        labels_warmup()
