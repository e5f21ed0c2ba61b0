"""The per-frame pipeline: stages that declare what they read and write, wired in one place.

A :class:`Stage` is a plain object with a ``name``, the named values it reads
(``inputs``) and the named values it writes (``outputs``). A :class:`Pipeline`
checks the wiring once, when it is built (every input is written by an
earlier stage or is the frame itself, no value is written twice), then runs the
stages in order for each frame and times each one.

The values a frame starts with are ``frame`` (the decoded
:class:`~streamer.io.protocol.FrameMessage`) and ``controls`` (the
:class:`~streamer.budget.FrameControls` the live side-car's budget controller set for
it: see :mod:`streamer.budget`). Stages marked ``sheddable`` (segmentation, flow,
tracking, strain) are not run on a frame whose controls say ``analyse=False``; their
outputs are ``None`` and the frame is flagged ``analysis_skipped``. Stages may also return the key
``flags`` (a list of strings) to mark something about this frame; flags are
collected, not wired. A stage that finds the frame unusable raises
:class:`FrameRejected`; the side-car then answers with an error message for
that frame and goes on with the next one.

:func:`build_pipeline` is where the application wires its stages, in the
order of the method (Østvik et al. 2018)::

    Preprocess -> ClassifyView -> SegmentMyocardium -> EstimateMotion
               -> TrackCentreline -> MeasureStrain

The three networks run through an engine of :mod:`engines.backends` (one call
signature for every backend); tracking and strain are :mod:`streamer.measure`.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar, Sequence

import cv2
import numpy as np

from engines.spec import SEG_CLASSES, VIEW_CLASSES, Fit, fit_to_input
from streamer.budget import FULL, FrameControls
from streamer.io.protocol import BeatMessage, FrameMessage
from streamer.measure.strain import A4C_SEGMENTS, BeatConfig, StrainMonitor
from streamer.measure.tracking import CentrelineTracker, TrackerConfig
from streamer.measure.tracking import warmup as tracking_warmup

#: values every pipeline starts with, before the first stage runs.
SOURCE_VALUES = ("frame", "controls")
#: result fields a stage may write; the result message carries them under these names.
RESULT_FIELDS = ("view", "points_mm", "gls_pct", "regional_pct", "beat", "phase")


class FrameRejected(Exception):
    """This frame cannot be processed (the side-car answers with an error and goes on)."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


class PipelineWiringError(ValueError):
    """The stages do not fit together (raised when the pipeline is built, not per frame)."""


class Stage(ABC):
    """One step of the pipeline.

    Subclasses set ``name``, ``inputs`` and ``outputs`` and implement
    :meth:`process`, which receives the inputs as keyword arguments and returns
    a dict holding every declared output (and optionally ``flags``).
    """

    name: ClassVar[str]
    inputs: ClassVar[tuple[str, ...]] = ()
    outputs: ClassVar[tuple[str, ...]] = ()
    #: may be left out on a frame when the live side-car sheds work (streamer.budget)
    sheddable: ClassVar[bool] = False

    def start_stream(self, stream: str, meta: dict) -> None:  # noqa: B027 (optional hook)
        """A new stream begins: forget per-stream state. Stateless stages ignore it."""

    @abstractmethod
    def process(self, **inputs: Any) -> dict[str, Any]:
        """Compute this stage's outputs for one frame."""


@dataclass
class FrameOutcome:
    """What a pipeline run produced for one frame."""

    values: dict[str, Any]
    latency_ms: dict[str, float]
    flags: list[str] = field(default_factory=list)


