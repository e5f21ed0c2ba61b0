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

from streamer.io.protocol import (EndMessage, FrameMessage, ResultMessage, StartMessage,
                                  encode)
from streamer.io.sockets import FrameSender, ResultSubscriber, SenderConfig, SubscriberConfig
from streamer.pipeline import AnalysisOff, Pipeline, Preprocess
from streamer.processor import Received
from streamer.sidecar import BoundedFrameQueue, LatestFrameSlot, SideCar, SideCarConfig

IMAGE = np.zeros((64, 64), np.uint8)


def make_frame(seq: int, stream: str = "s", pixels: np.ndarray = IMAGE) -> FrameMessage:
    now = time.time_ns()
    return FrameMessage(stream=stream, seq=seq, t_acq_ns=now, modality="US", pixels=pixels,
                        spacing_mm=(0.3, 0.3), fps=50.0, t_send_ns=now)


def received(seq: int) -> Received:
    return Received(make_frame(seq), time.time_ns())


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
    sidecar = serve("--lossless", "--queue-frames", "4", "--debug-delay-ms", "1", "--analysis", "none")
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
    sidecar = serve("--debug-delay-ms", "50", "--analysis", "none")  # ~20 frames/s at most
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
    sidecar = serve("--max-message-mb", "1", "--analysis", "none")
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
        ("bad_pixels", encode(make_frame(2, "bad", nan_pixels))),
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


def test_in_process_sidecar_with_a_custom_pipeline():
    """The SideCar class wires any pipeline; stage latencies come back by stage name."""
    config = SideCarConfig(ingest="tcp://127.0.0.1:*", publish="tcp://127.0.0.1:*",
                           lossless=True)
    with SideCar(config, Pipeline([Preprocess(), AnalysisOff()])) as sidecar, \
            ResultSubscriber(SubscriberConfig(sidecar.publish_endpoint)) as subscriber, \
            FrameSender(SenderConfig(sidecar.ingest_endpoint)) as sender:
        for seq in range(5):
            sender.send(make_frame(seq, "inproc"))
        sender.send(EndMessage("inproc", 5))
        messages = collect(subscriber, "inproc")
    results = [m for m in messages if m.kind == "result"]
    assert [r.seq for r in results] == [0, 1, 2, 3, 4]
    assert {"decode", "queue", "preprocess", "analysis_off", "total"} <= set(results[0].latency_ms)
    assert results[0].flags == ["analysis_off"]
