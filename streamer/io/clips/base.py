"""Shared types of the clip readers: what a clip is, one frame of it, and the errors.

Units everywhere in this package: spacing in millimetres per pixel as (row, col),
frame rate in frames per second, times in seconds (``t_s``) or milliseconds where a
key says ``_ms``.
"""

from __future__ import annotations

import json
import math
import os
import secrets
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol

import numpy as np

__all__ = [
    "ClipError",
    "ClipFrame",
    "ClipInfo",
    "ClipReader",
    "FrameClock",
    "ReaderFactory",
    "apply_overrides",
    "native_frame",
    "validate_write_args",
    "atomic_output",
]


class ClipError(Exception):
    """A clip cannot be read or written.

    The message names the file and says what is wrong, e.g.
    ``"clip.dcm: truncated: header declares 30 frames but pixel data holds 12"``.
    Build it with ``ClipError(problem, path=path)`` to get that form; ``path`` and
    ``problem`` are kept as attributes.  ``ClipError("free text")`` also works.
    """

    def __init__(self, problem: str, *, path: str | os.PathLike[str] | None = None) -> None:
        self.path = None if path is None else str(path)
        self.problem = problem
        super().__init__(problem if path is None else f"{path}: {problem}")


@dataclass(frozen=True)
class ClipInfo:
    """What a clip file says about itself, known before any pixels are decoded."""

    path: str
    format: str
    """"dicom" | "dicom-series" | "nifti" | "video" | "npz" | ... (extensible)."""
    n_frames: int
    """Frame count as declared by the file (video: the container's count)."""
    shape: tuple[int, ...]
    """Per frame: (rows, cols) grey, (rows, cols, 3) RGB, (rows, cols, C) multichannel."""
    dtype: str
    """numpy dtype name of the yielded frames, e.g. "uint8", "uint16", "float32"."""
    modality: str
    """"US" | "MR" | "OT" (unknown)."""
    spacing_mm: tuple[float, float] | None
    """(row, col) millimetres per pixel; None when the file does not say."""
    fps: float | None
    """Frames per second; None when the file does not say."""
    channels: tuple[str, ...] | None = None
    """Names of the last axis for multichannel data (e.g. magnitude, vx, vy, vz); None for grey/RGB."""
    metadata: dict = field(default_factory=dict)
    """JSON-serialisable extras: "frame_time_ms", "warnings", "calibration_source", ..."""


@dataclass(frozen=True)
class ClipFrame:
    """One decoded frame."""

    index: int
    """0-based frame index in the clip."""
    pixels: np.ndarray
    """C-contiguous, native little-endian, shape == info.shape, dtype == info.dtype."""
    t_s: float
    """Time since the first frame in seconds; NaN when neither the file nor the caller gives timing."""


class ClipReader(ABC):
    """A clip opened for streaming.  ``info`` is available at once; pixels come per frame.

    Iterating starts from the first frame each time and decodes one frame at a time.
    Use as a context manager or call :meth:`close`.
    """

    info: ClipInfo

    @abstractmethod
    def __iter__(self) -> Iterator[ClipFrame]:
        """Yield the frames in order, decoding each only when it is reached."""

    @abstractmethod
    def close(self) -> None:
        """Release open files; idempotent."""

    def __enter__(self) -> ClipReader:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __len__(self) -> int:
        return self.info.n_frames

    def __repr__(self) -> str:
        i = self.info
        return (
            f"{type(self).__name__}({i.path!r}, format={i.format}, n_frames={i.n_frames}, "
            f"shape={i.shape}, dtype={i.dtype}, fps={i.fps}, spacing_mm={i.spacing_mm})"
        )


class ReaderFactory(Protocol):
    """How :func:`open_clip` calls a reader: the path plus the caller's overrides."""

    def __call__(
        self,
        path: Path,
        *,
        spacing_mm: tuple[float, float] | None,
        fps: float | None,
        slice_index: int | None,
    ) -> ClipReader: ...


@dataclass(frozen=True)
class FrameClock:
    """Frame times of a clip: explicit per-frame times where the file lists them, else index / fps.

    ``times_s`` (seconds since the first frame) wins over ``fps`` for the frames it covers.
    Without either, ``t_s`` is NaN: the time is unknown and is not invented.
    """

    fps: float | None
    times_s: tuple[float, ...] | None = None

    def t_s(self, index: int) -> float:
        if self.times_s is not None and index < len(self.times_s):
            return self.times_s[index]
        if self.fps:
            return index / self.fps
        return math.nan


def apply_overrides(
    *,
    spacing_file: tuple[float, float] | None,
    fps_file: float | None,
    clock_file: FrameClock,
    spacing_override: tuple[float, float] | None,
    fps_override: float | None,
    metadata: dict[str, Any],
    path: Path,
) -> tuple[tuple[float, float] | None, float | None, FrameClock]:
    """Combine what the file says with the caller's overrides (overrides win, and say so).

    Updates ``metadata`` in place: ``calibration_source`` / ``fps_source`` become
    "override" and the file's own values are kept as ``file_spacing_mm`` / ``file_fps``.
    """
    spacing = spacing_file
    if spacing_override is not None:
        spacing = check_spacing(spacing_override, path)
        if spacing_file is not None:
            metadata["file_spacing_mm"] = list(spacing_file)
        metadata["calibration_source"] = "override"
    fps, clock = fps_file, clock_file
    if fps_override is not None:
        fps = check_fps(fps_override, path)
        if fps_file is not None:
            metadata["file_fps"] = fps_file
        metadata["fps_source"] = "override"
        clock = FrameClock(fps=fps)
    return spacing, fps, clock


