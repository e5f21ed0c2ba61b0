"""The peer on the CPU: the same U-Net, the same frames, through FAST + OpenVINO and through
our engine, in alternating runs.

FAST (pyfast, https://fast-imaging.github.io) is the open pipeline for medical ultrasound
that runs networks through OpenVINO on a CPU. Both sides run one network, built here:

* **PeerUNet**, the U-Net FAST was measured with (issue 15): a 256x256x1 input; five levels
  of 16, 32, 64, 64, 64 filters, two 3x3 convolutions with ReLU per level; 2x2 max pooling
  down; nearest-neighbour upsampling with the skip concatenated, two 3x3 convolutions with
  ReLU per level up; a 1x1 head to 2 classes and a softmax (4.97 GFLOP a frame). The weights
  are seeded random: both sides compute the same function, which is all a timing needs.
* It is exported once to ONNX; FAST's ``NeuralNetwork`` (inference engine ``OpenVINO``, CPU)
  and our ``create_engine("seg", "openvino", PRECISION, weights=ONNX)`` both load that file.
* **Frames**: pydicom-data's real A4C cine ``color3d_jpeg_baseline.dcm`` (120 frames), each
  grey, scaled to [0, 1] and fitted into 256x256 as the echo app does.

A frame's time, on both sides, runs from the frame as a float32 (256, 256) NumPy array to
the (2, 256, 256) probabilities as a NumPy array: for FAST ``Image.createFromArray``,
``connect``, ``runAndGetOutputData`` and the array view of its tensor (FAST's call alone,
without making its image, is reported beside it); for us ``engine(x)``. Each side runs in
its own process (FAST lives in its own virtual environment: it bundles its own OpenVINO),
rounds alternate which side goes first, and every round warms each side up before timing.
Both sides' outputs on the first frame are compared with eager torch fp32, which says what
precision each really ran (bf16 differs by ~1e-3, fp32 by ~1e-6).

FAST stays out of the project's install. The recipe (``make fast-peer`` does the pip part):

    apt-get install -y libusb-1.0-0 pocl-opencl-icd   # FAST needs libusb and an OpenCL platform
    python3 -m venv .venv-fast && .venv-fast/bin/pip install pyfast==4.18.0 numpy
    python bench/fast_peer.py --fast-python .venv-fast/bin/python [--rounds 6] [--frames 120]
        [--precision auto] [--out bench/results/fast_peer.json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SIZE = (256, 256)
WIDTHS = (16, 32, 64, 64, 64)
CLASSES = 2
INPUT_NAME, OUTPUT_NAME = "image", "probabilities"
ONNX_FILE, FRAMES_FILE, REFERENCE_FILE = "peer_unet.onnx", "frames.npy", "reference.npy"
SIDES = ("fast", "ours")
FAST_RECIPE = ("apt-get install -y libusb-1.0-0 pocl-opencl-icd && python3 -m venv .venv-fast "
               "&& .venv-fast/bin/pip install pyfast==4.18.0 numpy  (or: make fast-peer)")


def build_peer_unet(seed: int = 0):
    """The peer U-Net (module docstring), with seeded random weights, in eval mode."""
    import torch
    from torch import nn
    from torch.nn import functional as F

    class Level(nn.Sequential):
        """Two 3x3 convolutions with ReLU."""

        def __init__(self, cin: int, cout: int):
            super().__init__(nn.Conv2d(cin, cout, 3, padding=1), nn.ReLU(inplace=True),
                             nn.Conv2d(cout, cout, 3, padding=1), nn.ReLU(inplace=True))

    class PeerUNet(nn.Module):
        def __init__(self, widths=WIDTHS, classes: int = CLASSES):
            super().__init__()
            self.down = nn.ModuleList()
            c = 1
            for w in widths:
                self.down.append(Level(c, w))
                c = w
            self.up = nn.ModuleList()
            for w in reversed(widths[:-1]):
                self.up.append(Level(c + w, w))
                c = w
            self.head = nn.Conv2d(c, classes, 1)

        def forward(self, x):
            skips = []
            for level in self.down[:-1]:
                x = level(x)
                skips.append(x)
                x = F.max_pool2d(x, 2)
            x = self.down[-1](x)
            for level, skip in zip(self.up, reversed(skips)):
                x = level(torch.cat([F.interpolate(x, scale_factor=2.0, mode="nearest"), skip], 1))
            return torch.softmax(self.head(x), 1)

    torch.manual_seed(seed)
    return PeerUNet().eval()


def peer_spec():
    """Our engines' contract for the peer U-Net (role ``seg``: one image in, dense out)."""
    from engines.spec import NetSpec, TensorSpec

    return NetSpec(role="seg", arch="fast-peer-unet", input=TensorSpec(INPUT_NAME, (1, 1, *SIZE)),
                   output=TensorSpec(OUTPUT_NAME, (1, CLASSES, *SIZE)), weights_file="")


