"""The MR short-axis app on held-out MR phantoms, against their exact truth (issue 13,
acceptance 3).

Each phantom slice (``calib.datasets.random_mr_config`` on seeds of the ``test`` split,
which no training sees; AHA level by seed, wall-motion abnormalities and infarcts drawn at
random) goes through the app exactly as a side-car stream would (``mr-sax`` with the
shipped or given ``mr`` weights; its start says ``n_phases`` and where the slice lies in
a three-slice stack, so ``--sax-level auto`` gives it its level). Judged:

* **segment strain**: each AHA segment's peak circumferential (most negative) and radial
  (largest) strain of the beat message against the phantom's prescribed peak;
* **AHA segment of every pixel**: the app's labels and RV insertion points give each
  myocardial pixel a segment (:func:`streamer.measure.sax.aha_segment_map`); the share of
  the true myocardium's pixels (that the app also calls myocardium) given the true
  segment, over every frame;
* **ejection fraction**: three slices of one seed (basal, mid, apical, at the slice
  spacing ``--slice-spacing-mm``) make a stack; EF by disk summation of the app's labels at
  ED (phase 0) and at the phantom's ES against the same on the true labels.

Prints a table and writes JSON (``--out``).

    python bench/mr_phantoms.py [--clips 12] [--stacks 4] [--weights mr=PATH] [--threads 1]
        [--precision fp32]
        [--out bench/results/mr_phantoms.json]
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

from calib.datasets import random_mr_config, split_seeds  # noqa: E402
from calib.mr import make_mr_clip  # noqa: E402
from engines.spec import PRECISION_CHOICES  # noqa: E402
from streamer.apps import AnalysisConfig, EngineConfig, add_weights_argument, build_analysis  # noqa: E402
from streamer.io.protocol import FrameMessage  # noqa: E402
from streamer.measure.sax import (  # noqa: E402
    SaxGeometryError,
    aha_segment_map,
    ejection_fraction_pct,
    lv_volumes,
)
from streamer.vocab import SAX_LEVELS, MRLabel  # noqa: E402

#: issue 13's acceptance on held-out phantoms
ACCEPT = {"segment_strain_error_pct": 2.0, "aha_pixel_accuracy": 0.95, "ef_error_pct": 3.0}


def run_slice(analysis, clip, stream: str, slice_index: int, n_slices: int = 3) -> dict:
    """One phantom slice through the mr-sax app: its results, beat messages and labels."""
    app = analysis.apps["mr-sax"]
    n = len(clip.frames)
    instance = analysis.new_stream(app, stream, {"modality": "MR", "n_phases": n,
                                                 "n_slices": n_slices,
                                                 "slice_index": slice_index})
    results, beats, labels = [], [], []
    for t in range(n):
        frame = FrameMessage(stream=stream, seq=t, t_acq_ns=int(round(t / clip.fps * 1e9)),
                             modality="MR", pixels=clip.frames[t],
                             spacing_mm=tuple(clip.spacing_mm), fps=clip.fps, phase_index=t)
        outcome = instance(frame)
        results.append({**instance.fields(outcome), "flags": outcome.flags,
                        "latency_ms": outcome.latency_ms})
        labels.append(outcome.values["grid_labels"])
        beats += [m.fields for m in instance.beat_messages(frame, outcome) if m.kind == "beat"]
    return {"results": results, "beats": beats, "labels": np.stack(labels)}


def segment_errors(beat: dict, clip) -> dict:
    """Per segment: peak strain of the beat message minus the phantom's prescribed peak."""
    tr = clip.truth
    out = {}
    circ = beat.get("segment_peak_circumferential_strain_pct") or {}
    rad = beat.get("segment_peak_radial_strain_pct") or {}
    for k, sid in enumerate(tr.segment_ids):
        key = str(int(sid))
        true_c = float(tr.circ_strain_pct[:, k].min())
        true_r = float(tr.radial_strain_pct[:, k].max())
        out[key] = {"class": int(tr.segment_scores[k]), "true_circ": round(true_c, 2),
                    "true_radial": round(true_r, 2),
                    "circ_error": None if key not in circ else round(circ[key] - true_c, 2),
                    "radial_error": None if key not in rad else round(rad[key] - true_r, 2)}
    return out


def aha_pixel_accuracy(labels: np.ndarray, clip, level: str) -> tuple[int, int]:
    """(pixels of the true myocardium, also called myocardium by the app, given the true
    segment; all such pixels) over every frame."""
    truth = clip.truth
    right = total = 0
    for t in range(len(labels)):
        try:
            seg = aha_segment_map(labels[t], level)
        except SaxGeometryError:
            seg = np.zeros(labels[t].shape, np.uint8)
        both = (truth.myocardium[t] > 0) & (labels[t] == MRLabel.LV_MYOCARDIUM)
        right += int((seg[both] == truth.segments[t][both]).sum())
        total += int(both.sum())
    return right, total


