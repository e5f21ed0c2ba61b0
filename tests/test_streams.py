"""Several streams in one side-car: each keeps its own analysis state.

Two echo streams interleaved frame by frame through a real ``serve`` over loopback give,
stream by stream, the results each gives alone (to 1e-9); a ``start`` of one does not
reset the other; ``analyze`` of two clips agrees with ``analyze`` of each. MR streams are
routed to the MR app by their modality and never meet the echo view classifier.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from calib.datasets import random_echo_config, split_seeds
from calib.echo import make_echo_clip
from streamer.analyze import analyze
from streamer.apps import AnalysisConfig, build_analysis
from streamer.apps.mr_sax import MrShortAxisApp
from streamer.io.clips import open_clip, write_clip
from streamer.io.protocol import EndMessage, StartMessage
from streamer.io.sockets import FrameSender, ResultSubscriber, SenderConfig, SubscriberConfig
from streamer.replay import ReplayConfig, clip_messages

#: what varies from run to run (timing), not results
VOLATILE = {"t_recv_ns", "t_result_ns", "t_publish_ns", "latency_ms", "budget", "dropped"}


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> dict[str, tuple[Path, ReplayConfig]]:
    """A held-out phantom A4C clip (about two beats) and pydicom's real A4C cine."""
    from pydicom.data import get_testdata_file

    folder = tmp_path_factory.mktemp("clips")
    seed = int(split_seeds("test", 1, offset=1)[0])
    clip = make_echo_clip(random_echo_config(seed, view="a4c", frames=90, fps=50.0,
                                             start_phase=0.0))
    phantom = write_clip(folder / "phantom.dcm", clip.frames,
                         spacing_mm=tuple(clip.spacing_mm), fps=50.0, modality="US")
    real = Path(get_testdata_file("examples_ybr_color.dcm"))
    return {"phantom": (phantom, ReplayConfig(stream="phantom")),
            "real": (real, ReplayConfig(stream="real", view="a4c"))}


def messages(path: Path, config: ReplayConfig) -> list:
    """The clip's start, frames and end, first frame acquired at t = 0 (so that two runs
    compute with the same times)."""
    with open_clip(path) as reader:
        return [timed.message for timed in clip_messages(reader, config, t0_ns=0)]


def comparable(message) -> dict:
    """A published result or beat, less its timing."""
    if message.kind == "result":
        return {"seq": message.seq, "flags": message.flags, "app": message.app,
                **message.fields}
    return {"beat": message.beat, **message.fields}


def by_stream(received: list) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for message in received:
        if message.kind in ("result", "beat"):
            out.setdefault(message.stream, []).append(comparable(message))
    return out


def assert_same(alone: list[dict], together: list[dict], stream: str) -> None:
    assert len(alone) == len(together), stream
    for a, b in zip(alone, together):
        assert a.keys() == b.keys(), (stream, a.get("seq"))
        for key in a:
            assert_close(a[key], b[key], f"{stream}#{a.get('seq', a.get('beat'))}.{key}")


def assert_close(a, b, where: str, tol: float = 1e-9) -> None:
    if isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), where
        for k in a:
            assert_close(a[k], b[k], f"{where}.{k}", tol)
    elif isinstance(a, list):
        assert isinstance(b, list) and len(a) == len(b), where
        for x, y in zip(a, b):
            assert_close(x, y, where, tol)
    elif isinstance(a, float) or isinstance(b, float):
        assert math.isclose(a, b, rel_tol=0.0, abs_tol=tol), (where, a, b)
    else:
        assert a == b, (where, a, b)


def run(sidecar, sequence: list, n_ends: int) -> list:
    """Send messages to a side-car; everything it publishes until ``n_ends`` end echoes."""
    with ResultSubscriber(SubscriberConfig(sidecar.ready["publish"])) as subscriber, \
            FrameSender(SenderConfig(sidecar.ready["ingest"])) as sender:
        for message in sequence:
            sender.send(message)
        received, ends = [], 0
        while ends < n_ends:
            message = subscriber.recv(timeout_s=60.0)
            assert message is not None, "the side-car went quiet"
            received.append(message)
            ends += message.kind == "end"
    return received


