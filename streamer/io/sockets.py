"""ZeroMQ sources and sinks: the only place that decides socket types and options.

Patterns (see docs/protocol.md, "Transport"):

* frames travel PUSH -> PULL: the side-car binds a PULL socket at its ingest
  endpoint, a scanner or ``replay`` connects a PUSH socket to it. PUSH/PULL
  gives back-pressure for lossless replay; in live mode the side-car's ingest
  thread drains the socket continuously, so a sender is never blocked.
* results travel XPUB -> SUB: the side-car binds an XPUB socket at its publish
  endpoint, any number of consumers connect SUB sockets. Every new subscriber
  is sent a ``hello`` message first (ZMQ_XPUB_WELCOME_MSG), so a consumer knows
  when its subscription is live and nothing it waits for can slip past it.

Security (streamer/io/security.py): the side that binds may bind a non-loopback endpoint
only with CURVE (or ``--insecure``); with CURVE it is the CURVE server, and the side that
connects a CURVE client (``curve`` in :class:`SenderConfig` and :class:`SubscriberConfig`).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass

import zmq
from zmq.utils.monitor import recv_monitor_message

from streamer.io.protocol import DEFAULT_MAX_MESSAGE_BYTES, HelloMessage, Message, decode, encode
from streamer.io.security import CurveConfig, CurveServer, apply_client_keys, check_bind

#: how far over the protocol's message limit one part may be and still be read, so that a
#: message a little over it is answered ``too_large``; a larger part closes its sender's
#: connection before ZeroMQ allocates anything for it (MAXMSGSIZE)
PART_MARGIN_BYTES = 2**20


def limit_intake(socket: zmq.Socket, max_message_bytes: int, read_ahead: int) -> None:
    """Bound what a receiving socket (a PULL that takes frames) can hold for each sender:
    at most ``read_ahead`` messages read ahead (RCVHWM), and no part over
    ``max_message_bytes`` + :data:`PART_MARGIN_BYTES` (MAXMSGSIZE)."""
    socket.setsockopt(zmq.RCVHWM, read_ahead)
    socket.setsockopt(zmq.MAXMSGSIZE, max_message_bytes + PART_MARGIN_BYTES)


class EndpointError(RuntimeError):
    """An endpoint could not be bound or reached (the message says which and why)."""


class SendTimeout(EndpointError):
    """The peer took no message for the send timeout (gone, or stalled)."""


def bind(socket: zmq.Socket, endpoint: str, curve: CurveServer | None = None, *,
         insecure: bool = False) -> str:
    """Bind and return the resolved endpoint (``tcp://127.0.0.1:*`` gets a free port).

    With ``curve`` the socket is a CURVE server behind that allow-list; without, only a
    loopback endpoint may be bound, unless ``insecure`` (then with a warning)."""
    if curve is not None:
        curve.secure(socket)
    else:
        check_bind(endpoint, CurveConfig(insecure=insecure))
    try:
        socket.bind(endpoint)
    except zmq.ZMQError as exc:
        raise EndpointError(f"cannot bind {endpoint}: {exc}") from None
    return socket.getsockopt_string(zmq.LAST_ENDPOINT)


def connect(socket: zmq.Socket, endpoint: str) -> None:
    try:
        socket.connect(endpoint)
    except zmq.ZMQError as exc:
        raise EndpointError(f"cannot connect to {endpoint}: {exc}") from None


_HANDSHAKE_EVENTS = (zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_HANDSHAKE_FAILED_AUTH
                     | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL)


def connect_and_wait(socket: zmq.Socket, endpoint: str, timeout_s: float) -> None:
    """Connect, then block until a peer has completed the handshake (or raise).

    With ``timeout_s`` 0 it only connects: ZeroMQ then queues messages until the
    peer appears. A peer that refuses the handshake (CURVE: this client's key not in its
    allow-list; a mechanism mismatch) raises at once, saying so.
    """
    if timeout_s <= 0:
        connect(socket, endpoint)
        return
    monitor = socket.get_monitor_socket(_HANDSHAKE_EVENTS)
    deadline = time.monotonic() + timeout_s
    failed = False  # a handshake ended without detail (e.g. the peer closed it)
    try:
        connect(socket, endpoint)
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not monitor.poll(max(1, int(remaining * 1000))):
                hint = (" (a handshake failed: does the side-car there want CURVE keys, or "
                        "other ones?)" if failed else " (is the side-car running there?)")
                raise EndpointError(f"no peer answered at {endpoint} within {timeout_s:g} s"
                                    + hint)
            event = recv_monitor_message(monitor)
            if event["event"] == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                return
            if event["event"] == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
                raise EndpointError(
                    f"the side-car at {endpoint} refused this client (CURVE authentication, "
                    f"status {event['value']}: is this client's public key in its "
                    "--allow-keys directory?)")
            if event["event"] == zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL:
                mismatch = event["value"] == zmq.PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH
                raise EndpointError(
                    f"the handshake with {endpoint} failed: " + (
                        "one side uses CURVE and the other not (give both "
                        "--curve-secret-key and --curve-server-key, or neither)" if mismatch
                        else f"protocol error {event['value']:#x} (with CURVE: is "
                             "--curve-server-key the side-car's public key?)"))
            failed = True
    finally:
        socket.disable_monitor()
        monitor.close(linger=0)


@dataclass(frozen=True)
class SenderConfig:
    """A frame sender (scanner side): PUSH, connected to a side-car's ingest."""

    endpoint: str
    #: messages queued towards the side-car before send() blocks (back-pressure)
    send_hwm: int = 100
    #: how long to wait for the side-car to answer the connection; 0 = don't wait
    connect_timeout_s: float = 10.0
    #: how long close() waits to deliver queued messages
    linger_s: float = 10.0
    #: how long send() waits for the side-car to take a message before it raises
    #: SendTimeout (None: for ever)
    send_timeout_s: float | None = 30.0
    #: CURVE keys of this client (its own key pair and the side-car's public key)
    curve: CurveConfig = CurveConfig()


class FrameSender:
    """Sends protocol messages to a side-car (``send`` blocks only under back-pressure).

    Without a ``context`` it owns one, and ``close()`` terminates it: that blocks
    until every queued message has reached the side-car (or ``linger_s`` has
    passed), so a sender process that exits right after ``close()`` loses nothing.
    """

    def __init__(self, config: SenderConfig, context: zmq.Context | None = None):
        self.config = config
        self._owns_context = context is None
        self.context = zmq.Context() if context is None else context
        self.socket = self.context.socket(zmq.PUSH)
        self.socket.setsockopt(zmq.SNDHWM, config.send_hwm)
        self.socket.setsockopt(zmq.LINGER, int(config.linger_s * 1000))
        if config.send_timeout_s is not None:
            self.socket.setsockopt(zmq.SNDTIMEO, max(1, int(config.send_timeout_s * 1000)))
        self.sent = 0
        try:
            apply_client_keys(self.socket, config.curve)
            connect_and_wait(self.socket, config.endpoint, config.connect_timeout_s)
        except (EndpointError, ValueError):
            self.socket.close(linger=0)
            if self._owns_context:
                self.context.term()
            raise

    def send(self, message: Message, *, block: bool = True) -> None:
        """Send one message; with ``block=False`` raise ``zmq.Again`` instead of waiting.
        A blocking send that the side-car does not take within ``send_timeout_s`` raises
        :class:`SendTimeout` (the messages still queued are then lost: the error says how
        many at most)."""
        try:
            self.socket.send_multipart(encode(message), flags=0 if block else zmq.NOBLOCK)
        except zmq.Again:
            if not block:
                raise
            self.socket.setsockopt(zmq.LINGER, 0)  # nobody takes them: do not wait at close
            raise SendTimeout(
                f"the side-car at {self.config.endpoint} took no message for "
                f"{self.config.send_timeout_s:g} s (stopped, or stalled); {self.sent} "
                f"messages were sent, up to {self.config.send_hwm} of the last of them may "
                "not have been delivered") from None
        self.sent += 1

    def close(self) -> None:
        """Close; with an owned context, wait (up to ``linger_s``) until all is delivered."""
        if self.socket.closed:
            return
        self.socket.close()
        if self._owns_context:
            self.context.term()

    def __enter__(self) -> FrameSender:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@dataclass(frozen=True)
class SubscriberConfig:
    """A consumer of a side-car's publish endpoint."""

    endpoint: str
    #: wait this long for the side-car's hello before giving up
    connect_timeout_s: float = 10.0
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    #: CURVE keys of this client (its own key pair and the side-car's public key)
    curve: CurveConfig = CurveConfig()


class ResultSubscriber:
    """Receives a side-car's published messages (results, beats, errors, start/end).

    The constructor returns once the side-car's ``hello`` has arrived, so every
    message published after that reaches this subscriber.
    """

    def __init__(self, config: SubscriberConfig, context: zmq.Context | None = None):
        self.config = config
        self.context = context or zmq.Context.instance()
        self.socket = self.context.socket(zmq.SUB)
        self.socket.setsockopt(zmq.RCVHWM, 0)  # never drop on our side
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.setsockopt(zmq.SUBSCRIBE, b"")
        deadline = time.monotonic() + config.connect_timeout_s
        try:
            apply_client_keys(self.socket, config.curve)
            connect_and_wait(self.socket, config.endpoint, config.connect_timeout_s)
        except (EndpointError, ValueError):
            self.socket.close()
            raise
        self.hello = self._wait_hello(deadline)

    def _wait_hello(self, deadline: float) -> HelloMessage:
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not self.socket.poll(int(remaining * 1000)):
                self.socket.close()
                raise EndpointError(f"no side-car hello from {self.config.endpoint} within "
                                    f"{self.config.connect_timeout_s:g} s")
            message = self._decode(self.socket.recv_multipart(copy=False))
            if isinstance(message, HelloMessage):
                return message

    def _decode(self, parts) -> Message:
        return decode(parts, max_message_bytes=self.config.max_message_bytes)

    def recv(self, timeout_s: float | None = None) -> Message | None:
        """The next message, or None after ``timeout_s`` seconds without one."""
        if timeout_s is not None and not self.socket.poll(int(timeout_s * 1000)):
            return None
        return self._decode(self.socket.recv_multipart(copy=False))

    def iter_until_end(self, stream: str | None = None, timeout_s: float = 10.0
                       ) -> Iterator[Message]:
        """Yield messages until the end message of ``stream`` (any stream if None).

        Raises TimeoutError when ``timeout_s`` passes without a message.
        """
        while True:
            message = self.recv(timeout_s)
            if message is None:
                raise TimeoutError(f"no message from {self.config.endpoint} for "
                                   f"{timeout_s:g} s")
            yield message
            if message.kind == "end" and (stream is None or message.stream == stream):
                return

    def close(self) -> None:
        self.socket.close()

    def __enter__(self) -> ResultSubscriber:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
