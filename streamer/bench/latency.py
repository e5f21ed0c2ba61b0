"""``cardiostream bench latency``: replay a clip into a side-car and report its latency.

Two ways to run the same frames (``--transport``, default both, one after the other):

* ``sockets``: a real ``cardiostream serve`` child process on free loopback ports (as
  ``cardiostream demo`` starts it), a ``ResultSubscriber`` on its publish endpoint, and
  the clip replayed into its ingest endpoint at the clip's rate (or ``--rate-fps``),
  every frame stamped with ``t_send_ns``. Live mode by default (frames may be dropped,
  or skipped as stale under a budget, and are counted); ``--lossless`` for back-pressure.
  At the end the side-car is stopped and its ``end`` message's counts are checked
  against the frames sent.
* ``in-process``: ``FrameProcessor(build_analysis(...))`` driven frame by frame in this
  process, back to back, no sockets: every frame is processed (each frame is still
  encoded and decoded, so ``decode`` is the wire cost of the frame).

The clip: by default the held-out A4C phantom of ``bench/latency.py`` (seed 2,000,001,
256 x 256, 60 frames at 50 fps) sent with the view hint ``a4c`` so that every stage runs;
or ``--clip PATH``, any file ``streamer.io.clips.open_clip`` reads. The clip loops until
``--warmup`` untimed and then ``--frames`` timed frames have been sent; every statistic
below is over the timed frames only (the side-car's ``end`` counts cover the whole stream).

JSON report (``--out``, default ``bench/results/latency.json``)::

    {
      "schema": "cardiostream-bench-latency/1",
      "created_utc": "2026-01-02T03:04:05Z",
      "command": "cardiostream bench latency --frames 300",   # as typed
      "version": "0.1.0", "git_commit": "a0904f4" | null,
      "machine": {"platform", "machine", "cpu", "cpus", "cpus_usable", "python",
                  "hostname", "load_avg_1m"},
      "clip": {"source": "phantom" | PATH, "n_frames", "shape", "dtype", "fps",
               "spacing_mm", "modality", "view_hint", ("phantom_seed")},
      "settings": {"transport", "frames", "warmup", "rate_fps", "lossless", "budget_ms",
                   "stage_budget_ms": {STAGE: MS}, "degrade", "analysis", "backend",
                   "precision", "threads", "device", "weights", "view_gate",
                   "min_view_confidence"},
      "runs": {                      # one entry per transport mode that ran
        "sockets" | "in-process": {
          "transport": "sockets" | "in-process",
          "mode": "live" | "lossless" | "in-process",
          "backends": {STAGE: "backend/precision[@device]"},  # {} with --analysis none
          "backends_source": "engines" (in-process: the engines built) |
                             "config" (sockets: resolved from the options),
          "load_avg_1m": float,        # the machine's load when the run started
          "startup_s": float,          # side-car start -> ready, or pipeline build
          "frames": {"sent", "warmup", "timed", "results", "results_timed", "errors",
                     "dropped"},       # dropped: sum of the results' "dropped" (all frames)
          "end_counts": {"processed", "dropped", "errors", ("stale"), ...},  # the end echo
          "accounted": {"ok": bool, "sent", "counted", "missing"},  # sent == processed
                                                     #   + dropped + stale + errors
          "throughput_fps": float,     # timed results / timed window (first timed send ->
          "window_s": float,           #   last timed result received)
          "replay_max_lateness_ms": float,  # sockets: worst send behind the clip's schedule
          "max_start_age_ms": float,   # max of transport + queue (queue includes decode)
          "flags": {NAME: count},      # by the flag's name before any ":" (timed results)
          "flags_detail": {FLAG: count},  # in full, for names that come with a word after
                                          #   the ":" (over_budget:flow, degraded:half_rate)
          "budget_last": {"budget_ms", "level", "mode"} | null,  # last result's "budget"
          "latency_ms": {KEY: {"n", "p50", "p95", "p99", "max", "mean"}},
                                       # KEY: every key of the results' latency_ms
          "floors": {STAGE: {"gflop", "peak_gflops", "floor_ms", "p50_ms", "over_floor"},
                     "networks": {"floor_ms", "p50_ms", "over_floor"}},
                                       # each network stage against its arithmetic floor:
                                       #   GFLOP (engines.flops) at this CPU's GEMM rate
                                       #   for its precision (measured here, once);
                                       #   {} without networks or for --weights roles
          "measured_ms": {"send_to_receive": {...},  # sockets: bench send -> result received
                          "start_age": {...}},       # transport + queue per frame
          "sidecar": {"pid", "ready", "stopped"} | absent,  # sockets: its ready/stopped lines
          "series": {"seq": [...], "t_s": [...],    # per timed result, t_s from the first
                     "latency_ms": {KEY: [...]},    #   timed frame; null where a key is absent
                     "measured_ms": {NAME: [...]}}
        }
      }
    }

All times are milliseconds unless a key says otherwise. ``bench compare`` reads two
reports; ``streamer.bench.plots`` draws one.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import platform
import re
import shlex
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from streamer.io.clips import ClipFrame, ClipInfo, ClipReader
from streamer.vocab import VIEW_CLASSES

log = logging.getLogger(__name__)

SCHEMA = "cardiostream-bench-latency/1"
DEFAULT_OUT = Path("bench/results/latency.json")
TRANSPORTS = ("sockets", "in-process")
#: the order keys are shown in; keys not listed follow in the order they first appear
KEY_ORDER = ("transport", "decode", "queue", "preprocess", "debug_delay", "view", "segment",
             "flow", "track", "strain", "analysis_off", "publish", "total", "end_to_end")
#: a frame's age when the worker starts on it: send -> receive, then receive -> taken
#: (the side-car's ``queue`` is counted from the receive time, so it contains ``decode``)
START_AGE_KEYS = ("transport", "queue")
#: engine roles -> the stage that runs them
ROLE_STAGE = {"view": "view", "seg": "segment", "flow": "flow", "mr": "mr_net"}

PHANTOM_SEED = 2_000_001
PHANTOM_SIZE_PX = 256
PHANTOM_FRAMES = 60
PHANTOM_FPS = 50.0


class BenchError(Exception):
    """A user error: printed as one line, exit code 2."""


# --------------------------------------------------------------------------
# the clip


def phantom_clip(size: int, frames: int, seed: int) -> tuple[np.ndarray, tuple, float]:
    """A held-out A4C phantom (test split seed): frames, spacing_mm, fps."""
    from calib.datasets import random_echo_config, split_of
    from calib.echo import make_echo_clip

    if split_of(seed) != "test":
        raise BenchError(f"phantom seed {seed} is not in the held-out test split "
                         "(2,000,000-2,099,999)")
    clip = make_echo_clip(random_echo_config(seed, view="a4c", rows=size, cols=size,
                                             frames=frames, fps=PHANTOM_FPS))
    return clip.frames, tuple(float(s) for s in clip.spacing_mm), float(clip.fps)


class ArrayClip(ClipReader):
    """Frames already in memory as a clip reader (the phantom)."""

    def __init__(self, frames: np.ndarray, spacing_mm: tuple, fps: float, name: str,
                 modality: str = "US"):
        self.frames = np.ascontiguousarray(frames)
        self.info = ClipInfo(path=name, format="array", n_frames=len(frames),
                             shape=tuple(self.frames.shape[1:]), dtype=self.frames.dtype.name,
                             modality=modality, spacing_mm=tuple(spacing_mm), fps=float(fps))

    def __iter__(self) -> Iterator[ClipFrame]:
        for i, pixels in enumerate(self.frames):
            yield ClipFrame(i, pixels, i / self.info.fps)

    def close(self) -> None:
        pass


@dataclass
class ClipSource:
    """How to open the clip (again, for each transport mode) and what to say about it."""

    open: Callable[[], ClipReader]
    info: ClipInfo
    description: dict


def clip_source(args) -> ClipSource:
    if args.clip is None:
        print(f"making the held-out A4C phantom (seed {args.phantom_seed}, "
              f"{args.phantom_size_px}x{args.phantom_size_px}, {args.phantom_frames} frames)",
              file=sys.stderr, flush=True)
        frames, spacing_mm, fps = phantom_clip(args.phantom_size_px, args.phantom_frames,
                                               args.phantom_seed)
        name = f"phantom-{args.phantom_seed}"

        def open_() -> ClipReader:
            return ArrayClip(frames, spacing_mm, fps, name)

        extra = {"phantom_seed": args.phantom_seed}
    else:
        from streamer.io.clips import open_clip, open_input

        if not args.clip.exists():
            raise BenchError(f"{args.clip}: no such file or folder")
        spacing = tuple(args.spacing_mm) if args.spacing_mm else None

        def open_() -> ClipReader:
            if args.slice_index is None:
                return open_clip(args.clip, spacing_mm=spacing)
            return open_input(args.clip, spacing_mm=spacing, slice_index=args.slice_index)

        extra = {}
    with open_() as reader:
        info = reader.info
    if info.n_frames < 1:
        raise BenchError(f"{info.path}: the clip has no frames")
    if info.fps is None and args.rate_fps is None:
        raise BenchError(f"{info.path}: the clip carries no frame rate; pass --rate-fps")
    modality = args.modality or info.modality
    description = {"source": "phantom" if args.clip is None else str(args.clip),
                   "n_frames": info.n_frames, "shape": list(info.shape), "dtype": info.dtype,
                   "fps": info.fps,
                   "spacing_mm": list(info.spacing_mm) if info.spacing_mm else None,
                   "modality": modality, "view_hint": _view_hint(args), **extra}
    return ClipSource(open_, info, description)


def _view_hint(args) -> str | None:
    if args.view == "none":
        return None
    if args.view is None:
        return "a4c" if args.clip is None else None
    return args.view


def replay_config(args, source: ClipSource):
    from streamer.replay import ReplayConfig

    total = args.warmup + args.frames
    return ReplayConfig(stream="bench", fps=args.rate_fps, modality=args.modality,
                        loop=math.ceil(total / source.info.n_frames), max_frames=total,
                        view=_view_hint(args))


# --------------------------------------------------------------------------
# statistics


def order_keys(keys) -> list[str]:
    keys = list(dict.fromkeys(keys))
    known = [k for k in KEY_ORDER if k in keys]
    return known + [k for k in keys if k not in KEY_ORDER]


def summarize(values) -> dict:
    """n / p50 / p95 / p99 / max / mean of the values that are not None (ms)."""
    a = np.asarray([v for v in values if v is not None], dtype=np.float64)
    if a.size == 0:
        return {"n": 0}
    p50, p95, p99 = np.percentile(a, [50, 95, 99])
    return {"n": int(a.size), "p50": round(float(p50), 4), "p95": round(float(p95), 4),
            "p99": round(float(p99), 4), "max": round(float(a.max()), 4),
            "mean": round(float(a.mean()), 4)}


def count_flags(flag_lists) -> tuple[dict, dict]:
    """Counts by the flag's name before any ':' (``dropped:3`` -> ``dropped``), and, for
    the names that also come with a word after the ':' (``over_budget:flow``,
    ``degraded:half_rate``), every member of that family in full (``over_budget`` too)."""
    by_name: Counter = Counter()
    full: Counter = Counter()
    qualified = set()
    for flags in flag_lists:
        for flag in flags:
            name, sep, rest = flag.partition(":")
            by_name[name] += 1
            if not (sep and rest.isdigit()):
                full[flag] += 1
            if sep and not rest.isdigit():
                qualified.add(name)
    detail = {flag: n for flag, n in full.items() if flag.partition(":")[0] in qualified}
    return dict(sorted(by_name.items())), dict(sorted(detail.items()))


@dataclass
class FrameRecord:
    """One timed result."""

    seq: int
    t_s: float  # since the first timed frame was sent (sockets) or started (in-process)
    latency_ms: dict
    flags: list
    measured_ms: dict


#: the side-car's ``end`` counts a report keeps
END_COUNT_KEYS = ("processed", "dropped", "stale", "errors", "last_seq", "degradation_changes")


@dataclass
class Tally:
    """What a run counts of the messages that come back, whichever transport carried them."""

    warmup: int
    results: int = 0
    errors: int = 0
    dropped: int = 0  # the sum of the results' ``dropped``
    budget_last: dict | None = None
    end_counts: dict | None = None
    records: list[FrameRecord] = field(default_factory=list)

    def error(self, message, where: str) -> None:
        self.errors += 1
        log.warning("%serror %s: %s", where, message.code, message.message)

    def result(self, message) -> bool:
        """Count a result; True when it is one of the timed frames."""
        self.results += 1
        self.dropped += message.dropped
        self.budget_last = message.budget or self.budget_last
        return message.seq >= self.warmup

    def end(self, message) -> None:
        self.end_counts = {k: v for k, v in message.meta.items() if k in END_COUNT_KEYS}


def start_age_ms(latency_ms: dict) -> float | None:
    parts = [latency_ms[k] for k in START_AGE_KEYS if k in latency_ms]
    return float(sum(parts)) if parts else None


def run_report(records: list[FrameRecord]) -> dict:
    """The per-run statistics and series from the timed results."""
    keys = order_keys(k for r in records for k in r.latency_ms)
    measured = list(dict.fromkeys(k for r in records for k in r.measured_ms))
    by_name, detail = count_flags(r.flags for r in records)
    ages = [r.measured_ms.get("start_age") for r in records]
    ages = [a for a in ages if a is not None]
    return {
        "max_start_age_ms": round(max(ages), 4) if ages else None,
        "flags": by_name, "flags_detail": detail,
        "latency_ms": {k: summarize(r.latency_ms.get(k) for r in records) for k in keys},
        "measured_ms": {k: summarize(r.measured_ms.get(k) for r in records) for k in measured},
        "series": {
            "seq": [r.seq for r in records],
            "t_s": [round(r.t_s, 5) for r in records],
            "latency_ms": {k: [_round(r.latency_ms.get(k)) for r in records] for k in keys},
            "measured_ms": {k: [_round(r.measured_ms.get(k)) for r in records]
                            for k in measured},
        },
    }


def _round(value, digits: int = 4):
    return None if value is None else round(float(value), digits)


def accounting(sent: int, end_counts: dict | None) -> dict:
    """Every frame sent is processed, dropped, stale or an error, by the end echo's counts."""
    if end_counts is None:
        return {"ok": False, "sent": sent, "counted": None, "missing": None}
    counted = sum(int(end_counts.get(k) or 0) for k in ("processed", "dropped", "stale",
                                                         "errors"))
    return {"ok": counted == sent, "sent": sent, "counted": counted, "missing": sent - counted}


