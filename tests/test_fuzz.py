"""Fuzzing the ingest endpoint (issue 14, acceptance 5): bad messages between good frames.

A side-car (the runtime-only app, lossless) over real loopback sockets takes a corpus of
hypothesis-generated bad messages - random parts, valid headers with one field replaced by
a random JSON value, truncated or padded payloads, random headers of every kind, and the
cases an independent probe found (a meta nested 254 levels, ``v`` as 1.0 or true,
spacing and fps of 1e-300 / 1e300, negative or 2^64-1 timestamps, a NUL in the stream name,
a 300 KB header) - each followed by a good frame of one stream. Every good frame must be
answered with its result, in order, and the side-car must stay alive. The default run
sends 2,000 messages; the slow test 10^5.
"""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streamer.apps import AnalysisConfig, build_analysis
from streamer.io.protocol import FrameMessage, encode
from streamer.io.sockets import ResultSubscriber, SubscriberConfig
from streamer.sidecar import SideCar, SideCarConfig

GOOD = "good"
PIXELS = np.arange(16 * 16, dtype=np.uint8).reshape(16, 16)
TEMPLATE = json.loads(bytes(encode(FrameMessage(
    stream="fuzz", seq=0, t_acq_ns=1, modality="US", pixels=PIXELS, spacing_mm=(0.3, 0.3),
    fps=50.0))[0]))

json_scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70),
                         st.floats(allow_nan=False), st.text(max_size=20))
json_values = st.recursive(json_scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)),
    max_leaves=12)


def _not_good(header: dict) -> dict:
    """A bad message never names the good stream (it could end it or move its seq on)."""
    if header.get("stream") == GOOD:
        header["stream"] = "fuzz"
    return header


def _dump(header) -> bytes:
    return json.dumps(header, allow_nan=True).encode()


@st.composite
def field_replaced(draw) -> list[bytes]:
    """The frame template with one field replaced (or removed, or one added)."""
    header = dict(TEMPLATE)
    key = draw(st.sampled_from([*TEMPLATE, "t_send_ns", "channels", "view", "phase_index",
                                "ecg_r", "meta", "extra"]))
    if draw(st.booleans()) and key in header:
        del header[key]
    else:
        header[key] = draw(json_values)
    return [_dump(_not_good(header)), PIXELS.tobytes()]


@st.composite
def payload_changed(draw) -> list[bytes]:
    """A valid header with a payload cut short, padded, or in too many parts."""
    body = PIXELS.tobytes()
    cut = draw(st.integers(0, len(body) - 1))
    pad = draw(st.binary(min_size=1, max_size=64))
    parts = draw(st.sampled_from([[body[:cut]], [body + pad], [body, pad], []]))
    return [_dump(TEMPLATE), *parts]


@st.composite
def random_header(draw) -> list[bytes]:
    """A JSON object with a kind and random fields, and random further parts."""
    header = draw(st.dictionaries(st.sampled_from(
        ["v", "kind", "stream", "seq", "meta", "n_frames", "shape", "dtype", "parts"]),
        json_values, max_size=6))
    header.setdefault("kind", draw(st.sampled_from(
        ["frame", "start", "end", "result", "beat", "error", "hello", "x"])))
    header.setdefault("v", 1)
    extra = draw(st.lists(st.binary(max_size=32), max_size=3))
    return [_dump(_not_good(header)), *extra]


random_parts = st.lists(st.binary(max_size=256), min_size=1, max_size=4)


