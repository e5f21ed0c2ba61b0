"""One self-contained HTML report of recorded analyses:
``cardiostream report RESULTS.jsonl [--clip CLIP] [--masks MASKS.npz] --out report.html``.

What a reader of EchoPAC, TomTec or cvi42 expects, in one file that needs no network to view
(no CDN, no script of ours: the page is plain HTML and inline SVG):

- **provenance**: the cardiostream version, each app's networks (backend, number format,
  device, weights file and sha256), the results file's name and sha256, the clips' metadata
  (what ``analyze`` and ``replay`` put in ``start``; a ``source`` path, kept only with
  ``--keep-identifiers``, is left out);
- per **echo** stream: the clip as a WebM video (VP8, at most ``max_video_frames`` frames,
  ``video_width_px`` wide) with the tracked centreline drawn in its six segments' colours and
  the frame's GLS; the GLS and regional strain curves over time with each beat's end-diastole
  and end-systole; the per-beat table (peak GLS, regional peaks, quality); flags and drops over
  time;
- per **MR short-axis stack**: the slices side by side as one video over the phases, with the
  tracked endo- and epicardium and, with ``--masks`` (``analyze --masks-out``), the label map;
  each slice's circumferential and radial strain over the phases; the per-slice beat table
  (areas, strains, infarct), the stack's volumes and EF, and per stack beat the wall-motion
  scores, MSI and the bull's-eye plots;
- per **velocity-mapping** clip: its magnitude as a video (with ``--masks``, the 3D-EAR
  myocardium on it), and per cycle the velocity curves and the nine peaks.

The curves' numbers travel with the page as JSON (``<script type="application/json"
id="cardiostream-data">``: per stream its frames' ``seq``, ``t_s`` and plotted values), and
each beat table cell carries the beat message's value in ``data-value``, so what the page
shows can be checked against the results file (tests/test_report.py does).
"""

from __future__ import annotations

import base64
import contextlib
import datetime as _dt
import hashlib
import html
import io
import json
import os
import sys
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from streamer import __version__
from streamer.bullseye import StackBeat, read_rows, stack_beats
from streamer.overlay import SEGMENT_RGB, draw_overlay, hex_colour
from streamer.vocab import A4C_SEGMENTS

#: the six A4C segments' colours in the plots: the overlay's
SEGMENT_HEX = tuple(hex_colour(rgb) for rgb in SEGMENT_RGB)
#: MR labels drawn on the video: 1 LV cavity, 2 LV myocardium, 3 RV cavity (BGR)
LABEL_BGR = {1: (60, 60, 230), 2: (60, 200, 60), 3: (230, 120, 40)}
#: keys of a start's meta that may identify a patient or a site and stay out of the report
IDENTIFYING_META = ("source", "path", "patient_name", "patient_id")
#: beat table columns per app: (field, heading)
BEAT_COLUMNS = {
    "echo": [("ed_seq", "ED frame"), ("es_seq", "ES frame"), ("duration_s", "duration, s"),
             ("peak_gls_pct", "peak GLS, %"),
             *((f"regional_peak_pct.{s}", s.replace("_", " ") + ", %") for s in A4C_SEGMENTS),
             ("quality", "quality"), ("measurable_fraction", "measurable")],
    "mr-sax": [("aha_level", "level"), ("ed_seq", "ED phase"), ("es_seq", "ES phase"),
               ("ed_cavity_area_mm2", "ED cavity, mm²"), ("es_cavity_area_mm2", "ES cavity, mm²"),
               ("fractional_area_change_pct", "FAC, %"),
               ("peak_circumferential_strain_pct", "peak circ. strain, %"),
               ("peak_radial_strain_pct", "peak radial strain, %"),
               ("infarct_area_mm2", "infarct, mm²"), ("quality", "quality")],
    "mr-velocity": [("aha_level", "level"), ("frames", "frames"), ("es_frame", "ES frame"),
                    *((f"peak_{p}_{c}_velocity_cm_s", f"{p.replace('_', ' ')} {c}, cm/s")
                      for p in ("systolic", "early_diastolic", "late_diastolic")
                      for c in ("radial", "circumferential", "longitudinal")),
                    ("velocity_status", "status"), ("quality", "quality")],
}
#: the stack's volumes (the beat of the slice that completed the stack)
STACK_COLUMNS = [("edv_ml", "EDV, ml"), ("esv_ml", "ESV, ml"), ("sv_ml", "SV, ml"),
                 ("ef_pct", "EF, %"), ("mass_g", "mass, g"), ("covers_lv", "covers the LV"),
                 ("phases_missing", "phases missing")]


