"""The side-car over real TCP loopback sockets: lossless order, live dropping, bad input, shutdown.

Most tests run `cardiostream serve` as a child process (the real CLI, its own
process, real signals); the inbox tests check the two flow-control policies
directly.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import zmq

from streamer.app import App, Field, Stage
from streamer.apps import Analysis, AnalysisConfig, build_analysis
from streamer.apps.common import DebugDelayConfig, Preprocess
from streamer.apps.none import AnalysisOff
from streamer.io.protocol import EndMessage, FrameMessage, ResultMessage, StartMessage, encode
from streamer.io.sockets import FrameSender, ResultSubscriber, SenderConfig, SubscriberConfig
from streamer.processor import Received
from streamer.sidecar import (
    OUTBOX_MESSAGES,
    BoundedFrameQueue,
    LatestFrameSlot,
    LogBudget,
    SideCar,
    SideCarConfig,
)

IMAGE = np.zeros((64, 64), np.uint8)


def make_frame(seq: int, stream: str = "s", pixels: np.ndarray = IMAGE) -> FrameMessage:
    now = time.time_ns()
    return FrameMessage(stream=stream, seq=seq, t_acq_ns=now, modality="US", pixels=pixels,
                        spacing_mm=(0.3, 0.3), fps=50.0, t_send_ns=now)


def received(seq: int, stream: str = "s") -> Received:
    return Received(make_frame(seq, stream), time.time_ns())


def collect(subscriber: ResultSubscriber, stream: str, timeout_s: float = 30.0) -> list:
    return list(subscriber.iter_until_end(stream, timeout_s=timeout_s))


# -- the two inboxes -----------------------------------------------------------


def test_latest_frame_slot_keeps_the_newest_and_counts_the_rest():
    slot = LatestFrameSlot()
    slot.put_control(Received(StartMessage("s"), 0))
    for seq in range(10):
        assert slot.put_frame(received(seq))  # never blocks
    slot.put_control(Received(EndMessage("s", 10), 0))
    start, dropped = slot.get(0.1)
    assert start.message.kind == "start" and dropped == 0
    frame, dropped = slot.get(0.1)
    assert frame.message.seq == 9 and dropped == 9
    end, dropped = slot.get(0.1)
    assert end.message.kind == "end" and dropped == 0
    assert slot.get(0.01) is None and slot.dropped_total == 9


def test_latest_frame_slot_keeps_the_newest_frame_of_each_stream():
    """A newer frame replaces only its own stream's waiting frame, in its place (the stream
    that has waited longest is served first however often its frame is replaced); drops
    count per stream and are handed out with that stream's next frame."""
    slot = LatestFrameSlot()
    for seq in range(3):
        slot.put_frame(received(seq, "a"))
        if seq < 2:
            slot.put_frame(received(10 + seq, "b"))
    # waiting: a#2 (replaced a#0, a#1, in a#0's place), b#11 (replaced b#10)
    taken = [slot.get(0.1) for _ in range(2)]
    assert [(item.message.stream, item.message.seq, dropped) for item, dropped in taken] == [
        ("a", 2, 2), ("b", 11, 1)]
    assert slot.get(0.01) is None and slot.dropped_total == 3
    # counts already handed out are not handed out again
    slot.put_frame(received(3, "a"))
    item, dropped = slot.get(0.1)
    assert (item.message.seq, dropped) == (3, 0)


def test_a_replaced_frame_never_jumps_its_streams_start():
    """A stream that starts again while its old frame waits: the new frame goes after the
    start, not into the old frame's place."""
    slot = LatestFrameSlot()
    slot.put_frame(received(5, "a"))
    slot.put_control(Received(StartMessage("a"), 0))
    slot.put_frame(received(0, "a"))
    kinds = [slot.get(0.1)[0].message for _ in range(2)]
    assert [(m.kind, getattr(m, "seq", None)) for m in kinds] == [("start", None), ("frame", 0)]


