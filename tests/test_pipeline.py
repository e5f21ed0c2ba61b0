"""Pipeline wiring (checked at build time), stage timing, and the preprocess stage."""

import numpy as np
import pytest

from streamer.io.protocol import FrameMessage
from streamer.pipeline import (DebugDelay, FrameRejected, Pipeline, PipelineConfig,
                               PipelineWiringError, PlaceholderAnalysis, Preprocess, Stage,
                               build_pipeline)


def frame(pixels, **kw) -> FrameMessage:
    return FrameMessage(stream="s", seq=0, t_acq_ns=0, modality=kw.pop("modality", "US"),
                        pixels=pixels, spacing_mm=(0.3, 0.3), fps=50.0, **kw)


class Doubler(Stage):
    name = "doubler"
    inputs = ("image",)
    outputs = ("doubled",)

    def process(self, image):
        return {"doubled": image * 2, "flags": ["doubled"]}


class Forgetful(Stage):
    name = "forgetful"
    inputs = ("image",)
    outputs = ("something",)

    def process(self, image):
        return {}


def test_wiring_is_checked_when_the_pipeline_is_built():
    with pytest.raises(PipelineWiringError, match="reads \\['image'\\]"):
        Pipeline([Doubler(), Preprocess()])
    with pytest.raises(PipelineWiringError, match="already writes"):
        Pipeline([Preprocess(), Preprocess()])
    pipeline = Pipeline([Preprocess(), Doubler()])
    assert {"frame", "image", "doubled"} == pipeline.values_written


def test_each_stage_is_timed_and_flags_are_collected():
    outcome = Pipeline([Preprocess(), DebugDelay(5), Doubler()])(
        frame(np.full((4, 4), 255, np.uint8)))
    assert list(outcome.latency_ms) == ["preprocess", "debug_delay", "doubler"]
    assert outcome.latency_ms["debug_delay"] >= 4.5
    assert outcome.flags == ["doubled"]
    np.testing.assert_allclose(outcome.values["doubled"], 2.0)


def test_a_stage_that_forgets_an_output_is_a_bug_not_silence():
    with pytest.raises(RuntimeError, match="did not return"):
        Pipeline([Preprocess(), Forgetful()])(frame(np.zeros((2, 2), np.uint8)))


@pytest.mark.parametrize("pixels,expected", [
    (np.array([[0, 255]], np.uint8), [[0.0, 1.0]]),
    (np.array([[0, 65535]], np.uint16), [[0.0, 1.0]]),
    (np.array([[2.0, 4.0]], np.float32), [[0.0, 1.0]]),
])
def test_preprocess_scales_to_unit_range(pixels, expected):
    image = Preprocess().process(frame(pixels))["image"]
    assert image.dtype == np.float32
    np.testing.assert_allclose(image, expected, atol=1e-6)


def test_preprocess_colour_to_luma_and_mr_magnitude_channel():
    rgb = np.zeros((2, 2, 3), np.uint8)
    rgb[..., 1] = 255  # pure green: BT.601 luma 0.587
    np.testing.assert_allclose(Preprocess().process(frame(rgb))["image"], 0.587, atol=0.01)
    mr = np.zeros((2, 2, 4), np.float32)
    mr[0, 0, 0] = 1.0
    mr[..., 1] = 100.0  # a velocity channel must not leak into the image
    image = Preprocess().process(frame(mr, modality="MR",
                                       channels=("magnitude", "vx", "vy", "vz")))["image"]
    np.testing.assert_allclose(image, [[1, 0], [0, 0]])


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_pixels_reject_the_frame(bad):
    pixels = np.zeros((3, 3), np.float32)
    pixels[1, 2] = bad
    with pytest.raises(FrameRejected) as info:
        Preprocess().process(frame(pixels))
    assert info.value.code == "bad_pixels" and "1 NaN or infinite" in info.value.message


def test_default_pipeline_is_the_named_placeholder():
    pipeline = build_pipeline()
    assert [s.name for s in pipeline.stages] == ["preprocess", "placeholder"]
    outcome = pipeline(frame(np.zeros((4, 4), np.uint8)))
    assert outcome.flags == ["placeholder_analysis"]
    assert outcome.values["gls_pct"] is None and outcome.values["points_mm"] is None
    assert isinstance(pipeline.stages[-1], PlaceholderAnalysis)
    slow = build_pipeline(PipelineConfig(debug_delay_ms=1))
    assert [s.name for s in slow.stages] == ["preprocess", "debug_delay", "placeholder"]
    with pytest.raises(ValueError):
        DebugDelay(-1)