class ReportError(ValueError):
    """The results file (or the clip beside it) cannot make a report; the message says why."""


@dataclass(frozen=True)
class ReportConfig:
    """What ``cardiostream report`` takes."""

    #: the results file (JSON lines of ``analyze``, or of ``record`` turned into them)
    results: Path
    #: the HTML file to write
    out: Path
    #: the clip (or stack) the results are of, for the video; None: no video
    clip: Path | None = None
    #: ``analyze --masks-out`` file of that clip or stack: label maps on the MR video
    masks: Path | None = None
    #: the video holds at most this many frames (phases of a stack) from the first
    max_video_frames: int = 300
    #: the video's width in pixels (a stack's slices share it)
    video_width_px: int = 480

    def __post_init__(self) -> None:
        if self.max_video_frames < 1:
            raise ValueError("max_video_frames must be at least 1")
        if not 64 <= self.video_width_px <= 2048:
            raise ValueError("video_width_px must be 64..2048")


@dataclass
class StreamRecord:
    """One stream's messages in a results file."""

    name: str
    start: dict | None = None
    results: list[dict] = field(default_factory=list)
    errors: list[dict] = field(default_factory=list)
    beats: list[dict] = field(default_factory=list)
    end: dict | None = None

    @property
    def meta(self) -> dict:
        return (self.start or {}).get("meta") or {}

    @property
    def app(self) -> str | None:
        declared = (self.meta.get("app") or {}).get("name")
        return declared or next((r.get("app") for r in self.results if r.get("app")), None)

    @property
    def stack(self) -> str | None:
        """The stack a slice stream belongs to (``NAME`` of ``NAME/slice-K``), else None."""
        return self.name.rpartition("/slice-")[0] if "/slice-" in self.name else None

    @property
    def slice_index(self) -> int | None:
        return int(self.name.rpartition("/slice-")[2]) if self.stack else None


def group_streams(rows: Iterable[dict]) -> dict[str, StreamRecord]:
    """The results file's messages by stream, in order of first appearance; results sorted
    by ``seq``."""
    streams: dict[str, StreamRecord] = {}
    for row in rows:
        kind, name = row.get("kind"), row.get("stream")
        if name is None or kind not in ("start", "result", "error", "beat", "end"):
            continue
        record = streams.setdefault(name, StreamRecord(name))
        if kind == "start":
            record.start = row
        elif kind == "end":
            record.end = row
        elif kind == "result":
            record.results.append(row)
        elif kind == "error":
            record.errors.append(row)
        else:
            record.beats.append(row)
    for record in streams.values():
        record.results.sort(key=lambda r: r.get("seq", 0))
    return streams


# --------------------------------------------------------------------------
# small pieces


def field_value(message: dict, dotted: str):
    """``message[a][b]`` for ``"a.b"``; None where a step is missing."""
    value = message
    for key in dotted.split("."):
        value = value.get(key) if isinstance(value, dict) else None
    return value


def format_value(value) -> str:
    """How a table shows a value: '–' for none, yes/no, integers as they are, numbers to
    one decimal (two under 10)."""
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return f"{value:.1f}" if abs(value) >= 10 else f"{value:.2f}"
    return str(value)


def _esc(text) -> str:
    return html.escape(str(text), quote=True)


def _table(columns: list[tuple[str, str]], rows: list[tuple[str, dict]], css: str,
           stream: str) -> str:
    """An HTML table: one row per (first cell, message), the row's ``data-stream`` and
    ``data-beat`` the message's; each cell's ``data-field`` names the message field and
    ``data-value`` holds its value as JSON."""
    head = "".join(f"<th>{_esc(h)}</th>" for _, h in columns)
    body = []
    for label, message in rows:
        cells = "".join(
            f'<td data-field="{_esc(f)}" data-value="{_esc(json.dumps(field_value(message, f)))}">'
            f"{_esc(format_value(field_value(message, f)))}</td>" for f, _ in columns)
        body.append(f'<tr data-stream="{_esc(message.get("stream", stream))}" '
                    f'data-beat="{_esc(message.get("beat"))}"><th>{_esc(label)}</th>{cells}</tr>')
    return (f'<table class="{css}" data-stream="{_esc(stream)}"><tr><th></th>{head}</tr>'
            + "".join(body) + "</table>")