# --------------------------------------------------------------------------
# budget options (declared on streamer.budget.BudgetConfig)


def budget_config(args):
    """``streamer.budget.BudgetConfig`` from the options (ValueError when bad)."""
    from streamer.budget import BudgetConfig
    from streamer.options import from_args

    return from_args(BudgetConfig, args)


# --------------------------------------------------------------------------
# the two transport modes


def _progress(total: int, desc: str, disable: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="frame", disable=disable, file=sys.stderr,
                mininterval=0.5, leave=False)


def configured_backends(args) -> dict:
    """The backend each network runs on, resolved from the options (no engine is built)."""
    from engines.backends import resolve_backend, resolve_precision
    from streamer.apps import APPS, AUTO

    apps = [app for app in APPS.values() if app.modalities] if args.app == AUTO \
        else [APPS[args.app]]
    roles = dict.fromkeys(role for app in apps for role in app.roles)
    device = getattr(args, "device", None)
    labels = {}
    for role in roles:
        backend = resolve_backend(args.backend, device, role, args.precision)
        labels[ROLE_STAGE[role]] = _backend_label(
            backend, resolve_precision(args.precision, backend, device), device)
    return labels


def _backend_label(backend: str, precision: str, device: str | None) -> str:
    """``backend/precision``, with ``@device`` where it is not the CPU."""
    return f"{backend}/{precision}" + (f"@{device}" if device and device != "cpu" else "")


