"""ZeroMQ CURVE: key files, the allow-list of the side that binds, the keys of the side that
connects, and the loopback rule for binding without CURVE (docs/protocol.md, "Security").

* ``cardiostream keys generate`` (:func:`generate_keys`) writes a key pair in pyzmq's
  certificate format: ``NAME.key`` (public) and ``NAME.key_secret`` (both keys, mode 0600).
* The side that binds (``serve``, ``record --listen``) is the CURVE server: its own
  ``NAME.key_secret`` (``--curve-secret-key``) and a directory of the clients' public
  ``*.key`` files (``--allow-keys``). A ZAP handler (pyzmq's ``ThreadAuthenticator``, one per
  ZeroMQ context) lets in only those keys: :class:`CurveServer`. A refused client completes
  no handshake, so it gets nothing and can send nothing; the refusal is logged once per
  client key (a key not in the list), or once per endpoint for handshakes that fail before
  a key is known (a client without CURVE, or with keys for another side-car); later
  attempts are only counted.
* The side that connects (``replay``, ``record --from``, :class:`~streamer.io.sockets.FrameSender`,
  :class:`~streamer.io.sockets.ResultSubscriber`) is a CURVE client: its own
  ``NAME.key_secret`` and the server's public ``NAME.key`` (``--curve-server-key``):
  :func:`apply_client_keys`.
* Without CURVE a socket may bind only a loopback endpoint (127.0.0.0/8, ``localhost``,
  ``[::1]``, ``ipc://``, ``inproc://``); anything else is refused unless ``--insecure``, which
  logs a warning instead: :func:`check_bind`.
"""

from __future__ import annotations

import logging
import os
import shutil
import stat
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator
from zmq.utils import z85
from zmq.utils.monitor import recv_monitor_message

from streamer.options import option

log = logging.getLogger(__name__)

PUBLIC_SUFFIX = ".key"
SECRET_SUFFIX = ".key_secret"
#: the ZAP domain of the sockets a CurveServer secures (its allow-list answers for it)
ZAP_DOMAIN = "cardiostream"


class KeyFileError(ValueError):
    """A key file or allow-list directory is missing or unreadable (the message names it)."""


class InsecureBindError(ValueError):
    """A non-loopback endpoint was to be bound without CURVE and without ``--insecure``."""


@dataclass(frozen=True)
class CurveConfig:
    """CURVE keys of one end; all None: no CURVE (plain text, loopback only)."""

    curve_secret_key: Path | None = option(
        None, "turns on CURVE encryption and authentication: this end's key pair, the "
        "NAME.key_secret file of `cardiostream keys generate` (serve / record --listen: the "
        "side-car's own; replay / record --from: the client's own, whose NAME.key is in the "
        "side-car's --allow-keys directory)", metavar="FILE", parse=Path)
    allow_keys: Path | None = option(
        None, "with --curve-secret-key, on the side that binds: the directory of the public "
        "keys (NAME.key files) of the clients let in; any other client gets nothing and "
        "the refusal is logged once", metavar="DIR", parse=Path)
    curve_server_key: Path | None = option(
        None, "with --curve-secret-key, on the side that connects: the side-car's public "
        "key, its NAME.key file", metavar="FILE", parse=Path)
    insecure: bool = option(
        False, "bind a non-loopback endpoint without CURVE (plain text: anyone who reaches it "
        "can send frames and read results); refused without this switch, a warning with it")

    def __post_init__(self):
        if self.curve_secret_key is None:
            for value, flag in ((self.allow_keys, "--allow-keys"),
                                (self.curve_server_key, "--curve-server-key")):
                if value is not None:
                    raise ValueError(f"{flag} needs --curve-secret-key FILE (this end's key "
                                     "pair, see `cardiostream keys generate --help`)")
        elif self.insecure:
            raise ValueError("--insecure is for binding without CURVE; it cannot go with "
                             "--curve-secret-key")

    @property
    def enabled(self) -> bool:
        return self.curve_secret_key is not None


