"""``cardiostream analyze``: a clip through the same pipeline in one process, no sockets.

Writes what the side-car would publish for the clip, one JSON header per line
(``start``, a ``result`` or ``error`` per frame, ``end``): the same objects a
subscriber receives, so files from ``analyze`` and from a live run compare
line by line.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from streamer.io.clips import ClipReader
from streamer.io.protocol import encode
from streamer.pipeline import Pipeline
from streamer.processor import FrameProcessor, Received
from streamer.replay import ReplayConfig, clip_messages


@dataclass
class AnalyzeSummary:
    frames: int = 0
    results: int = 0
    errors: int = 0
    elapsed_s: float = 0.0


def analyze(reader: ClipReader, out_path: str | Path, pipeline: Pipeline,
            config: ReplayConfig = ReplayConfig(), *,
            on_frame: Callable[[int], None] | None = None,
            t0_ns: int | None = None) -> AnalyzeSummary:
    """Run every frame of ``reader`` through ``pipeline``; write JSON lines to ``out_path``.

    ``t0_ns`` is the acquisition time of the first frame (default: now); a fixed value makes
    two runs of the same clip give the same results to the last bit."""
    processor = FrameProcessor(pipeline)
    summary = AnalyzeSummary()
    start = time.perf_counter()
    with open(out_path, "wb") as out:
        for timed in clip_messages(reader, config, t0_ns=t0_ns):
            message = timed.message
            now_ns = time.time_ns()
            for answer in processor.handle(Received(message, t_recv_ns=now_ns),
                                           t_take_ns=now_ns):
                if answer.kind == "result":
                    answer.mask = None  # masks travel as array parts; lines hold headers
                    summary.results += 1
                elif answer.kind == "error":
                    summary.errors += 1
                out.write(bytes(encode(answer)[0]) + b"\n")
            if message.kind == "frame":
                summary.frames += 1
                if on_frame is not None:
                    on_frame(summary.frames)
    summary.elapsed_s = time.perf_counter() - start
    return summary
