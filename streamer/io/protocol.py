"""Wire protocol v1: the one encoder/decoder every sender and receiver uses.

A message is a ZeroMQ multipart message. Part 0 is a small UTF-8 JSON object
(the header); further parts are raw little-endian, C-contiguous arrays whose
dtype and shape the header states. ``docs/protocol.md`` is the human-readable
description of exactly what this module implements; keep the two together.

Message kinds (``header["kind"]``):

=========  =========================================  ===========
kind       direction                                  array parts
=========  =========================================  ===========
frame      scanner / replay -> side-car               1 (pixels)
start      scanner / replay -> side-car -> consumers  0
end        scanner / replay -> side-car -> consumers  0
result     side-car -> consumers, one per frame       0 or 1 (mask)
beat       side-car -> consumers, one per cycle       0
error      side-car -> consumers                      0
hello      side-car -> each new subscriber            0
=========  =========================================  ===========

``encode`` turns a message object into a list of parts; ``decode`` turns
received parts back into a message object or raises :class:`ProtocolError`
with a machine-readable ``code`` and a sentence that says what was wrong.
This module knows nothing of sockets: parts are anything that supports the
buffer protocol (``bytes``, ``memoryview``, ``zmq.Frame``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

PROTOCOL_VERSION = 1

#: dtypes a frame or mask may carry, by the name used on the wire.
WIRE_DTYPES: dict[str, np.dtype] = {
    "uint8": np.dtype("<u1"),
    "uint16": np.dtype("<u2"),
    "int16": np.dtype("<i2"),
    "float32": np.dtype("<f4"),
}
MODALITIES = ("US", "MR")
#: frames larger than this are refused unless the receiver raises its limit.
DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024
#: the JSON header is meant to be small; anything larger is malformed.
MAX_HEADER_BYTES = 256 * 1024
#: objects and arrays nested deeper than this in a header are malformed (orjson reads 1024
#: levels but writes only 255: a deeper ``meta`` could not even be echoed back)
MAX_NESTING_DEPTH = 32
MAX_SIDE_PX = 16384
_INF = float("inf")
#: the physically possible: pixel spacing (0.1 um .. 10 m), frame rate, 64-bit times
MIN_SPACING_MM, MAX_SPACING_MM = 1e-4, 1e4
MAX_FPS = 1e5
MAX_INT64 = 2**63 - 1
MAX_CHANNELS = 16
#: axes an array part of a result may have (a mask: 2; a flow field: 3; a stack: 4)
MAX_PART_AXES = 4

Part = bytes | bytearray | memoryview | Any  # Any: zmq.Frame and other buffers


class ProtocolError(ValueError):
    """A message that does not follow the protocol.

    ``code`` is one of :data:`ERROR_CODES`; ``stream`` and ``seq`` are filled in
    when the header was readable far enough to know them, so the error message
    sent back can say which frame was bad.
    """

    #: the longest message kept: the offending value comes last and is cut, so a huge bad
    #: header is not copied back to every subscriber and into every log line
    MAX_MESSAGE_CHARS = 300

    def __init__(self, code: str, message: str, *, stream: str | None = None,
                 seq: int | None = None):
        if len(message) > self.MAX_MESSAGE_CHARS:
            message = (message[:self.MAX_MESSAGE_CHARS]
                       + f"... ({len(message) - self.MAX_MESSAGE_CHARS} more characters)")
        super().__init__(message)
        self.code = code
        self.message = message
        self.stream = stream
        self.seq = seq


#: error codes, with what each means (also listed in docs/protocol.md).
ERROR_CODES = {
    "malformed_header": "part 0 is not a UTF-8 JSON object of the protocol's form",
    "unsupported_version": "header 'v' is not a protocol version this side-car speaks",
    "unknown_kind": "header 'kind' is not one of the message kinds",
    "bad_field": "a header field is missing or has the wrong type or value",
    "bad_parts": "the number of parts does not match the kind",
    "payload_size": "an array part's length disagrees with the header's shape x dtype",
    "too_large": "the message is larger than the receiver's limit",
    "bad_pixels": "the pixels are not usable (NaN or infinite values)",
    "unexpected_kind": "a valid message that this receiver does not accept",
    "stage_failed": "a processing stage raised an error on this frame",
    "too_many_streams": "the side-car already follows as many streams as it may (--max-streams)",
    "no_app": "no app analyses this stream's modality (or the app named does not)",
    "seq_not_increasing": "a frame's seq is not after the stream's last frame (not analysed)",
}


# --------------------------------------------------------------------------
# message objects


@dataclass
class FrameMessage:
    """One image from a scanner or a replayed clip.

    ``pixels`` is (rows, cols) greyscale, (rows, cols, 3) RGB colour, or
    (rows, cols, C) multichannel with ``channels`` naming the last axis (MR
    velocity mapping: magnitude plus velocity components). A frame of an MR stack's
    slice says its cardiac phase (``phase_index``, 0-based) and trigger time
    (``trigger_time_ms``, after the R wave) where the sender knows them.
    """

    stream: str
    seq: int
    t_acq_ns: int
    modality: str
    pixels: np.ndarray
    spacing_mm: tuple[float, float]
    fps: float
    t_send_ns: int | None = None
    ecg_r: bool | None = None
    channels: tuple[str, ...] | None = None
    view: str | None = None  # sender's hint, e.g. "a4c"
    phase_index: int | None = None
    trigger_time_ms: float | None = None

    kind = "frame"


@dataclass
class StartMessage:
    """Start of a stream; ``meta`` carries clip metadata (n_frames, fps, source ...)."""

    stream: str
    meta: dict = field(default_factory=dict)

    kind = "start"


@dataclass
class EndMessage:
    """End of a stream. From a sender ``n_frames`` is how many frames it sent;
    the side-car's echo adds its own counts in ``meta`` (processed, dropped, errors)."""

    stream: str
    n_frames: int | None = None
    meta: dict = field(default_factory=dict)

    kind = "end"


