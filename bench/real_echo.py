"""Real echo through the whole echo app: pydicom's two apical 4-chamber cines, measured.

The harness for issue 12 ("echo that measures real hearts"). Both cines go frame by frame
through one stream of the echo app (``build_analysis``, the shipped networks on the default
backend), first as they are (the view classifier decides) and then with the view hint
``a4c`` (the operator says the view, as ``cardiostream demo`` does):

* ``examples_ybr_color.dcm`` (pydicom): 30 frames, 240 x 320, about one cycle;
* ``color3d_jpeg_baseline.dcm`` (pydicom-data): 120 frames, 480 x 640, 30 fps, about four
  beats (the 30-frame file is its first 30 frames at half size).

Per run it reports: the share of frames the classifier calls A4C (its answer averaged over
the last second, with the gate's ``--min-view-confidence``); mask continuity (analysed
frames whose mask is one clean wall whose centreline reaches both basal ends); the share of
frames whose strain passed quality control (``measurable``) and so was published; each
closed beat's grade and peak GLS, and the beat-to-beat spread; and how far each beat's
end-systole (the GLS minimum) lies from the end-systole of the LV length curve (the minimum
of the mask centreline's length in that beat, over the frames whose mask is one clean wall:
a broken mask gives no LV length; a three-frame running median takes out single-frame
glitches). There are no annotations: the real clips
judge plausibility and consistency, not accuracy.

Writes into ``docs/img/real_echo/`` (default): ``overlay.png`` (the 30-frame cine, four
frames), ``overlay_beat.jpg`` (the 120-frame cine, eight frames across its first beat),
``gls.png`` (GLS curves, published and unchecked), and ``real_echo.json``.

    python bench/real_echo.py [--out docs/img/real_echo] [--backend auto] [--precision fp32]
        [--weights ROLE=PATH]
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from engines.spec import BACKENDS, PRECISION_CHOICES  # noqa: E402
from streamer.apps.echo import ViewConfig  # noqa: E402

CLIPS = (("examples_ybr_color.dcm", None), ("color3d_jpeg_baseline.dcm", None))
MASK_FLAGS = ("empty_mask", "broken_mask", "two_components", "basal_end_uncertain")


def clip_path(name: str) -> Path:
    from pydicom.data import get_testdata_file

    path = get_testdata_file(name, download=False)
    if path is None:
        raise SystemExit(f"{name} not found: install the test extra (pydicom-data)")
    return Path(path)


def run_clip(analysis, path: Path, view: str | None, first_frame: int = 0):
    """Every frame of the clip (from ``first_frame`` on) through one echo stream: frames,
    outcomes, beat messages."""
    from streamer.io.clips import open_clip
    from streamer.io.protocol import StartMessage
    from streamer.replay import ReplayConfig, clip_messages

    stream = None  # the clip's stream: the echo app's stages with their state
    frames, outcomes, beats = [], [], []
    with open_clip(path) as reader:
        for timed in clip_messages(reader, ReplayConfig(view=view), t0_ns=0):
            message = timed.message
            if isinstance(message, StartMessage):
                stream = analysis.new_stream(analysis.apps["echo"], message.stream)
            elif message.kind == "frame":
                if message.seq < first_frame:
                    continue
                frames.append(np.array(message.pixels))
                outcome = stream(message)
                outcomes.append(outcome)
                # the beat stages, as in the side-car
                for beat in stream.beat_messages(message, outcome):
                    beats.append({"beat": beat.beat, **beat.fields})
    return frames, outcomes, beats


def mask_length_mm(track) -> float:
    """Length of this frame's mask centreline (the LV length curve), NaN without one."""
    from streamer.measure.strain import polyline_length

    if track is None or not np.isfinite(track.measured_points_mm).all():
        return float("nan")
    return float(polyline_length(track.measured_points_mm))


def acquisition_times_s(outcomes) -> np.ndarray:
    """Each analysed frame's acquisition time, s."""
    return np.array([o.values["frame"].t_acq_ns / 1e9 for o in outcomes])


