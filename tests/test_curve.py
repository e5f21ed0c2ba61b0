"""CURVE encryption and authentication (issue 14, acceptance 4): over loopback a client with
an allowed key is served, a client with an unknown key or none gets nothing and the refusal
is logged once; keys generate; the loopback rule; clear errors for bad key files."""

from __future__ import annotations

import json
import logging
import stat
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import zmq

from streamer.apps import AnalysisConfig, build_analysis
from streamer.cli import main
from streamer.io.protocol import EndMessage, FrameMessage, StartMessage, encode
from streamer.io.recording import iter_records
from streamer.io.security import (
    CurveConfig,
    CurveServer,
    InsecureBindError,
    KeyFileError,
    is_loopback,
    load_key_pair,
    load_public_key,
)
from streamer.io.sockets import (
    EndpointError,
    FrameSender,
    ResultSubscriber,
    SenderConfig,
    SubscriberConfig,
)
from streamer.record import RecordConfig, RecordStats, record
from streamer.sidecar import SideCar, SideCarConfig

LOOPBACK = "tcp://127.0.0.1:*"
SECURITY_LOG = "streamer.io.security"


def frame(seq: int, stream: str) -> FrameMessage:
    now = time.time_ns()
    return FrameMessage(stream=stream, seq=seq, t_acq_ns=now, modality="US",
                        pixels=np.zeros((32, 32), np.uint8), spacing_mm=(0.3, 0.3), fps=50.0,
                        t_send_ns=now)


@pytest.fixture
def keys(tmp_path):
    """Key pairs made by `cardiostream keys generate`: the side-car's, an allowed client's
    (its public key in allowed/), a stranger's (not in allowed/)."""
    made = {}
    for name in ("sidecar", "client", "stranger"):
        assert main(["keys", "generate", "--out", str(tmp_path / "keys"), "--name", name]) == 0
        made[name] = tmp_path / "keys" / f"{name}.key_secret"
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    (allowed / "client.key").write_bytes((tmp_path / "keys" / "client.key").read_bytes())
    made["allowed"] = allowed
    made["sidecar_public"] = tmp_path / "keys" / "sidecar.key"
    return made


def server_curve(keys) -> CurveConfig:
    return CurveConfig(curve_secret_key=keys["sidecar"], allow_keys=keys["allowed"])


def client_curve(keys, who: str = "client") -> CurveConfig:
    return CurveConfig(curve_secret_key=keys[who], curve_server_key=keys["sidecar_public"])


@pytest.fixture
def curve_sidecar(keys):
    config = SideCarConfig(ingest=LOOPBACK, publish=LOOPBACK, lossless=True,
                           curve=server_curve(keys))
    with SideCar(config, build_analysis(AnalysisConfig(app="none"))) as sidecar:
        yield sidecar


def raw_socket(context: zmq.Context, kind: int, endpoint: str, curve: CurveConfig | None
               ) -> zmq.Socket:
    """A socket that connects without waiting for (or checking) the handshake."""
    from streamer.io.security import apply_client_keys

    socket = context.socket(kind)
    socket.linger = 0
    if curve is not None:
        apply_client_keys(socket, curve)
    if kind == zmq.SUB:
        socket.subscribe(b"")
    socket.connect(endpoint)
    return socket


def intrude(context: zmq.Context, sidecar, allowed: ResultSubscriber,
            curve: CurveConfig | None, stream: str, pushes: int) -> None:
    """``pushes`` senders and one subscriber with these keys (or none): what they send is
    queued on their side and never delivered (the allowed subscriber sees none of it), and
    the subscriber gets not even the hello."""
    senders = [raw_socket(context, zmq.PUSH, sidecar.ingest_endpoint, curve)
               for _ in range(pushes)]
    sub = raw_socket(context, zmq.SUB, sidecar.publish_endpoint, curve)
    for push in senders:
        push.send_multipart(encode(StartMessage(stream)))
        push.send_multipart(encode(frame(0, stream)))
    assert allowed.recv(timeout_s=2.0) is None
    assert not sub.poll(500)


def warnings_with(caplog, text: str) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name == SECURITY_LOG and r.levelno == logging.WARNING and text in r.getMessage()]


# -- keys generate ------------------------------------------------------------------------


