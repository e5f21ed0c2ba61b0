"""FrameProcessor: answers to start, frame and end; a failing stage becomes an error."""

import numpy as np

from streamer.io.protocol import EndMessage, FrameMessage, StartMessage
from streamer.pipeline import Pipeline, PipelineConfig, Preprocess, Stage, build_pipeline
from streamer.processor import FrameProcessor, Received


def received(message, t_recv_ns=1_000_000):
    return Received(message, t_recv_ns=t_recv_ns, decode_ms=0.01)


def frame(seq, pixels=None, t_send_ns=None):
    return FrameMessage(stream="s", seq=seq, t_acq_ns=5, modality="US",
                        pixels=np.zeros((4, 4), np.uint8) if pixels is None else pixels,
                        spacing_mm=(0.3, 0.3), fps=50.0, t_send_ns=t_send_ns)


class Broken(Stage):
    name = "broken"
    inputs = ("image",)

    def process(self, image):
        raise ZeroDivisionError("division by zero")


def test_frame_gets_a_result_with_stage_latencies_and_drop_count():
    processor = FrameProcessor(build_pipeline(PipelineConfig(analysis="none")))
    [start] = processor.handle(received(StartMessage("s", {"n": 2})))
    assert start.kind == "start"
    [result] = processor.handle(received(frame(3, t_send_ns=400_000)), dropped=2,
                                t_take_ns=1_500_000)
    assert result.kind == "result" and result.seq == 3 and result.t_acq_ns == 5
    assert result.dropped == 2 and "dropped:2" in result.flags
    assert result.latency_ms["transport"] == 0.6 and result.latency_ms["queue"] == 0.5
    assert list(result.latency_ms) == ["transport", "decode", "queue", "preprocess",
                                       "analysis_off", "total"]
    [end] = processor.handle(received(EndMessage("s", 2)))
    assert end.meta == {"processed": 1, "dropped": 2, "stale": 0, "errors": 0, "last_seq": 3}


def test_rejected_and_failing_frames_become_errors_and_are_counted():
    nan = np.full((2, 2), np.nan, np.float32)
    processor = FrameProcessor(Pipeline([Preprocess(), Broken()]))
    [bad] = processor.handle(received(frame(0, nan)))
    assert (bad.kind, bad.code, bad.seq) == ("error", "bad_pixels", 0)
    [failed] = processor.handle(received(frame(1)))
    assert (failed.kind, failed.code) == ("error", "stage_failed")
    assert "ZeroDivisionError" in failed.message and "s#1" in failed.message
    [end] = processor.handle(received(EndMessage("s", 2)))
    assert end.meta["errors"] == 2 and end.meta["processed"] == 0


def test_start_resets_the_stream_counts():
    processor = FrameProcessor(build_pipeline(PipelineConfig(analysis="none")))
    processor.handle(received(frame(0)))
    processor.handle(received(StartMessage("s")))
    [end] = processor.handle(received(EndMessage("s")))
    assert end.meta["processed"] == 0
