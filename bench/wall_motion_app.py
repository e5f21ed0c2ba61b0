"""Wall-motion scores as the product makes them: held-out phantom hearts through the mr-sax app.

Each heart (``calib.datasets.wall_motion_stack_configs`` on seeds of the ``test`` split,
which no training sees) is a basal, a mid and an apical slice sent as the three slice
streams of one stack (start: ``stack_id``, ``n_slices`` 3, ``slice_index``, ``n_phases``),
frame by frame through the ``mr-sax`` app as a side-car runs it: the MR network's own
labels find the LV, the RV insertion points and the levels, and the ``wall_motion`` message
that follows the third slice's beat holds the 16 scores. Judged against the phantom's
prescribed classes: segment accuracy (four classes), abnormal/normal accuracy, Cohen's
kappa, the Pearson correlation of the motion score index, per frame count; and the time the
scoring took (the beat stage, per stack). ``engines.train.wall_motion`` judges the network
on segments aligned by the *true* labels; the difference between the two is what the
app's segmentation costs.

    python bench/wall_motion_app.py [--hearts 12] [--frames 20 25 30 50]
        [--wall-motion-weights PATH] [--out bench/results/wall_motion_app.json]
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

from calib.datasets import split_seeds, wall_motion_stack_configs  # noqa: E402
from calib.mr import make_mr_clip  # noqa: E402
from engines.spec import PRECISION_CHOICES  # noqa: E402
from engines.train.wall_motion import scoring_metrics  # noqa: E402
from streamer.apps import AnalysisConfig, EngineConfig, build_analysis  # noqa: E402
from streamer.apps.mr_sax import MrShortAxisConfig, WallMotionConfig  # noqa: E402
from streamer.io.protocol import FrameMessage  # noqa: E402
from streamer.vocab import WALL_MOTION_CLASSES  # noqa: E402


def run_stack(analysis, clips: list, name: str) -> tuple[dict | None, float | None]:
    """The slices of one heart through the app as one stack: its wall_motion message's
    fields (None when none came) and the scoring's time (ms)."""
    app = analysis.apps["mr-sax"]
    message, scoring_ms = None, None
    for k, clip in enumerate(clips):
        stream = f"{name}/slice-{k}"
        n = len(clip.frames)
        instance = analysis.new_stream(app, stream, {
            "modality": "MR", "n_phases": n, "n_slices": len(clips), "slice_index": k,
            "stack_id": name})
        for t in range(n):
            frame = FrameMessage(stream=stream, seq=t, t_acq_ns=int(round(t / clip.fps * 1e9)),
                                 modality="MR", pixels=clip.frames[t],
                                 spacing_mm=tuple(clip.spacing_mm), fps=clip.fps, phase_index=t)
            outcome = instance(frame)
            for m in instance.beat_messages(frame, outcome):
                if m.kind == "wall_motion":
                    message = m.fields
                    scoring_ms = outcome.latency_ms.get("beat:wall_motion")
    return message, scoring_ms


def codes(fields: dict) -> np.ndarray:
    """The 16 class codes of a wall_motion message (-1 where a segment is missing)."""
    return np.array([-1 if s["label"] is None else WALL_MOTION_CLASSES.index(s["label"])
                     for s in fields["segments"]])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__.split("\n\n", 1)[1])
    ap.add_argument("--hearts", type=int, default=12, help="held-out hearts per frame count "
                                                           "(default %(default)s)")
    ap.add_argument("--frames", type=int, nargs="+", default=[20, 25, 30, 50])
    ap.add_argument("--offset", type=int, default=200,
                    help="first test-split seed index (default %(default)s: past the hearts "
                         "engines.train.wall_motion judges by default)")
    ap.add_argument("--wall-motion-weights", default=None, metavar="PATH")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--precision", default="fp32", choices=PRECISION_CHOICES,
                    help="the MR network's precision (default %(default)s)")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "wall_motion_app.json")
    args = ap.parse_args(argv)
    config = MrShortAxisConfig(wall_motion=WallMotionConfig(weights=args.wall_motion_weights))
    analysis = build_analysis(AnalysisConfig(
        app="mr-sax", engines=EngineConfig(threads=args.threads, precision=args.precision),
        apps={"mr-sax": config}))
    t0 = time.perf_counter()
    rows, by_frames = [], {}
    for j, frames in enumerate(args.frames):
        true, pred, times = [], [], []
        for seed in split_seeds("test", args.hearts, offset=args.offset + j * args.hearts):
            configs = wall_motion_stack_configs(int(seed), frames=frames)
            clips = [make_mr_clip(c) for c in configs]
            truth = np.zeros(16, int)
            for clip in clips:
                for k, aha in enumerate(clip.truth.segment_ids):
                    truth[aha - 1] = clip.truth.segment_scores[k]
            fields, ms = run_stack(analysis, clips, f"heart-{seed}")
            got = codes(fields) if fields is not None else np.full(16, -1)
            scored = got >= 0
            true.append(truth)
            pred.append(np.where(scored, got, 0))
            times.append(ms)
            rows.append({"seed": int(seed), "frames": frames, "truth": truth.tolist(),
                         "pred": got.tolist(), "msi": None if fields is None else fields["msi"],
                         "missing": None if fields is None else fields["missing_reasons"],
                         "scoring_ms": ms})
            print(f"heart {seed} ({frames} frames): {int((got == truth).sum())}/16 right, "
                  f"{int((~scored).sum())} missing, scoring {ms and round(ms)} ms", flush=True)
        m = scoring_metrics(np.stack(true), np.stack(pred))
        m["missing_segments"] = int(sum(int((np.asarray(r["pred"]) < 0).sum())
                                        for r in rows if r["frames"] == frames))
        m["scoring_ms_median"] = float(np.median([t for t in times if t is not None]))
        by_frames[str(frames)] = m
    print()
    print("| frames | accuracy | abnormal/normal | kappa | MSI r | missing | scoring ms |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for t, m in by_frames.items():
        print(f"| {t} | {m['accuracy']:.1%} | {m['binary_accuracy']:.1%} | {m['kappa']:.3f} | "
              f"{m['msi_pearson']:.3f} | {m['missing_segments']} | {m['scoring_ms_median']:.0f} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"command": " ".join(sys.argv), "by_frames": by_frames,
                                    "hearts": rows,
                                    "elapsed_s": round(time.perf_counter() - t0, 1)}, indent=1))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