def export_onnx(model, path: Path) -> Path:
    import torch

    torch.onnx.export(model, (torch.zeros(1, 1, *SIZE),), str(path), dynamo=False, opset_version=17,
                      input_names=[INPUT_NAME], output_names=[OUTPUT_NAME])
    return path


def clip_frames(name: str) -> np.ndarray:
    """(frames, 256, 256) float32 in [0, 1]: the clip's frames as the echo app feeds a network."""
    sys.path.insert(0, str(ROOT))
    sys.path.insert(0, str(ROOT / "bench"))
    from noncardiac_echo import read_clip
    from real_echo import clip_path

    from engines.spec import fit_to_input, grey_plane, unit_range

    frames, _, _ = read_clip(clip_path(name))
    return np.stack([fit_to_input(unit_range(grey_plane(f)), SIZE)[0] for f in frames])


def prepare(workdir: Path, clip: str, seed: int) -> None:
    """The ONNX file, the frames, and eager torch fp32's answer on the first frame."""
    import torch

    model = build_peer_unet(seed)
    export_onnx(model, workdir / ONNX_FILE)
    frames = clip_frames(clip)
    np.save(workdir / FRAMES_FILE, frames)
    with torch.inference_mode():
        np.save(workdir / REFERENCE_FILE, model(torch.from_numpy(frames[:1, None])).numpy()[0])


# -- the two sides, each in its own process ---------------------------------------------------

def _timed(run_frame, frames: np.ndarray, n: int, warmup: int):
    """Per-frame milliseconds of ``run_frame`` over ``n`` frames after ``warmup`` untimed ones
    (the clip repeats as needed); and the first frame's output."""
    first = np.array(run_frame(frames[0]), dtype=np.float32, copy=True)
    for i in range(warmup):
        run_frame(frames[i % len(frames)])
    ms = []
    for i in range(n):
        frame = frames[i % len(frames)]
        t0 = time.perf_counter()
        run_frame(frame)
        ms.append((time.perf_counter() - t0) * 1e3)
    return ms, first


def fast_worker(workdir: Path, n: int, warmup: int) -> dict:
    """FAST's side: NeuralNetwork on OpenVINO, CPU; needs only numpy and pyfast."""
    import fast  # noqa: PLC0415 - only in FAST's own virtual environment

    fast.Reporter.setGlobalReportMethod(fast.Reporter.NONE)
    frames = np.load(workdir / FRAMES_FILE)
    network = fast.NeuralNetwork.create(str(workdir / ONNX_FILE), scaleFactor=1.0,
                                        inferenceEngine="OpenVINO")
    engine = network.getInferenceEngine()

    def run_frame(frame):  # frame in -> probabilities out, as FAST streams it
        network.connect(fast.Image.createFromArray(frame[..., None]))
        return np.asarray(network.runAndGetOutputData())

    ms, first = _timed(run_frame, frames, n, warmup)
    images = [fast.Image.createFromArray(f[..., None]) for f in frames]

    def call_only(frame_index):
        network.connect(images[frame_index % len(images)])
        return np.asarray(network.runAndGetOutputData())

    call_ms, _ = _timed(call_only, np.arange(len(images)), n, 0)
    return {"side": "fast", "ms": ms, "call_only_ms": call_ms,
            "engine": " ".join(filter(None, ["FAST", getattr(fast, "__version__", ""),
                                             f"NeuralNetwork, inference engine {engine.getName()}"])),
            # FAST answers channels last
            "first": np.moveaxis(first.reshape(*SIZE, CLASSES), -1, 0)}


