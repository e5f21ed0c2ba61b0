"""Short-axis stacks: slices x phases, each slice readable as an ordinary clip.

    stack = open_stack(path)             # a DICOM folder, a NIfTI 3-D/4-D file, an enhanced MR DICOM
    stack.info -> StackInfo              # stack id, slices (position, thickness, orientation), phases
    with stack.slice(k) as clip: ...     # a ClipReader of slice k; its frames are StackFrames
    source = open_input(path)            # what replay/analyze open: a StackReader or a ClipReader

Sources, each read by the clip reader that already reads one slice of it:

* a folder of single-frame DICOM (:mod:`.dicom_series`, one index for every slice): slices
  by SliceLocation, else the position of ImagePositionPatient along the slice normal;
  phases by TriggerTime, then InstanceNumber (the Sunnybrook layout);
* NIfTI (:mod:`.nifti`): 4-D (x, y, z, t) is z slices x t phases, the frame time from
  pixdim[4] and the time unit of xyzt_units (trigger time = phase x frame time); 3-D
  (x, y, z) is one phase of z slices (no trigger time); 5-D adds channels.  Slice K is the
  voxel index z.  Slice position and orientation come from the affine (RAS+) turned into
  DICOM's patient axes (LPS: x and y negated), the thickness from pixdim[3] (NIfTI has no
  separate slice thickness);
* an enhanced multi-frame MR DICOM file (:mod:`.dicom`, the frames of one slice selected):
  per-frame functional groups (else the shared ones) give PlanePositionSequence,
  PlaneOrientationSequence, PixelMeasuresSequence.SliceThickness and
  CardiacSynchronizationSequence.NominalCardiacTriggerDelayTime; slices by position along
  the normal, phases by trigger delay, then frame number.

Slices are numbered 0.. in increasing position (NIfTI: in voxel order).  Every frame of a
slice is a :class:`StackFrame`: a :class:`ClipFrame` that also carries its slice (index,
position and thickness in mm, ImageOrientationPatient) and its phase (index, trigger time
in ms after the R wave, DICOM InstanceNumber or -1).  The stack id is a short hash of the
series (SeriesInstanceUID) or of the file, never a patient identifier.

A stack that is not whole is refused with a :class:`ClipError` naming the file: a slice
with fewer phases than the others, images of different sizes, several series in one
folder, a NIfTI voxel size that is zero or not a number, or no slice positions.
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import TracebackType

import numpy as np
from pydicom.dataset import Dataset

from .base import ClipError, ClipFrame, ClipReader, full_suffix
from .dicom import (
    DicomClipReader,
    FrameSelection,
    frame_format,
    is_dicom_file,
    number,
    position_along_normal,
    read_header,
    vector,
)
from .dicom_series import (
    DicomSeriesReader,
    SeriesEntry,
    SeriesIndex,
    group_by_position,
    index_series,
    order_phases,
    same_format,
)
from .nifti import NiftiClipReader, NiftiGeometry
from .registry import open_clip, reading

__all__ = [
    "SliceClip",
    "SliceInfo",
    "StackFrame",
    "StackInfo",
    "StackReader",
    "open_input",
    "open_stack",
]

#: characters of the sha256 hex digest kept as a stack id
STACK_ID_CHARS = 16
#: NIfTI stack id: a hash of the file's size and its first bytes (header and first voxels)
_NIFTI_ID_BYTES = 1 << 20
_TRIGGER_DELAY = "NominalCardiacTriggerDelayTime"
#: RAS+ (NIfTI) -> LPS (DICOM patient axes)
_RAS_TO_LPS = np.array([-1.0, -1.0, 1.0])
#: the LV's long axis from base to apex in DICOM patient axes (LPS): the apex lies to the
#: patient's left, anterior and inferior of the base
APEX_LPS = np.array([1.0, -1.0, -1.0]) / math.sqrt(3.0)


def base_first(step_lps) -> bool | None:
    """Whether a short-axis stack's first slice is at the base of the heart: its step from
    the first slice to the last (a vector in patient axes, LPS) points apex-wards. None when
    the step is not known or lies nearly across the long axis (|cos| < 0.3: not a short-axis
    stack, or an unusual heart)."""
    if step_lps is None:
        return None
    v = np.asarray(step_lps, dtype=float)
    norm = float(np.linalg.norm(v))
    if not np.isfinite(norm) or norm == 0:
        return None
    cos = float(v @ APEX_LPS) / norm
    return None if abs(cos) < 0.3 else cos > 0


@dataclass(frozen=True)
class StackFrame(ClipFrame):
    """A frame of a stack's slice: the clip frame (``index`` = phase index) and where and when
    in the stack it lies."""

    slice_index: int
    slice_position_mm: float
    #: None when the file does not state it
    slice_thickness_mm: float | None
    phase_index: int
    #: ms after the R wave; None when the file gives no trigger time
    trigger_time_ms: float | None
    #: ImageOrientationPatient (row then column direction cosines, DICOM patient axes); None
    #: when the file does not state it
    orientation: tuple[float, ...] | None
    #: DICOM InstanceNumber of the image; -1 where it has none (NIfTI, enhanced-DICOM frames)
    instance_number: int


@dataclass(frozen=True)
class SliceInfo:
    """One slice of a stack: where it lies and its phases' times."""

    index: int
    position_mm: float
    thickness_mm: float | None
    orientation: tuple[float, ...] | None
    #: per phase, ms after the R wave (None where unknown)
    trigger_times_ms: tuple[float | None, ...]
    #: per phase, DICOM InstanceNumber or -1
    instance_numbers: tuple[int, ...]