class StampingSender:
    """A FrameSender that remembers each frame's ``t_send_ns`` before sending it."""

    def __init__(self, sender):
        self.sender = sender
        self.t_send_ns: dict[int, int] = {}

    def send(self, message, *, block: bool = True) -> None:
        if message.kind == "frame":
            self.t_send_ns[message.seq] = message.t_send_ns
        self.sender.send(message, block=block)


def run_sockets(args, source: ClipSource, recv_timeout_s: float = 60.0, *,
                serve_extra: Sequence[str] = (),
                attach: Callable[[Any], AbstractContextManager] | None = None) -> dict:
    """The sockets run (module docstring). ``serve_extra``: more ``serve`` options (e.g.
    ``--republish-frames``); ``attach(sidecar)``: a context entered once the side-car is
    ready and left before it stops (another consumer on its publish endpoint, such as the
    viewer: bench/viewer_overhead.py)."""
    from streamer.apps import analysis_argv, analysis_config
    from streamer.io.sockets import FrameSender, ResultSubscriber, SenderConfig, SubscriberConfig
    from streamer.options import to_argv
    from streamer.replay import replay
    from streamer.serve_process import SideCarProcess

    config = replay_config(args, source)
    total = args.warmup + args.frames
    serve_args = [*analysis_argv(analysis_config(args)),
                  *(["--lossless"] if args.lossless else []), *to_argv(budget_config(args)),
                  *serve_extra]
    print(f"sockets: starting `cardiostream serve {shlex.join(serve_args)}` on free loopback "
          "ports (a first start on a machine builds the engines and compiles the tracking "
          "code: a minute or two; later starts take seconds)", file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    sidecar = SideCarProcess(serve_args, args.startup_timeout_s)
    startup_s = time.perf_counter() - t0
    print(f"sockets: side-car ready in {startup_s:.1f} s ({sidecar.ready.get('mode')}, pid "
          f"{sidecar.process.pid}); sending {total} frames at "
          f"{config.fps or source.info.fps:g} fps", file=sys.stderr, flush=True)
    stopped: dict = {}
    attached = contextlib.ExitStack()
    try:
        if attach is not None:
            attached.enter_context(attach(sidecar))
        subscriber = ResultSubscriber(SubscriberConfig(sidecar.ready["publish"]))
        sender_box: dict = {}
        failure: list[BaseException] = []
        bar = _progress(total, "sockets: frames sent", args.quiet)

        def send() -> None:
            try:
                with source.open() as reader, FrameSender(
                        SenderConfig(sidecar.ready["ingest"])) as sender:
                    stamping = sender_box["sender"] = StampingSender(sender)
                    sender_box["stats"] = replay(reader, stamping, config,
                                                 on_frame=lambda _: bar.update(1))
            except BaseException as exc:  # reported in the main thread
                failure.append(exc)

        thread = threading.Thread(target=send, name="bench-replay", daemon=True)
        thread.start()
        tally = Tally(args.warmup)
        first_timed_send_ns = last_timed_arrival_ns = None
        idle_since = time.monotonic()
        with subscriber:
            while True:
                message = subscriber.recv(timeout_s=0.5)
                now_ns = time.time_ns()
                if message is None:
                    if failure:
                        raise failure[0]
                    if sidecar.process.poll() is not None:
                        raise BenchError(f"the side-car exited (code "
                                         f"{sidecar.process.returncode}); its log ends:\n"
                                         f"{sidecar.log_tail()}")
                    if time.monotonic() - idle_since > recv_timeout_s:
                        raise BenchError(f"no message from the side-car for "
                                         f"{recv_timeout_s:g} s")
                    continue
                idle_since = time.monotonic()
                if message.kind == "error":  # ours, also those with no stream (bad message)
                    tally.error(message, "")
                elif getattr(message, "stream", None) != config.stream:
                    continue
                elif message.kind == "result":
                    if not tally.result(message):
                        continue
                    stamps = sender_box["sender"].t_send_ns
                    t_send_ns = stamps[message.seq]
                    if first_timed_send_ns is None:
                        first_timed_send_ns = stamps.get(args.warmup, t_send_ns)
                    last_timed_arrival_ns = now_ns
                    latency = dict(message.latency_ms)
                    tally.records.append(FrameRecord(
                        seq=message.seq, t_s=(t_send_ns - first_timed_send_ns) / 1e9,
                        latency_ms=latency, flags=list(message.flags),
                        measured_ms={"send_to_receive": (now_ns - t_send_ns) / 1e6,
                                     "start_age": start_age_ms(latency)}))
                elif message.kind == "end":
                    tally.end(message)
                    break
        thread.join(30.0)
        bar.close()
        if failure:
            raise failure[0]
    finally:
        attached.close()
        try:
            stopped = sidecar.stop()
        except Exception as exc:  # the report still stands; say so
            log.warning("the side-car did not stop cleanly: %s", exc)
            if sidecar.process.poll() is None:
                sidecar.process.kill()
                sidecar.process.wait()
    sent = sender_box["stats"].frames
    window_s = ((last_timed_arrival_ns - first_timed_send_ns) / 1e9
                if tally.records and last_timed_arrival_ns > first_timed_send_ns else 0.0)
    return {
        "transport": "sockets",
        "mode": sidecar.ready.get("mode", "lossless" if args.lossless else "live"),
        "backends": configured_backends(args), "backends_source": "config",
        **_run_fields(args, startup_s, sent, tally, window_s),
        "replay_max_lateness_ms": round(sender_box["stats"].max_lateness_ms, 3),
        **run_report(tally.records),
        "sidecar": {"pid": sidecar.process.pid, "ready": sidecar.ready,
                    "stopped": stopped.get("stats")},
    }


def run_in_process(args, source: ClipSource) -> dict:
    from streamer.apps import analysis_config, build_analysis
    from streamer.io.protocol import FrameMessage, decode, encode
    from streamer.processor import FrameProcessor, Received
    from streamer.replay import clip_messages

    config = replay_config(args, source)
    total = args.warmup + args.frames
    budget = budget_config(args)
    print("in-process: building the pipeline (engines from the engine cache; a first run on "
          "a machine builds them: a minute or two)", file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    analysis = build_analysis(analysis_config(args))
    startup_s = time.perf_counter() - t0
    backends = {ROLE_STAGE[role]: _backend_label(engine.backend, engine.precision,
                                                 getattr(engine, "device", None))
                for app in analysis.apps.values() for role, engine in app.engines.items()}
    processor = FrameProcessor(analysis, budget=budget)  # not live: every frame processed
    tally = Tally(args.warmup)
    sent = 0
    t_first = t_last = None
    with source.open() as reader, _progress(total, "in-process: frames", args.quiet) as bar:
        for timed in clip_messages(reader, config):
            message = timed.message
            is_frame = isinstance(message, FrameMessage)
            if is_frame and message.seq == args.warmup:
                t_first = time.perf_counter()
            t_start = time.perf_counter()
            # through the wire format, as the side-car's ingest thread receives it
            t_recv_ns = time.time_ns()
            t0 = time.perf_counter_ns()
            decoded = decode(encode(message))
            decode_ms = (time.perf_counter_ns() - t0) / 1e6
            out = processor.handle(Received(decoded, t_recv_ns, decode_ms),
                                   t_take_ns=time.time_ns())
            if not is_frame:
                if message.kind == "end":
                    tally.end(out[0])
                continue
            sent += 1
            bar.update(1)
            for answer in out:
                if answer.kind == "error":
                    tally.error(answer, f"frame {message.seq}: ")
                elif answer.kind == "result":
                    if not tally.result(answer):
                        continue
                    t_last = time.perf_counter()
                    latency = dict(answer.latency_ms)
                    tally.records.append(FrameRecord(
                        seq=answer.seq, t_s=t_start - t_first, latency_ms=latency,
                        flags=list(answer.flags),
                        measured_ms={"start_age": start_age_ms(latency)}))
    window_s = (t_last - t_first) if tally.records else 0.0
    return {
        "transport": "in-process", "mode": "in-process",
        "backends": backends, "backends_source": "engines",
        **_run_fields(args, startup_s, sent, tally, window_s),
        **run_report(tally.records),
    }


def _run_fields(args, startup_s: float, sent: int, tally: Tally, window_s: float) -> dict:
    """The counts and rates every run reports, whichever transport it used."""
    n_timed = len(tally.records)
    return {
        "startup_s": round(startup_s, 3),
        "frames": {"sent": sent, "warmup": args.warmup, "timed": sent - args.warmup,
                   "results": tally.results, "results_timed": n_timed, "errors": tally.errors,
                   "dropped": tally.dropped},
        "end_counts": tally.end_counts, "accounted": accounting(sent, tally.end_counts),
        "throughput_fps": round(n_timed / window_s, 3) if window_s else 0.0,
        "window_s": round(window_s, 4),
        "budget_last": tally.budget_last,
    }


# --------------------------------------------------------------------------
# the report


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info() -> dict:
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        usable = os.cpu_count()
    try:
        load = round(os.getloadavg()[0], 2)
    except OSError:
        load = None
    return {"platform": platform.platform(), "machine": platform.machine(),
            "cpu": _cpu_model(), "cpus": os.cpu_count(), "cpus_usable": usable,
            "python": platform.python_version(), "hostname": platform.node(),
            "load_avg_1m": load}


def _git_commit() -> str | None:
    try:
        done = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, timeout=5, cwd=Path(__file__).resolve().parent)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() or None


def command_line(args) -> str:
    argv = getattr(args, "bench_argv", None)
    if argv is not None:
        return shlex.join(["cardiostream", "bench", *argv])
    return shlex.join(["cardiostream", *sys.argv[1:]])  # run through the cardiostream CLI


def settings(args) -> dict:
    return {"transport": args.transport, "frames": args.frames, "warmup": args.warmup,
            "rate_fps": args.rate_fps, "lossless": args.lossless, "budget_ms": args.budget_ms,
            "stage_budget_ms": dict(budget_config(args).stage_ms),
            "degrade": not args.no_degrade, "analysis": args.app,
            "backend": args.backend, "precision": args.precision, "threads": args.threads,
            "device": getattr(args, "device", None),
            "weights": list(args.weights), "view_gate": args.view_gate,
            "min_view_confidence": args.min_view_confidence}


def network_floors(args, run_: dict, peaks: dict[str, float]) -> dict:
    """Per network stage of a run: its arithmetic (GFLOP, :mod:`engines.flops`), the floor
    that takes at this CPU's measured GEMM rate for the stage's precision, and the stage's
    p50 over it; ``networks`` sums them. A stage whose network is the user's own (--weights)
    is left out (its FLOPs are not counted here)."""
    from engines import flops
    from engines.backends import get_threads, set_threads

    set_threads(args.threads or get_threads())  # the GEMM rate on the engines' threads
    own = {role for role, _ in args.weights}
    out, p50_sum, floor_sum = {}, 0.0, 0.0
    for role, stage in ROLE_STAGE.items():
        label = run_["backends"].get(stage)
        p50 = run_["latency_ms"].get(stage, {}).get("p50")
        if label is None or p50 is None or role in own:
            continue
        precision = label.split("/")[1].split("@")[0]
        if precision not in peaks:
            peaks[precision] = flops.gemm_peak_gflops(precision)
        gflop = flops.role_gflop(role)
        floor = flops.floor_ms(gflop, peaks[precision])
        out[stage] = {"gflop": round(gflop, 4), "peak_gflops": round(peaks[precision], 1),
                      "floor_ms": round(floor, 4), "p50_ms": p50, "over_floor": round(p50 / floor, 2)}
        p50_sum, floor_sum = p50_sum + p50, floor_sum + floor
    if out:
        out["networks"] = {"floor_ms": round(floor_sum, 4), "p50_ms": round(p50_sum, 4),
                           "over_floor": round(p50_sum / floor_sum, 2)}
    return out


def run(args) -> dict:
    """Run the benchmark as ``args`` say; the report (see the module docstring)."""
    if args.frames < 1 or args.warmup < 0:
        raise BenchError("--frames must be >= 1 and --warmup >= 0")
    if args.rate_fps is not None and not args.rate_fps > 0:
        raise BenchError(f"--rate-fps must be positive, got {args.rate_fps}")
    budget_config(args)  # bad budget options fail here, not in the side-car child
    modes = TRANSPORTS if args.transport == "both" else (args.transport,)
    source = clip_source(args)
    report = {
        "schema": SCHEMA,
        "created_utc": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "command": command_line(args),
        "version": _version(), "git_commit": _git_commit(),
        "machine": machine_info(), "clip": source.description, "settings": settings(args),
        "runs": {},
    }
    peaks: dict[str, float] = {}  # GEMM GFLOP/s per precision, measured once per report
    for mode in modes:
        runner = run_sockets if mode == "sockets" else run_in_process
        run_ = {"load_avg_1m": machine_info()["load_avg_1m"], **runner(args, source)}
        run_["floors"] = network_floors(args, run_, peaks)
        report["runs"][mode] = run_
    return report


def _version() -> str:
    from streamer import __version__

    return __version__


def write_json(report: dict, path: Path) -> None:
    """The report as indented JSON, with lists of numbers kept on one line."""
    text = json.dumps(report, indent=2)
    text = re.sub(r"\[\s*((?:-?[\d.eE+-]+|null)(?:,\s*(?:-?[\d.eE+-]+|null))*)\s*\]",
                  lambda m: "[" + ", ".join(p.strip() for p in m.group(1).split(",")) + "]",
                  text)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text + "\n")


