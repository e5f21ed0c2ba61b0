"""Turns received messages into outgoing ones: the worker's logic without threads or sockets.

The side-car's worker thread and ``cardiostream analyze`` both drive a
:class:`FrameProcessor`, so a clip analysed in one process and the same clip
streamed through the live side-car meet exactly the same code.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

from streamer.budget import FULL, BudgetConfig, BudgetController
from streamer.io.protocol import (EndMessage, ErrorMessage, FrameMessage, Message,
                                  ResultMessage, StartMessage)
from streamer.pipeline import RESULT_FIELDS, FrameRejected, Pipeline

#: a sender's t_send_ns further than this from our receive time is not trusted as the
#: frame's origin (another host's clock): the budget then counts from the receive time
_MAX_TRANSPORT_NS = 10 * 10**9

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
    dropped: int = 0  # live mode: replaced in the inbox by a newer frame
    stale: int = 0  # live mode: older than the budget when the worker took them
    errors: int = 0
    last_seq: int | None = None
    dropped_pending: int = 0  # replaced frames handed out with a stale frame: not yet reported
    stale_pending: int = 0  # stale frames not yet reported in a result


@dataclass
class FrameProcessor:
    """Runs the pipeline on frames and answers start/end/frame messages.

    ``handle`` returns the messages to publish for one received item: a result
    (or an error) for a frame, the echo of a start, and for an end the echo
    with this side-car's counts for that stream. In live mode (``live=True``) with a
    frame budget it also skips frames that are already too old and steps the
    degradation order (:mod:`streamer.budget`); without ``live`` every frame is analysed
    in full and the budget only flags.
    """

    pipeline: Pipeline
    budget: BudgetConfig = field(default_factory=BudgetConfig)
    live: bool = False
    counts: dict[str, StreamCounts] = field(default_factory=dict)

    def __post_init__(self):
        self.controller = (BudgetController(self.budget)
                           if self.live and self.budget.frame_ms is not None and self.budget.degrade
                           else None)

    def handle(self, item: Received, *, dropped: int = 0,
               t_take_ns: int | None = None) -> list[Message]:
        message = item.message
        if isinstance(message, StartMessage):
            self.pipeline.start_stream(message.stream, message.meta)
            self.counts[message.stream] = StreamCounts()
            if self.controller is not None:
                self.controller.reset()
            return [message]
        counts = self.counts.setdefault(message.stream, StreamCounts())
        if isinstance(message, EndMessage):
            meta = {**message.meta, "processed": counts.processed,
                    "dropped": counts.dropped, "stale": counts.stale, "errors": counts.errors,
                    "last_seq": counts.last_seq}
            if self.controller is not None:
                meta["degradation_changes"] = self.controller.changes
            return [EndMessage(stream=message.stream, n_frames=message.n_frames, meta=meta)]
        counts.dropped += dropped  # drops are handed out with the next frame taken
        t_take_ns = time.time_ns() if t_take_ns is None else t_take_ns
        budget_ms = self.budget.frame_ms
        if (self.live and budget_ms is not None
                and (t_take_ns - self._origin_ns(item)) / 1e6 > budget_ms):
            counts.stale += 1  # too old to be worth an answer: skip it, report it
            counts.stale_pending += 1
            counts.dropped_pending += dropped
            return []
        return self._frame(item, counts, dropped, t_take_ns)

    @staticmethod
    def _origin_ns(item: Received) -> int:
        """Where the frame's budget starts: its send time on this host's clock, else its
        receive time."""
        sent = item.message.t_send_ns
        if sent is not None and 0 <= item.t_recv_ns - sent <= _MAX_TRANSPORT_NS:
            return sent
        return item.t_recv_ns

    def _frame(self, item: Received, counts: StreamCounts, dropped: int,
               t_take_ns: int) -> list[Message]:
        """The result (or error) for a frame, followed by a beat message when the frame
        completed a cardiac cycle."""
        frame: FrameMessage = item.message
        controller = self.controller
        controls = controller.next_controls() if controller is not None else FULL
        try:
            outcome = self.pipeline(frame, controls)
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
        replaced, stale = dropped + counts.dropped_pending, counts.stale_pending
        counts.dropped_pending = counts.stale_pending = 0
        if replaced:
            flags.append(f"dropped:{replaced}")
        if stale:
            flags.append(f"stale:{stale}")
        budget = self.controller.state() if self.controller is not None else (
            {"budget_ms": self.budget.frame_ms, "level": 0, "mode": "full"}
            if self.budget.frame_ms is not None else None)  # the step this frame was made at
        flags += self._budget_flags(item, t_take_ns, t_result_ns, outcome.latency_ms)
        values = outcome.values
        result = ResultMessage(
            stream=frame.stream, seq=frame.seq, t_acq_ns=frame.t_acq_ns,
            latency_ms=latency_ms, t_recv_ns=item.t_recv_ns, t_result_ns=t_result_ns,
            dropped=replaced + stale, flags=list(dict.fromkeys(flags)), budget=budget,
            **{name: values.get(name) for name in RESULT_FIELDS})
        beat = values.get("beat_closed")
        return [result] if beat is None else [result, beat]

    def _budget_flags(self, item: Received, t_take_ns: int, t_result_ns: int,
                      stage_ms: dict[str, float]) -> list[str]:
        """``over_budget``, ``over_budget:<stage>``, and the controller's step change."""
        flags = [f"over_budget:{stage}" for stage, limit in self.budget.stage_ms
                 if stage_ms.get(stage, 0.0) > limit]
        if self.budget.frame_ms is None:
            return flags
        origin = self._origin_ns(item)
        frame_ms = (t_result_ns - origin) / 1e6
        if frame_ms > self.budget.frame_ms:
            flags.insert(0, "over_budget")
        if self.controller is not None:
            change = self.controller.observe(frame_ms, (t_take_ns - origin) / 1e6, stage_ms)
            if change:
                flags.append(change)
        return flags
