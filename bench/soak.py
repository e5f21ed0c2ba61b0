"""Soak: a long stream through a real side-car, its memory and per-frame cost over time.

One ``cardiostream serve --lossless`` child process on loopback, one stream of ``--frames``
frames sent as fast as the side-car takes them (lossless back-pressure), one subscriber that
reads every result. Two workloads:

* ``--app none`` (runtime only: decode, preprocess, publish): 256 x 256 uint8 frames;
* ``--app echo`` (the full echo app with the view hint ``a4c``, so every frame is analysed):
  pydicom-data's real 120-frame apical 4-chamber cine, looped with continuing ``seq`` and
  acquisition times (30 fps).

Every ``--report-every`` frames it samples the side-car's resident memory
(``SideCarProcess.rss_mb``) and prints a row: frames, RSS, and the median / p99 of the per-frame processing time
(the result's ``total`` less its ``queue``: decode and every stage, without the wait in the
lossless inbox, which at full rate only says how far ahead the sender is). At the end:

* RSS growth after warm-up: the largest RSS of the run after its first 10 % of frames, less
  the RSS at 10 %;
* the p99 of the processing time over the last 10 % of frames against the first 10 %;
* results lost: frames sent less results received (0 in lossless mode), and the side-car's
  own counts from its ``end`` echo.

Writes the JSON to ``--out`` (default ``bench/results/soak_APP.json``).

    python bench/soak.py --app none --frames 1000000
    python bench/soak.py --app echo --frames 100000
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from streamer.io.protocol import EndMessage, FrameMessage, StartMessage  # noqa: E402
from streamer.io.sockets import (  # noqa: E402
    FrameSender,
    ResultSubscriber,
    SenderConfig,
    SubscriberConfig,
)
from streamer.serve_process import SideCarProcess  # noqa: E402

STREAM = "soak"
ECHO_CLIP = "color3d_jpeg_baseline.dcm"


def source_frames(app: str) -> tuple[list[np.ndarray], tuple[float, float], float, str | None]:
    """The frames the stream loops over, their spacing (mm), frame rate and view hint."""
    if app == "none":
        rng = np.random.default_rng(0)
        return [rng.integers(0, 255, (256, 256), np.uint8)], (0.3, 0.3), 50.0, None
    from pydicom.data import get_testdata_file

    from streamer.io.clips import open_clip

    path = get_testdata_file(ECHO_CLIP, download=False)
    if path is None:
        raise SystemExit(f"{ECHO_CLIP} not found: install the test extra (pydicom-data)")
    with open_clip(path) as reader:
        info = reader.info
        frames = [np.ascontiguousarray(f.pixels) for f in reader]
    return frames, tuple(info.spacing_mm), float(info.fps), "a4c"


def send_all(endpoint: str, n: int, frames, spacing_mm, fps: float, view, failures: list
             ) -> None:
    """The stream: start, n frames (the source looped), end; as fast as the side-car takes
    them."""
    try:
        with FrameSender(SenderConfig(endpoint, send_timeout_s=120.0)) as sender:
            sender.send(StartMessage(STREAM, {"modality": "US"}))
            t0 = time.time_ns()
            period_ns = int(1e9 / fps)
            for seq in range(n):
                now = time.time_ns()
                sender.send(FrameMessage(
                    stream=STREAM, seq=seq, t_acq_ns=t0 + seq * period_ns, modality="US",
                    pixels=frames[seq % len(frames)], spacing_mm=spacing_mm, fps=fps,
                    view=view, t_send_ns=now))
            sender.send(EndMessage(STREAM, n))
    except Exception as exc:  # reported by the main thread
        failures.append(exc)


def percentile(values: np.ndarray, q: float) -> float:
    return float(np.percentile(values, q)) if len(values) else float("nan")


def run(app: str, n: int, report_every: int, serve_args: list[str]) -> dict:
    frames, spacing, fps, view = source_frames(app)
    sidecar = SideCarProcess(["--app", app, "--lossless", *serve_args], startup_timeout_s=600)
    processing = np.full(n, np.nan, np.float32)
    samples = []  # (frames answered, rss MiB, seconds since start)
    results = errors = 0
    end = None
    failures: list = []
    t_start = time.monotonic()
    try:
        with ResultSubscriber(SubscriberConfig(sidecar.ready["publish"])) as subscriber:
            sender = threading.Thread(
                target=send_all, args=(sidecar.ready["ingest"], n, frames, spacing, fps, view,
                                       failures), daemon=True)
            sender.start()
            print(f"{'frames':>9} {'RSS MiB':>8} {'p50 ms':>7} {'p99 ms':>7} {'s':>7}")
            for message in subscriber.iter_until_end(STREAM, timeout_s=300.0):
                if message.kind == "result":
                    latency = message.latency_ms
                    processing[message.seq] = latency["total"] - latency.get("queue", 0.0)
                    results += 1
                    if results % report_every == 0:
                        rss = sidecar.rss_mb()
                        samples.append((results, rss, time.monotonic() - t_start))
                        window = processing[max(0, message.seq - report_every + 1):
                                            message.seq + 1]
                        print(f"{results:>9} {rss:8.1f} {percentile(window, 50):7.2f} "
                              f"{percentile(window, 99):7.2f} {samples[-1][2]:7.0f}",
                              flush=True)
                elif message.kind == "error":
                    errors += 1
                elif message.kind == "end":
                    end = message
            sender.join(60)
        if failures:
            raise failures[0]
        stats = sidecar.stop()["stats"]
    finally:
        if sidecar.process.poll() is None:
            sidecar.process.kill()
            sidecar.process.wait()
    tenth = max(1, n // 10)
    warm = [rss for k, rss, _ in samples if k <= tenth]
    later = [rss for k, rss, _ in samples if k > tenth]
    rss_warm = warm[-1] if warm else (samples[0][1] if samples else float("nan"))
    first, last = processing[:tenth], processing[-tenth:]
    first, last = first[np.isfinite(first)], last[np.isfinite(last)]
    return {
        "app": app, "frames": n, "report_every": report_every, "serve_args": serve_args,
        "source": "256x256 uint8 noise" if app == "none" else f"{ECHO_CLIP} looped, view a4c",
        "results": results, "errors": errors, "lost": n - results - errors,
        "end_meta": dict(end.meta) if end is not None else None, "sidecar_stats": stats,
        "rss_mb_at_10pct": rss_warm,
        "rss_mb_max_after_warmup": max(later) if later else None,
        "rss_growth_after_warmup_mb": (max(later) - rss_warm) if later else None,
        "rss_mb_samples": [(k, round(r, 2), round(t, 1)) for k, r, t in samples],
        "processing_ms_first_10pct": {"p50": percentile(first, 50), "p99": percentile(first, 99)},
        "processing_ms_last_10pct": {"p50": percentile(last, 50), "p99": percentile(last, 99)},
        "p99_last_over_first": percentile(last, 99) / percentile(first, 99),
        "wall_s": round(time.monotonic() - t_start, 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--app", choices=("none", "echo"), default="none",
                        help="none: the runtime only; echo: the full echo app (view hint a4c)")
    parser.add_argument("--frames", type=int, default=None,
                        help="frames in the stream (default: 1,000,000 for none, 100,000 "
                             "for echo)")
    parser.add_argument("--report-every", type=int, default=None, metavar="N",
                        help="a row (RSS, latency) every N frames (default: frames / 50)")
    parser.add_argument("--out", type=Path, default=None,
                        help="JSON file (default bench/results/soak_APP.json)")
    parser.add_argument("serve_args", nargs="*", help="more `serve` options, after --")
    args = parser.parse_args(argv)
    n = args.frames or (1_000_000 if args.app == "none" else 100_000)
    if n < 20:
        parser.error("--frames must be >= 20")
    report_every = args.report_every or max(1, n // 50)
    out = args.out or ROOT / "bench" / "results" / f"soak_{args.app}.json"
    record = {"command": " ".join(["python bench/soak.py", *(argv or sys.argv[1:])]),
              "machine": platform.node(), "python": platform.python_version(),
              "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              **run(args.app, n, report_every, args.serve_args)}
    print(f"\n{args.app}: {n} frames, {record['results']} results, {record['lost']} lost, "
          f"{record['errors']} errors, {record['wall_s']:.0f} s")
    growth = record["rss_growth_after_warmup_mb"]
    print(f"RSS at 10 %: {record['rss_mb_at_10pct']:.1f} MiB; growth after warm-up: "
          f"{growth:+.1f} MiB" if growth is not None else "RSS: too few samples")
    f, l = record["processing_ms_first_10pct"], record["processing_ms_last_10pct"]
    print(f"processing p50/p99: first 10 % {f['p50']:.3f}/{f['p99']:.3f} ms, last 10 % "
          f"{l['p50']:.3f}/{l['p99']:.3f} ms (p99 ratio {record['p99_last_over_first']:.3f})")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=1))
    print(f"wrote {out}")
    return 0 if record["lost"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
