"""Where a network's time goes, layer type by layer type, against its arithmetic floor
(issue 15, point 3).

Issue 15 asks the networks' total time to come within 1.6x of their floor: their FLOPs at
the rate of a large matrix product in the engine's precision (:mod:`engines.flops`). This
bench compiles the OpenVINO IR each role's engine runs (shipped weights, torch -> ONNX ->
OpenVINO, from the engine cache) with the engine's settings (batch 1,
``PERFORMANCE_HINT=LATENCY``, the thread count, the precision hint) and OpenVINO's own
per-layer counters on (``PERF_COUNT``, which adds a few per cent to the call), and splits
the time of one inference by layer type:
the convolutions, which hold all the arithmetic, against the floor, and everything else
(resizes, concatenations, layout reorders, pooling, element-wise work) which the floor
counts as zero. The U-Net FAST was measured with (issue 15, point 1: 16-64 filters on a 256
x 256 input; converted straight from torch) runs beside them: its wide layers show what the
same backend reaches when a layer has arithmetic enough.

Prints a table and writes JSON::

    python bench/layer_floor.py [--roles view,seg,flow,mr] [--precision bf16] [--threads 2]
        [--calls 300] [--json layer_floor.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from engines import flops, nets  # noqa: E402

OV_PRECISION = {"fp32": "f32", "bf16": "bf16"}
#: OpenVINO node types that carry the FLOPs the floor counts
ARITHMETIC = ("Convolution", "GroupConvolution", "MatMul", "FullyConnected", "Deconvolution")


def compile_ov(model, precision: str, threads: int):
    """``model`` (an OpenVINO model or the path of an IR) compiled with the engine's
    settings and the per-layer counters on."""
    import openvino as ov

    config = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": int(threads),
              "INFERENCE_PRECISION_HINT": OV_PRECISION[precision], "PERF_COUNT": True}
    return ov.Core().compile_model(model if not isinstance(model, Path) else str(model), "CPU", config)


def role_ir(role: str, precision: str, threads: int) -> Path:
    """The OpenVINO IR the engine runs for ``role`` (shipped weights, torch -> ONNX ->
    OpenVINO, from the engine cache)."""
    from engines.backends import create_engine

    return create_engine(role, "openvino", precision, threads=threads).artefact


def torch_model(module: torch.nn.Module, input_shape: tuple):
    """A torch module converted straight to OpenVINO (the peer's U-Net, which has no role)."""
    import openvino as ov

    with torch.no_grad():
        return ov.convert_model(module.eval(), example_input=torch.zeros(input_shape))


def profile(compiled, input_shape: tuple, calls: int) -> dict:
    """Median wall ms of one inference and, per layer type, the median over calls of the
    summed time OpenVINO's counters give its layers (ms), after 20 untimed calls."""
    request = compiled.create_infer_request()
    x = np.random.default_rng(0).random(input_shape, dtype=np.float32)
    for _ in range(20):
        request.infer([x])
    wall, per_type = [], defaultdict(list)
    for _ in range(calls):
        t0 = time.perf_counter()
        request.infer([x])
        wall.append((time.perf_counter() - t0) * 1e3)
        sums: dict[str, float] = defaultdict(float)
        for p in request.get_profiling_info():
            sums[p.node_type] += p.real_time.total_seconds() * 1e3
        for k, v in sums.items():
            per_type[k].append(v)
    return {"wall_ms": statistics.median(wall),
            "layer_ms": {k: statistics.median(v) for k, v in per_type.items() if statistics.median(v) > 0}}


def fast_unet() -> torch.nn.Module:
    """The U-Net of issue 15's FAST peer (the one bench/fast_peer.py builds)."""
    sys.path.insert(0, str(ROOT / "bench"))
    from fast_peer import build_peer_unet

    return build_peer_unet()


def probe(name: str, module: torch.nn.Module, input_shape: tuple, precision: str, threads: int,
          calls: int, peak: float, model=None) -> dict:
    """One network: its FLOPs (``module``) and the per-layer time of ``model`` (an OpenVINO
    model or IR path; default: ``module`` converted straight to OpenVINO)."""
    gflop = flops.network_gflop(module.eval(), input_shape)
    floor = flops.floor_ms(gflop, peak)
    compiled = compile_ov(model if model is not None else torch_model(module, input_shape), precision, threads)
    p = profile(compiled, input_shape, calls)
    conv = sum(v for k, v in p["layer_ms"].items() if k in ARITHMETIC)
    other = sum(v for k, v in p["layer_ms"].items() if k not in ARITHMETIC)
    return {"network": name, "input": list(input_shape), "gflop": gflop, "floor_ms": floor,
            "wall_ms": p["wall_ms"], "wall_x_floor": p["wall_ms"] / floor,
            "arithmetic_ms": conv, "arithmetic_x_floor": conv / floor, "other_layers_ms": other,
            "outside_layers_ms": p["wall_ms"] - conv - other, "layer_ms": p["layer_ms"]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--roles", default="view,seg,flow,mr", help="networks to probe (default %(default)s)")
    ap.add_argument("--precision", choices=sorted(OV_PRECISION), default="bf16",
                    help="OpenVINO precision hint, and the GEMM dtype of the floor (default %(default)s)")
    ap.add_argument("--threads", type=int, default=2, help="inference threads (default %(default)s)")
    ap.add_argument("--calls", type=int, default=300, help="timed calls per network (default %(default)s)")
    ap.add_argument("--no-peer", action="store_true", help="skip the FAST peer's U-Net")
    ap.add_argument("--json", type=Path, default=Path("layer_floor.json"), help="output (default %(default)s)")
    args = ap.parse_args(argv)
    if args.calls < 1 or args.threads < 1:
        ap.error("--calls and --threads must be >= 1")
    torch.set_num_threads(args.threads)
    peak = flops.gemm_peak_gflops(args.precision)
    print(f"GEMM peak {peak:.0f} GFLOP/s ({args.precision}, {args.threads} threads, 1024 x 1024 torch.mm)", flush=True)
    todo = [(r, nets.build(r), tuple(nets.spec(r).input.shape), role_ir(r, args.precision, args.threads))
            for r in args.roles.split(",") if r]
    if not args.no_peer:
        todo.append(("fast-peer-unet", fast_unet(), (1, 1, 256, 256), None))
    head = (f"{'network':15s} {'GFLOP':>6s} {'floor ms':>8s} {'wall ms':>8s} {'x floor':>7s} "
            f"{'convs ms':>8s} {'x floor':>7s} {'other layers ms':>15s} {'outside ms':>10s}  largest other layers")
    print(head + "\n" + "-" * len(head))
    results = []
    for name, module, shape, model in todo:
        r = probe(name, module, shape, args.precision, args.threads, args.calls, peak, model)
        results.append(r)
        others = sorted(((v, k) for k, v in r["layer_ms"].items() if k not in ARITHMETIC), reverse=True)[:3]
        print(f"{name:15s} {r['gflop']:6.3f} {r['floor_ms']:8.3f} {r['wall_ms']:8.3f} {r['wall_x_floor']:7.2f} "
              f"{r['arithmetic_ms']:8.3f} {r['arithmetic_x_floor']:7.2f} {r['other_layers_ms']:15.3f} "
              f"{r['outside_layers_ms']:10.3f}  " + ", ".join(f"{k} {v:.3f}" for v, k in others), flush=True)
    echo = [r for r in results if r["network"] in ("view", "seg", "flow")]
    if echo:
        floor = sum(r["floor_ms"] for r in echo)
        conv = sum(r["arithmetic_ms"] for r in echo)
        wall = sum(r["wall_ms"] for r in echo)
        print(f"echo networks together: floor {floor:.3f} ms; convolutions {conv:.3f} ms ({conv / floor:.2f}x); "
              f"whole calls {wall:.3f} ms ({wall / floor:.2f}x)")
    out = {"precision": args.precision, "threads": args.threads, "gemm_peak_gflops": peak,
           "calls": args.calls, "results": results}
    args.json.write_text(json.dumps(out, indent=1))
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
