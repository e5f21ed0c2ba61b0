"""``cardiostream view`` (issue 18): the page in a real headless Chromium while a clip is
replayed into a side-car, and without a browser: the loopback rule, a WebSocket client that
gets the state and a JPEG and leaves, the bounds of the reader's store, the overlay."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import cv2
import numpy as np
import pytest
import zmq

from streamer.io.protocol import (
    BeatMessage,
    EndMessage,
    FrameMessage,
    HelloMessage,
    ResultMessage,
    StartMessage,
    encode,
)
from streamer.io.security import CurveConfig, CurveServer, InsecureBindError, generate_keys
from streamer.io.sockets import EndpointError
from streamer.overlay import SEGMENT_RGB
from streamer.viewer import (
    Cursor,
    Viewer,
    ViewerConfig,
    ViewerStore,
    add_parser,
    check_host,
    is_loopback_host,
    render_jpeg,
    run_viewer,
    viewer_config,
)

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
SPACING_MM = (0.5, 0.5)


# -- messages as a side-car publishes them ----------------------------------------------


def frame(stream: str, seq: int, shape=(96, 128), dtype=np.uint8) -> FrameMessage:
    pixels = np.zeros(shape, dtype)
    pixels[20:76, 30:100] = 120 if dtype == np.uint8 else 3000
    return FrameMessage(stream=stream, seq=seq, t_acq_ns=10**18 + seq * 20_000_000,
                        modality="US", pixels=pixels, spacing_mm=SPACING_MM, fps=50.0)


def centreline_mm() -> list[list[float]]:
    """120 [row, col] mm: an inverted U across the frame (basal septum -> apex -> lateral)."""
    angle = np.linspace(np.pi, 0.0, 120)
    rows = 40.0 - 25.0 * np.sin(angle)
    cols = 32.0 + 20.0 * np.cos(angle)
    return np.stack([rows, cols], axis=1).round(3).tolist()


def result(stream: str, seq: int, gls: float | None = -10.0, **extra) -> ResultMessage:
    fields = {"points_mm": centreline_mm(), "gls_pct": gls, "measurable": gls is not None,
              "regional_pct": {"basal_septal": -9.0, "mid_septal": -11.0}, "beat": 0,
              "view": {"label": "a4c", "p": 0.97}, **extra}
    return ResultMessage(stream=stream, seq=seq, t_acq_ns=10**18 + seq * 20_000_000,
                         latency_ms={"decode": 0.1, "segment": 5.0, "flow": 9.0, "total": 15.0},
                         dropped=1, flags=["no_ed_yet"], app="echo", fields=fields)


class FakeSideCar:
    """An XPUB bound as a side-car binds it (hello to each new subscriber), publishing what
    the test hands it through the protocol's encoder. A thread owns the socket: XPUB sends
    its welcome message only while its owner uses it (as the side-car's publisher does)."""

    def __init__(self, curve: CurveConfig | None = None):
        self.context = zmq.Context()
        self.outbox: queue.Queue = queue.Queue()
        self.curve = CurveServer(self.context, curve).start() if curve is not None else None
        ready = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(ready,), daemon=True)
        self.thread.start()
        ready.wait(10)

    def _run(self, ready: threading.Event) -> None:
        socket = self.context.socket(zmq.XPUB)
        socket.setsockopt(zmq.XPUB_WELCOME_MSG, encode(HelloMessage(
            version="test", mode="live", apps={"echo": {}}))[0])
        if self.curve is not None:
            self.curve.secure(socket)
        socket.bind("tcp://127.0.0.1:*")
        self.endpoint = socket.getsockopt_string(zmq.LAST_ENDPOINT)
        ready.set()
        try:
            while True:
                while socket.poll(0):
                    socket.recv_multipart()  # (un)subscriptions
                try:
                    message = self.outbox.get(timeout=0.02)
                except queue.Empty:
                    continue
                if message is None:
                    return
                socket.send_multipart(encode(message))
        finally:
            socket.close(linger=0)

    def publish(self, *messages) -> None:
        for message in messages:
            self.outbox.put(message)

    def close(self) -> None:
        self.outbox.put(None)
        self.thread.join(10)
        if self.curve is not None:
            self.curve.stop()
        self.context.term()