@dataclass(frozen=True)
class StackInfo:
    """What a stack's files say about it, known before any pixels are decoded."""

    path: str
    #: "dicom-series" | "dicom-enhanced" | "nifti"
    format: str
    #: short hash of the series or file (no patient identifiers)
    stack_id: str
    n_slices: int
    n_phases: int
    #: per frame, as ClipInfo.shape / dtype
    shape: tuple[int, ...]
    dtype: str
    modality: str
    slices: tuple[SliceInfo, ...]
    #: JSON-serialisable extras: "stack_id_source", "slice_position_source", "warnings"
    metadata: dict = field(default_factory=dict)


class SliceClip(ClipReader):
    """Slice ``slice.index`` of a stack as an ordinary clip: ``info`` is the slice reader's,
    with :attr:`stack_fields` added to its metadata; frames are :class:`StackFrame`."""

    def __init__(self, inner: ClipReader, stack: StackInfo, slice_info: SliceInfo) -> None:
        self._inner = inner
        self.stack = stack
        self.slice = slice_info
        if inner.info.n_frames != stack.n_phases:
            inner.close()
            raise ClipError(f"slice {slice_info.index} reads as {inner.info.n_frames} frames, "
                            f"the stack has {stack.n_phases} phases", path=stack.path)
        #: which stack, which slice, where it lies (JSON values; the keys of a slice
        #: stream's ``start`` in docs/protocol.md)
        self.stack_fields = {
            "stack_id": stack.stack_id,
            "n_slices": stack.n_slices,
            "n_phases": stack.n_phases,
            "slice_index": slice_info.index,
            "slice_position_mm": slice_info.position_mm,
            "slice_thickness_mm": slice_info.thickness_mm,
            "image_orientation_patient": None if slice_info.orientation is None else list(slice_info.orientation),
            "base_first": stack.metadata.get("base_first"),
        }
        self.info = replace(inner.info, metadata={**inner.info.metadata, **self.stack_fields})

    def __iter__(self) -> Iterator[StackFrame]:
        s = self.slice
        for frame in self._inner:
            yield StackFrame(
                index=frame.index, pixels=frame.pixels, t_s=frame.t_s,
                slice_index=s.index, slice_position_mm=s.position_mm, slice_thickness_mm=s.thickness_mm,
                phase_index=frame.index, trigger_time_ms=s.trigger_times_ms[frame.index],
                orientation=s.orientation, instance_number=s.instance_numbers[frame.index],
            )

    def close(self) -> None:
        self._inner.close()


