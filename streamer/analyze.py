"""``cardiostream analyze``: clips through the same apps in one process, no sockets.

Writes what the side-car would publish for the clips, one JSON header per line
(``start``, a ``result`` or ``error`` per frame, ``beat`` when a cycle closes, ``end``):
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

from streamer.apps import Analysis
from streamer.io.clips import ClipReader, StackReader
from streamer.io.protocol import ErrorMessage, ProtocolError, encode
from streamer.processor import FrameProcessor, Received, StreamLimits
from streamer.replay import ReplayConfig, TimedMessage, source_messages


@dataclass
class AnalyzeSummary:
    frames: int = 0
    results: int = 0
    errors: int = 0
    elapsed_s: float = 0.0


def analyze(reader: ClipReader | StackReader | Sequence[ClipReader | StackReader],
            out_path: str | Path, analysis: Analysis,
            config: ReplayConfig | Sequence[ReplayConfig] = ReplayConfig(),
            *, on_frame: Callable[[int], None] | None = None,
            t0_ns: int | None = None) -> AnalyzeSummary:
    """Run every frame of the clip(s) through their apps; write JSON lines to ``out_path``.

    ``reader`` and ``config`` may be one clip or one per clip (the configs name each
    clip's stream; streams must differ). A stack is sent slice after slice, each slice the
    stream ``NAME/slice-K`` (``NAME`` from its config). ``t0_ns`` is the acquisition time of
    every clip's first frame (default: now); a fixed value makes two runs give the same
    results to the last bit."""
    readers = [reader] if isinstance(reader, (ClipReader, StackReader)) else list(reader)
    configs = [config] * len(readers) if isinstance(config, ReplayConfig) else list(config)
    if len(configs) != len(readers):
        raise ValueError(f"{len(readers)} clips but {len(configs)} replay configs")
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
            for answer in processor.handle(Received(message, t_recv_ns=now_ns),
                                           t_take_ns=now_ns):
                if answer.kind == "result":
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
