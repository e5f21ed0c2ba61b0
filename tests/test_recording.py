"""The .csrec container: raw wire messages with receive times, read back as records or a clip."""

import numpy as np
import pytest

from streamer.io.clips import ClipError, open_clip
from streamer.io.protocol import EndMessage, FrameMessage, ResultMessage, StartMessage, encode
from streamer.io.recording import (
    MAGIC,
    MAGIC_V1,
    RecordingClip,
    RecordingWriter,
    check_recording,
    iter_records,
)


def frame(seq):
    return FrameMessage(stream="rec", seq=seq, t_acq_ns=seq, modality="US",
                        pixels=np.full((6, 7), seq % 256, np.uint8), spacing_mm=(0.4, 0.5),
                        fps=25.0)


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


def test_a_cut_recording_reads_up_to_its_last_complete_record(tmp_path, caplog):
    """Issue 14: a recording cut inside a record was refused whole."""
    path = write(tmp_path / "c.csrec", [(frame(i), i) for i in range(500)])
    data = path.read_bytes()
    cut = tmp_path / "cut.csrec"
    cut.write_bytes(data[:-10])
    found = []
    assert len(list(iter_records(cut, on_damage=found.append))) == 499
    [damage] = found
    assert damage.record == 499 and "truncated" in damage.reason
    assert damage.offset + damage.bytes_after == len(data) - 10
    with pytest.raises(ClipError, match="damaged: record 499 .* truncated"):
        list(iter_records(cut, strict=True))
    with caplog.at_level("WARNING"):
        clip = RecordingClip(cut)
    assert clip.info.n_frames == 499 and "truncated" in clip.info.metadata["damage"]
    assert "damaged recording" in caplog.text
    assert len(list(clip)) == 499


def test_flipped_bytes_fail_the_checksum_and_reading_stops_there(tmp_path):
    path = write(tmp_path / "f.csrec", [(frame(i), i) for i in range(10)])
    data = bytearray(path.read_bytes())
    record_size = (len(data) - len(MAGIC)) // 10
    data[len(MAGIC) + 6 * record_size + 60] ^= 0xFF  # a pixel of record 6
    flipped = tmp_path / "flipped.csrec"
    flipped.write_bytes(bytes(data))
    found = []
    records = list(iter_records(flipped, on_damage=found.append))
    assert len(records) == 6 and found[0].record == 6 and "checksum" in found[0].reason
    report = check_recording(flipped)
    assert (report.version, report.records, report.ok) == (2, 6, False)
    assert report.kinds == {"frame": 6}


def test_a_version_1_recording_still_reads(tmp_path):
    """Before checksums: the same records without the trailing CRC."""
    import struct

    body = bytearray(MAGIC_V1)
    for i in range(3):
        parts = [bytes(p) for p in encode(frame(i))]
        body += struct.pack("<qI", i, len(parts))
        for part in parts:
            body += struct.pack("<Q", len(part)) + part
    old = tmp_path / "old.csrec"
    old.write_bytes(bytes(body))
    assert [r.t_recv_ns for r in iter_records(old)] == [0, 1, 2]
    report = check_recording(old)
    assert (report.version, report.records, report.ok) == (1, 3, True)


def test_record_check_reports_damage_and_exits_1(tmp_path, capsys):
    from streamer.cli import main

    path = write(tmp_path / "g.csrec", [(StartMessage("rec"), 0)] + [(frame(i), i) for i in range(5)])
    assert main(["record", "--check", str(path)]) == 0
    assert '"ok": true' in capsys.readouterr().out
    cut = tmp_path / "cut.csrec"
    cut.write_bytes(path.read_bytes()[:-3])
    assert main(["record", "--check", str(cut)]) == 1
    out = capsys.readouterr().out
    assert '"records": 5' in out and '"frame": 4' in out and "truncated" in out
    assert main(["record", "--listen", "tcp://127.0.0.1:*"]) == 2  # recording needs --out
    assert "--out FILE is needed" in capsys.readouterr().err


def test_bad_magic_and_results_only(tmp_path):
    path = write(tmp_path / "c.csrec", [(frame(i), i) for i in range(4)])
    data = path.read_bytes()
    bad = tmp_path / "bad.csrec"
    bad.write_bytes(b"NOTMAGIC" + data[len(MAGIC):])
    with pytest.raises(ClipError, match="not a cardiostream recording"):
        list(iter_records(bad))
    results = write(tmp_path / "r.csrec", [(ResultMessage("rec", 0, 0, {}), 0)])
    with pytest.raises(ClipError, match="holds no frames"):
        RecordingClip(results)
