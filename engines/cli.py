"""``cardiostream engines``: build engines ahead of time, check backends, train networks,
adapt the flow network to a site's own clips.

    cardiostream engines build --roles seg,flow --backend openvino --precision int8
    cardiostream engines check --iterations 50 --json out/engines_check.json
    cardiostream engines train seg --help
    cardiostream engines adapt clip.dcm --fit-frames 0:60 --judge-frames 60:120 --out flow.pt

Registered by ``streamer.cli`` through :func:`add_engines_parser`, which hands over the
clip reader for ``--calibration-clip`` and ``adapt`` (``read_frames``): the engines read no
clips themselves (they sit below ``streamer.io``).  Each command function returns an exit
code; user errors (unknown role or backend, a missing or unusable model file, an
unreadable clip) are printed as one line and return 2, without a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np

from engines.backends.base import BACKENDS, PRECISIONS, EngineError
from engines.spec import PRECISION_CHOICES, REGISTRY, ROLES
from streamer.options import parse_pair

log = logging.getLogger(__name__)

#: role -> trainer module (from the role registry, :data:`engines.spec.REGISTRY`)
TRAIN_MODULES = {name: role.trainer for name, role in REGISTRY.items()}
#: a clip reader: path -> the clip's frames as pixel arrays
ReadFrames = Callable[[Path], Iterable[np.ndarray]]
#: a Sunnybrook reader: (root folder, patient id) -> the patient's arrays
#: (:func:`streamer.io.sunnybrook.read_patient`)
ReadMRPatient = Callable[[Path, str], dict]


def _roles(text: str) -> list[str]:
    roles = [r.strip() for r in text.split(",") if r.strip()]
    bad = [r for r in roles if r not in ROLES]
    if bad or not roles:
        raise argparse.ArgumentTypeError(
            f"unknown role {', '.join(map(repr, bad)) or repr(text)}; choose from {', '.join(ROLES)} "
            "(comma-separated)")
    return list(dict.fromkeys(roles))


def _names(choices: tuple[str, ...], what: str):
    def parse(text: str) -> list[str]:
        names = [n.strip() for n in text.split(",") if n.strip()]
        bad = [n for n in names if n not in choices]
        if bad or not names:
            raise argparse.ArgumentTypeError(
                f"unknown {what} {', '.join(map(repr, bad)) or repr(text)}; choose from {', '.join(choices)}")
        return list(dict.fromkeys(names))
    return parse


def _weights(text: str) -> tuple[str, Path]:
    role, sep, path = text.partition("=")
    if not sep or role not in ROLES or not path:
        raise argparse.ArgumentTypeError(f"--weights takes ROLE=PATH with ROLE one of {', '.join(ROLES)}, got {text!r}")
    p = Path(path).expanduser()
    if not p.is_file():
        raise argparse.ArgumentTypeError(f"{p}: no such file (--weights {role}=...)")
    return role, p


def _positive(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {n}")
    return n


def _shipped_roles() -> list[str]:
    """The roles whose shipped weights are in engines/weights/ (mr is trained and judged on
    the real patients first, and ships only when it meets its acceptance)."""
    from engines import nets

    return [r for r in ROLES if nets.shipped_weights(r).is_file()]


def _common(p: argparse.ArgumentParser) -> None:
    shipped = _shipped_roles()
    p.add_argument("--roles", type=_roles, default=shipped, metavar="ROLE[,ROLE]",
                   help=f"networks to use, comma-separated, of {','.join(ROLES)} (default: the "
                        f"roles with shipped weights, here {','.join(shipped) or 'none'})")
    p.add_argument("--weights", type=_weights, action="append", default=[], metavar="ROLE=PATH",
                   help="your own model for a role instead of the shipped weights: a state dict "
                        "(.pt/.pth), TorchScript (.pt/.ts) or ONNX (.onnx) file with the role's "
                        "input/output shapes; repeat for several roles")
    p.add_argument("--threads", type=_positive, metavar="N",
                   help="CPU threads for torch, onnxruntime and OpenVINO together (default: all cores)")
    p.add_argument("--device", metavar="DEV", help="cpu or cuda[:i] (default: the backend's own)")


def _fail(args, exc: BaseException) -> int:
    log.debug("traceback of the error below", exc_info=True)
    print(f"cardiostream engines {args.engines_command}: error: {exc}", file=sys.stderr)
    return 2


def _user_errors():
    return (EngineError, ValueError, OSError)


def _calibration(args):
    """``--calibration-clip``: the clip's frames (read by the caller's ``read_frames``), or None."""
    path = getattr(args, "calibration_clip", None)
    if path is None:
        return None
    from engines.int8 import Frames

    try:
        return Frames.of(args.read_frames(path), origin=str(path))
    except _user_errors():
        raise
    except Exception as exc:  # the reader's own error type (e.g. a ClipError) names the file
        raise EngineError(str(exc)) from exc


# ---------------------------------------------------------------- build

def cmd_build(args) -> int:
    from engines import cache
    from engines.backends import create_engine, resolve_backend, set_threads

    if args.threads:
        set_threads(args.threads)
    weights = dict(args.weights)
    rows = []
    try:
        calibration = _calibration(args)
        for role in args.roles:
            backend = resolve_backend(args.backend, args.device, role, args.precision)
            before = dict(cache.STATS)
            t0 = time.perf_counter()
            engine = create_engine(role, backend, args.precision, weights=weights.get(role),
                                   device=args.device, calibration=calibration,
                                   use_cache=not args.rebuild)
            seconds = time.perf_counter() - t0
            built = sum(v - before.get(k, 0) for k, v in cache.STATS.items() if k.startswith("build:"))
            where = str(engine.artefact.parent) if engine.artefact else "(nothing to cache: eager torch)"
            state = "built" if built else ("from cache" if engine.artefact else "ready")
            rows.append({"role": role, "backend": engine.backend, "precision": engine.precision,
                         "device": engine.device, "model": engine.origin, "state": state,
                         "seconds": round(seconds, 2), "path": where})
            print(f"{role:5s} {engine.backend:12s} {engine.precision:5s} {state:10s} "
                  f"{seconds:6.1f} s  {where}  ({engine.origin})", flush=True)
    except _user_errors() as exc:
        return _fail(args, exc)
    if args.json:
        _write_json(args.json, {"command": "engines build", "cache": str(cache.cache_root()), "engines": rows})
    return 0


# ---------------------------------------------------------------- check

def _inputs(spec, kind: str, n: int) -> np.ndarray:
    """``n`` inputs for ``spec``: held-out test phantoms or seeded uniform noise."""
    h, w = spec.size
    if kind == "random":
        rng = np.random.default_rng(0)
        return rng.random((n, *spec.input.shape[1:]), dtype=np.float32)
    from calib import datasets

    if spec.role == "view":
        a = datasets.view_samples("test", n, rows=h, cols=w)["images"][:, None]
    elif spec.role == "seg":
        a = datasets.segmentation_samples("test", n, rows=h, cols=w)["images"][:, None]
    elif spec.role == "mr":  # [previous, current, zero state] of a held-out MR phantom cine
        from engines.nets.mr_joint import normalise

        f = datasets.mr_sequence_samples("test", 1, frames=n + 1, rows=h, cols=w)["frames"][0]
        f = np.stack([normalise(x) for x in f])
        return np.stack([np.stack([f[i], f[i + 1], np.zeros((h, w), np.float32)]) for i in range(n)])
    else:
        a = datasets.flow_samples("test", n, rows=h, cols=w)["pairs"]
    return np.ascontiguousarray(a, dtype=np.float32) / np.float32(255.0)


def _latency_ms(engine, x: np.ndarray, iterations: int) -> float:
    for _ in range(min(3, iterations)):
        engine(x)
    times = []
    for _ in range(iterations):
        t0 = time.perf_counter()
        engine(x)
        times.append(time.perf_counter() - t0)
    return float(np.median(times) * 1e3)


def check(roles, backends, precisions, *, weights=None, iterations: int = 20, inputs: str = "random",
          n_inputs: int = 3, toy: bool = False, device: str | None = None, calibration=None) -> list[dict]:
    """Rows of the ``engines check`` table (also the JSON records)."""
    from engines.backends import backend_module, backend_status, create_engine, source_for
    from engines.backends.tolerance import compare

    weights = weights or {}
    status = backend_status(device)
    rows = []
    for role in roles:
        model = spec = None
        if toy:
            from engines.backends.toy import toy_model, toy_spec

            model, spec = toy_model(role), toy_spec(role, (128, 128))
        source = source_for(role, weights.get(role), model=model, spec=spec)
        spec = source.spec
        xs = _inputs(spec, inputs, n_inputs)
        ref_engine = None
        if source.module is not None:
            ref_engine = backend_module("torch").build(source, "fp32", "cpu", None)
        for backend in backends:
            if status.get(backend):
                rows.append({"role": role, "backend": backend, "precision": "-", "status": "unavailable",
                             "reason": status[backend]})
                continue
            for precision in precisions:
                row = {"role": role, "backend": backend, "precision": precision, "model": source.origin,
                       "input": list(spec.input.shape)}
                try:
                    engine = create_engine(role, backend, precision, weights=weights.get(role),
                                           device=device if backend in ("torch", "tensorrt") else None,
                                           model=model, spec=spec if toy else None,
                                           calibration=calibration)
                except EngineError as exc:
                    row.update(status="unsupported", reason=str(exc))
                    rows.append(row)
                    continue
                outs = np.stack([engine(x[None]) for x in xs])
                if ref_engine is not None:
                    ref = np.stack([ref_engine(x[None]) for x in xs])
                    row.update(compare(role, precision, ref, outs))
                    row["status"] = "ok" if row["ok"] else "OUT OF TOLERANCE"
                else:
                    row["status"] = "ok (no torch reference for an ONNX model)"
                row["median_ms"] = round(_latency_ms(engine, xs[:1], iterations), 3)
                row["device"] = engine.device
                rows.append(row)
                log.info("check %s", row)
    return rows


def _fmt(v, spec="{:.2e}") -> str:
    return "-" if v is None else spec.format(v)


def print_table(rows: list[dict], out=None) -> None:
    out = out or sys.stdout
    head = f"{'role':5s} {'backend':12s} {'prec':5s} {'max|diff|':>10s} {'rel':>9s} {'agree/EPE':>10s} {'median ms':>10s}  status"
    print(head, file=out)
    print("-" * len(head), file=out)
    for r in rows:
        if r.get("status") in ("unavailable", "unsupported"):
            print(f"{r['role']:5s} {r['backend']:12s} {r['precision']:5s} {'':>10s} {'':>9s} {'':>10s} "
                  f"{'':>10s}  {r['status']}: {r['reason']}", file=out)
            continue
        scale = max(1.0, r.get("output_scale", 1.0) or 1.0)
        rel = r["max_abs_diff"] / scale if "max_abs_diff" in r else None
        if "top1_agreement" in r:
            agree = f"{r['top1_agreement'] * 100:.1f}%"
        elif "argmax_agreement" in r:
            agree = f"{r['argmax_agreement'] * 100:.2f}%"
        elif "epe_to_ref_px" in r:
            agree = f"{r['epe_to_ref_px']:.4f}px"
        else:
            agree = "-"
        print(f"{r['role']:5s} {r['backend']:12s} {r['precision']:5s} {_fmt(r.get('max_abs_diff')):>10s} "
              f"{_fmt(rel):>9s} {agree:>10s} {r['median_ms']:10.2f}  {r['status']}", file=out)


def cmd_check(args) -> int:
    from engines.backends import get_threads, set_threads

    threads = set_threads(args.threads) if args.threads else get_threads()
    try:
        rows = check(args.roles, args.backends, args.precisions, weights=dict(args.weights),
                     iterations=args.iterations, inputs=args.inputs, n_inputs=args.n_inputs,
                     toy=args.toy, device=args.device, calibration=_calibration(args))
    except _user_errors() as exc:
        return _fail(args, exc)
    print(f"# {args.iterations} iterations, {threads} threads, inputs: {args.inputs} "
          f"(n={args.n_inputs}); reference: eager torch fp32 on the CPU")
    print_table(rows)
    if args.json:
        import platform

        import torch

        _write_json(args.json, {"command": "engines check", "threads": threads, "iterations": args.iterations,
                                "inputs": args.inputs, "n_inputs": args.n_inputs, "toy": args.toy,
                                "torch": torch.__version__, "machine": platform.processor() or platform.machine(),
                                "rows": rows})
    bad = [r for r in rows if r.get("status") == "OUT OF TOLERANCE"]
    return 1 if bad else 0


def _write_json(path: Path, payload: dict) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    print(f"wrote {path}")


# ---------------------------------------------------------------- train

def cmd_train(args) -> int:
    """``engines train ROLE ...``: the trainer's own parser takes the rest of the line, so
    torch is imported only when a network is trained (not by every ``cardiostream`` call)."""
    trainer = importlib.import_module(TRAIN_MODULES[args.train_role])
    parser = argparse.ArgumentParser(prog="cardiostream engines train")
    # dest "role", as the trainer's own entry point has it: the JSON record's arguments are
    # the same whichever way a run is started
    trainer.add_parser(parser.add_subparsers(dest="role", required=True))
    trainer_args = parser.parse_args([args.train_role, *args.train_args])
    if hasattr(trainer_args, "read_patient"):  # the MR trainer: the caller's Sunnybrook reader
        trainer_args.read_patient = getattr(args, "read_mr_patient", None)
    return trainer_args.func(trainer_args)


# ---------------------------------------------------------------- adapt

def _frame_range(text: str) -> tuple[int, int]:
    """"0:60" -> (0, 60): frames 0..59."""
    try:
        lo, hi = parse_pair(text, int, "FIRST:STOP")
    except ValueError:
        lo = hi = -1
    if not 0 <= lo < hi:
        raise argparse.ArgumentTypeError(f"expected FIRST:STOP with 0 <= FIRST < STOP, got {text!r}")
    return lo, hi


def _grids(frames, seg_size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Frames on the segmenter's grid and on the flow network's."""
    from engines import adapt

    return adapt.prepare_frames(frames, seg_size), adapt.prepare_frames(frames)