def lv_length_curve(length_mm) -> np.ndarray:
    """The mask centreline lengths, a frame's value replaced by the median of it and its two
    neighbours (NaN ignored): one frame whose mask lost a piece of wall without a flag does
    not become the beat's end-systole."""
    x = np.asarray(length_mm, dtype=np.float64)
    padded = np.concatenate([[np.nan], x, [np.nan]])
    windows = np.stack([padded[:-2], padded[1:-1], padded[2:]])
    out = np.full_like(x, np.nan)
    some = np.isfinite(windows).any(0) & np.isfinite(x)
    out[some] = np.nanmedian(windows[:, some], axis=0)
    return out


def measure(frames, outcomes, beats) -> dict:
    """The run's figures (see the module docstring)."""
    n = len(outcomes)
    values = [o.values for o in outcomes]
    views = [v["view"] for v in values]
    gate = ViewConfig()  # the classifier's rule of the app the bench builds (its defaults)
    a4c = [v["label"] == gate.analysed_view and v["p"] >= gate.min_confidence for v in views]
    tracks = [v.get("track") for v in values]
    analysed = [t is not None for t in tracks]
    continuous = [t is not None and t.valid and not any(f in t.flags for f in MASK_FLAGS)
                  for t in tracks]
    measurable = [v.get("measurable") is True for v in values]
    length = lv_length_curve([mask_length_mm(t) if ok else np.nan for t, ok in zip(tracks, continuous)])
    peaks = [b["peak_gls_pct"] for b in beats if b.get("peak_gls_pct") is not None]
    es_offsets = []
    first = outcomes[0].values["frame"].seq  # frames are indexed from the clip's first seq
    t_s = acquisition_times_s(outcomes)
    for b in beats:   # the beat runs from its ED for duration_s, to the next ED
        ed = b["ed_seq"]
        end = ed + int(np.searchsorted(t_s[ed - first:], t_s[ed - first] + b["duration_s"] - 1e-6))
        window = length[ed - first:end - first]
        if b.get("es_seq") is not None and np.isfinite(window).any():
            es_offsets.append(int(b["es_seq"] - (ed + int(np.nanargmin(window)))))
    return {
        "frames": n,
        "view_a4c_share": sum(a4c) / n,
        "views": {label: sum(v["label"] == label for v in views)
                  for label in sorted({v["label"] for v in views})},
        "analysed_share": sum(analysed) / n,
        "mask_continuity_share": sum(continuous) / max(sum(analysed), 1),
        "measurable_share": sum(measurable) / n,
        "beats": beats,
        "peak_gls_pct": peaks,
        "beat_to_beat_sd_pct": float(np.std(peaks, ddof=1)) if len(peaks) > 1 else None,
        "es_offset_frames": es_offsets,
        "reasons": _reasons(outcomes),
        "track_offset_mm_median": _track_offset(tracks),
    }


def _track_offset(tracks) -> float | None:
    """Median over frames of the mean distance between the tracked centreline and the
    frame's mask centreline, mm (how far tracking strays from the wall the mask shows)."""
    offsets = []
    for t in tracks:
        if t is not None and t.valid:
            d = np.hypot(*(t.points_mm - t.measured_points_mm).T)
            if np.isfinite(d).any():
                offsets.append(float(np.nanmean(d)))
    return float(np.median(offsets)) if offsets else None


def _reasons(outcomes) -> dict[str, int]:
    counts = Counter(flag.split(":", 1)[1] for o in outcomes for flag in o.flags
                     if flag.startswith("not_measurable:"))
    return dict(counts.most_common())


def grid_to_frame_px(points_grid_px: np.ndarray, grid) -> np.ndarray:
    """[row, col] on the segmenter's grid -> [row, col] pixels of the frame (pixel-centre
    aligned, as the resize)."""
    return (points_grid_px - [grid.fit.top, grid.fit.left] + 0.5) / grid.fit.scale - 0.5