class StackReader:
    """A stack opened for reading slice by slice (:func:`open_stack` makes one).

    ``info`` is known at once; :meth:`slice` opens one slice as a clip (close it, or use it as
    a context manager).  Holds no open files itself.
    """

    def __init__(self, info: StackInfo, open_slice: Callable[[int], ClipReader]) -> None:
        self.info = info
        self._open_slice = open_slice

    def slice(self, index: int) -> SliceClip:
        """Slice ``index`` (0 .. n_slices - 1) as a clip of its phases."""
        if not 0 <= index < self.info.n_slices:
            raise ClipError(f"slice {index} is out of range: the stack has {self.info.n_slices} slices",
                            path=self.info.path)
        return SliceClip(self._open_slice(index), self.info, self.info.slices[index])

    def __len__(self) -> int:
        return self.info.n_slices

    def close(self) -> None:
        """Nothing to release (each slice clip holds its own files); for symmetry with clips."""

    def __enter__(self) -> StackReader:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def __repr__(self) -> str:
        i = self.info
        return (f"StackReader({i.path!r}, format={i.format}, stack_id={i.stack_id}, "
                f"n_slices={i.n_slices}, n_phases={i.n_phases}, shape={i.shape})")


# ---------------------------------------------------------------------------------------
# Opening
# ---------------------------------------------------------------------------------------
def open_stack(
    path: str | os.PathLike[str],
    *,
    spacing_mm: tuple[float, float] | None = None,
    fps: float | None = None,
) -> StackReader:
    """Open a short-axis stack: a folder of single-frame DICOM, a 3-D/4-D/5-D NIfTI, or an
    enhanced multi-frame MR DICOM file (see the module docstring).  ``spacing_mm`` and
    ``fps`` override what the files say, for every slice.  Any failure is a
    :class:`ClipError` that names the file."""
    p = Path(path)
    return reading(p, lambda: _open_stack(p, spacing_mm, fps))


def open_input(
    path: str | os.PathLike[str],
    *,
    spacing_mm: tuple[float, float] | None = None,
    fps: float | None = None,
    slice_index: int | None = None,
    stack: bool = False,
) -> ClipReader | StackReader:
    """What ``replay`` and ``analyze`` read: a stack where the input holds several slices,
    else the clip :func:`open_clip` gives (unchanged for echo, video and one-slice input).

    Several slices: a DICOM folder with several slice positions, a 4-D/5-D NIfTI with
    several z, an enhanced MR DICOM file with several plane positions.  ``slice_index``
    reads that one slice as a clip: the stack's :class:`SliceClip` (which knows the slice's
    place in the stack: its AHA level) where the input is a stack, else what
    :func:`open_clip` reads; where the stack cannot be read whole (another slice is
    broken), the slice alone, with a warning that it goes without its place in the stack.
    ``stack=True`` reads the input as a stack whatever it holds (a 3-D NIfTI then is one
    phase of z slices, not a cine).  The two cannot be combined.
    """
    p = Path(path)
    if slice_index is not None:
        if stack:
            raise ClipError("a slice index reads one slice as a clip; a stack is read whole: "
                            "give one or the other", path=p)
        try:
            whole = open_input(p, spacing_mm=spacing_mm, fps=fps)
        except ClipError as exc:
            alone = open_clip(p, spacing_mm=spacing_mm, fps=fps, slice_index=slice_index)
            warning = (f"the stack cannot be read whole ({exc}); slice {slice_index} goes "
                       "without its place in the stack (no AHA level)")
            meta = alone.info.metadata
            alone.info = replace(alone.info, metadata={
                **meta, "warnings": [*meta.get("warnings", []), warning]})
            return alone
        if isinstance(whole, StackReader):
            return whole.slice(slice_index)
        whole.close()
        return open_clip(p, spacing_mm=spacing_mm, fps=fps, slice_index=slice_index)
    if stack:
        return open_stack(p, spacing_mm=spacing_mm, fps=fps)
    if p.is_dir():
        from .dicom_series import read_series_headers
        from .velocity_series import VelocitySeriesReader, holds_velocity_mapping

        warnings: list[str] = []
        headers = reading(p, lambda: read_series_headers(p, warnings, one_series=False))
        if holds_velocity_mapping(headers):  # magnitude and phase series of one slice
            return reading(p, lambda: VelocitySeriesReader(
                p, spacing_mm=spacing_mm, fps=fps, headers=headers, header_warnings=warnings))
        index = reading(p, lambda: index_series(p, headers=headers, warnings=warnings))
        if len(index.slices) > 1:
            return reading(p, lambda: _series_stack(index, spacing_mm, fps))
        return reading(p, lambda: DicomSeriesReader(p, spacing_mm=spacing_mm, fps=fps, index=index))
    reader = open_clip(p, spacing_mm=spacing_mm, fps=fps)
    try:
        several = _holds_several_slices(reader, p)
    except BaseException:
        reader.close()
        raise
    if several:
        reader.close()
        return open_stack(p, spacing_mm=spacing_mm, fps=fps)
    return reader


