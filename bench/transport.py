"""Cost of our framing over a raw pyzmq send/receive of the same pixel bytes.

For each frame size, one PUSH/PULL pair on TCP loopback carries, alternately:

* raw:  ``send(pixel bytes)`` -> ``recv(copy=False)`` -> ``np.frombuffer(...).reshape``
* ours: ``send_multipart(encode(FrameMessage))`` -> ``decode(recv_multipart(copy=False))``

Each iteration times one send plus its receive, in the same thread. Raw and
ours alternate iteration by iteration so both see the same machine state.
Prints a table (median and p99 in microseconds, and their ratios) and writes
JSON.

    python bench/transport.py                 # 256x256 and 512x384 uint8, 5,000 each
    python bench/transport.py --iterations 20000 --out bench/results/transport.json
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import zmq

from streamer.io.protocol import FrameMessage, decode, encode

SIZES = {"256x256": (256, 256), "512x384": (512, 384)}


def measure(shape: tuple[int, int], iterations: int, warmup: int) -> dict:
    context = zmq.Context.instance()
    pull = context.socket(zmq.PULL)
    port = pull.bind_to_random_port("tcp://127.0.0.1")
    push = context.socket(zmq.PUSH)
    push.connect(f"tcp://127.0.0.1:{port}")
    pixels = np.random.default_rng(0).integers(0, 255, shape).astype(np.uint8)
    raw_view = memoryview(pixels).cast("B")

    def raw() -> np.ndarray:
        push.send(raw_view)
        frame = pull.recv(copy=False)
        return np.frombuffer(frame.buffer, np.uint8).reshape(shape)

    def ours(seq: int) -> np.ndarray:
        message = FrameMessage(stream="bench", seq=seq, t_acq_ns=time.time_ns(),
                               modality="US", pixels=pixels, spacing_mm=(0.3, 0.3),
                               fps=50.0, t_send_ns=time.time_ns())
        push.send_multipart(encode(message))
        return decode(pull.recv_multipart(copy=False)).pixels

    assert np.array_equal(raw(), pixels) and np.array_equal(ours(0), pixels)
    times = {"raw": [], "ours": []}
    clock = time.perf_counter_ns
    for i in range(warmup + iterations):
        t0 = clock()
        raw()
        t1 = clock()
        ours(i)
        t2 = clock()
        if i >= warmup:
            times["raw"].append((t1 - t0) / 1e3)
            times["ours"].append((t2 - t1) / 1e3)
    push.close(linger=0)
    pull.close(linger=0)
    out = {"shape": list(shape), "bytes": int(pixels.nbytes), "iterations": iterations}
    for name, values in times.items():
        values = np.asarray(values)
        out[name] = {"median_us": float(np.median(values)),
                     "p99_us": float(np.percentile(values, 99)),
                     "mean_us": float(values.mean())}
    out["ratio_median"] = out["ours"]["median_us"] / out["raw"]["median_us"]
    out["ratio_p99"] = out["ours"]["p99_us"] / out["raw"]["p99_us"]
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iterations", type=int, default=5000,
                        help="timed iterations per size and method (default 5000)")
    parser.add_argument("--warmup", type=int, default=500, help="untimed iterations first")
    parser.add_argument("--out", type=Path, default=Path("bench/results/transport.json"),
                        help="JSON output (default bench/results/transport.json)")
    args = parser.parse_args(argv)
    rows = {name: measure(shape, args.iterations, args.warmup) for name, shape in SIZES.items()}
    print(f"{'frame':>9} {'bytes':>7} | {'raw med':>8} {'raw p99':>8} | {'ours med':>8} "
          f"{'ours p99':>8} | {'x med':>5} {'x p99':>5}   (microseconds, send+receive)")
    for name, row in rows.items():
        print(f"{name:>9} {row['bytes']:>7} | {row['raw']['median_us']:>8.1f} "
              f"{row['raw']['p99_us']:>8.1f} | {row['ours']['median_us']:>8.1f} "
              f"{row['ours']['p99_us']:>8.1f} | {row['ratio_median']:>5.2f} "
              f"{row['ratio_p99']:>5.2f}")
    report = {"benchmark": "transport", "command": " ".join(["python", *sys.argv]),
              "machine": {"python": platform.python_version(), "pyzmq": zmq.pyzmq_version(),
                          "libzmq": zmq.zmq_version(), "cpu_count": __import__("os").cpu_count()},
              "results": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
