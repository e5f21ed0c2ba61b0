"""Pipeline wiring (checked at build time), stage timing, the stages, and the echo
pipeline with the shipped engines on held-out phantoms."""

import numpy as np
import pytest

from calib.datasets import random_echo_config
from calib.echo import make_echo_clip
from streamer.io.protocol import BeatMessage, FrameMessage, StartMessage
from streamer.pipeline import (AnalysisOff, DebugDelay, DebugDelayConfig, FrameRejected, Pipeline,
                               PipelineConfig, PipelineWiringError, Preprocess, Stage,
                               ViewConfig, build_pipeline)
from streamer.processor import FrameProcessor, Received


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
    assert {"frame", "controls", "image", "doubled"} == pipeline.values_written


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


def test_analysis_off_pipeline_computes_nothing_and_says_so():
    pipeline = build_pipeline(PipelineConfig(analysis="none"))
    assert [s.name for s in pipeline.stages] == ["preprocess", "analysis_off"]
    outcome = pipeline(frame(np.zeros((4, 4), np.uint8)))
    assert outcome.flags == ["analysis_off"]
    assert outcome.values["gls_pct"] is None and outcome.values["points_mm"] is None
    assert isinstance(pipeline.stages[-1], AnalysisOff)
    slow = build_pipeline(PipelineConfig(analysis="none", debug_delay=DebugDelayConfig(1)))
    assert [s.name for s in slow.stages] == ["preprocess", "debug_delay", "analysis_off"]
    with pytest.raises(ValueError):
        DebugDelay(-1)
    with pytest.raises(ValueError, match="analysis 'fast' is unknown"):
        PipelineConfig(analysis="fast")


# --------------------------------------------------------------------------
# the echo pipeline with the shipped engines (default backend)


@pytest.fixture(scope="module")
def echo_pipeline():
    return build_pipeline()


def phantom(seed, view="a4c", frames=12, size=256, **kw):
    cfg = random_echo_config(seed, view=view, rows=size, cols=size, frames=frames, fps=50.0,
                             start_phase=0.0, **kw)
    return make_echo_clip(cfg)


def run_clip(pipeline, clip, stream, view_hint=None, pixels=None):
    processor = FrameProcessor(pipeline)
    processor.handle(Received(StartMessage(stream), 0))
    out = []
    for t, image in enumerate(clip.frames if pixels is None else pixels):
        message = FrameMessage(stream=stream, seq=t, t_acq_ns=int(t / clip.fps * 1e9),
                               modality="US", pixels=image, spacing_mm=tuple(clip.spacing_mm),
                               fps=clip.fps, view=view_hint)
        out += processor.handle(Received(message, 0))
    return out


def test_echo_pipeline_runs_the_method_in_order(echo_pipeline):
    assert [s.name for s in echo_pipeline.stages] == ["preprocess", "view", "segment", "flow",
                                                      "track", "strain"]
    backends = {s.engine.spec.role for s in echo_pipeline.stages if hasattr(s, "engine")}
    assert backends == {"view", "seg", "flow"}


def test_held_out_a4c_clip_gives_view_centreline_and_strain(echo_pipeline):
    clip = phantom(2_000_101, frames=16)
    results = [m for m in run_clip(echo_pipeline, clip, "a4c") if m.kind == "result"]
    assert len(results) == 16
    assert all(r.view["label"] == "a4c" for r in results), [r.view for r in results]
    assert all(len(r.points_mm) == 120 for r in results)
    assert results[0].gls_pct == 0.0 and "reinitialised" in results[0].flags
    gls = np.array([r.gls_pct for r in results])
    truth = clip.truth.midwall_gls_pct[:16]
    # early systole: the wall shortens, and the measured curve follows the truth
    assert gls[-1] < -3 and abs(gls[-1] - truth[-1]) < 2.0, (gls, truth)
    assert set(results[5].regional_pct) == {"basal_septal", "mid_septal", "apical_septal",
                                            "apical_lateral", "mid_lateral", "basal_lateral"}
    assert {"view", "segment", "flow", "track", "strain"} <= set(results[5].latency_ms)


def test_view_gate_stops_other_views_and_a_hint_overrides_it(echo_pipeline):
    clip = phantom(2_000_102, view="psax", frames=3)
    gated = [m for m in run_clip(echo_pipeline, clip, "psax") if m.kind == "result"]
    assert all(r.view["label"] == "psax" and "not_a4c" in r.flags for r in gated)
    assert all(r.points_mm is None and r.gls_pct is None for r in gated)
    a4c = phantom(2_000_101, frames=3)
    hinted = [m for m in run_clip(echo_pipeline, a4c, "hint", view_hint="a4c")
              if m.kind == "result"]
    assert all(r.points_mm is not None for r in hinted)
    with pytest.raises(ValueError, match="view gate 'maybe'"):
        ViewConfig(gate="maybe")


def test_points_are_in_millimetres_of_the_frame_whatever_its_shape(echo_pipeline):
    """A 240 x 320 frame sits letterboxed in the networks' square input; the centreline
    comes back in mm from the frame's own top-left pixel."""
    import cv2

    clip = phantom(2_000_101, frames=2)
    square = [m for m in run_clip(echo_pipeline, clip, "sq") if m.kind == "result"]
    wide = np.stack([np.pad(cv2.resize(f, (240, 240), interpolation=cv2.INTER_AREA),
                            ((0, 0), (40, 40))) for f in clip.frames])
    spacing = tuple(s * 256 / 240 for s in clip.spacing_mm)
    wide_clip = type(clip)(frames=wide, spacing_mm=spacing, fps=clip.fps, truth=clip.truth,
                           config=clip.config)
    padded = [m for m in run_clip(echo_pipeline, wide_clip, "wide") if m.kind == "result"]
    a = np.array(square[1].points_mm)
    b = np.array(padded[1].points_mm) - [0.0, 40 * spacing[1]]
    # the same wall: the segmentations differ a little (the networks see the wall at two
    # scales), a wrong offset would move every point by millimetres to centimetres
    assert np.linalg.norm(a.mean(0) - b.mean(0)) < 2.0  # about one grid pixel here
    assert np.median(np.linalg.norm(a - b, axis=1)) < 2.5


def test_a_completed_cycle_publishes_a_beat_message(echo_pipeline):
    clip = phantom(2_000_101, frames=90, heart_rate_bpm=75.0)  # 1.9 cycles at 50 fps
    messages = run_clip(echo_pipeline, clip, "beats")
    beats = [m for m in messages if isinstance(m, BeatMessage)]
    assert len(beats) >= 1
    beat = beats[0]
    results = {m.seq: m for m in messages if m.kind == "result"}
    assert beat.ed_seq < beat.es_seq and beat.peak_gls_pct < -5
    assert results[beat.es_seq].gls_pct is not None
    truth_peak = clip.truth.midwall_gls_pct.min()
    assert abs(beat.peak_gls_pct - truth_peak) < 3.0, (beat, truth_peak)
