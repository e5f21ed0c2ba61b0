"""``cardiostream view``: a live web page of a side-car's results (issue 18).

    cardiostream view --from tcp://HOST:PORT [--host 127.0.0.1] [--port 8080]

The viewer subscribes to a side-car's publish endpoint (a SUB socket through
:class:`~streamer.io.sockets.ResultSubscriber`: it waits for the side-car's ``hello`` and
speaks CURVE when given keys) and serves one self-contained page (inline CSS and
JavaScript, no CDN, no web font: hospital networks often have no internet) that shows, per
stream:

* the current frame as a JPEG with the analysis drawn on it server-side: echo's tracked
  centreline (``points_mm``, six segments of 20 points, one colour each, the colours of the
  regional table), the MR short-axis app's ``endo_mm`` / ``epi_mm`` contours. Frames reach
  the viewer only when the side-car runs with ``serve --republish-frames``; without it the
  page shows the curves, latency, drops and flags alone;
* the live strain curve (echo: ``gls_pct``; MR short axis: ``circumferential_strain_pct``)
  against acquisition time, with the beats' end-diastole (ED) and end-systole (ES) marked;
* the latest result's per-stage latency (bars) and the median of the last 64 results, the
  frames dropped so far, the latest flags, the regional values, the last beats' peak strain
  and quality, and a stream selector when several streams are open.

``window.cardiostreamViewer`` (mirrored in ``document.body.dataset``) counts what the page
actually rendered: ``framesShown`` (JPEGs loaded into the ``<img>``) and ``curvePoints``
(points drawn in the last plot of the curve).

Threads
-------
* **reader** (``viewer-reader``): owns the SUB socket; reads, decodes and stores references
  in :class:`ViewerStore` under a short lock, nothing else (no image work, no waiting on
  the web side), so it keeps up with hundreds of results a second. The subscriber's
  receive queue is unbounded on the viewer's side (``RCVHWM`` 0), so even a stalled viewer
  never makes the side-car's publisher wait (``--subscriber-stall-s``); the reader's
  promptness keeps that queue short.
* **web** (``viewer-web``): an asyncio loop running aiohttp: ``GET /`` (the page),
  ``GET /ws`` (a WebSocket per open page), ``GET /stats`` (JSON: ``clients``,
  ``messages`` by kind, ``streams``). Per WebSocket one task pushes at most ``max_fps``
  updates a second, only when something changed: a JSON text message with the stream's
  state (the curve's new points only, or the whole curve on connect / restart) and, when
  there is a new frame to show, one binary message, its JPEG. JPEG encoding (downscale to
  at most ``max_side_px``, overlay, ``cv2.imencode``) runs in ``asyncio.to_thread``; one
  JPEG per stream is cached for pages that watch the same stream. A closed WebSocket ends
  its task and frees its state.

Bounds
------
Everything the viewer holds is bounded: at most ``max_streams`` streams (16; the least
recently active is forgotten), per stream the curve's last ``history_s`` seconds and at most
``max_points`` points, the last 16 results (to match a frame to its result), the latency of
the last 64, the last ``beats_kept`` beat summaries, and frames up to ``frame_memory_mb`` /
``max_streams`` bytes (at most 64, at least the newest two) so that a frame can wait for
its result (a side-car republishes a frame when it arrives, its result comes later);
beats' and results' array parts other than those are not kept. Per page: one cursor and at
most one message being sent.

Security
--------
The page shows patient images: as the side-car's sockets, the web server binds only a
loopback address (127.0.0.0/8, ``localhost``, ``::1``) unless ``insecure`` (then with a
warning ``INSECURE: ...``). Requests must name a loopback host (``Host`` header) while
bound to loopback (DNS rebinding), and a browser's WebSocket must come from the viewer's
own page (``Origin``), so another web site open in the same browser cannot read the frames.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import hashlib
import ipaddress
import json
import logging
import signal
import statistics
import sys
import threading
import time
from collections import Counter, OrderedDict, deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TextIO

import cv2
import numpy as np
import orjson

from streamer.io.protocol import (
    BeatMessage,
    EndMessage,
    ErrorMessage,
    FrameMessage,
    HelloMessage,
    Message,
    ProtocolError,
    ResultMessage,
    StartMessage,
)
from streamer.io.security import CurveConfig, InsecureBindError
from streamer.io.sockets import ResultSubscriber, SubscriberConfig
from streamer.overlay import (
    ENDO_RGB,
    EPI_RGB,
    SEGMENT_RGB,
    draw_overlay,
    has_overlay,
    hex_colour,
)
from streamer.vocab import A4C_SEGMENTS

if TYPE_CHECKING:
    from aiohttp import web

log = logging.getLogger(__name__)

__all__ = ["ViewerConfig", "ViewerStore", "Viewer", "check_host", "render_jpeg", "run_viewer",
           "add_parser", "cmd_view", "PAGE_HTML"]

#: the per-frame value plotted as the curve, by the field that carries it (the first present)
CURVE_FIELDS = (("gls_pct", "GLS"), ("circumferential_strain_pct", "circumferential strain"))
#: the regional values shown in the table (echo's six A4C segments; MR: per AHA segment)
REGIONAL_FIELDS = ("regional_pct", "segment_circumferential_strain_pct")
#: the beat's peak value shown, by app field
PEAK_FIELDS = ("peak_gls_pct", "peak_circumferential_strain_pct")
#: per stream: results kept to match a frame to its result, latencies for the medians
RESULTS_KEPT, LATENCIES_KEPT, FRAMES_KEPT = 16, 64, 64
#: the newest frame is shown without waiting for its result once the stream's latest result
#: is this old (results stopped, or come for no frame the viewer holds)
RESULT_WAIT_S = 1.0
JPEG_QUALITY = 80


@dataclass(frozen=True)
class ViewerConfig:
    """What ``cardiostream view`` watches, where it serves the page, and its bounds."""

    #: the side-car's publish endpoint (``serve --publish``), e.g. ``tcp://127.0.0.1:5556``
    source: str
    host: str = "127.0.0.1"
    #: 0: a free port (the bound URL is what :meth:`Viewer.start` returns)
    port: int = 8080
    #: this client's CURVE keys when the side-car uses CURVE
    curve: CurveConfig = CurveConfig()
    #: serve on a non-loopback host (plain HTTP: anyone who reaches it sees the images)
    insecure: bool = False
    #: the curve keeps this many seconds per stream ...
    history_s: float = 30.0
    #: ... and at most this many points
    max_points: int = 3000
    #: updates pushed to each page per second at most
    max_fps: float = 15.0
    max_streams: int = 16
    beats_kept: int = 16
    #: frames held so that each can meet its result, all streams together
    frame_memory_mb: float = 256.0
    #: the JPEG's longer side at most (smaller frames are enlarged up to 2x for the overlay)
    max_side_px: int = 512
    #: how long to wait for the side-car's hello at start
    connect_timeout_s: float = 10.0

    def __post_init__(self) -> None:
        checks = ((0 <= self.port <= 65535, f"--port must be 0..65535, got {self.port}"),
                  (self.max_fps > 0, f"--max-fps must be positive, got {self.max_fps}"),
                  (self.history_s > 0, f"history_s must be positive, got {self.history_s}"),
                  (self.max_points >= 2, f"max_points must be >= 2, got {self.max_points}"),
                  (self.max_streams >= 1, f"max_streams must be >= 1, got {self.max_streams}"),
                  (self.beats_kept >= 1, f"beats_kept must be >= 1, got {self.beats_kept}"),
                  (self.frame_memory_mb > 0,
                   f"frame_memory_mb must be positive, got {self.frame_memory_mb}"),
                  (self.max_side_px >= 64, f"max_side_px must be >= 64, got {self.max_side_px}"),
                  (self.connect_timeout_s > 0,
                   f"--connect-timeout-s must be positive, got {self.connect_timeout_s}"))
        for ok, message in checks:
            if not ok:
                raise ValueError(message)


# --------------------------------------------------------------------------
# the loopback rule for the web server


def is_loopback_host(host: str) -> bool:
    """True for ``localhost``, ``::1`` and 127.0.0.0/8 (with or without IPv6 brackets)."""
    host = host.strip().strip("[]").lower().rstrip(".")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_host(host: str, insecure: bool) -> None:
    """The side-car's loopback rule, for the page: a host other than a loopback one is
    refused (:class:`~streamer.io.security.InsecureBindError`) unless ``insecure``, which
    logs a warning instead."""
    if is_loopback_host(host):
        return
    if not insecure:
        raise InsecureBindError(
            f"refusing to serve the viewer on {host!r}: it is not a loopback address, and the "
            "page shows patient images in plain HTTP to anyone who can reach it. Use the "
            "default --host 127.0.0.1 (and an SSH tunnel from elsewhere), or --insecure to "
            "serve it there anyway")
    log.warning("INSECURE: serving the viewer on %s in plain HTTP without authentication "
                "(--insecure): anyone who can reach it sees the patient images", host)


# --------------------------------------------------------------------------
# the store: written by the reader thread, read by the web side


@dataclass
class _Stream:
    """What the viewer keeps of one stream (bounded; see the module docstring)."""

    name: str
    order: int  # creation order: "follow the newest" picks the largest
    version: int = 0  # bumped by every message of the stream
    epoch: int = 0  # bumped by a start: the page then replaces its curve
    app: str | None = None
    modality: str | None = None
    started: bool = False
    ended: bool = False
    end: dict | None = None
    frames: deque = field(default_factory=deque)  # (FrameMessage, nbytes)
    frame_bytes: int = 0
    frames_seen: int = 0
    results: deque = field(default_factory=lambda: deque(maxlen=RESULTS_KEPT))
    result_t: float = 0.0  # time.monotonic() of the latest result
    results_seen: int = 0
    latencies: deque = field(default_factory=lambda: deque(maxlen=LATENCIES_KEPT))
    curve: deque = field(default_factory=deque)  # [t_s, value or None, seq]
    curve_total: int = 0  # points ever appended in this epoch
    curve_name: str | None = None
    t0_ns: int | None = None
    dropped: int = 0
    beats: deque = field(default_factory=deque)
    beats_seen: int = 0
    error: dict | None = None

    def reset(self) -> None:
        self.epoch += 1
        self.ended, self.end, self.error = False, None, None
        self.frames.clear()
        self.frame_bytes = 0
        self.results.clear()
        self.latencies.clear()
        self.curve.clear()
        self.curve_total, self.t0_ns, self.dropped = 0, None, 0
        self.beats.clear()


@dataclass
class Cursor:
    """What one page has been sent (owned by that page's push task)."""

    #: the stream the user chose (None: follow the newest stream)
    pinned: str | None = None
    stream: str | None = None
    epoch: int = -1
    curve_sent: int = 0
    seen: tuple = ()
    frame_key: tuple | None = None


@dataclass
class Update:
    """One push to a page: the state (JSON-able) and, maybe, the frame to draw."""

    state: dict
    frame: FrameMessage | None = None
    result: ResultMessage | None = None
    frame_key: tuple | None = None


class ViewerStore:
    """The viewer's bounded memory of a side-car's messages.

    :meth:`add` is called by the reader thread for every message and only stores
    references and counts under a short lock; :meth:`update_for` (the web side) takes what a
    page has not been sent yet."""

    def __init__(self, config: ViewerConfig):
        self.config = config
        self._lock = threading.Lock()
        self._streams: OrderedDict[str, _Stream] = OrderedDict()
        self._created = 0
        self.list_version = 0  # bumped when streams appear, go, start or end
        self.messages: Counter[str] = Counter()
        self.forgotten_streams = 0
        self.hello: dict | None = None
        self.last_error: dict | None = None
        self._frame_budget = max(1, int(config.frame_memory_mb * 2**20 / config.max_streams))

    # -- the reader thread's side ------------------------------------------------------

    def add(self, message: Message, now: float | None = None) -> None:
        """Store one message (the reader thread; cheap, no image work)."""
        now = time.monotonic() if now is None else now
        kind = message.kind
        with self._lock:
            self.messages[kind] += 1
            if isinstance(message, FrameMessage):
                self._add_frame(self._stream(message.stream), message)
            elif isinstance(message, ResultMessage):
                self._add_result(self._stream(message.stream), message, now)
            elif isinstance(message, BeatMessage):
                if kind == "beat":  # wall_motion is per stack, not per stream: counted
                    self._add_beat(self._stream(message.stream), message)
            elif isinstance(message, StartMessage):
                stream = self._stream(message.stream)
                stream.reset()
                stream.started = True
                app = message.meta.get("app")
                stream.app = app.get("name") if isinstance(app, dict) else stream.app
                stream.modality = message.meta.get("modality") or stream.modality
                stream.version += 1
                self.list_version += 1
            elif isinstance(message, EndMessage):
                stream = self._stream(message.stream)
                stream.ended = True
                stream.end = {k: message.meta.get(k) for k in (
                    "processed", "dropped", "stale", "errors", "reason") if k in message.meta}
                stream.version += 1
                self.list_version += 1
            elif isinstance(message, ErrorMessage):
                error = {"code": message.code, "message": message.message[:300],
                         "seq": message.seq}
                self.last_error = error
                if message.stream is not None and message.stream in self._streams:
                    stream = self._streams[message.stream]
                    stream.error = error
                    stream.version += 1
            elif isinstance(message, HelloMessage):
                self.hello = {"version": message.version, "mode": message.mode,
                              "apps": sorted(message.apps)}
                self.list_version += 1

    def count_invalid(self) -> None:
        with self._lock:
            self.messages["invalid"] += 1

    def _stream(self, name: str) -> _Stream:
        stream = self._streams.get(name)
        if stream is None:
            self._created += 1
            stream = self._streams[name] = _Stream(name, self._created)
            self.list_version += 1
            while len(self._streams) > self.config.max_streams:
                self._streams.popitem(last=False)
                self.forgotten_streams += 1
        else:
            self._streams.move_to_end(name)
        return stream

    def _add_frame(self, stream: _Stream, frame: FrameMessage) -> None:
        nbytes = frame.pixels.nbytes
        stream.frames.append((frame, nbytes))
        stream.frame_bytes += nbytes
        while len(stream.frames) > 2 and (len(stream.frames) > FRAMES_KEPT
                                          or stream.frame_bytes > self._frame_budget):
            stream.frame_bytes -= stream.frames.popleft()[1]
        stream.frames_seen += 1
        stream.modality = frame.modality
        stream.version += 1

    def _add_result(self, stream: _Stream, result: ResultMessage, now: float) -> None:
        stream.results.append(result)
        stream.result_t = now
        stream.results_seen += 1
        stream.latencies.append(result.latency_ms)
        stream.dropped += result.dropped
        stream.app = result.app or stream.app
        fields = result.fields
        for key, name in CURVE_FIELDS:
            if key in fields:
                value = fields[key]
                if stream.t0_ns is None:
                    stream.t0_ns = result.t_acq_ns
                t_s = (result.t_acq_ns - stream.t0_ns) / 1e9
                stream.curve.append((t_s, value if isinstance(value, (int, float)) else None,
                                     result.seq))
                stream.curve_total += 1
                stream.curve_name = name
                curve, oldest = stream.curve, t_s - self.config.history_s
                while len(curve) > self.config.max_points or curve[0][0] < oldest:
                    curve.popleft()
                break
        stream.version += 1

    def _add_beat(self, stream: _Stream, beat: BeatMessage) -> None:
        fields = beat.fields
        peak = next((fields[k] for k in PEAK_FIELDS if k in fields), None)
        stream.beats.append({
            "beat": beat.beat, "ed_seq": fields.get("ed_seq"), "es_seq": fields.get("es_seq"),
            "peak_pct": peak if isinstance(peak, (int, float)) else None,
            "quality": fields.get("quality"), "duration_s": fields.get("duration_s"),
            "flags": fields.get("flags") or []})
        while len(stream.beats) > self.config.beats_kept:
            stream.beats.popleft()
        stream.beats_seen += 1
        stream.version += 1

    # -- the web side --------------------------------------------------------------------

    def update_for(self, cursor: Cursor, now: float | None = None) -> Update | None:
        """What ``cursor``'s page has not been sent yet (None: nothing changed). Copies
        references under the lock; the JSON is built outside it."""
        now = time.monotonic() if now is None else now
        with self._lock:
            stream = self._streams.get(cursor.pinned) if cursor.pinned else None
            if stream is None and self._streams:  # follow the newest stream
                stream = max(self._streams.values(), key=lambda s: s.order)
            fresh = stream is not None and now - stream.result_t < RESULT_WAIT_S
            key = (self.list_version, cursor.pinned, stream and stream.name,
                   stream and stream.version, stream and stream.epoch, fresh)
            if key == cursor.seen:
                return None
            cursor.seen = key
            state: dict[str, Any] = {
                "type": "state", "hello": self.hello, "messages": dict(self.messages),
                "pinned": cursor.pinned,
                "streams": [{"name": s.name, "app": s.app, "ended": s.ended,
                             "results": s.results_seen, "frames": s.frames_seen}
                            for s in sorted(self._streams.values(), key=lambda s: s.order)]}
            if stream is None:
                return Update({**state, "stream": None})
            reset = (stream.name != cursor.stream or stream.epoch != cursor.epoch
                     or stream.curve_total - cursor.curve_sent > len(stream.curve))
            new = len(stream.curve) if reset else stream.curve_total - cursor.curve_sent
            points = list(stream.curve)[len(stream.curve) - new:] if new else []
            cursor.stream, cursor.epoch = stream.name, stream.epoch
            cursor.curve_sent = stream.curve_total
            result = stream.results[-1] if stream.results else None
            latencies = list(stream.latencies)
            frame, shown = self._pick_frame(stream, fresh)
            state.update(
                stream=stream.name, epoch=stream.epoch, app=stream.app,
                modality=stream.modality, started=stream.started, ended=stream.ended,
                end=stream.end, error=stream.error, dropped=stream.dropped,
                frames=stream.frames_seen, results=stream.results_seen,
                beats=list(stream.beats), beats_seen=stream.beats_seen,
                curve_name=stream.curve_name)
        state.update(_result_state(result))
        state["latency_median_ms"], state["latency_n"] = _medians(latencies), len(latencies)
        state["curve"] = {"reset": reset, "epoch": state["epoch"],
                          "points": [[round(t, 4), None if v is None else round(v, 3), seq]
                                     for t, v, seq in points]}
        if frame is None:
            return Update(state)
        frame_key = (state["stream"], state["epoch"], frame.seq,
                     shown.seq if shown is not None else None)
        if frame_key == cursor.frame_key:
            return Update(state)
        cursor.frame_key = frame_key
        state["frame"] = {"seq": frame.seq, "overlay": shown is not None,
                          "shape": list(frame.pixels.shape[:2])}
        return Update(state, frame, shown, frame_key)

    @staticmethod
    def _pick_frame(stream: _Stream, fresh: bool
                    ) -> tuple[FrameMessage | None, ResultMessage | None]:
        """The frame to show and the result to draw on it (None: no overlay). A side-car
        republishes a frame as it arrives and publishes its result later, so while results
        come (``fresh``) the frame shown is the latest result's own, where it is still held;
        else (results stopped, none at all, or the frame no longer held) the newest frame,
        with its result if there is one."""
        if not stream.frames:
            return None, None
        if fresh and stream.results:
            latest = stream.results[-1]
            for frame, _ in reversed(stream.frames):
                if frame.seq == latest.seq:
                    return frame, latest
                if frame.seq < latest.seq:
                    break
        newest = stream.frames[-1][0]
        own = next((r for r in reversed(stream.results) if r.seq == newest.seq), None)
        return newest, own

    def stats(self) -> dict:
        with self._lock:
            return {"messages": dict(self.messages),
                    "streams": {s.name: {"app": s.app, "frames": s.frames_seen,
                                         "results": s.results_seen, "beats": s.beats_seen,
                                         "dropped": s.dropped, "ended": s.ended,
                                         "curve_points": len(s.curve),
                                         "frames_held": len(s.frames)}
                                for s in self._streams.values()},
                    "forgotten_streams": self.forgotten_streams,
                    "hello": self.hello, "last_error": self.last_error}

    def sizes(self) -> dict:
        """How much is held (for the memory bound's test): streams, and the largest
        per-stream curve, frames, results, beats and latencies."""
        with self._lock:
            s = list(self._streams.values())
            return {"streams": len(s),
                    **{name: max((len(getattr(x, name)) for x in s), default=0)
                       for name in ("curve", "frames", "results", "beats", "latencies")},
                    "frame_bytes": sum(x.frame_bytes for x in s)}


def _result_state(result: ResultMessage | None) -> dict:
    """The page's fields of a stream's latest result."""
    if result is None:
        return {"seq": None}
    fields = result.fields
    value = next(((key, fields[key]) for key, _ in CURVE_FIELDS if key in fields), None)
    regional = next((fields[k] for k in REGIONAL_FIELDS if isinstance(fields.get(k), dict)),
                    None)
    view = fields.get("view")
    return {"seq": result.seq, "t_acq_ns": result.t_acq_ns, "flags": list(result.flags),
            "latency_ms": result.latency_ms, "budget": result.budget,
            "value_key": value[0] if value else None, "value": value[1] if value else None,
            "regional": regional, "measurable": fields.get("measurable"),
            "beat": fields.get("beat"), "phase": fields.get("phase"),
            "view": ({"label": view.get("label"), "p": view.get("p")}
                     if isinstance(view, dict) else None)}


def _medians(latencies: list[dict]) -> dict:
    """The median of each stage over the latencies kept (stages in the latest's order)."""
    if not latencies:
        return {}
    out = {}
    for stage in latencies[-1]:
        values = [x[stage] for x in latencies if isinstance(x.get(stage), (int, float))]
        if values:
            out[stage] = round(statistics.median(values), 3)
    return out


# --------------------------------------------------------------------------
# the frame as a JPEG with its overlay (the push tasks' thread pool; never the reader)


def _display_image(frame: FrameMessage) -> np.ndarray:
    """The frame's pixels as uint8 greyscale or BGR (16-bit and float windowed to the 0.5 to
    99.5 percentiles; multichannel: the magnitude, or the first channel)."""
    pixels = frame.pixels
    if pixels.ndim == 3:
        if frame.channels is None and pixels.shape[2] == 3:
            rgb = pixels if pixels.dtype == np.uint8 else _to_uint8(pixels)
            return cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2BGR)
        names = [c.lower() for c in frame.channels or ()]
        pixels = pixels[..., names.index("magnitude") if "magnitude" in names else 0]
    if pixels.dtype == np.uint8:
        return np.ascontiguousarray(pixels)
    return _to_uint8(pixels)