# --------------------------------------------------------------------------
# key files


def generate_keys(out_dir: str | Path, name: str) -> tuple[Path, Path]:
    """Write a new key pair ``out_dir/NAME.key`` (public) and ``out_dir/NAME.key_secret``
    (public and secret, mode 0600) in pyzmq's certificate format; return their paths.
    Existing files are not overwritten (FileExistsError)."""
    if not name or name != Path(name).name or name.startswith("."):
        raise ValueError(f"--name {name!r}: give a plain file name (no directory, not "
                         "starting with '.')")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    public, secret = out_dir / f"{name}{PUBLIC_SUFFIX}", out_dir / f"{name}{SECRET_SUFFIX}"
    for path in (public, secret):
        if path.exists():
            raise FileExistsError(f"{path} exists; not overwritten (remove it, or choose "
                                  "another --name)")
    # written in a private (0700) folder beside the targets, the secret made 0600 there,
    # then moved into place: the secret key is never readable by others
    staging = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=out_dir))
    try:
        made_public, made_secret = map(Path, zmq.auth.create_certificates(staging, name))
        made_secret.chmod(0o600)
        made_public.chmod(0o644)
        os.replace(made_secret, secret)
        os.replace(made_public, public)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return public, secret


def _read_certificate(path: Path, what: str) -> tuple[bytes, bytes | None]:
    if path.is_dir() or not path.exists():
        raise KeyFileError(f"{what} {path}: no such file")
    try:
        public, secret = zmq.auth.load_certificate(path)
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise KeyFileError(f"{what} {path}: not a key file of `cardiostream keys generate` "
                           f"({exc})") from None
    for key, which in ((public, "public"), (secret, "secret")):
        if key is not None and not _valid_key(key):
            raise KeyFileError(f"{what} {path}: its {which} key is not a 40-character Z85 "
                               "CURVE key (file damaged?)")
    return public, secret


def _valid_key(key: bytes) -> bool:
    try:
        return len(key) == 40 and len(z85.decode(key)) == 32
    except (ValueError, KeyError, TypeError):
        return False


def load_key_pair(path: str | Path) -> tuple[bytes, bytes]:
    """(public, secret) Z85 keys of a ``NAME.key_secret`` file; KeyFileError naming the file
    when it is missing, garbled, holds no secret key or a public key of another pair."""
    path = Path(path)
    public, secret = _read_certificate(path, "--curve-secret-key")
    if secret is None:
        raise KeyFileError(f"--curve-secret-key {path}: holds no secret key (give the "
                           f"NAME{SECRET_SUFFIX} file, not the public NAME{PUBLIC_SUFFIX})")
    if zmq.curve_public(secret) != public:
        raise KeyFileError(f"--curve-secret-key {path}: its public and secret keys are not "
                           "one pair (file edited?)")
    mode = path.stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        log.warning("%s: the secret key file is readable by others (mode %o); chmod 600 it",
                    path, stat.S_IMODE(mode))
    return public, secret


def load_public_key(path: str | Path, what: str = "--curve-server-key") -> bytes:
    """The Z85 public key of a ``NAME.key`` (or ``NAME.key_secret``) file."""
    return _read_certificate(Path(path), what)[0]


def load_allow_list(directory: str | Path) -> dict[bytes, str]:
    """The public keys of the ``*.key`` files in ``directory``: Z85 key -> file name.
    KeyFileError when the directory is missing, holds no key file or a garbled one."""
    directory = Path(directory)
    if not directory.is_dir():
        raise KeyFileError(f"--allow-keys {directory}: no such directory")
    allowed: dict[bytes, str] = {}
    for path in sorted(directory.glob(f"*{PUBLIC_SUFFIX}")):
        allowed.setdefault(load_public_key(path, "--allow-keys"), path.name)
    if not allowed:
        raise KeyFileError(f"--allow-keys {directory}: no public key files (*{PUBLIC_SUFFIX}) "
                           "in it: every client would be refused")
    return allowed