class Pipeline:
    """Stages in the order the frame meets them, checked once, timed per frame."""

    def __init__(self, stages: Sequence[Stage]):
        self.stages = list(stages)
        available = set(SOURCE_VALUES)
        for stage in self.stages:
            missing = [name for name in stage.inputs if name not in available]
            if missing:
                raise PipelineWiringError(
                    f"stage {stage.name!r} reads {missing}, which no earlier stage writes "
                    f"(available: {sorted(available)})")
            twice = [name for name in stage.outputs if name in available]
            if twice:
                raise PipelineWiringError(f"stage {stage.name!r} writes {twice}, which an "
                                          "earlier stage already writes")
            available.update(stage.outputs)
        names = [stage.name for stage in self.stages]
        if len(set(names)) != len(names):
            raise PipelineWiringError(f"stage names must be unique, got {names}")
        self.values_written = frozenset(available)

    def start_stream(self, stream: str, meta: dict) -> None:
        for stage in self.stages:
            stage.start_stream(stream, meta)

    def __call__(self, frame: FrameMessage, controls: FrameControls = FULL) -> FrameOutcome:
        values: dict[str, Any] = {"frame": frame, "controls": controls}
        latency_ms: dict[str, float] = {}
        flags: list[str] = []
        for stage in self.stages:
            # shed only work the view gate let through: a gated frame still runs the
            # stages, which then reset their per-stream state (a gap in the analysis)
            if stage.sheddable and not controls.analyse and values.get("analyse", True):
                values.update(dict.fromkeys(stage.outputs))
                if "analysis_skipped" not in flags:
                    flags.append("analysis_skipped")
                continue
            t0 = time.perf_counter_ns()
            out = stage.process(**{name: values[name] for name in stage.inputs})
            latency_ms[stage.name] = (time.perf_counter_ns() - t0) / 1e6
            flags.extend(out.pop("flags", ()))
            missing = [name for name in stage.outputs if name not in out]
            if missing:
                raise RuntimeError(f"stage {stage.name!r} did not return {missing}")
            values.update(out)
        return FrameOutcome(values=values, latency_ms=latency_ms, flags=flags)


# --------------------------------------------------------------------------
# stages


@dataclass(frozen=True)
class PreprocessConfig:
    """How frames are brought to the networks' input form."""

    #: reject frames with NaN/inf pixels (float frames only; integer frames cannot hold them)
    reject_non_finite: bool = True


class Preprocess(Stage):
    """Frame pixels -> float32 greyscale image scaled to [0, 1] (rows, cols).

    RGB colour is converted to luma (ITU-R BT.601), multichannel MR uses its
    first channel (magnitude). Integer frames are scaled by their dtype's
    maximum; float frames are min-max scaled per frame. NaN or infinite pixels
    reject the frame.
    """

    name = "preprocess"
    inputs = ("frame",)
    outputs = ("image",)

    def __init__(self, config: PreprocessConfig = PreprocessConfig()):
        self.config = config

    def process(self, frame: FrameMessage) -> dict[str, Any]:
        pixels = frame.pixels
        if pixels.ndim == 3:
            if frame.channels is None and pixels.shape[2] == 3:
                pixels = cv2.cvtColor(np.ascontiguousarray(pixels), cv2.COLOR_RGB2GRAY) \
                    if pixels.dtype == np.uint8 else pixels @ np.array(
                        [0.299, 0.587, 0.114], dtype=np.float32)
            else:
                pixels = pixels[..., 0]
        if pixels.dtype.kind == "f":
            if self.config.reject_non_finite:
                finite = np.isfinite(pixels)
                if not finite.all():
                    bad = int(finite.size - np.count_nonzero(finite))
                    raise FrameRejected("bad_pixels", f"frame {frame.stream}#{frame.seq} has "
                                        f"{bad} NaN or infinite pixel(s) of {finite.size}")
            lo, hi = float(pixels.min()), float(pixels.max())
            image = (pixels.astype(np.float32) - lo) / (hi - lo if hi > lo else 1.0)
        else:
            image = pixels.astype(np.float32) * np.float32(1.0 / np.iinfo(pixels.dtype).max)
        return {"image": image}


@dataclass(frozen=True)
class DebugDelayConfig:
    """TEST HOOK (``serve --debug-delay-ms``): make the worker slower than the sender.

    ``stage=None`` adds a stage of its own (``debug_delay``) after preprocessing; a stage
    name (e.g. ``"flow"``) makes that stage slower instead, so that shedding it helps.
    ``seqs=(first, last)`` limits the delay to frames first..last (inclusive)."""

    delay_ms: float = 0.0
    stage: str | None = None
    seqs: tuple[int, int] | None = None

    def __post_init__(self):
        if self.delay_ms < 0:
            raise ValueError(f"delay_ms must be >= 0, got {self.delay_ms}")
        if self.seqs is not None and not 0 <= self.seqs[0] <= self.seqs[1]:
            raise ValueError(f"seqs must be (first, last) with 0 <= first <= last, got {self.seqs}")

    def applies(self, seq: int) -> bool:
        return self.seqs is None or self.seqs[0] <= seq <= self.seqs[1]