@dataclass
class ResultMessage:
    """The side-car's answer to one processed frame.

    ``fields`` holds the result fields of the app that analysed the frame (``app``): the
    app declares them (name, type, unit in the name) in ``hello`` and in the echo of the
    stream's ``start``. A field left ``None`` was not computed for this frame (for example
    no strain before the first end-diastole); ``flags`` says why where it matters.
    ``arrays`` are optional array parts (e.g. ``mask``), named in the header's ``parts``.
    ``latency_ms`` maps stage names to milliseconds spent in them.
    """

    stream: str
    seq: int
    t_acq_ns: int
    latency_ms: dict[str, float]
    t_recv_ns: int | None = None
    t_result_ns: int | None = None
    dropped: int = 0
    flags: list[str] = field(default_factory=list)
    #: {"budget_ms", "level", "mode"} when the side-car runs with a frame budget
    budget: dict | None = None
    #: when the publisher sent it (set by the side-car's publish thread)
    t_publish_ns: int | None = None
    #: the app that analysed the frame (its declaration lists the fields)
    app: str | None = None
    fields: dict[str, Any] = field(default_factory=dict)
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    #: with ``serve --max-batch`` > 1: the batch size each network ran this frame at
    #: (``{"view": 3, "seg": 3, "flow": 2}``); else None
    batch: dict[str, int] | None = None

    kind = "result"


@dataclass
class BeatMessage:
    """One completed cardiac cycle: its number in the stream (``beat``) and the beat fields
    of the app (the echo app: ``ed_seq``, ``es_seq``, ``peak_gls_pct``, ...); ``arrays`` are
    optional array parts (the MR app's ``infarct_p``), as a result's."""

    stream: str
    beat: int
    fields: dict[str, Any] = field(default_factory=dict)
    arrays: dict[str, np.ndarray] = field(default_factory=dict)

    def __eq__(self, other) -> bool:
        return (type(other) is type(self) and (self.stream, self.beat, self.fields)
                == (other.stream, other.beat, other.fields)
                and self.arrays.keys() == other.arrays.keys()
                and all(np.array_equal(a, other.arrays[k]) for k, a in self.arrays.items()))

    kind = "beat"


@dataclass(eq=False)  # BeatMessage's equality, which compares array parts by value
class WallMotionMessage(BeatMessage):
    """One short-axis stack's beat, scored per AHA segment (Cardiac-MOS): sent once the
    stack's slices have each closed a beat. ``stream`` is the stack's name (its slice
    streams' ``NAME`` of ``NAME/slice-K``), ``beat`` numbers the stack's scored beats;
    ``fields`` hold ``stack_id``, ``segments`` (16, AHA order), ``msi``, ... (docs/protocol.md)."""

    kind = "wall_motion"