def _to_uint8(pixels: np.ndarray) -> np.ndarray:
    values = pixels.astype(np.float32)
    step = max(1, max(values.shape[:2]) // 256)
    lo, hi = np.percentile(values[::step, ::step], [0.5, 99.5])
    scale = 255.0 / (hi - lo) if hi > lo else 1.0
    return np.clip((values - lo) * scale, 0, 255).astype(np.uint8)


def render_jpeg(frame: FrameMessage, result: ResultMessage | None, max_side_px: int = 512
                ) -> bytes:
    """The frame as a JPEG at most ``max_side_px`` on its longer side (a small frame
    enlarged up to 2x so that the overlay is legible), with ``result``'s analysis drawn on
    it: echo's centreline in six coloured segments, the MR short axis' endo- and epicardium.
    ``result`` must be the frame's own (same stream and seq) or None."""
    image = _display_image(frame)
    rows, cols = image.shape[:2]
    scale = min(max_side_px / max(rows, cols), 2.0)
    if abs(scale - 1.0) > 1e-3:
        size = (max(1, round(cols * scale)), max(1, round(rows * scale)))
        image = cv2.resize(image, size, interpolation=cv2.INTER_AREA if scale < 1
                           else cv2.INTER_LINEAR)
    if result is not None and has_overlay(result.fields):
        if image.ndim == 2:
            image = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
        sy = image.shape[0] / rows
        sx = image.shape[1] / cols
        draw_overlay(image, result.fields, frame.spacing_mm, (sy, sx))
    params = [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY]
    if image.ndim == 3:  # full-resolution colour: thin coloured lines keep their colour
        params += [cv2.IMWRITE_JPEG_SAMPLING_FACTOR, cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444]
    ok, encoded = cv2.imencode(".jpg", image, params)
    if not ok:  # pragma: no cover - cv2 encodes any uint8 image
        raise RuntimeError("cv2.imencode failed")
    return encoded.tobytes()


# --------------------------------------------------------------------------
# the viewer: a reader thread and a web thread


class Viewer:
    """The viewer, usable from a test or the CLI: ``url = Viewer(config).start()`` connects
    to the side-car (raises :class:`~streamer.io.sockets.EndpointError` when none answers
    within ``connect_timeout_s``), starts the reader and the web server and returns the
    page's URL; :meth:`stop` closes the pages' WebSockets, the server and the socket."""

    def __init__(self, config: ViewerConfig):
        self.config = config
        self.store = ViewerStore(config)
        self.url: str | None = None
        self._subscriber: ResultSubscriber | None = None
        self._reader: threading.Thread | None = None
        self._web: threading.Thread | None = None
        self._stop_reading = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_serving: asyncio.Event | None = None
        self._started = threading.Event()
        self._start_error: BaseException | None = None
        self._sockets: set = set()  # open WebSockets (the event loop's)
        self._jpegs: OrderedDict[str, tuple[tuple, bytes]] = OrderedDict()
        self._page_bytes = b""
        self.reader_error: BaseException | None = None

    # -- lifecycle -----------------------------------------------------------------------

    def start(self, timeout_s: float = 30.0) -> str:
        """Connect, start both threads, return the page's URL (``http://HOST:PORT/``)."""
        check_host(self.config.host, self.config.insecure)
        _aiohttp()  # a missing aiohttp says so before anything starts
        self._subscriber = ResultSubscriber(SubscriberConfig(
            self.config.source, connect_timeout_s=self.config.connect_timeout_s,
            curve=self.config.curve))
        log.info("subscribed to %s (side-car %s, %s mode)", self.config.source,
                 self._subscriber.hello.version, self._subscriber.hello.mode)
        self.store.add(self._subscriber.hello)
        self._reader = threading.Thread(target=self._read, name="viewer-reader", daemon=True)
        self._reader.start()
        self._web = threading.Thread(target=self._serve, name="viewer-web", daemon=True)
        self._web.start()
        if not self._started.wait(timeout_s) or self._start_error is not None:
            error = self._start_error
            self.stop()
            if isinstance(error, OSError):
                raise OSError(f"cannot serve the viewer on {self.config.host}:"
                              f"{self.config.port}: {error.strerror or error}") from None
            raise error or RuntimeError(f"the viewer's web server did not start within "
                                        f"{timeout_s:g} s")
        return self.url  # type: ignore[return-value]

    def stop(self, timeout_s: float = 10.0) -> None:
        """Close every page's WebSocket and the server, stop the reader; idempotent."""
        if self._loop is not None and self._stop_serving is not None:
            with contextlib.suppress(RuntimeError):  # the loop already closed
                self._loop.call_soon_threadsafe(self._stop_serving.set)
        if self._web is not None:
            self._web.join(timeout_s)
        self._stop_reading.set()
        if self._reader is not None:
            self._reader.join(timeout_s)
        elif self._subscriber is not None:
            self._subscriber.close()

    def __enter__(self) -> Viewer:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def stats(self) -> dict:
        """``/stats``: open WebSockets, messages by kind, the streams and what they hold."""
        return {"clients": len(self._sockets), "source": self.config.source,
                **self.store.stats()}

    # -- the reader thread ---------------------------------------------------------------

    def _read(self) -> None:
        subscriber = self._subscriber
        assert subscriber is not None
        try:
            while not self._stop_reading.is_set():
                try:
                    message = subscriber.recv(timeout_s=0.1)
                except ProtocolError as exc:  # a side-car speaks the protocol; count it
                    self.store.count_invalid()
                    log.debug("invalid message skipped: %s", exc)
                    continue
                if message is not None:
                    self.store.add(message)
        except Exception as exc:  # pragma: no cover - a bug: the page keeps the last state
            self.reader_error = exc
            log.exception("the viewer's reader stopped")
        finally:
            subscriber.close()

    # -- the web thread ------------------------------------------------------------------

    def _serve(self) -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        self._loop = loop
        runner = None
        try:
            self._stop_serving = asyncio.Event()
            runner = loop.run_until_complete(self._start_site())
            self._started.set()
            loop.run_until_complete(self._stop_serving.wait())
        except BaseException as exc:
            self._start_error = exc
            self._started.set()
        finally:
            try:
                if runner is not None:
                    loop.run_until_complete(runner.cleanup())
                loop.run_until_complete(loop.shutdown_default_executor())
            except Exception:  # pragma: no cover - the pages are gone either way
                log.exception("the viewer's web server did not close cleanly")
            finally:
                loop.close()

    async def _start_site(self) -> web.AppRunner:
        web = _aiohttp()
        app = self.make_app()
        runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=2.0)
        await runner.setup()
        site = web.TCPSite(runner, self.config.host, self.config.port, reuse_address=True)
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        host, port = runner.addresses[0][:2]
        self.url = f"http://{f'[{host}]' if ':' in host else host}:{port}/"
        return runner

    def make_app(self) -> web.Application:
        """The aiohttp application: ``/``, ``/ws``, ``/stats``."""
        web = _aiohttp()
        app = web.Application(middlewares=[_host_guard(loopback_only=not self.config.insecure)])
        app.router.add_get("/", self._page)
        app.router.add_get("/ws", self._websocket)
        app.router.add_get("/stats", self._stats)
        app.router.add_get("/favicon.ico", _no_content)  # browsers ask; nothing to fetch
        app.on_shutdown.append(self._close_sockets)
        settings = {"source": self.config.source, "history_s": self.config.history_s,
                    "max_points": self.config.max_points, "max_fps": self.config.max_fps,
                    "segments": [{"name": name, "color": hex_colour(rgb)}
                                 for name, rgb in zip(A4C_SEGMENTS, SEGMENT_RGB)],
                    "endo_color": hex_colour(ENDO_RGB), "epi_color": hex_colour(EPI_RGB)}
        # "</" escaped: the settings cannot close the <script> element that holds them
        self._page_bytes = PAGE_HTML.replace(
            "__CONFIG__", json.dumps(settings).replace("</", "<\\/")).encode()
        return app

    async def _page(self, request: web.Request) -> web.Response:
        web = _aiohttp()
        return web.Response(body=self._page_bytes, content_type="text/html", charset="utf-8",
                            headers=_PAGE_HEADERS)

    async def _stats(self, request: web.Request) -> web.Response:
        web = _aiohttp()
        return web.json_response(self.stats(), headers={"Cache-Control": "no-store"})

    async def _websocket(self, request: web.Request) -> web.WebSocketResponse:
        web = _aiohttp()
        origin = request.headers.get("Origin")
        if origin is not None and origin.lower() not in (f"http://{request.host}".lower(),
                                                         f"https://{request.host}".lower()):
            # another site's page in the same browser may not read the frames
            raise web.HTTPForbidden(text="WebSocket from another origin refused\n")
        ws = web.WebSocketResponse(heartbeat=20.0, max_msg_size=4096)
        await ws.prepare(request)
        self._sockets.add(ws)
        cursor = Cursor()
        pusher = asyncio.create_task(self._push(ws, cursor))
        try:
            async for message in ws:  # the page's choice of stream; ends when it closes
                if message.type == web.WSMsgType.TEXT:
                    with contextlib.suppress(ValueError, TypeError, AttributeError):
                        choice = orjson.loads(message.data).get("stream")
                        cursor.pinned = choice if isinstance(choice, str) else None
        finally:
            pusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await pusher
            self._sockets.discard(ws)
            await ws.close()
        return ws

    async def _push(self, ws: web.WebSocketResponse, cursor: Cursor) -> None:
        """At most ``max_fps`` updates a second to one page, only when something changed;
        closes the WebSocket when it cannot send (cancelled when the page closes it)."""
        period = 1.0 / self.config.max_fps
        try:
            while not ws.closed:
                started = time.monotonic()
                update = self.store.update_for(cursor, started)
                if update is not None:
                    jpeg = await self._jpeg(update) if update.frame is not None else None
                    if jpeg is None:
                        update.state.pop("frame", None)
                    await ws.send_str(orjson.dumps(update.state).decode())
                    if jpeg is not None:
                        await ws.send_bytes(jpeg)
                await asyncio.sleep(max(0.0, period - (time.monotonic() - started)))
        except ConnectionError:
            pass  # the page went away as we sent
        except Exception:
            log.exception("pushing to a page failed; closing its WebSocket")
        await ws.close()

    async def _jpeg(self, update: Update) -> bytes | None:
        """The update's frame as a JPEG (one cached per stream for pages that watch the
        same stream); None if it cannot be drawn (logged)."""
        stream = update.state["stream"]
        cached = self._jpegs.get(stream)
        if cached is not None and cached[0] == update.frame_key:
            return cached[1]
        try:
            jpeg = await asyncio.to_thread(render_jpeg, update.frame, update.result,
                                           self.config.max_side_px)
        except (cv2.error, ValueError, TypeError) as exc:
            log.warning("frame %s of %s not drawn: %s", update.frame.seq, stream, exc)
            return None
        self._jpegs[stream] = (update.frame_key, jpeg)
        self._jpegs.move_to_end(stream)
        while len(self._jpegs) > self.config.max_streams:
            self._jpegs.popitem(last=False)
        return jpeg

    async def _close_sockets(self, app: web.Application) -> None:
        from aiohttp import WSCloseCode

        for ws in list(self._sockets):
            await ws.close(code=WSCloseCode.GOING_AWAY, message=b"viewer stopping")


