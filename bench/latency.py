"""Per-stage latency of the echo pipeline in one process: p50 / p95 / p99 / max per stage.

A held-out A4C phantom clip (256 x 256 by default, 60 frames, 50 fps) runs frame by frame
through the application's own pipeline (``streamer.pipeline.build_pipeline``: view ->
segmentation -> flow -> tracking -> strain) and ``FrameProcessor``, exactly as the
side-car's worker runs it, with no sockets: what is measured is the analysis, not the
transport (``bench/transport.py`` measures that). The clip loops until ``--frames``
frames have been timed, after ``--warmup`` untimed frames.

"pipeline" is the sum of the stages of a frame (preprocess .. strain); "total" is the
processor's receive -> result time (stages plus result assembly). Frames that the view
gate stops (not classified A4C) skip segmentation, flow, tracking and strain: the table
counts them, and ``--view a4c`` sends the clip with a view hint so that every frame runs
every stage.

    python bench/latency.py                                 # default backend
    python bench/latency.py --backend openvino --frames 600 --out bench/results/latency.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from engines.spec import BACKENDS, PRECISIONS, VIEW_CLASSES  # noqa: E402
from streamer.io.protocol import FrameMessage, StartMessage  # noqa: E402
from streamer.pipeline import EngineConfig, PipelineConfig, build_pipeline  # noqa: E402
from streamer.processor import FrameProcessor, Received  # noqa: E402

STAGE_ORDER = ("preprocess", "view", "segment", "flow", "track", "strain")


def phantom_clip(size: int, frames: int, seed: int) -> tuple[np.ndarray, tuple, float]:
    """A held-out A4C phantom (test split seed): frames, spacing_mm, fps."""
    from calib.datasets import random_echo_config, split_of
    from calib.echo import make_echo_clip

    if split_of(seed) != "test":
        raise SystemExit(f"seed {seed} is not in the held-out test split")
    clip = make_echo_clip(random_echo_config(seed, view="a4c", rows=size, cols=size,
                                             frames=frames, fps=50.0))
    return clip.frames, clip.spacing_mm, clip.fps


def percentiles(values: list[float]) -> dict[str, float]:
    a = np.asarray(values, dtype=np.float64)
    return {"n": int(a.size), "p50": float(np.percentile(a, 50)),
            "p95": float(np.percentile(a, 95)), "p99": float(np.percentile(a, 99)),
            "max": float(a.max()), "mean": float(a.mean())}


def run(args) -> dict:
    frames, spacing_mm, fps = phantom_clip(args.size, args.clip_frames, args.seed)
    t0 = time.perf_counter()
    pipeline = build_pipeline(PipelineConfig(engines=EngineConfig(
        backend=args.backend, precision=args.precision, threads=args.threads)))
    build_s = time.perf_counter() - t0
    backends = {stage.name: f"{stage.engine.backend}/{stage.engine.precision}"
                for stage in pipeline.stages if hasattr(stage, "engine")}
    processor = FrameProcessor(pipeline)
    processor.handle(Received(StartMessage(stream="bench", meta={}), time.time_ns()))
    timings: dict[str, list[float]] = {}
    analysed = skipped = 0
    n_total = args.warmup + args.frames
    t_wall = time.perf_counter()
    for seq in range(n_total):
        pixels = frames[seq % len(frames)]
        message = FrameMessage(stream="bench", seq=seq, t_acq_ns=int(seq / fps * 1e9),
                               modality="US", pixels=pixels, spacing_mm=spacing_mm, fps=fps,
                               view=args.view)
        now = time.time_ns()
        result = processor.handle(Received(message, t_recv_ns=now), t_take_ns=now)[0]
        if result.kind != "result":
            raise SystemExit(f"frame {seq}: {result.code}: {result.message}")
        if seq < args.warmup:
            continue
        if seq == args.warmup:
            t_wall = time.perf_counter()
        latency = dict(result.latency_ms)
        latency["pipeline"] = sum(latency[s] for s in STAGE_ORDER if s in latency)
        for name, value in latency.items():
            if name in STAGE_ORDER or name in ("pipeline", "total"):
                timings.setdefault(name, []).append(value)
        if any(flag.startswith("not_") for flag in result.flags):
            skipped += 1
        else:
            analysed += 1
    wall_s = time.perf_counter() - t_wall
    stages = {name: percentiles(timings[name])
              for name in (*STAGE_ORDER, "pipeline", "total") if name in timings}
    return {
        "benchmark": "latency (in-process pipeline)",
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                    "python": platform.python_version()},
        "clip": {"phantom_seed": args.seed, "size": args.size, "frames": args.clip_frames,
                 "fps": fps, "spacing_mm": list(spacing_mm), "view_hint": args.view},
        "backend": args.backend, "precision": args.precision, "engines": backends,
        "build_s": round(build_s, 3), "frames_timed": args.frames, "warmup": args.warmup,
        "frames_analysed": analysed, "frames_stopped_by_view_gate": skipped,
        "throughput_fps": args.frames / wall_s, "latency_ms": stages,
    }


def print_table(report: dict) -> None:
    print(f"pipeline latency, {report['frames_timed']} frames of a {report['clip']['size']}x"
          f"{report['clip']['size']} A4C phantom (seed {report['clip']['phantom_seed']}), "
          f"engines {report['engines']}")
    print(f"{'stage':<12}{'p50 ms':>9}{'p95 ms':>9}{'p99 ms':>9}{'max ms':>9}{'mean ms':>9}")
    for name, s in report["latency_ms"].items():
        print(f"{name:<12}{s['p50']:>9.2f}{s['p95']:>9.2f}{s['p99']:>9.2f}{s['max']:>9.2f}"
              f"{s['mean']:>9.2f}")
    print(f"throughput {report['throughput_fps']:.1f} frames/s; analysed "
          f"{report['frames_analysed']}, stopped by the view gate "
          f"{report['frames_stopped_by_view_gate']}; engines built in {report['build_s']:.1f} s")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", default="auto", choices=BACKENDS)
    parser.add_argument("--precision", default="fp32", choices=PRECISIONS)
    parser.add_argument("--threads", type=int, help="CPU threads for the networks")
    parser.add_argument("--frames", type=int, default=300, help="frames timed (default 300)")
    parser.add_argument("--warmup", type=int, default=20, help="untimed frames first")
    parser.add_argument("--size", type=int, default=256, help="phantom frame size, px")
    parser.add_argument("--clip-frames", type=int, default=60, help="phantom clip length")
    parser.add_argument("--seed", type=int, default=2_000_001, help="held-out phantom seed")
    parser.add_argument("--view", choices=VIEW_CLASSES,
                        help="send frames with this view hint (e.g. a4c: every stage runs)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "latency.json")
    args = parser.parse_args(argv)
    report = run(args)
    print_table(report)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
