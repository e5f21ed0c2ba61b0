"""DICOM series directories: one image per file, read as the cine of one slice.

Typical source: short-axis cine MR exported slice by slice (e.g. the Sunnybrook data:
12 slices x 20 phases, one file each).  Only headers are read to index the directory
(``stop_before_pixels``); files are grouped into slices by SliceLocation (else by the
position of ImagePositionPatient along the slice normal), phases are ordered by
TriggerTime then InstanceNumber, and each frame's pixels are read when it is reached.
Frame rate from the TriggerTime spacing (ms), ``t_s`` from the trigger times themselves.
Pixel decoding, calibration and metadata are shared with :mod:`.dicom`.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import UID

from .base import (
    ClipError,
    ClipFrame,
    ClipInfo,
    ClipReader,
    FrameClock,
    apply_overrides,
    check_frame,
    merge_metadata,
)
from .dicom import (
    HEADER_ERRORS,
    check_pixel_data,
    common_metadata,
    decoded_frames,
    frame_format,
    header_spacing,
    number,
    pair,
    read_header,
    user_metadata,
)

__all__ = ["DicomSeriesReader"]


@dataclass(frozen=True)
class _SeriesEntry:
    """One file of the series, as indexed from its header."""

    path: Path
    slice_pos_mm: float | None
    trigger_time_ms: float | None
    instance: int


def _slice_position(header: Dataset) -> tuple[float | None, str]:
    """Position of the image's plane in mm, and where it came from."""
    location = number(header, "SliceLocation")
    if location is not None:
        return location, "SliceLocation"
    try:
        position = np.asarray([float(v) for v in header.ImagePositionPatient])
        orientation = np.asarray([float(v) for v in header.ImageOrientationPatient])
    except (AttributeError, TypeError, ValueError):
        return None, "none"
    if position.size != 3 or orientation.size != 6:
        return None, "none"
    normal = np.cross(orientation[:3], orientation[3:])
    return float(position @ normal), "ImagePositionPatient"