# --------------------------------------------------------------------------
# the loopback rule


def is_loopback(endpoint: str) -> bool:
    """True for endpoints only this machine can reach: ``ipc://``, ``inproc://``, and TCP on
    127.0.0.0/8, ``localhost`` or ``::1``. Interface names and host names other than
    ``localhost`` count as reachable from elsewhere."""
    transport, sep, rest = endpoint.partition("://")
    if not sep:
        return False
    if transport in ("ipc", "inproc"):
        return True
    if transport not in ("tcp", "ws"):
        return False
    host = rest.rpartition(";")[2]  # a connect's "source;destination"
    host = host.split("/", 1)[0].rpartition(":")[0]
    host = host.strip("[]").lower()
    if host in ("localhost", "::1"):
        return True
    parts = host.split(".")
    return len(parts) == 4 and parts[0] == "127" and all(p.isdigit() for p in parts)


def check_bind(endpoint: str, config: CurveConfig) -> None:
    """The loopback rule, before a bind: without CURVE a non-loopback endpoint is refused
    (InsecureBindError) unless ``config.insecure``, which logs a warning."""
    if config.enabled or is_loopback(endpoint):
        return
    if not config.insecure:
        raise InsecureBindError(
            f"refusing to bind {endpoint} without CURVE: it is not a loopback address, so "
            "anyone who can reach it could send frames and read results. Give "
            "--curve-secret-key FILE --allow-keys DIR (see `cardiostream keys generate "
            "--help`), or --insecure to bind it in plain text anyway")
    log.warning("INSECURE: binding %s without encryption or authentication (--insecure): "
                "anyone who can reach it can send frames and read results", endpoint)


# --------------------------------------------------------------------------
# the two ends


def apply_client_keys(socket: zmq.Socket, config: CurveConfig) -> None:
    """Make ``socket`` a CURVE client when ``config`` has keys (before it connects)."""
    if not config.enabled:
        return
    if config.curve_server_key is None:
        raise ValueError("--curve-secret-key on the side that connects needs "
                         "--curve-server-key FILE (the side-car's public NAME.key)")
    public, secret = load_key_pair(config.curve_secret_key)
    socket.curve_serverkey = load_public_key(config.curve_server_key)
    socket.curve_publickey = public
    socket.curve_secretkey = secret


_FAILURES = {
    zmq.PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH:
        "it has no CURVE (plain text, or another security mechanism)",
    zmq.PROTOCOL_ERROR_ZMTP_CRYPTOGRAPHIC:
        "its CURVE handshake did not decrypt (its --curve-server-key is not this end's "
        "public key?)",
}


def _failure(event: dict) -> str:
    """Why a handshake failed, from a monitor event."""
    if event["event"] == zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL:
        return ("the connection closed during the handshake (a client without CURVE, or "
                "with keys for another side-car?)")
    return _FAILURES.get(event["value"], f"handshake protocol error {event['value']:#x}")


