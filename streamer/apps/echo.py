"""The echo app (Østvik et al. 2018): automatic GLS from apical 4-chamber cine, per frame.

In the order of the method::

    Preprocess -> ClassifyView -> SegmentMyocardium -> EstimateMotion
               -> TrackCentreline -> MeasureStrain -> CheckMeasurability  (per frame)
    SummariseBeat                                                       (per closed beat)

The gate is the view: only frames the classifier calls A4C with enough confidence (or that
the sender says are A4C) are segmented, tracked and measured. The three networks run
through an engine of :mod:`engines.backends`; tracking and strain are
:mod:`streamer.measure`.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from engines.spec import fit_to_input
from streamer.app import BEAT_CLOSED, App, BeatBoundary, BeatFrames, BeatStage, Field, Stage
from streamer.apps.common import Preprocess, TrackingGrid, beat_grade, softmax
from streamer.budget import FrameControls
from streamer.io.protocol import FrameMessage
from streamer.measure.centerline import CentrelineConfig
from streamer.measure.labels import argmax_labels
from streamer.measure.labels import warmup as labels_warmup
from streamer.measure.strain import BeatConfig, StrainMonitor, beat_from_points, polyline_length
from streamer.measure.tracking import CentrelineTracker, TrackerConfig
from streamer.measure.tracking import warmup as tracking_warmup
from streamer.options import option, parse_pair
from streamer.vocab import A4C_SEGMENTS, SEG_CLASSES, VIEW_CLASSES


@dataclass(frozen=True)
class ViewConfig:
    """Which frames go on to segmentation, flow and strain.

    ``gate="classifier"``: frames the classifier calls ``analysed_view`` with at least
    ``min_confidence``, its class probabilities averaged over the frames of the last
    ``smoothing_s`` seconds (a probe held on one view shows it for seconds; one frame's
    answer flickers with the phase of the cycle). On real scanners' frames, unlike the
    phantoms it learned from, the classifier is less sure: pydicom's A4C cine is A4C by
    arg-max on 93 % of its frames but has a mean A4C probability of 0.5-0.7 on many; at
    0.5 (an absolute majority of the averaged probability) no phantom of another view and
    no non-cardiac file passes (docs/benchmarks.md); a sender's view hint (``frame.view``,
    e.g. ``replay --view a4c``) overrides the classifier (the operator knows the view; the
    classifier's answer is still reported, flagged ``view_hint_differs`` when it
    disagrees). ``gate="off"``: every frame is analysed as ``analysed_view``.
    """

    gate: str = option(
        "classifier", "classifier: only frames classified A4C go on; off: analyse every frame "
        "as A4C", flag="--view-gate", choices=("classifier", "off"))
    min_confidence: float = option(
        0.5, "classifier probability (averaged over --view-smoothing-s) an A4C frame needs "
        "to go on",
        flag="--min-view-confidence", metavar="P")
    smoothing_s: float = option(
        1.0, "seconds of the classifier's answers averaged for the gate (0: each frame's own)",
        flag="--view-smoothing-s", metavar="S")
    analysed_view: str = "a4c"

    def __post_init__(self):
        if self.gate not in ("classifier", "off"):
            raise ValueError(f"view gate {self.gate!r} is unknown; choose classifier or off")
        if self.analysed_view not in VIEW_CLASSES:
            raise ValueError(f"analysed_view {self.analysed_view!r} is not one of {VIEW_CLASSES}")
        if not 0.0 <= self.min_confidence <= 1.0:
            raise ValueError(f"min_confidence must be in [0, 1], got {self.min_confidence}")
        if not 0.0 <= self.smoothing_s <= 60.0:
            raise ValueError(f"smoothing_s must be in [0, 60] seconds, got {self.smoothing_s}")


class ClassifyView(Stage):
    """Image -> ``view`` and ``analyse``: whether the frame goes on.

    ``view`` is {"label", "p", "frame"}: the answer the gate uses (the class probabilities
    averaged over the frames of the last ``ViewConfig.smoothing_s`` seconds, arg-max and its
    probability) and ``frame`` = {"label", "p"}, this frame's own.  A timestamp that goes
    back starts the average afresh.
    With ``controls.view_every = k > 1`` (the live side-car shedding work) the classifier
    runs on every k-th frame only while its last k answers agree; the frames between
    reuse its last answer (flag ``view_reused``)."""

    name = "view"
    inputs = ("frame", "image", "controls")
    outputs = ("view", "analyse")
    #: most answers the average holds (bounded memory at any frame rate)
    MAX_ANSWERS = 256

    def __init__(self, engine, config: ViewConfig = ViewConfig()):
        self.engine = engine
        self.config = config
        self._answers: list[np.ndarray] = []  # the classifier's latest probabilities
        self._reused = 0  # frames since the classifier last ran
        self._window: deque[tuple[float, np.ndarray]] = deque()  # (t_s, probabilities) averaged

    def _classify(self, image: np.ndarray, every: int) -> tuple[np.ndarray, bool]:
        recent = self._answers[-every:]
        if (every > 1 and self._reused + 1 < every and len(recent) == every
                and len({int(np.argmax(p)) for p in recent}) == 1):
            self._reused += 1
            return self._answers[-1], True
        x, _ = fit_to_input(image, self.engine.spec.size)
        p = softmax(self.engine(x[None, None])[0].astype(np.float64))
        self._answers = [*self._answers[-7:], p]
        self._reused = 0
        return p, False

    def _smoothed(self, t_s: float, p: np.ndarray) -> np.ndarray:
        w = self._window
        if w and t_s < w[-1][0]:
            w.clear()
        w.append((t_s, p))
        lo = t_s - self.config.smoothing_s
        while len(w) > 1 and (w[0][0] < lo or len(w) > self.MAX_ANSWERS):
            w.popleft()
        return np.mean([q for _, q in w], axis=0)

    def process(self, frame: FrameMessage, image: np.ndarray,
                controls: FrameControls) -> dict[str, Any]:
        p_frame, reused = self._classify(image, controls.view_every)
        p = self._smoothed(frame.t_acq_ns / 1e9, p_frame)
        k, k_frame = int(np.argmax(p)), int(np.argmax(p_frame))
        label, p_label = VIEW_CLASSES[k], float(p[k])
        cfg, flags = self.config, ["view_reused"] if reused else []
        if cfg.gate == "off":
            analyse = True
        elif frame.view is not None:
            analyse = frame.view == cfg.analysed_view
            if frame.view != label:
                flags.append("view_hint_differs")
        else:
            analyse = label == cfg.analysed_view and p_label >= cfg.min_confidence
            if label == cfg.analysed_view and not analyse:
                flags.append("low_view_confidence")
        if not analyse:
            flags.append(f"not_{cfg.analysed_view}")
        own = {"label": VIEW_CLASSES[k_frame], "p": round(float(p_frame[k_frame]), 4)}
        return {"view": {"label": label, "p": round(p_label, 4), "frame": own},
                "analyse": analyse, "flags": flags}


class SegmentMyocardium(Stage):
    """Image -> LV myocardium ``mask`` (uint8, on the segmenter's grid), that ``grid``, and
    ``lv_cavity_area_mm2``: the LV cavity's expected area (the segmenter's cavity
    probability summed over the grid, in mm²), the curve whose maxima are end-diastole."""

    name = "segment"
    inputs = ("frame", "image", "analyse")
    outputs = ("mask", "grid", "lv_cavity_area_mm2")
    sheddable = True

    def __init__(self, engine):
        self.engine = engine
        self.myocardium = SEG_CLASSES.index("myocardium")
        self.cavity = SEG_CLASSES.index("cavity")

    def process(self, frame: FrameMessage, image: np.ndarray, analyse: bool) -> dict[str, Any]:
        if not analyse:
            return {"mask": None, "grid": None, "lv_cavity_area_mm2": None}
        x, fit = fit_to_input(image, self.engine.spec.size)
        logits = self.engine(x[None, None])[0]
        mask = (argmax_labels(logits) == self.myocardium).view(np.uint8)
        spacing = (frame.spacing_mm[0] / fit.scale, frame.spacing_mm[1] / fit.scale)
        cavity = softmax(np.asarray(logits, dtype=np.float32))[self.cavity]
        area = float(cavity.sum(dtype=np.float64)) * spacing[0] * spacing[1]
        return {"mask": mask, "grid": TrackingGrid(fit, spacing), "lv_cavity_area_mm2": area}


class EstimateMotion(Stage):
    """Image and the previous analysed image -> dense ``flow`` (rows, cols, 2) px on the
    tracking grid, channels (dx, dy), previous -> this frame; ``None`` on the first frame."""

    name = "flow"
    inputs = ("image", "analyse")
    outputs = ("flow",)
    sheddable = True

    def __init__(self, engine, grid_size: tuple[int, int]):
        self.engine = engine
        self.grid_size = tuple(grid_size)
        self._previous: np.ndarray | None = None

    def process(self, image: np.ndarray, analyse: bool) -> dict[str, Any]:
        if not analyse:
            self._previous = None  # the next flow would span the skipped frames
            return {"flow": None}
        x, _ = fit_to_input(image, self.engine.spec.size)
        previous, self._previous = self._previous, x
        if previous is None:
            return {"flow": None}
        flow = self.engine(np.stack([previous, x])[None])[0].transpose(1, 2, 0)
        h, w = self.grid_size
        if flow.shape[:2] != (h, w):
            sy, sx = h / flow.shape[0], w / flow.shape[1]
            flow = cv2.resize(flow, (w, h), interpolation=cv2.INTER_LINEAR) * np.float32([sx, sy])
        return {"flow": np.ascontiguousarray(flow)}


class TrackCentreline(Stage):
    """Mask + flow -> the Kalman-filtered centreline: ``points_mm`` (120 [row, col] mm from the
    frame's top-left pixel, basal septum -> apex -> basal lateral) and the ``track`` record."""

    name = "track"
    inputs = ("frame", "mask", "flow", "grid")
    outputs = ("points_mm", "track")
    sheddable = True

    def __init__(self, config: TrackerConfig = TrackerConfig(),
                 centreline: CentrelineConfig | None = None):
        self.config = config
        self.tracker = CentrelineTracker(config, centreline)

    def process(self, frame: FrameMessage, mask, flow, grid) -> dict[str, Any]:
        if mask is None:
            self.tracker.reset()
            return {"points_mm": None, "track": None}
        track = self.tracker.step(mask, flow, frame.t_acq_ns / 1e9, grid.spacing_mm)
        points = grid.to_frame_mm(track.points_mm).round(3).tolist() if track.valid else None
        return {"points_mm": points, "track": track, "flags": track.flags}


class MeasureStrain(Stage):
    """Tracked centreline -> ``gls_unchecked_pct``, ``regional_unchecked_pct`` (published
    only once :class:`CheckMeasurability` passes them), ``beat``, ``phase``;
    ``strain_sample`` (the frame's time and centreline, kept for the beat summary) and
    ``beat_closed`` (a :class:`~streamer.app.BeatBoundary`) when a cycle completes.

    Strain is against the current beat's end-diastole (the first tracked frame until one
    is found): the sender's R wave where it flags one, else a maximum of the curve
    ``BeatConfig.ed_from`` names (the LV cavity area by default). A re-initialised track
    follows new material points, so strain restarts with it (flag ``strain_restarted``)."""

    name = "strain"
    inputs = ("frame", "track", "lv_cavity_area_mm2")
    outputs = ("gls_unchecked_pct", "regional_unchecked_pct", "beat", "phase", "strain_sample",
               BEAT_CLOSED)
    sheddable = True

    def __init__(self, config: BeatConfig = BeatConfig()):
        self.config = config
        self._restart()

    def _restart(self) -> None:
        self.monitor = StrainMonitor(self.config)
        self.seqs: dict[int, int] = {}  # the frame each of the monitor's kept frames was

    def process(self, frame: FrameMessage, track, lv_cavity_area_mm2) -> dict[str, Any]:
        none = dict.fromkeys(self.outputs)
        if track is None:
            return none
        flags = []
        if "reinitialised" in track.flags and self.seqs:
            self._restart()
            flags.append("strain_restarted")
        fs = self.monitor.update(track.t_s, track.points_mm, frame.ecg_r,
                                 cavity_area=lv_cavity_area_mm2)
        self.seqs[fs.frame] = frame.seq
        while next(iter(self.seqs)) < self.monitor.first_frame:  # bounded, as the monitor
            del self.seqs[next(iter(self.seqs))]
        flags += fs.flags
        sample = StrainSample(track.t_s, np.array(track.points_mm, dtype=np.float64))
        closed = None
        if fs.beat is not None:
            b = fs.beat
            closed = BeatBoundary(index=b.index, ed_seq=self.seqs[b.ed_index],
                                  end_seq=self.seqs[b.end_index],
                                  fields={"ed_source": b.ed_source})
        if not np.isfinite(fs.gls_pct):
            return {**none, "strain_sample": sample, BEAT_CLOSED: closed, "flags": flags}
        return {"gls_unchecked_pct": round(fs.gls_pct, 3),
                "regional_unchecked_pct": {k: round(float(v), 3)
                                           for k, v in zip(A4C_SEGMENTS, fs.regional_pct)},
                "beat": fs.beat_index, "phase": "ED" if fs.is_ed else None,
                "strain_sample": sample, BEAT_CLOSED: closed, "flags": flags}


@dataclass(frozen=True)
class StrainSample:
    """What the beat summary keeps of a frame: its time and centreline (120 [row, col] mm)."""

    t_s: float
    points_mm: np.ndarray


def parse_range(text: str) -> tuple[float, float]:
    """"-40:15" -> (-40.0, 15.0)."""
    bounds = parse_pair(text, float, "LO:HI")
    if not bounds[0] < bounds[1]:
        raise ValueError("expected LO:HI with LO < HI")
    return bounds


def _format_range(bounds: tuple[float, float]) -> str:
    return f"{bounds[0]!r}:{bounds[1]!r}"


@dataclass(frozen=True)
class QualityConfig:
    """When a frame's strain is a measurement. A frame that fails any test publishes no
    strain number and says why (``not_measurable:REASON``); ranges are (low, high)."""

    gls_range_pct: tuple[float, float] = option(
        (-40.0, 15.0), "a GLS outside LO:HI %% is not a measurement (a negative LO needs "
        "the '=' form: --gls-range-pct=-30:10)", flag="--gls-range-pct", metavar="LO:HI",
        parse=parse_range, format=_format_range)
    regional_range_pct: tuple[float, float] = option(
        (-60.0, 40.0), "a regional strain outside LO:HI %% is not a measurement",
        flag="--regional-range-pct", metavar="LO:HI", parse=parse_range, format=_format_range)
    centreline_length_mm: tuple[float, float] = option(
        (100.0, 320.0), "a tracked centreline (basal septum -> apex -> basal lateral) shorter "
        "or longer than LO:HI mm is not an adult left ventricle (long axis 70-110 mm)",
        flag="--centreline-length-mm", metavar="LO:HI", parse=parse_range,
        format=_format_range)
    max_track_offset_mm: float = option(
        10.0, "mean distance from the tracked centreline to this frame's mask centreline "
        "beyond which tracking has lost the wall, mm", metavar="MM")
    #: the share of a beat's frames whose wall was followed, for its grade: good, fair
    good_fraction: float = 0.9
    fair_fraction: float = 0.6

    def __post_init__(self):
        if not self.max_track_offset_mm > 0:
            raise ValueError(f"max_track_offset_mm must be > 0, got {self.max_track_offset_mm}")

    def gls_in_range(self, gls_pct: float) -> bool:
        return self.gls_range_pct[0] <= gls_pct <= self.gls_range_pct[1]

    def regional_in_range(self, regional_pct) -> bool:
        """Every value of ``regional_pct`` (an iterable of %) in the regional range."""
        lo, hi = self.regional_range_pct
        return all(lo <= v <= hi for v in regional_pct)


#: mask flags from the tracker that mean the frame's myocardium is not one clean wall
_MASK_FLAGS = ("empty_mask", "broken_mask", "two_components")
#: reasons about the strain value itself, not about following the wall
_STRAIN_REASONS = ("gls_range", "regional_range")


class CheckMeasurability(Stage):
    """Strain -> published ``gls_pct`` and ``regional_pct``, or none and the reasons why.

    A frame's strain is a measurement when: the frame is vouched A4C (the classifier with
    enough confidence, or the sender's view hint); its mask is one clean wall; its tracked
    centreline has the length of a left ventricle and lies on this frame's mask centreline
    (``max_track_offset_mm``); and GLS and every regional strain are in physiological
    ranges. Otherwise ``measurable`` is False and each failed test adds a flag
    ``not_measurable:REASON`` (``view``, ``mask_topology``, ``no_centreline``,
    ``centreline_length``, ``tracking``, ``gls_range``, ``regional_range``)."""

    name = "quality"
    inputs = ("frame", "view", "track", "gls_unchecked_pct", "regional_unchecked_pct")
    outputs = ("gls_pct", "regional_pct", "measurable", "wall_followed")
    sheddable = True

    def __init__(self, config: QualityConfig = QualityConfig(),
                 view: ViewConfig = ViewConfig()):
        self.config, self.view_config = config, view

    def reasons(self, frame: FrameMessage, view, track, gls, regional) -> list[str]:
        cfg, out = self.config, []
        vouched = frame.view == self.view_config.analysed_view or (
            view is not None and view["label"] == self.view_config.analysed_view
            and view["p"] >= self.view_config.min_confidence)
        if not vouched:
            out.append("view")
        if any(flag in track.flags for flag in _MASK_FLAGS):
            out.append("mask_topology")
        if not track.valid or gls is None:
            return [*out, "no_centreline"]
        length = float(polyline_length(track.points_mm))
        if not cfg.centreline_length_mm[0] <= length <= cfg.centreline_length_mm[1]:
            out.append("centreline_length")
        offset = np.hypot(*(track.points_mm - track.measured_points_mm).T)
        if not np.isfinite(offset).any() or np.nanmean(offset) > cfg.max_track_offset_mm:
            out.append("tracking")
        if not cfg.gls_in_range(gls):
            out.append("gls_range")
        if regional is None or not cfg.regional_in_range(regional.values()):
            out.append("regional_range")
        return out

    def process(self, frame: FrameMessage, view, track, gls_unchecked_pct,
                regional_unchecked_pct) -> dict[str, Any]:
        if track is None:  # not analysed (gated, shed, analysis off): nothing to judge
            return dict.fromkeys(self.outputs)
        reasons = self.reasons(frame, view, track, gls_unchecked_pct, regional_unchecked_pct)
        # the wall was followed (the frame counts for its beat's grade) even where this
        # frame's strain, against a provisional reference, is out of range
        followed = not [r for r in reasons if r not in _STRAIN_REASONS]
        if reasons:
            return {"gls_pct": None, "regional_pct": None, "measurable": False,
                    "wall_followed": followed,
                    "flags": [f"not_measurable:{reason}" for reason in reasons]}
        return {"gls_pct": gls_unchecked_pct, "regional_pct": regional_unchecked_pct,
                "measurable": True, "wall_followed": True}


class SummariseBeat(BeatStage):
    """Per beat: end-systole (the frame of peak shortening), peak GLS and the six regional
    peak strains, over the beat's frames from its end-diastole to the next one on which
    the wall was followed (a frame quality control refused gives no peak); and a grade
    from the share of its frames on which the wall was followed (view, mask, centreline and
    tracking tests passed: good >= 90 %, fair >= 60 %, else poor). A poor beat, or one whose
    peak is outside the physiological ranges, publishes no peak numbers."""

    name = "beat_summary"
    keeps = ("strain_sample", "wall_followed")
    outputs = ("es_seq", "peak_gls_pct", "regional_peak_pct", "duration_s", "quality",
               "measurable_fraction")

    def __init__(self, config: QualityConfig = QualityConfig()):
        self.config = config

    def process(self, beat: BeatFrames) -> dict[str, Any]:
        samples = beat.values["strain_sample"]
        out = dict.fromkeys(self.outputs)
        if not samples or beat.seqs[0] != beat.boundary.ed_seq \
                or beat.seqs[-1] != beat.boundary.end_seq:  # its ends were not kept
            return {**out, "quality": "poor"}
        cfg = self.config
        followed = beat.values["wall_followed"][:-1]  # the closing ED opens the next beat
        fraction = sum(followed) / len(followed)
        quality = beat_grade(fraction, cfg.good_fraction, cfg.fair_fraction)
        b = beat_from_points(beat.boundary.index, [s.t_s for s in samples],
                             np.stack([s.points_mm for s in samples]),
                             beat.boundary.fields.get("ed_source", ""), usable=followed)
        out.update(duration_s=round(b.duration_s, 4), quality=quality,
                   measurable_fraction=round(fraction, 3))
        peak, regional = float(b.peak_gls_pct), [float(v) for v in b.regional_peak_pct]
        if quality == "poor" or not (cfg.gls_in_range(peak) and cfg.regional_in_range(regional)):
            return {**out, "quality": "poor"}
        return {**out, "es_seq": beat.seqs[b.es_index], "peak_gls_pct": round(peak, 3),
                "regional_peak_pct": {k: round(v, 3) for k, v in zip(A4C_SEGMENTS, regional)}}


# --------------------------------------------------------------------------
# the app


@dataclass(frozen=True)
class EchoConfig:
    """The echo app's options."""

    view: ViewConfig = ViewConfig()
    tracker: TrackerConfig = TrackerConfig()
    centreline: CentrelineConfig = CentrelineConfig()
    beats: BeatConfig = BeatConfig()
    quality: QualityConfig = QualityConfig()


class EchoApp(App):
    """Apical 4-chamber echo: view, myocardium, motion, tracked centreline, GLS per frame;
    peak GLS and regional peaks per beat."""

    name = "echo"
    modalities = ("US",)
    roles = ("view", "seg", "flow")
    gate = ("frames classified a4c with p >= --min-view-confidence (a sender's view hint "
            "overrides; --view-gate off analyses every frame)")
    Config = EchoConfig
    result_fields = (
        Field("view", "object", "view classifier's answer the gate uses, its probabilities "
              "averaged over --view-smoothing-s: {label, p, frame: this frame's own {label, p}}"),
        Field("points_mm", "list", "tracked centreline: 120 [row, col] mm from the frame's "
              "top-left pixel, basal septum -> apex -> basal lateral"),
        Field("gls_pct", "number", "global longitudinal strain against the beat's "
              "end-diastole, %; null where the frame is not measurable"),
        Field("regional_pct", "object", "longitudinal strain of the six A4C segments, % "
              "(basal/mid/apical septal and lateral); null where not measurable"),
        Field("measurable", "boolean", "the frame's strain passed quality control (else "
              "flags not_measurable:REASON say why); null where not analysed"),
        Field("beat", "integer", "number of the beat this frame belongs to"),
        Field("phase", "string", "\"ED\" on an end-diastole frame, else null"),
    )
    beat_fields = (
        Field("es_seq", "integer", "end-systole: the frame of peak shortening"),
        Field("peak_gls_pct", "number", "GLS at end-systole, %; null for a poor beat"),
        Field("regional_peak_pct", "object", "each A4C segment's most negative strain in the "
              "beat, %; null for a poor beat"),
        Field("quality", "string", "good (the wall followed on >= 90 % of its frames), fair "
              "(>= 60 %) or poor (no peak numbers)"),
        Field("measurable_fraction", "number", "share of the beat's frames on which the wall "
              "was followed (view, mask, centreline and tracking tests passed)"),
        Field("duration_s", "number", "end-diastole to the next, s"),
        Field("ed_source", "string", "how end-diastole was found: ecg, cavity_area or length "
              "(written by the strain stage when the beat closes)"),
    )

    def stages(self) -> list[Stage]:
        cfg, engines = self.config, self.engines
        return [
            Preprocess(),
            ClassifyView(engines["view"], cfg.view),
            SegmentMyocardium(engines["seg"]),
            EstimateMotion(engines["flow"], grid_size=engines["seg"].spec.size),
            TrackCentreline(cfg.tracker, cfg.centreline),
            MeasureStrain(cfg.beats),
            CheckMeasurability(cfg.quality, cfg.view),
        ]

    def beat_stages(self) -> list[BeatStage]:
        return [SummariseBeat(self.config.quality)]

    def warmup(self) -> None:
        tracking_warmup()  # numba compiles (or loads its cache) now, not on the first frame
        labels_warmup()