def cmd_adapt(args) -> int:
    """``engines adapt CLIP... --role flow|seg``: fine-tune a network on a site's own clips
    with the self-supervised objectives of engines/adapt.py."""
    import torch

    from engines import adapt
    from engines.byo import load_model, shipped_model
    from engines.nets import spec
    from engines.train.common import save_weights

    role = args.role

    def fail(text: str) -> int:
        print(f"cardiostream engines adapt: error: {text}", file=sys.stderr)
        return 2

    try:
        model = load_model(role, args.start_from) if args.start_from else shipped_model(role)
        flow = (model if role == "flow" else
                load_model("flow", args.flow_weights) if args.flow_weights
                else shipped_model("flow"))
    except EngineError as exc:
        return fail(str(exc))
    for loaded in (model, flow):
        if loaded.module is None or loaded.kind == "torchscript":
            return fail("adaptation needs a state dict of the shipped architecture, not "
                        f"{loaded.kind} ({loaded.origin})")
    if args.threads:
        torch.set_num_threads(args.threads)
    (lo, hi), judged = args.fit_frames, args.judge_frames
    if judged and judged[0] < hi and judged[1] > lo:
        return fail("--judge-frames overlap --fit-frames: judge on frames the adaptation "
                    "never sees")
    config = adapt.AdaptConfig(steps=args.steps, learning_rate=args.learning_rate,
                               seed=args.seed)

    def progress(step: int, steps: int, loss: float) -> None:
        if step == 1 or step % 25 == 0 or step == steps:
            print(f"step {step}/{steps}: objective {loss:.5f}", file=sys.stderr, flush=True)

    current, records = model.module, []
    for clip in args.clips:  # several clips: adapted on each in turn
        try:
            frames = list(args.read_frames(clip))
        except (OSError, ValueError) as exc:
            return fail(str(exc))
        if hi > len(frames) or (judged and judged[1] > len(frames)):
            return fail(f"{clip} has {len(frames)} frames; --fit-frames {lo}:{hi} or "
                        "--judge-frames reach beyond it")
        if role == "flow":
            result = adapt.adapt_flow(
                current, adapt.prepare_frames(frames[lo:hi]),
                adapt.prepare_frames(frames[judged[0]:judged[1]]) if judged else None,
                config, progress)
        else:
            result = adapt.adapt_seg(
                current, flow.module, *_grids(frames[lo:hi], spec("seg").size),
                _grids(frames[judged[0]:judged[1]], spec("seg").size) if judged else None,
                config, progress)
        current = result.model
        records.append({"clip": str(clip), **result.record})
    record = {"role": role, "adapted_from": model.origin, "command": " ".join(sys.argv),
              "flow": flow.origin, "fit_frames": list(args.fit_frames),
              "judge_frames": list(args.judge_frames) if judged else None, "clips": records}
    json_path = save_weights(current, role, record, args.out)
    print(f"{'clip':<32} {'objective on':<12} {'before':>10} {'after':>10}")
    for rec in records:
        for part in ("fit", "judge"):
            if part in rec["before"]:
                b, a = rec["before"][part]["total"], rec["after"][part]["total"]
                print(f"{Path(rec['clip']).name:<32} {part:<12} {b:10.5f} {a:10.5f}")
    print(f"wrote {args.out} and {json_path}; use it with --weights {role}={args.out}")
    return 0


