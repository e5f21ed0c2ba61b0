"""FrameProcessor: answers to start, frame and end; a failing stage becomes an error; one
state per stream (app instance and counts), routing by modality, stream limits."""

from __future__ import annotations

import numpy as np
import pytest

from streamer.app import App, Field, Stage
from streamer.apps import Analysis, AnalysisConfig, build_analysis
from streamer.apps.common import Preprocess
from streamer.apps.none import NoAnalysisApp
from streamer.io.protocol import EndMessage, FrameMessage, StartMessage
from streamer.processor import FrameProcessor, Received, StreamLimits


def received(message, t_recv_ns=1_000_000):
    return Received(message, t_recv_ns=t_recv_ns, decode_ms=0.01)


def frame(seq, pixels=None, t_send_ns=None, stream="s", modality="US"):
    return FrameMessage(stream=stream, seq=seq, t_acq_ns=5, modality=modality,
                        pixels=np.zeros((4, 4), np.uint8) if pixels is None else pixels,
                        spacing_mm=(0.3, 0.3), fps=50.0, t_send_ns=t_send_ns)


class Broken(Stage):
    name = "broken"
    inputs = ("image",)

    def process(self, image):
        raise ZeroDivisionError("division by zero")


class BrokenApp(App):
    name = "broken"

    def stages(self):
        return [Preprocess(), Broken()]


class Count(Stage):
    name = "count"
    inputs = ("image", "stream_meta")
    outputs = ("n", "site")

    def __init__(self):
        self.n = 0

    def process(self, image, stream_meta):
        self.n += 1
        return {"n": self.n, "site": stream_meta.get("site")}


class UsCountApp(App):
    """A tiny US app with per-stream state (no engines)."""

    name = "us-count"
    modalities = ("US",)
    result_fields = (Field("n", "integer", "frames seen in this stream"),
                     Field("site", "string", "the start meta's site, as the stages see it"))

    def stages(self):
        return [Preprocess(), Count()]


class MrCountApp(UsCountApp):
    """The same for MR frames (routing tests; the real MR app needs its network)."""

    name = "mr-count"
    modalities = ("MR",)


def none_analysis() -> Analysis:
    return build_analysis(AnalysisConfig(app="none"))


def counting_analysis() -> Analysis:
    """Routed by modality: US -> us-count, MR -> mr-count (no engines to load)."""
    return Analysis({"us-count": UsCountApp(), "mr-count": MrCountApp()})


# -- one stream --------------------------------------------------------------------------


def test_frame_gets_a_result_with_stage_latencies_and_drop_count():
    processor = FrameProcessor(none_analysis())
    [start] = processor.handle(received(StartMessage("s", {"n": 2})))
    assert start.kind == "start" and start.meta["n"] == 2
    assert start.meta["app"]["name"] == "none"  # the app named for every stream
    [result] = processor.handle(received(frame(3, t_send_ns=400_000)), dropped=2,
                                t_take_ns=1_500_000)
    assert result.kind == "result" and result.seq == 3 and result.t_acq_ns == 5
    assert result.app == "none" and result.fields == {}
    assert result.dropped == 2 and "dropped:2" in result.flags
    assert result.latency_ms["transport"] == 0.6 and result.latency_ms["queue"] == 0.5
    assert list(result.latency_ms) == ["transport", "decode", "queue", "preprocess",
                                       "analysis_off", "total"]
    [end] = processor.handle(received(EndMessage("s", 2)))
    assert end.meta == {"processed": 1, "dropped": 2, "stale": 0, "errors": 0, "last_seq": 3}


def test_rejected_and_failing_frames_become_errors_and_are_counted():
    nan = np.full((2, 2), np.nan, np.float32)
    processor = FrameProcessor(Analysis({"broken": BrokenApp()}, forced="broken"))
    [bad] = processor.handle(received(frame(0, nan)))
    assert (bad.kind, bad.code, bad.seq) == ("error", "bad_pixels", 0)
    [failed] = processor.handle(received(frame(1)))
    assert (failed.kind, failed.code) == ("error", "stage_failed")
    assert "ZeroDivisionError" in failed.message and "s#1" in failed.message
    [end] = processor.handle(received(EndMessage("s", 2)))
    assert end.meta["errors"] == 2 and end.meta["processed"] == 0