def probe_cases() -> list[list[bytes]]:
    """What the independent probe of issue 14 sent."""
    nested = b'{"v":1,"kind":"start","stream":"n","meta":' + b'{"a":' * 254 + b"1" + b"}" * 255
    cases = [[nested], [b"{" * 5000], [_dump({**TEMPLATE, "stream": "x" * 300_000})]]
    for key, value in (("v", 1.0), ("v", True), ("fps", 1e-300), ("fps", 1e300),
                       ("spacing_mm", [1e-300, 1e-300]), ("spacing_mm", [1e300, 1.0]),
                       ("t_acq_ns", -1), ("t_acq_ns", 2**64 - 1), ("seq", -5),
                       ("stream", "a\x00b"), ("shape", [2**40, 2**40]), ("dtype", "object")):
        cases.append([_dump({**TEMPLATE, key: value}), PIXELS.tobytes()])
    return cases


bad_messages = st.one_of(random_parts, field_replaced(), payload_changed(), random_header(),
                         st.sampled_from(probe_cases()))


class Feed:
    """One side-car for the whole module, a raw PUSH for anything, a subscriber, and the good
    stream's next seq."""

    def __init__(self):
        config = SideCarConfig(ingest="tcp://127.0.0.1:*", publish="tcp://127.0.0.1:*",
                               lossless=True, max_message_bytes=1 << 20)
        self.sidecar = SideCar(config, build_analysis(AnalysisConfig(app="none"))).start()
        self.context = zmq.Context()
        self.subscriber = ResultSubscriber(SubscriberConfig(self.sidecar.publish_endpoint),
                                           self.context)
        self.push = self.context.socket(zmq.PUSH)
        self.push.setsockopt(zmq.LINGER, 0)
        self.push.connect(self.sidecar.ingest_endpoint)
        self.seq = 0
        self.sent = 0

    def good(self) -> list:
        self.seq += 1
        now = time.time_ns()
        return encode(FrameMessage(stream=GOOD, seq=self.seq, t_acq_ns=now, modality="US",
                                   pixels=PIXELS, spacing_mm=(0.3, 0.3), fps=50.0))

    def batch(self, bad: list[list[bytes]]) -> None:
        """Each bad message then a good frame; every good frame's result must come, in
        order (other messages - errors, results of fuzz streams that happened to be valid,
        their start/end echoes - may come between)."""
        first = self.seq + 1
        for parts in bad:
            self.push.send_multipart(parts)
            self.push.send_multipart(self.good())
        self.sent += 2 * len(bad)
        expected = list(range(first, self.seq + 1))
        got = []
        while len(got) < len(expected):
            message = self.subscriber.recv(timeout_s=30)
            assert message is not None, (f"no answer after good frames {got[-3:]} of "
                                         f"{expected[0]}..{expected[-1]}")
            if message.kind == "result" and message.stream == GOOD:
                if message.seq >= first:  # (not one left over by a failed example)
                    got.append(message.seq)
            elif message.kind == "error" and message.stream == GOOD:
                pytest.fail(f"a good frame was refused: {message.code}: {message.message}")
        assert got == expected
        assert all(t.is_alive() for t in self.sidecar._threads)

    def close(self) -> None:
        self.push.close(linger=0)
        self.subscriber.close()
        self.sidecar.stop(timeout_s=30)
        self.context.term()


@pytest.fixture(scope="module")
def feed():
    feed = Feed()
    yield feed
    feed.close()


def _fuzz(feed, examples: int, batch: int) -> None:
    @settings(max_examples=examples, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    @given(st.lists(bad_messages, min_size=batch, max_size=batch))
    def run(bad):
        feed.batch(bad)

    run()


def test_the_probe_cases_between_good_frames_leave_every_good_frame_answered(feed):
    feed.batch(probe_cases())


def test_fuzzed_messages_between_good_frames_leave_every_good_frame_answered(feed):
    _fuzz(feed, examples=40, batch=25)  # 2,000 messages


@pytest.mark.slow
def test_a_fuzz_corpus_of_100_000_messages_leaves_every_good_frame_answered(feed):
    before = feed.sent
    _fuzz(feed, examples=1000, batch=50)
    assert feed.sent - before >= 100_000
    stats = feed.sidecar.stats
    assert stats.protocol_errors > 0 and stats.results >= feed.seq