def draw_overlay(frame_rgb: np.ndarray, values: dict, t: int) -> np.ndarray:
    img = cv2.cvtColor(np.ascontiguousarray(frame_rgb), cv2.COLOR_RGB2BGR)
    img = cv2.resize(img, None, fx=2, fy=2, interpolation=cv2.INTER_LINEAR)
    grid, mask = values["grid"], values["mask"]
    if mask is not None:
        contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL,
                                       cv2.CHAIN_APPROX_NONE)
        for c in contours:
            pts = grid_to_frame_px(c[:, 0, ::-1].astype(float), grid) * 2
            cv2.polylines(img, [np.round(pts[:, ::-1]).astype(np.int32)], True, (0, 255, 255), 1,
                          cv2.LINE_AA)
    if values["points_mm"] is not None:
        spacing = np.array(grid.spacing_mm) * grid.fit.scale  # mm per frame pixel
        pts = np.asarray(values["points_mm"]) / spacing * 2
        n = len(pts)
        for i, (r, c) in enumerate(pts):
            colour = (int(255 * i / (n - 1)), 60, int(255 * (1 - i / (n - 1))))
            cv2.circle(img, (int(round(c)), int(round(r))), 2, colour, -1, cv2.LINE_AA)
        for k in range(20, n, 20):
            r, c = pts[k]
            cv2.circle(img, (int(round(c)), int(round(r))), 5, (255, 255, 255), 1, cv2.LINE_AA)
    gls = values.get("gls_pct")
    text = f"frame {t}" + (f"  GLS {gls:.1f} %" if gls is not None else "")
    cv2.putText(img, text, (8, 22), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (0, 0, 0), 3, cv2.LINE_AA)
    cv2.putText(img, text, (8, 22), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (255, 255, 255), 1, cv2.LINE_AA)
    return img