def _aiohttp():
    """aiohttp's ``web`` module, imported when the viewer starts (the rest of the CLI does
    not need it)."""
    try:
        from aiohttp import web
    except ImportError:  # pragma: no cover - a dependency of the package
        raise RuntimeError("cardiostream view needs aiohttp: pip install aiohttp") from None
    return web


async def _no_content(request: web.Request) -> web.Response:
    return _aiohttp().Response(status=204)



def _host_guard(loopback_only: bool):
    """A middleware against DNS rebinding: another site's page resolved to this machine
    names its own host; while the viewer is bound to loopback only loopback names are
    served."""
    web = _aiohttp()

    @web.middleware
    async def guard(request: web.Request, handler):
        if loopback_only and not is_loopback_host(request.url.host or ""):
            raise web.HTTPForbidden(text="the viewer answers to loopback host names only\n")
        return await handler(request)
    return guard


# --------------------------------------------------------------------------
# the command


def run_viewer(config: ViewerConfig, out: TextIO | None = None) -> int:
    """Serve until SIGINT/SIGTERM (exit 0). Prints ``{"event": "viewing", "url": ...}`` on
    ``out`` (stdout) once the page is served, ``{"event": "stopped", ...}`` at the end.
    Raises EndpointError when the side-car does not answer, InsecureBindError for a
    non-loopback host without ``insecure``, OSError when the port cannot be bound."""
    out = sys.stdout if out is None else out
    viewer = Viewer(config)
    stop = threading.Event()
    previous = {}
    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGINT, signal.SIGTERM):
            previous[signum] = signal.signal(signum, lambda *_: stop.set())
    try:
        url = viewer.start()
        print(json.dumps({"event": "viewing", "url": url, "source": config.source}),
              file=out, flush=True)
        log.info("viewer at %s (Ctrl-C to stop)", url)
        while not stop.wait(0.2):
            pass
    finally:
        viewer.stop()
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    print(json.dumps({"event": "stopped", "messages": viewer.store.stats()["messages"]}),
          file=out, flush=True)
    return 0


