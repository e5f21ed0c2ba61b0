"""Per-stage latency of the echo pipeline in one process: p50 / p95 / p99 / max per stage.

A thin script over ``cardiostream bench latency`` (:mod:`streamer.bench.latency`) that
keeps this script's own defaults: the in-process mode only (the application's pipeline
and ``FrameProcessor`` driven frame by frame, no sockets), the held-out A4C phantom
(seed 2,000,001, 256 x 256, 60 frames, 50 fps) sent without a view hint (the view gate
decides; ``--view a4c`` makes every frame run every stage), 20 warm-up frames, and the
report in ``bench/results/latency.json`` (schema ``cardiostream-bench-latency/1``, see
the module) with its plot beside it. Every other option of ``cardiostream bench latency``
passes through: ``--transport sockets`` measures a real side-car over loopback instead.

    python bench/latency.py                                 # default backend
    python bench/latency.py --backend openvino --frames 600 --out bench/results/latency.json
    python bench/latency.py --transport both --view a4c     # side-car and in-process
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from streamer.bench import main as bench_main  # noqa: E402

#: this script's old option names -> the command's
RENAMED = {"--size": "--phantom-size-px", "--clip-frames": "--phantom-frames",
           "--seed": "--phantom-seed"}
#: this script's defaults, where the command's differ
DEFAULTS = {"--transport": "in-process", "--view": "none", "--warmup": "20",
            "--out": str(ROOT / "bench" / "results" / "latency.json")}


def translate(argv: list[str]) -> list[str]:
    """``bench latency`` arguments for this script's arguments."""
    out = []
    for arg in argv:
        name, sep, value = arg.partition("=")
        out.append(RENAMED[name] + sep + value if name in RENAMED else arg)
    given = {arg.partition("=")[0] for arg in out if arg.startswith("--")}
    for name, value in DEFAULTS.items():
        if name not in given and not (name == "--view" and "--clip" in given):
            out += [name, value]
    return out


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    return bench_main(["latency", *translate(argv)])


if __name__ == "__main__":
    sys.exit(main())
