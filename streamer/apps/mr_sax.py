"""The cardiac-MR short-axis app: joint segmentation and motion (Qin et al. 2018), AHA
segments, circumferential and radial strain, per slice.

Routed by ``modality: "MR"``. Each slice of a stack travels as its own stream
(``NAME/slice-K``), so the app's per-stream state is one slice's. In the order of the
method::

    Preprocess -> SegmentAndMove -> SaxGeometry -> TrackWall -> MeasureSaxStrain
               -> CheckSaxMeasurability                                   (per frame)
    SummariseSaxBeat, SummariseStack                                       (per closed beat)

- :class:`SegmentAndMove` runs the joint network (role ``mr``) on the previous and this
  frame with the recurrent state the previous call returned: this frame's labels
  (0 background, 1 LV cavity, 2 LV myocardium, 3 RV cavity), its myocardium probability
  and the motion from the previous frame.
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

from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from engines.spec import fit_to_input, percentile_normalise
from streamer.app import BEAT_CLOSED, App, BeatBoundary, BeatFrames, BeatStage, Field, Stage
from streamer.apps.common import Preprocess, TrackingGrid, beat_grade, softmax
from streamer.io.protocol import FrameMessage
from streamer.measure.kalman import warmup as kalman_warmup
from streamer.measure.labels import argmax_labels
from streamer.measure.labels import warmup as labels_warmup
from streamer.measure.sax import (
    SaxGeometryError,
    base_is_first,
    largest_lv_component,
    rv_insertion_points,
    sax_levels,
    screen_angle,
    slice_spacing_mm,
    stack_volumes,
)
from streamer.measure.sax_tracking import SaxTrack, SaxTrackerConfig, SaxWallTracker
from streamer.measure.strain import sax_strain
from streamer.options import option
from streamer.vocab import SAX_LEVELS, MRLabel

#: which LV pixels the segmentation keeps (MrShortAxisConfig.lv_component)
LV_COMPONENTS = ("largest", "all")
#: the joint engine's output channels (engines.nets.mr_joint)
_LOGITS, _FLOW, _STATE = slice(0, 4), slice(4, 6), 6


def labels_on_frame(grid_labels: np.ndarray, grid: TrackingGrid,
                    frame_shape: tuple[int, int]) -> np.ndarray:
    """A label map on the network's grid -> the same in the frame's rows and columns
    (nearest label)."""
    fit = grid.fit
    inner = grid_labels[fit.top:fit.top + fit.rows, fit.left:fit.left + fit.cols]
    if inner.shape == tuple(frame_shape):
        return np.ascontiguousarray(inner)
    return cv2.resize(inner, (frame_shape[1], frame_shape[0]), interpolation=cv2.INTER_NEAREST)


class SegmentAndMove(Stage):
    """Image -> ``grid_labels`` (uint8 on the network's grid), ``myocardium_p`` (the LV
    myocardium's probability there), ``flow`` (rows, cols, 2) [dx, dy] px from the previous
    frame to this one (None on the stream's first frame) and the ``grid``; with
    ``send_labels``, ``labels``: the label map in the frame's rows and columns (the
    result's array part). With ``lv_component="largest"`` the LV pixels outside the
    largest connected LV region become background, in the labels and in ``myocardium_p``
    (:func:`streamer.measure.sax.largest_lv_component`).

    The recurrent state starts at zero for the first frame pair, as in training; images are
    normalised per image (:func:`engines.spec.percentile_normalise`)."""

    name = "mr_net"
    inputs = ("frame", "image")
    outputs = ("grid_labels", "myocardium_p", "flow", "grid", "labels")

    def __init__(self, engine, send_labels: bool = False, *, lv_component: str):
        if lv_component not in LV_COMPONENTS:
            raise ValueError(f"lv_component {lv_component!r} is unknown; choose "
                             f"{' or '.join(LV_COMPONENTS)}")
        self.engine, self.send_labels, self.lv_component = engine, send_labels, lv_component
        self.size = tuple(engine.spec.size)
        self._previous: np.ndarray | None = None
        self._state = np.zeros(self.size, np.float32)

    def process(self, frame: FrameMessage, image: np.ndarray) -> dict[str, Any]:
        x, fit = fit_to_input(percentile_normalise(image), self.size)
        first = self._previous is None
        previous = x if first else self._previous
        out = self.engine(np.stack([previous, x, self._state])[None])[0]
        self._previous = x
        flow = None
        if not first:
            self._state = np.ascontiguousarray(out[_STATE], np.float32)
            flow = np.ascontiguousarray(out[_FLOW].transpose(1, 2, 0), np.float32)
        p = softmax(out[_LOGITS].astype(np.float32))
        labels = argmax_labels(p)
        myocardium_p = p[MRLabel.LV_MYOCARDIUM]
        if self.lv_component == "largest":
            kept = largest_lv_component(labels)
            if kept is not labels:
                myocardium_p = np.where(kept == labels, myocardium_p, 0.0).astype(np.float32)
                labels = kept
        spacing = (frame.spacing_mm[0] / fit.scale, frame.spacing_mm[1] / fit.scale)
        grid = TrackingGrid(fit, spacing)
        return {"grid_labels": labels, "myocardium_p": myocardium_p, "flow": flow,
                "grid": grid, "labels": labels_on_frame(labels, grid, image.shape[:2])
                if self.send_labels else None}


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
    was tracked throughout. Strain is against the beat's first tracked frame (its
    ``reference_phase``; flag ``reference_not_ed`` when that is not phase 0). A track that
    is lost and found again follows new points: strain restarts there (flag
    ``strain_restarted``)."""

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

    def _close(self, end_seq: int, closed_by: str) -> BeatBoundary:
        boundary = BeatBoundary(self.beat_index, self.beat_start_seq, end_seq,
                                {"closed_by": closed_by, "reference_phase":
                                 None if self.ref is None else self.ref.phase_index})
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
        out["beat"] = self.beat_index
        last = isinstance(n_phases, int) and phase == n_phases - 1
        if not track.valid:
            self.ref = None  # a gap in the track: strain starts afresh after it
        elif "reinitialised" in track.flags and self.ref is not None:
            self.ref = None
            flags.append("strain_restarted")
        if track.valid:
            if self.ref is None:
                self.ref = _Reference(frame.seq, phase, track.endo_mm, track.epi_mm,
                                      insertion, aha_level)
                self._previous = None
                if phase != 0:
                    flags.append("reference_not_ed")
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
    and radial (largest) strain, globally and per AHA segment, over the beat's frames; and
    a grade from the share of its frames that were measurable (good >= 90 %, fair >= 60 %,
    else poor: no peak numbers). A beat whose track did not start at end-diastole (phase
    0) is poor."""

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
    per-stack measurement needs, gathered slice stream by slice stream. Bounded: at most
    ``max_stacks`` stacks are waiting for slices; beyond that the stack heard of longest
    ago is forgotten."""

    def __init__(self, max_stacks: int = 16):
        self.max_stacks = max_stacks
        self._stacks: dict[str, dict[int, SliceCycle]] = {}

    def add(self, stack_id: str, n_slices: int, cycle: SliceCycle) -> list[SliceCycle] | None:
        """Record a slice's cycle; every slice's, in slice order, once all ``n_slices`` have
        one (the stack then starts afresh)."""
        slices = self._stacks.pop(stack_id, {})
        slices[cycle.slice_index] = cycle
        if len(slices) >= n_slices:
            return [slices[k] for k in sorted(slices)]
        self._stacks[stack_id] = slices  # most recent last
        while len(self._stacks) > self.max_stacks:
            del self._stacks[next(iter(self._stacks))]
        return None


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
    #: a slice holds LV when its end-diastolic myocardium covers at least this area
    min_lv_myocardium_mm2 = 50.0

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
        holds_lv = np.nan_to_num(myo[:, 0]) >= self.min_lv_myocardium_mm2
        lv_area = np.where(holds_lv, np.nan_to_num(cav[:, 0] + myo[:, 0]), 0.0)
        try:
            levels = sax_levels(holds_lv, base_first=base_is_first(lv_area))
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


@dataclass(frozen=True)
class MrShortAxisConfig:
    """The MR short-axis app's options."""

    slices: SliceConfig = SliceConfig()
    send_labels: bool = option(
        False, "send each frame's label map (uint8: 0 background, 1 LV cavity, 2 LV "
        "myocardium, 3 RV cavity; the frame's rows and columns) as the result's array part "
        "labels", flag="--mr-labels")
    lv_component: str = option(
        "largest", "LV pixels kept: largest (the largest connected region of LV cavity and "
        "myocardium; stray LV islands become background) or all (the network's labels as "
        "they are)", flag="--mr-lv-component", choices=LV_COMPONENTS)
    tracker: SaxTrackerConfig = SaxTrackerConfig()
    quality: SaxQualityConfig = SaxQualityConfig()


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
        Field("reference_phase", "integer", "phase index of the beat's reference frame: 0 "
              "(end-diastole) unless the track started later in the cycle (then the beat "
              "is poor)"),
    )

    def stages(self) -> list[Stage]:
        cfg, engine = self.config, self.engines["mr"]
        return [Preprocess(), SegmentAndMove(engine, cfg.send_labels, lv_component=cfg.lv_component),
                SaxGeometry(cfg.slices),
                TrackWall(cfg.tracker), MeasureSaxStrain(), CheckSaxMeasurability(cfg.quality)]

    def __init__(self, config=None, engines=None):
        self.stacks = StackCycles()  # every slice stream's cycle, until its stack is whole
        super().__init__(config, engines)

    def beat_stages(self) -> list[BeatStage]:
        return [SummariseSaxBeat(self.config.quality), SummariseStack(self.stacks)]

    def warmup(self) -> None:
        kalman_warmup()  # numba compiles (or loads its cache) now, not on the first frame
        labels_warmup()
