"""Turns received messages into outgoing ones: the worker's logic without threads or sockets.

The side-car's worker thread and ``cardiostream analyze`` both drive a
:class:`FrameProcessor`, so a clip analysed in one process and the same clip
streamed through the live side-car meet exactly the same code. It keeps one
:class:`StreamState` per stream (the stream's app instance and counts), so streams
interleaved in one side-car give the results each would give alone.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from streamer.app import FrameRejected, StreamApp
from streamer.apps import Analysis, NoAppError
from streamer.budget import FULL, BudgetConfig, BudgetController, FrameControls
from streamer.io.protocol import (
    EndMessage,
    ErrorMessage,
    FrameMessage,
    Message,
    ResultMessage,
    StartMessage,
)

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


@dataclass(frozen=True)
class StreamLimits:
    """Bounds on the streams one side-car follows at once."""

    #: streams followed at once; frames of a further stream get a too_many_streams error
    max_streams: int = 64
    #: a stream with no message for this long is closed (its end echo says why)
    idle_timeout_s: float = 300.0

    def __post_init__(self):
        if self.max_streams < 1:
            raise ValueError(f"max_streams must be >= 1, got {self.max_streams}")
        if not self.idle_timeout_s > 0:
            raise ValueError(f"idle_timeout_s must be > 0, got {self.idle_timeout_s}")


@dataclass
class StreamState:
    """Everything the runtime remembers of one stream: its app instance (the stages with
    their state, created at the stream's start or first frame) and its counts."""

    counts: StreamCounts = field(default_factory=StreamCounts)
    app: StreamApp | None = None  # None until the stream's modality is known
    last_seen_s: float = 0.0  # monotonic clock
    #: the budget controller's step changes when the stream opened, and when this stream
    #: last counted its frames at a step (its frames since then: frames_at_step)
    changes_at_open: int = 0
    changes_seen: int = 0
    frames_at_step: int = 0
    #: the highest frame seq taken for this stream (a frame must come after it)
    max_seq: int | None = None


@dataclass(eq=False)
class _Job:
    """A frame between its bookkeeping and its result: what its app needs and made."""

    item: Received
    state: StreamState
    dropped: int
    t_take_ns: int
    instance: StreamApp
    controls: FrameControls
    #: messages that go before the frame's own (streams closed as idle meanwhile)
    before: list[Message]
    outcome: Any = None
    beats: list[Message] = field(default_factory=list)
    error: BaseException | None = None
    #: the batch size each network ran this frame at (a batching round), else None
    batch: dict[str, int] | None = None


class FrameProcessor:
    """Runs each stream's app on its frames and answers start/end/frame messages.

    ``handle`` returns the messages to publish for one received item: a result (or an
    error) for a frame, followed by a beat message when the frame closed a beat; the echo
    of a start (with the declaration of the stream's app in ``meta.app``); and for an end
    the echo with this side-car's counts for that stream. Each stream has its own app
    instance (:class:`StreamState`), created at its ``start`` (or first frame) and dropped
    at its ``end`` or after ``limits.idle_timeout_s`` without a message; engines are shared.

    In live mode (``live=True``) with a frame budget it also skips frames that are already
    too old and steps the degradation order (:mod:`streamer.budget`); without ``live``
    every frame is analysed in full and the budget only flags.
    """

    def __init__(self, analysis: Analysis, budget: BudgetConfig | None = None,
                 live: bool = False, limits: StreamLimits = StreamLimits(),
                 clock: Callable[[], float] = time.monotonic):
        self.analysis = analysis
        self.budget = budget or BudgetConfig()
        self.live = live
        self.limits = limits
        self.clock = clock
        self.streams: dict[str, StreamState] = {}
        self._next_expiry_check_s = 0.0
        self.controller = (BudgetController(self.budget)
                           if live and self.budget.frame_ms is not None and self.budget.degrade
                           else None)
        self._pool: ThreadPoolExecutor | None = None  # the round threads, made when needed

    def handle(self, item: Received, *, dropped: int = 0,
               t_take_ns: int | None = None) -> list[Message]:
        return self.handle_round([(item, dropped)], t_take_ns=t_take_ns)[0]

    def handle_round(self, items: Sequence[tuple[Received, int]], *,
                     t_take_ns: int | None = None) -> list[list[Message]]:
        """The messages for each of ``items`` (each with its stream's drops since its last
        frame taken), in order. Frames of different streams taken together (a round: at
        most one frame per stream) run their apps concurrently, one thread each, in the
        analysis' batch group, so their networks run as batches (engines.batching); the
        bookkeeping before and after runs here, one item after the other."""
        if len({item.message.stream for item, _ in items}) < len(items):
            raise ValueError("a round holds at most one message per stream")
        t_take_ns = time.time_ns() if t_take_ns is None else t_take_ns
        steps = [self._begin(item, dropped, t_take_ns) for item, dropped in items]
        jobs = [s for s in steps if isinstance(s, _Job)]
        self._run_jobs(jobs)
        return [self._finish(s) if isinstance(s, _Job) else s for s in steps]

    def _begin(self, item: Received, dropped: int, t_take_ns: int) -> list[Message] | _Job:
        """The bookkeeping before a frame's app runs: its messages when it ends there (a
        start, an end, an error, a stale frame), else the job that runs its app."""
        now_s = self.clock()
        out = self.expire_idle(now_s)
        message = item.message
        if isinstance(message, StartMessage):
            return out + self._start(message, now_s)
        if isinstance(message, EndMessage):
            state = self.streams.pop(message.stream, None) or StreamState()
            state.counts.dropped += dropped  # replaced after the stream's last frame taken
            return out + [self._end_echo(message.stream, message.n_frames, message.meta,
                                         state)]
        state = self.streams.get(message.stream)
        if state is None:
            state, error = self._open(message.stream, now_s)
            if error is not None:
                return out + [error]
        state.last_seen_s = now_s
        counts = state.counts
        counts.dropped += dropped  # drops are handed out with the next frame taken
        if state.max_seq is not None and message.seq <= state.max_seq:
            # a frame from the past (a sender that restarted its counter, a duplicate): the
            # stream's state (the tracker, the beat) is never run backwards
            counts.errors += 1
            counts.dropped_pending += dropped
            return out + [ErrorMessage(
                code="seq_not_increasing", stream=message.stream, seq=message.seq,
                message=f"frame {message.stream}#{message.seq} is not after the stream's "
                        f"frame #{state.max_seq}; seq must increase within a stream (send a "
                        "start to begin the stream again)")]
        state.max_seq = message.seq
        budget_ms = self.budget.frame_ms
        if (self.live and budget_ms is not None
                and (t_take_ns - self._origin_ns(item)) / 1e6 > budget_ms):
            counts.stale += 1  # too old to be worth an answer: skip it, report it
            counts.stale_pending += 1
            counts.dropped_pending += dropped
            return out
        controls = self._controls(state)
        try:
            instance = self._app_for(message, state)
        except FrameRejected as exc:
            counts.errors += 1
            return out + [ErrorMessage(code=exc.code, message=exc.message, stream=message.stream,
                                       seq=message.seq)]
        except Exception as exc:  # an app that cannot make the stream must not stop the worker
            counts.errors += 1
            log.exception("stream %s: its app could not start it", message.stream)
            return out + [ErrorMessage(code="stage_failed", stream=message.stream, seq=message.seq,
                                       message=f"frame {message.stream}#{message.seq}: "
                                               f"{type(exc).__name__}: {exc}")]
        return _Job(item, state, dropped, t_take_ns, instance, controls, out)

    # -- streams ----------------------------------------------------------------

    def _open(self, stream: str, now_s: float) -> tuple[StreamState, ErrorMessage | None]:
        """A new stream's state, or the error that says why it cannot be followed."""
        if len(self.streams) >= self.limits.max_streams:
            return StreamState(), ErrorMessage(
                code="too_many_streams", stream=stream,
                message=f"stream {stream!r} not followed: this side-car already follows "
                        f"{len(self.streams)} streams (the limit); end one first")
        changes = self.controller.changes if self.controller is not None else 0
        state = StreamState(last_seen_s=now_s, changes_at_open=changes, changes_seen=changes)
        self.streams[stream] = state
        return state, None

    def _start(self, message: StartMessage, now_s: float) -> list[Message]:
        out: list[Message] = []
        old = self.streams.pop(message.stream, None)
        if old is not None:  # a stream that starts again starts afresh: close the old one
            out.append(self._end_echo(message.stream, None, {"reason": "restarted"}, old))
        state, error = self._open(message.stream, now_s)
        if error is not None:
            return out + [error]
        meta = dict(message.meta)
        try:
            app = self.analysis.route_start(message)
            if app is not None:
                state.app = self.analysis.new_stream(app, message.stream, message.meta)
                meta["app"] = app.declaration()
        except NoAppError as exc:
            del self.streams[message.stream]
            return out + [ErrorMessage(code="no_app", message=str(exc), stream=message.stream)]
        except Exception as exc:  # an app that cannot make a stream must not stop the worker
            del self.streams[message.stream]
            log.exception("stream %s: its app could not start it", message.stream)
            return out + [ErrorMessage(code="stage_failed", stream=message.stream,
                                       message=f"stream {message.stream!r} could not start: "
                                               f"{type(exc).__name__}: {exc}")]
        if self.controller is not None and len(self.streams) == 1:
            self.controller.reset()  # the worker's load starts afresh only when alone
        return out + [StartMessage(stream=message.stream, meta=meta)]

    def _end_echo(self, stream: str, n_frames: int | None, meta: dict,
                  state: StreamState) -> EndMessage:
        counts = state.counts
        meta = {**meta, "processed": counts.processed, "dropped": counts.dropped,
                "stale": counts.stale, "errors": counts.errors, "last_seq": counts.last_seq}
        if self.controller is not None:  # the worker's step changes while the stream was open
            meta["degradation_changes"] = self.controller.changes - state.changes_at_open
        return EndMessage(stream=stream, n_frames=n_frames, meta=meta)

    def expire_idle(self, now_s: float | None = None) -> list[Message]:
        """End echoes (``reason: idle_timeout``) for streams silent for too long; the
        side-car's worker also calls it while no message comes."""
        now_s = self.clock() if now_s is None else now_s
        if now_s < self._next_expiry_check_s:
            return []
        self._next_expiry_check_s = now_s + min(1.0, self.limits.idle_timeout_s / 4)
        limit = self.limits.idle_timeout_s
        idle = [name for name, state in self.streams.items()
                if now_s - state.last_seen_s > limit]
        ends = []
        for name in idle:
            state = self.streams.pop(name)
            log.info("stream %s: no message for %.0f s, closed", name, limit)
            ends.append(self._end_echo(name, None, {"reason": "idle_timeout",
                                                    "idle_timeout_s": limit}, state))
        return ends

    @staticmethod
    def _origin_ns(item: Received) -> int:
        """Where the frame's budget starts: its send time on this host's clock, else its
        receive time."""
        sent = item.message.t_send_ns
        if sent is not None and 0 <= item.t_recv_ns - sent <= _MAX_TRANSPORT_NS:
            return sent
        return item.t_recv_ns

    def _run_jobs(self, jobs: list[_Job]) -> None:
        """Each job's app on its frame: in this thread when alone (or without a batch
        group), else each in a thread of the pool, as members of one batching round."""
        group = self.analysis.batch_group
        if group is None or not jobs:
            for job in jobs:
                self._run(job)
            return
        with group.round([frozenset(job.instance.app.roles) for job in jobs]) as members:
            if len(jobs) == 1:
                self._run(jobs[0], group, members[0])
                return
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.analysis.max_batch,
                                                thread_name_prefix="frame")
            futures = [self._pool.submit(self._run, job, group, member)
                       for job, member in zip(jobs, members)]
            for future in futures:
                future.result()

    def _run(self, job: _Job, group=None, member=None) -> None:
        """Run the stream's app on the frame (and its beat stages); a stage's exception is
        kept on the job (the frame's error), never raised."""
        frame: FrameMessage = job.item.message
        try:
            if group is None:
                job.outcome = job.instance(frame, job.controls)
            else:
                with group.member(member):
                    job.outcome = job.instance(frame, job.controls)
                job.batch = dict(member.batch)
        except Exception as exc:
            job.error = exc
            return
        job.beats = self._beats(job.instance, frame, job.outcome)

    def close(self) -> None:
        """Stop the round threads (the side-car's worker calls it when it ends)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    def _finish(self, job: _Job) -> list[Message]:
        """The result (or error) for a frame, followed by a beat message when the frame
        completed a cardiac cycle."""
        item, state, dropped, t_take_ns = job.item, job.state, job.dropped, job.t_take_ns
        frame: FrameMessage = item.message
        counts = state.counts
        if job.error is not None:
            counts.errors += 1
            exc = job.error
            if isinstance(exc, FrameRejected):
                return job.before + [ErrorMessage(code=exc.code, message=exc.message,
                                                  stream=frame.stream, seq=frame.seq)]
            # a stage bug must not stop the side-car
            log.error("stage failed on %s#%d", frame.stream, frame.seq, exc_info=exc)
            return job.before + [ErrorMessage(code="stage_failed",
                                              message=f"frame {frame.stream}#{frame.seq}: "
                                                      f"{type(exc).__name__}: {exc}",
                                              stream=frame.stream, seq=frame.seq)]
        instance, outcome = job.instance, job.outcome
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
        result = ResultMessage(
            stream=frame.stream, seq=frame.seq, t_acq_ns=frame.t_acq_ns,
            latency_ms=latency_ms, t_recv_ns=item.t_recv_ns, t_result_ns=t_result_ns,
            dropped=replaced + stale, flags=list(dict.fromkeys(flags)), budget=budget,
            app=instance.app.name, fields=instance.fields(outcome),
            arrays=instance.arrays(outcome), batch=job.batch)
        return job.before + [result, *job.beats]

    @staticmethod
    def _beats(instance: StreamApp, frame: FrameMessage, outcome) -> list[Message]:
        """The beat this frame closed, if any, and what its stages send; a failing beat
        stage costs the beat (an error), not the frame's result."""
        try:
            return instance.beat_messages(frame, outcome)
        except Exception as exc:
            log.exception("beat stage failed on %s#%d", frame.stream, frame.seq)
            return [ErrorMessage(code="stage_failed", stream=frame.stream, seq=frame.seq,
                                 message=f"the beat closed at frame {frame.stream}#{frame.seq} "
                                         f"was lost: {type(exc).__name__}: {exc}")]

    def _controls(self, state: StreamState) -> FrameControls:
        """The budget controller's controls for this stream's next frame (``half_rate``
        counts each stream's own frames)."""
        controller = self.controller
        if controller is None:
            return FULL
        if state.changes_seen != controller.changes:
            state.changes_seen, state.frames_at_step = controller.changes, 0
        controls = controller.next_controls(state.frames_at_step)
        state.frames_at_step += 1
        return controls

    def _app_for(self, frame: FrameMessage, state: StreamState) -> StreamApp:
        """The stream's app instance; made at its first frame when its start did not say
        the modality."""
        instance = state.app
        if instance is not None and (self.analysis.forced is not None
                                     or frame.modality in instance.app.modalities):
            return instance  # the common case: no routing per frame
        try:
            app = self.analysis.route(frame.modality, frame.channels)
        except NoAppError as exc:
            raise FrameRejected("no_app", str(exc)) from None
        if instance is None:
            state.app = instance = self.analysis.new_stream(app, frame.stream)
        elif instance.app is not app:
            raise FrameRejected("bad_field", f"stream {frame.stream!r} is analysed by app "
                                f"{instance.app.name!r}; a {frame.modality} frame cannot "
                                f"join it (send it as a stream of its own)")
        return instance

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
