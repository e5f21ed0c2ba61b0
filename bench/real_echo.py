"""The real pydicom A4C cine through the whole echo app: a picture and the GLS curve.

pydicom's ``examples_ybr_color.dcm`` (30 frames, 240 x 320, about one cardiac cycle) goes
frame by frame through one stream of the echo app (``build_analysis``, the shipped networks
on the default backend). The view classifier, trained on phantoms only, does not call this clip A4C, so
the frames are sent with the view hint ``a4c`` (as ``cardiostream demo`` does): the
classifier's own answer is kept in the JSON.

Writes into ``docs/img/real_echo/`` (default):

* ``overlay.png``: four frames with the segmented myocardium (contour) and the tracked
  centreline (basal septum red -> apex -> basal lateral blue, segment borders marked);
* ``gls.png``: the GLS curve, % against time;
* ``real_echo.json``: per-frame GLS, regional strain, view answers and stage latencies.

    python bench/real_echo.py [--out docs/img/real_echo] [--backend auto]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from engines.spec import BACKENDS  # noqa: E402


def run_clip(backend: str):
    from pydicom.data import get_testdata_file

    from streamer.apps import AnalysisConfig, EngineConfig, build_analysis
    from streamer.io.clips import open_clip
    from streamer.io.protocol import StartMessage
    from streamer.replay import ReplayConfig, clip_messages

    path = Path(get_testdata_file("examples_ybr_color.dcm"))
    analysis = build_analysis(AnalysisConfig(app="echo", engines=EngineConfig(backend=backend)))
    stream = None  # the clip's stream: the echo app's stages with their state
    frames, outcomes = [], []
    with open_clip(path) as reader:
        for timed in clip_messages(reader, ReplayConfig(view="a4c"), t0_ns=0):
            message = timed.message
            if isinstance(message, StartMessage):
                stream = analysis.new_stream(analysis.apps["echo"], message.stream)
            elif message.kind == "frame":
                frames.append(np.array(message.pixels))
                outcome = stream(message)
                stream.beat(message, outcome)  # keeps the beat buffer as the side-car does
                outcomes.append(outcome)
    return path, frames, outcomes


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


def draw_curve(t_s: np.ndarray, gls: np.ndarray, width=640, height=320) -> np.ndarray:
    img = np.full((height, width, 3), 255, np.uint8)
    left, right, top, bottom = 60, 20, 20, 40
    lo = min(-25.0, np.nanmin(gls) - 2)
    hi = max(5.0, np.nanmax(gls) + 2)  # a curve that drifts upward must show it

    def xy(t, g):
        x = left + (t - t_s[0]) / max(t_s[-1] - t_s[0], 1e-9) * (width - left - right)
        y = top + (hi - g) / (hi - lo) * (height - top - bottom)
        return int(round(x)), int(round(y))

    step = 5 if hi - lo <= 60 else 10
    for g in range(int(np.ceil(lo / step) * step), int(hi) + 1, step):
        cv2.line(img, xy(t_s[0], g), xy(t_s[-1], g), (220, 220, 220), 1)
        cv2.putText(img, f"{g}", (10, xy(t_s[0], g)[1] + 4), cv2.FONT_HERSHEY_SIMPLEX, 0.4,
                    (0, 0, 0), 1, cv2.LINE_AA)
    ok = np.isfinite(gls)
    pts = [xy(t, g) for t, g in zip(t_s[ok], gls[ok])]
    # one line per run of frames with strain: a gap (no centreline) stays a gap
    runs = np.split(np.arange(len(gls)), np.flatnonzero(np.diff(ok.astype(int))) + 1)
    for run in runs:
        if ok[run[0]]:
            line = np.array([xy(t_s[i], gls[i]) for i in run], np.int32)
            cv2.polylines(img, [line], False, (200, 60, 0), 2, cv2.LINE_AA)
    for p in pts:
        cv2.circle(img, p, 3, (200, 60, 0), -1, cv2.LINE_AA)
    cv2.putText(img, "GLS %  (pydicom examples_ybr_color.dcm, real A4C)", (left, 14),
                cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
    cv2.putText(img, f"time 0 .. {t_s[-1] - t_s[0]:.2f} s", (left, height - 12),
                cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
    return img


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "img" / "real_echo")
    parser.add_argument("--backend", default="auto", choices=BACKENDS)
    args = parser.parse_args(argv)
    path, frames, outcomes = run_clip(args.backend)
    args.out.mkdir(parents=True, exist_ok=True)
    gls = np.array([o.values["gls_pct"] if o.values["gls_pct"] is not None else np.nan
                    for o in outcomes])
    t_s = np.array([o.values["frame"].t_acq_ns / 1e9 for o in outcomes])
    picks = [0, len(frames) // 3, int(np.nanargmin(gls)), len(frames) - 1]
    tiles = [draw_overlay(frames[t], outcomes[t].values, t) for t in picks]
    cv2.imwrite(str(args.out / "overlay.png"), np.vstack([np.hstack(tiles[:2]), np.hstack(tiles[2:])]))
    cv2.imwrite(str(args.out / "gls.png"), draw_curve(t_s, gls))
    record = {
        "clip": path.name, "command": " ".join(["bench/real_echo.py", *sys.argv[1:]]),
        "frames": [{"seq": o.values["frame"].seq, "t_s": float(t), "view": o.values["view"],
                    "gls_pct": o.values["gls_pct"], "regional_pct": o.values["regional_pct"],
                    "flags": o.flags, "latency_ms": o.latency_ms}
                   for o, t in zip(outcomes, t_s)],
        "peak_gls_pct": float(np.nanmin(gls)), "peak_frame": int(np.nanargmin(gls)),
    }
    (args.out / "real_echo.json").write_text(json.dumps(record, indent=1))
    views = [o.values["view"]["label"] for o in outcomes]
    print(f"{path.name}: {len(frames)} frames; classifier said "
          f"{ {v: views.count(v) for v in set(views)} }; peak GLS {record['peak_gls_pct']:.1f} % "
          f"at frame {record['peak_frame']}; wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