def test_keys_generate_writes_a_public_file_and_a_0600_secret_file(tmp_path, capsys):
    out = tmp_path / "new" / "keys"
    assert main(["keys", "generate", "--out", str(out), "--name", "scanner-1"]) == 0
    event = json.loads(capsys.readouterr().out)
    public, secret = out / "scanner-1.key", out / "scanner-1.key_secret"
    assert event == {"event": "keys", "public": str(public), "secret": str(secret)}
    assert sorted(p.name for p in out.iterdir()) == ["scanner-1.key", "scanner-1.key_secret"]
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    assert "secret-key" not in public.read_text()
    pair = load_key_pair(secret)
    assert load_public_key(public) == pair[0] and zmq.curve_public(pair[1]) == pair[0]
    # never overwritten
    before = secret.read_bytes()
    assert main(["keys", "generate", "--out", str(out), "--name", "scanner-1"]) == 2
    assert "exists; not overwritten" in capsys.readouterr().err
    assert secret.read_bytes() == before


# -- served, refused ----------------------------------------------------------------------


def test_a_client_with_an_allowed_key_is_served(keys, curve_sidecar):
    with ResultSubscriber(SubscriberConfig(curve_sidecar.publish_endpoint,
                                           curve=client_curve(keys))) as subscriber, \
            FrameSender(SenderConfig(curve_sidecar.ingest_endpoint,
                                     curve=client_curve(keys))) as sender:
        sender.send(StartMessage("ok"))
        for seq in range(3):
            sender.send(frame(seq, "ok"))
        sender.send(EndMessage("ok", 3))
        messages = list(subscriber.iter_until_end("ok", timeout_s=20))
    assert [m.seq for m in messages if m.kind == "result"] == [0, 1, 2]
    assert curve_sidecar.curve.refused == {}


def test_a_client_with_an_unknown_key_gets_nothing_and_is_logged_once(keys, curve_sidecar,
                                                                      caplog):
    caplog.set_level(logging.WARNING, logger=SECURITY_LOG)
    stranger = client_curve(keys, "stranger")
    with pytest.raises(EndpointError, match="refused this client .* --allow-keys"):
        FrameSender(SenderConfig(curve_sidecar.ingest_endpoint, curve=stranger,
                                 connect_timeout_s=5))
    with pytest.raises(EndpointError, match="refused this client"):
        ResultSubscriber(SubscriberConfig(curve_sidecar.publish_endpoint, curve=stranger,
                                          connect_timeout_s=5))
    context = zmq.Context()
    try:
        with ResultSubscriber(SubscriberConfig(curve_sidecar.publish_endpoint,
                                               curve=client_curve(keys))) as allowed:
            intrude(context, curve_sidecar, allowed, stranger, "intruder", pushes=2)
            deadline = time.monotonic() + 20  # (counted by the ZAP thread)
            while sum(curve_sidecar.curve.refused.values()) < 5 and time.monotonic() < deadline:
                time.sleep(0.1)
    finally:
        context.destroy(linger=0)
    assert curve_sidecar.stats.received == 0
    refused = [what for what in curve_sidecar.curve.refused if "unknown public key" in what]
    assert len(refused) == 1 and curve_sidecar.curve.refused[refused[0]] >= 5
    key = load_key_pair(keys["stranger"])[0].decode()
    assert len(warnings_with(caplog, key)) == 1  # five refusals, one line


def test_a_client_without_curve_gets_nothing_and_is_logged_once(keys, curve_sidecar, caplog):
    caplog.set_level(logging.WARNING, logger=SECURITY_LOG)
    with pytest.raises(EndpointError, match="one side uses CURVE and the other not|"
                                            "does the side-car there want CURVE"):
        FrameSender(SenderConfig(curve_sidecar.ingest_endpoint, connect_timeout_s=3))
    context = zmq.Context()
    try:
        with ResultSubscriber(SubscriberConfig(curve_sidecar.publish_endpoint,
                                               curve=client_curve(keys))) as allowed:
            intrude(context, curve_sidecar, allowed, None, "plain", pushes=3)
            refused = curve_sidecar.curve.refused  # by what was refused: attempts
            ingest = f"a client whose handshake failed at {curve_sidecar.ingest_endpoint}"
            publish = f"a client whose handshake failed at {curve_sidecar.publish_endpoint}"
            deadline = time.monotonic() + 20  # (counted by another thread)
            while time.monotonic() < deadline and (
                    refused.get(ingest, 0) < 3 or publish not in refused):
                time.sleep(0.1)
    finally:
        context.destroy(linger=0)
    assert curve_sidecar.stats.received == 0
    assert refused.get(ingest, 0) >= 3 and publish in refused, refused  # three clients
    assert len(warnings_with(caplog, ingest + " (PULL")) == 1  # logged once
    assert len(warnings_with(caplog, publish + " (XPUB")) == 1