@dataclass
class ErrorMessage:
    """What was wrong with which message. Sending one never stops the side-car."""

    code: str
    message: str
    stream: str | None = None
    seq: int | None = None

    kind = "error"
    #: longer messages are cut (with how much was left out): an error never grows large
    MAX_CHARS = 1000

    def __post_init__(self):
        if len(self.message) > self.MAX_CHARS:  # cut to MAX_CHARS in all (a cut one stays)
            keep = self.MAX_CHARS - 40
            self.message = (self.message[:keep]
                            + f"... ({len(self.message) - keep} more characters)")

    @classmethod
    def from_exception(cls, exc: ProtocolError) -> ErrorMessage:
        return cls(code=exc.code, message=exc.message, stream=exc.stream, seq=exc.seq)


@dataclass
class HelloMessage:
    """Sent by the side-car to each new subscriber: proof that the subscription is live.

    ``apps`` holds the declaration of every app this side-car runs, by name: the
    modalities routed to it, its result and beat fields (name, type, unit in the name)."""

    service: str = "cardiostream"
    version: str = ""
    mode: str = ""
    apps: dict = field(default_factory=dict)

    kind = "hello"


Message = (FrameMessage | StartMessage | EndMessage | ResultMessage | BeatMessage
           | WallMotionMessage | ErrorMessage | HelloMessage)


# --------------------------------------------------------------------------
# encoding


def _dumps(header: dict) -> bytes:
    # orjson: ~10x faster than the json module on these small headers (the header is
    # per-frame overhead). It writes NaN/inf as null; frame fields are checked first.
    # An app's field may be a numpy scalar or array: written as a number or nested list.
    try:
        return orjson.dumps(header, option=orjson.OPT_SERIALIZE_NUMPY)
    except TypeError as exc:  # orjson.JSONEncodeError
        raise ProtocolError("bad_field", f"a header value cannot be written as JSON: {exc}",
                            stream=_maybe_str(header.get("stream")),
                            seq=_maybe_int(header.get("seq"))) from None


#: numpy dtype.str -> wire name, both byte orders (dtype.name is slow on the hot path)
_WIRE_NAME = {dt.str: name for name, dt in WIRE_DTYPES.items()}
_WIRE_NAME.update({dt.newbyteorder(">").str: name for name, dt in WIRE_DTYPES.items()})


def _wire_array(array: np.ndarray, what: str) -> tuple[np.ndarray, str]:
    """Return (little-endian C-contiguous array, wire dtype name) or raise."""
    name = _WIRE_NAME.get(array.dtype.str)
    if name is None:
        raise ProtocolError("bad_field", f"{what} dtype {array.dtype} is not one of "
                            f"{sorted(WIRE_DTYPES)}")
    wire = WIRE_DTYPES[name]
    if array.dtype != wire or not array.flags.c_contiguous:
        array = np.ascontiguousarray(array, dtype=wire)
    return array, name


def _encode_frame(message: FrameMessage) -> list[Part]:
    pixels, dtype = _wire_array(message.pixels, "pixels")
    fps = float(message.fps)
    spacing = [float(message.spacing_mm[0]), float(message.spacing_mm[1])]
    if not (0 < fps < _INF and 0 < spacing[0] < _INF and 0 < spacing[1] < _INF):
        raise ProtocolError("bad_field", f"fps {message.fps} and spacing_mm "
                            f"{message.spacing_mm} must be positive finite numbers")
    header = {"v": PROTOCOL_VERSION, "kind": "frame", "stream": message.stream,
              "seq": int(message.seq), "t_acq_ns": int(message.t_acq_ns),
              "modality": message.modality, "shape": list(pixels.shape), "dtype": dtype,
              "spacing_mm": spacing, "fps": fps}
    if message.t_send_ns is not None:
        header["t_send_ns"] = int(message.t_send_ns)
    if message.ecg_r is not None:
        header["ecg_r"] = bool(message.ecg_r)
    if message.channels is not None:
        header["channels"] = list(message.channels)
    if message.view is not None:
        header["view"] = message.view
    if message.phase_index is not None:
        header["phase_index"] = int(message.phase_index)
    if message.trigger_time_ms is not None:
        header["trigger_time_ms"] = float(message.trigger_time_ms)
    return [_dumps(header), pixels]  # the array itself is the part (buffer protocol)


