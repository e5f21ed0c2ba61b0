"""DICOM series directories: one image per file, read as the cine of one slice.

Typical source: short-axis cine MR exported slice by slice (e.g. the Sunnybrook data:
12 slices x 20 phases, one file each).  Only headers are read to index the directory
(``stop_before_pixels``, :func:`index_series`); files are grouped into slices by
SliceLocation (else by the position of ImagePositionPatient along the slice normal),
phases are ordered by TriggerTime then InstanceNumber, and each frame's pixels are read
when it is reached.  Frame rate from the TriggerTime spacing (ms), ``t_s`` from the
trigger times themselves.  Pixel decoding, calibration and metadata are shared with
:mod:`.dicom`; the whole stack (every slice) is read by :mod:`.stack` from the same index.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import UID

from .base import (
    ClipError,
    ClipFrame,
    ClipInfo,
    ClipReader,
    apply_overrides,
    check_frame,
    merge_metadata,
)
from .dicom import (
    HEADER_ERRORS,
    FrameFormat,
    check_pixel_data,
    common_metadata,
    decoded_frames,
    frame_format,
    header_spacing,
    number,
    pair,
    position_along_normal,
    read_header,
    trigger_timing,
    user_metadata,
    vector,
)

__all__ = ["DicomSeriesReader", "SeriesEntry", "SeriesIndex", "SeriesSlice", "group_by_position",
           "index_series", "order_phases", "read_series_headers", "same_format"]

#: Slice positions closer than this (mm) are the same slice.
SLICE_TOLERANCE_MM = 0.01


@dataclass(frozen=True)
class SeriesEntry:
    """One image of a series as indexed from its header: a file, or one frame of a
    multi-frame file (``frame``)."""

    path: Path
    slice_pos_mm: float | None
    trigger_time_ms: float | None
    #: InstanceNumber; -1 when the image has none of its own
    instance_number: int
    #: 0-based frame number in its file (0 for a single-frame file)
    frame: int = 0
    #: SliceThickness, mm; None when not stated
    slice_thickness_mm: float | None = None
    #: ImageOrientationPatient: row then column direction cosines (6 values); None when not stated
    orientation: tuple[float, ...] | None = None


@dataclass(frozen=True)
class SeriesSlice:
    """The images of one slice position, in phase order."""

    position_mm: float | None
    phases: tuple[SeriesEntry, ...]
    #: what is doubtful about the phase order (e.g. TriggerTime missing)
    warnings: tuple[str, ...]


@dataclass(frozen=True, eq=False)
class SeriesIndex:
    """A series directory indexed from its headers (no pixels read)."""

    path: Path
    headers: dict[Path, Dataset]
    #: in increasing slice position
    slices: tuple[SeriesSlice, ...]
    #: "SliceLocation", "ImagePositionPatient" (either, joined by " / "), or "none"
    position_source: str
    #: about the directory as a whole (skipped files, no positions)
    warnings: tuple[str, ...]


def _slice_position(header: Dataset) -> tuple[float | None, str]:
    """Position of the image's plane in mm, and where it came from."""
    location = number(header, "SliceLocation")
    if location is not None:
        return location, "SliceLocation"
    position = vector(header, "ImagePositionPatient", 3)
    orientation = vector(header, "ImageOrientationPatient", 6)
    if position is None or orientation is None:
        return None, "none"
    return position_along_normal(position, orientation), "ImagePositionPatient"


def group_by_position(entries: Iterable[SeriesEntry]) -> list[list[SeriesEntry]]:
    """Entries (each with a position) grouped into slices, in increasing position; positions
    within :data:`SLICE_TOLERANCE_MM` of a slice's first are that slice."""
    slices: list[list[SeriesEntry]] = []
    for entry in sorted(entries, key=lambda e: e.slice_pos_mm):  # type: ignore[arg-type, return-value]
        gap_mm = entry.slice_pos_mm - slices[-1][0].slice_pos_mm if slices else None  # type: ignore[operator]
        if gap_mm is not None and abs(gap_mm) <= SLICE_TOLERANCE_MM:
            slices[-1].append(entry)
        else:
            slices.append([entry])
    return slices