def _holds_several_slices(reader: ClipReader, path: Path) -> bool:
    if isinstance(reader, NiftiClipReader):
        dims = reader.geometry.dims
        return len(dims) >= 4 and dims[2] > 1
    if isinstance(reader, DicomClipReader) and reader.info.modality == "MR" and reader.info.n_frames > 1:
        header = reading(path, lambda: _dicom_header(path))
        if "PerFrameFunctionalGroupsSequence" not in header:
            return False
        try:
            entries = _enhanced_entries(header, path)
        except ClipError:  # frames that do not all state their plane: a clip, as before
            return False   # (open_stack / --stack says why it is not a stack)
        return len(group_by_position(entries)) > 1
    return False


def _open_stack(path: Path, spacing_mm: tuple[float, float] | None, fps: float | None) -> StackReader:
    if path.is_dir():
        return _series_stack(index_series(path), spacing_mm, fps)
    if not path.exists():
        raise ClipError("no such file or directory", path=path)
    suffix = full_suffix(path)
    if suffix in (".nii", ".nii.gz"):
        return _nifti_stack(path, spacing_mm, fps)
    if suffix in (".dcm", ".dicom") or is_dicom_file(path):
        header = _dicom_header(path)
        if "PerFrameFunctionalGroupsSequence" in header:
            return _enhanced_stack(path, header, spacing_mm, fps)
    raise ClipError("cannot be read as a stack: a stack is a folder of single-frame DICOM, a NIfTI "
                    "file, or an enhanced multi-frame MR DICOM file (per-frame functional groups)",
                    path=path)


def _dicom_header(path: Path) -> Dataset:
    try:
        fh = open(path, "rb")
    except OSError as exc:
        raise ClipError(f"cannot open: {exc}", path=path) from exc
    with fh:
        return read_header(fh, path)


def _stack_id(key: bytes) -> str:
    return hashlib.sha256(key).hexdigest()[:STACK_ID_CHARS]