def test_a_round_takes_the_oldest_frame_of_each_stream_up_to_max_frames():
    """Lossless: a round holds at most one frame per stream and stops at a start/end; the
    frames it leaves keep their order."""
    queue = BoundedFrameQueue(10)
    for stream, seq in (("a", 0), ("a", 1), ("b", 0), ("c", 0), ("b", 1)):
        queue.put_frame(received(seq, stream))
    queue.put_control(Received(EndMessage("a", 2), 0))
    queue.put_frame(received(0, "d"))

    def names(got):
        return [(i.message.stream, getattr(i.message, "seq", i.message.kind)) for i, _ in got]

    assert names(queue.get_round(2, 0.1)) == [("a", 0), ("b", 0)]
    assert names(queue.get_round(4, 0.1)) == [("a", 1), ("c", 0), ("b", 1)]  # stops at a's end
    assert names(queue.get_round(4, 0.1)) == [("a", "end")]
    assert names(queue.get_round(4, 0.1)) == [("d", 0)]
    assert queue.get_round(4, 0.01) == [] and len(queue) == 0


def test_latest_frame_slot_holds_one_frame_per_stream_up_to_max_streams():
    """Past max_streams waiting frames, a newcomer stream's frame is dropped (counted against
    it): the streams already waiting keep theirs."""
    slot = LatestFrameSlot(max_streams=2)
    slot.put_control(Received(StartMessage("a"), 0))
    slot.put_frame(received(0, "a"))
    slot.put_frame(received(0, "b"))
    assert slot.put_frame(received(0, "c"))  # a third stream while two wait: c#0 goes
    slot.put_frame(received(1, "a"))  # replaces a#0, in its place
    assert len(slot) == 3  # the start and two frames
    start, dropped = slot.get(0.1)
    assert start.message.kind == "start" and dropped == 0
    taken = [slot.get(0.1) for _ in range(2)]
    assert [(item.message.stream, item.message.seq, dropped) for item, dropped in taken] == [
        ("a", 1, 1), ("b", 0, 0)]
    assert slot.get(0.01) is None and slot.dropped_total == 2
    # c's lost frame is reported with c's next frame
    slot.put_frame(received(5, "c"))
    item, dropped = slot.get(0.1)
    assert (item.message.stream, item.message.seq, dropped) == ("c", 5, 1)


def test_drop_counts_of_streams_never_taken_are_bounded():
    """Issue 14: every stream name whose frames were only ever dropped kept a counter for
    ever. Past 4 x max_streams names the oldest counts are folded into dropped_unreported."""
    slot = LatestFrameSlot(max_streams=1)
    slot.put_frame(received(0, "kept"))
    for k in range(1000):  # 1000 other streams, each frame dropped: one frame already waits
        slot.put_frame(received(0, f"s{k}"))
    assert len(slot._dropped) == 4 and slot.dropped_total == 1000
    assert slot.dropped_unreported == 996
    slot.put_frame(received(0, "s999"))  # a recent one is still reported with its stream
    assert slot._dropped["s999"] == 2


def test_a_closed_inbox_refuses_frames_and_wakes_its_reader():
    slot = LatestFrameSlot()
    slot.close()
    assert not slot.put_frame(received(0))
    assert slot.get(1.0) is None
    queue = BoundedFrameQueue(max_frames=1)
    queue.close()
    assert not queue.put_frame(received(0))
    with pytest.raises(ValueError):
        BoundedFrameQueue(max_frames=0)


def test_bounded_queue_waits_for_room_and_loses_nothing():
    queue = BoundedFrameQueue(max_frames=2)
    assert queue.put_frame(received(0)) and queue.put_frame(received(1))
    third = threading.Thread(target=queue.put_frame, args=(received(2),))
    third.start()
    third.join(0.2)
    assert third.is_alive(), "a full lossless queue must make the producer wait"
    assert queue.get(0.1)[0].message.seq == 0
    third.join(2.0)
    assert not third.is_alive()
    assert [queue.get(0.1)[0].message.seq for _ in range(2)] == [1, 2]


# -- acceptance 2: lossless order, live dropping --------------------------------


