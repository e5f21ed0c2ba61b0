"""Self-supervised adaptation to a real clip, judged on frames it never saw.

Issue 12, acceptance 5: :mod:`engines.adapt` on the first 60 frames of pydicom-data's
120-frame real A4C cine (``color3d_jpeg_baseline.dcm``, about four beats), once for the flow
network (the unsupervised motion objective) and once for the segmenter (temporal
consistency of its masks along the flow), then the echo app on the last 60 frames with the
shipped networks, the adapted flow, the adapted segmenter, and both, side by side: each
objective on the judged frames, mask continuity, the median distance between tracked and mask
centreline, the share of frames whose strain is measurable, and the beats with their grade
and the beat-to-beat spread.

    python bench/adapt_echo.py [--steps 150] [--seg-learning-rate 2e-5]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CLIP = "color3d_jpeg_baseline.dcm"
FIT, JUDGE = (0, 60), (60, 120)


def main(argv=None) -> int:
    from engines import adapt
    from engines.byo import shipped_model
    from engines.train.common import save_weights
    from streamer.apps import AnalysisConfig, EngineConfig, build_analysis
    from streamer.io.clips import read_frames

    sys.path.insert(0, str(ROOT / "bench"))
    from real_echo import clip_path, measure, run_clip

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--seg-learning-rate", type=float, default=2e-5)
    parser.add_argument("--out", type=Path, default=ROOT / "bench/results/adapt_echo.json")
    args = parser.parse_args(argv)
    path = clip_path(CLIP)
    frames = read_frames(path)
    config = adapt.AdaptConfig(steps=args.steps)
    fit, judge = frames[FIT[0]:FIT[1]], frames[JUDGE[0]:JUDGE[1]]
    t0 = time.perf_counter()
    flow_model = shipped_model("flow").module
    result = adapt.adapt_flow(flow_model, adapt.prepare_frames(fit),
                              adapt.prepare_frames(judge), config)
    seg_size = shipped_model("seg").spec.size
    seg_result = adapt.adapt_seg(
        shipped_model("seg").module, flow_model, adapt.prepare_frames(fit, seg_size),
        adapt.prepare_frames(fit),
        (adapt.prepare_frames(judge, seg_size), adapt.prepare_frames(judge)),
        adapt.AdaptConfig(steps=args.steps, learning_rate=args.seg_learning_rate))
    adapt_s = time.perf_counter() - t0
    report = {"command": " ".join(["python bench/adapt_echo.py", *sys.argv[1:]]),
              "clip": CLIP, "fit_frames": FIT, "judge_frames": JUDGE,
              "adaptation": {"flow": result.record, "seg": seg_result.record},
              "adapt_s": round(adapt_s, 1), "runs": {}}
    with tempfile.TemporaryDirectory() as tmp:
        flow_pt, seg_pt = Path(tmp) / "flow.pt", Path(tmp) / "seg.pt"
        save_weights(result.model, "flow", {"adapted_on": CLIP, "frames": FIT}, flow_pt)
        save_weights(seg_result.model, "seg", {"adapted_on": CLIP, "frames": FIT}, seg_pt)
        variants = (("shipped", ()), ("flow adapted", (("flow", str(flow_pt)),)),
                    ("seg adapted", (("seg", str(seg_pt)),)),
                    ("both adapted", (("flow", str(flow_pt)), ("seg", str(seg_pt)))))
        for name, weights in variants:
            analysis = build_analysis(AnalysisConfig(app="echo",
                                                     engines=EngineConfig(weights=weights)))
            clip_frames, outcomes, beats = run_clip(analysis, path, "a4c",
                                                    first_frame=JUDGE[0])
            figures = measure(clip_frames, outcomes, beats)
            report["runs"][name] = {k: v for k, v in figures.items() if k != "beats"} | {
                "beats": [{k: b.get(k) for k in ("beat", "quality", "peak_gls_pct")}
                          for b in beats]}
    runs = report["runs"]
    objective = {"flow": (result.record["before"]["judge"]["total"],
                          result.record["after"]["judge"]["total"]),
                 "seg": (seg_result.record["before"]["judge"]["total"],
                         seg_result.record["after"]["judge"]["total"])}
    rows = [("mask continuity", "mask_continuity_share", "{:.0%}"),
            ("track to mask centreline, median mm", "track_offset_mm_median", "{:.2f}"),
            ("strain measurable", "measurable_share", "{:.0%}"),
            ("beat-to-beat sd of peak GLS, %", "beat_to_beat_sd_pct", "{:.2f}")]
    print(f"adapted on frames {FIT[0]}-{FIT[1] - 1} of {CLIP} ({args.steps} steps each, "
          f"{adapt_s:.0f} s); judged on frames {JUDGE[0]}-{JUDGE[1] - 1}:")
    for role, (b, a) in objective.items():
        print(f"  {role} objective on the judged frames: {b:.6f} -> {a:.6f} "
              f"({(a - b) / b:+.0%})")
    print(f"{'':<38}" + "".join(f"{name:>14}" for name in runs))
    for label, key, fmt in rows:
        cells = [fmt.format(r[key]) if r[key] is not None else "-" for r in runs.values()]
        print(f"{label:<38}" + "".join(f"{c:>14}" for c in cells))
    print(f"{'beats closed':<38}" + "".join(f"{len(r['beats']):>14}" for r in runs.values()))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1, default=float))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
