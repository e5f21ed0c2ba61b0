"""Turns received messages into outgoing ones: the worker's logic without threads or sockets.

The side-car's worker thread and ``cardiostream analyze`` both drive a
:class:`FrameProcessor`, so a clip analysed in one process and the same clip
streamed through the live side-car meet exactly the same code.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

from streamer.io.protocol import (EndMessage, ErrorMessage, FrameMessage, Message,
                                  ResultMessage, StartMessage)
from streamer.pipeline import RESULT_FIELDS, FrameRejected, Pipeline

log = logging.getLogger(__name__)


@dataclass
class Received:
    """A decoded message with the side-car's receive-side timing."""

    message: FrameMessage | StartMessage | EndMessage
    t_recv_ns: int
    decode_ms: float = 0.0


@dataclass
class StreamCounts:
    """Per-stream bookkeeping, reported in the side-car's end message."""

    processed: int = 0
    dropped: int = 0
    errors: int = 0
    last_seq: int | None = None


@dataclass
class FrameProcessor:
    """Runs the pipeline on frames and answers start/end/frame messages.

    ``handle`` returns the messages to publish for one received item: a result
    (or an error) for a frame, the echo of a start, and for an end the echo
    with this side-car's counts for that stream.
    """

    pipeline: Pipeline
    counts: dict[str, StreamCounts] = field(default_factory=dict)

    def handle(self, item: Received, *, dropped: int = 0,
               t_take_ns: int | None = None) -> list[Message]:
        message = item.message
        if isinstance(message, StartMessage):
            self.pipeline.start_stream(message.stream, message.meta)
            self.counts[message.stream] = StreamCounts()
            return [message]
        counts = self.counts.setdefault(message.stream, StreamCounts())
        if isinstance(message, EndMessage):
            meta = {**message.meta, "processed": counts.processed,
                    "dropped": counts.dropped, "errors": counts.errors,
                    "last_seq": counts.last_seq}
            return [EndMessage(stream=message.stream, n_frames=message.n_frames, meta=meta)]
        counts.dropped += dropped  # drops are handed out with the next frame taken
        return self._frame(item, counts, dropped,
                           time.time_ns() if t_take_ns is None else t_take_ns)

    def _frame(self, item: Received, counts: StreamCounts, dropped: int,
               t_take_ns: int) -> list[Message]:
        """The result (or error) for a frame, followed by a beat message when the frame
        completed a cardiac cycle."""
        frame: FrameMessage = item.message
        try:
            outcome = self.pipeline(frame)
        except FrameRejected as exc:
            counts.errors += 1
            return [ErrorMessage(code=exc.code, message=exc.message, stream=frame.stream,
                                 seq=frame.seq)]
        except Exception as exc:  # a stage bug must not stop the side-car
            counts.errors += 1
            log.exception("stage failed on %s#%d", frame.stream, frame.seq)
            return [ErrorMessage(code="stage_failed",
                                 message=f"frame {frame.stream}#{frame.seq}: "
                                         f"{type(exc).__name__}: {exc}",
                                 stream=frame.stream, seq=frame.seq)]
        counts.processed += 1
        counts.last_seq = frame.seq
        t_result_ns = time.time_ns()
        latency_ms: dict[str, float] = {}
        if frame.t_send_ns is not None:
            latency_ms["transport"] = (item.t_recv_ns - frame.t_send_ns) / 1e6
        latency_ms["decode"] = item.decode_ms
        latency_ms["queue"] = (t_take_ns - item.t_recv_ns) / 1e6
        latency_ms.update(outcome.latency_ms)
        latency_ms["total"] = (t_result_ns - item.t_recv_ns) / 1e6
        flags = list(outcome.flags)
        if dropped:
            flags.append(f"dropped:{dropped}")
        values = outcome.values
        result = ResultMessage(
            stream=frame.stream, seq=frame.seq, t_acq_ns=frame.t_acq_ns,
            latency_ms=latency_ms, t_recv_ns=item.t_recv_ns, t_result_ns=t_result_ns,
            dropped=dropped, flags=list(dict.fromkeys(flags)),
            **{name: values.get(name) for name in RESULT_FIELDS})
        beat = values.get("beat_closed")
        return [result] if beat is None else [result, beat]
