"""Video clips (``.avi``, ``.mp4``, ``.mov``, ``.mkv``) through OpenCV's FFmpeg backend.

Frames are always yielded as RGB uint8 (rows, cols, 3) — OpenCV decodes to BGR, which is
converted; a grey video therefore comes back with three equal channels.  The frame rate is
the container's (CAP_PROP_FPS) and ``t_s = index / fps``.  Video carries no spacing:
``spacing_mm`` is None unless the caller passes it to :func:`open_clip`.
``n_frames`` is the count the container declares; when fewer frames decode the reader
raises a "truncated" :class:`ClipError` at that point.

:func:`write_video` writes MJPG in ``.avi`` and mp4v in ``.mp4`` (both lossy).  Only frames,
size and frame rate survive; spacing and metadata do not fit into these containers and are
dropped with a :class:`UserWarning`; the modality is not stored (read back as "OT").
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from .base import (
    ClipError,
    ClipFrame,
    ClipInfo,
    ClipReader,
    FrameClock,
    WriteArgs,
    apply_overrides,
    atomic_output,
    check_frame,
)

__all__ = ["VideoClipReader", "write_video", "VIDEO_FOURCC"]

#: Codec written per suffix.
VIDEO_FOURCC = {".avi": "MJPG", ".mp4": "mp4v"}


def _capture(path: Path) -> cv2.VideoCapture:
    # The FFmpeg backend only: the default backend list would fall back to reading the
    # file as a still image, which is not a clip.
    cap = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)
    if not cap.isOpened():
        cap.release()
        raise ClipError("cannot be opened as a video (unsupported codec, truncated or not a video)", path=path)
    return cap


class VideoClipReader(ClipReader):
    """Reader for video files; see the module docstring."""

    def __init__(
        self,
        path: Path,
        *,
        spacing_mm: tuple[float, float] | None = None,
        fps: float | None = None,
        slice_index: int | None = None,
    ) -> None:
        self._path = Path(path)
        self._closed = False
        if slice_index not in (None, 0):
            raise ClipError(f"slice_index={slice_index} given, but a video has one slice", path=path)
        if not self._path.is_file():
            raise ClipError("no such file", path=path)
        cap = _capture(self._path)
        try:
            n_frames = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
            rows = int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
            cols = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH))
            fps_file = float(cap.get(cv2.CAP_PROP_FPS)) or None
            fourcc = int(cap.get(cv2.CAP_PROP_FOURCC))
        finally:
            cap.release()
        if n_frames <= 0:
            raise ClipError("the container does not declare a frame count", path=path)
        if rows <= 0 or cols <= 0:
            raise ClipError(f"the container declares a frame size of {rows}x{cols}", path=path)
        metadata: dict[str, Any] = {
            "fourcc": "".join(chr((fourcc >> (8 * i)) & 0xFF) for i in range(4)).strip("\x00"),
            "colour_conversion": "BGR->RGB",
        }
        if fps_file is not None:
            metadata["fps_source"] = "container"
            metadata["frame_time_ms"] = 1000.0 / fps_file
        spacing, fps_value, self._clock = apply_overrides(
            spacing_file=None,
            fps_file=fps_file,
            clock_file=FrameClock(fps=fps_file),
            spacing_override=spacing_mm,
            fps_override=fps,
            metadata=metadata,
            path=self._path,
        )
        self.info = ClipInfo(
            path=str(self._path),
            format="video",
            n_frames=n_frames,
            shape=(rows, cols, 3),
            dtype="uint8",
            modality="OT",
            spacing_mm=spacing,
            fps=fps_value,
            channels=None,
            metadata=metadata,
        )

    def __iter__(self) -> Iterator[ClipFrame]:
        if self._closed:
            raise ClipError("reader is closed", path=self._path)
        cap = _capture(self._path)
        try:
            for index in range(self.info.n_frames):
                ok, bgr = cap.read()
                if not ok or bgr is None:
                    raise ClipError(f"truncated: declares {self.info.n_frames} frames, decoded {index}", path=self._path)
                rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
                yield ClipFrame(index=index, pixels=check_frame(rgb, self.info, index), t_s=self._clock.t_s(index))
        finally:
            cap.release()

    def close(self) -> None:
        self._closed = True


def write_video(path: Path, args: WriteArgs) -> None:
    """Write uint8 grey (T, rows, cols) or RGB (T, rows, cols, 3) frames as MJPG .avi / mp4v .mp4.

    Lossy.  Grey frames are written as three equal channels.  Spacing and metadata cannot
    be stored and are dropped with a UserWarning; the modality is not stored either (the
    reader reports "OT"), without a warning since every call passes one.
    """
    suffix = path.suffix.lower()
    frames = args.frames
    if frames.dtype != np.uint8:
        raise ClipError(f"video holds uint8 frames, got {frames.dtype}; convert explicitly", path=path)
    if args.channels is not None or (frames.ndim == 4 and frames.shape[3] != 3):
        what = f"channels {args.channels}" if args.channels else f"frames of shape {frames.shape[1:]}"
        raise ClipError(f"video holds grey or RGB frames, not {what}", path=path)
    dropped = [
        name
        for name, lost in (
            ("spacing_mm", args.spacing_mm is not None),
            ("metadata", args.metadata_json != "{}"),
        )
        if lost
    ]
    if dropped:
        warnings.warn(f"{path}: a {suffix} video cannot store {', '.join(dropped)}; not written", UserWarning, stacklevel=3)
    rows, cols = frames.shape[1:3]
    with atomic_output(path) as tmp:
        fourcc = cv2.VideoWriter_fourcc(*VIDEO_FOURCC[suffix])
        writer = cv2.VideoWriter(str(tmp), cv2.CAP_FFMPEG, fourcc, args.fps, (cols, rows), True)
        if not writer.isOpened():
            raise ClipError(f"OpenCV cannot write {VIDEO_FOURCC[suffix]} video here", path=path)
        try:
            for frame in frames:
                bgr = cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR if frame.ndim == 2 else cv2.COLOR_RGB2BGR)
                writer.write(bgr)
        finally:
            writer.release()
