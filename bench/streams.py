"""Many scanners, one side-car: N concurrent echo streams into ONE ``cardiostream serve``.

For each N in ``--streams`` (default 1 2 3 4 5) a fresh side-car starts on free loopback
ports (live mode unless ``--lossless``), a subscriber listens on its publish endpoint, and
N senders (threads of this process, each its own PUSH socket and stream ``bench-K``)
replay the held-out 256x256 A4C phantom of ``bench latency`` at ``--rate-fps`` (50) with
the view hint ``a4c``, so that every stage runs. Their clocks are not aligned, as
unsynchronised scanners' are: ``--phase random`` (default) starts each sender at a random
(seeded) point of the first frame interval; ``even`` starts sender K K/N of an interval after
sender 0 (frames never arrive together: the easy case); ``together`` starts all at once
(every frame arrives with N-1 others: the hard case).

Per N it reports, over the timed frames (each stream's frames after ``--warmup``):

* ``e2e``: bench send -> result received, p50 / p99 / max (ms), all streams pooled;
* ``dropped``: the share of timed frames sent that got no result (replaced in the live
  slot, skipped as stale, or an error), pooled, and the worst stream's share;
* ``batch``: how many frames the side-car's networks ran together (the largest batch of
  each timed result's ``batch`` field, 1 without ``--max-batch``): each size's share;
* ``shed``: with ``-- --budget-ms MS``, the share of timed results whose analysis the
  budget's degradation shed (flag ``analysis_skipped``: answered, without strain), and each
  degradation mode's share (``budget_modes``);
* the side-car's own ``total`` (receive -> result) p99, and per stream its end counts.

    python bench/streams.py [--streams 1 2 3 4 5] [--frames 300] [--warmup 30]
        [--precision auto] [--out bench/results/streams.json] [-- SERVE_OPTIONS...]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from streamer.bench.latency import (  # noqa: E402
    PHANTOM_FRAMES,
    PHANTOM_SEED,
    PHANTOM_SIZE_PX,
    ArrayClip,
    StampingSender,
    machine_info,
    phantom_clip,
    summarize,
)

STREAM = "bench-{}"


def phase_offsets_s(phase: str, n: int, rate_fps: float, seed: int) -> list[float]:
    """When each of the ``n`` senders sends its first frame, seconds after the earliest
    moment it could (see ``--phase``)."""
    interval = 1.0 / rate_fps
    if phase == "even":
        return [k * interval / n for k in range(n)]
    if phase == "together":
        return [0.0] * n
    return sorted(np.random.default_rng(seed + n).uniform(0, interval, n).tolist())


def run_n(n: int, frames: np.ndarray, spacing_mm: tuple, fps: float, args) -> dict:
    """One side-car, ``n`` streams: the figures of the module docstring."""
    from streamer.io.sockets import FrameSender, ResultSubscriber, SenderConfig, SubscriberConfig
    from streamer.replay import ReplayConfig, replay
    from streamer.serve_process import SideCarProcess

    rate = args.rate_fps or fps
    total = args.warmup + args.frames
    serve_args = ["--backend", args.backend, "--precision", args.precision,
                  *(["--lossless"] if args.lossless else []), *args.serve_args]
    sidecar = SideCarProcess(serve_args, args.startup_timeout_s)
    stamps: list[dict[int, int]] = [{} for _ in range(n)]
    failure: list[BaseException] = []
    offsets_s = phase_offsets_s(args.phase, n, rate, args.seed)
    start_at = time.monotonic() + 1.0   # every sender connected before the first frame

    def send(k: int) -> None:
        try:
            config = ReplayConfig(stream=STREAM.format(k), fps=rate, view="a4c",
                                  loop=math.ceil(total / len(frames)), max_frames=total)
            with FrameSender(SenderConfig(sidecar.ready["ingest"])) as sender:
                stamping = StampingSender(sender)   # each frame's t_send_ns, by seq
                stamps[k] = stamping.t_send_ns
                time.sleep(max(0.0, start_at + offsets_s[k] - time.monotonic()))
                replay(ArrayClip(frames, spacing_mm, fps, "phantom"), stamping, config)
        except BaseException as exc:  # reported by the main thread
            failure.append(exc)

    e2e, total_ms, batch, modes = [], [], Counter(), Counter()
    shed = 0  # timed results whose analysis was shed (the budget's degradation)
    per_stream = {STREAM.format(k): {"timed_sent": args.frames, "timed_results": 0} for k in range(n)}
    ends: dict[str, dict] = {}
    try:
        with ResultSubscriber(SubscriberConfig(sidecar.ready["publish"])) as subscriber:
            threads = [threading.Thread(target=send, args=(k,), daemon=True) for k in range(n)]
            for t in threads:
                t.start()
            idle_since = time.monotonic()
            while len(ends) < n:
                message = subscriber.recv(timeout_s=0.5)
                received_ns = time.time_ns()
                if message is None:
                    if failure:
                        raise failure[0]
                    if time.monotonic() - idle_since > 60:
                        raise RuntimeError("no message from the side-car for 60 s; its log "
                                           f"ends:\n{sidecar.log_tail()}")
                    continue
                idle_since = time.monotonic()
                stream = getattr(message, "stream", None)
                if stream not in per_stream:
                    continue
                if message.kind == "end":
                    ends[stream] = {k: message.meta.get(k) for k in
                                    ("processed", "dropped", "stale", "errors")}
                elif message.kind == "result" and message.seq >= args.warmup:
                    k = int(stream.rsplit("-", 1)[1])
                    e2e.append((received_ns - stamps[k][message.seq]) / 1e6)
                    total_ms.append(message.latency_ms.get("total"))
                    batch[max((message.batch or {"": 1}).values())] += 1
                    modes[(message.budget or {}).get("mode", "no budget")] += 1
                    shed += "analysis_skipped" in message.flags
                    per_stream[stream]["timed_results"] += 1
            for t in threads:
                t.join(30)
    finally:
        stopped = sidecar.stop()
    for stream, s in per_stream.items():
        s["dropped_share"] = 1 - s["timed_results"] / s["timed_sent"]
        s["end_counts"] = ends.get(stream)
    sent = n * args.frames
    results = sum(s["timed_results"] for s in per_stream.values())
    return {"streams": n, "rate_fps": rate, "phase": args.phase,
            "offsets_ms": [round(o * 1e3, 3) for o in offsets_s], "timed_sent": sent, "timed_results": results,
            "dropped_share": 1 - results / sent,
            "worst_stream_dropped_share": max(s["dropped_share"] for s in per_stream.values()),
            "e2e_ms": summarize(e2e), "sidecar_total_ms": summarize(total_ms),
            "batch_sizes": {str(b): batch[b] / max(1, sum(batch.values())) for b in sorted(batch)},
            "budget_modes": {m: n / max(1, results) for m, n in sorted(modes.items())},
            "analysis_shed_share": shed / max(1, results),
            "per_stream": per_stream, "sidecar_stopped": stopped.get("stats"),
            "mode": sidecar.ready.get("mode")}


def format_table(runs: list[dict]) -> str:
    lines = [f"{'N':>2} {'e2e p50':>8} {'p99':>7} {'max':>7} {'dropped':>8} {'worst':>7} "
             f"{'side-car p99':>12} {'shed':>6}  batch sizes (share of results)"]
    for r in runs:
        e = r["e2e_ms"]
        batches = ", ".join(f"{b}: {s:.0%}" for b, s in r["batch_sizes"].items())
        lines.append(f"{r['streams']:>2} {e.get('p50', float('nan')):>8.2f} {e.get('p99', float('nan')):>7.2f} "
                     f"{e.get('max', float('nan')):>7.2f} {r['dropped_share']:>8.2%} "
                     f"{r['worst_stream_dropped_share']:>7.2%} "
                     f"{r['sidecar_total_ms'].get('p99', float('nan')):>12.2f} "
                     f"{r['analysis_shed_share']:>6.1%}  {batches}")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--streams", type=int, nargs="+", default=[1, 2, 3, 4, 5],
                   help="the stream counts to run, one side-car each (default 1 2 3 4 5)")
    p.add_argument("--frames", type=int, default=300, help="timed frames per stream (default 300)")
    p.add_argument("--warmup", type=int, default=30, help="untimed frames first, per stream (default 30)")
    p.add_argument("--rate-fps", type=float, default=None,
                   help="frames per second per stream (default: the phantom's 50)")
    p.add_argument("--phase", choices=("random", "even", "together"), default="random",
                   help="how the senders' frame clocks lie against each other (default random)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random phases")
    p.add_argument("--backend", default="auto", help="the side-car's --backend (default auto)")
    p.add_argument("--precision", default="auto", help="the side-car's --precision (default auto)")
    p.add_argument("--lossless", action="store_true", help="the side-car in lossless mode")
    p.add_argument("--startup-timeout-s", type=float, default=300.0)
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "streams.json")
    p.add_argument("serve_args", nargs="*", help="more `cardiostream serve` options, after --")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    print(f"making the held-out A4C phantom (seed {PHANTOM_SEED}, {PHANTOM_SIZE_PX}x{PHANTOM_SIZE_PX}, "
          f"{PHANTOM_FRAMES} frames)", flush=True)
    frames, spacing_mm, fps = phantom_clip(PHANTOM_SIZE_PX, PHANTOM_FRAMES, PHANTOM_SEED)
    runs = []
    for n in args.streams:
        print(f"{n} stream(s) into one side-car ...", flush=True)
        runs.append(run_n(n, frames, spacing_mm, fps, args))
        print(format_table(runs[-1:]).splitlines()[-1], flush=True)
    print(format_table(runs))
    report = {"command": " ".join(["bench/streams.py", *(sys.argv[1:] if argv is None else argv)]),
              "machine": machine_info(), "clip": {"phantom_seed": PHANTOM_SEED,
                                                  "size_px": PHANTOM_SIZE_PX, "fps": fps},
              "runs": runs}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