# --------------------------------------------------------------------------
# the table


def _ms(value) -> str:
    return "-" if value is None else f"{value:.2f}"


def format_table(report: dict) -> str:
    clip = report["clip"]
    settings_ = report["settings"]
    source = (f"A4C phantom seed {clip['phantom_seed']}" if clip["source"] == "phantom"
              else clip["source"])
    lines = [f"clip: {source}, {'x'.join(map(str, clip['shape']))} {clip['dtype']}, "
             f"{clip['n_frames']} frames at {clip['fps']} fps"
             + (f", view hint {clip['view_hint']}" if clip["view_hint"] else "")
             + f"; analysis {settings_['analysis']}, backend {settings_['backend']}/"
               f"{settings_['precision']}"
             + (f", budget {settings_['budget_ms']:g} ms" if settings_["budget_ms"] else "")]
    m = report["machine"]
    lines.append(f"machine: {m['cpu']}, {m['cpus_usable']}/{m['cpus']} CPUs, "
                 f"Python {m['python']}, {m['platform']}")
    for mode, run_ in report["runs"].items():
        f = run_["frames"]
        rate = settings_["rate_fps"] or clip["fps"]
        head = (f"\n== {mode}: {f['timed']} timed frames after {f['warmup']} warm-up"
                + (f", sent at {rate:g} fps to a {run_['mode']} side-car (pid "
                   f"{run_['sidecar']['pid']}, ready in {run_['startup_s']:.1f} s)"
                   if mode == "sockets" else
                   f", back to back (pipeline built in {run_['startup_s']:.1f} s)")
                + f"; load average {run_.get('load_avg_1m')} ==")
        lines.append(head)
        if run_["backends"]:
            lines.append("backends: " + ", ".join(f"{k} {v}" for k, v in
                                                  run_["backends"].items())
                         + f" (from the {run_['backends_source']})")
        lines.append(f"{'latency_ms':<24}{'n':>6}{'p50':>9}{'p95':>9}{'p99':>9}{'max':>9}"
                     f"{'mean':>9}")
        rows = [(k, s) for k, s in run_["latency_ms"].items()]
        rows += [(f"{k} (bench)", s) for k, s in run_["measured_ms"].items()]
        for name, s in rows:
            lines.append(f"{name:<24}{s['n']:>6}{_ms(s.get('p50')):>9}{_ms(s.get('p95')):>9}"
                         f"{_ms(s.get('p99')):>9}{_ms(s.get('max')):>9}{_ms(s.get('mean')):>9}")
        floors = run_.get("floors") or {}
        if floors:
            lines.append(f"{'network floor':<24}{'GFLOP':>9}{'GFLOP/s':>9}{'floor':>9}{'p50':>9}"
                         f"{'x floor':>9}")
            for stage, f_ in floors.items():
                lines.append(f"{stage:<24}{f_.get('gflop', ''):>9}{f_.get('peak_gflops', ''):>9}"
                             f"{f_['floor_ms']:>9.2f}{f_['p50_ms']:>9.2f}{f_['over_floor']:>9.2f}")
        lines.append(f"throughput {run_['throughput_fps']:.1f} results/s over "
                     f"{run_['window_s']:.2f} s")
        lines.append(f"frames: sent {f['sent']}, results {f['results']} (timed "
                     f"{f['results_timed']}), errors {f['errors']}, dropped {f['dropped']} "
                     "(sum of the results' dropped)")
        end, acc = run_["end_counts"], run_["accounted"]
        if end is not None:
            counts = ", ".join(f"{k} {end[k]}" for k in ("processed", "dropped", "stale",
                                                          "errors") if k in end)
            verdict = (f"all {acc['sent']} sent frames accounted for" if acc["ok"] else
                       f"NOT accounted: {acc['sent']} sent, {acc['counted']} counted")
            lines.append(f"end counts: {counts} -> {verdict}")
        else:
            lines.append("end counts: no end message received")
        if run_["max_start_age_ms"] is not None:
            lines.append(f"max age of a frame when its processing started (transport + "
                         f"queue, which includes decode): {run_['max_start_age_ms']:.2f} ms")
        if run_["flags"]:
            lines.append("flags (timed results): " + ", ".join(
                f"{k} {v}" for k, v in run_["flags"].items()))
        if run_["flags_detail"]:
            lines.append("  in detail: " + ", ".join(
                f"{k} {v}" for k, v in run_["flags_detail"].items()))
        if run_.get("budget_last"):
            lines.append(f"budget at the end: {run_['budget_last']}")
    return "\n".join(lines)