def _svg(fig) -> str:
    """A matplotlib figure as inline SVG (the figure is closed)."""
    from matplotlib import pyplot as plt

    buffer = io.StringIO()
    fig.savefig(buffer, format="svg", bbox_inches="tight")
    plt.close(fig)
    text = buffer.getvalue()
    return text[text.index("<svg"):]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    return plt


def _t_s(results: list[dict]) -> list[float]:
    """Each result's acquisition time, s after the stream's first."""
    if not results:
        return []
    t0 = results[0].get("t_acq_ns") or 0
    return [round(((r.get("t_acq_ns") or t0) - t0) / 1e9, 6) for r in results]


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# --------------------------------------------------------------------------
# video


def display_uint8(frames: np.ndarray) -> np.ndarray:
    """Frames (t, rows, cols[, 3]) as uint8 for display: uint8 as it is, anything else scaled
    so its 99.5th percentile is white (non-finite pixels black)."""
    if frames.dtype == np.uint8:
        return frames
    f = np.nan_to_num(frames.astype(np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    lo, hi = float(np.percentile(f, 0.5)), float(np.percentile(f, 99.5))
    return np.clip((f - lo) * (255.0 / max(hi - lo, 1e-6)), 0, 255).astype(np.uint8)


def write_webm(frames_bgr: list[np.ndarray], fps: float) -> bytes:
    """BGR uint8 frames (all one size) as a WebM (VP8) file's bytes."""
    import cv2

    if not frames_bgr:
        raise ReportError("no frames for the video")
    rows, cols = frames_bgr[0].shape[:2]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "clip.webm"
        with _quiet_stderr():   # FFmpeg's note that WebM stores VP8 without OpenCV's tag
            writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"VP80"),
                                     float(min(max(fps, 1.0), 60.0)), (cols, rows))
        if not writer.isOpened():
            raise ReportError("this OpenCV cannot write WebM (VP8) video")
        for frame in frames_bgr:
            writer.write(frame)
        writer.release()
        return path.read_bytes()


@contextlib.contextmanager
def _quiet_stderr():
    """File descriptor 2 to /dev/null for the block (OpenCV's FFmpeg writes there itself)."""
    sys.stderr.flush()
    saved, null = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(null, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(null)


def _to_bgr(frame: np.ndarray) -> np.ndarray:
    import cv2

    if frame.ndim == 2:
        return cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR)
    return cv2.cvtColor(frame, cv2.COLOR_RGB2BGR)


def _resize(image: np.ndarray, scale: float) -> np.ndarray:
    """``image`` scaled by ``scale`` to whole, even sides (what the video encoder takes)."""
    import cv2

    rows, cols = image.shape[:2]
    size = (2 * max(1, round(cols * scale / 2)), 2 * max(1, round(rows * scale / 2)))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA)


def _echo_frame(image: np.ndarray, result: dict | None, spacing_mm, scale: float) -> np.ndarray:
    """One echo video frame: the image with the centreline in its segments' colours and the
    frame's GLS (or why there is none)."""
    import cv2

    out = _resize(_to_bgr(image), scale)
    if result is None:
        text = "no result"
    else:
        if spacing_mm:
            draw_overlay(out, result, spacing_mm, _scales(image, out))
        gls = result.get("gls_pct")
        text = (f"#{result.get('seq')}  GLS {gls:.1f} %" if gls is not None else
                f"#{result.get('seq')}  " + (", ".join(result.get("flags") or []) or "no strain"))
    cv2.putText(out, text[:60], (6, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 255, 255), 1,
                cv2.LINE_AA)
    return out


def _scales(image: np.ndarray, resized: np.ndarray) -> tuple[float, float]:
    return resized.shape[0] / image.shape[0], resized.shape[1] / image.shape[1]


