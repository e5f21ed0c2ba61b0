"""``cardiostream analyze``: clips through the same apps in one process, no sockets.

Writes what the side-car would publish for the clips, one JSON header per line
(``start``, a ``result`` or ``error`` per frame, ``beat`` when a cycle closes, ``wall_motion``
when a short-axis stack's slices have each closed a beat, ``end``):
the same objects a subscriber receives, so files from ``analyze`` and from a live run
compare line by line. Several clips go in as several streams, their frames interleaved in
the order of their acquisition times, as a side-car would receive them from several
scanners; each stream keeps its own analysis state. A short-axis stack goes in as
``replay`` sends it: slice after slice, each slice its own stream ``NAME/slice-K``.
"""

from __future__ import annotations

import heapq
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from streamer.apps import Analysis
from streamer.io.clips import ClipReader, StackReader
from streamer.io.protocol import (
    BeatMessage,
    ErrorMessage,
    FrameMessage,
    ProtocolError,
    ResultMessage,
    StartMessage,
    encode,
)
from streamer.processor import FrameProcessor, Received, StreamLimits
from streamer.replay import ReplayConfig, TimedMessage, source_messages


@dataclass
class AnalyzeSummary:
    frames: int = 0
    results: int = 0
    errors: int = 0
    elapsed_s: float = 0.0


class LabelMaps:
    """The label maps of one source's MR frames, gathered for ``analyze --masks-out``.

    Written with :meth:`write` as an .npz: ``labels`` uint8 (slices, phases, rows, cols) in
    the rows and columns of the frames the reader yields (0 background, 1 LV cavity, 2 LV
    myocardium, 3 RV cavity; :data:`NOT_ANALYSED` where the frame got an error instead of a
    result; a velocity-mapping slice's frames come with its cycle's beat message, label 2
    only, with ``--vm-labels``), ``infarct_p`` float32 (slices, rows, cols) the infarct probability map of each
    slice's first beat that was mapped (OF-RNN; NaN for a slice without one), only where the
    app maps infarcts, ``instance_number`` int64 (slices, phases), the DICOM InstanceNumber of each
    image or -1, ``slice_position_mm`` float64 (slices,) and ``trigger_time_ms`` float64
    (slices, phases), NaN where unknown. Slices in the order of ``slice_index`` (one slice
    for a clip), phases by ``phase_index`` (a clip's frame order); a looped clip's first
    pass."""

    NOT_ANALYSED = 255

    def __init__(self, source: ClipReader | StackReader):
        self.source = source
        self.starts: dict[str, dict] = {}
        self.phases: dict[tuple[str, int], tuple[int, float | None]] = {}
        self.labels: dict[tuple[str, int], np.ndarray] = {}
        self.infarct: dict[str, np.ndarray] = {}   # each stream's first mapped beat

    def add(self, message) -> None:
        """A message sent (start, frame) or answered (result, beat) in the run."""
        if isinstance(message, BeatMessage) and "labels" in message.arrays:
            # a velocity-mapping cycle's labels, one per frame of label_seqs
            seqs = message.fields.get("label_seqs") or []
            for seq, labels in zip(seqs, np.asarray(message.arrays["labels"])):
                self.labels[(message.stream, int(seq))] = labels
        if isinstance(message, BeatMessage) and "infarct_p" in message.arrays:
            self.infarct.setdefault(message.stream, np.asarray(message.arrays["infarct_p"]))
        elif isinstance(message, StartMessage):
            self.starts[message.stream] = message.meta
        elif isinstance(message, FrameMessage):
            phase = message.seq if message.phase_index is None else message.phase_index
            self.phases[(message.stream, message.seq)] = (phase, message.trigger_time_ms)
        elif isinstance(message, ResultMessage) and "labels" in message.arrays:
            self.labels[(message.stream, message.seq)] = np.asarray(message.arrays["labels"])

    def write(self, path: str | Path) -> Path:
        if not self.labels:
            raise ValueError("no label maps to write: --masks-out needs MR frames analysed "
                             "by the mr-sax app, or velocity-mapping cycles by the mr-velocity "
                             "app with --vm-labels")
        info = self.source.info
        streams = sorted(self.starts, key=lambda s: self.starts[s].get("slice_index", 0))
        stack = isinstance(self.source, StackReader)
        n_phases = info.n_phases if stack else info.n_frames
        shape = tuple(info.shape[:2])
        labels = np.full((len(streams), n_phases, *shape), self.NOT_ANALYSED, np.uint8)
        trigger = np.full((len(streams), n_phases), np.nan)
        instance = np.full((len(streams), n_phases), -1, np.int64)
        position = np.array([np.nan if self.starts[s].get("slice_position_mm") is None
                             else self.starts[s]["slice_position_mm"] for s in streams],
                            np.float64)
        for k, stream in enumerate(streams):
            if stack:
                instance[k] = info.slices[self.starts[stream]["slice_index"]].instance_numbers
            for (name, seq), (phase, t_ms) in self.phases.items():
                if name != stream or seq >= n_phases:
                    continue
                trigger[k, phase] = np.nan if t_ms is None else t_ms
                if (name, seq) in self.labels:
                    labels[k, phase] = self.labels[(name, seq)]
        maps = {}
        if self.infarct:
            maps["infarct_p"] = np.stack([self.infarct.get(s, np.full(shape, np.nan, np.float32))
                                          for s in streams]).astype(np.float32)
        path = Path(path)
        np.savez_compressed(path, labels=labels, instance_number=instance,
                            slice_position_mm=position, trigger_time_ms=trigger, **maps)
        return path