def interleave(a: list, b: list, b_starts_after: int) -> list:
    """a's start and first frames, then b's start, then one frame of each in turn."""
    head, tail = a[:1 + b_starts_after], a[1 + b_starts_after:]
    out = list(head)
    for k in range(max(len(tail), len(b))):
        out += tail[k:k + 1] + b[k:k + 1]
    return out


def test_interleaved_streams_through_serve_equal_each_stream_alone(serve, clips):
    sidecar = serve("--lossless")
    phantom, real = messages(*clips["phantom"]), messages(*clips["real"])
    alone = by_stream(run(sidecar, phantom, 1) + run(sidecar, real, 1))
    # the real clip starts after 10 phantom frames: its start must not reset the phantom's
    received = run(sidecar, interleave(phantom, real, b_starts_after=10), 2)
    together = by_stream(received)
    kinds = [(m.kind, m.stream) for m in received if m.kind in ("start", "end")]
    assert kinds[:2] == [("start", "phantom"), ("start", "real")]
    frames = [m.stream for m in received if m.kind == "result"]
    assert frames[11:15] == ["phantom", "real", "phantom", "real"]  # truly interleaved
    for stream in ("phantom", "real"):
        assert_same(alone[stream], together[stream], stream)
    assert any("beat" in row and "peak_gls_pct" in row for row in together["phantom"]), \
        "the phantom clip closes at least one beat"
    assert sum(row.get("points_mm") is not None for row in together["real"]) > 10
    ends = {m.stream: m.meta for m in received if m.kind == "end"}
    assert ends["phantom"]["processed"] == 90 and ends["real"]["processed"] == 30
    sidecar.stop()


def test_a_start_resets_only_its_own_stream(tmp_path):
    """In process: stream B's start between A's frames leaves A's app instance alone; A's
    own start makes a fresh one."""
    from streamer.io.protocol import FrameMessage
    from streamer.processor import FrameProcessor, Received

    processor = FrameProcessor(build_analysis(AnalysisConfig(app="none")))

    def frame(stream, seq):
        return Received(FrameMessage(stream=stream, seq=seq, t_acq_ns=seq, modality="US",
                                     pixels=np.zeros((4, 4), np.uint8), spacing_mm=(1.0, 1.0),
                                     fps=10.0), 0)

    processor.handle(Received(StartMessage("A", {"modality": "US"}), 0))
    processor.handle(frame("A", 0))
    instance = processor.streams["A"].app
    processor.handle(Received(StartMessage("B", {"modality": "US"}), 0))
    processor.handle(frame("A", 1))
    assert processor.streams["A"].app is instance
    assert processor.streams["A"].counts.processed == 2
    processor.handle(Received(StartMessage("A", {"modality": "US"}), 0))
    assert processor.streams["A"].app is not instance
    processor.handle(Received(EndMessage("B"), 0))
    assert set(processor.streams) == {"A"}


def test_analyze_of_two_clips_equals_each_clip_alone(clips, tmp_path):
    import json

    analysis = build_analysis(AnalysisConfig())

    def lines(path):
        rows = [json.loads(line) for line in path.read_text().splitlines()]
        out: dict[str, list] = {}
        for row in rows:
            if row["kind"] in ("result", "beat"):
                out.setdefault(row["stream"], []).append(
                    {k: v for k, v in row.items() if k not in VOLATILE})
        return out

    alone = {}
    for name, (path, config) in clips.items():
        with open_clip(path) as reader:
            analyze(reader, tmp_path / f"{name}.jsonl", analysis, config, t0_ns=0)
        alone.update(lines(tmp_path / f"{name}.jsonl"))
    (p_path, p_config), (r_path, r_config) = clips["phantom"], clips["real"]
    with open_clip(p_path) as a, open_clip(r_path) as b:
        analyze([a, b], tmp_path / "both.jsonl", analysis, [p_config, r_config], t0_ns=0)
    together = lines(tmp_path / "both.jsonl")
    streams = [json.loads(line)["stream"] for line in
               (tmp_path / "both.jsonl").read_text().splitlines()[2:6]]
    assert set(streams) == {"phantom", "real"}  # interleaved, not one after the other
    for stream in ("phantom", "real"):
        assert_same(alone[stream], together[stream], stream)