def test_lossless_serve_returns_1000_results_in_order(serve, tmp_path):
    # a 100-frame clip replayed 10 times by the real `replay` command, as fast as the
    # side-car takes it; a 1 ms worker and a 4-frame queue make back-pressure real
    clip = tmp_path / "clip.npz"
    frames = np.random.default_rng(0).integers(0, 255, (100, 64, 80)).astype(np.uint8)
    np.savez(clip, frames=frames, spacing_mm=np.array([0.3, 0.3]), fps=np.array(50.0),
             modality=np.array("US"))
    sidecar = serve("--lossless", "--queue-frames", "4", "--debug-delay-ms", "1", "--app", "none")
    with ResultSubscriber(SubscriberConfig(sidecar.ready["publish"])) as subscriber:
        replay = subprocess.run(
            [sys.executable, "-m", "streamer", "replay", str(clip), "--to",
             sidecar.ready["ingest"], "--loop", "10", "--max-rate", "--quiet",
             "--stream", "lossless"], capture_output=True, text=True, timeout=120)
        assert replay.returncode == 0, replay.stderr
        messages = collect(subscriber, "lossless", timeout_s=60)
    results = [m for m in messages if m.kind == "result"]
    assert [m.kind for m in messages[:1]] == ["start"]
    assert [r.seq for r in results] == list(range(1000))
    assert all(r.dropped == 0 for r in results)
    assert messages[-1].meta["processed"] == 1000 and messages[-1].meta["dropped"] == 0


def test_live_serve_never_blocks_the_sender_and_processes_the_latest_frame(serve):
    sidecar = serve("--debug-delay-ms", "50", "--app", "none")  # ~20 frames/s at most
    sent = 0
    with ResultSubscriber(SubscriberConfig(sidecar.ready["publish"])) as subscriber, \
            FrameSender(SenderConfig(sidecar.ready["ingest"])) as sender:
        sender.send(StartMessage("live"))
        # 1) bursts: 50 frames in a few ms, then a pause longer than one frame's work.
        #    The worker is idle when each burst begins; whatever it takes first, the last
        #    frame of the burst must be the next one it processes.
        bursts = []
        for _ in range(5):
            first = sent
            for _ in range(50):
                sender.send(make_frame(sent, "live"), block=False)  # zmq.Again = blocked
                sent += 1
            bursts.append(range(first, sent))
            time.sleep(0.3)
        # 2) a flood: 2,000 frames at ~2 kHz, 100x faster than the worker
        longest_send_s = 0.0
        for _ in range(2000):
            t0 = time.perf_counter()
            sender.send(make_frame(sent, "live"), block=False)
            longest_send_s = max(longest_send_s, time.perf_counter() - t0)
            sent += 1
            time.sleep(0.0005)
        sender.send(EndMessage("live", sent))
        messages = collect(subscriber, "live")
    results = [m for m in messages if m.kind == "result"]
    seqs = [r.seq for r in results]
    # every frame is either processed or counted as dropped, in order, none twice
    assert seqs == sorted(set(seqs))
    previous = -1
    for result in results:
        assert result.dropped == result.seq - previous - 1
        if result.dropped:
            assert f"dropped:{result.dropped}" in result.flags
        previous = result.seq
    assert len(results) + sum(r.dropped for r in results) == sent
    assert messages[-1].meta["dropped"] == sum(r.dropped for r in results)
    # the newest frame wins: each burst ends with its last frame processed,
    # and at most a couple of frames of each burst were processed at all
    for burst in bursts:
        processed = [s for s in seqs if s in burst]
        assert processed[-1] == burst[-1], (list(burst)[-1], processed)
        assert len(processed) <= 3, processed
    assert seqs[-1] == sent - 1
    # the flood was far faster than the worker: most frames dropped, sender never waited
    assert len(results) < 400
    assert longest_send_s < 0.05


# -- acceptance 4: bad input ---------------------------------------------------------


