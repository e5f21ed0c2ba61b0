"""Recordings (``.csrec``): a stream of wire messages as they arrived, with receive times.

The file holds the protocol's own multipart messages byte for byte — no second
encoding of frames or results — each with the time it was received, so
``replay`` can send a recording again with its original timing and
``analyze`` can read it like any clip. Layout (all integers little-endian)::

    magic   b"CSREC\x02\n"                         8 bytes
    record  t_recv_ns:int64  n_parts:uint32          12 bytes
            n_parts x ( length:uint64  bytes )
            crc32:uint32                             CRC-32 of the record's bytes before it

Version 1 (``b"CSREC\x01\n"``) had no checksum; it is still read.

Crash safety: a record is written whole and flushed, and the file is fsync-ed at most
every ``fsync_interval_s`` (1 s) and when closed, so a recorder that is killed, or a disk
that fills, leaves a file whose complete records read back. Reading stops at the first
damaged record (cut short, or failing its checksum: flipped bytes); by default with a
warning and the records before it, with ``strict=True`` with ``ClipError``.
:func:`check_recording` (``cardiostream record --check FILE``) reports what a file holds
and where it is damaged.
"""

from __future__ import annotations

import logging
import os
import struct
import time
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

# from the base module, not the package: the package's registry opens .csrec files with
# this module, so importing the package from here would close an import cycle
from streamer.io.clips.base import ClipError, ClipFrame, ClipInfo, ClipReader
from streamer.io.protocol import FrameMessage, ProtocolError, decode

log = logging.getLogger(__name__)

MAGIC = b"CSREC\x02\n"
MAGIC_V1 = b"CSREC\x01\n"
_RECORD = struct.Struct("<qI")
_LENGTH = struct.Struct("<Q")
_CRC = struct.Struct("<I")
#: a single part longer than this is taken as a corrupt length field
_MAX_PART_BYTES = 1 << 32
#: more parts than this in one record is a corrupt count (a message has a few)
_MAX_PARTS = 64


class RecordingWriter:
    """Appends messages (lists of parts) with their receive time, each record with its
    checksum, flushed whole; fsync at most every ``fsync_interval_s`` seconds (None: only
    when closed) and on close."""

    def __init__(self, path: str | Path, fsync_interval_s: float | None = 1.0):
        self.path = Path(path)
        self.fsync_interval_s = fsync_interval_s
        self._file: BinaryIO = open(self.path, "wb")
        self._file.write(MAGIC)
        self._synced_s = time.monotonic()
        self.records = 0

    def write(self, parts: Sequence, t_recv_ns: int) -> None:
        chunks = [_RECORD.pack(int(t_recv_ns), len(parts))]
        for part in parts:
            view = memoryview(part)
            chunks.append(_LENGTH.pack(view.nbytes))
            chunks.append(view)
        crc = 0
        for chunk in chunks:
            crc = zlib.crc32(chunk, crc)
        chunks.append(_CRC.pack(crc))
        self._file.write(b"".join(chunks))
        self._file.flush()
        self.records += 1
        if self.fsync_interval_s is not None \
                and time.monotonic() - self._synced_s >= self.fsync_interval_s:
            self._sync()

    def _sync(self) -> None:
        os.fsync(self._file.fileno())
        self._synced_s = time.monotonic()

    def close(self) -> None:
        if self._file.closed:
            return
        self._file.flush()
        self._sync()
        self._file.close()

    def __enter__(self) -> RecordingWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@dataclass(frozen=True)
class Record:
    t_recv_ns: int
    parts: list[bytes]


@dataclass(frozen=True)
class Damage:
    """Where a recording stops being readable: the record's number (from 0), its byte
    offset, why (``truncated ...`` or ``checksum ...``) and the bytes left after it."""

    record: int
    offset: int
    reason: str
    bytes_after: int

    def __str__(self) -> str:
        return (f"record {self.record} (byte {self.offset}) {self.reason}; the "
                f"{self.bytes_after} bytes from there on are not read")


