"""Dispatch of :func:`open_clip` / :func:`write_clip` by suffix, and the reader registry.

The registry is the one piece of module state in this package: the table of suffix ->
reader factory that :func:`register_reader` extends (e.g. the ``.csrec`` recording format
plugs in here).  Registering a suffix that is already taken by a different factory is an
error, never a silent replacement.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

import numpy as np

from .base import ClipError, ClipReader, ReaderFactory, full_suffix, validate_write_args
from .dicom import DicomClipReader, is_dicom_file, write_dicom
from .nifti import NiftiClipReader, write_nifti
from .npz import NpzClipReader, write_npz
from .velocity_series import open_series_folder
from .video import VideoClipReader, write_video

__all__ = ["ReaderRegistry", "open_clip", "read_frames", "reading", "register_reader",
           "write_clip", "WRITE_SUFFIXES"]

T = TypeVar("T")


class ReaderRegistry:
    """Suffix (lower case, with the dot, e.g. ".nii.gz") -> reader factory."""

    def __init__(self) -> None:
        self._factories: dict[str, ReaderFactory] = {}
        self._lock = threading.Lock()

    def register(self, suffixes: Sequence[str], factory: ReaderFactory) -> None:
        if isinstance(suffixes, str):
            raise TypeError("suffixes must be a tuple of strings such as ('.csrec',), not a single string")
        if not callable(factory):
            raise TypeError(f"factory must be callable, got {factory!r}")
        normalised = []
        for suffix in suffixes:
            if not isinstance(suffix, str) or not suffix.startswith(".") or len(suffix) < 2:
                raise ValueError(f"suffix must look like '.ext', got {suffix!r}")
            normalised.append(suffix.lower())
        with self._lock:
            for suffix in normalised:
                taken = self._factories.get(suffix)
                if taken is not None and taken is not factory:
                    raise ValueError(f"suffix {suffix} is already handled by {taken!r}")
            for suffix in normalised:
                self._factories[suffix] = factory

    def factory_for(self, path: Path) -> ReaderFactory | None:
        """The factory of the longest registered suffix that ``path``'s name ends with."""
        name = path.name.lower()
        with self._lock:
            matches = [s for s in self._factories if name.endswith(s)]
            return self._factories[max(matches, key=len)] if matches else None

    @property
    def suffixes(self) -> tuple[str, ...]:
        with self._lock:
            return tuple(sorted(self._factories))


def _recording_reader(path: Path, **options) -> ClipReader:
    """``.csrec`` recordings (streamer.io.recording imports this package, so load it late)."""
    from streamer.io.recording import RecordingClip

    return RecordingClip(path, **options)


def _builtin_registry() -> ReaderRegistry:
    registry = ReaderRegistry()
    registry.register((".dcm", ".dicom"), DicomClipReader)
    registry.register((".nii", ".nii.gz"), NiftiClipReader)
    registry.register((".avi", ".mp4", ".mov", ".mkv"), VideoClipReader)
    registry.register((".npz",), NpzClipReader)
    registry.register((".csrec",), _recording_reader)
    return registry


_REGISTRY = _builtin_registry()


def has_reader(path: str | os.PathLike[str]) -> bool:
    """Whether a registered reader takes files named like ``path`` (by suffix; DICOM files
    without a suffix are not known here)."""
    return _REGISTRY.factory_for(Path(path)) is not None


def register_reader(suffixes: tuple[str, ...], factory: ReaderFactory) -> None:
    """Let ``open_clip`` open files ending in ``suffixes`` (e.g. ``(".csrec",)``) with ``factory``.

    ``factory(path: Path, *, spacing_mm, fps, slice_index) -> ClipReader`` is called with the
    caller's overrides (each None when not given) and should raise :class:`ClipError` for a
    file it cannot read; any other exception it raises is wrapped into one.  Registering the
    same factory again is a no-op; a suffix taken by another factory raises ValueError.
    """
    _REGISTRY.register(suffixes, factory)