def _mr_frame(image: np.ndarray, result: dict | None, labels: np.ndarray | None, spacing_mm,
              scale: float, title: str) -> np.ndarray:
    """One slice of an MR video frame: the image, the label map (if any) blended in, the
    tracked endo- and epicardium."""
    import cv2

    out = _to_bgr(image)
    if labels is not None and labels.shape == image.shape[:2]:
        tint = out.copy()
        for value, colour in LABEL_BGR.items():
            tint[labels == value] = colour
        out = cv2.addWeighted(out, 0.65, tint, 0.35, 0)
    out = _resize(out, scale)
    if result is not None and spacing_mm:
        draw_overlay(out, result, spacing_mm, _scales(image, out))
    cv2.putText(out, title, (4, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (255, 255, 255), 1,
                cv2.LINE_AA)
    return out


def _read_frames(clip, limit: int) -> list[np.ndarray]:
    frames = []
    with clip:
        for frame in clip:
            pixels = frame.pixels
            if clip.info.channels:          # velocity mapping: the magnitude
                pixels = pixels[..., 0]
            frames.append(pixels)
            if len(frames) >= limit:
                break
    return frames


def _html_video(data: bytes, n_frames: int, caption: str) -> str:
    b64 = base64.b64encode(data).decode("ascii")
    return (f'<figure><video class="clip" controls loop muted autoplay playsinline '
            f'data-frames="{n_frames}" src="data:video/webm;base64,{b64}"></video>'
            f"<figcaption>{_esc(caption)}</figcaption></figure>")


# --------------------------------------------------------------------------
# sections


def _echo_curves(record: StreamRecord, t_s: list[float]) -> str:
    plt = _pyplot()
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(10, 6.2), sharex=True,
                                      gridspec_kw={"height_ratios": [3, 1.3]})
    gls = [r.get("gls_pct") for r in record.results]
    top.plot(t_s, [np.nan if v is None else v for v in gls], "k-", lw=2, label="GLS")
    for k, segment in enumerate(A4C_SEGMENTS):
        values = [(r.get("regional_pct") or {}).get(segment) for r in record.results]
        top.plot(t_s, [np.nan if v is None else v for v in values], lw=1,
                 color=SEGMENT_HEX[k], label=segment.replace("_", " "))
    by_seq = {r.get("seq"): t for r, t in zip(record.results, t_s)}
    for beat in record.beats:
        for key, style in (("ed_seq", "-"), ("es_seq", "--")):
            if beat.get(key) in by_seq:
                top.axvline(by_seq[beat[key]], color="0.5", lw=0.8, ls=style)
    top.axhline(0, color="0.8", lw=0.6)
    top.set_ylabel("strain, %")
    top.legend(fontsize=7, ncol=4, frameon=False, loc="lower left")
    top.set_title("GLS and regional longitudinal strain (ED solid, ES dashed)", fontsize=9)
    _flags_strip(bottom, record, t_s)
    bottom.set_xlabel("time, s")
    return _svg(fig)


def _flags_strip(ax, record: StreamRecord, t_s: list[float]) -> None:
    """Flags (their name before ':') as rows of marks over time, drops as a bar."""
    names: dict[str, list[float]] = {}
    for r, t in zip(record.results, t_s):
        for flag in r.get("flags") or []:
            names.setdefault(flag.split(":")[0], []).append(t)
    ordered = sorted(names, key=lambda n: -len(names[n]))[:8]
    for y, name in enumerate(ordered):
        ax.plot(names[name], [y] * len(names[name]), "|", ms=8, color="C3")
    dropped = [(t, r.get("dropped") or 0) for r, t in zip(record.results, t_s) if r.get("dropped")]
    if dropped:
        y = len(ordered)
        ax.plot([t for t, _ in dropped], [y] * len(dropped), "v", ms=5, color="k")
        ordered.append(f"dropped ({sum(d for _, d in dropped)})")
    ax.set_yticks(range(len(ordered)), ordered, fontsize=7)
    ax.set_ylim(-0.7, max(len(ordered), 1) - 0.3)
    ax.set_title("flags and drops" if ordered else "no flags, no drops", fontsize=9)


def _mr_curves(records: list[StreamRecord]) -> str:
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.4))
    for record in records:
        label = f"slice {record.slice_index} ({(record.results[0] if record.results else {}).get('aha_level') or '?'})"
        phases = [r.get("seq") for r in record.results]
        for ax, key in zip(axes, ("circumferential_strain_pct", "radial_strain_pct")):
            values = [r.get(key) for r in record.results]
            ax.plot(phases, [np.nan if v is None else v for v in values], ".-", lw=1, ms=3,
                    label=label)
    for ax, title in zip(axes, ("circumferential strain, %", "radial strain, %")):
        ax.axhline(0, color="0.8", lw=0.6)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("phase")
    axes[0].legend(fontsize=7, frameon=False)
    fig.tight_layout()
    return _svg(fig)