class DicomSeriesReader(ClipReader):
    """A directory of single-image DICOM files, read as the cine of one slice.

    ``slice_index`` counts slices in increasing slice position (mm); default the middle
    slice, ``n_slices // 2``.  ``t_s`` is the TriggerTime relative to the first phase.
    """

    #: Slice positions closer than this (mm) are the same slice.
    SLICE_TOLERANCE_MM = 0.01

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
        warnings: list[str] = []
        headers = self._index(warnings)
        entries, sources = [], set()
        for file, header in headers:
            position, source = _slice_position(header)
            sources.add(source)
            entries.append(
                _SeriesEntry(
                    path=file,
                    slice_pos_mm=position,
                    trigger_time_ms=number(header, "TriggerTime"),
                    instance=int(number(header, "InstanceNumber") or 0),
                )
            )
        slices = self._group_slices(entries, sources, warnings)
        n_slices = len(slices)
        chosen = n_slices // 2 if slice_index is None else slice_index
        if not 0 <= chosen < n_slices:
            raise ClipError(f"slice_index {slice_index} is out of range: the series has {n_slices} slices", path=path)
        phases = self._order_phases(slices[chosen], warnings)
        self._files = tuple(e.path for e in phases)

        by_path = dict(headers)
        first = by_path[phases[0].path]
        self._fmt = frame_format(first, phases[0].path)
        for entry in phases[1:]:
            other = frame_format(by_path[entry.path], entry.path)
            if other.shape != self._fmt.shape or other.dtype != self._fmt.dtype:
                raise ClipError(
                    f"images of one slice differ: {phases[0].path.name} is {self._fmt.shape} {self._fmt.dtype}, "
                    f"{entry.path.name} is {other.shape} {other.dtype}",
                    path=path,
                )

        metadata = common_metadata(first, self._fmt)
        metadata.update(
            n_slices=n_slices,
            slice_index=chosen,
            slice_position_mm=phases[0].slice_pos_mm,
            slice_positions_mm=[s[0].slice_pos_mm for s in slices],
            slice_position_source=" / ".join(sorted(sources)),
            files=[p.name for p in self._files],
        )
        spacing = header_spacing(first, self._fmt, metadata, warnings)
        spacings = {pair(by_path[e.path], "PixelSpacing") for e in phases}
        if len(spacings) > 1:
            warnings.append(f"PixelSpacing differs between the images of the slice: {sorted(map(str, spacings))}")
        fps_file, clock = self._trigger_timing(phases, metadata, warnings)
        spacing, fps_value, self._clock = apply_overrides(
            spacing_file=spacing,
            fps_file=fps_file,
            clock_file=clock,
            spacing_override=spacing_mm,
            fps_override=fps,
            metadata=metadata,
            path=self._path,
        )
        if warnings:
            metadata["warnings"] = warnings
        self.info = ClipInfo(
            path=str(self._path),
            format="dicom-series",
            n_frames=len(phases),
            shape=self._fmt.shape,
            dtype=self._fmt.dtype.name,
            modality=str(first.get("Modality") or "OT"),
            spacing_mm=spacing,
            fps=fps_value,
            channels=None,
            metadata=merge_metadata(user_metadata(first, warnings), metadata),
        )

    def _index(self, warnings: list[str]) -> list[tuple[Path, Dataset]]:
        """Headers (no pixels) of every DICOM image file directly in the directory."""
        if not self._path.is_dir():
            raise ClipError("no such directory", path=self._path)
        headers: list[tuple[Path, Dataset]] = []
        skipped: list[str] = []
        for file in sorted(p for p in self._path.iterdir() if p.is_file() and not p.name.startswith(".")):
            try:
                with open(file, "rb") as fh:
                    header = pydicom.dcmread(fh, stop_before_pixels=True)
                    ends_in_header = fh.tell() >= os.fstat(fh.fileno()).st_size
            except InvalidDicomError:
                skipped.append(file.name)
                continue
            except HEADER_ERRORS as exc:
                raise ClipError(f"truncated or corrupt header: {type(exc).__name__}: {exc}", path=file) from exc
            if header.get("Rows") is None or ends_in_header:
                meta = getattr(header, "file_meta", Dataset())
                sop = UID(str(header.get("SOPClassUID") or meta.get("MediaStorageSOPClassUID") or ""))
                if header.get("Rows") is not None or "Image Storage" in sop.name:
                    raise ClipError("truncated: the file ends inside the header, before any pixel data", path=file)
                skipped.append(file.name)  # DICOMDIR, structured reports, ...
                continue
            if int(number(header, "NumberOfFrames") or 1) > 1:
                raise ClipError(
                    f"{file.name} is a multi-frame file; a series directory holds one image per file "
                    "(open the file itself instead)",
                    path=self._path,
                )
            headers.append((file, header))
        if skipped:
            shown = ", ".join(skipped[:5]) + (" ..." if len(skipped) > 5 else "")
            warnings.append(f"{len(skipped)} file(s) that are not DICOM images were skipped: {shown}")
        if not headers:
            raise ClipError("directory holds no DICOM image files", path=self._path)
        series = {str(h.get("SeriesInstanceUID", "")) for _, h in headers}
        if len(series) > 1:
            raise ClipError(
                f"directory mixes {len(series)} series ({', '.join(sorted(series)[:3])} ...); "
                "point at a directory with one series",
                path=self._path,
            )
        return headers

    def _group_slices(
        self, entries: list[_SeriesEntry], sources: set[str], warnings: list[str]
    ) -> list[list[_SeriesEntry]]:
        """Slices in increasing position; files without a position form one slice (with a warning)."""
        if "none" in sources:
            if len(sources) > 1:
                raise ClipError("some files state a slice position and others do not", path=self._path)
            warnings.append("no SliceLocation or ImagePositionPatient: all files are taken as one slice")
            return [entries]
        slices: list[list[_SeriesEntry]] = []
        for entry in sorted(entries, key=lambda e: e.slice_pos_mm):  # type: ignore[arg-type, return-value]
            gap_mm = entry.slice_pos_mm - slices[-1][0].slice_pos_mm if slices else None  # type: ignore[operator]
            if gap_mm is not None and abs(gap_mm) <= self.SLICE_TOLERANCE_MM:
                slices[-1].append(entry)
            else:
                slices.append([entry])
        return slices

    def _order_phases(self, entries: list[_SeriesEntry], warnings: list[str]) -> list[_SeriesEntry]:
        if all(e.trigger_time_ms is not None for e in entries):
            return sorted(entries, key=lambda e: (e.trigger_time_ms, e.instance))
        warnings.append("TriggerTime missing: phases ordered by InstanceNumber, no timing from the files")
        return sorted(entries, key=lambda e: (e.instance, e.path.name))

    @staticmethod
    def _trigger_timing(
        phases: list[_SeriesEntry], metadata: dict[str, Any], warnings: list[str]
    ) -> tuple[float | None, FrameClock]:
        times = [e.trigger_time_ms for e in phases]
        if len(phases) < 2 or any(t is None for t in times):
            return None, FrameClock(fps=None)
        steps = np.diff(np.asarray(times, dtype=float))
        if np.any(steps <= 0):
            warnings.append("repeated TriggerTime values within the slice; no frame rate from the files")
            return None, FrameClock(fps=None)
        step_ms = float(np.median(steps))
        if np.ptp(steps) > 0.05 * step_ms:
            warnings.append(f"TriggerTime steps are uneven ({steps.min():.3f}..{steps.max():.3f} ms)")
        metadata["fps_source"] = "TriggerTime"
        metadata["frame_time_ms"] = step_ms
        metadata["trigger_times_ms"] = [float(t) for t in times]  # type: ignore[arg-type]
        t0 = float(times[0])  # type: ignore[arg-type]
        times_s = tuple((float(t) - t0) / 1000.0 for t in times)  # type: ignore[arg-type]
        return 1000.0 / step_ms, FrameClock(fps=1000.0 / step_ms, times_s=times_s)

    def __iter__(self) -> Iterator[ClipFrame]:
        if self._closed:
            raise ClipError("reader is closed", path=self._path)
        for index, file in enumerate(self._files):
            try:
                fh = open(file, "rb")
            except OSError as exc:
                raise ClipError(f"cannot open {file.name}: {exc}", path=self._path) from exc
            with fh:
                header = read_header(fh, file)
                fmt = frame_format(header, file)
                check_pixel_data(fh, header, fmt, 1, file)
                (arr,) = decoded_frames(fh, fmt, 1, file)
            yield ClipFrame(index=index, pixels=check_frame(arr, self.info, index), t_s=self._clock.t_s(index))

    def close(self) -> None:
        self._closed = True
