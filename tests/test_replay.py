"""Replay: clip -> timed messages, pacing, loops, and clips that cannot be sent as they are."""

import time

import numpy as np
import pytest

from streamer.io.clips import open_clip
from streamer.io.protocol import decode, encode
from streamer.replay import ReplayConfig, ReplayError, clip_messages, replay


class ListSender:
    """Collects what replay sends, through the real encoder/decoder."""

    def __init__(self):
        self.sent, self.times = [], []

    def send(self, message, block=True):
        self.times.append(time.monotonic())
        self.sent.append(decode(encode(message)))


def test_start_frames_end_with_clip_timing(npz_clip):
    with open_clip(npz_clip) as reader:
        timed = list(clip_messages(reader, ReplayConfig(stream="x"), t0_ns=10**18))
    kinds = [t.message.kind for t in timed]
    assert kinds == ["start"] + ["frame"] * 12 + ["end"]
    frames = [t.message for t in timed[1:-1]]
    assert [f.seq for f in frames] == list(range(12))
    assert [round(t.due_s, 6) for t in timed[1:-1]] == [round(i / 50, 6) for i in range(12)]
    assert frames[3].t_acq_ns == 10**18 + int(3 / 50 * 1e9)
    assert frames[0].spacing_mm == (0.3, 0.3) and frames[0].fps == 50.0
    start, end = timed[0].message, timed[-1].message
    assert start.meta["n_frames"] == 12 and start.meta["fps"] == 50.0 and end.n_frames == 12


def test_loops_continue_sequence_and_time(npz_clip):
    with open_clip(npz_clip) as reader:
        timed = list(clip_messages(reader, ReplayConfig(loop=3)))
    frames = [t for t in timed if t.message.kind == "frame"]
    assert [t.message.seq for t in frames] == list(range(36))
    dues = np.array([t.due_s for t in frames])
    np.testing.assert_allclose(np.diff(dues), 1 / 50, atol=1e-9)


def test_fps_override_and_max_frames(npz_clip):
    with open_clip(npz_clip) as reader:
        timed = list(clip_messages(reader, ReplayConfig(fps=10.0, max_frames=5, loop=2)))
    frames = [t for t in timed if t.message.kind == "frame"]
    assert len(frames) == 5 and frames[-1].due_s == pytest.approx(0.4)
    assert timed[-1].message.n_frames == 5


def test_replay_paces_at_the_clip_rate(npz_clip):
    sender = ListSender()
    with open_clip(npz_clip) as reader:
        stats = replay(reader, sender, ReplayConfig())
    assert stats.frames == 12
    frame_times = np.array(sender.times[1:-1])
    assert frame_times[-1] - frame_times[0] >= 11 / 50 - 0.005  # 220 ms of clip
    fast = ListSender()
    with open_clip(npz_clip) as reader:
        replay(reader, fast, ReplayConfig(max_rate=True))
    assert fast.times[-2] - fast.times[1] < 11 / 50 / 2


def test_clips_without_spacing_fps_or_modality_say_what_to_pass(tmp_path):
    path = tmp_path / "bare.npz"
    np.savez(path, frames=np.zeros((2, 4, 4), np.uint8))
    with open_clip(path) as reader:
        with pytest.raises(ReplayError, match="--modality|--spacing-mm|--fps"):
            list(clip_messages(reader))
    with open_clip(path) as reader:
        with pytest.raises(ReplayError, match="--spacing-mm"):
            list(clip_messages(reader, ReplayConfig(modality="US")))
    with open_clip(path, spacing_mm=(0.5, 0.5)) as reader:
        with pytest.raises(ReplayError, match="--fps"):
            list(clip_messages(reader, ReplayConfig(modality="US")))
    with open_clip(path, spacing_mm=(0.5, 0.5), fps=20.0) as reader:
        assert len(list(clip_messages(reader, ReplayConfig(modality="MR")))) == 4


def test_float64_frames_go_out_as_float32_and_bad_config_is_refused(tmp_path):
    path = tmp_path / "f64.npz"
    np.savez(path, frames=np.zeros((1, 4, 4), np.float64), spacing_mm=np.array([1.0, 1.0]),
             fps=np.array(10.0), modality=np.array("MR"))
    with open_clip(path) as reader:
        [_, frame, _] = [t.message for t in clip_messages(reader)]
    assert frame.pixels.dtype == np.float32
    for bad in (dict(fps=0), dict(loop=0), dict(modality="CT"), dict(max_frames=0)):
        with pytest.raises(ReplayError):
            ReplayConfig(**bad)