def add_parser(commands) -> argparse.ArgumentParser:
    """Register ``view`` on the CLI's sub-parsers object."""
    from streamer.options import add_options

    view = commands.add_parser(
        "view", help="a live web page of a side-car's frames, strain curve and latency",
        description="Serve a web page that shows a side-car's results live: the current "
                    "frame with the analysis drawn on it (echo: the tracked centreline, six "
                    "segments; MR short axis: endo- and epicardium), the strain curve (GLS, or "
                    "circumferential strain) with ED/ES marks, per-stage latency, dropped "
                    "frames, flags and the last beats. Frames are shown only when the side-car "
                    "runs with `serve --republish-frames`; results alone give the curves and "
                    "the latency. Prints one JSON line {\"event\":\"viewing\",\"url\":...} on "
                    "stdout when serving; stops on SIGINT/SIGTERM. Serves loopback only unless "
                    "--insecure: the page shows patient images in plain HTTP.")
    view.add_argument("--from", dest="from_endpoint", metavar="ENDPOINT", required=True,
                      help="the side-car's publish endpoint (serve --publish), e.g. "
                           "tcp://127.0.0.1:5556")
    view.add_argument("--host", default="127.0.0.1",
                      help="address to serve the page on (default 127.0.0.1; another than "
                           "127.0.0.0/8, localhost or ::1 needs --insecure)")
    view.add_argument("--port", type=int, default=8080,
                      help="port to serve the page on; 0: a free one (default 8080)")
    view.add_argument("--insecure", action="store_true",
                      help="serve a non-loopback --host in plain HTTP (anyone who reaches it "
                           "sees the images); refused without this switch, a warning with it")
    view.add_argument("--max-fps", type=float, default=15.0, metavar="FPS",
                      help="updates pushed to each open page per second at most (default 15)")
    view.add_argument("--connect-timeout-s", type=float, default=10.0, metavar="S",
                      help="how long to wait for the side-car's hello (default 10)")
    add_options(view.add_argument_group(
        "security", "a side-car with CURVE: this client's key pair (--curve-secret-key; its "
        "NAME.key in the side-car's --allow-keys directory) and the side-car's public key "
        "(--curve-server-key), as record --from takes them"), CurveConfig,
        skip=("allow_keys", "insecure"))
    view.set_defaults(func=cmd_view)
    return view