def open_clip(
    path: str | os.PathLike[str],
    *,
    spacing_mm: tuple[float, float] | None = None,
    fps: float | None = None,
    slice_index: int | None = None,
) -> ClipReader:
    """Open a clip for streaming, choosing the reader by suffix or content.

    * ``.dcm`` / ``.dicom``, or any file with the DICOM preamble: multi-frame DICOM;
    * a directory: a DICOM series (one image per file); a folder of one slice's magnitude
      and phase series (velocity mapping) is read as four channels, magnitude and v_x, v_y,
      v_z in cm/s (:mod:`.velocity_series`);
    * ``.nii`` / ``.nii.gz``: NIfTI;  ``.avi`` / ``.mp4`` / ``.mov`` / ``.mkv``: video;
      ``.npz``: NumPy archive; plus suffixes added with :func:`register_reader`.

    ``spacing_mm`` ((row, col) mm per pixel) and ``fps`` (frames per second) override what
    the file says (video never states a spacing); ``slice_index`` picks the slice of a 4-D
    NIfTI or a DICOM series directory (default the middle slice).  Any failure — missing
    file, unknown suffix, unreadable or truncated content — is a :class:`ClipError` that
    names the file.
    """
    p = Path(path)
    factory: ReaderFactory | Callable[..., ClipReader] | None
    if p.is_dir():
        factory = open_series_folder  # velocity mapping, else DicomSeriesReader
    elif not p.exists():
        raise ClipError("no such file or directory", path=p)
    else:
        factory = _REGISTRY.factory_for(p)
        if factory is None and is_dicom_file(p):
            factory = DicomClipReader
    if factory is None:
        raise ClipError(
            f"unknown clip format '{full_suffix(p) or '(no suffix)'}' "
            f"(readable: {', '.join(_REGISTRY.suffixes)}, a DICOM file or a DICOM series directory)",
            path=p,
        )
    return reading(p, lambda: factory(p, spacing_mm=spacing_mm, fps=fps, slice_index=slice_index))


def reading(path: Path, read: Callable[[], T]) -> T:
    """``read()``, with a reader library's own error turned into a :class:`ClipError` that
    names ``path`` ("unreadable: ...")."""
    try:
        return read()
    except ClipError:
        raise
    except Exception as exc:  # a reader's library error must not escape raw
        raise ClipError(f"unreadable: {type(exc).__name__}: {exc}", path=path) from exc


_WRITERS = {
    ".dcm": write_dicom,
    ".dicom": write_dicom,
    ".nii": write_nifti,
    ".nii.gz": write_nifti,
    ".npz": write_npz,
    ".avi": write_video,
    ".mp4": write_video,
}
WRITE_SUFFIXES = tuple(_WRITERS)


def read_frames(path: str | os.PathLike[str], **options) -> list[np.ndarray]:
    """Every frame of a clip, in order, as its pixel array (``open_clip(path, **options)``
    read to the end).  For callers that want the frames, not a stream: INT8 calibration
    (``cardiostream engines build --calibration-clip``)."""
    with open_clip(path, **options) as reader:
        return [frame.pixels for frame in reader]


def write_clip(
    path: str | os.PathLike[str],
    frames: np.ndarray,
    *,
    spacing_mm: tuple[float, float] | None,
    fps: float,
    modality: str = "US",
    metadata: dict | None = None,
    channels: Sequence[str] | None = None,
) -> Path:
    """Write ``frames`` ((T, rows, cols) or (T, rows, cols, C)) as a clip; returns the path.

    Format by suffix: ``.dcm`` (uncompressed multi-frame DICOM: uint8/uint16 grey, uint8 RGB;
    floats are refused, not scaled), ``.nii`` / ``.nii.gz`` (any numeric dtype, channels
    kept), ``.npz`` (any numeric dtype, channels kept), ``.avi`` (MJPG) / ``.mp4`` (mp4v),
    lossy, uint8 grey or RGB, no spacing/metadata.  ``spacing_mm`` is (row, col) mm per
    pixel or None when unknown; ``fps`` frames per second; ``metadata`` a JSON-serialisable
    dict.  :func:`open_clip` reads back the same frames (exactly for the lossless formats),
    spacing, fps, modality and metadata where the format holds them.  The file appears
    only once completely written.  Problems raise :class:`ClipError`.
    """
    p = Path(path)
    writer = _WRITERS.get(full_suffix(p))
    if writer is None:
        raise ClipError(
            f"cannot write '{full_suffix(p) or '(no suffix)'}' clips (writable: {', '.join(WRITE_SUFFIXES)})", path=p
        )
    if not p.parent.is_dir():
        raise ClipError(f"directory {p.parent} does not exist", path=p)
    args = validate_write_args(
        p, frames, spacing_mm=spacing_mm, fps=fps, modality=modality, metadata=metadata, channels=channels
    )
    writer(p, args)
    return p
