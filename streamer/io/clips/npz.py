"""NumPy ``.npz`` clips: streamed frame by frame straight out of the zip.

Layout (what :func:`write_npz` writes and :class:`NpzClipReader` reads):

=================  ===========================================  ===========
key                content                                      required
=================  ===========================================  ===========
``frames``         (T, rows, cols) or (T, rows, cols, C) array   yes
``spacing_mm``     (row_mm, col_mm) float                        no
``fps``            frames per second, scalar                     no
``modality``       "US" | "MR" | ...  (0-d string)               no ("OT")
``channels``       names of the last axis (1-d strings)          no
``metadata_json``  JSON object (0-d string)                      no
=================  ===========================================  ===========

The ``frames`` member is never loaded whole: the reader opens it inside the zip
(stored or deflated, as written by ``np.savez`` / ``np.savez_compressed``), parses the
``.npy`` header with :mod:`numpy.lib.format` and reads one frame's bytes at a time.
"""

from __future__ import annotations

import json
import math
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import numpy as np
from numpy.lib import format as npy_format

from .base import (
    ClipError,
    ClipFrame,
    ClipInfo,
    ClipReader,
    FrameClock,
    WriteArgs,
    apply_overrides,
    atomic_output,
    check_fps,
    check_spacing,
    merge_metadata,
    native_dtype_name,
    native_frame,
)

__all__ = ["NpzClipReader", "write_npz"]

_FRAMES = "frames.npy"
# Errors a damaged zip member can raise while it is being read.
_READ_ERRORS = (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError)