def viewer_config(args: argparse.Namespace) -> ViewerConfig:
    """The :class:`ViewerConfig` of parsed ``view`` arguments."""
    from streamer.options import from_args

    # --insecure is the web server's here, not the sockets' (the SUB socket binds nothing)
    curve = from_args(CurveConfig, args, insecure=False, allow_keys=None)
    return ViewerConfig(source=args.from_endpoint, host=args.host, port=args.port, curve=curve,
                        insecure=args.insecure, max_fps=args.max_fps,
                        connect_timeout_s=args.connect_timeout_s)


def cmd_view(args: argparse.Namespace) -> int:
    """``cardiostream view``: errors (no side-car, a refused host, a busy port) reach the
    CLI's one-line error handling (EndpointError, ValueError, OSError)."""
    return run_viewer(viewer_config(args))


# --------------------------------------------------------------------------
# the page: one self-contained document (no CDN, no fonts), its data through /ws

_STYLE = """
:root { color-scheme: dark; --bg: #111418; --panel: #1a1f26; --line: #2c333d;
        --text: #d8dee6; --dim: #8a94a3; --accent: #4fc3f7; --warn: #ffb74d; --bad: #ef5350; }
* { box-sizing: border-box; }
body { margin: 0; background: var(--bg); color: var(--text);
       font: 14px/1.4 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; }
header { display: flex; align-items: center; gap: 16px; padding: 8px 16px;
         border-bottom: 1px solid var(--line); flex-wrap: wrap; }
header h1 { font-size: 16px; margin: 0; font-weight: 600; }
.dot { display: inline-block; width: 10px; height: 10px; border-radius: 50%;
       background: var(--bad); margin-right: 6px; vertical-align: middle; }
.dot.on { background: #66bb6a; }
.dim { color: var(--dim); }
main { display: grid; grid-template-columns: minmax(300px, 1fr) minmax(320px, 1fr);
       gap: 12px; padding: 12px 16px; }
@media (max-width: 900px) { main { grid-template-columns: 1fr; } }
section { background: var(--panel); border: 1px solid var(--line); border-radius: 6px;
          padding: 10px 12px; min-width: 0; contain: content; }
section h2 { font-size: 13px; margin: 0 0 8px; color: var(--dim); font-weight: 600;
             text-transform: uppercase; letter-spacing: .04em; }
#frame-box { position: relative; background: #000; border-radius: 4px; min-height: 240px;
             display: flex; align-items: center; justify-content: center; }
#frame { max-width: 100%; max-height: 70vh; display: none; }
#no-frame { color: var(--dim); padding: 24px; text-align: center; }
#curve { width: 100%; height: 260px; display: block; }
.big { font-size: 28px; font-weight: 600; }
.row { display: flex; gap: 24px; flex-wrap: wrap; align-items: baseline; }
table { border-collapse: collapse; width: 100%; font-variant-numeric: tabular-nums; }
td, th { padding: 2px 6px; text-align: left; white-space: nowrap; }
th { color: var(--dim); font-weight: 500; }
td.num { text-align: right; }
.bar { height: 10px; background: var(--accent); border-radius: 2px; min-width: 1px; }
.swatch { display: inline-block; width: 10px; height: 10px; border-radius: 2px;
          margin-right: 6px; vertical-align: middle; }
.flag { display: inline-block; padding: 1px 6px; margin: 2px 4px 2px 0; border-radius: 10px;
        background: #3a2f1c; color: var(--warn); font-size: 12px; }
.flag.bad { background: #3d1f1f; color: var(--bad); }
.hidden { display: none; }
.mt { margin-top: 10px; }
select { background: var(--panel); color: var(--text); border: 1px solid var(--line);
         border-radius: 4px; padding: 2px 6px; }
"""