def test_bad_messages_get_errors_and_the_next_good_frame_a_result(serve):
    sidecar = serve("--max-message-mb", "1", "--app", "none")
    good = encode(make_frame(0, "bad"))
    header = json.loads(bytes(good[0]))

    def variant(**changes) -> list:
        return [json.dumps({**header, **changes}).encode(), bytes(good[1])]

    nan_pixels = np.zeros((8, 8), np.float32)
    nan_pixels[3, 4] = np.nan
    cases = [
        ("malformed_header", [b"{not json", bytes(good[1])]),
        ("malformed_header", [b"[1, 2, 3]"]),
        ("payload_size", [good[0], bytes(good[1])[:-7]]),
        ("unsupported_version", variant(v=2)),
        ("unknown_kind", variant(kind="picture")),
        ("bad_field", variant(dtype="complex64")),
        ("too_large", encode(make_frame(1, "bad", np.zeros((1100, 1000), np.uint8)))),
        ("bad_pixels", encode(make_frame(2, "nan", nan_pixels))),  # (its own stream: seq)
        ("unexpected_kind", encode(ResultMessage("bad", 0, 0, {}))),
    ]
    context = zmq.Context.instance()
    with ResultSubscriber(SubscriberConfig(sidecar.ready["publish"])) as subscriber:
        push = context.socket(zmq.PUSH)
        push.connect(sidecar.ready["ingest"])
        for seq, (code, parts) in enumerate(cases, start=10):
            push.send_multipart(parts)
            error = subscriber.recv(timeout_s=10)
            assert error is not None and error.kind == "error", (code, error)
            assert error.code == code, (code, error.message)
            assert error.message
            push.send_multipart(encode(make_frame(seq, "bad")))  # the next good frame
            result = subscriber.recv(timeout_s=10)
            assert result.kind == "result" and result.seq == seq, (code, result)
        # a scanner that disconnects mid-stream, and another that connects after it
        push.close(linger=1000)
        with FrameSender(SenderConfig(sidecar.ready["ingest"])) as sender:
            sender.send(make_frame(99, "bad"))
            result = subscriber.recv(timeout_s=10)
    assert result.kind == "result" and result.seq == 99
    assert sidecar.process.poll() is None  # still serving


# -- shutdown -------------------------------------------------------------------------


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_signal_flushes_every_accepted_frame_lossless(serve, signum):
    # the option's older spelling, --analysis, still works
    sidecar = serve("--lossless", "--debug-delay-ms", "50", "--analysis", "none")
    with ResultSubscriber(SubscriberConfig(sidecar.ready["publish"])) as subscriber, \
            FrameSender(SenderConfig(sidecar.ready["ingest"])) as sender:
        for seq in range(20):
            sender.send(make_frame(seq, "stop"))
        first = subscriber.recv(timeout_s=10)  # the worker is busy; 19 frames wait
        assert first.kind == "result" and first.seq == 0
        sidecar.process.send_signal(signum)
        later = []
        while (message := subscriber.recv(timeout_s=10)) is not None:
            later.append(message)
            if len(later) == 19:
                break
    assert [m.seq for m in later] == list(range(1, 20))
    assert sidecar.process.wait(30) == 0
    stopped = sidecar._read_event("stopped", 10)
    assert stopped["stats"]["results"] == 20


class CustomApp(App):
    name = "custom"

    def stages(self):
        return [Preprocess(), AnalysisOff()]


def test_in_process_sidecar_with_a_custom_app():
    """The SideCar class runs any app; stage latencies come back by stage name, and the
    hello declares the app."""
    config = SideCarConfig(ingest="tcp://127.0.0.1:*", publish="tcp://127.0.0.1:*",
                           lossless=True)
    analysis = Analysis({"custom": CustomApp()}, forced="custom")
    with SideCar(config, analysis) as sidecar, \
            ResultSubscriber(SubscriberConfig(sidecar.publish_endpoint)) as subscriber, \
            FrameSender(SenderConfig(sidecar.ingest_endpoint)) as sender:
        for seq in range(5):
            sender.send(make_frame(seq, "inproc"))
        sender.send(EndMessage("inproc", 5))
        messages = collect(subscriber, "inproc")
    assert subscriber.hello.mode == "lossless"
    assert subscriber.hello.apps == {"custom": CustomApp().declaration()}
    results = [m for m in messages if m.kind == "result"]
    assert [r.seq for r in results] == [0, 1, 2, 3, 4]
    assert {"decode", "queue", "preprocess", "analysis_off", "total"} <= set(results[0].latency_ms)
    assert results[0].flags == ["analysis_off"] and results[0].app == "custom"