def mr_clip(path: Path, frames: int, seed: int) -> Path:
    pixels = np.random.default_rng(seed).integers(0, 4000, (frames, 32, 40)).astype(np.uint16)
    np.savez(path, frames=pixels, spacing_mm=np.array([1.4, 1.4]), fps=np.array(25.0),
             modality=np.array("MR"))
    return path


def test_mr_slices_go_to_the_mr_app_and_echo_to_the_echo_app(serve, clips, tmp_path):
    """One side-car (--app auto): MR slices are routed to mr-sax by their modality (no view
    classifier), each slice its own stream; the echo clip beside them gets echo."""
    sidecar = serve("--lossless")
    slices = [messages(mr_clip(tmp_path / f"s{k}.npz", 6 + k, k),
                       ReplayConfig(stream=f"stack/slice-{k}")) for k in range(2)]
    echo = messages(*clips["real"])[:8] + [EndMessage("real")]
    with ResultSubscriber(SubscriberConfig(sidecar.ready["publish"])) as subscriber:
        assert set(subscriber.hello.apps) == {"echo", "mr-velocity", "mr-sax"}
        fields = [f["name"] for f in subscriber.hello.apps["mr-sax"]["result_fields"]]
        assert fields == [f.name for f in MrShortAxisApp.result_fields]
    received = run(sidecar, interleave(slices[0], interleave(slices[1], echo, 0), 0), 3)
    starts = {m.stream: m.meta["app"]["name"] for m in received if m.kind == "start"}
    assert starts == {"stack/slice-0": "mr-sax", "stack/slice-1": "mr-sax", "real": "echo"}
    results = [m for m in received if m.kind == "result"]
    for k in range(2):
        mine = [m for m in results if m.stream == f"stack/slice-{k}"]
        assert [m.seq for m in mine] == list(range(6 + k))
        assert all(m.app == "mr-sax" and "view" not in m.fields for m in mine)
        assert all("view" not in m.latency_ms for m in mine)  # never met the classifier
    assert all(m.app == "echo" and m.fields["view"] is not None
               for m in results if m.stream == "real")
    sidecar.stop()


def test_a_round_of_two_streams_runs_their_networks_as_one_batch(serve, clips):
    """``--max-batch 2``: the waiting frames of the two streams are taken together, their
    networks run as batches of 2, each result says so, and each stream's results are those
    it gives alone (to the float error of a batch-2 kernel: the same flags, numbers within
    1e-4)."""
    sidecar = serve("--lossless", "--max-batch", "2")
    phantom, real = messages(*clips["phantom"]), messages(*clips["real"])
    alone = by_stream(run(sidecar, phantom, 1) + run(sidecar, real, 1))
    received = run(sidecar, interleave(phantom, real, b_starts_after=10), 2)
    results = [m for m in received if m.kind == "result"]
    assert all(m.batch is not None and set(m.batch.values()) <= {1, 2} for m in results)
    paired = [m for m in results if m.batch.get("seg") == 2]
    assert len(paired) >= 20, "the interleaved frames were taken in rounds of two"
    together = by_stream(received)
    for stream in ("phantom", "real"):
        assert len(alone[stream]) == len(together[stream])
        for a, b in zip(alone[stream], together[stream]):
            assert a.get("flags") == b.get("flags"), (stream, a.get("seq"))
            assert_close(a, b, f"{stream}#{a.get('seq', a.get('beat'))}", tol=1e-4)
    sidecar.stop()