_SCRIPT = r"""
"use strict";
(() => {
  const cfg = JSON.parse(document.getElementById("viewer-config").textContent);
  const V = window.cardiostreamViewer = {
    framesShown: 0, curvePoints: 0, states: 0, connected: false, stream: null, seq: null,
    frameSeq: null,
  };
  const $ = (id) => document.getElementById(id);
  const img = $("frame"), canvas = $("curve"), select = $("stream");
  let ws = null, curve = [], beats = [], curveName = "strain", shownUrl = null;
  let loadingUrl = null, pendingSeq = null, drawQueued = false, lastState = 0;
  let pinned = null, streamNames = "";

  function sync() {
    const d = document.body.dataset;
    d.framesShown = V.framesShown; d.curvePoints = V.curvePoints;
    d.connected = V.connected; d.stream = V.stream || "";
  }
  const fmt = (v, digits = 1) => (typeof v === "number" && isFinite(v)) ? v.toFixed(digits) : "–";
  const text = (id, value) => { const node = $(id); if (node.textContent !== String(value)) node.textContent = value; };
  // rebuild a box's children only when what it shows changed (each rebuild is a layout and
  // a paint in the browser, which on a side-car's own machine competes with the side-car)
  const shown = new Map();
  function changed(id, content) {
    const key = JSON.stringify(content);
    if (shown.get(id) === key) return false;
    shown.set(id, key); return true;
  }
  function el(tag, attrs = {}, children = []) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs)) {
      if (k === "text") node.textContent = v; else if (k === "style") Object.assign(node.style, v);
      else node.setAttribute(k, v);
    }
    for (const child of children) node.appendChild(child);
    return node;
  }

  function connect() {
    const scheme = location.protocol === "https:" ? "wss://" : "ws://";
    ws = new WebSocket(scheme + location.host + "/ws");
    ws.binaryType = "blob";
    ws.onopen = () => {
      V.connected = true; $("dot").classList.add("on"); text("conn", "connected");
      if (pinned !== null) ws.send(JSON.stringify({stream: pinned}));
      sync();
    };
    ws.onclose = () => {
      V.connected = false; $("dot").classList.remove("on");
      text("conn", "disconnected: retrying"); sync();
      setTimeout(connect, 1000);
    };
    ws.onmessage = (event) => {
      if (typeof event.data === "string") onState(JSON.parse(event.data));
      else onFrame(event.data);
    };
  }

  function onFrame(blob) {
    const url = URL.createObjectURL(new Blob([blob], {type: "image/jpeg"}));
    if (loadingUrl !== null) URL.revokeObjectURL(loadingUrl);  // replaced before it loaded
    loadingUrl = url;
    const seq = pendingSeq;
    img.onload = () => {
      if (img.src !== url) return;
      if (shownUrl !== null) URL.revokeObjectURL(shownUrl);
      shownUrl = url; loadingUrl = null;
      img.style.display = "block"; $("no-frame").style.display = "none";
      V.framesShown += 1; V.frameSeq = seq;
      text("frame-seq", seq === null ? "" : "· seq " + seq);
      sync();
    };
    img.src = url;
  }

  function onState(s) {
    V.states += 1; lastState = Date.now();
    updateStreams(s);
    if (s.stream === null) { text("stream-info", "waiting for a stream…"); return; }
    if (V.stream !== s.stream) { V.stream = s.stream; }
    V.seq = s.seq;
    if (s.frame) pendingSeq = s.frame.seq;
    // the curve: the whole of it on connect / restart / another stream, else the new points
    if (s.curve.reset) curve = s.curve.points; else curve.push(...s.curve.points);
    if (curve.length) {
      const oldest = curve[curve.length - 1][0] - cfg.history_s;
      let cut = 0;
      while (cut < curve.length && curve[cut][0] < oldest) cut++;
      if (cut || curve.length > cfg.max_points)
        curve = curve.slice(Math.max(cut, curve.length - cfg.max_points));
    }
    beats = s.beats || [];
    curveName = s.curve_name || (s.app === "mr-sax" ? "circumferential strain" : "GLS");
    text("stream-info", `${s.stream} · ${s.app || "app ?"} · ${s.modality || ""}` +
         (s.ended ? " · ended" : s.started ? " · live" : ""));
    text("value-name", curveName + " %");
    text("curve-name", `· ${curveName} % over the last ${cfg.history_s} s`);
    text("value", fmt(s.value));
    text("seq", s.seq === null ? "–" : s.seq);
    text("dropped", s.dropped);
    text("counts", `${s.results} results · ${s.frames} frames`);
    text("view", s.view ? `${s.view.label} (${fmt(s.view.p, 2)})` : "–");
    const last = beats.length ? beats[beats.length - 1] : null;
    text("beat-peak", last ? fmt(last.peak_pct) : "–");
    text("beat-quality", last ? `beat ${last.beat} · ${last.quality || "–"}` : "no beat yet");
    renderFlags(s);
    renderLatency(s);
    renderRegional(s);
    renderBeats();
    text("end", s.end ? "end: " + Object.entries(s.end).map(([k, v]) => `${k} ${v}`).join(", ") : "");
    if (!s.frames) {
      $("no-frame").textContent = "no frames from this side-car: frames are shown when it " +
        "runs with `serve --republish-frames` (results alone give the curve and latency)";
    }
    queueDraw();
    sync();
  }

  function updateStreams(s) {
    const names = s.streams.map((x) => x.name).join("\n");
    $("stream-box").classList.toggle("hidden", !(s.streams.length > 1 || pinned !== null));
    if (names === streamNames) { select.value = pinned === null ? "" : pinned; return; }
    streamNames = names;
    select.replaceChildren(el("option", {value: "", text: "follow the newest"}),
      ...s.streams.map((x) => el("option", {value: x.name, text: x.name + (x.ended ? " (ended)" : "")})));
    select.value = pinned === null ? "" : pinned;
  }
  select.addEventListener("change", () => {
    pinned = select.value === "" ? null : select.value;
    if (ws && ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify({stream: pinned}));
  });

  function renderFlags(s) {
    if (!changed("flags", [s.flags, s.error])) return;
    const box = $("flags");
    const flags = (s.flags || []).map((f) => el("span", {
      class: "flag" + (f.startsWith("not_measurable") ? " bad" : ""), text: f}));
    if (s.error) flags.push(el("span", {class: "flag bad", text: `error ${s.error.code}: ${s.error.message}`}));
    box.replaceChildren(...(flags.length ? flags : [el("span", {class: "dim", text: "none"})]));
  }

  function renderLatency(s) {
    const lat = s.latency_ms || {}, med = s.latency_median_ms || {};
    const summary = new Set(["total", "end_to_end"]);
    const stages = Object.keys(lat).filter((k) => !summary.has(k));
    const scale = Math.max(1e-6, ...stages.map((k) => lat[k] || 0), ...stages.map((k) => med[k] || 0));
    const rows = stages.map((k) => el("tr", {}, [
      el("td", {text: k}),
      el("td", {style: {width: "60%"}}, [el("div", {class: "bar", style: {width: (100 * (lat[k] || 0) / scale) + "%"}})]),
      el("td", {class: "num", text: fmt(lat[k], 2)}),
      el("td", {class: "num dim", text: fmt(med[k], 2)}),
    ]));
    $("latency").replaceChildren(el("tr", {}, [el("th", {text: "stage"}), el("th", {}),
      el("th", {class: "num", text: "ms"}), el("th", {class: "num", text: `median of ${s.latency_n}`})]), ...rows);
    text("latency-total", `total ${fmt(lat.total, 1)} ms (median ${fmt(med.total, 1)})` +
         (lat.end_to_end !== undefined ? ` · end to end ${fmt(lat.end_to_end, 1)} ms (median ${fmt(med.end_to_end, 1)})` : "") +
         (s.budget ? ` · budget ${s.budget.budget_ms} ms, ${s.budget.mode}` : ""));
  }

  function renderRegional(s) {
    if (!changed("regional", s.regional)) return;
    const regional = s.regional || {};
    const colours = Object.fromEntries(cfg.segments.map((x) => [x.name, x.color]));
    const keys = Object.keys(regional);
    $("regional").replaceChildren(...(keys.length ? keys.map((k) => el("tr", {}, [
      el("td", {}, [el("span", {class: "swatch", style: {background: colours[k] || "transparent"}}),
                    document.createTextNode(/^[0-9]+$/.test(k) ? "AHA " + k : k.replace(/_/g, " "))]),
      el("td", {class: "num", text: fmt(regional[k])}),
    ])) : [el("tr", {}, [el("td", {class: "dim", text: "not measured on this frame"})])]));
  }

  function renderBeats() {
    if (!changed("beats", beats.slice(-6))) return;
    const rows = beats.slice(-6).reverse().map((b) => el("tr", {}, [
      el("td", {text: "beat " + b.beat}), el("td", {class: "num", text: fmt(b.peak_pct)}),
      el("td", {text: b.quality || "–"}),
      el("td", {class: "num", text: typeof b.duration_s === "number" ? fmt(b.duration_s, 2) + " s" : "–"}),
      el("td", {class: "dim", text: `ED ${b.ed_seq ?? "–"} · ES ${b.es_seq ?? "–"}`}),
    ]));
    $("beats").replaceChildren(...rows);
  }

  function queueDraw() {
    if (drawQueued) return;
    drawQueued = true;
    requestAnimationFrame(() => { drawQueued = false; drawCurve(); });
  }

  function niceStep(span, target) {
    const raw = span / target, mag = Math.pow(10, Math.floor(Math.log10(raw)));
    for (const m of [1, 2, 5, 10]) if (m * mag >= raw) return m * mag;
    return 10 * mag;
  }

  function drawCurve() {
    const dpr = window.devicePixelRatio || 1;
    const w = canvas.clientWidth, h = canvas.clientHeight;
    if (canvas.width !== Math.round(w * dpr) || canvas.height !== Math.round(h * dpr)) {
      canvas.width = Math.round(w * dpr); canvas.height = Math.round(h * dpr);
    }
    const ctx = canvas.getContext("2d");
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.clearRect(0, 0, w, h);
    const left = 44, right = 10, top = 10, bottom = 24;
    const pw = w - left - right, ph = h - top - bottom;
    const finite = curve.filter((p) => typeof p[1] === "number" && isFinite(p[1]));
    let t1 = curve.length ? curve[curve.length - 1][0] : 5;
    let t0 = curve.length ? curve[0][0] : 0;
    if (t1 - t0 < 5) t1 = t0 + 5;
    let y0 = -25, y1 = 5;
    for (const p of finite) { y0 = Math.min(y0, p[1]); y1 = Math.max(y1, p[1]); }
    const pad = (y1 - y0) * 0.05; y0 -= pad; y1 += pad;
    const X = (t) => left + (t - t0) / (t1 - t0) * pw;
    const Y = (v) => top + (y1 - v) / (y1 - y0) * ph;
    ctx.font = "11px system-ui, sans-serif"; ctx.lineWidth = 1;
    ctx.strokeStyle = "#2c333d"; ctx.fillStyle = "#8a94a3";
    const ys = niceStep(y1 - y0, 6);
    ctx.textAlign = "right"; ctx.textBaseline = "middle";
    for (let v = Math.ceil(y0 / ys) * ys; v <= y1; v += ys) {
      ctx.beginPath(); ctx.moveTo(left, Y(v)); ctx.lineTo(w - right, Y(v)); ctx.stroke();
      ctx.fillText(v.toFixed(ys < 1 ? 1 : 0), left - 4, Y(v));
    }
    const xs = niceStep(t1 - t0, 8);
    ctx.textAlign = "center"; ctx.textBaseline = "top";
    for (let t = Math.ceil(t0 / xs) * xs; t <= t1; t += xs) {
      ctx.beginPath(); ctx.moveTo(X(t), top); ctx.lineTo(X(t), top + ph); ctx.stroke();
      ctx.fillText(t.toFixed(xs < 1 ? 1 : 0) + " s", X(t), top + ph + 4);
    }
    ctx.strokeStyle = "#56606e";
    ctx.beginPath(); ctx.moveTo(left, Y(0)); ctx.lineTo(w - right, Y(0)); ctx.stroke();
    // ED / ES of the beats whose frames are on the curve
    const bySeq = new Map(curve.map((p) => [p[2], p[0]]));
    ctx.setLineDash([4, 4]); ctx.textBaseline = "top";
    let labelX = -Infinity, labelRow = 0;  // labels closer than 20 px go a line lower
    for (const b of beats) {
      for (const [seq, label, colour] of [[b.ed_seq, "ED", "#90caf9"], [b.es_seq, "ES", "#f48fb1"]]) {
        if (seq === null || seq === undefined || !bySeq.has(seq)) continue;
        const x = X(bySeq.get(seq));
        ctx.strokeStyle = colour; ctx.fillStyle = colour;
        ctx.beginPath(); ctx.moveTo(x, top); ctx.lineTo(x, top + ph); ctx.stroke();
        labelRow = x - labelX < 20 ? labelRow + 1 : 0; labelX = x;
        ctx.fillText(label, x, top + 1 + 12 * labelRow);
      }
    }
    ctx.setLineDash([]);
    // the curve, broken where a frame was not measurable
    ctx.strokeStyle = "#4fc3f7"; ctx.lineWidth = 2; ctx.beginPath();
    let drawn = 0, pen = false;
    for (const p of curve) {
      if (typeof p[1] !== "number" || !isFinite(p[1])) { pen = false; continue; }
      if (pen) ctx.lineTo(X(p[0]), Y(p[1])); else ctx.moveTo(X(p[0]), Y(p[1]));
      pen = true; drawn += 1;
    }
    ctx.stroke();
    V.curvePoints = drawn;
    sync();
  }

  setInterval(() => {
    if (V.connected && lastState) {
      const age = (Date.now() - lastState) / 1000;
      text("age", age > 2 ? `no update for ${age.toFixed(0)} s` : "");
    }
  }, 1000);
  window.addEventListener("resize", queueDraw);
  text("source", cfg.source);
  sync(); queueDraw(); connect();
})();
"""