def test_live_sidecar_answers_the_newest_frame_of_every_stream():
    """Two scanners into one live side-car whose worker is slower than both: each stream's
    newest frame is analysed, one stream's frames never replace the other's, and each
    stream's results and end count only its own frames."""
    config = SideCarConfig(ingest="tcp://127.0.0.1:*", publish="tcp://127.0.0.1:*",
                           max_streams=4)
    analysis = build_analysis(AnalysisConfig(app="none", debug_delay=DebugDelayConfig(20.0)))
    n = 60
    with SideCar(config, analysis) as sidecar, \
            ResultSubscriber(SubscriberConfig(sidecar.publish_endpoint)) as subscriber, \
            FrameSender(SenderConfig(sidecar.ingest_endpoint)) as sender:
        assert set(subscriber.hello.apps) == {"none"}
        for name in ("a", "b"):
            sender.send(StartMessage(name))
        for seq in range(n):
            for name in ("a", "b"):
                sender.send(make_frame(seq, name))
            time.sleep(0.002)
        for name in ("a", "b"):
            sender.send(EndMessage(name, n))
        messages = []
        ended = set()
        while ended != {"a", "b"}:
            message = subscriber.recv(timeout_s=30)
            assert message is not None, "no end from the side-car"
            messages.append(message)
            if message.kind == "end":
                ended.add(message.stream)
    for name in ("a", "b"):
        mine = [m for m in messages if getattr(m, "stream", None) == name]
        results = [m for m in mine if m.kind == "result"]
        [end] = [m for m in mine if m.kind == "end"]
        assert mine[0].kind == "start" and mine[-1] is end
        seqs = [r.seq for r in results]
        assert seqs == sorted(set(seqs)) and seqs[-1] == n - 1  # the newest frame wins
        assert len(results) < n  # the worker was slower: some were dropped
        previous = -1
        for r in results:  # every gap is counted in that stream's next result
            assert r.dropped == r.seq - previous - 1
            previous = r.seq
        assert end.meta["processed"] == len(results)
        assert end.meta["processed"] + end.meta["dropped"] == n


def test_a_silent_stream_is_closed_while_no_message_comes():
    """The idle timeout needs no traffic: the worker closes a silent stream by itself."""
    config = SideCarConfig(ingest="tcp://127.0.0.1:*", publish="tcp://127.0.0.1:*",
                           lossless=True, stream_idle_timeout_s=0.3)
    analysis = build_analysis(AnalysisConfig(app="none"))
    with SideCar(config, analysis) as sidecar, \
            ResultSubscriber(SubscriberConfig(sidecar.publish_endpoint)) as subscriber, \
            FrameSender(SenderConfig(sidecar.ingest_endpoint)) as sender:
        sender.send(make_frame(0, "quiet"))
        messages = collect(subscriber, "quiet", timeout_s=10.0)
        assert "quiet" not in sidecar.processor.streams
    [end] = [m for m in messages if m.kind == "end"]
    assert end.meta["reason"] == "idle_timeout" and end.meta["processed"] == 1


def test_a_drop_just_before_a_streams_end_is_in_its_end_counts():
    """A stream's frame dropped with no later frame of its own: the drop is handed out with
    its stream's end, not lost or charged elsewhere."""
    slot = LatestFrameSlot(max_streams=1)
    slot.put_frame(received(0, "a"))
    slot.put_frame(received(0, "b"))  # the slot is full: b's newcomer frame goes
    slot.put_control(Received(EndMessage("b", 1), 0))
    item, dropped = slot.get(0.1)
    assert (item.message.stream, dropped) == ("a", 0)
    item, dropped = slot.get(0.1)
    assert (item.message.kind, item.message.stream, dropped) == ("end", "b", 1)
    slot.put_frame(received(0, "b"))  # a new stream of the same name starts clean
    assert slot.get(0.1)[1] == 0
    slot.put_frame(received(0, "c"))
    slot.put_frame(received(1, "c"))
    assert slot.get(0.1)[1] == 1 and slot.forget("c") == 0


class UnwritableApp(App):
    """Writes a field JSON cannot hold on frame 1 (an app bug)."""

    name = "unwritable"
    result_fields = (Field("thing", "object", "a value"),)

    def stages(self):
        return [Preprocess(), Thing()]


class Thing(Stage):
    name = "thing"
    inputs = ("frame",)
    outputs = ("thing",)

    def process(self, frame):
        return {"thing": object() if frame.seq == 1 else {"ok": True}}


