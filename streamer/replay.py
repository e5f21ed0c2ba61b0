"""Replay: a clip becomes a timed sequence of protocol messages, sent to a side-car.

:func:`clip_messages` is the one place where clip frames become frame
messages; ``replay`` sends them over ZeroMQ at the clip's own timing and
``analyze`` feeds them to the pipeline in-process. A short-axis stack
(:func:`stack_messages`) goes out as a scanner sends one: slice after slice, each
slice its own stream ``NAME/slice-K`` whose ``start`` says where the slice lies.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from streamer.io.clips import ClipInfo, ClipReader, SliceClip, StackFrame, StackReader
from streamer.io.protocol import MODALITIES, EndMessage, FrameMessage, Message, StartMessage
from streamer.io.security import CurveConfig
from streamer.io.sockets import FrameSender, SenderConfig
from streamer.measure.velocity import velocity_encoding_cm_s
from streamer.vocab import VIEW_CLASSES

log = logging.getLogger(__name__)


class ReplayError(ValueError):
    """The clip cannot be sent as it is (the message says what to pass instead)."""


@dataclass(frozen=True)
class ReplayConfig:
    """What to send and how fast."""

    #: stream name in every message (a stack's slices: NAME/slice-K); default:
    #: :func:`default_stream_name`
    stream: str | None = None
    #: pace at this many frames per second instead of the clip's own timing
    fps: float | None = None
    #: send as fast as the side-car takes them (lossless back-pressure still applies)
    max_rate: bool = False
    #: play the clip (each slice of a stack) this many times in one stream (sequence
    #: numbers keep counting)
    loop: int = 1
    #: modality to send when the file does not say (video): "US" or "MR"
    modality: str | None = None
    #: stop after this many frames of each stream (None: the whole clip, every loop)
    max_frames: int | None = None
    #: the view, when the sender knows it (e.g. "a4c"); sent as each frame's view hint
    view: str | None = None
    #: send the clip's path in the start meta (``source``) and name the stream after the
    #: file; off by default, because file and folder names often carry patient names
    keep_identifiers: bool = False

    def __post_init__(self):
        if self.fps is not None and not self.fps > 0:
            raise ReplayError(f"--fps must be positive, got {self.fps}")
        if self.loop < 1:
            raise ReplayError(f"--loop must be >= 1, got {self.loop}")
        if self.modality is not None and self.modality not in MODALITIES:
            raise ReplayError(f"--modality must be one of {list(MODALITIES)}, "
                              f"got {self.modality!r}")
        if self.max_frames is not None and self.max_frames < 1:
            raise ReplayError(f"--max-frames must be >= 1, got {self.max_frames}")
        if self.view is not None and self.view not in VIEW_CLASSES:
            raise ReplayError(f"--view must be one of {', '.join(VIEW_CLASSES)}, got {self.view!r}")


@dataclass(frozen=True)
class TimedMessage:
    """A message and when to send it, in seconds after the first frame."""

    due_s: float
    message: Message


def default_stream_name(path: str | Path, keep_identifiers: bool = False) -> str:
    """A clip's stream name when none is given: ``clip-`` and a short hash of its absolute
    path (the same file gets the same name, and the name does not show it), or with
    ``keep_identifiers`` its file name up to the first dot."""
    if keep_identifiers:
        return Path(path).name.split(".")[0] or "clip"
    key = str(Path(path).absolute()).encode("utf-8", "surrogateescape")
    return "clip-" + hashlib.sha256(key).hexdigest()[:8]


def slice_stream_name(name: str, slice_index: int) -> str:
    """The stream of slice ``slice_index`` of the stack sent as ``name``: ``NAME/slice-K``."""
    return f"{name}/slice-{slice_index}"


def _stream_fields(info: ClipInfo, config: ReplayConfig) -> tuple[str, str, tuple, float]:
    stream = config.stream or default_stream_name(info.path, config.keep_identifiers)
    modality = config.modality or info.modality
    if modality not in MODALITIES:
        raise ReplayError(f"{info.path}: the file does not say whether it is US or MR "
                          f"(modality {info.modality!r}); pass --modality US|MR")
    if info.spacing_mm is None:
        raise ReplayError(f"{info.path}: the file carries no pixel spacing; pass "
                          "--spacing-mm ROW COL (millimetres per pixel)")
    fps = config.fps or info.fps
    if fps is None:
        raise ReplayError(f"{info.path}: the file carries no frame rate; pass --fps")
    return stream, modality, tuple(float(s) for s in info.spacing_mm), float(fps)


def _wire_pixels(pixels: np.ndarray, path: str) -> np.ndarray:
    """Pixels as a wire dtype: float64 becomes float32; other unsupported dtypes fail."""
    if pixels.dtype == np.float64:
        return pixels.astype(np.float32)
    if pixels.dtype == np.int8:
        return pixels.astype(np.int16)
    if pixels.dtype.name not in ("uint8", "uint16", "int16", "float32"):
        raise ReplayError(f"{path}: pixel dtype {pixels.dtype} cannot be sent (the wire "
                          "carries uint8, uint16, int16, float32)")
    return pixels


def clip_messages(reader: ClipReader, config: ReplayConfig = ReplayConfig(), *,
                  t0_ns: int | None = None) -> Iterator[TimedMessage]:
    """Start, every frame (every loop) and end of a clip, each with its due time.

    ``t_acq_ns`` of each frame is ``t0_ns`` plus its due time: a replayed clip
    looks to the side-car like a scanner acquiring it now.
    """
    info = reader.info
    stream, modality, spacing_mm, fps = _stream_fields(info, config)
    t0_ns = time.time_ns() if t0_ns is None else t0_ns
    meta = {"format": info.format, "n_frames": info.n_frames,
            "loops": config.loop, "fps": fps, "spacing_mm": list(spacing_mm),
            "modality": modality, "shape": list(info.shape)}
    if info.channels is not None:
        meta["channels"] = list(info.channels)
    venc = velocity_encoding_cm_s(info.metadata)  # velocity mapping: phase wraps beyond it
    if venc is not None:
        meta["venc_cm_s"] = venc
    if config.keep_identifiers:
        meta["source"] = str(info.path)
    if isinstance(reader, SliceClip):  # a stack's slice: which stack, which slice, where
        meta.update(reader.stack_fields)
    yield TimedMessage(0.0, StartMessage(stream=stream, meta=meta))
    seq, period_s, due_s = 0, None, 0.0
    for loop in range(config.loop):
        last_t_s = 0.0
        offset_s = 0.0 if loop == 0 else loop * period_s
        for frame in reader:
            if config.max_frames is not None and seq >= config.max_frames:
                break
            due_s = seq / fps if config.fps is not None else offset_s + frame.t_s
            last_t_s = frame.t_s
            phase = frame if isinstance(frame, StackFrame) else None
            yield TimedMessage(due_s, FrameMessage(
                stream=stream, seq=seq, t_acq_ns=t0_ns + int(due_s * 1e9),
                modality=modality, pixels=_wire_pixels(frame.pixels, info.path),
                spacing_mm=spacing_mm, fps=fps, channels=info.channels, view=config.view,
                phase_index=None if phase is None else phase.phase_index,
                trigger_time_ms=None if phase is None else phase.trigger_time_ms))
            seq += 1
        period_s = last_t_s + 1.0 / fps  # one clip length: last frame + one interval
        if config.max_frames is not None and seq >= config.max_frames:
            break
    yield TimedMessage(due_s, EndMessage(stream=stream, n_frames=seq, meta=meta))


def stack_messages(stack: StackReader, config: ReplayConfig = ReplayConfig(), *,
                   t0_ns: int | None = None) -> Iterator[TimedMessage]:
    """Every slice of a stack, one after the other, as :func:`clip_messages` of a stream
    ``NAME/slice-K`` each (``NAME``: ``config.stream``, else ``stack-`` and the stack's
    hash id, or its file name with ``keep_identifiers``), as a
    scanner sends a stack: slice K+1 starts one frame interval after slice K's last frame."""
    name = config.stream or (default_stream_name(stack.info.path, True)
                             if config.keep_identifiers else f"stack-{stack.info.stack_id}")
    t0_ns = time.time_ns() if t0_ns is None else t0_ns
    offset_s = 0.0
    for k in range(stack.info.n_slices):
        with stack.slice(k) as reader:
            slice_config = replace(config, stream=slice_stream_name(name, k))
            due_s = 0.0
            for timed in clip_messages(reader, slice_config, t0_ns=t0_ns + int(offset_s * 1e9)):
                due_s = timed.due_s
                yield TimedMessage(offset_s + due_s, timed.message)
            offset_s += due_s + 1.0 / (config.fps or reader.info.fps)