@pytest.fixture
def fake_sidecar():
    sidecar = FakeSideCar()
    yield sidecar
    sidecar.close()


@pytest.fixture
def start_viewer():
    """``start_viewer(source, **config)``: a Viewer on a free loopback port; stopped after."""
    started: list[Viewer] = []

    def start(source: str, **config) -> Viewer:
        viewer = Viewer(ViewerConfig(source=source, port=0, **config))
        started.append(viewer)
        viewer.start()
        return viewer

    yield start
    for viewer in started:
        viewer.stop()


def get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read())


def wait_for(condition, timeout_s: float, what: str, interval_s: float = 0.05):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s:g} s waiting for {what}")


# -- the loopback rule and the command line ---------------------------------------------


def test_a_host_other_than_loopback_is_refused_unless_insecure(caplog):
    for host in ("127.0.0.1", "127.3.2.1", "localhost", "::1", "[::1]", "LOCALHOST"):
        assert is_loopback_host(host), host
        check_host(host, insecure=False)
    for host in ("0.0.0.0", "::", "192.168.1.20", "viewer.example.org", "", "127.0.0.1.nip.io"):
        assert not is_loopback_host(host), host
        with pytest.raises(InsecureBindError, match="--insecure"):
            check_host(host, insecure=False)
    # refused before anything connects or binds (no side-car at this endpoint)
    with pytest.raises(InsecureBindError, match="patient images"):
        Viewer(ViewerConfig(source="tcp://127.0.0.1:9", host="0.0.0.0")).start()
    with caplog.at_level("WARNING", logger="streamer.viewer"):
        check_host("0.0.0.0", insecure=True)
    assert "INSECURE: serving the viewer on 0.0.0.0" in caplog.text


def test_the_view_command_parses_its_options_and_reports_a_missing_sidecar(tmp_path):
    parser = argparse.ArgumentParser(prog="cardiostream")
    view = add_parser(parser.add_subparsers(dest="command", required=True))
    assert "--republish-frames" in view.description
    args = parser.parse_args(["view", "--from", "tcp://127.0.0.1:5556", "--port", "0",
                              "--max-fps", "5", "--insecure", "--host", "0.0.0.0"])
    config = viewer_config(args)
    assert (config.source, config.port, config.max_fps, config.host, config.insecure) == (
        "tcp://127.0.0.1:5556", 0, 5.0, "0.0.0.0", True)
    assert config.curve == CurveConfig()  # the web server's --insecure is not the socket's
    keyed = viewer_config(parser.parse_args([
        "view", "--from", "tcp://h:1", "--curve-secret-key", "me.key_secret",
        "--curve-server-key", "sidecar.key"]))
    assert keyed.curve == CurveConfig(curve_secret_key=Path("me.key_secret"),
                                      curve_server_key=Path("sidecar.key"))
    with pytest.raises(ValueError, match="--max-fps"):
        ViewerConfig(source="tcp://127.0.0.1:1", max_fps=0)
    # no side-car there: a clear error after the connect timeout, nothing left running
    started = time.monotonic()
    with pytest.raises(EndpointError, match="is the side-car running there"):
        run_viewer(ViewerConfig(source="tcp://127.0.0.1:9", port=0, connect_timeout_s=0.3))
    assert time.monotonic() - started < 5
    assert not [t for t in threading.enumerate() if t.name.startswith("viewer-")]


