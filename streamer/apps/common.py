"""Stages every app may use: preprocessing, and the runtime's test hook that slows frames.

:class:`Preprocess` turns any frame into the float image the networks take;
:class:`TrackingGrid` says where a frame sits on a network's pixel grid;
:class:`DebugDelay` and :class:`Delayed` are the test hook behind ``serve --debug-delay-ms``
(never part of an app's own stages: the runtime adds them when asked).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from engines.spec import Fit, grey_plane, unit_range
from streamer.app import FrameRejected, PipelineWiringError, Stage
from streamer.io.protocol import FrameMessage
from streamer.options import option, parse_pair


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
        grey = grey_plane(frame.pixels, multichannel=frame.channels is not None)
        if grey.dtype.kind == "f" and self.config.reject_non_finite:
            finite = np.isfinite(grey)
            if not finite.all():
                bad = int(finite.size - np.count_nonzero(finite))
                raise FrameRejected("bad_pixels", f"frame {frame.stream}#{frame.seq} has "
                                    f"{bad} NaN or infinite pixel(s) of {finite.size}")
        return {"image": unit_range(grey)}


@dataclass(frozen=True)
class TrackingGrid:
    """The pixel grid the mask and the flow live on (the segmenter's input) and where the
    frame sits in it: ``spacing_mm`` is mm per grid pixel (row, col)."""

    fit: Fit
    spacing_mm: tuple[float, float]
    #: (rows, cols) of the frame (None where the stage that made the grid did not say)
    frame_shape: tuple[int, int] | None = None

    def to_frame_mm(self, points_mm: np.ndarray) -> np.ndarray:
        """[row, col] mm on the grid -> mm from the frame's top-left pixel.

        The resize is pixel-centre aligned (OpenCV): grid pixel g lies at frame pixel
        (g - top + 0.5) / scale - 0.5, i.e. half a grid pixel less half a frame pixel
        beyond the plain rescale."""
        s = np.asarray(self.spacing_mm, dtype=np.float64)
        offset = np.array([self.fit.top, self.fit.left]) * s - 0.5 * s * (1.0 - self.fit.scale)
        return points_mm - offset


def softmax(logits: np.ndarray, axis: int = 0) -> np.ndarray:
    """Class probabilities from a network's logits along ``axis`` (numerically stable)."""
    e = np.exp(logits - logits.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def beat_grade(fraction: float, good: float = 0.9, fair: float = 0.6) -> str:
    """A beat's grade from the share of its frames that passed quality control: ``good``
    (at least ``good``), ``fair`` (at least ``fair``) or ``poor`` (no peak numbers)."""
    return "good" if fraction >= good else "fair" if fraction >= fair else "poor"


def parse_seqs(text: str) -> tuple[int, int]:
    """"30:59" -> (30, 59)."""
    return parse_pair(text, int, "FIRST:LAST")


@dataclass(frozen=True)
class DebugDelayConfig:
    """TEST HOOK (``serve --debug-delay-ms``): make the worker slower than the sender.

    ``stage=None`` adds a stage of its own (``debug_delay``) after preprocessing; a stage
    name (e.g. ``"flow"``) makes that stage slower instead, so that shedding it helps.
    ``seqs=(first, last)`` limits the delay to frames first..last (inclusive)."""

    delay_ms: float = option(0.0, "TEST HOOK: make frames slower by MS (0 = off)",
                             flag="--debug-delay-ms", metavar="MS")
    stage: str | None = option(None, "TEST HOOK: put the delay into this stage (e.g. flow) "
                               "instead of a stage of its own", flag="--debug-delay-stage",
                               metavar="STAGE")
    seqs: tuple[int, int] | None = option(
        None, "TEST HOOK: delay only frames FIRST..LAST (default: every frame)",
        flag="--debug-delay-seqs", metavar="FIRST:LAST", parse=parse_seqs,
        format=lambda seqs: f"{seqs[0]}:{seqs[1]}")

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

    def process(self, frame: FrameMessage, **inputs: Any) -> dict[str, Any]:
        if self.config.applies(frame.seq):
            time.sleep(self.config.delay_ms / 1e3)
        if "frame" in self.stage.inputs:
            inputs["frame"] = frame
        return self.stage.process(**inputs)


def with_debug_delay(stages: list[Stage], config: DebugDelayConfig) -> list[Stage]:
    """The test hook put into a stream's stages: a stage of its own after the first
    (preprocessing), or the named stage made slower."""
    if config.delay_ms <= 0:
        return stages
    if config.stage is None:
        return [stages[0], DebugDelay(config.delay_ms, config.seqs), *stages[1:]]
    names = [stage.name for stage in stages]
    if config.stage not in names:
        raise PipelineWiringError(f"--debug-delay-stage {config.stage!r} is not a stage of "
                                  f"this app ({', '.join(names)})")
    return [Delayed(stage, config) if stage.name == config.stage else stage
            for stage in stages]