class NpzClipReader(ClipReader):
    """Reader for ``.npz`` clips (see the module docstring for the keys)."""

    def __init__(
        self,
        path: Path,
        *,
        spacing_mm: tuple[float, float] | None = None,
        fps: float | None = None,
        slice_index: int | None = None,
    ) -> None:
        self._path = Path(path)
        if slice_index not in (None, 0):
            raise ClipError(f"slice_index={slice_index} given, but an npz clip has one slice", path=path)
        try:
            self._zip = zipfile.ZipFile(self._path)
        except FileNotFoundError as exc:
            raise ClipError("no such file", path=path) from exc
        except (zipfile.BadZipFile, OSError, EOFError) as exc:
            raise ClipError(f"truncated or corrupt npz (not a readable zip archive: {exc})", path=path) from exc
        try:
            self.info, self._clock, self._fortran = self._read_info(spacing_mm, fps)
        except BaseException:
            self._zip.close()
            raise

    # -- header ---------------------------------------------------------------------------
    def _read_info(
        self, spacing_override: tuple[float, float] | None, fps_override: float | None
    ) -> tuple[ClipInfo, FrameClock, bool]:
        names = set(self._zip.namelist())
        if _FRAMES not in names:
            keys = sorted(n.removesuffix(".npy") for n in names)
            raise ClipError(f"npz has no 'frames' array (keys: {keys})", path=self._path)
        with self._open_member(_FRAMES) as fh:
            shape, fortran, dtype, data_offset = self._read_npy_header(fh, "frames")
        if len(shape) not in (3, 4) or min(shape) < 1:
            raise ClipError(f"'frames' must be (T, rows, cols[, C]) and non-empty, got shape {shape}", path=self._path)
        frame_bytes = math.prod(shape[1:]) * dtype.itemsize
        declared = self._zip.getinfo(_FRAMES).file_size - data_offset
        if declared < shape[0] * frame_bytes:
            raise ClipError(
                f"truncated: 'frames' declares {shape[0]} frames but the member holds {declared // frame_bytes}",
                path=self._path,
            )

        warnings: list[str] = []
        metadata: dict[str, Any] = {}
        spacing = None
        if "spacing_mm.npy" in names:
            spacing = check_spacing(self._small("spacing_mm").ravel().tolist(), self._path)
            metadata["calibration_source"] = "npz:spacing_mm"
        fps = None
        if "fps.npy" in names:
            fps = check_fps(self._small("fps").item(), self._path)
            metadata["fps_source"] = "npz:fps"
            metadata["frame_time_ms"] = 1000.0 / fps
        modality = str(self._small("modality").item()) if "modality.npy" in names else "OT"
        channels = None
        if "channels.npy" in names:
            channels = tuple(str(c) for c in self._small("channels").ravel().tolist())
            if len(shape) != 4 or len(channels) != shape[3]:
                raise ClipError(f"channels {channels} do not match the frames' shape {shape}", path=self._path)
        user: dict[str, Any] = {}
        if "metadata_json.npy" in names:
            text = str(self._small("metadata_json").item())
            try:
                user = json.loads(text)
            except json.JSONDecodeError as exc:
                raise ClipError(f"metadata_json is not valid JSON: {exc}", path=self._path) from exc
            if not isinstance(user, dict):
                raise ClipError("metadata_json must hold a JSON object", path=self._path)
        if fortran:
            warnings.append("frames are stored in Fortran order: the whole array is loaded to read it")
        if warnings:
            metadata["warnings"] = warnings

        spacing, fps, clock = apply_overrides(
            spacing_file=spacing,
            fps_file=fps,
            clock_file=FrameClock(fps=fps),
            spacing_override=spacing_override,
            fps_override=fps_override,
            metadata=metadata,
            path=self._path,
        )
        info = ClipInfo(
            path=str(self._path),
            format="npz",
            n_frames=int(shape[0]),
            shape=tuple(int(s) for s in shape[1:]),
            dtype=native_dtype_name(dtype),
            modality=modality,
            spacing_mm=spacing,
            fps=fps,
            channels=channels,
            metadata=merge_metadata(user, metadata),
        )
        return info, clock, fortran

    def _open_member(self, name: str) -> IO[bytes]:
        try:
            return self._zip.open(name)
        except _READ_ERRORS as exc:
            raise ClipError(f"truncated or corrupt member {name!r}: {exc}", path=self._path) from exc

    def _read_npy_header(self, fh: IO[bytes], key: str) -> tuple[tuple[int, ...], bool, np.dtype, int]:
        """Parse a .npy header; returns (shape, fortran_order, dtype, offset of the data)."""
        try:
            version = npy_format.read_magic(fh)
            if version == (1, 0):
                shape, fortran, dtype = npy_format.read_array_header_1_0(fh)
            elif version == (2, 0):
                shape, fortran, dtype = npy_format.read_array_header_2_0(fh)
            else:
                raise ClipError(f"'{key}' uses .npy format version {version}, which is not supported", path=self._path)
        except ClipError:
            raise
        except _READ_ERRORS as exc:
            raise ClipError(f"truncated or corrupt '{key}' array header: {exc}", path=self._path) from exc
        if dtype.hasobject or dtype.fields is not None or dtype.kind not in "buif":
            raise ClipError(f"'{key}' has dtype {dtype}; only plain numeric arrays are read", path=self._path)
        return tuple(shape), bool(fortran), dtype, fh.tell()

    def _small(self, key: str) -> np.ndarray:
        """Load a small side array (spacing, fps, names, JSON) without pickles."""
        try:
            with self._zip.open(f"{key}.npy") as fh:
                return npy_format.read_array(fh, allow_pickle=False)
        except _READ_ERRORS as exc:
            raise ClipError(f"cannot read '{key}' ({exc})", path=self._path) from exc

    # -- frames ---------------------------------------------------------------------------
    def __iter__(self) -> Iterator[ClipFrame]:
        if self._zip.fp is None:
            raise ClipError("reader is closed", path=self._path)
        if self._fortran:
            yield from self._iter_fortran()
            return
        shape = self.info.shape
        with self._open_member(_FRAMES) as fh:
            _, _, dtype, _ = self._read_npy_header(fh, "frames")
            frame_bytes = math.prod(shape) * dtype.itemsize
            for index in range(self.info.n_frames):
                try:
                    raw = fh.read(frame_bytes)
                except _READ_ERRORS as exc:
                    raise ClipError(f"truncated or corrupt: frame {index} cannot be read ({exc})", path=self._path) from exc
                if len(raw) != frame_bytes:
                    raise ClipError(
                        f"truncated: declares {self.info.n_frames} frames, decoded {index}", path=self._path
                    )
                pixels = np.frombuffer(raw, dtype=dtype).reshape(shape)
                if dtype.byteorder not in ("=", "|"):
                    pixels = native_frame(pixels)
                else:
                    pixels = pixels.copy()  # own, writeable memory; `raw` is dropped
                yield ClipFrame(index=index, pixels=pixels, t_s=self._clock.t_s(index))

    def _iter_fortran(self) -> Iterator[ClipFrame]:
        with self._open_member(_FRAMES) as fh:
            try:
                whole = npy_format.read_array(fh, allow_pickle=False)
            except _READ_ERRORS as exc:
                raise ClipError(f"truncated or corrupt 'frames': {exc}", path=self._path) from exc
        for index in range(self.info.n_frames):
            yield ClipFrame(index=index, pixels=native_frame(whole[index]), t_s=self._clock.t_s(index))

    def close(self) -> None:
        self._zip.close()


def write_npz(path: Path, args: WriteArgs) -> None:
    """Write an ``.npz`` clip (deflate-compressed; all values exact, NaN kept).

    ``frames`` keep their dtype; ``fps`` is stored as float64 frames per second and
    ``spacing_mm`` (when known) as float64 (row_mm, col_mm).
    """
    arrays: dict[str, np.ndarray] = {
        "frames": args.frames,
        "fps": np.float64(args.fps),
        "modality": np.str_(args.modality),
        "metadata_json": np.str_(args.metadata_json),
    }
    if args.spacing_mm is not None:
        arrays["spacing_mm"] = np.asarray(args.spacing_mm, dtype=np.float64)
    if args.channels is not None:
        arrays["channels"] = np.asarray(args.channels, dtype=np.str_)
    with atomic_output(path) as tmp, tmp.open("wb") as fh:
        np.savez_compressed(fh, **arrays)