def test_a_frame_whose_seq_goes_backwards_is_refused_and_the_stream_goes_on():
    processor = FrameProcessor(counting_analysis())
    [first] = processor.handle(received(frame(5)))
    assert first.kind == "result" and first.fields["n"] == 1
    for seq in (5, 2):  # a duplicate, then a counter that went back
        [error] = processor.handle(received(frame(seq)))
        assert (error.kind, error.code, error.seq) == ("error", "seq_not_increasing", seq)
        assert "#5" in error.message
    [later] = processor.handle(received(frame(6)))
    assert later.kind == "result" and later.fields["n"] == 2  # the app never saw 5 or 2 again
    processor.handle(received(StartMessage("s", {"modality": "US"})))
    [again] = processor.handle(received(frame(0)))  # a start begins the stream again
    assert again.kind == "result" and again.fields["n"] == 1
    [end] = processor.handle(received(EndMessage("s")))
    assert end.meta["processed"] == 1 and end.meta["errors"] == 0


def test_start_resets_the_stream_counts_and_its_app_instance():
    processor = FrameProcessor(counting_analysis())
    processor.handle(received(frame(0)))
    first = processor.streams["s"].app
    closed, _ = processor.handle(received(StartMessage("s", {"modality": "US"})))
    assert processor.streams["s"].app is not first
    # the counts of the stream so far are not lost: an end echo closes it first
    assert (closed.kind, closed.meta["reason"], closed.meta["processed"]) == (
        "end", "restarted", 1)
    [result] = processor.handle(received(frame(1)))
    assert result.fields == {"n": 1, "site": None}  # the new instance starts counting afresh
    [end] = processor.handle(received(EndMessage("s")))
    assert end.meta["processed"] == 1


def test_start_echo_declares_the_app_when_the_modality_is_known():
    processor = FrameProcessor(counting_analysis())
    [echo] = processor.handle(received(StartMessage("us", {"modality": "US", "fps": 50.0})))
    assert echo.meta["modality"] == "US" and echo.meta["fps"] == 50.0
    assert echo.meta["app"] == UsCountApp().declaration()
    # routed by its first frame when the start does not say the modality
    [echo] = processor.handle(received(StartMessage("later", {"fps": 50.0})))
    assert "app" not in echo.meta and processor.streams["later"].app is None
    [result] = processor.handle(received(frame(0, stream="later", modality="MR")))
    assert result.app == "mr-count" and processor.streams["later"].app.app.name == "mr-count"


def test_the_stages_read_the_streams_start_meta():
    processor = FrameProcessor(counting_analysis())
    processor.handle(received(StartMessage("a", {"modality": "US", "site": "lab 2"})))
    [result] = processor.handle(received(frame(0, stream="a")))
    assert result.fields == {"n": 1, "site": "lab 2"}
    [result] = processor.handle(received(frame(0, stream="no-start")))  # none sent: empty
    assert result.fields == {"n": 1, "site": None}


# -- several streams ----------------------------------------------------------------------


def test_interleaved_streams_keep_separate_counts():
    processor = FrameProcessor(none_analysis())
    for name in ("a", "b"):
        processor.handle(received(StartMessage(name)))
    for seq in range(3):
        processor.handle(received(frame(seq, stream="a")), dropped=1)
        if seq < 2:
            processor.handle(received(frame(10 + seq, stream="b")))
    processor.handle(received(frame(5, np.full((2, 2), np.nan, np.float32), stream="b")))
    assert set(processor.streams) == {"a", "b"}
    [end_a] = processor.handle(received(EndMessage("a", 3)))
    [end_b] = processor.handle(received(EndMessage("b", 3)))
    assert end_a.stream == "a" and end_b.stream == "b"
    assert end_a.meta == {"processed": 3, "dropped": 3, "stale": 0, "errors": 0, "last_seq": 2}
    assert end_b.meta == {"processed": 2, "dropped": 0, "stale": 0, "errors": 1,
                          "last_seq": 11}


