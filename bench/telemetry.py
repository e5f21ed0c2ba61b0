"""What the per-stage telemetry itself costs, against the time of an echo frame.

The telemetry is: a clock read around every stage (``Pipeline.__call__``), the result's
``latency_ms`` record (transport, decode, queue, stages, total; publish and end_to_end
stamped by the publisher), the budget check, and those numbers in the result's JSON
header. It cannot be switched off in the product, so it is measured by difference, each
part side by side with the same work without it, interleaved in rounds:

* ``pipeline``: a stream's ``Pipeline`` (``App.new_stream(...).pipeline``) called on a frame
  against calling the same stages' ``process`` in a plain loop, for the echo app's six
  stage names with no-op bodies;
* ``result``: ``FrameProcessor.handle`` (stream lookup, latency record, budget flags, fields,
  result assembly) against the same pipeline call alone;
* ``publish``: ``_stamp_publish`` plus encoding the result header, against encoding the
  same result with an empty ``latency_ms``;

and the sum is set against the median time of a frame of the real echo pipeline
(in-process, the held-out phantom of ``bench/latency.py``), measured in the same run.

    python bench/telemetry.py                 # -> bench/results/telemetry.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from streamer.app import App, Stage  # noqa: E402
from streamer.apps import Analysis, AnalysisConfig, build_analysis  # noqa: E402
from streamer.bench.latency import machine_info, phantom_clip  # noqa: E402
from streamer.budget import BudgetConfig  # noqa: E402
from streamer.io.protocol import FrameMessage, StartMessage, encode  # noqa: E402
from streamer.processor import FrameProcessor, Received  # noqa: E402
from streamer.sidecar import _stamp_publish  # noqa: E402

STAGES = ("preprocess", "view", "segment", "flow", "track", "strain")


def _noop_stage(name: str) -> Stage:
    cls = type(f"Noop_{name}", (Stage,), {"name": name, "inputs": ("frame",),
                                          "outputs": (f"{name}_out",),
                                          "process": lambda self, frame: {f"{name}_out": None}})
    return cls()


class _NoopApp(App):
    """The echo app's stage names with no-op bodies."""

    name = "noop"

    def stages(self) -> list[Stage]:
        return [_noop_stage(name) for name in STAGES]


def _frame(seq: int, pixels: np.ndarray) -> FrameMessage:
    now = time.time_ns()
    return FrameMessage(stream="t", seq=seq, t_acq_ns=seq, modality="US", pixels=pixels,
                        spacing_mm=(0.3, 0.3), fps=50.0, t_send_ns=now)


def _per_call_us(fn, n: int) -> float:
    t0 = time.perf_counter_ns()
    for i in range(n):
        fn(i)
    return (time.perf_counter_ns() - t0) / n / 1e3


def overhead_us(calls: int, rounds: int) -> dict[str, dict[str, float]]:
    analysis = Analysis({_NoopApp.name: _NoopApp()}, forced=_NoopApp.name)
    pipeline = analysis.new_stream(analysis.apps[_NoopApp.name], "t").pipeline
    stages = pipeline.stages
    processor = FrameProcessor(analysis, budget=BudgetConfig(frame_ms=25.0), live=True)
    processor.handle(Received(StartMessage("t"), time.time_ns()))
    pixels = np.zeros((256, 256), np.uint8)
    frames = [_frame(i, pixels) for i in range(64)]
    [result] = processor.handle(Received(frames[0], time.time_ns()))
    bare = type(result)(**{**result.__dict__, "latency_ms": {}})

    def plain(i):
        values = {"frame": frames[i % 64]}
        for stage in stages:
            values.update(stage.process(frame=values["frame"]))

    def timed(i):
        frames[i % 64].t_send_ns = time.time_ns()  # the same work as handled() does
        pipeline(frames[i % 64])

    def handled(i):
        now = time.time_ns()
        frame = frames[i % 64]
        frame.t_send_ns = now  # fresh: an old frame would be skipped as stale
        processor.handle(Received(frame, now), t_take_ns=now)

    def published(i):
        r = type(result)(**{**result.__dict__, "latency_ms": dict(result.latency_ms)})
        _stamp_publish(r)
        encode(r)

    def encoded_bare(i):
        encode(type(bare)(**bare.__dict__))

    pairs = {"pipeline": (timed, plain), "result": (handled, timed), "publish": (published, encoded_bare)}
    samples: dict[str, list[float]] = {name: [] for name in pairs}
    for _ in range(rounds):
        for name, (with_, without) in pairs.items():
            samples[name].append(_per_call_us(with_, calls) - _per_call_us(without, calls))
    return {name: {"median_us": float(np.median(v)), "max_us": float(np.max(v))}
            for name, v in samples.items()}


def echo_frame_ms(frames: int) -> float:
    clip, spacing_mm, fps = phantom_clip(256, 60, 2_000_001)
    processor = FrameProcessor(build_analysis(AnalysisConfig(app="echo")))
    processor.handle(Received(StartMessage("e"), time.time_ns()))
    totals = []
    for seq in range(frames + 10):
        message = FrameMessage(stream="e", seq=seq, t_acq_ns=int(seq / fps * 1e9), modality="US",
                               pixels=clip[seq % len(clip)], spacing_mm=spacing_mm, fps=fps,
                               view="a4c")
        now = time.time_ns()
        result = processor.handle(Received(message, now), t_take_ns=now)[0]
        if seq >= 10:
            totals.append(result.latency_ms["total"])
    return float(np.median(totals))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=2000, help="calls per timing (default 2000)")
    parser.add_argument("--rounds", type=int, default=7, help="interleaved rounds (default 7)")
    parser.add_argument("--echo-frames", type=int, default=150,
                        help="echo frames timed for the reference frame time (default 150)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "telemetry.json")
    args = parser.parse_args(argv)
    parts = overhead_us(args.calls, args.rounds)
    frame_ms = echo_frame_ms(args.echo_frames)
    total_us = sum(p["median_us"] for p in parts.values())
    report = {"benchmark": "telemetry overhead",
              "command": " ".join([Path(sys.argv[0]).name, *(argv or sys.argv[1:])]),
              "machine": machine_info(),
              "parts_us": parts, "telemetry_us_per_frame": total_us,
              "echo_frame_ms_median": frame_ms,
              "overhead_pct_of_frame": 100.0 * total_us / 1e3 / frame_ms}
    print(f"{'part':<10}{'median us':>11}{'max us':>9}")
    for name, p in parts.items():
        print(f"{name:<10}{p['median_us']:>11.1f}{p['max_us']:>9.1f}")
    print(f"telemetry {total_us:.1f} us per frame = {report['overhead_pct_of_frame']:.2f} % of the "
          f"echo frame's median {frame_ms:.2f} ms")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
