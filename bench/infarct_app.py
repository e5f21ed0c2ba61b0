"""Infarct maps as the product makes them: held-out phantom slices through the mr-sax app.

Each slice (``calib.datasets.infarct_slice_config`` on seeds of the ``test`` split past the
trainer's, which no training saw; 70 % with a subendocardial to transmural infarct, the
others with wall-motion abnormalities and no infarct) goes frame by frame through the
``mr-sax`` app as a side-car stream (its start: ``n_phases`` and its place in a three-slice
stack): the MR network's own labels find the LV region and the myocardium, OF-RNN maps it,
and the beat message carries the map (``infarct_p``, with ``--mr-labels``). Judged on the
truth's end-diastolic myocardium: pixel accuracy, sensitivity, specificity, Dice of the
infarct region (pooled), per frame count, beside the paper's 94.35 / 91.23 / 98.42 %; the
share of slices with no infarct where none was mapped; and the time the beat stage took
(flow and network, per slice and beat). ``engines.train.infarct`` judges the network on
regions cut around the *true* LV; the difference is what the app's segmentation costs.

    python bench/infarct_app.py [--slices 24] [--frames 20 25 30 50] [--infarct-weights PATH]
        [--out bench/results/infarct_app.json]
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

from calib.datasets import infarct_slice_config, split_seeds  # noqa: E402
from calib.mr import make_mr_clip  # noqa: E402
from engines.spec import PRECISION_CHOICES  # noqa: E402
from engines.train.infarct import pixel_metrics  # noqa: E402
from streamer.apps import AnalysisConfig, EngineConfig, build_analysis  # noqa: E402
from streamer.apps.mr_sax import InfarctConfig, MrShortAxisConfig  # noqa: E402
from streamer.io.protocol import FrameMessage  # noqa: E402
from streamer.vocab import SAX_LEVELS  # noqa: E402

#: the paper's figures (Xu et al. 2018, on 165 patients' cine MR against late enhancement)
PAPER = {"accuracy": 0.9435, "sensitivity": 0.9123, "specificity": 0.9842}


def run_slice(analysis, clip, stream: str) -> tuple[dict | None, np.ndarray | None, float | None]:
    """One slice through the app: its beat's fields, its infarct map (frame rows and
    columns) and the beat stage's time (ms)."""
    app = analysis.apps["mr-sax"]
    n = len(clip.frames)
    instance = analysis.new_stream(app, stream, {
        "modality": "MR", "n_phases": n, "n_slices": 3,
        "slice_index": SAX_LEVELS.index(clip.config.slice_level)})
    fields = p = ms = None
    for t in range(n):
        frame = FrameMessage(stream=stream, seq=t, t_acq_ns=int(round(t / clip.fps * 1e9)),
                             modality="MR", pixels=clip.frames[t],
                             spacing_mm=tuple(clip.spacing_mm), fps=clip.fps, phase_index=t)
        outcome = instance(frame)
        for m in instance.beat_messages(frame, outcome):
            if m.kind == "beat" and fields is None:
                fields, p = m.fields, m.arrays.get("infarct_p")
                ms = outcome.latency_ms.get("beat:infarct")
    return fields, p, ms


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__.split("\n\n", 1)[1])
    ap.add_argument("--slices", type=int, default=24, help="held-out slices per frame count "
                                                           "(default %(default)s)")
    ap.add_argument("--frames", type=int, nargs="+", default=[20, 25, 30, 50])
    ap.add_argument("--offset", type=int, default=400,
                    help="first test-split seed index (default %(default)s: past the "
                         "trainer's test slices)")
    ap.add_argument("--infarct-weights", default=None, metavar="PATH")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--precision", default="fp32", choices=PRECISION_CHOICES,
                    help="the MR network's precision (default %(default)s)")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "infarct_app.json")
    args = ap.parse_args(argv)
    config = MrShortAxisConfig(send_labels=True,
                               infarct=InfarctConfig(weights=args.infarct_weights))
    analysis = build_analysis(AnalysisConfig(
        app="mr-sax", engines=EngineConfig(threads=args.threads, precision=args.precision),
        apps={"mr-sax": config}))
    t0 = time.perf_counter()
    rows, by_frames = [], {}
    for j, frames in enumerate(args.frames):
        true, pred, times, clean = [], [], [], []
        for seed in split_seeds("test", args.slices, offset=args.offset + j * args.slices):
            cfg = infarct_slice_config(int(seed), frames=frames)
            clip = make_mr_clip(cfg)
            ed = int(clip.truth.ed_frames[0])
            myo = clip.truth.myocardium[ed] > 0
            truth = clip.truth.infarct[ed] > 0
            fields, p, ms = run_slice(analysis, clip, f"slice-{seed}")
            mapped = p is not None
            got = (p > 0.5) if mapped else np.zeros_like(truth)
            true.append(truth[myo])
            pred.append(got[myo])
            if ms is not None:
                times.append(ms)
            if not cfg.infarct_segments:
                clean.append(not got[myo].any())
            m = pixel_metrics(truth[myo], got[myo])
            rows.append({"seed": int(seed), "frames": frames, "level": cfg.slice_level,
                         "infarct_segments": cfg.infarct_segments,
                         "transmurality": round(cfg.infarct_transmurality, 3),
                         "status": None if fields is None else fields.get("infarct_status"),
                         "area_mm2": None if fields is None else fields.get("infarct_area_mm2"),
                         "true_area_mm2": round(float(truth.sum() * np.prod(clip.spacing_mm)), 1),
                         "dice": m["dice"], "ms": ms})
            print(f"slice {seed} ({frames} frames, {cfg.slice_level}, infarct "
                  f"{cfg.infarct_segments}): {rows[-1]['status']}, area "
                  f"{rows[-1]['area_mm2']} (truth {rows[-1]['true_area_mm2']}) mm2, "
                  f"Dice {m['dice']:.2f}", flush=True)
        m = pixel_metrics(np.concatenate(true), np.concatenate(pred))
        m["no_infarct_clean_share"] = float(np.mean(clean)) if clean else float("nan")
        m["ms_median"] = float(np.median(times)) if times else float("nan")
        by_frames[str(frames)] = m
    print()
    print("| frames | accuracy | sensitivity | specificity | Dice | clean slices w/o infarct "
          "| ms per slice-beat |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for t, m in by_frames.items():
        print(f"| {t} | {m['accuracy']:.2%} | {m['sensitivity']:.2%} | {m['specificity']:.2%} | "
              f"{m['dice']:.3f} | {m['no_infarct_clean_share']:.0%} | {m['ms_median']:.0f} |")
    print(f"| paper | {PAPER['accuracy']:.2%} | {PAPER['sensitivity']:.2%} | "
          f"{PAPER['specificity']:.2%} | - | - | - |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"command": " ".join(sys.argv), "paper": PAPER,
                                    "by_frames": by_frames, "slices": rows,
                                    "elapsed_s": round(time.perf_counter() - t0, 1)}, indent=1))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
