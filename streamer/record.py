"""``cardiostream record``: write a live stream to a ``.csrec`` file that ``replay`` can send again.

Two ways to listen:

* ``--from ENDPOINT`` subscribes to a side-car's publish endpoint and records
  what it publishes (start, results, errors, beats, end; and the frames too when
  the side-car runs with ``--republish-frames``);
* ``--listen ENDPOINT`` binds a PULL socket in place of a side-car and records
  the frames a scanner (or ``replay``) sends to it, with their arrival times.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import zmq

from streamer.io.protocol import DEFAULT_MAX_MESSAGE_BYTES, ProtocolError, decode
from streamer.io.recording import RecordingWriter
from streamer.io.security import CurveConfig, CurveServer
from streamer.io.sockets import ResultSubscriber, SubscriberConfig, bind, limit_intake

log = logging.getLogger(__name__)

KINDS = ("frame", "start", "end", "result", "beat", "wall_motion", "error")


@dataclass(frozen=True)
class RecordConfig:
    """Where to listen, what to keep and when to stop."""

    endpoint: str
    #: True: bind a PULL socket at ``endpoint`` (frames from a scanner);
    #: False: subscribe to a side-car publishing at ``endpoint``
    listen: bool = False
    #: keep only these message kinds (None: every kind)
    kinds: tuple[str, ...] | None = None
    #: stop after this many seconds (None: until stopped)
    duration_s: float | None = None
    #: stop after this many messages written (None: no limit)
    max_messages: int | None = None
    #: stop after the first ``end`` message
    until_end: bool = False
    connect_timeout_s: float = 10.0
    #: CURVE keys: with ``listen`` this end is the CURVE server (its key pair and the
    #: allow-list), else a CURVE client of the side-car (its key pair, the side-car's key)
    curve: CurveConfig = CurveConfig()

    def __post_init__(self):
        unknown = set(self.kinds or ()) - set(KINDS)
        if unknown:
            raise ValueError(f"unknown message kind(s) {sorted(unknown)}; choose from {KINDS}")
        if self.duration_s is not None and not self.duration_s > 0:
            raise ValueError(f"--duration-s must be positive, got {self.duration_s}")
        if self.listen and self.curve.curve_server_key is not None:
            raise ValueError("--curve-server-key is for record --from (record --listen is "
                             "the server: --curve-secret-key and --allow-keys)")
        if not self.listen and (self.curve.allow_keys is not None or self.curve.insecure):
            raise ValueError("--allow-keys and --insecure are for record --listen (record "
                             "--from is a client: --curve-secret-key and --curve-server-key)")


@dataclass
class RecordStats:
    written: Counter = field(default_factory=Counter)
    skipped_invalid: int = 0
    endpoint: str = ""


def record(config: RecordConfig, out_path: str | Path, stop: threading.Event | None = None,
           *, ready: threading.Event | None = None, stats: RecordStats | None = None
           ) -> RecordStats:
    """Record until ``stop`` is set or a limit in ``config`` is reached."""
    stop = stop or threading.Event()
    stats = stats if stats is not None else RecordStats()
    # a context of its own: a CURVE allow-list (ZAP handler) is one per context
    context, curve, subscriber, socket = zmq.Context(), None, None, None
    try:
        if config.listen:
            socket = context.socket(zmq.PULL)
            socket.setsockopt(zmq.LINGER, 0)
            # bounded as the side-car's ingest (a sender waits while 4 messages wait here)
            limit_intake(socket, DEFAULT_MAX_MESSAGE_BYTES, read_ahead=4)
            if config.curve.enabled:
                curve = CurveServer(context, config.curve).start()
            stats.endpoint = bind(socket, config.endpoint, curve, insecure=config.curve.insecure)
        else:
            subscriber = ResultSubscriber(SubscriberConfig(
                config.endpoint, connect_timeout_s=config.connect_timeout_s,
                curve=config.curve), context)
            socket, stats.endpoint = subscriber.socket, config.endpoint
        _record(config, out_path, stop, socket, stats, ready)
    finally:
        if subscriber is not None:
            subscriber.close()
        elif socket is not None:
            socket.close()
        if curve is not None:
            curve.stop()
        context.term()
    return stats


def _record(config: RecordConfig, out_path: str | Path, stop: threading.Event,
            socket: zmq.Socket, stats: RecordStats, ready: threading.Event | None) -> None:
    if ready is not None:
        ready.set()
    deadline = None if config.duration_s is None else time.monotonic() + config.duration_s
    with RecordingWriter(out_path) as writer:
        while not stop.is_set():
            if deadline is not None and time.monotonic() >= deadline:
                break
            if not socket.poll(50):
                continue
            parts = socket.recv_multipart(copy=False)
            t_recv_ns = time.time_ns()
            try:
                kind = decode(parts).kind
            except ProtocolError as exc:
                stats.skipped_invalid += 1
                log.warning("not recorded, invalid message (%s): %s", exc.code, exc)
                continue
            if kind == "hello" or (config.kinds and kind not in config.kinds):
                continue
            writer.write(parts, t_recv_ns)
            stats.written[kind] += 1
            if config.max_messages is not None and writer.records >= config.max_messages:
                break
            if config.until_end and kind == "end":
                break