def stack_ef(pred: list[np.ndarray], clips: list, slice_spacing_mm: float) -> dict:
    """EF by disk summation of the app's labels and of the truth, ED = phase 0, ES = the
    phantom's end-systole."""
    es = int(clips[0].truth.es_frames[0])
    sp = tuple(clips[0].spacing_mm)
    truth = [c.truth.label_map() for c in clips]

    def ef(maps):
        ed_v = lv_volumes(np.stack([m[0] for m in maps]), sp, slice_spacing_mm).cavity_ml
        es_v = lv_volumes(np.stack([m[es] for m in maps]), sp, slice_spacing_mm).cavity_ml
        return ed_v, es_v, ejection_fraction_pct(ed_v, es_v)

    p, t = ef(pred), ef(truth)
    return {"edv_ml": round(p[0], 2), "esv_ml": round(p[1], 2), "ef_pct": round(p[2], 2),
            "true_edv_ml": round(t[0], 2), "true_esv_ml": round(t[1], 2),
            "true_ef_pct": round(t[2], 2), "ef_error_pct": round(p[2] - t[2], 2)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clips", type=int, default=12, help="phantom slices (default %(default)s)")
    ap.add_argument("--stacks", type=int, default=4,
                    help="three-slice phantom stacks for EF (default %(default)s)")
    ap.add_argument("--slice-spacing-mm", type=float, default=10.0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--precision", default="fp32", choices=PRECISION_CHOICES,
                    help="network precision (default %(default)s)")
    add_weights_argument(ap)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "mr_phantoms.json")
    args = ap.parse_args(argv)

    analysis = build_analysis(AnalysisConfig(app="mr-sax", engines=EngineConfig(
        threads=args.threads, precision=args.precision, weights=tuple(args.weights))))
    rows, errors_c, errors_r, right, total, net_ms = [], [], [], 0, 0, []
    t0 = time.perf_counter()
    for seed in split_seeds("test", args.clips):
        clip = make_mr_clip(random_mr_config(int(seed)))
        level = clip.config.slice_level
        run = run_slice(analysis, clip, f"phantom-{seed}", SAX_LEVELS.index(level))
        beat = run["beats"][0] if run["beats"] else {}
        seg = segment_errors(beat, clip)
        r, n = aha_pixel_accuracy(run["labels"], clip, level)
        right, total = right + r, total + n
        errors_c += [abs(v["circ_error"]) for v in seg.values() if v["circ_error"] is not None]
        errors_r += [abs(v["radial_error"]) for v in seg.values() if v["radial_error"] is not None]
        net_ms += [res["latency_ms"].get("mr_net", np.nan) for res in run["results"]]
        rows.append({"seed": int(seed), "level": level, "quality": beat.get("quality"),
                     "measurable": sum(bool(res.get("measurable")) for res in run["results"]),
                     "frames": len(run["results"]), "segments": seg,
                     "aha_pixel_accuracy": round(r / max(n, 1), 4)})
        print(f"seed {seed} {level:6s} beat {beat.get('quality')}: "
              + " ".join(f"{k}:{v['circ_error']}/{v['radial_error']}" for k, v in seg.items()),
              flush=True)
    stacks = []
    for seed in split_seeds("test", args.stacks, offset=args.clips):
        clips = [make_mr_clip(random_mr_config(int(seed), slice_level=level))
                 for level in SAX_LEVELS]
        pred = [run_slice(analysis, c, f"stack-{seed}/slice-{k}", k)["labels"]
                for k, c in enumerate(clips)]
        stacks.append({"seed": int(seed), **stack_ef(pred, clips, args.slice_spacing_mm)})
        print(f"stack {seed}: EF {stacks[-1]['ef_pct']} (truth {stacks[-1]['true_ef_pct']})",
              flush=True)
    summary = {
        "segments": len(errors_c),
        "segment_circ_error_abs_pct": {"mean": float(np.mean(errors_c)), "max": float(np.max(errors_c)),
                                       "within_2": float(np.mean(np.array(errors_c) <= 2.0))},
        "segment_radial_error_abs_pct": {"mean": float(np.mean(errors_r)), "max": float(np.max(errors_r)),
                                         "within_2": float(np.mean(np.array(errors_r) <= 2.0))},
        "aha_pixel_accuracy": right / max(total, 1),
        "ef_error_abs_pct": {"mean": float(np.mean([abs(s["ef_error_pct"]) for s in stacks])),
                             "max": float(np.max([abs(s["ef_error_pct"]) for s in stacks]))},
        "mr_net_ms_median": float(np.nanmedian(net_ms)),
        "elapsed_s": round(time.perf_counter() - t0, 1),
    }
    print()
    print(f"{'measure':38s} {'mean':>8s} {'max':>8s} {'share ok':>9s} {'goal':>6s}")
    for name, key, goal in (("segment peak circumferential |error| %", "segment_circ_error_abs_pct", 2.0),
                            ("segment peak radial |error| %", "segment_radial_error_abs_pct", 2.0)):
        v = summary[key]
        print(f"{name:38s} {v['mean']:8.2f} {v['max']:8.2f} {v['within_2']:9.2f} {goal:6.1f}")
    print(f"{'AHA segment of myocardial pixels':38s} {summary['aha_pixel_accuracy']:8.4f} "
          f"{'':8s} {'':9s} {0.95:6.2f}")
    v = summary["ef_error_abs_pct"]
    print(f"{'EF |error| %-points':38s} {v['mean']:8.2f} {v['max']:8.2f} {'':9s} {3.0:6.1f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"command": " ".join(sys.argv), "accept": ACCEPT,
                                    "summary": summary, "slices": rows, "stacks": stacks},
                                   indent=1))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
