"""The per-frame pipeline: stages that declare what they read and write, wired in one place.

A :class:`Stage` is a plain object with a ``name``, the named values it reads
(``inputs``) and the named values it writes (``outputs``). A :class:`Pipeline`
checks the wiring once, when it is built (every input is written by an
earlier stage or is the frame itself, no value is written twice), then runs the
stages in order for each frame and times each one.

The values a frame starts with are ``frame`` (the decoded
:class:`~streamer.io.protocol.FrameMessage`). Stages may also return the key
``flags`` (a list of strings) to mark something about this frame; flags are
collected, not wired. A stage that finds the frame unusable raises
:class:`FrameRejected`; the side-car then answers with an error message for
that frame and goes on with the next one.

:func:`build_pipeline` is where the application wires its stages. Until the
engines land (issue 5) the analysis is a named placeholder,
:class:`PlaceholderAnalysis`, which computes nothing but still yields a real
result per frame (sequence number, timestamps, per-stage latency).
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar, Sequence

import cv2
import numpy as np

from streamer.io.protocol import FrameMessage

#: values every pipeline starts with, before the first stage runs.
SOURCE_VALUES = ("frame",)
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

    def __call__(self, frame: FrameMessage) -> FrameOutcome:
        values: dict[str, Any] = {"frame": frame}
        latency_ms: dict[str, float] = {}
        flags: list[str] = []
        for stage in self.stages:
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


class PlaceholderAnalysis(Stage):
    """PLACEHOLDER for the analysis stages (view, segmentation, flow, tracking, strain).

    It computes nothing: every result field is ``None`` and each result carries
    the flag ``placeholder_analysis`` so no consumer mistakes its output for a
    measurement. Issue 5 replaces it with the engines and the measure stages.
    """

    name = "placeholder"
    inputs = ("image",)
    outputs = RESULT_FIELDS

    def process(self, image: np.ndarray) -> dict[str, Any]:
        return {**{name: None for name in RESULT_FIELDS}, "flags": ["placeholder_analysis"]}


class DebugDelay(Stage):
    """TEST HOOK: sleeps a fixed time per frame, to make the worker slower than the sender.

    Used by the tests of live-mode dropping and by ``serve --debug-delay-ms``;
    never part of a default pipeline.
    """

    name = "debug_delay"

    def __init__(self, delay_ms: float):
        if delay_ms < 0:
            raise ValueError(f"delay_ms must be >= 0, got {delay_ms}")
        self.delay_s = delay_ms / 1e3

    def process(self) -> dict[str, Any]:
        time.sleep(self.delay_s)
        return {}


@dataclass(frozen=True)
class PipelineConfig:
    """Which stages the application wires (one place, read top to bottom)."""

    preprocess: PreprocessConfig = PreprocessConfig()
    #: test hook: extra delay per frame in ms (0 = off)
    debug_delay_ms: float = 0.0


def build_pipeline(config: PipelineConfig = PipelineConfig()) -> Pipeline:
    """The application's pipeline, in the order a frame meets the stages."""
    stages: list[Stage] = [Preprocess(config.preprocess)]
    if config.debug_delay_ms > 0:
        stages.append(DebugDelay(config.debug_delay_ms))
    stages.append(PlaceholderAnalysis())
    return Pipeline(stages)