def draw_curve(name: str, t_s: np.ndarray, gls: np.ndarray, unchecked: np.ndarray,
               width=720, height=300) -> np.ndarray:
    """GLS against time: published (blue) and before quality control (grey)."""
    img = np.full((height, width, 3), 255, np.uint8)
    left, right, top, bottom = 60, 20, 24, 36
    finite = np.concatenate([gls[np.isfinite(gls)], unchecked[np.isfinite(unchecked)]])
    lo = min(-25.0, float(finite.min()) - 2 if finite.size else -25.0)
    hi = max(5.0, float(finite.max()) + 2 if finite.size else 5.0)  # show an upward drift

    def xy(t, g):
        x = left + (t - t_s[0]) / max(t_s[-1] - t_s[0], 1e-9) * (width - left - right)
        y = top + (hi - g) / (hi - lo) * (height - top - bottom)
        return int(round(x)), int(round(y))

    step = 5 if hi - lo <= 60 else 20
    for g in range(int(np.ceil(lo / step) * step), int(hi) + 1, step):
        cv2.line(img, xy(t_s[0], g), xy(t_s[-1], g), (220, 220, 220), 1)
        cv2.putText(img, f"{g}", (10, xy(t_s[0], g)[1] + 4), cv2.FONT_HERSHEY_SIMPLEX, 0.4,
                    (0, 0, 0), 1, cv2.LINE_AA)
    for curve, colour, thick in ((unchecked, (170, 170, 170), 1), (gls, (200, 60, 0), 2)):
        ok = np.isfinite(curve)
        # one line per run of frames with a value: a gap stays a gap
        runs = np.split(np.arange(len(curve)), np.flatnonzero(np.diff(ok.astype(int))) + 1)
        for run in runs:
            if ok[run[0]]:
                line = np.array([xy(t_s[i], curve[i]) for i in run], np.int32)
                cv2.polylines(img, [line], False, colour, thick, cv2.LINE_AA)
                for p in line:
                    cv2.circle(img, tuple(int(v) for v in p), thick + 1, colour, -1, cv2.LINE_AA)
    cv2.putText(img, f"GLS %, {name} (view hint a4c): published (blue), before quality "
                "control (grey)", (left, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1,
                cv2.LINE_AA)
    cv2.putText(img, f"time 0 .. {t_s[-1] - t_s[0]:.2f} s", (left, height - 12),
                cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
    return img


def main(argv=None) -> int:
    from streamer.apps import AnalysisConfig, EngineConfig, add_weights_argument, build_analysis

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "img" / "real_echo")
    parser.add_argument("--backend", default="auto", choices=BACKENDS)
    parser.add_argument("--precision", default="fp32", choices=PRECISION_CHOICES)
    add_weights_argument(parser)
    args = parser.parse_args(argv)
    analysis = build_analysis(AnalysisConfig(app="echo", engines=EngineConfig(
        backend=args.backend, precision=args.precision, weights=tuple(args.weights))))
    args.out.mkdir(parents=True, exist_ok=True)
    record = {"command": " ".join(["python bench/real_echo.py", *sys.argv[1:]]), "runs": []}
    curves = []
    print(f"{'clip':<28} {'hint':<5} {'A4C':>5} {'mask ok':>8} {'measurable':>10} "
          f"{'beats':>6}  peak GLS per beat (grade)        ES offset")
    for name, _ in CLIPS:
        path = clip_path(name)
        for hint in (None, "a4c"):
            frames, outcomes, beats = run_clip(analysis, path, hint)
            figures = measure(frames, outcomes, beats)
            t_s = acquisition_times_s(outcomes)
            published = np.array([np.nan if o.values.get("gls_pct") is None
                                  else o.values["gls_pct"] for o in outcomes])
            unchecked = np.array([np.nan if o.values.get("gls_unchecked_pct") is None
                                  else o.values["gls_unchecked_pct"] for o in outcomes])
            record["runs"].append({"clip": name, "view_hint": hint, **figures,
                                   "gls_pct": _nan_none(published),
                                   "gls_unchecked_pct": _nan_none(unchecked),
                                   "t_s": t_s.tolist(),
                                   "flags": [o.flags for o in outcomes]})
            peaks = ", ".join(f"{b['peak_gls_pct']:.1f}" if b.get("peak_gls_pct") is not None
                              else f"- ({b['quality']})" for b in beats) or "-"
            print(f"{name:<28} {hint or '-':<5} {figures['view_a4c_share']:5.0%} "
                  f"{figures['mask_continuity_share']:8.0%} {figures['measurable_share']:10.0%} "
                  f"{len(beats):>6}  {peaks:<32} {figures['es_offset_frames']}")
            if hint == "a4c":
                curves.append((name, t_s, published, unchecked))
                if name == "examples_ybr_color.dcm":
                    picks = [0, len(frames) // 3, 2 * len(frames) // 3, len(frames) - 1]
                    tiles = [draw_overlay(frames[t], outcomes[t].values, t) for t in picks]
                    cv2.imwrite(str(args.out / "overlay.png"),
                                np.vstack([np.hstack(tiles[:2]), np.hstack(tiles[2:])]))
                else:  # eight frames across the first beat (about 30 frames at 30 fps)
                    picks = list(range(0, 32, 4))
                    tiles = [cv2.resize(draw_overlay(frames[t], outcomes[t].values, t), None,
                                        fx=0.5, fy=0.5, interpolation=cv2.INTER_AREA)
                             for t in picks]
                    cv2.imwrite(str(args.out / "overlay_beat.jpg"),  # JPEG: a small file
                                np.vstack([np.hstack(tiles[:4]), np.hstack(tiles[4:])]),
                                [cv2.IMWRITE_JPEG_QUALITY, 88])
    cv2.imwrite(str(args.out / "gls.png"), np.vstack([draw_curve(*c) for c in curves]))
    (args.out / "real_echo.json").write_text(json.dumps(record, indent=1))
    print(f"wrote {args.out}")
    return 0


def _nan_none(values: np.ndarray) -> list:
    return [None if not np.isfinite(v) else round(float(v), 3) for v in values]


if __name__ == "__main__":
    sys.exit(main())