class CurveServer:
    """CURVE for the sockets one ZeroMQ context binds: this end's key pair, a ZAP handler
    that lets in the keys of ``config.allow_keys`` only, and a thread that logs refusals.

    ``start()`` before binding (without a ZAP handler libzmq would let any key in),
    ``secure(socket)`` on each socket before its bind, ``stop()`` before the context is
    terminated. ``refused`` counts refused handshakes by what was refused.
    """

    def __init__(self, context: zmq.Context, config: CurveConfig):
        if not config.enabled:
            raise ValueError("CurveServer needs --curve-secret-key")
        if config.allow_keys is None:
            raise ValueError("--curve-secret-key on the side that binds needs --allow-keys "
                             "DIR (the public NAME.key files of the clients to let in)")
        self.context = context
        self.public_key, self._secret_key = load_key_pair(config.curve_secret_key)
        self.allowed = load_allow_list(config.allow_keys)
        self.refused: dict[str, int] = {}
        self._lock = threading.Lock()
        self._monitors: list[tuple[zmq.Socket, str]] = []
        self._stopping = threading.Event()
        self._watcher: threading.Thread | None = None
        self._auth: _AllowListAuthenticator | None = None

    def start(self) -> CurveServer:
        auth = _AllowListAuthenticator(self.context, self)
        try:
            auth.start()
        except zmq.ZMQError as exc:
            auth.stop()
            raise RuntimeError(f"cannot start the CURVE allow-list (ZAP handler) in this "
                               f"ZeroMQ context: {exc} (one per context)") from None
        auth.configure_curve_callback(domain=ZAP_DOMAIN, credentials_provider=auth)
        self._auth = auth
        self._watcher = threading.Thread(target=self._watch, name="curve-refusals",
                                         daemon=True)
        self._watcher.start()
        log.info("CURVE on: %d client key(s) allowed (%s)", len(self.allowed),
                 ", ".join(self.allowed.values()))
        return self

    def secure(self, socket: zmq.Socket) -> None:
        """Make ``socket`` a CURVE server with this end's keys, its refusals watched."""
        socket.curve_server = True
        socket.curve_secretkey = self._secret_key
        socket.curve_publickey = self.public_key
        socket.zap_domain = ZAP_DOMAIN.encode()
        monitor = socket.get_monitor_socket(zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
                                            | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL)
        with self._lock:  # handed to the watcher thread under the lock
            self._monitors.append((monitor, zmq.SocketType(socket.type).name))

    def stop(self) -> None:
        self._stopping.set()
        if self._watcher is not None:
            self._watcher.join()
            self._watcher = None
        if self._auth is not None:
            self._auth.stop()
            self._auth = None
        with self._lock:
            for monitor, _ in self._monitors:
                monitor.close(linger=0)
            self._monitors.clear()

    def refuse(self, what: str, detail: str) -> None:
        """Count a refused handshake; log it the first time ``what`` is refused."""
        with self._lock:
            first = what not in self.refused
            self.refused[what] = self.refused.get(what, 0) + 1
        if first:
            log.warning("CURVE: refused %s%s; it gets nothing (further refusals of the same "
                        "are counted, not logged)", what, detail)

    def _watch(self) -> None:
        poller, polled = zmq.Poller(), set()
        while not self._stopping.is_set():
            with self._lock:
                for monitor, _ in self._monitors:
                    if monitor not in polled:
                        poller.register(monitor, zmq.POLLIN)
                        polled.add(monitor)
                names = dict(self._monitors)
            for monitor, _ in poller.poll(100):
                event = recv_monitor_message(monitor)
                if event["event"] == zmq.EVENT_MONITOR_STOPPED:
                    continue  # its socket closed
                # a failure outside ZAP is seen as one or both of a protocol error and a
                # close without detail (which, depends on who hangs up first), and the
                # event names our endpoint, not the peer: counted per endpoint
                endpoint = event["endpoint"].decode(errors="replace")
                self.refuse(f"a client whose handshake failed at {endpoint}",
                            f" ({names[monitor]}; first: {_failure(event)})")


class _AllowListAuthenticator(ThreadAuthenticator):
    """pyzmq's ZAP thread, its CURVE callback the allow-list; a refused key is logged once."""

    def __init__(self, context: zmq.Context, server: CurveServer):
        super().__init__(context, log=logging.getLogger(f"{__name__}.zap"))
        self._server = server
        self._address = "?"

    async def handle_zap_message(self, msg: list[bytes]) -> None:
        # the request's peer address, for the log line of a refusal (ZAP request frame 3)
        self._address = msg[3].decode(errors="replace") if len(msg) > 3 else "?"
        await super().handle_zap_message(msg)

    def callback(self, domain: str, key: bytes) -> bool:
        if key in self._server.allowed:
            return True
        self._server.refuse(f"a client with the unknown public key {key.decode()}",
                            f" (from {self._address}; not in --allow-keys)")
        return False
