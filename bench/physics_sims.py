"""Held-out physics-simulated A4C clips (PyMUST) with exact motion truth, cached on disk.

The second echo generator of issue 12: the same scenes and deforming-LV kinematics as our
phantom (``calib.echo``), imaged by an acoustic simulation (``calib.physics_sim``: PyMUST,
P4-2v phased array, one diverging wave per frame, delay-and-sum) instead of our speckle
model. The truth (masks, displacement, centreline, GLS and regional strain) comes from the
kinematics, so it is exact for these frames. A validation set only: the seeds are
``calib.datasets.split_seeds("test", n, offset=90000)``, which no training set reaches.

Clips (cycled when --clips > 4): A4C, anatomy and imaging drawn from the seed, peak GLS
-22, -17, -12.5 (apical lateral akinetic) and -8 %, at 60-80 bpm and 32-40 fps; one
cardiac cycle from end-diastole to the next end-diastole (31-33 frames). Each clip is
written with ``calib.io.write_phantom`` (the clip, its truth ``<stem>.truth.npz``, the
metadata with ``generator: pymust`` and the simulation settings), plus ``index.json``
listing them. Clips already written (same seed, size and frame count: the file name) are
kept unless --force, so an interrupted run resumes.

Slow: ~40k scatterers per frame, about 0.2 ms each on 2 free cores (~10 s per frame, any
image size; 25 s measured on a CPU shared with training): the 4 clips (126 frames) take
roughly 25-55 min.
Needs the optional extra: pip install 'cardiostream[sim]'.

    python bench/physics_sims.py [generate] [--clips 4] [--size 256] [--frames N] [--out DIR]
                                 [--scatterers-per-cell 4] [--workers 0] [--force]

``evaluate`` measures the echo app on the cached clips (issue 12, acceptance 2: on each of
at least 4 held-out physics clips |peak GLS error| <= 2 %-points and mean centreline
distance to the truth <= 2 mm). Every clip goes frame by frame through one stream of the
echo app, as ``bench/accuracy.py: gls_accuracy`` sends its phantom clips (FrameProcessor,
the clip file's spacing and fps, no view hint unless asked: as a user replays the clip).
Per clip and hint: frames, frames analysed (the view gate let them in), frames with a
published GLS, the peak published GLS against the truth's peak (``midwall_gls_pct.min()``)
and its error, the beat summary's ``peak_gls_pct`` when a beat closed, and the tracked
centreline (the result's ``points_mm``) against the truth's ``midwall_centreline_mm``,
averaged over the frames with a tracked centreline: point i to point i (``index``: both are
120 points basal septum -> apex -> basal lateral) and the symmetric mean distance from each
curve's points to the other curve (``curve``: the tracker's points need not be the truth's
material points). A clip passes when |peak GLS error| <= 2 and the ``--distance`` metric
(default curve) <= 2 mm; the set passes when at least 4 clips were measured and all pass.
Prints a table, writes JSON (default DIR/evaluate.json).

    python bench/physics_sims.py evaluate [--dir DIR] [--view-hint none|a4c|both]
                                          [--distance curve|index] [--weights ROLE=PATH ...]
                                          [--backend auto] [--precision fp32] [--out JSON]

The folder defaults to $CARDIOSTREAM_DATA/physics (CARDIOSTREAM_DATA defaults to
~/.cache/cardiostream/datasets, as for the training sets).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time
from pathlib import Path

# before numpy loads: PyMUST's thousands of small BLAS products per frame cost ~3x the CPU
# with a multi-threaded BLAS; the parallelism is simus's thread pool (--workers)
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import numpy as np  # noqa: E402
from echo_stream import stream_clip  # noqa: E402

from calib.cli import parse_size  # noqa: E402


def default_out() -> Path:
    base = Path(os.environ.get("CARDIOSTREAM_DATA", Path.home() / ".cache" / "cardiostream" / "datasets"))
    return base / "physics"


def _hms(seconds: float) -> str:
    s = int(round(max(0.0, seconds)))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


class Eta:
    """A progress line per frame: render time, scatterers, ETA of the clip and of the set."""

    def __init__(self, clips: int, total_frames: int):
        self.clips, self.total = clips, total_frames
        self.done, self.sim_s, self.setup_s = 0, 0.0, 0.0

    def clip(self, i: int, cfg, t_clip: float):
        def progress(k: int, seconds: float, n_scat: int) -> None:
            if k == 0:                  # the clip's scene, DAS matrix and gain calibration came first
                self.setup_s = time.perf_counter() - t_clip - seconds
            self.done += 1
            self.sim_s += seconds
            per = self.sim_s / self.done
            left = per * (self.total - self.done) + self.setup_s * (self.clips - i - 1)
            setup = f", after {self.setup_s:.1f} s setup" if k == 0 else ""
            print(f"clip {i + 1}/{self.clips} seed {cfg.seed} frame {k + 1}/{cfg.frames}: {seconds:.1f} s "
                  f"({n_scat} scatterers{setup}) | ETA clip {_hms(per * (cfg.frames - k - 1))}, "
                  f"all {_hms(left)}", flush=True)
        return progress


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["evaluate"]:
        return evaluate_main(argv[1:])
    if argv[:1] == ["generate"]:
        argv = argv[1:]
    return generate_main(argv)


def generate_main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="physics_sims.py [generate]",
        description=__doc__.split("\n\n")[0],
        epilog="Needs PyMUST (pip install 'cardiostream[sim]'). Slow: run it when the CPU is free. "
               "'physics_sims.py evaluate -h': measure the echo app on the written clips.")
    parser.add_argument("--clips", type=int, default=4, help="number of clips (default 4; specs cycle)")
    parser.add_argument("--frames", type=int, default=None,
                        help="frames per clip (default: one cardiac cycle, ED to the next ED inclusive)")
    parser.add_argument("--size", default="256", metavar="ROWSxCOLS", help="image size (default 256)")
    parser.add_argument("--out", type=Path, default=None,
                        help="output folder (default $CARDIOSTREAM_DATA/physics, i.e. "
                             "~/.cache/cardiostream/datasets/physics)")
    parser.add_argument("--format", choices=("dcm", "npz", "nii.gz"), default="dcm",
                        help="clip file format (default dcm: multi-frame DICOM)")
    parser.add_argument("--scatterers-per-cell", type=float, default=None,
                        help="scatterers simulated per resolution cell (default: PhysicsConfig's, 4); "
                             "the cost is proportional")
    parser.add_argument("--workers", type=int, default=0, help="simulation threads (0: all CPUs)")
    parser.add_argument("--offset", type=int, default=None,
                        help="seed offset in the test split (default 90000)")
    parser.add_argument("--force", action="store_true", help="rewrite clips that exist")
    args = parser.parse_args(argv)

    from calib.io import read_truth, write_phantom
    from calib.physics_sim import (
        VALIDATION_OFFSET,
        PhysicsConfig,
        make_physics_clip,
        pymust_version,
        validation_configs,
    )

    rows, cols = parse_size(args.size)
    out = args.out or default_out()
    out.mkdir(parents=True, exist_ok=True)
    phys_kw = {"workers": args.workers}
    if args.scatterers_per_cell is not None:
        phys_kw["scatterers_per_cell"] = args.scatterers_per_cell
    physics = PhysicsConfig(**phys_kw)
    offset = VALIDATION_OFFSET if args.offset is None else args.offset
    cfgs = validation_configs(args.clips, rows, cols, frames=args.frames, offset=offset)
    total = sum(c.frames for c in cfgs)
    print(f"{len(cfgs)} clips, {total} frames {rows}x{cols} -> {out} (pymust {pymust_version()}, "
          f"{physics.probe}, {len(physics.tilts_deg)} diverging wave(s), "
          f"{physics.scatterers_per_cell:g} scatterers per resolution cell)", flush=True)

    t_all = time.perf_counter()
    eta, index = Eta(len(cfgs), total), []
    for i, cfg in enumerate(cfgs):
        path = out / f"a4c_{i:02d}_seed{cfg.seed}_{cfg.rows}x{cfg.cols}_{cfg.frames}f.{args.format}"
        peak = float(cfg.gls_pct * cfg.segment_factors.mean())
        if path.exists() and not args.force:
            print(f"clip {i + 1}/{len(cfgs)} seed {cfg.seed}: {path.name} exists, kept", flush=True)
            eta.total -= cfg.frames
            truth = read_truth(path)
            index.append({"file": path.name, "seed": int(cfg.seed), "frames": cfg.frames, "kept": True,
                          "peak_gls_pct": float(truth["gls_pct"].min()),
                          "peak_midwall_gls_pct": float(truth["midwall_gls_pct"].min())})
            continue
        t_clip = time.perf_counter()
        progress = eta.clip(i, cfg, t_clip)
        print(f"clip {i + 1}/{len(cfgs)} seed {cfg.seed}: {cfg.frames} frames at {cfg.fps:g} fps, "
              f"{cfg.heart_rate_bpm:g} bpm, depth {cfg.depth_mm:.0f} mm, sector {cfg.sector_angle_deg:.0f} deg, "
              f"GLS {cfg.gls_pct:g} % {cfg.dysfunction or ''} (peak {peak:.1f} %); setting up...", flush=True)
        clip = make_physics_clip(cfg, physics, progress=progress)
        cpath, tpath = write_phantom(clip, path)
        ph = clip.physics
        gls = clip.truth.gls_pct
        row = {"file": cpath.name, "truth": tpath.name, "seed": int(cfg.seed), "frames": cfg.frames,
               "fps": cfg.fps, "heart_rate_bpm": cfg.heart_rate_bpm, "gls_pct": cfg.gls_pct,
               "dysfunction": cfg.dysfunction, "peak_gls_pct": float(gls.min()),
               "peak_midwall_gls_pct": float(clip.truth.midwall_gls_pct.min()),
               "scatterers_simulated": ph["scatterers_simulated"],
               "render_s_per_frame": ph["render_s_per_frame"], "clip_s": time.perf_counter() - t_clip}
        index.append(row)
        print(f"wrote {cpath} and {tpath.name}: peak GLS {row['peak_gls_pct']:.1f} %, "
              f"{ph['render_s_per_frame']:.1f} s/frame, {_hms(row['clip_s'])}", flush=True)

    elapsed = time.perf_counter() - t_all
    record = {"generator": "pymust", "pymust_version": pymust_version(), "split": "test",
              "seed_offset": offset, "physics": physics.to_dict(), "size": [rows, cols],
              "command": " ".join(["python bench/physics_sims.py", *(argv if argv is not None else sys.argv[1:])]),
              "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "host": platform.node(), "runtime_s": elapsed, "clips": index}
    (out / "index.json").write_text(json.dumps(record, indent=1))
    print(f"{len(cfgs)} clips in {_hms(elapsed)}; wrote {out / 'index.json'}")
    return 0


# ====================================================================== evaluate
GLS_ERROR_LIMIT_PCT = 2.0           # acceptance 2: |peak GLS error| <= 2 %-points on each clip
CENTRELINE_LIMIT_MM = 2.0           # ... and mean centreline distance to the truth <= 2 mm
MIN_CLIPS = 4                       # ... on at least 4 held-out physics clips
CLIP_SUFFIXES = (".dcm", ".npz", ".nii.gz", ".nii")


def cached_clips(directory) -> list[Path]:
    """The clips of a folder that have a truth file beside them (``<stem>.truth.npz``)."""
    out = []
    for truth in sorted(Path(directory).glob("*.truth.npz")):
        stem = truth.name[: -len(".truth.npz")]
        found = [truth.with_name(stem + suf) for suf in CLIP_SUFFIXES if truth.with_name(stem + suf).exists()]
        if found:
            out.append(found[0])
    return out


def _segment_distances(points: np.ndarray, curve: np.ndarray) -> np.ndarray:
    """Distance from each point (n, 2) to the polyline ``curve`` (m, 2), mm."""
    a, b = curve[:-1], curve[1:]
    ab = b - a
    length2 = np.maximum((ab ** 2).sum(-1), 1e-12)
    t = np.clip(((points[:, None] - a[None]) * ab[None]).sum(-1) / length2[None], 0.0, 1.0)
    nearest = a[None] + t[..., None] * ab[None]
    return np.sqrt(((points[:, None] - nearest) ** 2).sum(-1)).min(1)


def centreline_distances(tracked: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    """(index, curve) mean distances, mm, between two centrelines (n, 2) [row, col] mm:
    point i to point i, and the symmetric mean distance of each one's points to the other
    polyline."""
    tracked, truth = np.asarray(tracked, np.float64), np.asarray(truth, np.float64)
    index = float(np.mean(np.hypot(*(tracked - truth).T)))
    curve = 0.5 * float(np.mean(_segment_distances(tracked, truth))
                        + np.mean(_segment_distances(truth, tracked)))
    return index, curve


def evaluate_clip(processor, path, view_hint: str | None = None, stream: str | None = None) -> dict:
    """One cached clip through one echo stream of ``processor`` (a FrameProcessor), as
    ``bench/accuracy.py: gls_accuracy`` sends a clip; its figures against the truth file."""
    from calib.io import read_truth
    from streamer.io.clips import open_clip

    path = Path(path)
    truth = read_truth(path)
    stream = stream or f"physics-{path.name}-{view_hint or 'none'}"
    gls, points, analysed, beats, errors = [], [], 0, [], []
    with open_clip(path) as reader:
        info = reader.info
        spacing = tuple(float(s) for s in (info.spacing_mm if info.spacing_mm is not None
                                            else truth["spacing_mm"]))
        fps = float(info.fps if info.fps else truth["fps"])
        n = 0
        for result, closed in stream_clip(processor, stream, (f.pixels for f in reader), fps,
                                          spacing, view_hint):
            n += 1
            beats += [dict(m.fields, beat=m.beat) for m in closed]
            if result.kind != "result":
                errors.append(getattr(result, "message", str(result)))
                gls.append(np.nan)
                points.append(None)
                continue
            fields = result.fields
            analysed += fields.get("measurable") is not None
            gls.append(np.nan if fields.get("gls_pct") is None else float(fields["gls_pct"]))
            points.append(None if fields.get("points_mm") is None else np.asarray(fields["points_mm"], float))
    gls = np.asarray(gls, float)
    truth_gls = np.asarray(truth["midwall_gls_pct"], float)[:n]
    truth_cl = np.asarray(truth["midwall_centreline_mm"], float)[:n]
    index_d, curve_d = [], []
    for t, p in enumerate(points):
        if p is not None and t < len(truth_cl) and np.isfinite(p).all() and np.isfinite(truth_cl[t]).all():
            i, c = centreline_distances(p, truth_cl[t])
            index_d.append(i)
            curve_d.append(c)
    published = int(np.isfinite(gls).sum())
    params = truth.get("params", {})
    row = {"clip": path.name, "generator": params.get("generator", params.get("phantom")),
           "view_hint": view_hint, "frames": n, "fps": fps, "spacing_mm": list(spacing),
           "analysed": int(analysed), "published": published, "tracked": len(index_d),
           "peak_gls_truth_pct": float(truth_gls.min()),
           "es_frame_truth": int(np.argmin(truth_gls)),
           "peak_gls_pct": float(np.nanmin(gls)) if published else None,
           "es_frame": int(np.nanargmin(gls)) if published else None,
           "peak_gls_error_pct": None,
           "beat_peak_gls_pct": next((b["peak_gls_pct"] for b in beats
                                      if b.get("peak_gls_pct") is not None), None),
           "beats": beats,
           "centreline_index_mm": float(np.mean(index_d)) if index_d else None,
           "centreline_curve_mm": float(np.mean(curve_d)) if curve_d else None,
           "centreline_index_mm_per_frame": [round(v, 3) for v in index_d],
           "centreline_curve_mm_per_frame": [round(v, 3) for v in curve_d],
           "gls_pct": [None if not np.isfinite(g) else round(float(g), 3) for g in gls],
           "gls_truth_pct": [round(float(g), 3) for g in truth_gls]}
    if errors:
        row["errors"] = errors
    if published:
        row["peak_gls_error_pct"] = row["peak_gls_pct"] - row["peak_gls_truth_pct"]
    if row["beat_peak_gls_pct"] is not None:
        row["beat_peak_gls_error_pct"] = row["beat_peak_gls_pct"] - row["peak_gls_truth_pct"]
    return row


def verdict(row: dict, distance: str = "curve") -> bool:
    """The clip's acceptance: |peak GLS error| <= 2 %-points and mean centreline distance
    (``distance``: curve or index) <= 2 mm; False when either was not measured."""
    err, d = row.get("peak_gls_error_pct"), row.get(f"centreline_{distance}_mm")
    return err is not None and d is not None and abs(err) <= GLS_ERROR_LIMIT_PCT and d <= CENTRELINE_LIMIT_MM


def evaluate(directory, view_hints=(None,), engines=None, distance: str = "curve",
             processor=None, clips=None, out=print) -> dict:
    """Every cached clip of ``directory`` (or ``clips``) through the echo app, once per view
    hint; a report with per-clip rows and the verdict per hint."""
    if processor is None:
        from streamer.apps import AnalysisConfig, EngineConfig, build_analysis
        from streamer.processor import FrameProcessor

        processor = FrameProcessor(build_analysis(AnalysisConfig(
            app="echo", engines=engines if engines is not None else EngineConfig())))
    paths = [Path(p) for p in clips] if clips is not None else cached_clips(directory)
    rows = []
    for path in paths:
        for hint in view_hints:
            t0 = time.perf_counter()
            row = evaluate_clip(processor, path, hint)
            row["runtime_s"] = round(time.perf_counter() - t0, 2)
            row["pass"] = verdict(row, distance)
            rows.append(row)
            if out is not None:
                out(format_row(row))
    summary = {}
    for hint in view_hints:
        mine = [r for r in rows if r["view_hint"] == hint]
        errs = [abs(r["peak_gls_error_pct"]) for r in mine if r["peak_gls_error_pct"] is not None]
        dist = [r[f"centreline_{distance}_mm"] for r in mine if r[f"centreline_{distance}_mm"] is not None]
        summary[hint or "none"] = {
            "clips": len(mine), "passed": sum(r["pass"] for r in mine),
            "peak_gls_abs_error_pct_max": max(errs) if errs else None,
            "centreline_mm_max": max(dist) if dist else None,
            "pass": len(mine) >= MIN_CLIPS and all(r["pass"] for r in mine)}
    return {"directory": str(directory) if directory is not None else None, "distance": distance,
            "limits": {"peak_gls_abs_error_pct": GLS_ERROR_LIMIT_PCT,
                       "centreline_mm": CENTRELINE_LIMIT_MM, "min_clips": MIN_CLIPS},
            "clips": rows, "summary": summary}


def _f(value, fmt: str, width: int) -> str:
    return ("-" if value is None else format(value, fmt)).rjust(width)


TABLE_HEADER = (f"{'clip':<36} {'hint':<4} {'frames':>6} {'anal.':>5} {'GLS':>4} {'peak':>7} "
                f"{'truth':>7} {'error':>6} {'beat':>7} {'cl idx':>6} {'cl crv':>6}  verdict")


def format_row(row: dict) -> str:
    return (f"{row['clip'][:36]:<36} {row['view_hint'] or '-':<4} {row['frames']:>6} "
            f"{row['analysed']:>5} {row['published']:>4} {_f(row['peak_gls_pct'], '.2f', 7)} "
            f"{row['peak_gls_truth_pct']:>7.2f} {_f(row['peak_gls_error_pct'], '+.2f', 6)} "
            f"{_f(row['beat_peak_gls_pct'], '.2f', 7)} {_f(row['centreline_index_mm'], '.2f', 6)} "
            f"{_f(row['centreline_curve_mm'], '.2f', 6)}  {'PASS' if row['pass'] else 'FAIL'}")


def evaluate_main(argv=None) -> int:
    from engines.spec import BACKENDS, PRECISION_CHOICES
    from streamer.apps import EngineConfig, add_weights_argument

    parser = argparse.ArgumentParser(
        prog="physics_sims.py evaluate",
        description="The echo app on the cached physics clips against their truth (issue 12, "
                    "acceptance 2: |peak GLS error| <= 2 %-points and mean centreline distance "
                    "<= 2 mm on each of at least 4 clips).")
    parser.add_argument("--dir", type=Path, default=None,
                        help="folder of the clips (default $CARDIOSTREAM_DATA/physics)")
    parser.add_argument("clips", nargs="*", type=Path,
                        help="clip files to evaluate instead of the folder's (each with its truth beside it)")
    parser.add_argument("--view-hint", choices=("none", "a4c", "both"), default="none",
                        help="view hint sent with every frame: none (the classifier decides, as "
                             "a user replays a clip; default), a4c, or both runs")
    parser.add_argument("--distance", choices=("curve", "index"), default="curve",
                        help="centreline metric of the verdict: curve (symmetric mean distance of "
                             "each curve's points to the other curve; default) or index (point i "
                             "to point i)")
    add_weights_argument(parser)
    parser.add_argument("--backend", default="auto", choices=BACKENDS)
    parser.add_argument("--precision", default="fp32", choices=PRECISION_CHOICES)
    parser.add_argument("--threads", type=int)
    parser.add_argument("--out", type=Path, default=None, help="JSON report (default DIR/evaluate.json)")
    args = parser.parse_args(argv)

    directory = args.dir or default_out()
    clips = args.clips or cached_clips(directory)
    if not clips:
        print(f"no clips with a truth file in {directory}: run python bench/physics_sims.py first",
              file=sys.stderr)
        return 2
    hints = {"none": (None,), "a4c": ("a4c",), "both": (None, "a4c")}[args.view_hint]
    engines = EngineConfig(backend=args.backend, precision=args.precision, threads=args.threads,
                           weights=tuple(args.weights))
    print(f"{len(clips)} clips from {directory if not args.clips else 'the command line'}; verdict: "
          f"|peak GLS error| <= {GLS_ERROR_LIMIT_PCT:g} and centreline ({args.distance}) <= "
          f"{CENTRELINE_LIMIT_MM:g} mm", flush=True)
    print(TABLE_HEADER)
    report = evaluate(directory, hints, engines, args.distance, clips=clips)
    report["command"] = " ".join(["python bench/physics_sims.py evaluate", *(argv or [])])
    report["date_utc"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    report["host"] = platform.node()
    report["weights"] = [list(w) for w in args.weights]
    report["backend"], report["precision"] = args.backend, args.precision
    for hint, s in report["summary"].items():
        print(f"hint {hint}: {s['passed']}/{s['clips']} clips pass (max |GLS error| "
              f"{_f(s['peak_gls_abs_error_pct_max'], '.2f', 0)}, max centreline "
              f"{_f(s['centreline_mm_max'], '.2f', 0)} mm) => "
              f"{'PASS' if s['pass'] else 'FAIL'}" + (f" (fewer than {MIN_CLIPS} clips)"
                                                      if s["clips"] < MIN_CLIPS else ""))
    out = args.out or Path(directory) / "evaluate.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
