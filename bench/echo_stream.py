"""One clip through one stream of a side-car's frame processor, as a sender would send it.

Shared by the benches that judge the echo app on clips with a truth (``accuracy.py``'s
end-to-end phantoms, ``physics_sims.py evaluate``): a ``start``, every frame with its
acquisition time from the frame rate, an ``end``.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator

import numpy as np


def stream_clip(processor, stream: str, frames: Iterable[np.ndarray], fps: float,
                spacing_mm: tuple[float, float], view: str | None = None) -> Iterator[tuple]:
    """Yield ``(result, beats)`` per frame: the message the processor answers the frame with
    (a result or an error) and the beat messages that frame closed. ``processor`` is a
    ``streamer.processor.FrameProcessor``; the stream is ended after the last frame."""
    from streamer.io.protocol import EndMessage, FrameMessage, StartMessage
    from streamer.processor import Received

    processor.handle(Received(StartMessage(stream=stream, meta={"modality": "US"}), time.time_ns()))
    n = 0
    for t, pixels in enumerate(frames):
        n += 1
        message = FrameMessage(stream=stream, seq=t, t_acq_ns=int(t / fps * 1e9), modality="US",
                               pixels=pixels, spacing_mm=tuple(spacing_mm), fps=fps, view=view)
        result, *rest = processor.handle(Received(message, time.time_ns()))
        yield result, [m for m in rest if m.kind == "beat"]
    processor.handle(Received(EndMessage(stream=stream, n_frames=n), time.time_ns()))