def ours_worker(workdir: Path, n: int, warmup: int, precision: str, threads: int | None) -> dict:
    """Our side: create_engine on the same ONNX file."""
    sys.path.insert(0, str(ROOT))
    from engines.backends import create_engine

    frames = np.load(workdir / FRAMES_FILE)
    engine = create_engine("seg", "openvino", precision, weights=workdir / ONNX_FILE,
                           spec=peer_spec(), threads=threads)
    ms, first = _timed(lambda frame: engine(frame[None, None]), frames, n, warmup)
    return {"side": "ours", "ms": ms, "engine": f"cardiostream openvino {engine.precision}, "
                                                f"{engine.threads} threads", "first": first[0]}


def worker_main(args) -> int:
    workdir = Path(args.workdir)
    if args.worker == "fast":
        out = fast_worker(workdir, args.frames, args.warmup)
    else:
        out = ours_worker(workdir, args.frames, args.warmup, args.precision, args.threads)
    reference = np.load(workdir / REFERENCE_FILE)
    out["max_abs_diff_vs_torch_fp32"] = float(np.abs(out.pop("first") - reference).max())
    (workdir / f"{args.worker}-{args.round}.json").write_text(json.dumps(out))
    return 0


# -- the alternating runs --------------------------------------------------------------------

def run_side(side: str, python: str, workdir: Path, round_: int, args) -> dict:
    cmd = [python, str(Path(__file__).resolve()), "--worker", side, "--workdir", str(workdir),
           "--round", str(round_), "--frames", str(args.frames), "--warmup", str(args.warmup),
           "--precision", args.precision]
    if args.threads is not None:
        cmd += ["--threads", str(args.threads)]
    env = dict(os.environ, XDG_RUNTIME_DIR=os.environ.get("XDG_RUNTIME_DIR", tempfile.gettempdir()))
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-6:]
        hint = f"\nFAST's recipe: {FAST_RECIPE}" if side == "fast" else ""
        raise SystemExit(f"the {side} run (round {round_}) failed with exit code {proc.returncode}:\n"
                         + "\n".join(tail) + hint)
    return json.loads((workdir / f"{side}-{round_}.json").read_text())


def stats(ms) -> dict:
    a = np.asarray(ms, dtype=np.float64)
    return {"median_ms": float(np.median(a)), "p10_ms": float(np.percentile(a, 10)),
            "p90_ms": float(np.percentile(a, 90)), "n": int(a.size)}


def summarise(runs: list[dict]) -> dict:
    """Pooled medians per side, the ratio ours / FAST, and each round's ratio."""
    by = {s: [r for r in runs if r["side"] == s] for s in SIDES}
    out = {s: stats([m for r in by[s] for m in r["ms"]]) for s in SIDES}
    out["fast_call_only"] = stats([m for r in by["fast"] for m in r["call_only_ms"]])
    out["ratio_ours_over_fast"] = out["ours"]["median_ms"] / out["fast"]["median_ms"]
    out["ratio_ours_over_fast_call_only"] = out["ours"]["median_ms"] / out["fast_call_only"]["median_ms"]
    out["round_ratios"] = [float(np.median(o["ms"]) / np.median(f["ms"]))
                           for o, f in zip(by["ours"], by["fast"])]
    out["engines"] = {s: by[s][0]["engine"] for s in SIDES}
    out["max_abs_diff_vs_torch_fp32"] = {s: max(r["max_abs_diff_vs_torch_fp32"] for r in by[s])
                                         for s in SIDES}
    return out