def _echo_section(record: StreamRecord, frames: list[np.ndarray] | None, config: ReportConfig,
                  data: dict) -> str:
    t_s = _t_s(record.results)
    data[record.name] = {"app": "echo", "seq": [r.get("seq") for r in record.results], "t_s": t_s,
                         "gls_pct": [r.get("gls_pct") for r in record.results],
                         "regional_pct": {s: [(r.get("regional_pct") or {}).get(s)
                                              for r in record.results] for s in A4C_SEGMENTS}}
    parts = [f"<h2>{_esc(record.name)}: echo</h2>"]
    if frames:
        spacing = record.meta.get("spacing_mm")
        scale = config.video_width_px / frames[0].shape[1]
        by_seq = {r.get("seq"): r for r in record.results}
        video = [_echo_frame(f, by_seq.get(i), spacing, scale) for i, f in enumerate(frames)]
        parts.append(_html_video(write_webm(video, record.meta.get("fps") or 25.0), len(video),
                                 f"{len(video)} of {record.meta.get('n_frames', '?')} frames; "
                                 "the tracked centreline in its segments' colours"))
    parts.append(_echo_curves(record, t_s))
    parts.append("<h3>Beats</h3>")
    parts.append(_beat_table(record) if record.beats else "<p>No beat closed.</p>")
    parts.append(_counts(record))
    return "\n".join(parts)


def _beat_table(record: StreamRecord) -> str:
    columns = BEAT_COLUMNS.get(record.app or "", [("ed_seq", "ED frame")])
    return _table(columns, [(f"beat {b.get('beat')}", b) for b in record.beats], "beats",
                  record.name)


def _counts(record: StreamRecord, label: str = "") -> str:
    end_meta = (record.end or {}).get("meta") or {}
    items = [f"{len(record.results)} results", f"{len(record.errors)} errors"]
    if any("measurable" in r for r in record.results):   # apps that judge each frame
        items.append(f"{sum(1 for r in record.results if r.get('measurable'))} measurable frames")
    items += [f"{k} {end_meta[k]}" for k in ("processed", "dropped", "stale", "errors")
              if k in end_meta]
    errors = sorted({e.get("code", "?") for e in record.errors})
    return (f'<p class="counts">{_esc(label)}{_esc(", ".join(items))}'
            + (f"; error codes: {_esc(', '.join(errors))}" if errors else "") + "</p>")


def _stack_section(name: str, records: list[StreamRecord], source, masks: dict | None,
                   config: ReportConfig, data: dict, rows: list[dict]) -> str:
    records = sorted(records, key=lambda r: r.slice_index or 0)
    for record in records:
        data[record.name] = {"app": record.app, "seq": [r.get("seq") for r in record.results],
                             **{key: [r.get(key) for r in record.results]
                                for key in ("circumferential_strain_pct", "radial_strain_pct")}}
    parts = [f"<h2>{_esc(name)}: MR short-axis stack, {len(records)} slices</h2>"]
    if source is not None:
        parts.append(_stack_video(records, source, masks, config))
    parts.append(_mr_curves(records))
    parts.append("<h3>Beats per slice</h3>")
    table_rows = [(f"slice {r.slice_index}, beat {b.get('beat')}", b)
                  for r in records for b in r.beats]
    parts.append(_table(BEAT_COLUMNS["mr-sax"], table_rows, "beats", name) if table_rows
                 else "<p>No beat closed.</p>")
    volumes = [(f"beat {b.get('beat')}", {**b["stack"], "beat": b.get("beat")})
               for r in records for b in r.beats if b.get("stack")]
    if volumes:
        parts.append("<h3>Stack</h3>")
        parts.append(_table(STACK_COLUMNS, volumes, "stack", name))
    for beat in (b for b in stack_beats(rows) if b.wall_motion.get("stream") == name):
        parts.append(_wall_motion(beat))
    parts.extend(_counts(r, f"slice {r.slice_index}: ") for r in records)
    return "\n".join(parts)


def _wall_motion(beat: StackBeat) -> str:
    from streamer.bullseye import figure

    wm = beat.wall_motion
    segments = [(f"{s.get('aha')} {s.get('name', '')}", s) for s in wm.get("segments", [])]
    msi = wm.get("msi")
    return (f"<h3>Wall motion, stack beat {_esc(wm.get('beat'))}: MSI "
            f"{_esc(format_value(msi))}</h3>" + _svg(figure(beat))
            + _table([("score", "score"), ("label", "class")], segments, "wall-motion",
                     wm.get("stream", "")))