def order_phases(entries: Iterable[SeriesEntry], without_times: str) -> tuple[list[SeriesEntry], str | None]:
    """One slice's images in phase order: by trigger time, then InstanceNumber and frame
    number; where a trigger time is missing by InstanceNumber, file name and frame number,
    with the warning ``without_times``."""
    entries = list(entries)
    if all(e.trigger_time_ms is not None for e in entries):
        return sorted(entries, key=lambda e: (e.trigger_time_ms, e.instance_number, e.frame)), None
    return sorted(entries, key=lambda e: (e.instance_number, e.path.name, e.frame)), without_times


def same_format(entries: Sequence[SeriesEntry], index: SeriesIndex, what: str) -> FrameFormat:
    """The frame format the images ``entries`` share; a :class:`ClipError` that names two
    files when their sizes or pixel types differ (``what`` says which images they are)."""
    first = entries[0].path
    fmt = frame_format(index.headers[first], first)
    for entry in entries[1:]:
        other = frame_format(index.headers[entry.path], entry.path)
        if other.shape != fmt.shape or other.dtype != fmt.dtype:
            raise ClipError(
                f"{what} differ: {first.name} is {fmt.shape} {fmt.dtype}, "
                f"{entry.path.name} is {other.shape} {other.dtype}",
                path=index.path,
            )
    return fmt


def _entry(file: Path, header: Dataset) -> tuple[SeriesEntry, str]:
    position, source = _slice_position(header)
    instance = number(header, "InstanceNumber")
    thickness = number(header, "SliceThickness")
    return SeriesEntry(
        path=file,
        slice_pos_mm=position,
        trigger_time_ms=number(header, "TriggerTime"),
        instance_number=-1 if instance is None else int(instance),
        slice_thickness_mm=thickness if thickness is not None and thickness > 0 else None,
        orientation=vector(header, "ImageOrientationPatient", 6),
    ), source


def index_series(
    path: Path,
    *,
    headers: Sequence[tuple[Path, Dataset]] | None = None,
    warnings: Sequence[str] = (),
) -> SeriesIndex:
    """Index a directory of single-image DICOM files (headers only) into slices and phases.

    ``headers`` (with the ``warnings`` of reading them): the directory's headers as
    :func:`read_series_headers` read them, when the caller has them already (the folder
    dispatch of :func:`.velocity_series.open_series_folder`).

    Raises :class:`ClipError` (naming the directory or the file) for a missing directory,
    no DICOM images, a multi-frame file, a truncated header, or several series mixed.
    """
    path = Path(path)
    warnings = list(warnings)
    if headers is None:
        headers = _read_headers(path, warnings)
    else:
        headers = list(headers)
        _check_one_series(path, headers)
    entries, groups, sources = slice_groups(path, headers, warnings)
    slices = []
    for group in groups:
        phases, doubt = order_phases(group, "TriggerTime missing: phases ordered by InstanceNumber, "
                                            "no timing from the files")
        slices.append(SeriesSlice(position_mm=phases[0].slice_pos_mm, phases=tuple(phases),
                                  warnings=() if doubt is None else (doubt,)))
    return SeriesIndex(path=path, headers=dict(headers), slices=tuple(slices),
                       position_source=" / ".join(sorted(sources)), warnings=tuple(warnings))


def slice_groups(path: Path, headers: Sequence[tuple[Path, Dataset]], warnings: list[str]
                 ) -> tuple[list[SeriesEntry], list[list[SeriesEntry]], set[str]]:
    """The directory's images as :class:`SeriesEntry` (in ``headers``' order), grouped by
    slice position (:func:`group_by_position`; one group, with a warning, where no file
    states a position), and where the positions came from. A mix of files with and without
    a position is a :class:`ClipError`."""
    entries, sources = [], set()
    for file, header in headers:
        entry, source = _entry(file, header)
        entries.append(entry)
        sources.add(source)
    if "none" not in sources:
        return entries, group_by_position(entries), sources
    if len(sources) > 1:
        raise ClipError("some files state a slice position and others do not", path=path)
    warnings.append("no SliceLocation or ImagePositionPatient: all files are taken as one slice")
    return entries, [entries], sources