# ---------------------------------------------------------------------------------------
# DICOM: a folder of single-frame files, or an enhanced multi-frame file
# ---------------------------------------------------------------------------------------
def _series_stack(index: SeriesIndex, spacing_mm: tuple[float, float] | None, fps: float | None) -> StackReader:
    path = index.path
    if index.position_source == "none":
        raise ClipError("the images state no slice position (SliceLocation or ImagePositionPatient): "
                        "they cannot be ordered into a stack", path=path)
    slices = [s.phases for s in index.slices]
    fmt = same_format([e for phases in slices for e in phases], index, "images of the stack")
    first = index.headers[slices[0][0].path]
    series_uid = str(first.get("SeriesInstanceUID", "") or "")
    if series_uid:
        stack_id, id_source = _stack_id(series_uid.encode()), "SeriesInstanceUID"
    else:
        names = "\n".join(f"{p.name}:{p.stat().st_size}" for p in sorted(index.headers))
        stack_id, id_source = _stack_id(names.encode()), "file names and sizes"
    ends = [vector(index.headers[phases[0].path], "ImagePositionPatient", 3)
            for phases in (slices[0], slices[-1])]
    step = None if any(e is None for e in ends) or len(slices) < 2 else np.subtract(ends[1], ends[0])
    info = _entries_info(
        path, "dicom-series", slices, lambda e: e.path.name, stack_id=stack_id,
        shape=fmt.shape, dtype=fmt.dtype.name, modality=str(first.get("Modality") or "OT"),
        metadata={"stack_id_source": id_source, "slice_position_source": index.position_source,
                  "base_first": base_first(step), "warnings": list(index.warnings)},
    )
    return StackReader(info, lambda k: DicomSeriesReader(path, spacing_mm=spacing_mm, fps=fps,
                                                         slice_index=k, index=index))


def _functional_group(frame: Dataset, shared: Dataset | None, sequence: str) -> Dataset | None:
    """The first item of a functional group macro (e.g. PlanePositionSequence) of a frame:
    its per-frame item, else the shared one; None when neither has it."""
    for groups in (frame, shared):
        items = None if groups is None else groups.get(sequence)
        if items:
            return items[0]
    return None


def _enhanced_entries(header: Dataset, path: Path) -> list[SeriesEntry]:
    """Every frame of an enhanced multi-frame file as a series entry (position, orientation,
    thickness and trigger delay from its functional groups)."""
    n_frames = int(number(header, "NumberOfFrames") or 1)
    per_frame = header.get("PerFrameFunctionalGroupsSequence") or []
    if len(per_frame) != n_frames:
        raise ClipError(f"PerFrameFunctionalGroupsSequence has {len(per_frame)} items for "
                        f"{n_frames} frames", path=path)
    shared_items = header.get("SharedFunctionalGroupsSequence")
    shared = shared_items[0] if shared_items else None
    entries = []
    for i, frame in enumerate(per_frame):
        plane = _functional_group(frame, shared, "PlanePositionSequence")
        facing = _functional_group(frame, shared, "PlaneOrientationSequence")
        position = None if plane is None else vector(plane, "ImagePositionPatient", 3)
        orientation = None if facing is None else vector(facing, "ImageOrientationPatient", 6)
        if position is None or orientation is None:
            raise ClipError(f"frame {i} states no ImagePositionPatient and ImageOrientationPatient "
                            "(PlanePositionSequence, PlaneOrientationSequence): its slice is unknown",
                            path=path)
        measures = _functional_group(frame, shared, "PixelMeasuresSequence")
        thickness = None if measures is None else number(measures, "SliceThickness")
        cardiac = _functional_group(frame, shared, "CardiacSynchronizationSequence")
        entries.append(SeriesEntry(
            path=path, slice_pos_mm=position_along_normal(position, orientation),
            trigger_time_ms=None if cardiac is None else number(cardiac, _TRIGGER_DELAY),
            instance_number=-1, frame=i,
            slice_thickness_mm=thickness if thickness is not None and thickness > 0 else None,
            orientation=orientation))
    return entries