def test_serve_with_curve_serves_the_allowed_and_logs_a_refusal_once(keys, serve):
    """The real `cardiostream serve` with CURVE options: the allowed client is served, a
    stranger trying three times is refused, its stderr names the key once, and the
    stopped line counts the refusals."""
    sidecar = serve("--app", "none", "--lossless", "--curve-secret-key", str(keys["sidecar"]),
                    "--allow-keys", str(keys["allowed"]))
    for _ in range(3):
        with pytest.raises(EndpointError, match="refused this client"):
            FrameSender(SenderConfig(sidecar.ready["ingest"], connect_timeout_s=10,
                                     curve=client_curve(keys, "stranger")))
    with ResultSubscriber(SubscriberConfig(sidecar.ready["publish"],
                                           curve=client_curve(keys))) as subscriber, \
            FrameSender(SenderConfig(sidecar.ready["ingest"], curve=client_curve(keys))) as sender:
        sender.send(StartMessage("cli"))
        sender.send(frame(0, "cli"))
        sender.send(EndMessage("cli", 1))
        messages = list(subscriber.iter_until_end("cli", timeout_s=30))
    assert [m.seq for m in messages if m.kind == "result"] == [0]
    stopped = sidecar.stop()
    assert stopped["stats"]["refused"] == 3 and stopped["stats"]["received"] == 3
    key = load_key_pair(keys["stranger"])[0].decode()
    log = sidecar.log_tail(200)
    assert log.count(key) == 1 and "CURVE on: 1 client key(s) allowed (client.key)" in log


def test_replay_and_record_take_the_same_keys(keys, curve_sidecar, npz_clip, tmp_path):
    """`replay --curve-secret-key --curve-server-key` is served; `record --from` with the
    same keys records; without keys replay fails with the handshake named."""
    client = ["--curve-secret-key", str(keys["client"]),
              "--curve-server-key", str(keys["sidecar_public"])]
    out = tmp_path / "results.csrec"
    config = RecordConfig(endpoint=curve_sidecar.publish_endpoint, until_end=True,
                          curve=client_curve(keys))
    ready, stats = threading.Event(), RecordStats()
    recorder = threading.Thread(target=record, args=(config, out),
                                kwargs={"ready": ready, "stats": stats})
    recorder.start()
    assert ready.wait(10)
    assert main(["replay", str(npz_clip), "--to", curve_sidecar.ingest_endpoint,
                 "--max-rate", "--quiet", *client]) == 0
    recorder.join(30)
    assert stats.written["result"] == 12 and stats.written["end"] == 1
    assert sum(1 for _ in iter_records(out)) == 14
    assert main(["replay", str(npz_clip), "--to", curve_sidecar.ingest_endpoint,
                 "--max-rate", "--quiet", "--connect-timeout-s", "2"]) == 2


def test_record_listen_is_a_curve_server_too(keys, tmp_path):
    out = tmp_path / "frames.csrec"
    config = RecordConfig(endpoint=LOOPBACK, listen=True, max_messages=2,
                          curve=server_curve(keys))
    ready, stats = threading.Event(), RecordStats()
    recorder = threading.Thread(target=record, args=(config, out),
                                kwargs={"ready": ready, "stats": stats})
    recorder.start()
    assert ready.wait(10)
    with pytest.raises(EndpointError, match="refused this client"):
        FrameSender(SenderConfig(stats.endpoint, curve=client_curve(keys, "stranger"),
                                 connect_timeout_s=5))
    with FrameSender(SenderConfig(stats.endpoint, curve=client_curve(keys))) as sender:
        sender.send(StartMessage("rec"))
        sender.send(frame(0, "rec"))
    recorder.join(20)
    assert not recorder.is_alive() and dict(stats.written) == {"start": 1, "frame": 1}


# -- the loopback rule --------------------------------------------------------------------


