"""Cost of our framing over a raw pyzmq send/receive of the same pixel bytes.

For each frame size, one PUSH/PULL pair on TCP loopback carries, in turn:

* raw:  ``send(pixel bytes)`` -> ``recv(copy=False)`` -> ``np.frombuffer(...).reshape``
* ours: ``send_multipart(encode(FrameMessage))`` -> ``decode(recv_multipart(copy=False))``

and a second pair with ZeroMQ CURVE as the side-car runs it (keys from ``cardiostream keys
generate``, the ZAP allow-list, streamer.io.security) carries the same two: ``raw+curve``,
``ours+curve`` (``--no-curve`` leaves it out); ``x plain`` compares each to its plain twin.

Each iteration times one send plus its receive, in the same thread. The
methods take turns iteration by iteration so all see the same machine state.
``--breakdown`` adds the steps in between (a header part without encoding,
encoding without decoding, decoding without encoding, zero-copy pixels), to
show where the added time goes. Prints a table (median and p99 in
microseconds, and ratios to raw) and writes JSON.

    python bench/transport.py                 # 256x256 and 512x384 uint8, 5,000 each
    python bench/transport.py --iterations 20000 --breakdown
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import zmq

from streamer.io.protocol import FrameMessage, decode, encode
from streamer.io.security import CurveConfig, CurveServer, apply_client_keys, generate_keys

SIZES = {"256x256": (256, 256), "512x384": (512, 384)}


def methods(push: zmq.Socket, pull: zmq.Socket, shape: tuple[int, int], breakdown: bool
            ) -> dict[str, Callable[[int], np.ndarray]]:
    pixels = np.random.default_rng(0).integers(0, 255, shape).astype(np.uint8)
    raw_view = memoryview(pixels).cast("B")

    def message(seq: int) -> FrameMessage:
        now = time.time_ns()
        return FrameMessage(stream="bench", seq=seq, t_acq_ns=now, modality="US",
                            pixels=pixels, spacing_mm=(0.3, 0.3), fps=50.0, t_send_ns=now)

    header = bytes(encode(message(0))[0])

    def raw(seq: int) -> np.ndarray:
        push.send(raw_view)
        frame = pull.recv(copy=False)
        return np.frombuffer(frame.buffer, np.uint8).reshape(shape)

    def ours(seq: int) -> np.ndarray:
        push.send_multipart(encode(message(seq)))
        return decode(pull.recv_multipart(copy=False)).pixels

    chosen = {"raw": raw, "ours": ours}
    if not breakdown:
        return chosen

    def header_part(seq: int) -> np.ndarray:
        push.send_multipart([header, raw_view])
        parts = pull.recv_multipart(copy=False)
        return np.frombuffer(parts[1].buffer, np.uint8).reshape(shape)

    def encode_only(seq: int) -> np.ndarray:
        push.send_multipart(encode(message(seq)))
        parts = pull.recv_multipart(copy=False)
        return np.frombuffer(parts[1].buffer, np.uint8).reshape(shape)

    def decode_only(seq: int) -> np.ndarray:
        push.send_multipart([header, raw_view])
        return decode(pull.recv_multipart(copy=False)).pixels

    def ours_zero_copy(seq: int) -> np.ndarray:
        push.send_multipart(encode(message(seq)), copy=False)
        return decode(pull.recv_multipart(copy=False)).pixels

    return {"raw": raw, "+header_part": header_part, "+encode": encode_only,
            "+decode": decode_only, "ours": ours, "ours_zero_copy": ours_zero_copy}


def curve_pair(context: zmq.Context, key_dir: Path) -> tuple[zmq.Socket, zmq.Socket, CurveServer]:
    """A PUSH -> PULL pair on TCP loopback with CURVE: the PULL a CURVE server behind the
    allow-list (as the side-car's ingest), the PUSH a client with an allowed key."""
    _, server_secret = generate_keys(key_dir, "server")
    client_public, client_secret = generate_keys(key_dir, "client")
    allowed = key_dir / "allowed"
    allowed.mkdir()
    (allowed / client_public.name).write_bytes(client_public.read_bytes())
    server = CurveServer(context, CurveConfig(curve_secret_key=server_secret,
                                              allow_keys=allowed)).start()
    pull = context.socket(zmq.PULL)
    server.secure(pull)
    port = pull.bind_to_random_port("tcp://127.0.0.1")
    push = context.socket(zmq.PUSH)
    apply_client_keys(push, CurveConfig(curve_secret_key=client_secret,
                                        curve_server_key=key_dir / "server.key"))
    push.connect(f"tcp://127.0.0.1:{port}")
    return push, pull, server


def measure(shape: tuple[int, int], iterations: int, warmup: int, breakdown: bool,
            curve: bool = True) -> dict:
    context = zmq.Context()
    pull = context.socket(zmq.PULL)
    port = pull.bind_to_random_port("tcp://127.0.0.1")
    push = context.socket(zmq.PUSH)
    push.connect(f"tcp://127.0.0.1:{port}")
    chosen = methods(push, pull, shape, breakdown)
    sockets, server = [push, pull], None
    if curve:
        with tempfile.TemporaryDirectory() as key_dir:
            cpush, cpull, server = curve_pair(context, Path(key_dir))
        sockets += [cpush, cpull]
        for name, method in methods(cpush, cpull, shape, False).items():
            chosen[f"{name}+curve"] = method
    expected = chosen["raw"](0).copy()
    for name, method in chosen.items():  # every method carries the same pixels
        assert np.array_equal(method(0), expected), name
    times: dict[str, list[float]] = {name: [] for name in chosen}
    clock = time.perf_counter_ns
    for i in range(warmup + iterations):
        for name, method in chosen.items():
            t0 = clock()
            method(i)
            elapsed = clock() - t0
            if i >= warmup:
                times[name].append(elapsed / 1e3)
    for socket in sockets:
        socket.close(linger=0)
    if server is not None:
        server.stop()
    context.term()
    out = {"shape": list(shape), "bytes": int(np.prod(shape)), "iterations": iterations,
           "methods": {}}
    for name, values in times.items():
        values = np.asarray(values)
        out["methods"][name] = {"median_us": float(np.median(values)),
                                "p99_us": float(np.percentile(values, 99)),
                                "mean_us": float(values.mean())}
    raw = out["methods"]["raw"]
    for name, row in out["methods"].items():
        row["ratio_median"] = row["median_us"] / raw["median_us"]
        row["ratio_p99"] = row["p99_us"] / raw["p99_us"]
        plain = out["methods"].get(name.removesuffix("+curve"))
        if name.endswith("+curve") and plain is not None:  # CURVE against plain
            row["vs_plain_median"] = row["median_us"] / plain["median_us"]
            row["curve_added_median_us"] = row["median_us"] - plain["median_us"]
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iterations", type=int, default=5000,
                        help="timed iterations per size and method (default 5000)")
    parser.add_argument("--warmup", type=int, default=500, help="untimed iterations first")
    parser.add_argument("--breakdown", action="store_true",
                        help="also time the steps between raw and ours")
    parser.add_argument("--no-curve", action="store_true",
                        help="leave out the CURVE pair (raw+curve, ours+curve)")
    parser.add_argument("--out", type=Path, default=Path("bench/results/transport.json"),
                        help="JSON output (default bench/results/transport.json)")
    args = parser.parse_args(argv)
    rows = {name: measure(shape, args.iterations, args.warmup, args.breakdown,
                          curve=not args.no_curve)
            for name, shape in SIZES.items()}
    print(f"{'frame':>9} {'method':>15} | {'median us':>9} {'p99 us':>8} | "
          f"{'x raw med':>9} {'x raw p99':>9} | {'x plain med':>11}   "
          "(one send + its receive)")
    for size, row in rows.items():
        for name, m in row["methods"].items():
            vs_plain = f"{m['vs_plain_median']:>11.2f}" if "vs_plain_median" in m else ""
            print(f"{size:>9} {name:>15} | {m['median_us']:>9.1f} {m['p99_us']:>8.1f} | "
                  f"{m['ratio_median']:>9.2f} {m['ratio_p99']:>9.2f} | {vs_plain}")
    report = {"benchmark": "transport", "command": " ".join(["python", *sys.argv]),
              "machine": {"python": platform.python_version(), "pyzmq": zmq.pyzmq_version(),
                          "libzmq": zmq.zmq_version(), "cpu_count": os.cpu_count()},
              "results": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
