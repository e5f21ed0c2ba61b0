"""The .csrec container: raw wire messages with receive times, read back as records or a clip."""

import numpy as np
import pytest

from streamer.io.clips import ClipError, open_clip
from streamer.io.protocol import EndMessage, FrameMessage, ResultMessage, StartMessage, encode
from streamer.io.recording import MAGIC, RecordingClip, RecordingWriter, iter_records


def frame(seq):
    return FrameMessage(stream="rec", seq=seq, t_acq_ns=seq, modality="US",
                        pixels=np.full((6, 7), seq, np.uint8), spacing_mm=(0.4, 0.5), fps=25.0)


def write(path, messages_with_times):
    with RecordingWriter(path) as writer:
        for message, t_ns in messages_with_times:
            writer.write(encode(message), t_ns)
    return path


def test_records_are_the_wire_parts_byte_for_byte(tmp_path):
    messages = [(StartMessage("rec"), 0)] + [(frame(i), 1000 + i * 40_000_000)
                                             for i in range(3)]
    path = write(tmp_path / "a.csrec", messages)
    records = list(iter_records(path))
    assert [r.t_recv_ns for r in records] == [t for _, t in messages]
    for record, (message, _) in zip(records, messages):
        assert record.parts == [bytes(p) for p in encode(message)]


def test_a_recording_reads_as_a_clip_with_its_original_timing(tmp_path):
    messages = [(StartMessage("rec"), 0), (frame(0), 10**9), (frame(1), 10**9 + 30_000_000),
                (ResultMessage("rec", 0, 0, {}), 10**9 + 31_000_000),
                (frame(2), 10**9 + 90_000_000), (EndMessage("rec", 3), 10**9 + 10**8)]
    path = write(tmp_path / "b.csrec", messages)
    with open_clip(path) as clip:
        assert isinstance(clip, RecordingClip)
        assert clip.info.n_frames == 3 and clip.info.shape == (6, 7)
        assert clip.info.spacing_mm == (0.4, 0.5) and clip.info.fps == 25.0
        frames = list(clip)
    assert [f.t_s for f in frames] == pytest.approx([0.0, 0.03, 0.09])
    assert [int(f.pixels[0, 0]) for f in frames] == [0, 1, 2]


def test_truncated_bad_magic_and_results_only(tmp_path):
    path = write(tmp_path / "c.csrec", [(frame(i), i) for i in range(4)])
    data = path.read_bytes()
    cut = tmp_path / "cut.csrec"
    cut.write_bytes(data[:-10])
    records = iter_records(cut)
    assert len([next(records) for _ in range(3)]) == 3  # whole records before the cut
    with pytest.raises(ClipError, match="truncated inside record 3"):
        next(records)
    with pytest.raises(ClipError, match="truncated"):
        RecordingClip(cut)
    bad = tmp_path / "bad.csrec"
    bad.write_bytes(b"NOTMAGIC" + data[len(MAGIC):])
    with pytest.raises(ClipError, match="not a cardiostream recording"):
        list(iter_records(bad))
    results = write(tmp_path / "r.csrec", [(ResultMessage("rec", 0, 0, {}), 0)])
    with pytest.raises(ClipError, match="holds no frames"):
        RecordingClip(results)