class DebugDelay(Stage):
    """TEST HOOK: sleeps a fixed time per frame (see :class:`DebugDelayConfig`); never
    part of a default pipeline."""

    name = "debug_delay"
    inputs = ("frame",)

    def __init__(self, delay_ms: float, seqs: tuple[int, int] | None = None):
        self.config = DebugDelayConfig(delay_ms, None, seqs)

    def process(self, frame: FrameMessage) -> dict[str, Any]:
        if self.config.applies(frame.seq):
            time.sleep(self.config.delay_ms / 1e3)
        return {}


class Delayed(Stage):
    """TEST HOOK: another stage, made slower by a sleep before it runs."""

    def __init__(self, stage: Stage, config: DebugDelayConfig):
        self.stage, self.config = stage, config
        self.name, self.outputs, self.sheddable = stage.name, stage.outputs, stage.sheddable
        self.inputs = tuple(dict.fromkeys(("frame", *stage.inputs)))

    def start_stream(self, stream: str, meta: dict) -> None:
        self.stage.start_stream(stream, meta)

    def process(self, frame: FrameMessage, **inputs: Any) -> dict[str, Any]:
        if self.config.applies(frame.seq):
            time.sleep(self.config.delay_ms / 1e3)
        if "frame" in self.stage.inputs:
            inputs["frame"] = frame
        return self.stage.process(**inputs)


# --------------------------------------------------------------------------
# the analysis, in the order of the method (Østvik et al. 2018):
# view -> myocardium mask -> dense motion -> tracked centreline -> strain


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

    gate: str = "classifier"
    min_confidence: float = 0.7
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
        self.start_stream("", {})

    def start_stream(self, stream: str, meta: dict) -> None:
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

    def start_stream(self, stream: str, meta: dict) -> None:
        self._previous = None

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

    def __init__(self, config: TrackerConfig = TrackerConfig()):
        self.config = config
        self.tracker = CentrelineTracker(config)

    def start_stream(self, stream: str, meta: dict) -> None:
        self.tracker = CentrelineTracker(self.config)

    def process(self, frame: FrameMessage, mask, flow, grid) -> dict[str, Any]:
        if mask is None:
            self.tracker.reset()
            return {"points_mm": None, "track": None}
        track = self.tracker.step(mask, flow, frame.t_acq_ns / 1e9, grid.spacing_mm)
        points = grid.to_frame_mm(track.points_mm).round(3).tolist() if track.valid else None
        return {"points_mm": points, "track": track, "flags": track.flags}


class MeasureStrain(Stage):
    """Tracked centreline -> ``gls_pct``, ``regional_pct``, ``beat``, ``phase``; and
    ``beat_closed`` (a :class:`~streamer.io.protocol.BeatMessage`) when a cycle completes.

    Strain is against the current beat's end-diastole (the first tracked frame until one
    is found). A re-initialised track follows new material points, so strain restarts
    with it (flag ``strain_restarted``)."""

    name = "strain"
    inputs = ("frame", "track")
    outputs = ("gls_pct", "regional_pct", "beat", "phase", "beat_closed")
    sheddable = True

    def __init__(self, config: BeatConfig = BeatConfig()):
        self.config = config
        self.start_stream("", {})

    def start_stream(self, stream: str, meta: dict) -> None:
        self.monitor = StrainMonitor(self.config)
        self.seqs: list[int] = []

    def process(self, frame: FrameMessage, track) -> dict[str, Any]:
        none = {"gls_pct": None, "regional_pct": None, "beat": None, "phase": None,
                "beat_closed": None}
        if track is None:
            return none
        flags = []
        if "reinitialised" in track.flags and self.seqs:
            self.start_stream(frame.stream, {})
            flags.append("strain_restarted")
        fs = self.monitor.update(track.t_s, track.points_mm, frame.ecg_r)
        self.seqs.append(frame.seq)
        flags += fs.flags
        closed = None
        if fs.beat is not None:
            b = fs.beat
            closed = BeatMessage(
                stream=frame.stream, beat=b.index, ed_seq=self.seqs[b.ed_index],
                es_seq=self.seqs[b.es_index], peak_gls_pct=round(float(b.peak_gls_pct), 3),
                regional_peak_pct={k: round(float(v), 3)
                                   for k, v in zip(A4C_SEGMENTS, b.regional_peak_pct)},
                extra={"duration_s": round(b.duration_s, 4), "ed_source": b.ed_source})
        if not np.isfinite(fs.gls_pct):
            return {**none, "beat_closed": closed, "flags": flags}
        return {"gls_pct": round(fs.gls_pct, 3),
                "regional_pct": {k: round(float(v), 3) for k, v in zip(A4C_SEGMENTS, fs.regional_pct)},
                "beat": fs.beat_index, "phase": "ED" if fs.is_ed else None,
                "beat_closed": closed, "flags": flags}