def encode(message: Message) -> list[Part]:
    """Encode a message object into multipart parts (part 0 the JSON header)."""
    kind = message.kind
    if kind == "frame":
        return _encode_frame(message)
    if kind == "start":
        return [_dumps({"v": PROTOCOL_VERSION, "kind": "start", "stream": message.stream,
                        "meta": message.meta})]
    if kind == "end":
        header = {"v": PROTOCOL_VERSION, "kind": "end", "stream": message.stream,
                  "meta": message.meta}
        if message.n_frames is not None:
            header["n_frames"] = int(message.n_frames)
        return [_dumps(header)]
    if kind == "result":
        return _with_arrays(result_header(message), message.arrays, message.fields,
                            RESULT_KEYS, "result")
    if kind in ("beat", "wall_motion"):
        _refuse_reserved(message.fields, BEAT_KEYS, kind, message.stream)
        header = {"v": PROTOCOL_VERSION, "kind": kind, "stream": message.stream,
                  "beat": int(message.beat), **message.fields}
        return _with_arrays(header, message.arrays, message.fields, BEAT_KEYS, kind)
    if kind == "error":
        header = {"v": PROTOCOL_VERSION, "kind": "error", "code": message.code,
                  "message": message.message}
        if message.stream is not None:
            header["stream"] = message.stream
        if message.seq is not None:
            header["seq"] = message.seq
        return [_dumps(header)]
    if kind == "hello":
        return [_dumps({"v": PROTOCOL_VERSION, "kind": "hello", "service": message.service,
                        "version": message.version, "mode": message.mode,
                        "apps": message.apps})]
    raise TypeError(f"not a protocol message: {message!r}")


#: header keys of every result; an app's fields must not use them
RESULT_KEYS = ("v", "kind", "stream", "seq", "t_acq_ns", "t_recv_ns", "t_result_ns",
               "t_publish_ns", "latency_ms", "dropped", "flags", "budget", "app", "parts",
               "batch")
#: header keys of every beat message
BEAT_KEYS = ("v", "kind", "stream", "beat")


def result_header(message: ResultMessage) -> dict:
    """The JSON header of a result (also what ``analyze`` writes, one per line)."""
    header = {
        "v": PROTOCOL_VERSION, "kind": "result", "stream": message.stream,
        "seq": int(message.seq), "t_acq_ns": int(message.t_acq_ns),
        "t_recv_ns": message.t_recv_ns, "t_result_ns": message.t_result_ns,
        "t_publish_ns": message.t_publish_ns,
        "latency_ms": {k: round(float(v), 4) for k, v in message.latency_ms.items()},
        "dropped": int(message.dropped), "flags": list(message.flags), "budget": message.budget,
    }
    if message.app is not None:
        header["app"] = message.app
    if message.batch is not None:
        header["batch"] = {str(k): int(v) for k, v in message.batch.items()}
    if message.fields:
        _refuse_reserved(message.fields, RESULT_KEYS, "result", message.stream)
        header.update(message.fields)
    return header


def _with_arrays(header: dict, arrays: dict, fields: dict, reserved: tuple[str, ...],
                 kind: str) -> list[Part]:
    """The parts of a header and its array parts (named in the header's ``parts``, each
    with its shape and dtype under its name)."""
    if not arrays:
        return [_dumps(header)]
    parts: list[Part] = [b""]
    header["parts"] = list(arrays)
    for name, array in arrays.items():
        if not (1 <= array.ndim <= MAX_PART_AXES and all(
                0 < n <= MAX_SIDE_PX for n in array.shape)):
            raise ProtocolError("bad_field", f"array part {name!r} has shape "
                                f"{list(array.shape)}: 1 to {MAX_PART_AXES} sides of "
                                f"1..{MAX_SIDE_PX}")
        if name in reserved or name in fields or name == "parts":
            raise ProtocolError("bad_field", f"array part {name!r} would overwrite a "
                                f"{kind} key or field")
        wire, dtype = _wire_array(array, name)
        header[name] = {"shape": list(wire.shape), "dtype": dtype}
        parts.append(wire)
    parts[0] = _dumps(header)
    return parts


def _refuse_reserved(fields: dict, reserved: tuple[str, ...], kind: str, stream) -> None:
    """An app's field may not overwrite a key every message of its kind has."""
    clash = [key for key in fields if key in reserved]
    if clash:
        raise ProtocolError("bad_field", f"{kind} fields {clash} would overwrite the "
                            f"message's own keys", stream=stream)