def check_spacing(spacing: Sequence[float], path: str | os.PathLike[str]) -> tuple[float, float]:
    """Validate a (row, col) spacing in mm: two finite positive numbers."""
    try:
        row, col = (float(v) for v in spacing)
    except (TypeError, ValueError) as exc:
        raise ClipError(f"spacing_mm must be (row_mm, col_mm), got {spacing!r}", path=path) from exc
    if not (math.isfinite(row) and math.isfinite(col) and row > 0 and col > 0):
        raise ClipError(f"spacing_mm must be finite and positive, got {(row, col)}", path=path)
    return (row, col)


def check_fps(fps: float, path: str | os.PathLike[str]) -> float:
    """Validate a frame rate in frames per second: finite and positive."""
    try:
        value = float(fps)
    except (TypeError, ValueError) as exc:
        raise ClipError(f"fps must be a number, got {fps!r}", path=path) from exc
    if not (math.isfinite(value) and value > 0):
        raise ClipError(f"fps must be finite and positive, got {value}", path=path)
    return value


def native_frame(arr: np.ndarray) -> np.ndarray:
    """Return ``arr`` as a C-contiguous array in native byte order (a copy only if needed)."""
    dtype = arr.dtype.newbyteorder("=") if arr.dtype.byteorder not in ("=", "|") else arr.dtype
    return np.ascontiguousarray(arr, dtype=dtype)


def native_dtype_name(dtype: np.dtype) -> str:
    """Name of ``dtype`` in native byte order, e.g. ">u2" -> "uint16"."""
    return np.dtype(dtype).newbyteorder("=").name


def check_frame(frame: np.ndarray, info: ClipInfo, index: int) -> np.ndarray:
    """Make a decoded frame native/contiguous and check it matches ``info`` (shape and dtype)."""
    out = native_frame(frame)
    if out.shape != info.shape or out.dtype.name != info.dtype:
        raise ClipError(
            f"frame {index} decoded to shape {out.shape} {out.dtype.name}, "
            f"but the header says {info.shape} {info.dtype}",
            path=info.path,
        )
    return out


def json_metadata(metadata: dict | None, path: str | os.PathLike[str]) -> str:
    """Serialise user metadata to JSON, refusing what JSON cannot hold."""
    if metadata is None:
        return "{}"
    if not isinstance(metadata, dict):
        raise ClipError(f"metadata must be a dict, got {type(metadata).__name__}", path=path)
    try:
        return json.dumps(metadata, allow_nan=False, sort_keys=True)
    except (TypeError, ValueError) as exc:
        raise ClipError(f"metadata is not JSON-serialisable: {exc}", path=path) from exc


def merge_metadata(user: dict, reader: dict) -> dict:
    """Metadata as reported: what the writer stored, then what the reader found.

    Reader facts (frame_time_ms, calibration_source, ...) describe the file and win on
    a key clash; the two "warnings" lists are concatenated.
    """
    merged = {**user, **reader}
    warnings = [*user.get("warnings", []), *reader.get("warnings", [])]
    if warnings:
        merged["warnings"] = warnings
    return merged


@dataclass(frozen=True)
class WriteArgs:
    """Validated arguments of :func:`write_clip`."""

    frames: np.ndarray
    spacing_mm: tuple[float, float] | None
    fps: float
    modality: str
    metadata_json: str
    channels: tuple[str, ...] | None

    @property
    def is_rgb(self) -> bool:
        return self.frames.ndim == 4 and self.frames.shape[3] == 3 and self.channels is None


def validate_write_args(
    path: Path,
    frames: np.ndarray,
    *,
    spacing_mm: Sequence[float] | None,
    fps: float,
    modality: str,
    metadata: dict | None,
    channels: Sequence[str] | None,
) -> WriteArgs:
    """Check the common arguments of every writer and normalise them."""
    arr = np.asarray(frames)
    if arr.ndim not in (3, 4):
        raise ClipError(f"frames must be (T, rows, cols) or (T, rows, cols, C), got shape {arr.shape}", path=path)
    if min(arr.shape) < 1:
        raise ClipError(f"frames must not be empty, got shape {arr.shape}", path=path)
    if arr.dtype.kind not in "uif":
        raise ClipError(f"frames must be numeric, got dtype {arr.dtype}", path=path)
    names: tuple[str, ...] | None = None
    if channels is not None:
        names = tuple(str(c) for c in channels)
        if arr.ndim != 4 or len(names) != arr.shape[3]:
            raise ClipError(
                f"channels {names} do not match the last axis of frames with shape {arr.shape}", path=path
            )
    if not isinstance(modality, str) or not modality or len(modality) > 16 or not modality.isupper():
        raise ClipError(
            f"modality must be an upper-case DICOM modality code such as 'US' or 'MR', got {modality!r}", path=path
        )
    return WriteArgs(
        frames=native_frame(arr),
        spacing_mm=None if spacing_mm is None else check_spacing(spacing_mm, path),
        fps=check_fps(fps, path),
        modality=modality,
        metadata_json=json_metadata(metadata, path),
        channels=names,
    )


def full_suffix(path: Path) -> str:
    """Lower-case suffix including the compression suffix: "clip.nii.gz" -> ".nii.gz"."""
    name = path.name.lower()
    if name.endswith(".gz") and len(path.suffixes) >= 2:
        return "".join(path.suffixes[-2:]).lower()
    return path.suffix.lower()


@contextmanager
def atomic_output(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` (same suffix); move it into place on success.

    A failed or interrupted write never leaves a half-written clip under the final name.
    """
    suffix = full_suffix(path)
    stem = path.name[: len(path.name) - len(suffix)] if suffix else path.name
    tmp = path.with_name(f".{stem}.{secrets.token_hex(4)}.partial{suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()

