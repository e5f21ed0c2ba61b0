"""Stages every app may use (streamer.apps.common): preprocessing, and the debug-delay test
hook that the runtime puts into a stream's stages; the runtime-only app ``none``."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

import engines
from streamer import __version__
from streamer.app import FrameRejected, Pipeline, PipelineWiringError, Stage
from streamer.apps import Analysis, AnalysisConfig, EngineConfig, build_analysis
from streamer.apps.common import (
    DebugDelay,
    DebugDelayConfig,
    Delayed,
    Preprocess,
    PreprocessConfig,
    with_debug_delay,
)
from streamer.apps.mr_sax import InfarctConfig, MrShortAxisConfig, WallMotionConfig
from streamer.apps.none import AnalysisOff, NoAnalysisApp
from streamer.io.protocol import FrameMessage


def frame(pixels=None, seq=0, **kw) -> FrameMessage:
    return FrameMessage(stream="s", seq=seq, t_acq_ns=0, modality=kw.pop("modality", "US"),
                        pixels=np.zeros((4, 4), np.uint8) if pixels is None else pixels,
                        spacing_mm=(0.3, 0.3), fps=50.0, **kw)


# -- preprocessing ---------------------------------------------------------------------


@pytest.mark.parametrize("pixels,expected", [
    (np.array([[0, 255]], np.uint8), [[0.0, 1.0]]),
    (np.array([[0, 65535]], np.uint16), [[0.0, 1.0]]),
    (np.array([[2.0, 4.0]], np.float32), [[0.0, 1.0]]),
])
def test_preprocess_scales_to_unit_range(pixels, expected):
    image = Preprocess().process(frame(pixels))["image"]
    assert image.dtype == np.float32
    np.testing.assert_allclose(image, expected, atol=1e-6)


def test_preprocess_of_a_flat_float_frame_does_not_divide_by_zero():
    image = Preprocess().process(frame(np.full((2, 3), 7.0, np.float32)))["image"]
    np.testing.assert_array_equal(image, 0.0)


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
    # the check can be switched off: the frame then goes on
    with np.errstate(invalid="ignore"):
        Preprocess(PreprocessConfig(reject_non_finite=False)).process(frame(pixels))


# -- the debug-delay test hook ---------------------------------------------------------


class Slow(Stage):
    """A stage that reads the frame only through another value."""

    name = "slow"
    inputs = ("image",)
    outputs = ("mean",)
    sheddable = True

    def process(self, image):
        return {"mean": float(image.mean()), "flags": ["slow_ran"]}


def test_debug_delay_config_refuses_nonsense_and_limits_the_frames():
    with pytest.raises(ValueError):
        DebugDelay(-1)
    with pytest.raises(ValueError, match="delay_ms"):
        DebugDelayConfig(-0.5)
    with pytest.raises(ValueError, match="seqs"):
        DebugDelayConfig(1.0, seqs=(5, 2))
    with pytest.raises(ValueError, match="seqs"):
        DebugDelayConfig(1.0, seqs=(-1, 2))
    config = DebugDelayConfig(1.0, seqs=(3, 5))
    assert [config.applies(seq) for seq in range(2, 7)] == [False, True, True, True, False]
    assert DebugDelayConfig(1.0).applies(10**9)


def test_debug_delay_stage_sleeps_only_on_its_frames():
    pipeline = Pipeline([Preprocess(), DebugDelay(20.0, seqs=(1, 1))])
    fast, slow = pipeline(frame(seq=0)), pipeline(frame(seq=1))
    assert slow.latency_ms["debug_delay"] >= 18.0
    assert fast.latency_ms["debug_delay"] < 10.0


def test_with_debug_delay_adds_a_stage_after_preprocessing():
    stages = [Preprocess(), Slow()]
    assert with_debug_delay(stages, DebugDelayConfig(0.0)) is stages  # no delay: untouched
    delayed = with_debug_delay(stages, DebugDelayConfig(1.0))
    assert [s.name for s in delayed] == ["preprocess", "debug_delay", "slow"]
    assert delayed[0] is stages[0] and delayed[2] is stages[1]


def test_with_debug_delay_makes_a_named_stage_slower_keeping_its_wiring():
    slow = Slow()
    stages = with_debug_delay([Preprocess(), slow], DebugDelayConfig(20.0, stage="slow",
                                                                     seqs=(1, 1)))
    wrapped = stages[1]
    assert isinstance(wrapped, Delayed) and wrapped.stage is slow
    assert (wrapped.name, wrapped.outputs, wrapped.sheddable) == ("slow", ("mean",), True)
    assert wrapped.inputs == ("frame", "image")  # the frame, for its seq
    pipeline = Pipeline(stages)
    fast, delayed = pipeline(frame(seq=0)), pipeline(frame(seq=1))
    assert delayed.latency_ms["slow"] >= 18.0 and fast.latency_ms["slow"] < 10.0
    assert delayed.values["mean"] == 0.0 and delayed.flags == ["slow_ran"]
    with pytest.raises(PipelineWiringError, match="'flow' is not a stage"):
        with_debug_delay([Preprocess(), Slow()], DebugDelayConfig(1.0, stage="flow"))


def test_a_delayed_stage_that_reads_the_frame_still_gets_it():
    stages = with_debug_delay([Preprocess()], DebugDelayConfig(1.0, stage="preprocess"))
    assert stages[0].inputs == ("frame",)
    outcome = Pipeline(stages)(frame(np.full((2, 2), 255, np.uint8)))
    np.testing.assert_allclose(outcome.values["image"], 1.0)


# -- the runtime-only app ----------------------------------------------------------------


def test_analysis_off_app_computes_nothing_and_says_so():
    analysis = build_analysis(AnalysisConfig(app="none"))
    app = analysis.apps["none"]
    assert isinstance(app, NoAnalysisApp) and list(analysis.apps) == ["none"]
    instance = analysis.new_stream(app, "s")
    assert [s.name for s in instance.pipeline.stages] == ["preprocess", "analysis_off"]
    assert isinstance(instance.pipeline.stages[-1], AnalysisOff)
    outcome = instance(frame())
    assert outcome.flags == ["analysis_off"]
    assert instance.fields(outcome) == {} and "gls_pct" not in outcome.values
    assert instance.beat_messages(frame(), outcome) == []
    assert app.declaration()["result_fields"] == [] and app.modalities == ()
    # a bad frame is still refused
    with pytest.raises(FrameRejected):
        instance(frame(np.full((2, 2), np.nan, np.float32)))


def test_an_app_declares_how_each_of_its_networks_runs():
    """The provenance a consumer reads in hello and start: backend, precision, device and
    where the weights came from, as asked for."""
    from engines.backends.openvino_backend import cpu_has_bf16

    precision = "bf16" if cpu_has_bf16() else "fp32"
    analysis = build_analysis(AnalysisConfig(app="mr-sax", engines=EngineConfig(
        backend="openvino", precision=precision, threads=1)))
    declaration = analysis.apps["mr-sax"].declaration()
    assert declaration["cardiostream_version"] == __version__
    declared = declaration["engines"]
    digest = declared["mr"].pop("weights_sha256")
    assert declared["mr"] == {"backend": "openvino", "precision": precision, "device": "cpu",
                              "origin": "shipped mr.pt", "max_batch": 1}
    # the sha256 of the shipped weights file the engine runs (as sha256sum prints it)
    shipped = Path(engines.__file__).parent / "weights" / "mr.pt"
    assert digest == hashlib.sha256(shipped.read_bytes()).hexdigest()
    # the per-beat wall-motion network runs in eager torch fp32 whatever the frame networks do
    wall = declared.pop("wall_motion")
    assert (wall["backend"], wall["precision"], wall["device"]) == ("torch", "fp32", "cpu")
    assert "wall_motion.pt" in wall["origin"] and "phantom" in wall["trained_on"]
    infarct = declared.pop("infarct")
    assert (infarct["backend"], infarct["precision"]) == ("torch", "fp32")
    assert "infarct.pt" in infarct["origin"] and "phantom" in infarct["trained_on"]
    assert set(declared) == {"mr"}
    off = build_analysis(AnalysisConfig(app="mr-sax", engines=EngineConfig(threads=1), apps={
        "mr-sax": MrShortAxisConfig(wall_motion=WallMotionConfig(mode="off"),
                                    infarct=InfarctConfig(mode="off"))}))
    assert set(off.apps["mr-sax"].declaration()["engines"]) == {"mr"}
    assert [s.name for s in off.apps["mr-sax"].beat_stages()] == ["beat_summary", "stack_summary"]
    batched = build_analysis(AnalysisConfig(app="mr-sax", engines=EngineConfig(
        backend="openvino", precision=precision, threads=1, max_batch=2)))
    assert batched.apps["mr-sax"].declaration()["engines"]["mr"]["max_batch"] == 2
    assert batched.max_batch == 2 and batched.batch_group is not None


def test_the_runtime_adds_the_debug_delay_to_each_new_stream():
    slow = build_analysis(AnalysisConfig(app="none", debug_delay=DebugDelayConfig(1)))
    instance = slow.new_stream(slow.apps["none"], "s")
    assert [s.name for s in instance.pipeline.stages] == ["preprocess", "debug_delay",
                                                          "analysis_off"]
    named = build_analysis(AnalysisConfig(app="none",
                                          debug_delay=DebugDelayConfig(1, stage="analysis_off")))
    stages = named.new_stream(named.apps["none"], "s").pipeline.stages
    assert [s.name for s in stages] == ["preprocess", "analysis_off"]
    assert isinstance(stages[1], Delayed)
    with pytest.raises(ValueError, match="'flow' is not a stage of none"):
        Analysis({"none": NoAnalysisApp()}, forced="none",
                 debug_delay=DebugDelayConfig(1, stage="flow"))


def test_analysis_config_refuses_unknown_apps():
    with pytest.raises(ValueError, match="app 'fast' is unknown"):
        AnalysisConfig(app="fast")
    with pytest.raises(ValueError, match="unknown app"):
        AnalysisConfig(apps={"ct": None})
    with pytest.raises(ValueError, match="not loaded"):
        Analysis({"none": NoAnalysisApp()}, forced="echo")


def test_a_beat_is_graded_by_the_share_of_its_frames_that_passed():
    from streamer.apps.common import beat_grade

    assert [beat_grade(f) for f in (1.0, 0.9, 0.89, 0.6, 0.59, 0.0)] == [
        "good", "good", "fair", "fair", "poor", "poor"]
    assert beat_grade(0.7, good=0.95, fair=0.75) == "poor"
