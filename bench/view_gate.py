"""The echo app's view gate, rule by rule: which frames would each rule let through?

The view network alone (shipped weights, or ``--weights view=PATH``) gives every frame's
class probabilities; each gate rule is then replayed over them as the app's ``ClassifyView``
would apply it on a live stream (the answers of the last ``--window-s`` seconds):

* ``mean>=P``: the averaged probabilities' arg-max is A4C and its A4C probability >= P (the
  app's rule, ``--min-view-confidence P``), for P in ``--thresholds``;
* ``vote``: at least half of the window's frames are A4C by their own arg-max.

Data: pydicom's two real A4C cines (``bench/real_echo.py``), the non-cardiac files and noise
clips of ``bench/noncardiac_echo.py``, and random-appearance phantoms of every view (``test``
split, ``--phantoms`` clips per view of ``--phantom-frames`` frames). A good rule passes the
real A4C frames and stops everything else.

    python bench/view_gate.py [--out bench/results/view_gate.json] [--phantoms 5]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from noncardiac_echo import CASES, noise_clip, pydicom_file, read_clip  # noqa: E402
from real_echo import CLIPS, clip_path  # noqa: E402

from calib.datasets import random_echo_config, split_seeds  # noqa: E402
from calib.echo import make_echo_clip  # noqa: E402
from engines.spec import fit_to_input, grey_plane, unit_range  # noqa: E402
from streamer.apps import add_weights_argument  # noqa: E402
from streamer.vocab import VIEW_CLASSES  # noqa: E402

A4C = VIEW_CLASSES.index("a4c")


def probabilities(engine, frames) -> np.ndarray:
    """(frames, classes): the view network's softmax, each frame preprocessed as the app does."""
    out = []
    for frame in frames:
        x, _ = fit_to_input(unit_range(grey_plane(np.asarray(frame))), engine.spec.size)
        logits = engine(x[None, None])[0].astype(np.float64)
        e = np.exp(logits - logits.max())
        out.append(e / e.sum())
    return np.array(out)


def passed(p: np.ndarray, fps: float, rule: str, window_s: float) -> np.ndarray:
    """Per frame: does the rule let it through, given the answers of the last window?"""
    w = max(1, int(round(fps * window_s)))
    out = []
    for i in range(len(p)):
        win = p[max(0, i - w + 1):i + 1]
        if rule == "vote":
            out.append((win.argmax(1) == A4C).mean() >= 0.5)
        else:
            mean = win.mean(0)
            out.append(mean.argmax() == A4C and mean[A4C] >= float(rule.split(">=")[1]))
    return np.array(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--thresholds", default="0.7,0.5", help="mean-probability gates to compare")
    ap.add_argument("--window-s", type=float, default=1.0)
    ap.add_argument("--phantoms", type=int, default=5, help="phantom clips per view")
    ap.add_argument("--phantom-frames", type=int, default=30)
    ap.add_argument("--threads", type=int, default=1)
    add_weights_argument(ap)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "view_gate.json")
    args = ap.parse_args(argv)
    from engines.backends import create_engine

    weights = dict(args.weights).get("view")
    engine = create_engine("view", weights=weights, threads=args.threads)
    rules = [f"mean>={t}" for t in args.thresholds.split(",")] + ["vote"]
    groups: dict[str, list[tuple[np.ndarray, float]]] = {}
    for name, _ in CLIPS:
        frames, _, fps = read_clip(clip_path(name))
        groups.setdefault(f"real a4c: {name}", []).append((probabilities(engine, frames), fps or 30.0))
    for case in CASES:
        if not case.judged:
            continue
        if case.noise:
            frames, fps = noise_clip(case.noise), 30.0
        else:
            frames, _, fps = read_clip(pydicom_file(case.name))
        groups.setdefault("non-cardiac and noise", []).append(
            (probabilities(engine, frames), fps or 30.0))
    seeds = iter(split_seeds("test", args.phantoms * len(VIEW_CLASSES)))
    for view in VIEW_CLASSES:
        if view == "unknown":
            continue
        for _ in range(args.phantoms):
            clip = make_echo_clip(random_echo_config(int(next(seeds)), view=view,
                                                     frames=args.phantom_frames,
                                                     appearance="random"))
            groups.setdefault(f"phantoms {view}", []).append(
                (probabilities(engine, clip.frames), float(clip.fps)))
    rows = {}
    print(f"{'data':48s} {'frames':>6s} " + " ".join(f"{r:>10s}" for r in rules) + f" {'argmax':>7s}")
    for name, clips in groups.items():
        n = sum(len(p) for p, _ in clips)
        shares = {r: float(sum(passed(p, fps, r, args.window_s).sum() for p, fps in clips) / n)
                  for r in rules}
        argmax = float(sum((p.argmax(1) == A4C).sum() for p, _ in clips) / n)
        rows[name] = {"frames": n, "passed": shares, "argmax_a4c": argmax}
        print(f"{name[:48]:48s} {n:6d} " + " ".join(f"{shares[r]:10.0%}" for r in rules)
              + f" {argmax:7.0%}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"command": " ".join(sys.argv), "rules": rules,
                                    "window_s": args.window_s, "groups": rows}, indent=1))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
