"""The echo app (Østvik et al. 2018): automatic GLS from apical 4-chamber cine, per frame.

In the order of the method::

    Preprocess -> ClassifyView -> SegmentMyocardium -> EstimateMotion
               -> TrackCentreline -> MeasureStrain            (per frame)
    SummariseBeat                                             (per closed beat)

The gate is the view: only frames the classifier calls A4C with enough confidence (or that
the sender says are A4C) are segmented, tracked and measured. The three networks run
through an engine of :mod:`engines.backends`; tracking and strain are
:mod:`streamer.measure`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from engines.spec import Fit, fit_to_input
from streamer.app import BEAT_CLOSED, App, BeatBoundary, BeatFrames, BeatStage, Field, Stage
from streamer.apps.common import Preprocess
from streamer.budget import FrameControls
from streamer.io.protocol import FrameMessage
from streamer.measure.centerline import CentrelineConfig
from streamer.measure.strain import BeatConfig, StrainMonitor, beat_from_points
from streamer.measure.tracking import CentrelineTracker, TrackerConfig
from streamer.measure.tracking import warmup as tracking_warmup
from streamer.options import option
from streamer.vocab import A4C_SEGMENTS, SEG_CLASSES, VIEW_CLASSES


def _softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max())
    return e / e.sum()


@dataclass(frozen=True)
class ViewConfig:
    """Which frames go on to segmentation, flow and strain.

    ``gate="classifier"``: frames the classifier calls ``analysed_view`` with at least
    ``min_confidence``; a sender's view hint (``frame.view``, e.g. ``replay --view a4c``)
    overrides the classifier (the operator knows the view; the classifier's answer is still
    reported, flagged ``view_hint_differs`` when it disagrees). ``gate="off"``: every
    frame is analysed as ``analysed_view``.
    """

    gate: str = option(
        "classifier", "classifier: only frames classified A4C go on; off: analyse every frame "
        "as A4C", flag="--view-gate", choices=("classifier", "off"))
    min_confidence: float = option(
        0.7, "classifier probability an A4C frame needs to go on",
        flag="--min-view-confidence", metavar="P")
    analysed_view: str = "a4c"

    def __post_init__(self):
        if self.gate not in ("classifier", "off"):
            raise ValueError(f"view gate {self.gate!r} is unknown; choose classifier or off")
        if self.analysed_view not in VIEW_CLASSES:
            raise ValueError(f"analysed_view {self.analysed_view!r} is not one of {VIEW_CLASSES}")
        if not 0.0 <= self.min_confidence <= 1.0:
            raise ValueError(f"min_confidence must be in [0, 1], got {self.min_confidence}")


class ClassifyView(Stage):
    """Image -> ``view`` {"label", "p"} and ``analyse``: whether the frame goes on.

    With ``controls.view_every = k > 1`` (the live side-car shedding work) the classifier
    runs on every k-th frame only while its last k answers agree; the frames between
    reuse its last answer (flag ``view_reused``)."""

    name = "view"
    inputs = ("frame", "image", "controls")
    outputs = ("view", "analyse")

    def __init__(self, engine, config: ViewConfig = ViewConfig()):
        self.engine = engine
        self.config = config
        self._answers: list[tuple[str, float]] = []  # the classifier's latest answers
        self._reused = 0  # frames since the classifier last ran

    def _classify(self, image: np.ndarray, every: int) -> tuple[str, float, bool]:
        recent = self._answers[-every:]
        if (every > 1 and self._reused + 1 < every and len(recent) == every
                and len({label for label, _ in recent}) == 1):
            self._reused += 1
            return (*self._answers[-1], True)
        x, _ = fit_to_input(image, self.engine.spec.size)
        p = _softmax(self.engine(x[None, None])[0])
        k = int(np.argmax(p))
        self._answers = [*self._answers[-7:], (VIEW_CLASSES[k], float(p[k]))]
        self._reused = 0
        return VIEW_CLASSES[k], float(p[k]), False

    def process(self, frame: FrameMessage, image: np.ndarray,
                controls: FrameControls) -> dict[str, Any]:
        label, p_label, reused = self._classify(image, controls.view_every)
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
        return {"view": {"label": label, "p": round(p_label, 4)}, "analyse": analyse,
                "flags": flags}


@dataclass(frozen=True)
class TrackingGrid:
    """The pixel grid the mask and the flow live on (the segmenter's input) and where the
    frame sits in it: ``spacing_mm`` is mm per grid pixel (row, col)."""

    fit: Fit
    spacing_mm: tuple[float, float]

    def to_frame_mm(self, points_mm: np.ndarray) -> np.ndarray:
        """[row, col] mm on the grid -> mm from the frame's top-left pixel.

        The resize is pixel-centre aligned (OpenCV): grid pixel g lies at frame pixel
        (g - top + 0.5) / scale - 0.5, i.e. half a grid pixel less half a frame pixel
        beyond the plain rescale."""
        s = np.asarray(self.spacing_mm, dtype=np.float64)
        offset = np.array([self.fit.top, self.fit.left]) * s - 0.5 * s * (1.0 - self.fit.scale)
        return points_mm - offset


class SegmentMyocardium(Stage):
    """Image -> LV myocardium ``mask`` (uint8, on the segmenter's grid) and that ``grid``."""

    name = "segment"
    inputs = ("frame", "image", "analyse")
    outputs = ("mask", "grid")
    sheddable = True

    def __init__(self, engine):
        self.engine = engine
        self.myocardium = SEG_CLASSES.index("myocardium")

    def process(self, frame: FrameMessage, image: np.ndarray, analyse: bool) -> dict[str, Any]:
        if not analyse:
            return {"mask": None, "grid": None}
        x, fit = fit_to_input(image, self.engine.spec.size)
        logits = self.engine(x[None, None])[0]
        mask = (np.argmax(logits, axis=0) == self.myocardium).view(np.uint8)
        spacing = (frame.spacing_mm[0] / fit.scale, frame.spacing_mm[1] / fit.scale)
        return {"mask": mask, "grid": TrackingGrid(fit, spacing)}


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
    """Tracked centreline -> ``gls_pct``, ``regional_pct``, ``beat``, ``phase``;
    ``strain_sample`` (the frame's time and centreline, kept for the beat summary) and
    ``beat_closed`` (a :class:`~streamer.app.BeatBoundary`) when a cycle completes.

    Strain is against the current beat's end-diastole (the first tracked frame until one
    is found). A re-initialised track follows new material points, so strain restarts
    with it (flag ``strain_restarted``)."""

    name = "strain"
    inputs = ("frame", "track")
    outputs = ("gls_pct", "regional_pct", "beat", "phase", "strain_sample", BEAT_CLOSED)
    sheddable = True

    def __init__(self, config: BeatConfig = BeatConfig()):
        self.config = config
        self._restart()

    def _restart(self) -> None:
        self.monitor = StrainMonitor(self.config)
        self.seqs: list[int] = []  # the frame each of the monitor's frames was

    def process(self, frame: FrameMessage, track) -> dict[str, Any]:
        none = dict.fromkeys(self.outputs)
        if track is None:
            return none
        flags = []
        if "reinitialised" in track.flags and self.seqs:
            self._restart()
            flags.append("strain_restarted")
        fs = self.monitor.update(track.t_s, track.points_mm, frame.ecg_r)
        self.seqs.append(frame.seq)
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
        return {"gls_pct": round(fs.gls_pct, 3),
                "regional_pct": {k: round(float(v), 3) for k, v in zip(A4C_SEGMENTS, fs.regional_pct)},
                "beat": fs.beat_index, "phase": "ED" if fs.is_ed else None,
                "strain_sample": sample, BEAT_CLOSED: closed, "flags": flags}


@dataclass(frozen=True)
class StrainSample:
    """What the beat summary keeps of a frame: its time and centreline (120 [row, col] mm)."""

    t_s: float
    points_mm: np.ndarray


class SummariseBeat(BeatStage):
    """Per beat: end-systole (the frame of peak shortening), peak GLS and the six regional
    peak strains, over the beat's frames from its end-diastole to the next one."""

    name = "beat_summary"
    keeps = ("strain_sample",)
    outputs = ("es_seq", "peak_gls_pct", "regional_peak_pct", "duration_s")

    def process(self, beat: BeatFrames) -> dict[str, Any]:
        samples = beat.values["strain_sample"]
        if not samples or beat.seqs[0] != beat.boundary.ed_seq \
                or beat.seqs[-1] != beat.boundary.end_seq:  # its ends were not kept
            return dict.fromkeys(self.outputs)
        b = beat_from_points(beat.boundary.index, [s.t_s for s in samples],
                             np.stack([s.points_mm for s in samples]),
                             beat.boundary.fields.get("ed_source", ""))
        return {"es_seq": beat.seqs[b.es_index], "peak_gls_pct": round(float(b.peak_gls_pct), 3),
                "regional_peak_pct": {k: round(float(v), 3)
                                      for k, v in zip(A4C_SEGMENTS, b.regional_peak_pct)},
                "duration_s": round(b.duration_s, 4)}


# --------------------------------------------------------------------------
# the app


@dataclass(frozen=True)
class EchoConfig:
    """The echo app's options."""

    view: ViewConfig = ViewConfig()
    tracker: TrackerConfig = TrackerConfig()
    centreline: CentrelineConfig = CentrelineConfig()
    beats: BeatConfig = BeatConfig()


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
        Field("view", "object", "view classifier's answer: {label, p}"),
        Field("points_mm", "list", "tracked centreline: 120 [row, col] mm from the frame's "
              "top-left pixel, basal septum -> apex -> basal lateral"),
        Field("gls_pct", "number", "global longitudinal strain against the beat's "
              "end-diastole, %"),
        Field("regional_pct", "object", "longitudinal strain of the six A4C segments, % "
              "(basal/mid/apical septal and lateral)"),
        Field("beat", "integer", "number of the beat this frame belongs to"),
        Field("phase", "string", "\"ED\" on an end-diastole frame, else null"),
    )
    beat_fields = (
        Field("es_seq", "integer", "end-systole: the frame of peak shortening"),
        Field("peak_gls_pct", "number", "GLS at end-systole, %"),
        Field("regional_peak_pct", "object", "each A4C segment's most negative strain in the "
              "beat, %"),
        Field("duration_s", "number", "end-diastole to the next, s"),
        Field("ed_source", "string", "how end-diastole was found: ecg or length (written by "
              "the strain stage when the beat closes)"),
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
        ]

    def beat_stages(self) -> list[BeatStage]:
        return [SummariseBeat()]

    def warmup(self) -> None:
        tracking_warmup()  # numba compiles (or loads its cache) now, not on the first frame
