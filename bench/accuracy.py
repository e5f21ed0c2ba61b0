"""Accuracy of the shipped networks and of the whole echo pipeline on held-out phantoms.

Every figure is measured against the phantoms' exact truth on seeds of the held-out
``test`` split (``calib.datasets``), which training never sees, through an engine of
``--backend`` (the same engines the side-car runs):

* view: accuracy over the 8 classes (balanced), and the confusion matrix;
* segmentation: myocardium Dice at 256 x 256 (mean, min);
* flow: end-point error inside the myocardium, the network beside OpenCV DIS (preset
  medium) on the same frame pairs;
* end to end: held-out A4C clips through the echo app (view -> segmentation
  -> flow -> tracking -> strain); peak GLS and the six regional peak strains against the
  phantom's mid-wall truth.

    python bench/accuracy.py                          # default backend, default sizes
    python bench/accuracy.py --backend torch --view-samples 400 --out bench/results/accuracy.json
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from engines.spec import BACKENDS, PRECISIONS  # noqa: E402


def batch_predict(engine):
    """Engines take batch 1; the evaluators pass batches."""
    def predict(x: np.ndarray) -> np.ndarray:
        return np.concatenate([engine(np.ascontiguousarray(x[i:i + 1], np.float32))
                               for i in range(len(x))])
    return predict


def network_accuracy(args) -> dict:
    from engines.backends import create_engine
    from engines.train import common, flow, seg, view

    def held_out(module, n):
        """The trainer's own held-out set (test split, its frames per clip): cached."""
        if module is flow:
            return flow.load("test", n)[0]
        return common.load_split(module.BUILDER, "test", n, module.FRAMES_PER_CLIP["test"],
                                 module.CHUNK)[0]

    out = {}
    for role, module, n in (("view", view, args.view_samples), ("seg", seg, args.seg_samples),
                            ("flow", flow, args.flow_pairs)):
        if n <= 0:
            continue
        engine = create_engine(role, backend=args.backend, precision=args.precision,
                               threads=args.threads)
        samples = held_out(module, n)
        t0 = time.perf_counter()
        metrics = module.evaluate(batch_predict(engine), samples)
        metrics["seconds"] = round(time.perf_counter() - t0, 2)
        metrics["engine"] = f"{engine.backend}/{engine.precision}"
        out[role] = metrics
        print(f"{role}: {json.dumps({k: v for k, v in metrics.items() if not isinstance(v, list)})}")
    return out


def gls_accuracy(args) -> dict:
    """Held-out A4C clips, one cardiac cycle from end-diastole, through the echo app."""
    from calib.datasets import random_echo_config, split_seeds
    from calib.echo import make_echo_clip
    from streamer.apps import AnalysisConfig, EngineConfig, build_analysis
    from streamer.io.protocol import EndMessage, FrameMessage, StartMessage
    from streamer.processor import FrameProcessor, Received
    from streamer.vocab import A4C_SEGMENTS

    analysis = build_analysis(AnalysisConfig(app="echo", engines=EngineConfig(
        backend=args.backend, precision=args.precision, threads=args.threads)))
    processor = FrameProcessor(analysis)
    rows = []
    for seed in split_seeds("test", args.gls_clips, offset=args.gls_offset):
        probe = random_echo_config(int(seed), view="a4c")
        fps = 50.0
        frames = int(math.ceil(1.05 * 60.0 / probe.heart_rate_bpm * fps))
        clip = make_echo_clip(random_echo_config(int(seed), view="a4c", frames=frames, fps=fps,
                                                 start_phase=0.0))
        stream = f"phantom-{seed}"
        processor.handle(Received(StartMessage(stream=stream, meta={"modality": "US"}),
                                  time.time_ns()))
        gls, regional, analysed = [], [], 0
        for t, pixels in enumerate(clip.frames):
            message = FrameMessage(stream=stream, seq=t, t_acq_ns=int(t / fps * 1e9),
                                   modality="US", pixels=pixels,
                                   spacing_mm=tuple(clip.spacing_mm), fps=fps)
            result = processor.handle(Received(message, time.time_ns()))[0]
            ok = result.kind == "result" and result.fields["gls_pct"] is not None
            analysed += ok
            gls.append(result.fields["gls_pct"] if ok else np.nan)
            regional.append([result.fields["regional_pct"][k] for k in A4C_SEGMENTS] if ok
                            else [np.nan] * 6)
        processor.handle(Received(EndMessage(stream=stream, n_frames=frames), time.time_ns()))
        gls, regional = np.asarray(gls, float), np.asarray(regional, float)
        truth_gls = clip.truth.midwall_gls_pct[:frames]
        truth_reg = clip.truth.midwall_regional_pct[:frames]
        row = {"seed": int(seed), "frames": frames, "analysed": analysed,
               "dysfunction": dict(clip.config.dysfunction),
               "peak_gls_truth_pct": float(truth_gls.min()),
               "peak_gls_pct": float(np.nanmin(gls)) if analysed else None}
        if analysed:
            row["peak_gls_error_pct"] = row["peak_gls_pct"] - row["peak_gls_truth_pct"]
            row["regional_peak_error_pct"] = dict(zip(
                A4C_SEGMENTS, map(float, np.nanmin(regional, 0) - truth_reg.min(0))))
        rows.append(row)
        print(f"seed {seed}: {analysed}/{frames} frames analysed, peak GLS "
              f"{row['peak_gls_pct']} vs truth {row['peak_gls_truth_pct']:.2f} %")
    errors = [abs(r["peak_gls_error_pct"]) for r in rows if "peak_gls_error_pct" in r]
    regional_errors = [abs(v) for r in rows for v in r.get("regional_peak_error_pct", {}).values()]
    return {"clips": rows,
            "peak_gls_abs_error_pct": {"mean": float(np.mean(errors)), "max": float(np.max(errors))}
            if errors else None,
            "regional_peak_abs_error_pct": {"mean": float(np.mean(regional_errors)),
                                            "max": float(np.max(regional_errors))}
            if regional_errors else None}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", default="auto", choices=BACKENDS)
    parser.add_argument("--precision", default="fp32", choices=PRECISIONS)
    parser.add_argument("--threads", type=int)
    parser.add_argument("--view-samples", type=int, default=512,
                        help="held-out view frames (a multiple of 32 stays balanced)")
    parser.add_argument("--seg-samples", type=int, default=400, help="held-out seg frames")
    parser.add_argument("--flow-pairs", type=int, default=128, help="held-out frame pairs")
    parser.add_argument("--gls-clips", type=int, default=8, help="held-out A4C clips, end to end")
    parser.add_argument("--gls-offset", type=int, default=50_000,
                        help="first test-split seed offset for the end-to-end clips")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "accuracy.json")
    args = parser.parse_args(argv)
    report = {"benchmark": "accuracy on held-out phantoms",
              "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
              "machine": platform.platform(), "backend": args.backend,
              "precision": args.precision}
    report["networks"] = network_accuracy(args)
    if args.gls_clips > 0:
        report["end_to_end"] = gls_accuracy(args)
        e2e = report["end_to_end"]
        print(f"end to end: peak GLS abs error {e2e['peak_gls_abs_error_pct']}, regional "
              f"{e2e['regional_peak_abs_error_pct']} (strain-%)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2, default=float))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