def _enhanced_stack(path: Path, header: Dataset, spacing_mm: tuple[float, float] | None,
                    fps: float | None) -> StackReader:
    fmt = frame_format(header, path)
    slices, warnings = [], []
    for group in group_by_position(_enhanced_entries(header, path)):
        phases, doubt = order_phases(group, f"{_TRIGGER_DELAY} missing: phases ordered by frame "
                                            "number, no timing from the file")
        slices.append(tuple(phases))
        if doubt is not None and doubt not in warnings:
            warnings.append(doubt)
    series_uid = str(header.get("SeriesInstanceUID", "") or "")
    key, id_source = (series_uid, "SeriesInstanceUID") if series_uid else \
        (str(header.get("SOPInstanceUID", "") or path.name), "SOPInstanceUID")
    info = _entries_info(
        path, "dicom-enhanced", slices, lambda e: f"frame {e.frame}", stack_id=_stack_id(key.encode()),
        shape=fmt.shape, dtype=fmt.dtype.name, modality=str(header.get("Modality") or "OT"),
        metadata={"stack_id_source": id_source, "slice_position_source": "PlanePositionSequence",
                  "warnings": warnings},
    )

    def open_slice(k: int) -> ClipReader:
        phases = slices[k]
        selection = FrameSelection(indices=tuple(e.frame for e in phases),
                                   trigger_times_ms=tuple(e.trigger_time_ms for e in phases),
                                   trigger_source=_TRIGGER_DELAY)
        return DicomClipReader(path, spacing_mm=spacing_mm, fps=fps, frames=selection)

    return StackReader(info, open_slice)


def _entries_info(
    path: Path, format_name: str, slices: Sequence[Sequence[SeriesEntry]], describe: Callable[[SeriesEntry], str],
    *, stack_id: str, shape: tuple[int, ...], dtype: str, modality: str, metadata: dict,
) -> StackInfo:
    """The stack info of DICOM images grouped into slices (each in phase order), after the
    checks that the stack is whole: every slice has every phase, no trigger time is negative."""
    n_phases = max(len(phases) for phases in slices)
    for k, phases in enumerate(slices):
        if len(phases) < n_phases:
            raise ClipError(_missing_phases(k, phases, slices, n_phases, describe), path=path)
        for entry in phases:
            if entry.trigger_time_ms is not None and entry.trigger_time_ms < 0:
                raise ClipError(f"{describe(entry)}: trigger time {entry.trigger_time_ms} ms is negative "
                                "(a time after the R wave)", path=path)
    infos = []
    for k, phases in enumerate(slices):
        thickness = {e.slice_thickness_mm for e in phases}
        if len(thickness) > 1:
            metadata["warnings"].append(f"slice {k}: SliceThickness differs between its images "
                                        f"({sorted(map(str, thickness))}); the first phase's is used")
        infos.append(SliceInfo(
            index=k, position_mm=float(phases[0].slice_pos_mm),  # type: ignore[arg-type]
            thickness_mm=phases[0].slice_thickness_mm, orientation=phases[0].orientation,
            trigger_times_ms=tuple(e.trigger_time_ms for e in phases),
            instance_numbers=tuple(e.instance_number for e in phases)))
    if not metadata["warnings"]:
        del metadata["warnings"]
    return StackInfo(path=str(path), format=format_name, stack_id=stack_id, n_slices=len(infos),
                     n_phases=n_phases, shape=shape, dtype=dtype, modality=modality,
                     slices=tuple(infos), metadata=metadata)


def _missing_phases(k: int, phases: Sequence[SeriesEntry], slices: Sequence[Sequence[SeriesEntry]],
                    n_phases: int, describe: Callable[[SeriesEntry], str]) -> str:
    """Why slice ``k`` is not whole, with the trigger times it lacks where they are known."""
    text = (f"slice {k} (at {phases[0].slice_pos_mm:g} mm; {describe(phases[0])} .. {describe(phases[-1])}) "
            f"has {len(phases)} phases where other slices have {n_phases}")
    whole = next(p for p in slices if len(p) == n_phases)
    times = [e.trigger_time_ms for e in (*whole, *phases)]
    if all(t is not None for t in times) and n_phases > 1:
        step_ms = float(np.median(np.diff([e.trigger_time_ms for e in whole])))
        missing = [e.trigger_time_ms for e in whole
                   if not any(abs(e.trigger_time_ms - p.trigger_time_ms) < step_ms / 2 for p in phases)]
        if missing:
            text += f": no image at trigger time {', '.join(f'{t:g}' for t in missing)} ms"
    return text + " (a stack needs every phase of every slice)"