def add_engines_parser(subparsers, read_frames: ReadFrames | None = None,
                       read_mr_patient: ReadMRPatient | None = None) -> argparse.ArgumentParser:
    """Register ``engines`` (build, check, train) on a top-level ``add_subparsers()`` object.

    ``read_frames(path)``: the frames of a clip as pixel arrays (``streamer.cli`` passes
    ``streamer.io.clips.read_frames``); it enables ``--calibration-clip``, which is left
    out without one. ``read_mr_patient(root, patient)``: a Sunnybrook patient's stack and
    contours as arrays (``streamer.io.sunnybrook.read_patient``), for ``train mr``."""
    engines = subparsers.add_parser(
        "engines", help="build, check and train the networks' engines",
        description="The networks (echo: view classifier, myocardium segmenter, flow; MR: the "
                    "joint segmentation + motion network) on the "
                    "inference backends: torch (eager), onnxruntime and openvino (CPU), tensorrt "
                    "(CUDA GPU with torch_tensorrt). Built engines are cached in $CARDIOSTREAM_CACHE "
                    "(default ~/.cache/cardiostream/engines), keyed by weights, input shape, "
                    "precision, backend version and device.")
    sub = engines.add_subparsers(dest="engines_command", required=True, metavar="SUBCOMMAND")

    build = sub.add_parser(
        "build", help="build and cache engines ahead of time",
        description="Build the engines for --roles on --backend at --precision and store them in "
                    "the engine cache, so the side-car starts without export/compile time. Prints "
                    "what was built (or found in the cache), where, and how long it took. INT8 "
                    "calibrates on phantom images from the calib split, or on --calibration-clip.")
    _common(build)
    build.add_argument("--backend", default="auto", choices=("auto", *BACKENDS),
                       help="auto: tensorrt on a CUDA machine with torch_tensorrt, else the fastest "
                            "CPU backend measured for the network (onnxruntime for view, openvino "
                            "for seg and flow) (default auto)")
    build.add_argument("--precision", default="fp32", choices=PRECISION_CHOICES,
                       help="fp32 (all backends), bf16 (openvino on CPUs that compute BF16, torch), "
                            "fp16 (torch on CUDA, tensorrt), int8 (onnxruntime, openvino, tensorrt), "
                            "auto (the fastest of these the backend runs here within its stated "
                            "bounds, never int8) (default fp32)")
    if read_frames is not None:
        build.add_argument("--calibration-clip", type=Path, metavar="CLIP",
                           help="int8: calibrate on frames of this recording (any clip format "
                                "`cardiostream replay` reads) instead of phantoms")
    build.add_argument("--rebuild", action="store_true", help="rebuild even when the cache has the engine")
    build.add_argument("--json", type=Path, metavar="PATH", help="also write what was built as JSON")
    build.set_defaults(func=cmd_build, read_frames=read_frames)

    chk = sub.add_parser(
        "check", help="compare every backend with eager torch and time it",
        description="For each network and each backend available here: the largest difference "
                    "from eager torch fp32 on the same weights and inputs (with the stated "
                    "tolerance: fp32 max|diff| <= 1e-4 x output scale; bf16 and int8 class/argmax "
                    "agreement or flow end-point difference, engines/backends/tolerance.py), and "
                    "the median latency over --iterations calls at batch 1. Backends that cannot run here are listed with the reason. "
                    "Exit code 1 when a result is out of tolerance.")
    _common(chk)
    chk.add_argument("--backends", type=_names(BACKENDS, "backend"), default=list(BACKENDS),
                     metavar="NAME[,NAME]", help=f"backends to check (default: {','.join(BACKENDS)})")
    chk.add_argument("--precisions", type=_names(PRECISIONS, "precision"), default=["fp32"],
                     metavar="P[,P]", help="precisions to check, e.g. fp32,bf16,int8 (default fp32); "
                                           "combinations a backend does not run are listed as unsupported")
    chk.add_argument("--iterations", type=_positive, default=20, metavar="N",
                     help="timed calls per engine (default 20)")
    chk.add_argument("--inputs", choices=("phantom", "random"), default="phantom",
                     help="phantom: held-out test-split phantoms (default); random: seeded uniform noise")
    chk.add_argument("--n-inputs", type=_positive, default=3, metavar="N",
                     help="inputs compared per network (default 3)")
    chk.add_argument("--toy", action="store_true",
                     help="use small stand-in networks with random weights instead of the shipped "
                          "ones (backend comparison on a machine without trained weights)")
    if read_frames is not None:
        chk.add_argument("--calibration-clip", type=Path, metavar="CLIP",
                         help="int8: calibrate on frames of this recording instead of phantoms")
    chk.add_argument("--json", type=Path, metavar="PATH", help="also write the rows as JSON")
    chk.set_defaults(func=cmd_check, read_frames=read_frames)

    train = sub.add_parser(
        "train", help="train a network on phantom data",
        description="Train one of the networks on phantom data sets (seeded, reproducible); "
                    "writes a state dict and a JSON record to engines/weights/. "
                    "`cardiostream engines train ROLE --help` lists the role's options.")
    train.add_argument("train_role", choices=tuple(TRAIN_MODULES), metavar="ROLE",
                       help=f"the network to train: {', '.join(TRAIN_MODULES)}")
    train.add_argument("train_args", nargs=argparse.REMAINDER, metavar="...",
                       help="the trainer's options (see ROLE --help)")
    train.set_defaults(func=cmd_train, read_mr_patient=read_mr_patient)

    if read_frames is not None:
        ad = sub.add_parser(
            "adapt", help="fine-tune the flow network or the segmenter on your own clips",
            description="Self-supervised adaptation to a site's own recordings, no labels "
                        "needed. flow: Qin et al. 2018's unsupervised motion objective (the "
                        "next frame warped back by the flow should match this frame, with "
                        "Huber-smooth flow in space and time). seg: the segmenter's masks "
                        "should agree from frame to frame along the flow, anchored to its own "
                        "starting labels. Writes a state dict and a JSON record with the "
                        "objective before and after, on the frames it trained on and on "
                        "--judge-frames it never saw. Use the result with "
                        "`--weights ROLE=PATH`.")
        ad.add_argument("clips", nargs="+", type=Path, metavar="CLIP",
                        help="unlabelled clips of the site (any format the readers take)")
        ad.add_argument("--role", choices=("flow", "seg"), default="flow",
                        help="the network to adapt (default flow)")
        ad.add_argument("--flow-weights", type=Path, metavar="PATH",
                        help="seg: the flow network that supplies the motion (default: the "
                             "shipped one; e.g. one adapted first with --role flow)")
        ad.add_argument("--fit-frames", type=_frame_range, default=(0, 60), metavar="FIRST:STOP",
                        help="the frames of each clip to adapt on (default 0:60)")
        ad.add_argument("--judge-frames", type=_frame_range, metavar="FIRST:STOP",
                        help="frames of each clip to report the objective on, never adapted "
                             "on (e.g. 60:120)")
        ad.add_argument("--steps", type=_positive, default=150,
                        help="optimiser steps per clip (default 150)")
        ad.add_argument("--learning-rate", type=float, default=2e-5, metavar="LR",
                        help="Adam learning rate (default 2e-5: small steps from the shipped "
                             "weights)")
        ad.add_argument("--start-from", type=Path, metavar="PATH",
                        help="weights of the role to start from (default: the shipped ones)")
        ad.add_argument("--threads", type=_positive, help="CPU threads for torch")
        ad.add_argument("--seed", type=int, default=0)
        ad.add_argument("--out", type=Path, required=True, metavar="PATH.pt",
                        help="the adapted state dict (its record goes beside it as ROLE.json)")
        ad.set_defaults(func=cmd_adapt, read_frames=read_frames)
    return engines


def main(argv: list[str] | None = None) -> int:
    """``python -m engines.cli ...``: the same commands without the rest of the CLI (and
    without ``--calibration-clip``, which needs the clip readers of ``streamer.io``)."""
    parser = argparse.ArgumentParser(prog="cardiostream")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_engines_parser(sub)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
