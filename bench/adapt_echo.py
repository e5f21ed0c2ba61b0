"""Self-supervised adaptation of the flow network to a real clip, judged on frames it never saw.

Issue 12, acceptance 5: ``engines adapt`` on the first 60 frames of pydicom-data's 120-frame
real A4C cine (``color3d_jpeg_baseline.dcm``, about four beats), then the echo app on its
last 60 frames with the shipped flow network and with the adapted one, side by side: the
self-supervised objective (photometric error of the warped next frame plus Huber smoothness,
:mod:`engines.adapt`) on the judged frames, mask continuity (unchanged: the segmenter is not
adapted), the median distance between tracked and mask centreline, the share of frames whose
strain is measurable, and the beats with their grade and the beat-to-beat spread.

    python bench/adapt_echo.py [--steps 150] [--out bench/results/adapt_echo.json]
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
    parser.add_argument("--out", type=Path, default=ROOT / "bench/results/adapt_echo.json")
    args = parser.parse_args(argv)
    path = clip_path(CLIP)
    frames = read_frames(path)
    config = adapt.AdaptConfig(steps=args.steps)
    t0 = time.perf_counter()
    result = adapt.adapt_flow(shipped_model("flow").module,
                              adapt.prepare_frames(frames[FIT[0]:FIT[1]]),
                              adapt.prepare_frames(frames[JUDGE[0]:JUDGE[1]]), config)
    adapt_s = time.perf_counter() - t0
    report = {"command": " ".join(["python bench/adapt_echo.py", *sys.argv[1:]]),
              "clip": CLIP, "fit_frames": FIT, "judge_frames": JUDGE,
              "adaptation": result.record, "adapt_s": round(adapt_s, 1), "runs": {}}
    with tempfile.TemporaryDirectory() as tmp:
        weights = Path(tmp) / "flow.pt"
        save_weights(result.model, "flow", {"adapted_on": CLIP, "frames": FIT}, weights)
        for name, engines in (("shipped", EngineConfig()),
                              ("adapted", EngineConfig(weights=(("flow", str(weights)),)))):
            analysis = build_analysis(AnalysisConfig(app="echo", engines=engines))
            clip_frames, outcomes, beats = run_clip(analysis, path, "a4c",
                                                    first_frame=JUDGE[0])
            figures = measure(clip_frames, outcomes, beats)
            report["runs"][name] = {k: v for k, v in figures.items() if k != "beats"} | {
                "beats": [{k: b.get(k) for k in ("beat", "quality", "peak_gls_pct")}
                          for b in beats]}
    before, after = result.record["before"]["judge"], result.record["after"]["judge"]
    shipped, adapted = report["runs"]["shipped"], report["runs"]["adapted"]
    rows = [("objective on frames 60-119", before["total"], after["total"], "{:.6f}"),
            ("  photometric (MSE)", before["photometric"], after["photometric"], "{:.6f}"),
            ("mask continuity", shipped["mask_continuity_share"],
             adapted["mask_continuity_share"], "{:.0%}"),
            ("track to mask centreline, median mm", shipped["track_offset_mm_median"],
             adapted["track_offset_mm_median"], "{:.2f}"),
            ("strain measurable", shipped["measurable_share"], adapted["measurable_share"],
             "{:.0%}"),
            ("beats closed", len(shipped["beats"]), len(adapted["beats"]), "{}"),
            ("beat-to-beat sd of peak GLS, %", shipped["beat_to_beat_sd_pct"],
             adapted["beat_to_beat_sd_pct"], "{:.2f}")]
    print(f"adapted on frames {FIT[0]}-{FIT[1] - 1} of {CLIP} ({args.steps} steps, "
          f"{adapt_s:.0f} s); judged on frames {JUDGE[0]}-{JUDGE[1] - 1}:")
    print(f"{'':<38} {'shipped':>10} {'adapted':>10}")
    for label, a, b, fmt in rows:
        show = [fmt.format(v) if v is not None else "-" for v in (a, b)]
        print(f"{label:<38} {show[0]:>10} {show[1]:>10}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1, default=float))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
