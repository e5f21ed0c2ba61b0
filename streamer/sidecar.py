"""The side-car: ingest thread -> inbox -> worker thread -> outbox -> publisher thread.

::

    scanner --PUSH--> [ingest]  decode, validate; bad messages -> error to outbox
                         |
                       inbox     live: LatestFrameSlot (newer frame replaces older, drops counted)
                         |       lossless: BoundedFrameQueue (full -> ingest waits -> sender waits)
                      [worker]   FrameProcessor: pipeline per frame -> result or error; with
                         |       --max-batch N a round takes the waiting frames of up to N
                         |       streams, their apps run in threads, their networks as batches
                         |
                       outbox    FIFO of messages to publish (OUTBOX_MESSAGES; full -> the
                         |       worker and ingest wait)
                    [publisher] --XPUB--> consumers (hello to each new subscriber; at most
                                 --publish-hwm messages queued per subscriber)

A subscriber that falls --publish-hwm messages behind holds the publisher up (lossless
mode, for at most --subscriber-stall-s; live mode not at all) and is then cut off: it gets
no messages until it has read some of those queued for it (ZeroMQ skips it meanwhile); the
others get every message. Each cut-off is counted (``subscriber_stalls``) and logged.

Each socket is owned by exactly one thread. Start and end messages travel the
same path as frames and are never dropped, so a consumer sees ``start``, the
results in order, then ``end`` with the side-car's counts.

Shutdown (``stop()``, SIGINT/SIGTERM from the CLI): the ingest thread stops
reading; the worker finishes the frame in hand and, in lossless mode, every
frame already accepted (up to ``drain_timeout_s``); the publisher sends every
result already computed before its socket closes.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from dataclasses import dataclass
from itertools import islice

import zmq

from streamer import __version__
from streamer.apps import Analysis
from streamer.budget import BudgetConfig
from streamer.io.protocol import (
    DEFAULT_MAX_MESSAGE_BYTES,
    EndMessage,
    ErrorMessage,
    FrameMessage,
    HelloMessage,
    ProtocolError,
    ResultMessage,
    StartMessage,
    decode,
    encode,
)
from streamer.io.security import CurveConfig, CurveServer
from streamer.io.sockets import PART_MARGIN_BYTES, bind, limit_intake
from streamer.options import option
from streamer.processor import FrameProcessor, Received, StreamLimits

log = logging.getLogger(__name__)

DEFAULT_INGEST = "tcp://127.0.0.1:5555"
DEFAULT_PUBLISH = "tcp://127.0.0.1:5556"


# --------------------------------------------------------------------------
# inboxes: where received frames wait for the worker


class _Inbox:
    """Common part of the two inboxes: a deque guarded by a condition variable."""

    def __init__(self):
        self._items: deque[Received] = deque()
        self._cv = threading.Condition()
        self._closed = False
        self._frames = 0  # frames among _items

    def put_control(self, item: Received) -> None:
        """Start/end messages: never dropped, never block."""
        with self._cv:
            self._items.append(item)
            self._cv.notify_all()

    def get(self, timeout_s: float) -> tuple[Received, int] | None:
        """Next item and the number of its stream's frames dropped since that stream's last
        frame was taken (handed out with the stream's next frame, or with its end)."""
        got = self.get_round(1, timeout_s)
        return got[0] if got else None

    def get_round(self, max_frames: int, timeout_s: float) -> list[tuple[Received, int]]:
        """The items the worker takes together, each with its stream's drops (as ``get``):
        a start/end message alone, or the oldest waiting frames of up to ``max_frames``
        different streams (a frame of a stream already taken stays for the next round, in
        its place; the scan stops at the first start/end, which keeps its order). Empty
        when nothing came within ``timeout_s``."""
        with self._cv:
            if not self._items and not self._cv.wait_for(
                    lambda: self._items or self._closed, timeout_s):
                return []
            if not self._items:
                return []
            if not isinstance(self._items[0].message, FrameMessage):
                item = self._items.popleft()
                dropped = self._take_dropped(item) if isinstance(item.message, EndMessage) else 0
                self._cv.notify_all()  # (an end's: the stream's last drops go with it)
                return [(item, dropped)]
            taken: list[Received] = []
            streams: set[str] = set()
            for item in self._items:
                if not isinstance(item.message, FrameMessage) or len(taken) == max_frames:
                    break
                if item.message.stream not in streams:
                    taken.append(item)
                    streams.add(item.message.stream)
            if len(taken) == 1:  # the common case (one stream, or --max-batch 1)
                self._items.popleft()
            else:
                kept = set(map(id, taken))
                self._items = deque(i for i in self._items if id(i) not in kept)
            self._frames -= len(taken)
            self._cv.notify_all()
            return [(item, self._take_dropped(item)) for item in taken]

    def _take_dropped(self, item: Received) -> int:
        return 0

    def forget(self, stream: str) -> int:
        return 0

    def __len__(self) -> int:
        with self._cv:
            return len(self._items)

    def close(self) -> None:
        """Wake every waiter; later puts of frames are refused."""
        with self._cv:
            self._closed = True
            self._cv.notify_all()


class LatestFrameSlot(_Inbox):
    """Live mode: at most one frame waits per stream; a newer frame of the same stream
    replaces it.

    ``put_frame`` never blocks. Replaced frames are counted per stream and the count is
    handed out with that stream's next frame the worker takes, so it appears in that
    stream's next result. Frames of different streams do not replace each other (each
    scanner gets its newest frame analysed), but at most ``max_streams`` frames wait: past
    that a frame of yet another stream goes (counted against that stream), not one of a
    stream already waiting. Start/end messages waiting in the slot keep their order.

    The drop counts not yet handed out are kept for at most ``4 * max_streams`` streams: a
    stream whose frames are only ever dropped (never taken, so never closed by the worker)
    must not hold memory for ever; past that bound the oldest count goes to
    ``dropped_unreported`` (it stays in ``dropped_total``).
    """

    def __init__(self, max_streams: int = 64):
        super().__init__()
        self.max_streams = max_streams
        self._dropped: dict[str, int] = {}
        self.dropped_total = 0
        self.dropped_unreported = 0

    def put_frame(self, item: Received) -> bool:
        stream = item.message.stream
        with self._cv:
            if self._closed:
                return False
            waiting = [i for i in self._items if isinstance(i.message, FrameMessage)]
            replaced = next((i for i in waiting if i.message.stream == stream), None)
            if replaced is None and len(waiting) >= self.max_streams:
                # as many streams wait as the side-car follows: the newcomer's frame goes
                # (counted against its stream), not a frame of a stream already waiting
                self._count_drop(stream)
                return True
            if replaced is not None:  # one frame per stream waits: the newer replaces it
                self._count_drop(stream)
                at = next(k for k, i in enumerate(self._items) if i is replaced)
                if not any(i.message.stream == stream for i in islice(self._items, at + 1, None)):
                    # in its place: a stream keeps its turn however often its frame is
                    # replaced (else the streams that are replaced most wait longest)
                    self._items[at] = item
                    self._cv.notify_all()
                    return True
                # a start/end of the stream waits after it: the newer frame goes after that
                del self._items[at]
                self._frames -= 1
            self._items.append(item)
            self._frames += 1
            self._cv.notify_all()
            return True

    def _count_drop(self, stream: str) -> None:
        self._dropped[stream] = self._dropped.pop(stream, 0) + 1  # most recent last
        self.dropped_total += 1
        while len(self._dropped) > 4 * self.max_streams:
            oldest = next(iter(self._dropped))
            self.dropped_unreported += self._dropped.pop(oldest)

    def _take_dropped(self, item: Received) -> int:
        return self._dropped.pop(item.message.stream, 0)

    def forget(self, stream: str) -> int:
        """The drops not yet handed out for a stream the worker closed (idle): returned, and
        forgotten here."""
        with self._cv:
            return self._dropped.pop(stream, 0)


class BoundedFrameQueue(_Inbox):
    """Lossless mode: a FIFO of at most ``max_frames`` frames; ``put_frame`` waits for room.

    While the ingest thread waits here it stops reading its socket, ZeroMQ's
    high-water marks fill, and the sender's ``send`` blocks: back-pressure all
    the way to the source, nothing dropped.
    """

    def __init__(self, max_frames: int):
        super().__init__()
        if max_frames < 1:
            raise ValueError(f"max_frames must be >= 1, got {max_frames}")
        self.max_frames = max_frames

    def put_frame(self, item: Received) -> bool:
        with self._cv:
            self._cv.wait_for(lambda: self._frames < self.max_frames or self._closed)
            if self._closed:
                return False
            self._items.append(item)
            self._frames += 1
            self._cv.notify_all()
            return True


# --------------------------------------------------------------------------
# the side-car


@dataclass(frozen=True)
class SideCarConfig:
    """Endpoints and flow control of one side-car."""

    ingest: str = option(DEFAULT_INGEST, "endpoint to bind for frames, PULL "
                         "(tcp://127.0.0.1:* picks a free port)")
    publish: str = option(DEFAULT_PUBLISH, "endpoint to bind for results, XPUB")
    lossless: bool = option(False, "back-pressure instead of dropping (replay and analysis); "
                            "default: live, the newest frame wins and drops are counted")
    queue_frames: int = option(32, "lossless mode: frames accepted and waiting for the "
                               "worker before ingest waits", metavar="N")
    max_message_bytes: int = option(
        DEFAULT_MAX_MESSAGE_BYTES, "larger messages are answered with a too_large error, "
        "MiB", flag="--max-message-mb", metavar="MIB", parse=lambda text: int(float(text) * 2**20),
        format=lambda n: repr(n / 2**20))
    ingest_buffer_bytes: int = option(
        256 * 2**20, "memory ZeroMQ may hold for each connected sender in messages not yet "
        "read, MiB: the ingest high-water mark is this over --max-message-mb (at least 2 "
        "messages)", flag="--ingest-buffer-mb", metavar="MIB",
        parse=lambda text: int(float(text) * 2**20), format=lambda n: repr(n / 2**20))
    publish_hwm: int = option(
        1000, "messages ZeroMQ queues for each subscriber: the memory a subscriber that "
        "does not read can hold is this times the largest published message; one this far "
        "behind is cut off until it reads (see --subscriber-stall-s), the others are not",
        metavar="N")
    subscriber_stall_s: float = option(
        5.0, "lossless mode: how long the publisher waits for a subscriber that is "
        "--publish-hwm messages behind before that subscriber is cut off and loses messages "
        "until it reads (the worker and the sender wait meanwhile); live mode never waits",
        metavar="S")
    drain_timeout_s: float = option(30.0, "lossless shutdown: time allowed to finish frames "
                                    "already accepted", metavar="S")
    republish_frames: bool = option(
        False, "also publish each incoming frame (before its result), so that `record "
        "--from` keeps frames and results together")
    max_streams: int = option(64, "streams followed at once, each with its own analysis "
                              "state; frames of one more get a too_many_streams error",
                              metavar="N")
    stream_idle_timeout_s: float = option(300.0, "close a stream (and drop its state) after "
                                          "this long without a message", metavar="S")
    #: CURVE: the side-car's key pair and the allow-list of client keys (both endpoints);
    #: without, only loopback endpoints unless ``insecure``
    curve: CurveConfig = CurveConfig()

    def __post_init__(self):
        if self.max_message_bytes < 1024:
            raise ValueError(f"--max-message-mb {self.max_message_bytes / 2**20!r} is too small "
                             "for any frame (at least 1 KiB)")
        if self.ingest_buffer_bytes < 1:
            raise ValueError("--ingest-buffer-mb must be > 0")
        if self.publish_hwm < 1:
            raise ValueError(f"--publish-hwm must be >= 1, got {self.publish_hwm}")
        if not self.subscriber_stall_s >= 0:
            raise ValueError(f"--subscriber-stall-s must be >= 0, got {self.subscriber_stall_s}")

    @property
    def ingest_hwm(self) -> int:
        """Messages ZeroMQ reads ahead per connected sender (RCVHWM): as many of the
        largest parts it reads (sockets.limit_intake) as fit in ingest_buffer_bytes."""
        return max(2, self.ingest_buffer_bytes // (self.max_message_bytes + PART_MARGIN_BYTES))

    @property
    def mode(self) -> str:
        return "lossless" if self.lossless else "live"


@dataclass
class SideCarStats:
    """Counters (read from any thread; each is written by one thread only)."""

    received: int = 0  # messages read off the ingest socket
    frames: int = 0  # valid frames accepted into the inbox
    published: int = 0  # messages sent on the publish socket
    results: int = 0
    protocol_errors: int = 0  # bad messages answered with an error
    frame_errors: int = 0  # frames the pipeline rejected
    dropped: int = 0  # live mode: frames replaced by a newer one
    stale: int = 0  # live mode with a budget: frames too old to process when taken
    subscriber_stalls: int = 0  # times a subscriber fell publish_hwm behind and was cut off
    refused: int = 0  # CURVE: handshakes refused (counted at stop)


class LogBudget:
    """At most ``lines`` log lines per ``period_s`` for one kind of event; the events past
    that are counted and the next line that may be written says how many were not.

    ``allow(now_s)`` is True when a line may be written; ``take_suppressed()`` returns (and
    resets) the count of events not logged since the last line."""

    def __init__(self, lines: int = 20, period_s: float = 60.0):
        self.lines, self.period_s = lines, period_s
        self._window_start = float("-inf")
        self._written = 0
        self._suppressed = 0

    def allow(self, now_s: float) -> bool:
        if now_s - self._window_start >= self.period_s:
            self._window_start, self._written = now_s, 0
        if self._written < self.lines:
            self._written += 1
            return True
        self._suppressed += 1
        return False

    def take_suppressed(self) -> int:
        n, self._suppressed = self._suppressed, 0
        return n


_STOP = object()
#: messages waiting for the publisher before the worker (and the ingest thread) wait
OUTBOX_MESSAGES = 64


class SideCar:
    """A running side-car: three threads around a :class:`FrameProcessor`.

    Use as a context manager, or ``start()`` ... ``stop()``. The endpoints it
    actually bound (free ports resolved) are ``ingest_endpoint`` and
    ``publish_endpoint`` after ``start()``.
    """

    def __init__(self, config: SideCarConfig, analysis: Analysis,
                 context: zmq.Context | None = None, budget: BudgetConfig | None = None):
        self.config = config
        self.processor = FrameProcessor(
            analysis, budget=budget or BudgetConfig(), live=not config.lossless,
            limits=StreamLimits(config.max_streams, config.stream_idle_timeout_s))
        # An owned context is terminated once the threads end: that blocks until the
        # results still queued on the publish socket are sent (up to its 5 s linger).
        self._owns_context = context is None
        self.context = zmq.Context() if context is None else context
        self.stats = SideCarStats()
        self.inbox = BoundedFrameQueue(config.queue_frames) if config.lossless \
            else LatestFrameSlot(config.max_streams)
        self.outbox: queue.Queue = queue.Queue(maxsize=OUTBOX_MESSAGES)
        self._stall_log = LogBudget(lines=1, period_s=60.0)  # publisher: cut-offs logged
        self._stopping = threading.Event()
        self._ingest_done = threading.Event()
        self._threads: list[threading.Thread] = []
        self.ingest_endpoint = self.publish_endpoint = ""
        #: the CURVE allow-list while running with CURVE (its ``refused`` counts refusals)
        self.curve: CurveServer | None = None

    # -- life cycle ---------------------------------------------------------

    def start(self) -> SideCar:
        pull = self.context.socket(zmq.PULL)
        pull.setsockopt(zmq.LINGER, 0)
        limit_intake(pull, self.config.max_message_bytes, self.config.ingest_hwm)
        xpub = self.context.socket(zmq.XPUB)
        # at most publish_hwm messages queued per subscriber; one that far behind holds the
        # publisher up (lossless, for subscriber_stall_s) and is then cut off (_send)
        xpub.setsockopt(zmq.SNDHWM, self.config.publish_hwm)
        xpub.setsockopt(zmq.XPUB_NODROP, 1)  # see _send
        xpub.setsockopt(zmq.LINGER, 5_000)
        hello = HelloMessage(version=__version__, mode=self.config.mode,
                             apps=self.processor.analysis.declarations())
        xpub.setsockopt(zmq.XPUB_WELCOME_MSG, encode(hello)[0])
        insecure = self.config.curve.insecure
        try:
            if self.config.curve.enabled:  # the ZAP handler runs before the first bind
                self.curve = CurveServer(self.context, self.config.curve).start()
            self.ingest_endpoint = bind(pull, self.config.ingest, self.curve, insecure=insecure)
            self.publish_endpoint = bind(xpub, self.config.publish, self.curve,
                                         insecure=insecure)
        except Exception:
            pull.close(linger=0)
            xpub.close(linger=0)
            self._stop_curve()
            if self._owns_context:
                self.context.term()
            raise
        self._threads = [
            threading.Thread(target=self._ingest_loop, args=(pull,), name="ingest",
                             daemon=True),
            threading.Thread(target=self._worker_loop, name="worker", daemon=True),
            threading.Thread(target=self._publish_loop, args=(xpub,), name="publisher",
                             daemon=True),
        ]
        for thread in self._threads:
            thread.start()
        log.info("side-car %s: ingest %s, publish %s%s", self.config.mode,
                 self.ingest_endpoint, self.publish_endpoint,
                 ", CURVE" if self.curve is not None else "")
        return self

    def stop(self, timeout_s: float | None = None) -> None:
        """Stop accepting frames, finish (lossless: drain) and flush; then return."""
        self._stopping.set()
        self.wait(timeout_s)

    def request_stop(self) -> None:
        """Ask for a stop without waiting (safe from a signal handler)."""
        self._stopping.set()

    def wait(self, timeout_s: float | None = None) -> bool:
        """Wait until the side-car has stopped; True if it has."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        for thread in self._threads:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            thread.join(remaining)
        if any(thread.is_alive() for thread in self._threads):
            return False
        self._stop_curve()
        if self._owns_context and not self.context.closed:
            self.context.term()  # flush: returns when queued results are sent
        return True

    def _stop_curve(self) -> None:
        if self.curve is not None:
            self.curve.stop()
            self.stats.refused = sum(self.curve.refused.values())

    def __enter__(self) -> SideCar:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- threads --------------------------------------------------------------

    def _ingest_loop(self, socket: zmq.Socket) -> None:
        stats, limit = self.stats, self.config.max_message_bytes
        bad_log = LogBudget(lines=20, period_s=60.0)
        try:
            while not self._stopping.is_set():
                if not socket.poll(50):
                    continue
                parts = socket.recv_multipart(copy=False)
                t_recv_ns = time.time_ns()
                t0 = time.perf_counter_ns()
                stats.received += 1
                try:
                    message = decode(parts, max_message_bytes=limit)
                except ProtocolError as exc:
                    stats.protocol_errors += 1
                    if bad_log.allow(time.monotonic()):  # a flood must not flood the log
                        more = bad_log.take_suppressed()
                        log.warning("bad message (%s): %s%s", exc.code, exc.message,
                                    f" ({more} more bad message(s) not logged before this "
                                    "one; each was answered)" if more else "")
                    self.outbox.put(ErrorMessage.from_exception(exc))
                    continue
                item = Received(message, t_recv_ns, (time.perf_counter_ns() - t0) / 1e6)
                if isinstance(message, FrameMessage):
                    if self.config.republish_frames:
                        self.outbox.put(message)
                    if self.inbox.put_frame(item):
                        stats.frames += 1
                elif isinstance(message, (StartMessage, EndMessage)):
                    if self.config.republish_frames and isinstance(message, StartMessage):
                        # ahead of the frames republished after it, with the stream's app
                        self.outbox.put(self.processor.analysis.declare_start(message))
                    self.inbox.put_control(item)
                else:
                    stats.protocol_errors += 1
                    self.outbox.put(ErrorMessage(
                        code="unexpected_kind", stream=getattr(message, "stream", None),
                        message=f"the ingest endpoint takes frame/start/end messages, "
                                f"not {message.kind!r}"))
        except Exception:  # pragma: no cover - a bug here must not hang the worker
            log.exception("ingest thread failed")
            self._stopping.set()
        finally:
            socket.close(linger=0)
            self._ingest_done.set()

    def _worker_loop(self) -> None:
        drain_deadline = None
        try:
            while True:
                got = self.inbox.get_round(self.processor.analysis.max_batch, timeout_s=0.05)
                if not got:
                    for message in self.processor.expire_idle():  # silent streams close
                        message.meta["dropped"] += self.inbox.forget(message.stream)
                        self.stats.dropped += message.meta["dropped"]
                        self.outbox.put(message)
                    if self._stopping.is_set() and (
                            not self.config.lossless
                            or (self._ingest_done.is_set() and len(self.inbox) == 0)):
                        break
                    continue
                self.stats.dropped += sum(dropped for _, dropped in got)
                answers = self.processor.handle_round(got, t_take_ns=time.time_ns())
                for (item, _), messages in zip(got, answers):
                    if isinstance(item.message, FrameMessage) and not any(
                            m.kind in ("result", "error") for m in messages):
                        self.stats.stale += 1  # (the messages may hold idle streams' ends)
                for message in (m for messages in answers for m in messages):
                    if message.kind == "result":
                        self.stats.results += 1
                    elif message.kind == "error":
                        self.stats.frame_errors += 1
                    elif message.kind == "start" and self.config.republish_frames:
                        continue  # the ingest thread published it, in order with the frames
                    self.outbox.put(message)
                if self._stopping.is_set():
                    if not self.config.lossless:
                        break
                    drain_deadline = drain_deadline or (
                        time.monotonic() + self.config.drain_timeout_s)
                    if time.monotonic() > drain_deadline:
                        log.warning("drain timeout: %d accepted item(s) not processed",
                                    len(self.inbox))
                        break
        except Exception:  # pragma: no cover - a bug: stop rather than swallow frames
            log.exception("worker thread failed")
            self._stopping.set()
        finally:
            self.processor.close()
            self.inbox.close()
            self.outbox.put(_STOP)

    def _publish_loop(self, socket: zmq.Socket) -> None:
        try:
            while True:
                try:
                    message = self.outbox.get(timeout=0.1)
                except queue.Empty:
                    message = None
                self._drain_subscriptions(socket)
                if message is _STOP:
                    break
                if message is not None:
                    if isinstance(message, ResultMessage):
                        _stamp_publish(message)
                    self._send(socket, _encode_or_error(message))
                    self.stats.published += 1
        except Exception:  # pragma: no cover
            log.exception("publisher thread failed")
            self._stopping.set()
            # the worker's last put (_STOP) must not block on the bounded outbox
            while self.outbox.get() is not _STOP:
                continue
        finally:
            socket.close()  # LINGER lets queued messages reach connected subscribers

    def _send(self, socket: zmq.Socket, parts: list) -> None:
        """Publish one message. The socket is XPUB_NODROP: a send goes to every subscriber
        or, while one of them is publish_hwm messages behind, to none (zmq.Again). Lossless
        mode then waits up to subscriber_stall_s for it to read; after that (live mode: at
        once) the message goes out lossy: to the subscribers with room, and ZeroMQ cuts the
        one behind off (skips it until it has read some of its queue). Each cut-off counts
        in ``subscriber_stalls``; they are logged at most once a minute."""
        deadline = None
        while True:
            try:
                socket.send_multipart(parts, flags=zmq.NOBLOCK)
                return
            except zmq.Again:
                pass
            if not self.config.lossless:
                break
            now = time.monotonic()
            if deadline is None:
                deadline = now + self.config.subscriber_stall_s
            elif now >= deadline:
                break
            self._drain_subscriptions(socket)  # one that leaves frees its queue
            time.sleep(0.001)
        self.stats.subscriber_stalls += 1
        if self._stall_log.allow(time.monotonic()):
            log.warning("a subscriber is %d messages behind%s: it gets no messages until it "
                        "reads (the others get every one); %d such cut-off(s) so far",
                        self.config.publish_hwm,
                        f" and read none for {self.config.subscriber_stall_s:g} s"
                        if self.config.lossless else "", self.stats.subscriber_stalls)
        socket.setsockopt(zmq.XPUB_NODROP, 0)
        try:
            socket.send_multipart(parts)
        finally:
            socket.setsockopt(zmq.XPUB_NODROP, 1)

    @staticmethod
    def _drain_subscriptions(socket: zmq.Socket) -> None:
        """XPUB hands us (un)subscription messages; read them so they do not pile up."""
        while socket.poll(0):
            socket.recv_multipart()


def _encode_or_error(message) -> list:
    """The message's parts; one that cannot be encoded (an app's field of a type JSON
    cannot hold, an array of a dtype the wire does not carry) is answered with an error for
    its frame instead of stopping the publisher."""
    try:
        return encode(message)
    except (ProtocolError, TypeError, ValueError) as exc:
        log.error("%s of %s could not be encoded: %s", message.kind,
                  getattr(message, "stream", None), exc)
        return encode(ErrorMessage(
            code="stage_failed", stream=getattr(message, "stream", None),
            seq=getattr(message, "seq", None),
            message=f"the {message.kind} could not be encoded: {exc}"))


def _stamp_publish(result: ResultMessage) -> None:
    """The last two entries of a result's telemetry, taken as it leaves: ``publish`` (result
    ready -> sent, the wait in the outbox) and ``end_to_end`` (the frame's send -> its
    result's send: transport + total + publish, all on this host's clock; only when the
    sender stamped ``t_send_ns``)."""
    now = time.time_ns()
    result.t_publish_ns = now
    if result.t_result_ns is not None:
        latency = result.latency_ms
        latency["publish"] = (now - result.t_result_ns) / 1e6
        if "transport" in latency:
            latency["end_to_end"] = latency["transport"] + latency["total"] + latency["publish"]