def test_a_result_that_cannot_be_encoded_is_an_error_and_the_side_car_goes_on():
    config = SideCarConfig(ingest="tcp://127.0.0.1:*", publish="tcp://127.0.0.1:*",
                           lossless=True, republish_frames=True)
    analysis = Analysis({"unwritable": UnwritableApp()}, forced="unwritable")
    with SideCar(config, analysis) as sidecar, \
            ResultSubscriber(SubscriberConfig(sidecar.publish_endpoint)) as subscriber, \
            FrameSender(SenderConfig(sidecar.ingest_endpoint)) as sender:
        sender.send(StartMessage("u", {"modality": "US"}))
        for seq in range(3):
            sender.send(make_frame(seq, "u"))
        sender.send(EndMessage("u", 3))
        messages = collect(subscriber, "u")
    # republished start: the ingest thread adds the app's declaration too
    [start] = [m for m in messages if m.kind == "start"]
    assert start.meta["app"]["name"] == "unwritable"
    answers = [(m.kind, m.seq) for m in messages if m.kind in ("result", "error")]
    assert answers == [("result", 0), ("error", 1), ("result", 2)]
    [error] = [m for m in messages if m.kind == "error"]
    assert error.code == "stage_failed" and "could not be encoded" in error.message


def test_a_deeply_nested_start_is_refused_and_the_side_car_serves_on():
    """Issue 14, finding 1, the probe's exact message: a start whose meta nests 254 levels.
    It is answered with malformed_header and the next stream is served."""
    config = SideCarConfig(ingest="tcp://127.0.0.1:*", publish="tcp://127.0.0.1:*",
                           lossless=True)
    with SideCar(config, build_analysis(AnalysisConfig(app="none"))) as sidecar, \
            ResultSubscriber(SubscriberConfig(sidecar.publish_endpoint)) as subscriber, \
            FrameSender(SenderConfig(sidecar.ingest_endpoint)) as sender:
        raw = zmq.Context.instance().socket(zmq.PUSH)
        raw.connect(sidecar.ingest_endpoint)
        raw.send(b'{"v":1,"kind":"start","stream":"n","meta":' + b'{"a":' * 254 + b"1"
                 + b"}" * 255)
        raw.close(linger=1000)
        error = subscriber.recv(timeout_s=10)
        assert error is not None and error.kind == "error"
        assert error.code == "malformed_header"
        sender.send(StartMessage("ok", {"modality": "US"}))
        sender.send(make_frame(0, "ok"))
        sender.send(EndMessage("ok", 1))
        messages = collect(subscriber, "ok")
        assert [m.kind for m in messages] == ["start", "result", "end"]
        assert sidecar.wait(0.1) is False  # still running


# -- a flood of bad messages does not flood the log ------------------------------------


def test_log_budget_allows_so_many_lines_a_period_and_counts_the_rest():
    budget = LogBudget(lines=3, period_s=60.0)
    assert [budget.allow(t) for t in (0.0, 1.0, 2.0, 3.0, 4.0)] == [True] * 3 + [False] * 2
    assert budget.allow(59.0) is False
    assert budget.allow(60.0) is True and budget.take_suppressed() == 3
    assert budget.take_suppressed() == 0


def test_a_flood_of_bad_messages_is_answered_each_but_logged_twenty_times(caplog):
    """Issue 14: every bad message was logged, so a flood of them flooded the log."""
    import logging

    caplog.set_level(logging.WARNING, logger="streamer.sidecar")
    config = SideCarConfig(ingest="tcp://127.0.0.1:*", publish="tcp://127.0.0.1:*",
                           lossless=True)
    context = zmq.Context()
    with SideCar(config, build_analysis(AnalysisConfig(app="none")), context) as sidecar, \
            ResultSubscriber(SubscriberConfig(sidecar.publish_endpoint), context) as subscriber:
        push = context.socket(zmq.PUSH)
        push.connect(sidecar.ingest_endpoint)
        for _ in range(100):
            push.send(b"{not json")
        push.send_multipart(encode(make_frame(0)))
        answers = [subscriber.recv(timeout_s=10) for _ in range(101)]
        push.close(linger=0)
    context.term()
    assert [a.kind for a in answers] == ["error"] * 100 + ["result"]
    assert len([r for r in caplog.records if "bad message" in r.getMessage()]) == 20