# --------------------------------------------------------------------------
# the command


def add_parser(commands, parents: list[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    parser = commands.add_parser(
        "latency", parents=parents,
        help="replay a clip into a side-car (sockets) and/or the pipeline in process; "
             "report per-stage latency",
        description="Replay a clip and report latency. Frames go to a real `cardiostream "
        "serve` child on free loopback ports (--transport sockets: the side-car's own "
        "latency_ms per stage plus send -> result received, measured here) and/or through "
        "the pipeline in this process (in-process: FrameProcessor, no sockets, every frame "
        "processed). Prints n/p50/p95/p99/max/mean in ms per latency key over the timed "
        "frames, throughput, drops, stale frames and flags; writes a JSON report "
        "(schema cardiostream-bench-latency/1) and a PNG plot. Compare two reports with "
        "`cardiostream bench compare`.")
    parser.add_argument("--transport", choices=("sockets", "in-process", "both"),
                        default="both",
                        help="sockets: a `cardiostream serve` child on free loopback ports; "
                             "in-process: FrameProcessor in this process, no sockets; both "
                             "(default): one after the other")
    clip = parser.add_argument_group("clip (default: the held-out A4C phantom, view hint a4c)")
    clip.add_argument("--clip", type=Path, metavar="PATH",
                      help="a clip instead of the phantom: DICOM file or folder, "
                           ".nii/.nii.gz, .avi/.mp4, .npz, .csrec")
    clip.add_argument("--view", choices=(*VIEW_CLASSES, "none"), metavar="VIEW",
                      help="the view hint sent with every frame (overrides the view gate); "
                           "'none' sends no hint (default: a4c for the phantom, none for "
                           "--clip)")
    clip.add_argument("--spacing-mm", nargs=2, type=float, metavar=("ROW", "COL"),
                      help="pixel spacing in mm when the clip does not carry it (video)")
    clip.add_argument("--modality", choices=("US", "MR"),
                      help="modality when the clip does not say (video)")
    clip.add_argument("--slice", type=int, dest="slice_index", metavar="K",
                      help="slice of a 4-D NIfTI or DICOM series")
    clip.add_argument("--phantom-seed", type=int, metavar="SEED", default=PHANTOM_SEED,
                      help=f"held-out phantom seed, 2,000,000-2,099,999 (default {PHANTOM_SEED})")
    clip.add_argument("--phantom-size-px", type=int, metavar="PX", default=PHANTOM_SIZE_PX,
                      help=f"phantom frame side in pixels (default {PHANTOM_SIZE_PX})")
    clip.add_argument("--phantom-frames", type=int, metavar="N", default=PHANTOM_FRAMES,
                      help=f"phantom clip length in frames; it loops (default {PHANTOM_FRAMES})")
    timing = parser.add_argument_group("frames and timing")
    timing.add_argument("--frames", type=int, default=300, metavar="N",
                        help="timed frames (default 300; the clip loops as needed)")
    timing.add_argument("--warmup", type=int, default=30, metavar="N",
                        help="untimed frames sent first (default 30)")
    timing.add_argument("--rate-fps", type=float, metavar="FPS",
                        help="sockets: send at this rate (default: the clip's frame rate); "
                             "in-process frames always run back to back")
    timing.add_argument("--lossless", action="store_true",
                        help="sockets: run the side-car with --lossless (back-pressure, "
                             "nothing dropped) instead of live")
    timing.add_argument("--startup-timeout-s", type=float, default=300.0, metavar="S",
                        help="sockets: how long the side-car may take to start, s "
                             "(default 300: a cold machine builds the engines first)")
    output = parser.add_argument_group("output")
    output.add_argument("--out", type=Path, default=DEFAULT_OUT, metavar="PATH.json",
                        help=f"the JSON report (default {DEFAULT_OUT})")
    output.add_argument("--plot", type=Path, metavar="PATH.png",
                        help="the plot (default: the --out path with .png)")
    output.add_argument("--no-plot", action="store_true", help="no plot")
    output.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.set_defaults(func=cmd_latency)
    return parser


def cmd_latency(args) -> int:
    from streamer.io.clips import ClipError
    from streamer.io.sockets import EndpointError

    try:
        report = run(args)
    except (BenchError, ClipError, EndpointError, ValueError, OSError) as exc:
        log.debug("traceback of the error below", exc_info=True)
        print(f"cardiostream bench latency: error: {exc}", file=sys.stderr)
        return 2
    except RuntimeError as exc:  # the side-car did not start (its log tail follows)
        print(f"cardiostream bench latency: error: {exc}", file=sys.stderr)
        return 1
    print(format_table(report))
    write_json(report, args.out)
    print(f"\nwrote {args.out}")
    if not args.no_plot:
        from streamer.bench.plots import plot_report

        path = args.plot or args.out.with_suffix(".png")
        plot_report(report, path)
        print(f"wrote {path}")
    return 0