def test_interleaved_streams_keep_separate_app_state():
    processor = FrameProcessor(counting_analysis())
    ns = []
    for seq in range(3):
        for k, name in enumerate(("a", "b", "a")):
            [result] = processor.handle(received(frame(3 * seq + k, stream=name)))
            ns.append((name, result.fields["n"]))
    assert ns == [("a", 1), ("b", 1), ("a", 2), ("a", 3), ("b", 2), ("a", 4),
                  ("a", 5), ("b", 3), ("a", 6)]


def test_a_start_of_another_stream_does_not_reset_this_one():
    processor = FrameProcessor(counting_analysis())
    processor.handle(received(StartMessage("a", {"modality": "US"})))
    processor.handle(received(frame(0, stream="a")))
    instance = processor.streams["a"].app
    processor.handle(received(StartMessage("b", {"modality": "US"})))
    processor.handle(received(frame(0, stream="b")))
    assert processor.streams["a"].app is instance
    [result] = processor.handle(received(frame(1, stream="a")))
    assert result.fields == {"n": 2, "site": None}
    assert processor.streams["a"].counts.processed == 2


def test_end_drops_the_streams_state():
    processor = FrameProcessor(counting_analysis())
    processor.handle(received(frame(0, stream="a")))
    processor.handle(received(frame(0, stream="b")))
    processor.handle(received(EndMessage("a", 1)))
    assert set(processor.streams) == {"b"}
    # the stream may come back: it starts afresh
    [result] = processor.handle(received(frame(1, stream="a")))
    assert result.fields == {"n": 1, "site": None}
    # an end for a stream never seen is echoed with zero counts
    [end] = processor.handle(received(EndMessage("ghost")))
    assert end.meta["processed"] == 0 and "ghost" not in processor.streams


class Clock:
    def __init__(self, t=1000.0):
        self.t = t

    def __call__(self):
        return self.t


def test_a_silent_stream_is_closed_after_the_idle_timeout():
    clock = Clock()
    processor = FrameProcessor(counting_analysis(), clock=clock,
                               limits=StreamLimits(idle_timeout_s=10.0))
    processor.handle(received(StartMessage("a", {"modality": "US"})))
    processor.handle(received(frame(0, stream="a")))
    processor.handle(received(frame(0, stream="b")))
    clock.t += 6.0
    processor.handle(received(frame(1, stream="b")))  # b speaks, a stays silent
    clock.t += 6.0  # a: 12 s silent, b: 6 s
    out = processor.handle(received(frame(2, stream="b")))
    assert [m.kind for m in out] == ["end", "result"]
    end = out[0]
    assert end.stream == "a" and end.n_frames is None
    assert end.meta["reason"] == "idle_timeout" and end.meta["idle_timeout_s"] == 10.0
    assert end.meta["processed"] == 1 and end.meta["last_seq"] == 0
    assert set(processor.streams) == {"b"}
    # a frame of the closed stream later opens it afresh
    [result] = processor.handle(received(frame(1, stream="a")))
    assert result.fields == {"n": 1, "site": None}


def test_a_stream_that_sends_again_just_in_time_is_not_closed():
    clock = Clock()
    processor = FrameProcessor(none_analysis(), clock=clock,
                               limits=StreamLimits(idle_timeout_s=10.0))
    for seq in range(5):
        out = processor.handle(received(frame(seq, stream="a")))
        assert [m.kind for m in out] == ["result"]
        clock.t += 9.0
    assert processor.streams["a"].counts.processed == 5