@pytest.mark.parametrize("endpoint,loopback", [
    ("tcp://127.0.0.1:5555", True), ("tcp://127.0.0.1:*", True), ("tcp://localhost:5555", True),
    ("tcp://[::1]:5555", True), ("tcp://127.10.0.3:1", True), ("ipc:///tmp/x", True),
    ("inproc://x", True), ("tcp://0.0.0.0:5555", False), ("tcp://*:5555", False),
    ("tcp://eth0:5555", False), ("tcp://10.0.0.7:5555", False), ("tcp://[::]:5555", False),
    ("tcp://127.0.0.1.evil.org:1", False), ("pgm://127.0.0.1;239.1.1.1:5555", False),
])
def test_what_counts_as_loopback(endpoint, loopback):
    assert is_loopback(endpoint) is loopback


def test_a_non_loopback_bind_without_curve_is_refused_unless_insecure(caplog):
    analysis = build_analysis(AnalysisConfig(app="none"))
    refused = SideCar(SideCarConfig(ingest="tcp://0.0.0.0:*", publish=LOOPBACK), analysis)
    with pytest.raises(InsecureBindError, match=r"refusing to bind tcp://0.0.0.0:\* without "
                                                r"CURVE.*--insecure"):
        refused.start()
        refused.stop()  # (were it to start)
    caplog.set_level(logging.WARNING, logger=SECURITY_LOG)
    config = SideCarConfig(ingest="tcp://0.0.0.0:*", publish=LOOPBACK,
                           curve=CurveConfig(insecure=True))
    with SideCar(config, analysis) as sidecar:
        assert sidecar.ingest_endpoint.startswith("tcp://0.0.0.0:")
    assert len(warnings_with(caplog, "INSECURE: binding tcp://0.0.0.0:*")) == 1
    assert not warnings_with(caplog, LOOPBACK)  # loopback needs nothing


def test_serve_refuses_a_non_loopback_bind_in_one_line(capsys):
    served = subprocess.run([sys.executable, "-m", "streamer", "serve", "--app", "none",
                             "--ingest", "tcp://*:*", "--publish", LOOPBACK],
                            capture_output=True, text=True, timeout=120)
    assert served.returncode == 2 and served.stdout == ""
    assert "serve: error: refusing to bind tcp://*:* without CURVE" in served.stderr
    assert main(["serve", "--app", "none", "--insecure", "--curve-secret-key", "x.key_secret",
                 "--allow-keys", "."]) == 2
    assert "--insecure is for binding without CURVE" in capsys.readouterr().err


# -- bad key files ------------------------------------------------------------------------


def test_missing_or_garbled_key_files_are_named(keys, tmp_path):
    context = zmq.Context()
    garbled = tmp_path / "garbled.key_secret"
    garbled.write_text("curve\n    public-key = \"not a key\"\n    secret-key = \"nor this\"\n")
    garbage = tmp_path / "garbage.key_secret"
    garbage.write_bytes(b"\x00\xff binary rubbish")
    public_only = tmp_path / "keys" / "sidecar.key"
    cases = [
        (tmp_path / "missing.key_secret", keys["allowed"], "missing.key_secret: no such file"),
        (garbled, keys["allowed"], "garbled.key_secret: its public key is not a 40-character"),
        (garbage, keys["allowed"], "garbage.key_secret: not a key file"),
        (public_only, keys["allowed"], "sidecar.key: holds no secret key"),
        (keys["sidecar"], tmp_path / "nowhere", "--allow-keys .*nowhere: no such directory"),
        (keys["sidecar"], tmp_path / "empty", "empty: no public key files"),
    ]
    (tmp_path / "empty").mkdir()
    try:
        for secret, allowed, message in cases:
            with pytest.raises(KeyFileError, match=message):
                CurveServer(context, CurveConfig(curve_secret_key=secret, allow_keys=allowed))
        (keys["allowed"] / "bad.key").write_text("public-key = \"short\"\n")
        with pytest.raises(KeyFileError, match=r"--allow-keys .*bad.key: its public key"):
            CurveServer(context, server_curve(keys))
    finally:
        context.term()
    with pytest.raises(KeyFileError, match="--curve-server-key .*missing.key: no such file"):
        FrameSender(SenderConfig("tcp://127.0.0.1:9", curve=CurveConfig(
            curve_secret_key=keys["client"], curve_server_key=tmp_path / "missing.key")))
    with pytest.raises(ValueError, match="--allow-keys needs --curve-secret-key"):
        CurveConfig(allow_keys=keys["allowed"])
    with pytest.raises(ValueError, match="needs --curve-server-key"):
        FrameSender(SenderConfig("tcp://127.0.0.1:9",
                                 curve=CurveConfig(curve_secret_key=keys["client"])))