_BODY = """
<header>
  <h1>cardiostream viewer</h1>
  <span><span id="dot" class="dot"></span><span id="conn">connecting…</span></span>
  <span class="dim">from <span id="source"></span></span>
  <span id="stream-box" class="hidden">stream <select id="stream"></select></span>
  <span id="stream-info" class="dim"></span>
  <span id="age" class="dim"></span>
</header>
<main>
  <section>
    <h2>frame <span id="frame-seq" class="dim"></span></h2>
    <div id="frame-box"><img id="frame" alt="current frame with the analysis drawn on it">
      <div id="no-frame">waiting for frames…</div></div>
    <div class="row mt">
      <span>view <b id="view">–</b></span><span>result seq <b id="seq">–</b></span>
      <span id="counts" class="dim"></span>
    </div>
  </section>
  <section>
    <h2>strain <span id="curve-name" class="dim"></span></h2>
    <canvas id="curve"></canvas>
    <div class="row mt">
      <div><div class="dim" id="value-name">GLS %</div><div class="big" id="value">–</div></div>
      <div><div class="dim">last beat peak %</div><div class="big" id="beat-peak">–</div>
        <div class="dim" id="beat-quality">no beat yet</div></div>
      <div><div class="dim">dropped</div><div class="big" id="dropped">0</div></div>
    </div>
  </section>
  <section>
    <h2>latency per stage (latest result)</h2>
    <table id="latency"></table>
    <div id="latency-total" class="dim mt"></div>
  </section>
  <section>
    <h2>flags</h2><div id="flags"><span class="dim">none</span></div>
    <h2 class="mt">regional %</h2><table id="regional"></table>
    <h2 class="mt">beats</h2><table id="beats"></table>
    <div id="end" class="dim"></div>
  </section>
</main>
"""


def _csp_hash(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


#: the page; ``__CONFIG__`` is replaced by the viewer's settings (JSON)
PAGE_HTML = ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
             "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
             "<title>cardiostream viewer</title>"
             f"<style>{_STYLE}</style></head><body>{_BODY}"
             "<script type=\"application/json\" id=\"viewer-config\">__CONFIG__</script>"
             f"<script>{_SCRIPT}</script></body></html>\n")

#: only the page's own inline style and script run; images only from blob: URLs; no
#: network but this server (its WebSocket); no framing by other sites
_PAGE_HEADERS = {
    "Content-Security-Policy": (
        f"default-src 'none'; script-src {_csp_hash(_SCRIPT)}; style-src {_csp_hash(_STYLE)} "
        "'unsafe-hashes'; img-src blob:; connect-src 'self'; base-uri 'none'; "
        "form-action 'none'; frame-ancestors 'none'"),
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}

