"""Bull's-eye plots (AHA 17-segment layout) of a short-axis stack's beat, from ``analyze``
output: ``cardiostream bullseye ANALYZE.jsonl --out DIR``.

One PNG per ``wall_motion`` message (a stack and beat): on the left the wall-motion score of
each of the 16 segments (colour by class, the score and the class's probability written in
it, grey where the segment was not scored), the motion score index in the title; in the
middle each segment's peak circumferential strain (%), and on the right its infarcted share
(OF-RNN, from motion), each the median over the stack's slices of that level, from the
slices' ``beat`` messages since the stack's previous ``wall_motion``.
Segment 17 (the apex cap) is drawn empty: short-axis slices do not see it.

Layout (Cerqueira et al. 2002): rings basal (1-6, outer), mid (7-12), apical (13-16), apex
(17, centre); anterior at the top, septum on the left, lateral on the right.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from streamer.vocab import AHA_SEGMENTS, WALL_MOTION_CLASSES

#: (inner radius, outer radius, first segment's start angle in degrees, counter-clockwise
#: from the right, width) per ring: segment 1 (basal anterior) spans 60-120 degrees, the
#: numbering goes counter-clockwise (anterior -> anteroseptal on the left -> inferior ...)
RINGS = {"basal": (3.0, 4.0, 60.0, 60.0), "mid": (2.0, 3.0, 60.0, 60.0),
         "apical": (1.0, 2.0, 45.0, 90.0)}
#: colour of each wall-motion class, and of a segment that was not scored
CLASS_COLOURS = {"normal": "#d9f0d3", "hypokinetic": "#fee08b", "akinetic": "#fc8d59",
                 "dyskinetic": "#d73027", None: "#bdbdbd"}


@dataclass
class StackBeat:
    """One stack's beat as ``analyze`` wrote it: its ``wall_motion`` message and the beat
    messages of its slices that came before it."""

    wall_motion: dict
    slice_beats: list[dict] = field(default_factory=list)

    @property
    def name(self) -> str:
        return f"{self.wall_motion['stream']}-beat{self.wall_motion['beat']}"

    def segment_median(self, field_name: str) -> dict[int, float]:
        """Per AHA segment: the median over the slices of a per-segment beat field."""
        values: dict[int, list[float]] = {}
        for beat in self.slice_beats:
            for key, v in (beat.get(field_name) or {}).items():
                if v is not None:
                    values.setdefault(int(key), []).append(float(v))
        return {aha: float(np.median(v)) for aha, v in values.items()}

    def segment_strain_pct(self) -> dict[int, float]:
        """Per AHA segment: the median over the slices of the peak circumferential strain."""
        return self.segment_median("segment_peak_circumferential_strain_pct")

    def segment_infarct_share(self) -> dict[int, float]:
        """Per AHA segment: the median over the slices of the infarcted share."""
        return self.segment_median("infarct_segment_share")


def stack_beats(rows: Iterable[dict]) -> Iterator[StackBeat]:
    """The stack beats of ``analyze`` output rows (JSON headers in file order)."""
    pending: dict[str, list[dict]] = {}
    for row in rows:
        kind, stream = row.get("kind"), row.get("stream", "")
        if kind == "beat" and "/slice-" in stream:
            pending.setdefault(stream.rpartition("/slice-")[0], []).append(row)
        elif kind == "wall_motion":
            yield StackBeat(row, pending.pop(stream, []))


def iter_rows(path: Path) -> Iterator[dict]:
    """The JSON headers of an ``analyze`` output file, a line at a time; a line that is not
    a JSON object is an error naming the line."""
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{n}: not a JSON line ({exc.msg})") from None
            if not isinstance(row, dict):
                raise ValueError(f"{path}:{n}: not a JSON object (a {type(row).__name__})")
            yield row


def read_rows(path: Path) -> list[dict]:
    """All the JSON headers of an ``analyze`` output file (:func:`iter_rows`)."""
    return list(iter_rows(path))


def _wedges(ax, colours: dict[int, str], texts: dict[int, str]) -> None:
    from matplotlib.patches import Circle, Wedge

    for level, (r0, r1, start, width) in RINGS.items():
        for k, aha in enumerate(AHA_SEGMENTS[level]):
            a0 = start + k * width
            ax.add_patch(Wedge((0, 0), r1, a0, a0 + width, width=r1 - r0,
                               facecolor=colours.get(aha, CLASS_COLOURS[None]),
                               edgecolor="black", linewidth=1.0))
            mid = np.radians(a0 + width / 2)
            r = (r0 + r1) / 2
            ax.text(r * np.cos(mid), r * np.sin(mid), f"{aha}\n{texts.get(aha, '-')}",
                    ha="center", va="center", fontsize=7)
    ax.add_patch(Circle((0, 0), 1.0, facecolor="white", edgecolor="black", linewidth=1.0))
    ax.text(0, 0, "17", ha="center", va="center", fontsize=7, color="grey")
    ax.set_xlim(-4.3, 4.3)
    ax.set_ylim(-4.3, 4.3)
    ax.set_aspect("equal")
    ax.axis("off")
    for label, (x, y) in (("anterior", (0, 4.15)), ("inferior", (0, -4.2)),
                          ("septal", (-4.25, 0)), ("lateral", (4.25, 0))):
        ax.text(x, y, label, ha="center", va="center", fontsize=7, color="dimgrey",
                rotation=90 if label in ("septal", "lateral") else 0)


def figure(beat: StackBeat):
    """The bull's-eye figure of one stack beat (module docstring): a matplotlib Figure, which
    the caller saves and closes."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import cm, colormaps, colors
    from matplotlib import pyplot as plt

    wm = beat.wall_motion
    segments = {s["aha"]: s for s in wm.get("segments", [])}
    fig, (left, right, third) = plt.subplots(1, 3, figsize=(13.5, 4.6))
    score_colours = {aha: CLASS_COLOURS[s.get("label")] for aha, s in segments.items()}
    score_texts = {aha: (f"{s['score']} ({max(s['p']):.2f})" if s.get("score") else "-")
                   for aha, s in segments.items()}
    _wedges(left, score_colours, score_texts)
    msi = wm.get("msi")
    left.set_title(f"wall motion: MSI {msi:.2f}" if msi is not None else
                   "wall motion: nothing scored", fontsize=9)
    handles = [plt.Rectangle((0, 0), 1, 1, facecolor=CLASS_COLOURS[c], edgecolor="black")
               for c in (*WALL_MOTION_CLASSES, None)]
    left.legend(handles, [f"{i + 1} {c}" for i, c in enumerate(WALL_MOTION_CLASSES)]
                + ["not scored"], loc="lower left", fontsize=6, frameon=False,
                bbox_to_anchor=(-0.05, -0.08))
    strain = beat.segment_strain_pct()
    norm = colors.Normalize(vmin=-30.0, vmax=0.0)
    cmap = colormaps["RdYlBu"]
    _wedges(right, {aha: colors.to_hex(cmap(norm(v))) for aha, v in strain.items()},
            {aha: f"{v:.1f}" for aha, v in strain.items()})
    right.set_title("peak circumferential strain, %", fontsize=9)
    fig.colorbar(cm.ScalarMappable(norm=norm, cmap=cmap), ax=right, fraction=0.04, pad=0.02)
    share = beat.segment_infarct_share()
    share_norm, share_cmap = colors.Normalize(vmin=0.0, vmax=1.0), colormaps["Reds"]
    _wedges(third, {aha: colors.to_hex(share_cmap(share_norm(v))) for aha, v in share.items()},
            {aha: f"{100 * v:.0f} %" for aha, v in share.items()})
    third.set_title("infarct share (from motion)" if share else "infarct share: not mapped",
                    fontsize=9)
    fig.colorbar(cm.ScalarMappable(norm=share_norm, cmap=share_cmap), ax=third, fraction=0.04,
                 pad=0.02)
    fig.suptitle(f"{wm['stream']}, stack beat {wm['beat']} ({wm.get('frames')} frames; "
                 f"scores learnt on {str(wm.get('trained_on', '?')).split(' (')[0]})",
                 fontsize=9)
    return fig


def draw(beat: StackBeat, path: Path) -> Path:
    """The bull's-eye PNG of one stack beat."""
    from matplotlib import pyplot as plt

    fig = figure(beat)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def write_bullseyes(analysis_jsonl: Path, out_dir: Path) -> list[Path]:
    """A PNG per stack beat of an ``analyze`` output file, into ``out_dir``; ValueError when
    the file holds no wall_motion message."""
    beats = list(stack_beats(read_rows(analysis_jsonl)))
    if not beats:
        raise ValueError(f"{analysis_jsonl}: no wall_motion message (analyze a short-axis "
                         "stack with the mr-sax app and --wall-motion on)")
    safe = str.maketrans({c: "_" for c in "/\\:"})
    return [draw(b, out_dir / f"{b.name.translate(safe)}.png") for b in beats]