def test_more_streams_than_the_limit_get_too_many_streams():
    processor = FrameProcessor(none_analysis(), limits=StreamLimits(max_streams=2))
    processor.handle(received(StartMessage("a")))
    processor.handle(received(frame(0, stream="b")))
    [error] = processor.handle(received(frame(0, stream="c")))
    assert (error.kind, error.code, error.stream) == ("error", "too_many_streams", "c")
    [error] = processor.handle(received(StartMessage("c")))
    assert (error.kind, error.code) == ("error", "too_many_streams")
    assert set(processor.streams) == {"a", "b"}
    # the streams already followed go on; a start of one of them is not refused
    [result] = processor.handle(received(frame(1, stream="a")))
    assert result.kind == "result"
    restarted, start = processor.handle(received(StartMessage("b")))
    assert (restarted.kind, restarted.meta["reason"], start.kind) == ("end", "restarted", "start")
    # once one ends there is room again
    processor.handle(received(EndMessage("a")))
    [result] = processor.handle(received(frame(1, stream="c")))
    assert result.kind == "result"
    with pytest.raises(ValueError):
        StreamLimits(max_streams=0)
    with pytest.raises(ValueError):
        StreamLimits(idle_timeout_s=0)


# -- routing by modality ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def auto_analysis():
    """What `serve` runs by default: every app a modality routes to."""
    return build_analysis(AnalysisConfig())


def test_auto_routes_a_stream_by_modality_and_channels(auto_analysis):
    assert set(auto_analysis.apps) == {"echo", "mr-velocity", "mr-sax"}
    assert auto_analysis.route("US").name == "echo"
    assert auto_analysis.route("MR").name == "mr-sax"
    assert auto_analysis.route("MR", ["magnitude", "v_x", "v_y", "v_z"]).name == "mr-velocity"
    assert auto_analysis.route("MR", ["magnitude", "phase"]).name == "mr-sax"
    assert auto_analysis.route(None) is None
    assert set(auto_analysis.declarations()) == {"echo", "mr-velocity", "mr-sax"}


def test_mr_slices_go_to_the_mr_app_each_with_its_own_state(auto_analysis):
    processor = FrameProcessor(auto_analysis)
    slices = ("stack/slice-0", "stack/slice-1")
    for name in slices:
        [echo] = processor.handle(received(StartMessage(name, {"modality": "MR"})))
        assert echo.meta["app"]["name"] == "mr-sax"
        assert "circumferential_strain_pct" in [f["name"] for f in
                                                echo.meta["app"]["result_fields"]]
    instances = {name: processor.streams[name].app for name in slices}
    assert instances[slices[0]] is not instances[slices[1]]
    rng = np.random.default_rng(0)
    for seq in range(2):
        for name in slices:
            pixels = rng.integers(0, 400, (64, 64)).astype(np.uint16)
            [result] = processor.handle(received(frame(seq, pixels, stream=name, modality="MR")))
            assert result.kind == "result" and result.app == "mr-sax"
    assert processor.streams[slices[0]].counts.processed == 2


def test_a_frame_of_another_modality_in_a_stream_is_an_error_not_a_crash():
    processor = FrameProcessor(counting_analysis())
    processor.handle(received(StartMessage("mr", {"modality": "MR"})))
    processor.handle(received(frame(0, stream="mr", modality="MR")))
    [error] = processor.handle(received(frame(1, stream="mr", modality="US")))
    assert (error.kind, error.code, error.seq) == ("error", "bad_field", 1)
    assert "mr-count" in error.message
    [result] = processor.handle(received(frame(2, stream="mr", modality="MR")))
    assert result.fields["n"] == 2
    [end] = processor.handle(received(EndMessage("mr")))
    assert end.meta["errors"] == 1 and end.meta["processed"] == 2


def test_a_modality_no_app_takes_gets_no_app(auto_analysis):
    processor = FrameProcessor(auto_analysis)
    [error] = processor.handle(received(StartMessage("ct", {"modality": "CT"})))
    assert (error.kind, error.code, error.stream) == ("error", "no_app", "ct")
    assert "CT" in error.message and "ct" not in processor.streams
    # an MR-only side-car refuses a US frame, and goes on
    mr_only = FrameProcessor(Analysis({"mr-count": MrCountApp()}))
    [error] = mr_only.handle(received(frame(0, stream="us")))
    assert (error.kind, error.code, error.seq) == ("error", "no_app", 0)
    [result] = mr_only.handle(received(frame(0, stream="mr", modality="MR")))
    assert result.kind == "result"