def test_run_viewer_prints_its_url_serves_and_stops_cleanly_on_sigint(fake_sidecar):
    """The CLI's path (add_parser -> cmd_view -> run_viewer) in a child process: the
    "viewing" line with the URL, the page served, SIGINT -> "stopped" and exit 0."""
    program = ("import argparse, sys; from streamer.viewer import add_parser; "
               "p = argparse.ArgumentParser(); add_parser(p.add_subparsers(dest='command')); "
               "a = p.parse_args(sys.argv[1:]); sys.exit(a.func(a))")
    child = subprocess.Popen([sys.executable, "-c", program, "view", "--from",
                              fake_sidecar.endpoint, "--port", "0"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        viewing = json.loads(child.stdout.readline())
        assert viewing["event"] == "viewing" and viewing["source"] == fake_sidecar.endpoint
        with urllib.request.urlopen(viewing["url"], timeout=5) as page:
            assert b"cardiostreamViewer" in page.read()
        child.send_signal(signal.SIGINT)
        out, err = child.communicate(timeout=20)
        assert child.returncode == 0, err
        assert json.loads(out.splitlines()[-1])["event"] == "stopped"
    finally:
        if child.poll() is None:
            child.kill()
            child.communicate()


# -- the reader's store ------------------------------------------------------------------


def test_the_store_stays_bounded_under_many_streams_and_long_runs():
    config = ViewerConfig(source="tcp://127.0.0.1:1", max_streams=4, max_points=50,
                          history_s=0.5, beats_kept=3, frame_memory_mb=1.0)
    store = ViewerStore(config)
    big = (256, 256)  # 64 KiB a frame: the 1 MiB budget holds 4 per stream (of 4 streams)
    for i in range(40):
        name = f"s{i}"
        store.add(StartMessage(stream=name, meta={"app": {"name": "echo"}}))
        for seq in range(60):
            store.add(frame(name, seq, big))
            store.add(result(name, seq))
            store.add(BeatMessage(stream=name, beat=seq, fields={"ed_seq": seq, "es_seq": seq,
                                                                 "peak_gls_pct": -18.0}))
        store.add(EndMessage(stream=name, n_frames=60, meta={"processed": 60, "dropped": 0}))
    sizes = store.sizes()
    assert sizes["streams"] == 4 and store.forgotten_streams == 36
    assert sizes["curve"] <= 26  # 0.5 s at 50 fps (history_s bounds before max_points)
    assert sizes["beats"] == 3 and sizes["results"] <= 16 and sizes["latencies"] <= 64
    assert sizes["frames"] <= 4 and sizes["frame_bytes"] <= 2**20
    stats = store.stats()
    assert list(stats["streams"]) == ["s36", "s37", "s38", "s39"]  # the most recent kept
    assert stats["messages"]["result"] == 2400 and stats["streams"]["s39"]["dropped"] == 60

    # max_points bounds a fast stream: hundreds of results a second, one second kept
    fast = ViewerStore(ViewerConfig(source="tcp://127.0.0.1:1", max_points=100, history_s=30))
    for seq in range(5000):
        message = result("fast", seq)
        message.t_acq_ns = 10**18 + seq * 2_000_000  # 500 results a second
        fast.add(message)
    assert fast.sizes()["curve"] == 100


def test_a_page_gets_the_whole_curve_then_only_new_points_and_the_frame_of_its_result():
    store = ViewerStore(ViewerConfig(source="tcp://127.0.0.1:1"))
    cursor = Cursor()
    assert store.update_for(cursor).state["stream"] is None  # nothing yet
    store.add(StartMessage(stream="a", meta={"app": {"name": "echo"}}))
    for seq in range(5):
        store.add(frame("a", seq))
        store.add(result("a", seq, gls=None if seq == 2 else -seq))
    store.add(frame("a", 5))  # republished before its result
    first = store.update_for(cursor)
    assert first.state["curve"]["reset"] and len(first.state["curve"]["points"]) == 5
    assert first.state["curve"]["points"][2][1] is None  # not measurable: a gap
    # frame 5's result is not there yet: frame 4, the latest result's, with its overlay
    assert first.frame.seq == 4 and first.result.seq == 4 and first.state["frame"]["overlay"]
    assert store.update_for(cursor) is None  # nothing changed, nothing sent
    store.add(result("a", 5))
    second = store.update_for(cursor)
    assert not second.state["curve"]["reset"]
    assert [p[2] for p in second.state["curve"]["points"]] == [5]
    assert second.frame.seq == 5 and second.state["dropped"] == 6
    store.add(StartMessage(stream="a"))  # restarted: the page replaces its curve
    assert store.update_for(cursor).state["curve"] == {"reset": True, "epoch": 2, "points": []}
    # results stop coming: the newest frame is shown alone
    store.add(frame("a", 7))
    later = store.update_for(cursor, now=time.monotonic() + 5)
    assert later.frame.seq == 7 and later.result is None


# -- the overlay --------------------------------------------------------------------------


def test_the_jpeg_carries_the_centreline_in_segment_colours_and_mr_contours():
    jpeg = render_jpeg(frame("a", 0), result("a", 0), max_side_px=512)
    image = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    assert image.shape == (192, 256, 3)  # a small frame enlarged 2x
    # each segment's colour is somewhere on the image (BGR), within JPEG's error
    for rgb in SEGMENT_RGB:
        distance = np.abs(image.astype(int) - np.array(rgb[::-1])).sum(axis=2)
        assert (distance < 90).sum() >= 5, rgb
    plain = cv2.imdecode(np.frombuffer(render_jpeg(frame("a", 0), None), np.uint8),
                         cv2.IMREAD_UNCHANGED)
    assert plain.ndim == 2  # greyscale stays greyscale without an overlay
    # 16-bit MR with contours, a large frame scaled down to 512 px
    mr = frame("m", 0, shape=(1024, 768), dtype=np.uint16)
    mr.modality = "MR"
    ring = [[200 + 60 * np.sin(a), 150 + 60 * np.cos(a)] for a in np.linspace(0, 6.28, 48)]
    contours = ResultMessage(stream="m", seq=0, t_acq_ns=0, latency_ms={}, app="mr-sax",
                             fields={"endo_mm": ring, "epi_mm": [[r + 5, c] for r, c in ring]})
    image = cv2.imdecode(np.frombuffer(render_jpeg(mr, contours), np.uint8), cv2.IMREAD_COLOR)
    assert image.shape == (512, 384, 3)
    reddish = (image[..., 2].astype(int) - image[..., 1] > 80).sum()
    assert reddish > 50


# -- the web server, without a browser -----------------------------------------------------


def test_a_websocket_client_gets_the_state_and_a_jpeg_and_its_leaving_frees_it(
        fake_sidecar, start_viewer):
    aiohttp = pytest.importorskip("aiohttp", reason="the viewer's web server needs aiohttp")
    viewer = start_viewer(fake_sidecar.endpoint, max_fps=20)
    url = viewer.url
    assert url.startswith("http://127.0.0.1:")
    fake_sidecar.publish(StartMessage(stream="echo-1", meta={"app": {"name": "echo"}}))
    for seq in range(3):
        fake_sidecar.publish(frame("echo-1", seq), result("echo-1", seq))
    fake_sidecar.publish(BeatMessage(stream="echo-1", beat=0, fields={
        "ed_seq": 0, "es_seq": 2, "peak_gls_pct": -18.5, "quality": "good"}))
    wait_for(lambda: get_json(url + "stats")["messages"].get("beat"), 10, "the beat")

    async def client() -> tuple[dict, bytes]:
        async with aiohttp.ClientSession() as session:
            page = await session.get(url)
            html = await page.text()
            assert page.status == 200 and "cardiostreamViewer" in html
            assert "script-src 'sha256-" in page.headers["Content-Security-Policy"]
            assert "http://" not in html and "https://" not in html  # nothing fetched elsewhere
            # another site's page in the same browser may not open the WebSocket
            with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                await session.ws_connect(url + "ws", origin="http://evil.example")
            assert refused.value.status == 403
            # a page of a rebound host name is not served (DNS rebinding)
            rebound = await session.get(url, headers={"Host": "evil.example:80"})
            assert rebound.status == 403
            async with session.ws_connect(url + "ws", origin=url.rstrip("/")) as ws:
                state = json.loads((await ws.receive(timeout=10)).data)
                binary = await ws.receive(timeout=10)
                assert binary.type == aiohttp.WSMsgType.BINARY
                assert get_json(url + "stats")["clients"] == 1
                return state, binary.data

    state, jpeg = asyncio.run(client())
    assert state["stream"] == "echo-1" and state["app"] == "echo" and state["seq"] == 2
    assert state["value"] == -10.0 and state["flags"] == ["no_ed_yet"] and state["dropped"] == 3
    assert [p[2] for p in state["curve"]["points"]] == [0, 1, 2] and state["curve"]["reset"]
    assert state["latency_ms"]["segment"] == 5.0 and state["latency_median_ms"]["total"] == 15.0
    assert state["beats"][0]["peak_pct"] == -18.5 and state["regional"]["mid_septal"] == -11.0
    assert state["frame"] == {"seq": 2, "overlay": True, "shape": [96, 128]}
    image = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    assert image is not None and image.shape == (192, 256, 3)
    wait_for(lambda: get_json(url + "stats")["clients"] == 0, 5, "clients back to 0")
    stats = get_json(url + "stats")
    assert stats["messages"] == {"hello": 1, "start": 1, "frame": 3, "result": 3, "beat": 1}
    assert stats["streams"]["echo-1"]["curve_points"] == 3


def test_stopping_the_viewer_closes_open_pages_and_its_threads(fake_sidecar):
    aiohttp = pytest.importorskip("aiohttp", reason="the viewer's web server needs aiohttp")
    viewer = Viewer(ViewerConfig(source=fake_sidecar.endpoint, port=0))
    url = viewer.start()
    try:
        async def client() -> int:
            async with aiohttp.ClientSession() as session, session.ws_connect(url + "ws") as ws:
                await ws.receive(timeout=5)  # the first state (no stream yet)
                threading.Thread(target=viewer.stop).start()
                closing = await ws.receive(timeout=10)
                assert closing.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
                return ws.close_code

        assert asyncio.run(client()) == aiohttp.WSCloseCode.GOING_AWAY
    finally:
        viewer.stop()
    wait_for(lambda: not [t for t in threading.enumerate() if t.name.startswith("viewer-")],
             10, "the viewer's threads to end")


def test_the_viewer_subscribes_to_a_sidecar_with_curve(tmp_path, start_viewer):
    """With the side-car's CURVE keys the viewer is let in; without them it is told why."""
    _, sidecar_secret = generate_keys(tmp_path / "sidecar", "sidecar")
    _, viewer_secret = generate_keys(tmp_path / "allowed", "viewer")
    sidecar = FakeSideCar(CurveConfig(curve_secret_key=sidecar_secret,
                                      allow_keys=tmp_path / "allowed"))
    try:
        keys = CurveConfig(curve_secret_key=viewer_secret,
                           curve_server_key=tmp_path / "sidecar" / "sidecar.key")
        viewer = start_viewer(sidecar.endpoint, curve=keys)
        sidecar.publish(result("echo-1", 0))
        wait_for(lambda: get_json(viewer.url + "stats")["messages"].get("result"), 10,
                 "a result over CURVE")
        with pytest.raises(EndpointError, match="CURVE"):
            Viewer(ViewerConfig(source=sidecar.endpoint, port=0, connect_timeout_s=5)).start()
    finally:
        sidecar.close()


# -- the page in a real browser ------------------------------------------------------------


def chromium_driver(profile: Path):
    """Headless Debian Chromium through selenium with the system chromedriver (no driver
    download); skips where any of them is missing."""
    pytest.importorskip("aiohttp", reason="the viewer's web server needs aiohttp")
    webdriver = pytest.importorskip("selenium.webdriver",
                                    reason="the browser test drives Chromium with selenium")
    from selenium.webdriver.chrome.service import Service

    for path in (CHROMIUM, CHROMEDRIVER):
        if shutil.which(path) is None:
            pytest.skip(f"{path} is not installed (Debian: apt-get install chromium "
                        "chromium-driver)")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
                 "--window-size=1280,1100", f"--user-data-dir={profile}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})  # the page's console
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)


def test_the_page_in_chromium_shows_frames_and_a_growing_gls_curve(serve, tmp_path):
    from streamer.bench.latency import PHANTOM_SEED, ArrayClip, phantom_clip
    from streamer.replay import ReplayConfig, replay_to

    driver = chromium_driver(tmp_path / "chromium-profile")
    viewer = None
    try:
        frames, spacing_mm, fps = phantom_clip(192, 60, PHANTOM_SEED)  # held-out A4C phantom
        sidecar = serve("--republish-frames", "--lossless")
        viewer = Viewer(ViewerConfig(source=sidecar.ready["publish"], port=0))
        url = viewer.start()
        driver.get(url)
        read = ("const v = window.cardiostreamViewer; "
                "return v && [v.connected, v.framesShown, v.curvePoints];")
        wait_for(lambda: (driver.execute_script(read) or [False])[0], 20, "the page's WebSocket")
        failure: list[BaseException] = []

        def send() -> None:  # two loops of the clip at 25 fps: about 5 s of strain
            try:
                replay_to(ArrayClip(frames, spacing_mm, fps, "phantom"), sidecar.ready["ingest"],
                          ReplayConfig(stream="echo-viewer", view="a4c", loop=2, fps=25.0))
            except BaseException as exc:
                failure.append(exc)

        sender = threading.Thread(target=send, name="replay", daemon=True)
        sender.start()
        seen: list[tuple[int, int]] = []  # (framesShown, curvePoints) whenever it changed

        def grown() -> bool:
            _, shown, points = driver.execute_script(read)
            if not seen or seen[-1] != (shown, points):
                seen.append((shown, points))
            growing = [p for _, p in seen if p > 0]
            return shown > 0 and len(set(growing)) >= 2 and growing[-1] > growing[0]

        wait_for(grown, 90, "frames on the page and a growing GLS curve", interval_s=0.1)
        sender.join(120)
        assert not failure, failure
        wait_for(lambda: get_json(url + "stats")["streams"]["echo-viewer"]["ended"], 60,
                 "the stream's end")
        time.sleep(0.5)  # the last update reaches the page
        _, shown, points = driver.execute_script(read)
        assert shown >= 2 and points >= 20, (shown, points, seen)
        assert driver.execute_script("return document.body.dataset.framesShown") == str(shown)
        image = driver.execute_script(
            "const i = document.getElementById('frame'); return [i.naturalWidth, i.src];")
        assert image[0] == 384 and image[1].startswith("blob:")  # 192 px enlarged 2x
        screenshot = tmp_path / "viewer.png"
        assert driver.save_screenshot(str(screenshot)) and screenshot.stat().st_size > 10_000
        if os.environ.get("CARDIOSTREAM_SCREENSHOT_DIR"):
            folder = Path(os.environ["CARDIOSTREAM_SCREENSHOT_DIR"])
            folder.mkdir(parents=True, exist_ok=True)
            shutil.copy(screenshot, folder / "viewer.png")
        stats = get_json(url + "stats")
        assert stats["clients"] == 1 and stats["streams"]["echo-viewer"]["results"] == 120
        # no script error and no Content-Security-Policy violation on the page
        assert not [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        # a closed tab frees its WebSocket (the browser itself stays open in another tab)
        viewer_tab = driver.current_window_handle
        driver.switch_to.new_window("tab")
        driver.switch_to.window(viewer_tab)
        driver.close()
        driver.switch_to.window(driver.window_handles[0])
        wait_for(lambda: get_json(url + "stats")["clients"] == 0, 10, "clients back to 0")
        sidecar.stop()
    finally:
        driver.quit()
        if viewer is not None:
            viewer.stop()
