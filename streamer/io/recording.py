"""Recordings (``.csrec``): a stream of wire messages as they arrived, with receive times.

The file holds the protocol's own multipart messages byte for byte — no second
encoding of frames or results — each with the time it was received, so
``replay`` can send a recording again with its original timing and
``analyze`` can read it like any clip. Layout (all integers little-endian)::

    magic   b"CSREC\\x01\\n"                         8 bytes
    record  t_recv_ns:int64  n_parts:uint32          12 bytes
            n_parts x ( length:uint64  bytes )

A record is written and flushed whole, so a recorder that is killed leaves a
file that reads up to its last complete record; the reader reports the cut
(``ClipError`` "truncated") when it reaches it.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

# from the base module, not the package: the package's registry opens .csrec files with
# this module, so importing the package from here would close an import cycle
from streamer.io.clips.base import ClipError, ClipFrame, ClipInfo, ClipReader
from streamer.io.protocol import FrameMessage, ProtocolError, decode

MAGIC = b"CSREC\x01\n"
_RECORD = struct.Struct("<qI")
_LENGTH = struct.Struct("<Q")
#: a single part longer than this is taken as a corrupt length field
_MAX_PART_BYTES = 1 << 32


class RecordingWriter:
    """Appends messages (lists of parts) with their receive time."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._file: BinaryIO = open(self.path, "wb")
        self._file.write(MAGIC)
        self.records = 0

    def write(self, parts: Sequence, t_recv_ns: int) -> None:
        chunks = [_RECORD.pack(int(t_recv_ns), len(parts))]
        for part in parts:
            view = memoryview(part)
            chunks.append(_LENGTH.pack(view.nbytes))
            chunks.append(view)
        self._file.write(b"".join(chunks))
        self._file.flush()
        self.records += 1

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> RecordingWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@dataclass(frozen=True)
class Record:
    t_recv_ns: int
    parts: list[bytes]


def iter_records(path: str | Path) -> Iterator[Record]:
    """Every record in file order; ClipError when the file is not a recording or is cut."""
    path = Path(path)
    try:
        handle = open(path, "rb")
    except OSError as exc:
        raise ClipError(f"cannot open recording: {exc.strerror}", path=path) from None
    with handle:
        if handle.read(len(MAGIC)) != MAGIC:
            raise ClipError("not a cardiostream recording (bad magic bytes)", path=path)
        index = 0
        while True:
            head = handle.read(_RECORD.size)
            if not head:
                return
            if len(head) < _RECORD.size:
                raise ClipError(f"truncated in the header of record {index}", path=path)
            t_recv_ns, n_parts = _RECORD.unpack(head)
            parts = []
            for _ in range(n_parts):
                raw = handle.read(_LENGTH.size)
                if len(raw) < _LENGTH.size:
                    raise ClipError(f"truncated inside record {index}", path=path)
                (length,) = _LENGTH.unpack(raw)
                if length > _MAX_PART_BYTES:
                    raise ClipError(f"corrupt part length {length} in record {index}", path=path)
                data = handle.read(length)
                if len(data) < length:
                    raise ClipError(f"truncated inside record {index} "
                                    f"({len(data)} of {length} bytes)", path=path)
                parts.append(data)
            yield Record(t_recv_ns, parts)
            index += 1


class RecordingClip(ClipReader):
    """The frames of a recording as a clip (timing from the receive times).

    Opening scans the record headers once to count frames and read the first
    frame's metadata; pixels are read one record at a time while iterating.
    """

    def __init__(self, path: str | Path, *, spacing_mm=None, fps=None, slice_index=None):
        self.path = Path(path)
        first: FrameMessage | None = None
        n_frames = 0
        for record in iter_records(self.path):
            message = self._decode(record)
            if isinstance(message, FrameMessage):
                first = first or message
                n_frames += 1
        if first is None:
            raise ClipError("the recording holds no frames (a recording of "
                            "results only cannot be replayed or analysed)", path=self.path)
        self.info = ClipInfo(
            path=str(self.path), format="recording", n_frames=n_frames,
            shape=tuple(first.pixels.shape), dtype=first.pixels.dtype.name,
            modality=first.modality,
            spacing_mm=tuple(spacing_mm) if spacing_mm else tuple(first.spacing_mm),
            fps=fps or first.fps, channels=first.channels,
            metadata={"stream": first.stream})

    def _decode(self, record: Record):
        try:
            return decode(record.parts)
        except ProtocolError as exc:
            raise ClipError(f"record is not a valid message: {exc}", path=self.path) from None

    def __iter__(self) -> Iterator[ClipFrame]:
        t_first = None
        index = 0
        for record in iter_records(self.path):
            message = self._decode(record)
            if not isinstance(message, FrameMessage):
                continue
            t_first = record.t_recv_ns if t_first is None else t_first
            yield ClipFrame(index=index, pixels=message.pixels,
                            t_s=(record.t_recv_ns - t_first) / 1e9)
            index += 1

    def close(self) -> None:
        pass

