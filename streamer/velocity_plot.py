"""Velocity curves of velocity-mapping cycles, from ``analyze`` output:
``cardiostream velocity-plot ANALYZE.jsonl --out DIR``.

One PNG per measured cycle (a ``beat`` of the ``mr-velocity`` app): the global radial
(positive inwards), circumferential (positive counter-clockwise from the apex) and
longitudinal (positive towards the apex) velocity over the cycle, cm/s, with end-systole
marked and the systolic, early- and late-diastolic peaks written in; beneath, where the
slice's level was known, each AHA segment's radial and longitudinal curves.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from streamer.bullseye import read_rows

CURVES = ("radial", "circumferential", "longitudinal")
PHASES = ("systolic", "early_diastolic", "late_diastolic")


def velocity_beats(rows) -> list[dict]:
    """The measured cycles' beat messages of an ``analyze`` output (those with curves)."""
    return [r for r in rows if r.get("kind") == "beat"
            and r.get("radial_velocity_cm_s") is not None]


def figure(beat: dict):
    """The velocity curves of one measured cycle: a matplotlib Figure, which the caller saves
    and closes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    segments = beat.get("segment_velocity_cm_s") or {}
    fig, axes = plt.subplots(2 if segments else 1, 3, figsize=(13, 6.4 if segments else 3.4),
                             squeeze=False)
    n = len(beat["radial_velocity_cm_s"])
    x = np.arange(n)
    es = beat.get("es_frame")
    for ax, name in zip(axes[0], CURVES):
        ax.plot(x, beat[f"{name}_velocity_cm_s"], "k.-", lw=1.2, ms=3)
        ax.axhline(0, color="0.75", lw=0.6)
        if es is not None:
            ax.axvline(es, color="C3", lw=0.8, ls="--")
        s, e, a = (beat.get(f"peak_{p}_{name}_velocity_cm_s") for p in PHASES)
        ax.set_title(f"{name}, cm/s\npeaks: systolic {s}, early diastolic {e}, late "
                     f"diastolic {a}", fontsize=9)
        ax.set_xlabel("frame of the cycle (ES dashed)")
    if segments:
        for ax, name in zip(axes[1], CURVES):
            for aha, curves in sorted(segments.items(), key=lambda kv: int(kv[0])):
                ax.plot(x, curves[name], lw=1, label=aha)
            ax.axhline(0, color="0.75", lw=0.6)
            ax.set_title(f"{name} per AHA segment, cm/s", fontsize=9)
        axes[1][0].legend(fontsize=7, ncol=3, frameon=False)
    fig.suptitle(f"{beat['stream']}: cycle {beat['beat']} ({beat.get('aha_level') or 'level unknown'}"
                 f", {n} frames, {beat.get('velocity_status')})", fontsize=10)
    fig.tight_layout()
    return fig


def draw(beat: dict, path: Path) -> Path:
    """The PNG of one measured cycle's velocity curves."""
    import matplotlib.pyplot as plt

    fig = figure(beat)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def write_velocity_plots(analysis_jsonl: Path, out_dir: Path) -> list[Path]:
    """A PNG per measured cycle of an ``analyze`` output file, into ``out_dir``; ValueError
    when the file holds none."""
    beats = velocity_beats(read_rows(analysis_jsonl))
    if not beats:
        raise ValueError(f"{analysis_jsonl}: no measured velocity-mapping cycle (analyze a "
                         "velocity-mapping clip: the mr-velocity app)")
    safe = str.maketrans({c: "_" for c in "/\\:"})
    return [draw(b, Path(out_dir) / f"{b['stream'].translate(safe)}-cycle-{b['beat']}.png")
            for b in beats]