# --------------------------------------------------------------------------
# decoding


def _nbytes(part: Part) -> int:
    return memoryview(part).nbytes


def _nesting_exceeds(value: Any, limit: int) -> bool:
    """Whether JSON ``value`` nests objects/arrays more than ``limit`` levels deep (the
    header itself is level 1); iterative, so no recursion limit is met on the way."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children = item.values() if type(item) is dict else item if type(item) is list else ()
        for child in children:
            if type(child) is dict or type(child) is list:
                if depth + 1 > limit:
                    return True
                stack.append((child, depth + 1))
    return False


def decode(parts: Sequence[Part], *, max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
           ) -> Message:
    """Decode received parts into a message object.

    Arrays are zero-copy views on the received buffers (read-only). Raises
    :class:`ProtocolError` for anything that does not follow the protocol.
    """
    if len(parts) == 0:
        raise ProtocolError("bad_parts", "empty message")
    head = parts[0]
    if not isinstance(head, bytes):
        head = memoryview(head).tobytes()  # orjson parses bytes faster than a view
    if len(head) > MAX_HEADER_BYTES:
        raise ProtocolError("malformed_header", f"header part is {len(head)} bytes; "
                            f"the limit is {MAX_HEADER_BYTES}")
    try:
        header = orjson.loads(head)
    except orjson.JSONDecodeError as exc:
        raise ProtocolError("malformed_header", f"header is not UTF-8 JSON: {exc}") from None
    if _nesting_exceeds(header, MAX_NESTING_DEPTH):
        raise ProtocolError("malformed_header", f"header nests objects or arrays deeper than "
                            f"{MAX_NESTING_DEPTH} levels")
    if type(header) is dict and type(header.get("v")) is int \
            and header.get("v") == PROTOCOL_VERSION and header.get("kind") == "frame":
        plain = _decode_plain_frame(header, parts, max_message_bytes - len(head))
        if plain is not None:
            return plain
    if not isinstance(header, dict):
        raise ProtocolError("malformed_header",
                            f"header is JSON {type(header).__name__}, not an object")
    version = header.get("v")
    if type(version) is not int or version != PROTOCOL_VERSION:
        raise ProtocolError("unsupported_version",
                            f"protocol version {version!r} is not supported "
                            f"(this side-car speaks v{PROTOCOL_VERSION})",
                            stream=_maybe_str(header.get("stream")),
                            seq=_maybe_int(header.get("seq")))
    kind = header.get("kind")
    stream = _maybe_str(header.get("stream"))
    seq = _maybe_int(header.get("seq"))
    total = sum(_nbytes(p) for p in parts)
    if total > max_message_bytes:
        raise ProtocolError("too_large", f"message is {total} bytes; the limit is "
                            f"{max_message_bytes}", stream=stream, seq=seq)
    if kind == "frame":  # not plain (see above): full validation, precise errors
        return _decode_frame(_Fields(header, stream, seq), parts, max_message_bytes)
    reader = _Fields(header, stream, seq)
    if kind in ("start", "end", "error", "hello"):
        _expect_parts(parts, 1, kind, stream, seq)
    if kind == "start":
        return StartMessage(stream=reader.str("stream"), meta=reader.dict("meta", {}))
    if kind == "end":
        return EndMessage(stream=reader.str("stream"),
                          n_frames=reader.int("n_frames", None, minimum=0),
                          meta=reader.dict("meta", {}))
    if kind == "result":
        return _decode_result(reader, parts)
    if kind in ("beat", "wall_motion"):
        cls = BeatMessage if kind == "beat" else WallMotionMessage
        names = reader.str_list("parts", None) or []
        arrays = _read_arrays(reader, parts, names, kind, stream, None)
        return cls(stream=reader.str("stream"), beat=reader.int("beat", minimum=0),
                   fields={k: v for k, v in header.items()
                           if k not in BEAT_KEYS and k not in arrays and k != "parts"},
                   arrays=arrays)
    if kind == "error":
        return ErrorMessage(code=reader.str("code"), message=reader.text("message"),
                            stream=stream, seq=seq)
    if kind == "hello":
        return HelloMessage(service=reader.str("service"), version=reader.str("version", ""),
                            mode=reader.str("mode", ""), apps=reader.dict("apps", {}))
    raise ProtocolError("unknown_kind", f"unknown message kind {kind!r} (expected one of "
                        "frame, start, end, result, beat, wall_motion, error, hello)",
                        stream=stream, seq=seq)


def _expect_parts(parts: Sequence[Part], n: int, kind: str, stream, seq) -> None:
    if len(parts) != n:
        raise ProtocolError("bad_parts", f"a {kind} message has {n} part(s), this one "
                            f"has {len(parts)}", stream=stream, seq=seq)


def _decode_plain_frame(header: dict, parts: Sequence[Part], max_pixel_bytes: int
                        ) -> FrameMessage | None:
    """Fast path for the common frame: only the required fields (and ``t_send_ns`` and the
    ``view`` hint), greyscale, all of the plainest types. Returns None for anything else, which then
    goes through the full validation (and its error messages) in ``_decode_frame``.
    Whatever this accepts, ``_decode_frame`` accepts identically (tested)."""
    try:
        stream, seq, t_acq = header["stream"], header["seq"], header["t_acq_ns"]
        shape, spacing, fps = header["shape"], header["spacing_mm"], header["fps"]
        modality, dtype = header["modality"], WIRE_DTYPES[header["dtype"]]
    except (KeyError, TypeError):  # TypeError: an unhashable dtype value
        return None
    t_send, view = header.get("t_send_ns"), header.get("view")
    # v, kind and the 8 fields read above, plus t_send_ns and view if present: nothing else
    if len(header) != 10 + ("t_send_ns" in header) + ("view" in header) or len(parts) != 2:
        return None
    if view is not None and not (type(view) is str and 0 < len(view) <= 256 and view.isprintable()):
        return None
    if not (type(stream) is str and 0 < len(stream) <= 256 and stream.isprintable()
            and type(seq) is int and 0 <= seq <= MAX_INT64
            and type(t_acq) is int and 0 <= t_acq <= MAX_INT64
            and (t_send is None or (type(t_send) is int and 0 <= t_send <= MAX_INT64))
            and (modality == "US" or modality == "MR")
            and type(shape) is list and len(shape) == 2
            and type(shape[0]) is int and type(shape[1]) is int
            and 0 < shape[0] <= MAX_SIDE_PX and 0 < shape[1] <= MAX_SIDE_PX
            and type(spacing) is list and len(spacing) == 2
            and type(spacing[0]) is float and type(spacing[1]) is float
            and MIN_SPACING_MM <= spacing[0] <= MAX_SPACING_MM
            and MIN_SPACING_MM <= spacing[1] <= MAX_SPACING_MM
            and type(fps) is float and 0 < fps <= MAX_FPS):
        return None
    buffer = memoryview(parts[1])
    if buffer.nbytes != shape[0] * shape[1] * dtype.itemsize or buffer.nbytes > max_pixel_bytes:
        return None
    return FrameMessage(stream=stream, seq=seq, t_acq_ns=t_acq, modality=modality,
                        pixels=np.ndarray(shape, dtype, buffer),
                        spacing_mm=(spacing[0], spacing[1]), fps=fps, t_send_ns=t_send,
                        view=view)


def _decode_frame(reader: _Fields, parts: Sequence[Part], max_message_bytes: int
                  ) -> FrameMessage:
    stream, seq = reader.str("stream"), reader.int("seq", minimum=0, maximum=MAX_INT64)
    reader.seq = seq
    _expect_parts(parts, 2, "frame", stream, seq)
    modality = reader.str("modality")
    if modality not in MODALITIES:
        raise reader.error(f"modality {modality!r} is not one of {list(MODALITIES)}")
    channels = reader.str_list("channels", None)
    dtype, shape = reader.array_spec(channels)
    expected = math.prod(shape) * dtype.itemsize
    if expected > max_message_bytes:
        raise ProtocolError("too_large", f"shape {list(shape)} x {dtype.name} is "
                            f"{expected} bytes; the limit is {max_message_bytes}",
                            stream=stream, seq=seq)
    pixels = _array_from_part(parts[1], dtype, shape, "pixels", stream, seq)
    spacing = reader.float_list("spacing_mm", 2)
    if not all(MIN_SPACING_MM <= s <= MAX_SPACING_MM for s in spacing):
        raise reader.error(f"spacing_mm {spacing} must be two numbers of {MIN_SPACING_MM:g} "
                           f"to {MAX_SPACING_MM:g} (mm per pixel along rows, cols)")
    fps = reader.float("fps")
    if not 0 < fps <= MAX_FPS:
        raise reader.error(f"fps {fps} must be positive and at most {MAX_FPS:g}")
    ecg = reader.get("ecg_r", None)
    if ecg is not None and not isinstance(ecg, bool):
        raise reader.error(f"ecg_r must be true/false, got {ecg!r}")
    trigger_time_ms = reader.float("trigger_time_ms", None)
    if trigger_time_ms is not None and trigger_time_ms < 0:
        raise reader.error(f"trigger_time_ms {trigger_time_ms} must be >= 0 (ms after the R wave)")
    return FrameMessage(
        stream=stream, seq=seq,
        t_acq_ns=reader.int("t_acq_ns", minimum=0, maximum=MAX_INT64), modality=modality,
        pixels=pixels, spacing_mm=(spacing[0], spacing[1]), fps=fps,
        t_send_ns=reader.int("t_send_ns", None, minimum=0, maximum=MAX_INT64), ecg_r=ecg,
        channels=tuple(channels) if channels is not None else None,
        view=reader.str("view", None), phase_index=reader.int("phase_index", None, minimum=0),
        trigger_time_ms=trigger_time_ms)


def _decode_result(reader: _Fields, parts: Sequence[Part]) -> ResultMessage:
    header = reader.header
    stream, seq = reader.str("stream"), reader.int("seq", minimum=0)
    names = reader.str_list("parts", None)
    if names is None:  # v1 before 'parts': a mask's shape and dtype, the mask in part 1
        mask = header.get("mask")
        names = ["mask"] if isinstance(mask, dict) and {"shape", "dtype"} <= set(mask) else []
    arrays = _read_arrays(reader, parts, names, "result", stream, seq)
    return ResultMessage(
        stream=stream, seq=seq, t_acq_ns=reader.int("t_acq_ns"),
        latency_ms=reader.dict("latency_ms", {}), t_recv_ns=reader.int("t_recv_ns", None),
        t_result_ns=reader.int("t_result_ns", None), t_publish_ns=reader.int("t_publish_ns", None),
        dropped=reader.int("dropped", 0), budget=reader.dict("budget", None),
        flags=reader.str_list("flags", []) or [], app=reader.str("app", None),
        batch=reader.dict("batch", None),
        fields={k: v for k, v in header.items() if k not in RESULT_KEYS and k not in arrays},
        arrays=arrays)


def _read_arrays(reader: _Fields, parts: Sequence[Part], names: list[str], kind: str,
                 stream, seq) -> dict[str, np.ndarray]:
    """The array parts ``names`` (the header's ``parts``) of a result or beat."""
    _expect_parts(parts, 1 + len(names), kind + (f" with {names}" if names else ""),
                  stream, seq)
    arrays = {}
    for name, part in zip(names, parts[1:]):
        spec = reader.header.get(name)
        sub = _Fields(spec if isinstance(spec, dict) else {}, stream, seq)
        dtype, shape = sub.part_spec(name)
        arrays[name] = _array_from_part(part, dtype, shape, name, stream, seq)
    return arrays


def _array_from_part(part: Part, dtype: np.dtype, shape: tuple[int, ...], what: str,
                     stream, seq) -> np.ndarray:
    buffer = memoryview(part)
    expected = math.prod(shape) * dtype.itemsize
    if buffer.nbytes != expected:
        raise ProtocolError("payload_size", f"{what} part is {buffer.nbytes} bytes but "
                            f"shape {list(shape)} x {dtype.name} needs {expected}",
                            stream=stream, seq=seq)
    return np.frombuffer(buffer, dtype=dtype).reshape(shape)


_MISSING = object()


class _Fields:
    """Typed access to header fields, raising ``bad_field`` errors that name the field."""

    def __init__(self, header: dict, stream: str | None, seq: int | None):
        self.header, self.stream, self.seq = header, stream, seq

    def error(self, text: str) -> ProtocolError:
        return ProtocolError("bad_field", text, stream=self.stream, seq=self.seq)

    def get(self, key: str, default=_MISSING):
        if key in self.header and self.header[key] is not None:
            return self.header[key]
        if default is _MISSING:
            raise self.error(f"header field {key!r} is missing")
        return default

    def str(self, key: str, default=_MISSING):
        value = self.get(key, default)
        if value is not default and not (isinstance(value, str) and 0 < len(value) <= 256
                                         and value.isprintable()):
            raise self.error(f"{key} must be a non-empty string of at most 256 printable "
                             f"characters, got {value!r}")
        return value

    def text(self, key: str, max_chars: int = 2000):
        """Free text (an error's message): a string of at most ``max_chars``, any
        characters."""
        value = self.get(key)
        if not (isinstance(value, str) and len(value) <= max_chars):
            raise self.error(f"{key} must be a string of at most {max_chars} characters, got "
                             f"{value!r}")
        return value

    def int(self, key: str, default=_MISSING, *, minimum: int | None = None,
            maximum: int | None = None):
        value = self.get(key, default)
        if value is default:
            return value
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.error(f"{key} must be an integer, got {value!r}")
        if minimum is not None and value < minimum:
            raise self.error(f"{key} must be >= {minimum}, got {value}")
        if maximum is not None and value > maximum:
            raise self.error(f"{key} must be <= {maximum}, got {value}")
        return value

    def float(self, key: str, default=_MISSING):
        value = self.get(key, default)
        if value is default:
            return value
        if isinstance(value, bool) or not isinstance(value, (int, float)) \
                or not math.isfinite(value):
            raise self.error(f"{key} must be a finite number, got {value!r}")
        return float(value)

    def float_list(self, key: str, n: int) -> list[float]:
        value = self.get(key)
        if not (isinstance(value, list) and len(value) == n and all(
                isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                for v in value)):
            raise self.error(f"{key} must be a list of {n} finite numbers, got {value!r}")
        return [float(v) for v in value]

    def str_list(self, key: str, default=_MISSING):
        value = self.get(key, default)
        if value is default:
            return value
        if not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
            raise self.error(f"{key} must be a list of strings, got {value!r}")
        return value

    def dict(self, key: str, default=_MISSING):
        value = self.get(key, default)
        if value is not default and not isinstance(value, dict):
            raise self.error(f"{key} must be a JSON object, got {value!r}")
        return value

    def part_spec(self, name: str) -> tuple[np.dtype, tuple[int, ...]]:
        """dtype and shape of a result's named array part (1 to 4 axes)."""
        dtype = self.get("dtype")
        if not isinstance(dtype, str) or dtype not in WIRE_DTYPES:
            raise self.error(f"array part {name!r}: dtype {dtype!r} is not one of "
                             f"{sorted(WIRE_DTYPES)} (little-endian)")
        shape = self.get("shape")
        if not (isinstance(shape, list) and 1 <= len(shape) <= MAX_PART_AXES and all(
                isinstance(n, int) and not isinstance(n, bool) and 0 < n <= MAX_SIDE_PX
                for n in shape)):
            raise self.error(f"array part {name!r}: shape must be 1 to {MAX_PART_AXES} sides "
                             f"of 1..{MAX_SIDE_PX}, got {shape!r}")
        return WIRE_DTYPES[dtype], tuple(shape)

    def array_spec(self, channels: list[str] | None) -> tuple[np.dtype, tuple[int, ...]]:
        name = self.get("dtype")
        if not isinstance(name, str) or name not in WIRE_DTYPES:
            raise self.error(f"dtype {name!r} is not one of {sorted(WIRE_DTYPES)} "
                             "(little-endian)")
        shape = self.get("shape")
        if not (isinstance(shape, list) and len(shape) in (2, 3) and all(
                isinstance(s, int) and not isinstance(s, bool) and 0 < s <= MAX_SIDE_PX
                for s in shape[:2])):
            raise self.error(f"shape must be [rows, cols] or [rows, cols, channels] with "
                             f"sides 1..{MAX_SIDE_PX}, got {shape!r}")
        if len(shape) == 3:
            c = shape[2]
            if not (isinstance(c, int) and not isinstance(c, bool) and 0 < c <= MAX_CHANNELS):
                raise self.error(f"channel count must be 1..{MAX_CHANNELS}, got {c!r}")
            if channels is None and c != 3:
                raise self.error(f"shape {shape} has {c} channels: a 3-D frame is RGB "
                                 "(3 channels) unless 'channels' names its channels")
        if channels is not None and (len(shape) != 3 or len(channels) != shape[2]):
            raise self.error(f"channels {channels} do not match shape {shape} (the last "
                             "axis must have one entry per channel name)")
        return WIRE_DTYPES[name], tuple(shape)


def _maybe_str(value) -> str | None:
    return value if isinstance(value, str) and 0 < len(value) <= 256 else None


def _maybe_int(value) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None