def format_table(summary: dict) -> str:
    rows = [("FAST + OpenVINO (frame in -> probabilities out)", summary["fast"]),
            ("FAST + OpenVINO (its call alone)", summary["fast_call_only"]),
            ("cardiostream engine (frame in -> probabilities out)", summary["ours"])]
    lines = [f"{'side':<52} {'median ms':>10} {'p10':>7} {'p90':>7} {'frames':>7}"]
    lines += [f"{name:<52} {s['median_ms']:>10.2f} {s['p10_ms']:>7.2f} {s['p90_ms']:>7.2f} {s['n']:>7}"
              for name, s in rows]
    lines.append(f"ours / FAST: {summary['ratio_ours_over_fast']:.2f}x "
                 f"(against FAST's call alone {summary['ratio_ours_over_fast_call_only']:.2f}x); "
                 "per round " + ", ".join(f"{r:.2f}" for r in summary["round_ratios"]))
    diff = summary["max_abs_diff_vs_torch_fp32"]
    lines.append(f"max |p - torch fp32| on frame 0: FAST {diff['fast']:.1e}, ours {diff['ours']:.1e}")
    lines.append(f"engines: FAST = {summary['engines']['fast']}; ours = {summary['engines']['ours']}")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--fast-python", default=str(ROOT / ".venv-fast" / "bin" / "python"),
                   help="the Python of FAST's own virtual environment (default: .venv-fast)")
    p.add_argument("--rounds", type=int, default=6, help="alternating rounds per side (default 6)")
    p.add_argument("--frames", type=int, default=120, help="timed frames per side and round (default 120)")
    p.add_argument("--warmup", type=int, default=20, help="untimed frames before each timing (default 20)")
    p.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"),
                   help="our engine's precision (default auto: bf16 where the CPU computes it)")
    p.add_argument("--threads", type=int, default=None,
                   help="our engine's CPU threads (default: the cores; FAST's OpenVINO takes its own default)")
    p.add_argument("--clip", default="color3d_jpeg_baseline.dcm", help="pydicom(-data) cine of the frames")
    p.add_argument("--seed", type=int, default=0, help="seed of the U-Net's random weights")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "fast_peer.json")
    p.add_argument("--worker", choices=SIDES, help=argparse.SUPPRESS)
    p.add_argument("--workdir", help=argparse.SUPPRESS)
    p.add_argument("--round", type=int, default=0, help=argparse.SUPPRESS)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.worker:
        return worker_main(args)
    if not Path(args.fast_python).exists():
        raise SystemExit(f"FAST's Python {args.fast_python} does not exist; FAST stays out of the "
                         f"project's install: {FAST_RECIPE}")
    with tempfile.TemporaryDirectory(prefix="fast-peer-") as tmp:
        workdir = Path(tmp)
        print(f"building the peer U-Net, its ONNX file and the frames of {args.clip} ...", flush=True)
        prepare(workdir, args.clip, args.seed)
        runs = []
        for r in range(args.rounds):
            order = SIDES if r % 2 == 0 else SIDES[::-1]
            for side in order:
                python = args.fast_python if side == "fast" else sys.executable
                runs.append(run_side(side, python, workdir, r, args))
                print(f"round {r + 1}/{args.rounds} {side:<4}: median "
                      f"{np.median(runs[-1]['ms']):.2f} ms", flush=True)
    summary = summarise(runs)
    print(format_table(summary))
    report = {"command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
              "clip": args.clip, "input": list(SIZE), "widths": list(WIDTHS), "rounds": args.rounds,
              "frames_per_round": args.frames, "precision": args.precision, "summary": summary,
              "runs": runs}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