@dataclass(frozen=True)
class EngineConfig:
    """How the three networks run (see ``engines.backends.create_engine``)."""

    #: auto | torch | onnxruntime | openvino | tensorrt
    backend: str = "auto"
    #: fp32 | fp16 | int8
    precision: str = "fp32"
    #: CPU threads for the backend (None: all cores)
    threads: int | None = None
    #: torch / tensorrt device, e.g. "cuda" or "cuda:1" (None: the backend's own)
    device: str | None = None
    #: a user's models, (role, path) pairs: state dict, TorchScript or ONNX
    weights: tuple[tuple[str, str], ...] = ()


ANALYSES = ("echo", "none")


@dataclass(frozen=True)
class PipelineConfig:
    """Which stages the application wires (one place, read top to bottom).

    ``analysis="echo"``: view -> segmentation -> flow -> tracking -> strain;
    ``analysis="none"``: preprocessing only, every analysis field ``null`` and the flag
    ``analysis_off`` (for transport and latency checks of the runtime itself).
    """

    preprocess: PreprocessConfig = PreprocessConfig()
    analysis: str = "echo"
    engines: EngineConfig = EngineConfig()
    view: ViewConfig = ViewConfig()
    tracker: TrackerConfig = TrackerConfig()
    beats: BeatConfig = BeatConfig()
    #: test hook: extra delay per frame, ms, in a stage of its own or in a named stage
    debug_delay: DebugDelayConfig = DebugDelayConfig()

    def __post_init__(self):
        if self.analysis not in ANALYSES:
            raise ValueError(f"analysis {self.analysis!r} is unknown; choose one of {ANALYSES}")


class AnalysisOff(Stage):
    """``analysis="none"``: no analysis; every result field ``None``, flag ``analysis_off``."""

    name = "analysis_off"
    inputs = ("image",)
    outputs = RESULT_FIELDS

    def process(self, image: np.ndarray) -> dict[str, Any]:
        return {**{name: None for name in RESULT_FIELDS}, "flags": ["analysis_off"]}


def load_engines(config: EngineConfig) -> dict[str, Any]:
    """The three engines, built (or loaded from the engine cache) and run once."""
    from engines.backends import create_engine

    weights = dict(config.weights)
    engines = {role: create_engine(role, backend=config.backend, precision=config.precision,
                                   weights=weights.get(role), threads=config.threads,
                                   device=config.device)
               for role in ("view", "seg", "flow")}
    for engine in engines.values():  # first inference pays one-off allocations
        engine(np.zeros(engine.spec.input.shape, np.float32))
    return engines


def build_pipeline(config: PipelineConfig = PipelineConfig()) -> Pipeline:
    """The application's pipeline, in the order a frame meets the stages."""
    stages: list[Stage] = [Preprocess(config.preprocess)]
    delay = config.debug_delay
    if delay.delay_ms > 0 and delay.stage is None:
        stages.append(DebugDelay(delay.delay_ms, delay.seqs))
    if config.analysis == "none":
        return _delayed(Pipeline([*stages, AnalysisOff()]), delay)
    engines = load_engines(config.engines)
    tracking_warmup()  # numba compiles (or loads its cache) now, not on the first frame
    stages += [
        ClassifyView(engines["view"], config.view),
        SegmentMyocardium(engines["seg"]),
        EstimateMotion(engines["flow"], grid_size=engines["seg"].spec.size),
        TrackCentreline(config.tracker),
        MeasureStrain(config.beats),
    ]
    return _delayed(Pipeline(stages), delay)


def _delayed(pipeline: Pipeline, delay: DebugDelayConfig) -> Pipeline:
    """The test hook's delay put into the named stage."""
    if delay.delay_ms <= 0 or delay.stage is None:
        return pipeline
    names = [stage.name for stage in pipeline.stages]
    if delay.stage not in names:
        raise PipelineWiringError(f"--debug-delay-stage {delay.stage!r} is not a stage of this "
                                  f"pipeline ({', '.join(names)})")
    return Pipeline([Delayed(stage, delay) if stage.name == delay.stage else stage
                     for stage in pipeline.stages])