def _read_record(handle: BinaryIO, checksum: bool) -> Record | str | None:
    """The next record; None at the end of the file; a string saying what is wrong."""
    head = handle.read(_RECORD.size)
    if not head:
        return None
    if len(head) < _RECORD.size:
        return "is truncated in its header"
    crc = zlib.crc32(head)
    t_recv_ns, n_parts = _RECORD.unpack(head)
    if n_parts > _MAX_PARTS:
        return f"has a corrupt part count {n_parts}"
    parts = []
    for _ in range(n_parts):
        raw = handle.read(_LENGTH.size)
        if len(raw) < _LENGTH.size:
            return "is truncated"
        (length,) = _LENGTH.unpack(raw)
        if length > _MAX_PART_BYTES:
            return f"has a corrupt part length {length}"
        data = handle.read(length)
        if len(data) < length:
            return f"is truncated ({len(data)} of {length} bytes of a part)"
        crc = zlib.crc32(data, zlib.crc32(raw, crc))
        parts.append(data)
    if checksum:
        raw = handle.read(_CRC.size)
        if len(raw) < _CRC.size:
            return "is truncated (its checksum is missing)"
        if _CRC.unpack(raw)[0] != crc:
            return "fails its checksum (damaged bytes)"
    return Record(t_recv_ns, parts)


def iter_records(path: str | Path, *, strict: bool = False,
                 on_damage: Callable[[Damage], None] | None = None) -> Iterator[Record]:
    """Every readable record in file order. ClipError when the file is not a recording. At
    the first damaged record (cut short, or failing its checksum) reading stops: with
    ``strict`` ClipError, else ``on_damage`` gets the :class:`Damage` (without one, a
    warning is logged)."""
    path = Path(path)
    try:
        handle = open(path, "rb")
    except OSError as exc:
        raise ClipError(f"cannot open recording: {exc.strerror}", path=path) from None
    with handle:
        magic = handle.read(len(MAGIC))
        if magic not in (MAGIC, MAGIC_V1):
            raise ClipError("not a cardiostream recording (bad magic bytes)", path=path)
        checksum = magic == MAGIC
        size = os.fstat(handle.fileno()).st_size
        index = 0
        while True:
            offset = handle.tell()
            record = _read_record(handle, checksum)
            if record is None:
                return
            if isinstance(record, str):
                damage = Damage(index, offset, record, size - offset)
                if strict:
                    raise ClipError(f"damaged: {damage}", path=path)
                if on_damage is None:
                    log.warning("%s: damaged recording: %s", path, damage)
                else:
                    on_damage(damage)
                return
            yield record
            index += 1


@dataclass
class RecordingCheck:
    """What :func:`check_recording` found."""

    path: str
    version: int
    records: int
    kinds: dict
    damage: Damage | None

    @property
    def ok(self) -> bool:
        return self.damage is None


def check_recording(path: str | Path) -> RecordingCheck:
    """Read a whole recording: its version, the records that read back (by message kind;
    ``invalid`` for a record that is not a valid message) and the damage, if any."""
    path = Path(path)
    found: list[Damage] = []
    kinds: dict[str, int] = {}
    with open(path, "rb") as handle:
        version = 2 if handle.read(len(MAGIC)) == MAGIC else 1
    records = 0
    for record in iter_records(path, on_damage=found.append):
        records += 1
        try:
            kind = decode(record.parts).kind
        except ProtocolError:
            kind = "invalid"
        kinds[kind] = kinds.get(kind, 0) + 1
    return RecordingCheck(str(path), version, records, kinds, found[0] if found else None)


class RecordingClip(ClipReader):
    """The frames of a recording as a clip (timing from the receive times).

    Opening scans the record headers once to count frames and read the first
    frame's metadata; pixels are read one record at a time while iterating. A damaged
    recording reads up to its damage (a warning, and ``info.metadata["damage"]``).
    """

    def __init__(self, path: str | Path, *, spacing_mm=None, fps=None, slice_index=None):
        self.path = Path(path)
        first: FrameMessage | None = None
        n_frames = 0
        damage: list[Damage] = []
        for record in iter_records(self.path, on_damage=damage.append):
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
            metadata={"stream": first.stream,
                      **({"damage": str(damage[0])} if damage else {})})
        if damage:
            log.warning("%s: damaged recording, read up to it: %s", self.path, damage[0])

    def _decode(self, record: Record):
        try:
            return decode(record.parts)
        except ProtocolError as exc:
            raise ClipError(f"record is not a valid message: {exc}", path=self.path) from None

    def __iter__(self) -> Iterator[ClipFrame]:
        t_first = None
        index = 0
        for record in iter_records(self.path, on_damage=lambda _: None):  # said when opened
            message = self._decode(record)
            if not isinstance(message, FrameMessage):
                continue
            t_first = record.t_recv_ns if t_first is None else t_first
            yield ClipFrame(index=index, pixels=message.pixels,
                            t_s=(record.t_recv_ns - t_first) / 1e9)
            index += 1

    def close(self) -> None:
        pass

