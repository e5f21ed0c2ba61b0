"""The cardiac-MR short-axis app: SKELETON.

Routed by ``modality: "MR"``. Each slice of a stack travels as its own stream
(``NAME/slice-K``), so the app's per-stream state is one slice's. The analysis of the
method (joint segmentation and motion, Qin et al. 2018; AHA segments; circumferential and
radial strain; per-beat wall-motion scores) is still to come: today its one stage is a
PLACEHOLDER that counts the frames seen in the slice, so that the runtime's seams (routing
by modality, per-stream state, declared fields) are exercised by a second app.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from streamer.app import App, Field, Stage
from streamer.apps.common import Preprocess
from streamer.io.protocol import FrameMessage


class CountSliceFrames(Stage):
    """PLACEHOLDER for the MR analysis: the number of frames seen in this slice's stream."""

    name = "count_slice_frames"
    inputs = ("frame", "image")
    outputs = ("frames_in_slice",)

    def __init__(self):
        self.frames = 0

    def process(self, frame: FrameMessage, image) -> dict[str, Any]:
        self.frames += 1
        return {"frames_in_slice": self.frames, "flags": ["mr_placeholder"]}


@dataclass(frozen=True)
class MrShortAxisConfig:
    """The MR short-axis app's options (none yet)."""


class MrShortAxisApp(App):
    """Short-axis cine MR, one slice per stream. SKELETON: counts frames per slice."""

    name = "mr-sax"
    modalities = ("MR",)
    gate = "every frame (placeholder)"
    Config = MrShortAxisConfig
    result_fields = (
        Field("frames_in_slice", "integer", "PLACEHOLDER: frames seen so far in this slice's "
              "stream"),
    )

    def stages(self) -> list[Stage]:
        return [Preprocess(), CountSliceFrames()]