def test_a_named_app_takes_every_modality():
    processor = FrameProcessor(Analysis({"none": NoAnalysisApp()}, forced="none"))
    for modality in ("US", "MR"):
        [result] = processor.handle(received(frame(0, stream=modality, modality=modality)))
        assert result.app == "none"


# -- array fields, reserved names ----------------------------------------------------------


class Halves(Stage):
    name = "halves"
    inputs = ("image",)
    outputs = ("half_image", "motion_px")

    def process(self, image):
        motion = np.zeros((*image.shape, 2), np.float32) if image.shape[0] > 2 else None
        return {"half_image": image[::2, ::2].copy(), "motion_px": motion}


class ArrayApp(App):
    name = "arrays"
    modalities = ("US",)
    result_fields = (Field("half_image", "array", "the image at half size"),
                     Field("motion_px", "array", "a (rows, cols, 2) field, px"))

    def stages(self):
        return [Preprocess(), Halves()]


def test_array_fields_travel_as_array_parts_and_decode():
    from streamer.io.protocol import decode, encode

    processor = FrameProcessor(Analysis({"arrays": ArrayApp()}))
    [result] = processor.handle(received(frame(0, pixels=np.full((6, 4), 255, np.uint8))))
    assert result.fields == {} and set(result.arrays) == {"half_image", "motion_px"}
    parts = encode(result)
    assert len(parts) == 3
    back = decode(parts)
    assert back.arrays["motion_px"].shape == (6, 4, 2)
    np.testing.assert_array_equal(back.arrays["half_image"], np.ones((3, 2), np.float32))
    [small] = processor.handle(received(frame(1, pixels=np.zeros((2, 2), np.uint8))))
    assert set(small.arrays) == {"half_image"}  # not computed on this frame: left out


def test_an_app_may_not_declare_a_field_every_result_has():
    from streamer.app import PipelineWiringError

    class Clobber(UsCountApp):
        result_fields = (Field("seq", "integer", "would overwrite the frame's seq"),)

    with pytest.raises(PipelineWiringError, match=r"declares fields \['seq'\]"):
        Clobber().new_stream("s")


def test_drops_after_a_streams_last_frame_are_counted_in_its_end():
    processor = FrameProcessor(none_analysis())
    processor.handle(received(frame(0)))
    [end] = processor.handle(received(EndMessage("s", 3)), dropped=2)
    assert end.meta["dropped"] == 2 and end.meta["processed"] == 1


def test_a_failing_beat_stage_costs_the_beat_not_the_frames_result():
    from streamer.app import BEAT_CLOSED, BeatBoundary, BeatStage

    class Closes(Stage):
        name = "closes"
        inputs = ("frame",)
        outputs = ("sample", BEAT_CLOSED)

        def process(self, frame):
            closed = BeatBoundary(0, 0, frame.seq) if frame.seq == 2 else None
            return {"sample": frame.seq, BEAT_CLOSED: closed}

    class Fails(BeatStage):
        name = "fails"
        keeps = ("sample",)
        outputs = ("summary",)

        def process(self, beat):
            raise ZeroDivisionError("a bug in a beat stage")

    class BeatApp(UsCountApp):
        name = "beats"
        beat_fields = (Field("summary", "number", "what the beat stage computes"),)

        def stages(self):
            return [Preprocess(), Count(), Closes()]

        def beat_stages(self):
            return [Fails()]

    processor = FrameProcessor(Analysis({"beats": BeatApp()}))
    for seq in range(2):
        processor.handle(received(frame(seq)))
    result, error = processor.handle(received(frame(2)))
    assert result.kind == "result" and result.fields == {"n": 3, "site": None}
    assert (error.kind, error.code, error.seq) == ("error", "stage_failed", 2)
    assert "beat" in error.message and "ZeroDivisionError" in error.message
    [result] = processor.handle(received(frame(3)))  # the stream goes on
    assert result.fields == {"n": 4, "site": None}