# ---------------------------------------------------------------------------------------
# NIfTI
# ---------------------------------------------------------------------------------------
def _nifti_stack(path: Path, spacing_mm: tuple[float, float] | None, fps: float | None) -> StackReader:
    def open_slice(k: int) -> NiftiClipReader:
        return NiftiClipReader(path, spacing_mm=spacing_mm, fps=fps, slice_index=k, third_axis="slice")

    with open_slice(0) as first:
        geometry, clip = first.geometry, first.info
    dims = geometry.dims
    if len(dims) < 3:
        raise ClipError(f"a {len(dims)}-D NIfTI (shape {dims}) is one image, not a stack of slices", path=path)
    voxel_mm = geometry.voxel_mm
    if voxel_mm is None:
        raise ClipError(f"NIfTI spatial unit is '{geometry.space_unit}': the slice positions and thickness "
                        "cannot be stated in mm (set the header's xyzt_units, e.g. nibabel "
                        "header.set_xyzt_units('mm'))", path=path)
    if not all(math.isfinite(v) and v > 0 for v in voxel_mm):
        raise ClipError(f"voxel size pixdim[1:4] = {tuple(geometry.zooms[:3])} {geometry.space_unit}: a "
                        "voxel size that is zero, negative or not a number cannot place the slices",
                        path=path)
    n_phases = dims[3] if len(dims) >= 4 else 1
    frame_time_ms = geometry.frame_time_ms if len(dims) >= 4 else None
    trigger_times = tuple(None if frame_time_ms is None else p * frame_time_ms for p in range(n_phases))
    orientation, positions = _nifti_planes(geometry, path)
    step = np.asarray(geometry.affine, dtype=float)[:3, 2] * (dims[2] - 1) * _RAS_TO_LPS
    metadata: dict = {"stack_id_source": "file", "slice_position_source": "affine",
                      "base_first": base_first(step) if dims[2] > 1 else None}
    if clip.metadata.get("warnings"):
        metadata["warnings"] = list(clip.metadata["warnings"])
    info = StackInfo(
        path=str(path), format="nifti", stack_id=_nifti_id(path), n_slices=dims[2], n_phases=n_phases,
        shape=clip.shape, dtype=clip.dtype, modality=clip.modality,
        slices=tuple(SliceInfo(index=k, position_mm=positions[k], thickness_mm=voxel_mm[2],
                               orientation=orientation, trigger_times_ms=trigger_times,
                               instance_numbers=(-1,) * n_phases) for k in range(dims[2])),
        metadata=metadata,
    )
    return StackReader(info, open_slice)


def _nifti_planes(geometry: NiftiGeometry, path: Path) -> tuple[tuple[float, ...], list[float]]:
    """ImageOrientationPatient of the slices and each slice's position along their normal (mm),
    from the affine: a frame's columns run along voxel x, its rows along voxel y."""
    affine = np.asarray(geometry.affine, dtype=float)
    axes = affine[:3, :3]
    lengths = np.linalg.norm(axes, axis=0)
    if not np.all(np.isfinite(affine)) or not np.all(lengths > 0):
        raise ClipError(f"the affine {affine.round(6).tolist()} is degenerate: the slices cannot be placed",
                        path=path)
    row = axes[:, 0] / lengths[0] * _RAS_TO_LPS
    col = axes[:, 1] / lengths[1] * _RAS_TO_LPS
    orientation = tuple(float(v) for v in (*row, *col))
    positions = [position_along_normal((affine[:3, 2] * k + affine[:3, 3]) * _RAS_TO_LPS, orientation)
                 for k in range(geometry.dims[2])]
    return orientation, positions


def _nifti_id(path: Path) -> str:
    try:
        with open(path, "rb") as fh:
            head = fh.read(_NIFTI_ID_BYTES)
            size = os.fstat(fh.fileno()).st_size
    except OSError as exc:
        raise ClipError(f"cannot open: {exc}", path=path) from exc
    return _stack_id(f"{size}:".encode() + head)