def _stack_video(records: list[StreamRecord], source, masks: dict | None,
                 config: ReportConfig) -> str:
    import cv2

    slices = []
    for record in records:
        k = record.slice_index or 0
        if k >= len(source):
            raise ReportError(f"the results name slice {k}, the stack holds {len(source)}")
        slices.append((record, display_uint8(np.stack(_read_frames(source.slice(k),
                                                                   config.max_video_frames)))))
    n = min(len(f) for _, f in slices)
    width = config.video_width_px // 2   # a tile per slice, up to four a row
    video = []
    results = [{r.get("seq"): r for r in record.results} for record, _ in slices]
    for phase in range(n):
        tiles = []
        for (record, frames), by_seq in zip(slices, results):
            k = record.slice_index or 0
            labels = None
            if masks is not None and k < masks["labels"].shape[0] and phase < masks["labels"].shape[1]:
                labels = masks["labels"][k, phase]
            scale = width / frames.shape[2]
            tiles.append(_mr_frame(frames[phase], by_seq.get(phase), labels,
                                   record.meta.get("spacing_mm"), scale, f"slice {k}"))
        height = max(t.shape[0] for t in tiles)
        tiles = [cv2.copyMakeBorder(t, 0, height - t.shape[0], 0, 0, cv2.BORDER_CONSTANT)
                 for t in tiles]
        per_row = min(len(tiles), 4)
        tiles += [np.zeros_like(tiles[0])] * (-len(tiles) % per_row)
        video.append(np.vstack([np.hstack(tiles[i:i + per_row])
                                for i in range(0, len(tiles), per_row)]))
    fps = records[0].meta.get("fps") or 20.0
    return _html_video(write_webm(video, fps), len(video),
                       f"{len(slices)} slices x {n} phases; endocardium red, epicardium green"
                       + ("; labels: LV cavity red, myocardium green, RV blue" if masks else ""))


def _velocity_section(record: StreamRecord, frames: list[np.ndarray] | None,
                      masks: dict | None, config: ReportConfig, data: dict) -> str:
    from streamer.velocity_plot import figure

    data[record.name] = {"app": "mr-velocity", "seq": [r.get("seq") for r in record.results],
                         "cycles": [{key: b.get(f"{key}_velocity_cm_s")
                                     for key in ("radial", "circumferential", "longitudinal")}
                                    | {"beat": b.get("beat")} for b in record.beats]}
    parts = [f"<h2>{_esc(record.name)}: MR velocity mapping</h2>"]
    if frames:
        labels = masks["labels"][0] if masks is not None else None
        scale = config.video_width_px / frames[0].shape[1]
        video = [_mr_frame(f, None, labels[i] if labels is not None and i < len(labels) else None,
                           None, scale, f"frame {i}") for i, f in enumerate(frames)]
        parts.append(_html_video(write_webm(video, record.meta.get("fps") or 20.0), len(video),
                                 f"the magnitude, {len(video)} frames"
                                 + ("; the 3D-EAR myocardium green" if masks else "")))
    parts += [_svg(figure(b)) for b in record.beats if b.get("radial_velocity_cm_s") is not None]
    parts.append("<h3>Cycles</h3>")
    parts.append(_beat_table(record) if record.beats else "<p>No cycle closed.</p>")
    parts.append(_counts(record))
    return "\n".join(parts)


def _provenance(config: ReportConfig, streams: dict[str, StreamRecord]) -> str:
    apps: dict[str, dict] = {}
    for record in streams.values():
        declaration = record.meta.get("app") or {}
        if declaration.get("name"):
            apps.setdefault(declaration["name"], declaration)
    rows = []
    for name, declaration in apps.items():
        for role, engine in (declaration.get("engines") or {}).items():
            rows.append("<tr>" + "".join(f"<td>{_esc(v)}</td>" for v in (
                name, role, engine.get("backend"), engine.get("precision"), engine.get("device"),
                engine.get("origin"), engine.get("weights_sha256") or "–")) + "</tr>")
    versions = sorted({str(d.get("cardiostream_version")) for d in apps.values()
                       if d.get("cardiostream_version")})
    clips = []
    for record in streams.values():
        meta = {k: v for k, v in record.meta.items() if k not in (*IDENTIFYING_META, "app")}
        clips.append(f"<tr><td>{_esc(record.name)}</td><td><code>{_esc(json.dumps(meta))}"
                     "</code></td></tr>")
    return ("<h2>Provenance</h2><ul>"
            f"<li>results file {_esc(config.results.name)}, sha256 {_sha256(config.results)}</li>"
            f"<li>analysed by cardiostream {_esc(', '.join(versions) or 'version not recorded')}; "
            f"report by cardiostream {__version__} on "
            f"{_dt.datetime.now(_dt.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}</li></ul>"
            '<table class="engines"><tr><th>app</th><th>network</th><th>backend</th>'
            "<th>precision</th><th>device</th><th>weights</th><th>weights sha256</th></tr>"
            + "".join(rows) + "</table>"
            '<details><summary>clips (metadata without identifiers)</summary>'
            '<table class="clips">' + "".join(clips) + "</table></details>")


STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em auto; max-width: 1100px; color: #222; }
h1 { font-size: 1.4em; } h2 { font-size: 1.15em; border-bottom: 1px solid #ccc; margin-top: 2em; }
h3 { font-size: 1em; } table { border-collapse: collapse; font-size: 0.8em; margin: 0.5em 0; }
td, th { border: 1px solid #ddd; padding: 2px 6px; text-align: right; }
table { display: block; overflow-x: auto; max-width: 100%; }
table.engines td, table.clips td { text-align: left; } svg { max-width: 100%; height: auto; }
video { max-width: 100%; background: #000; } code { font-size: 0.9em; word-break: break-all; }
p.counts { color: #555; font-size: 0.85em; }
"""


def write_report(config: ReportConfig) -> Path:
    """Writes the report (module docstring) and returns its path; ReportError (a ValueError)
    when the results file holds nothing to report or the clip does not fit it."""
    rows = read_rows(config.results)
    streams = group_streams(rows)
    if not any(r.results or r.beats for r in streams.values()):
        raise ReportError(f"{config.results}: no result or beat message to report")
    source = None
    if config.clip is not None:
        from streamer.io.clips import open_input

        source = open_input(config.clip)
    masks = None
    if config.masks is not None:
        with np.load(config.masks) as z:
            masks = {"labels": z["labels"]}
    data: dict = {}
    body = []
    stacks: dict[str, list[StreamRecord]] = {}
    singles = [r for r in streams.values() if not r.stack]
    for record in streams.values():
        if record.stack:
            stacks.setdefault(record.stack, []).append(record)
    is_stack_source = source is not None and hasattr(source, "slice")
    if source is not None and not is_stack_source and len(singles) != 1:
        raise ReportError(f"--clip gives the video of one stream; {config.results.name} holds "
                          f"{len(singles)} single-clip streams")
    if is_stack_source and len(stacks) != 1:
        raise ReportError(f"--clip is a stack; {config.results.name} holds {len(stacks)} stacks")
    frames = None  # the one single-clip stream's video (checked above), read once
    if source is not None and not is_stack_source and singles[0].app in ("echo", "mr-velocity"):
        frames = list(display_uint8(np.stack(_read_frames(source, config.max_video_frames))))
    for record in singles:
        app = record.app
        if app == "mr-velocity":
            body.append(_velocity_section(record, frames, masks, config, data))
        elif app == "echo":
            body.append(_echo_section(record, frames, config, data))
        else:
            body.append(_generic_section(record, data))
    for name, records in stacks.items():
        body.append(_stack_section(name, records, source if is_stack_source else None, masks,
                                   config, data, rows))
    payload = json.dumps(data, separators=(",", ":")).replace("</", "<\\/")
    document = ("<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">"
                f"<title>cardiostream report: {_esc(config.results.name)}</title>"
                f"<style>{STYLE}</style></head><body>"
                f"<h1>cardiostream report: {_esc(config.results.name)}</h1>"
                + _provenance(config, streams) + "\n".join(body)
                + f'<script type="application/json" id="cardiostream-data">{payload}</script>'
                "</body></html>")
    config.out.parent.mkdir(parents=True, exist_ok=True)
    config.out.write_text(document, encoding="utf-8")
    return config.out


def _generic_section(record: StreamRecord, data: dict) -> str:
    """A stream of an app without a section of its own (e.g. ``--app none``): its counts."""
    data[record.name] = {"app": record.app, "seq": [r.get("seq") for r in record.results]}
    return f"<h2>{_esc(record.name)}: {_esc(record.app or 'no app')}</h2>" + _counts(record)