# -- bounded memory against a stalled subscriber and a flood of huge messages -----------


def stalled_subscriber(context: zmq.Context, endpoint: str) -> zmq.Socket:
    """A SUB that subscribes and then never reads: ZeroMQ's own buffers on its side hold one
    message, the kernel's a few hundred KiB, the rest piles up at the publisher."""
    sub = context.socket(zmq.SUB)
    sub.setsockopt(zmq.RCVHWM, 1)
    sub.setsockopt(zmq.RCVBUF, 4096)
    sub.setsockopt(zmq.LINGER, 0)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.connect(endpoint)
    return sub


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/PID/status")
def test_a_stalled_subscriber_and_a_flood_of_huge_messages_leave_memory_bounded(serve):
    """Issue 14: before, the publish socket had no (lossless) or a 10,000-message (live)
    high-water mark, and parts up to 4x --max-message-mb were read before being refused:
    a subscriber that never reads grew the side-car by every frame republished to it, and
    six 200 MB messages by 1.2 GB. Now a stalled subscriber loses its own messages past
    --publish-hwm and a part over the limit closes its sender's connection unread, while a
    well-behaved client is answered every frame and gets every republished one."""
    hwm = 50
    sidecar = serve("--app", "none", "--lossless", "--republish-frames",
                    "--publish-hwm", str(hwm), "--subscriber-stall-s", "1",
                    "--max-message-mb", "16")
    context = zmq.Context()
    frame_pixels = np.random.default_rng(0).integers(0, 255, (512, 1024), np.uint8)  # 0.5 MiB
    stalled = stalled_subscriber(context, sidecar.ready["publish"])
    flood = context.socket(zmq.PUSH)
    flood.setsockopt(zmq.LINGER, 0)
    flood.setsockopt(zmq.SNDTIMEO, 2000)
    try:
        time.sleep(0.5)  # its subscription is in before the frames
        rss_before = sidecar.rss_mb()
        flood.connect(sidecar.ready["ingest"])
        huge = np.zeros(200 * 10**6, np.uint8)
        for _ in range(6):
            try:
                flood.send(huge, copy=False)
            except zmq.Again:
                break  # the side-car closed the connection: nothing queued any more
        n = 1200  # 600 MiB through the side-car and republished to the stalled subscriber
        got: list = []
        with ResultSubscriber(SubscriberConfig(sidecar.ready["publish"]), zmq.Context()) as good:
            reader = threading.Thread(target=lambda: got.extend(collect(good, "good", 60)))
            reader.start()  # the well-behaved client reads as results come
            with FrameSender(SenderConfig(sidecar.ready["ingest"])) as sender:
                sender.send(StartMessage("good"))
                for seq in range(n):
                    sender.send(make_frame(seq, "good", frame_pixels))
                sender.send(EndMessage("good", n))
            reader.join(90)
        rss_after = sidecar.rss_mb()
    finally:
        flood.close(linger=0)
        stalled.close(linger=0)
        context.term()
    results = [m for m in got if m.kind == "result"]
    assert [r.seq for r in results] == list(range(n))  # the good client lost nothing
    assert [m.seq for m in got if m.kind == "frame"] == list(range(n))
    assert sidecar.process.poll() is None  # and the side-car is alive
    # the stated bound (docs/protocol.md, Memory): the stalled subscriber's queue, the outbox,
    # the lossless inbox and the ingest buffers of one sender, all of 0.5 MiB frames here
    # (the huge parts were never read), and 64 MiB for the allocator
    config = SideCarConfig(max_message_bytes=16 * 2**20, lossless=True)
    messages = hwm + OUTBOX_MESSAGES + config.queue_frames + config.ingest_hwm
    grown = rss_after - rss_before
    bound = messages * frame_pixels.nbytes / 2**20 + 64
    assert grown < bound, (rss_before, rss_after, bound)
    stats = sidecar.stop()["stats"]
    assert stats["subscriber_stalls"] >= 1  # the stalled one was cut off (and it was logged)
    assert "messages behind and read none for 1 s" in sidecar.log_tail()
    assert stats["received"] >= n + 2  # the huge parts never reached the ingest thread whole