def source_messages(source: ClipReader | StackReader, config: ReplayConfig = ReplayConfig(), *,
                    t0_ns: int | None = None) -> Iterator[TimedMessage]:
    """The timed messages of a clip (:func:`clip_messages`) or a stack (:func:`stack_messages`)."""
    if isinstance(source, StackReader):
        return stack_messages(source, config, t0_ns=t0_ns)
    return clip_messages(source, config, t0_ns=t0_ns)


@dataclass
class ReplayStats:
    frames: int = 0
    elapsed_s: float = 0.0
    #: how far behind schedule the slowest send started (back-pressure or a slow reader)
    max_lateness_ms: float = 0.0


def replay(reader: ClipReader | StackReader, sender: FrameSender,
           config: ReplayConfig = ReplayConfig(),
           *, on_frame: Callable[[int], None] | None = None) -> ReplayStats:
    """Send a clip, or a stack slice after slice, through ``sender`` at its native timing
    (or ``fps`` / max rate)."""
    stats = ReplayStats()
    start = time.monotonic()
    t0_ns = time.time_ns()
    for timed in source_messages(reader, config, t0_ns=t0_ns):
        message = timed.message
        if not config.max_rate:
            delay = start + timed.due_s - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            else:
                stats.max_lateness_ms = max(stats.max_lateness_ms, -delay * 1e3)
        if isinstance(message, FrameMessage):
            # t_acq_ns stays the clip's timing even at max rate: tracking derives
            # velocities from it, so it must be when the frame was acquired
            message.t_send_ns = time.time_ns()
        sender.send(message)
        if isinstance(message, FrameMessage):
            stats.frames += 1
            if on_frame is not None:
                on_frame(stats.frames)
    stats.elapsed_s = time.monotonic() - start
    return stats


def replay_to(reader: ClipReader | StackReader, endpoint: str,
              config: ReplayConfig = ReplayConfig(), *, connect_timeout_s: float = 10.0,
              send_timeout_s: float | None = 30.0,
              on_frame: Callable[[int], None] | None = None,
              curve: CurveConfig | None = None) -> ReplayStats:
    """Connect to a side-car's ingest endpoint and replay a clip (or a stack) into it;
    :class:`~streamer.io.sockets.SendTimeout` when the side-car takes no message for
    ``send_timeout_s``. ``curve``: this client's CURVE keys (a side-car with CURVE)."""
    with FrameSender(SenderConfig(endpoint, connect_timeout_s=connect_timeout_s,
                                  send_timeout_s=send_timeout_s,
                                  curve=curve or CurveConfig())) as sender:
        return replay(reader, sender, config, on_frame=on_frame)