def _read_headers(path: Path, warnings: list[str], *, one_series: bool = True) -> list[tuple[Path, Dataset]]:
    """Headers (no pixels) of every DICOM image file directly in the directory; with
    ``one_series`` a :class:`ClipError` where they belong to several series."""
    if not path.is_dir():
        raise ClipError("no such directory", path=path)
    headers: list[tuple[Path, Dataset]] = []
    skipped: list[str] = []
    for file in sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith(".")):
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
                path=path,
            )
        headers.append((file, header))
    if skipped:
        shown = ", ".join(skipped[:5]) + (" ..." if len(skipped) > 5 else "")
        warnings.append(f"{len(skipped)} file(s) that are not DICOM images were skipped: {shown}")
    if not headers:
        raise ClipError("directory holds no DICOM image files", path=path)
    if one_series:
        _check_one_series(path, headers)
    return headers


#: the headers of a directory's DICOM images, several series allowed (``one_series=False``):
#: the velocity-mapping folders of :mod:`.velocity_series` hold a magnitude and phase series
read_series_headers = _read_headers


def _check_one_series(path: Path, headers: Sequence[tuple[Path, Dataset]]) -> None:
    """A :class:`ClipError` where the images belong to several series."""
    first_file: dict[str, str] = {}
    for file, header in headers:
        first_file.setdefault(str(header.get("SeriesInstanceUID", "")), file.name)
    if len(first_file) > 1:
        shown = ", ".join(f"{uid or '(none)'} from {name}" for uid, name in list(first_file.items())[:3])
        raise ClipError(
            f"directory mixes {len(first_file)} series ({shown}{' ...' if len(first_file) > 3 else ''}); "
            "point at a directory with one series",
            path=path,
        )


class DicomSeriesReader(ClipReader):
    """A directory of single-image DICOM files, read as the cine of one slice.

    ``slice_index`` counts slices in increasing slice position (mm); default the middle
    slice, ``n_slices // 2``.  ``t_s`` is the TriggerTime relative to the first phase.
    ``index``: the directory's :func:`index_series`, when the caller has it already (the
    stack reader opens every slice from one index).
    """

    SLICE_TOLERANCE_MM = SLICE_TOLERANCE_MM

    def __init__(
        self,
        path: Path,
        *,
        spacing_mm: tuple[float, float] | None = None,
        fps: float | None = None,
        slice_index: int | None = None,
        index: SeriesIndex | None = None,
    ) -> None:
        self._path = Path(path)
        self._closed = False
        index = index_series(self._path) if index is None else index
        n_slices = len(index.slices)
        chosen = n_slices // 2 if slice_index is None else slice_index
        if not 0 <= chosen < n_slices:
            raise ClipError(f"slice_index {slice_index} is out of range: the series has {n_slices} slices", path=path)
        warnings = [*index.warnings, *index.slices[chosen].warnings]
        phases = index.slices[chosen].phases
        self._files = tuple(e.path for e in phases)

        by_path = index.headers
        first = by_path[phases[0].path]
        self._fmt = same_format(phases, index, "images of one slice")

        metadata = common_metadata(first, self._fmt)
        metadata.update(
            n_slices=n_slices,
            slice_index=chosen,
            slice_position_mm=phases[0].slice_pos_mm,
            slice_positions_mm=[s.position_mm for s in index.slices],
            slice_position_source=index.position_source,
            files=[p.name for p in self._files],
        )
        spacing = header_spacing(first, self._fmt, metadata, warnings)
        spacings = {pair(by_path[e.path], "PixelSpacing") for e in phases}
        if len(spacings) > 1:
            warnings.append(f"PixelSpacing differs between the images of the slice: {sorted(map(str, spacings))}")
        fps_file, clock = trigger_timing([e.trigger_time_ms for e in phases], metadata, warnings)
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