def analyze(reader: ClipReader | StackReader | Sequence[ClipReader | StackReader],
            out_path: str | Path, analysis: Analysis,
            config: ReplayConfig | Sequence[ReplayConfig] = ReplayConfig(),
            *, on_frame: Callable[[int], None] | None = None,
            t0_ns: int | None = None, masks_out: str | Path | None = None) -> AnalyzeSummary:
    """Run every frame of the clip(s) through their apps; write JSON lines to ``out_path``.

    ``reader`` and ``config`` may be one clip or one per clip (the configs name each
    clip's stream; streams must differ). A stack is sent slice after slice, each slice the
    stream ``NAME/slice-K`` (``NAME`` from its config). ``t0_ns`` is the acquisition time of
    every clip's first frame (default: now); a fixed value makes two runs give the same
    results to the last bit. ``masks_out``: where the label maps of one source go
    (:class:`LabelMaps`; the MR app must send them: ``MrShortAxisConfig.send_labels``)."""
    readers = [reader] if isinstance(reader, (ClipReader, StackReader)) else list(reader)
    configs = [config] * len(readers) if isinstance(config, ReplayConfig) else list(config)
    if len(configs) != len(readers):
        raise ValueError(f"{len(readers)} clips but {len(configs)} replay configs")
    if masks_out is not None and len(readers) != 1:
        raise ValueError(f"masks_out takes the label maps of one clip or stack, not "
                         f"{len(readers)}")
    maps = LabelMaps(readers[0]) if masks_out is not None else None
    t0_ns = time.time_ns() if t0_ns is None else t0_ns
    # offline: every clip is followed to its end however long the analysis takes (a stack's
    # slices one after another: one stream open at a time)
    processor = FrameProcessor(analysis, limits=StreamLimits(
        max_streams=len(readers), idle_timeout_s=float("inf")))
    summary = AnalyzeSummary()
    start = time.perf_counter()
    streams = [source_messages(r, c, t0_ns=t0_ns) for r, c in zip(readers, configs)]
    with open(out_path, "wb") as out:
        for timed in _interleaved(streams):
            message = timed.message
            now_ns = time.time_ns()
            if maps is not None:
                maps.add(message)
            for answer in processor.handle(Received(message, t_recv_ns=now_ns),
                                           t_take_ns=now_ns):
                if answer.kind in ("result", "beat"):
                    if maps is not None:
                        maps.add(answer)
                    answer.arrays = {}  # arrays travel as parts; lines hold headers
                try:
                    line = bytes(encode(answer)[0])
                except ProtocolError as exc:  # an app's field JSON cannot hold
                    answer = ErrorMessage(code="stage_failed", stream=message.stream,
                                          seq=getattr(answer, "seq", None),
                                          message=f"the {answer.kind} could not be "
                                                  f"encoded: {exc.message}")
                    line = bytes(encode(answer)[0])
                summary.results += answer.kind == "result"
                summary.errors += answer.kind == "error"
                out.write(line + b"\n")
            if message.kind == "frame":
                summary.frames += 1
                if on_frame is not None:
                    on_frame(summary.frames)
    summary.elapsed_s = time.perf_counter() - start
    if maps is not None:
        maps.write(masks_out)
    return summary


def _interleaved(streams: list[Iterator[TimedMessage]]) -> Iterator[TimedMessage]:
    """The messages of several clips merged by due time (ties: the clip given first);
    each clip's own order is kept, its start first and its end last. A stream name
    belongs to one clip (a stack's slice streams all to that stack)."""
    owners: dict[str, int] = {}

    def claim(timed: TimedMessage, k: int) -> TimedMessage:
        if timed.message.kind == "start" and owners.setdefault(timed.message.stream, k) != k:
            raise ValueError(f"two clips would both be stream {timed.message.stream!r}; "
                             "give each its own name")
        return timed

    for k, stream in enumerate(streams):
        yield claim(next(stream), k)  # a clip's messages open with its start

    def keyed(k: int, stream: Iterator[TimedMessage]):
        for n, timed in enumerate(stream):
            yield (timed.due_s, k, n), timed

    merged = heapq.merge(*[keyed(k, s) for k, s in enumerate(streams)], key=lambda p: p[0])
    for (_, k, _), timed in merged:
        yield claim(timed, k)
