"""Myocardial velocity mapping (tissue phase mapping) from a folder of single-frame MR DICOM.

Scanners export a velocity-mapping cine of one slice as separate series in one folder: a
magnitude series and phase series for three encoded directions (three series, or one whose
images differ by encoding direction).  :class:`VelocitySeriesReader` reads such a folder
as one clip of four channels per frame::

    frame.pixels: (rows, cols, 4) float32, channels ("magnitude", "v_x", "v_y", "v_z")

Velocities are in **cm/s**: ``v_x`` along +columns of the image (ImageOrientationPatient
[:3], the direction of increasing column index), ``v_y`` along +rows (IOP[3:], increasing
row index) and ``v_z`` through the slice, **positive towards the cardiac apex**: along the
slice normal n = row_dir x col_dir with its sign chosen so that n . apex > 0 for the nominal
apex direction in DICOM patient coordinates (LPS) :data:`APEX_LPS` = normalise((+0.6, -0.5,
-0.6)), i.e. towards the patient's left, anterior and inferior.  A slice whose normal lies
nearly across that direction (|cos| < 0.3, not a short-axis slice) keeps the rule and
warns that the sign is doubtful.  ``info.metadata`` carries ``venc_cm_s`` (the largest
encoding), ``venc_cm_s_by_axis`` ([v_x, v_y, v_z]), ``image_orientation_patient``,
``slice_normal_lps`` (the chosen n), ``velocity_channels_source``, ``velocity_encodings``
(per encoded direction), ``phase_wrap_share`` (per frame) and ``warnings``.

The rules
---------
*Magnitude or phase*, per image: ImageType value 3 ('M' / 'MAGNITUDE' / 'PHASE CONTRAST M'
/ 'M_PCA' vs 'P' / 'PHASE' / 'VELOCITY' / 'PHASE CONTRAST P' / 'P_PCA' / 'VELOCITY MAP'),
else ComplexImageComponent (0008,9208) MAGNITUDE / PHASE, else the same words among ImageType
values 4 and later (Philips writes ``...\\PHASE CONTRAST M\\M\\...``), and only as a last
resort the SeriesDescription ('mag' vs 'phase' / 'p', else 'vel' / 'flow'), with a warning.
A folder is read as velocity mapping when it holds magnitude **and** phase images
(:func:`open_series_folder`, the folder dispatch of ``open_clip``); of one slice position
only (multi-slice velocity stacks are refused).  Several magnitude series: the first by
SeriesNumber, with a warning.

*Encoding direction and VENC*, per phase image, in this order: (a) the MR Velocity Encoding
Sequence (0018,9197), one item with Velocity Encoding Direction (0018,9090, a vector in
patient coordinates LPS: positive velocity along it) and Velocity Encoding Maximum Value
(0018,9217) (cm/s; Minimum (0018,9091) when present, else -maximum); (b) Siemens'
SequenceName (0018,0024) ``..._v<VENC><dir>`` (``fl2d1_v15in``, ``fl2d1_v20rl``,
``_v150through``): VENC in cm/s; ``rl`` = +x, ``ap`` = +y, ``fh`` = +z of the patient axes
(LPS: towards the left, posterior, head; ``lr``, ``pa``, ``hf`` the opposite), ``in`` /
``through`` = through-plane, along row_dir x col_dir of the image as stated (before the
apex sign rule).  A phase image with neither is refused (:class:`ClipError` naming the file
and the tags looked for): a missing VENC is bad input, never guessed.

*Phase to velocity*: the stored value, after RescaleSlope / RescaleIntercept (s, i) where
present, spans the whole stored range around its centre: velocity = (value - centre) /
half_range x VENC, half_range = |s| x 2**(BitsStored - 1), the half width of the rescaled
representable range (one quantisation step included); centre = i for signed data
(PixelRepresentation 1: -2**(B-1) .. 2**(B-1) - 1 around 0) and i + s x 2**(B-1) for
unsigned data (Siemens: 0..4095, slope 2, intercept -4096 -> values -4096..4094, centre 0,
half range 4096).  With an asymmetric encoding (Minimum != -Maximum) the range maps onto
[Minimum, Maximum].  A RealWorldValueMappingSequence (0040,9096) item whose
MeasurementUnitsCodeSequence says cm/s (or mm/s, m/s) gives the velocity directly:
stored x RealWorldValueSlope + RealWorldValueIntercept.  The magnitude is its stored value
after RescaleSlope / Intercept.

*Directions to image axes*: each encoding direction d_k (unit, LPS) measures
m_k = d_k . V of the tissue velocity V = v_x r + v_y c + v_z n (r, c: IOP's row and column
directions, n the apex-signed normal); the K x 3 system A v = m (A[k] = (d_k . r, d_k . c,
d_k . n)) is solved per pixel (three directions: exactly; more: least squares).  When every
direction is along an image axis (the common case) A is a signed permutation and is used
exactly.  Fewer than three directions, or three nearly coplanar ones, are refused.
``venc_cm_s_by_axis[j]`` = sum_k |A^-1[j, k]| x VENC_k: the VENC of the encoding that
measures the axis for aligned encodings, the bound the encodings put on it for oblique ones.

*Phases*: each series ordered by TriggerTime, then InstanceNumber (as
:func:`.dicom_series.order_phases`); the magnitude and every encoding must have the same
number of phases, rows / columns and PixelSpacing, else a :class:`ClipError` naming the
series that disagree; a phase whose trigger times differ by more than half a step between
series is refused too.  ``t_s`` from the magnitude's trigger times, fps from their spacing.

*Phase wraps* are reported, not undone: per frame, the share of the pixels of the bright
half of the magnitude (>= its median) whose velocity along an encoding jumps by more than
1.5 VENC to a 4-neighbour that is bright too (the classic wrap signature); frames above
:data:`WRAP_WARN_SHARE` are named in a warning.  Unwrapping is the app's job.

Writing
-------
:func:`write_velocity_series` writes a synthetic velocity-mapping folder for tests and demos
(a magnitude series and one phase series per encoding, velocities wrapped into +-VENC as a
scanner would): ``style="siemens"`` (SequenceName ``fl2d1_v{venc}rl`` / ``ap`` / ``fh``,
unsigned 12-bit phase, RescaleSlope 2, RescaleIntercept -4096) or ``style="standard"``
(the (0018,9197) sequence with direction vectors, signed 16-bit phase).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import MRImageStorage, generate_uid
from pydicom.valuerep import format_number_as_ds

from .base import (
    ClipError,
    ClipFrame,
    ClipInfo,
    ClipReader,
    apply_overrides,
    atomic_output,
    check_spacing,
    merge_metadata,
)
from .dicom import (
    FrameFormat,
    check_pixel_data,
    common_metadata,
    decoded_frames,
    frame_format,
    header_spacing,
    new_dataset,
    number,
    pair,
    read_header,
    trigger_timing,
    user_metadata,
    vector,
)
from .dicom_series import (
    DicomSeriesReader,
    SeriesEntry,
    SeriesIndex,
    index_series,
    order_phases,
    read_series_headers,
    same_format,
    slice_groups,
)

__all__ = [
    "APEX_LPS",
    "CHANNELS",
    "VelocityEncoding",
    "VelocitySeriesReader",
    "holds_velocity_mapping",
    "image_kind",
    "open_series_folder",
    "phase_encoding",
    "phase_to_velocity",
    "write_velocity_series",
]

#: the channels of every frame, in order
CHANNELS = ("magnitude", "v_x", "v_y", "v_z")
#: nominal direction from the base of the heart to its apex, DICOM patient axes (LPS):
#: left, anterior, inferior
APEX_LPS = np.array([0.6, -0.5, -0.6]) / math.sqrt(0.6**2 + 0.5**2 + 0.6**2)
#: a jump between 4-neighbours larger than this many VENC is a wrap
WRAP_JUMP_VENC = 1.5
#: frames where more than this share of the bright half of the magnitude jumps get a warning
WRAP_WARN_SHARE = 0.001
#: |cos| between the slice normal and the apex direction below which v_z's sign is doubtful
APEX_COS_MIN = 0.3
#: two encoding directions with a cosine above this are the same direction
SAME_DIRECTION_COS = 0.9999
#: ImageOrientationPatient values that differ by less than this are the same plane
IOP_TOLERANCE = 1e-4

_MAGNITUDE_TYPES = frozenset({"M", "MAGNITUDE", "MAG", "PHASE CONTRAST M", "M_PCA"})
_PHASE_TYPES = frozenset({"P", "PHASE", "VELOCITY", "PHASE CONTRAST P", "P_PCA", "VELOCITY MAP",
                          "PHASE MAP"})
_MAGNITUDE_WORDS = re.compile(r"(?<![a-z])(mag|magn|magnitude|m)(?![a-z0-9])", re.IGNORECASE)
_PHASE_WORDS = re.compile(r"(?<![a-z])(phase|pha|p)(?![a-z0-9])", re.IGNORECASE)
#: words of a phase series, but also found in its magnitude's description ("flow_mag")
_VELOCITY_WORDS = re.compile(r"(?<![a-z])(vel|velocity|flow|venc)(?![a-z0-9])", re.IGNORECASE)
_NOT_PHASE_WORDS = re.compile(r"phase.?sensitive|psir", re.IGNORECASE)

#: Siemens SequenceName: ``..._v<VENC cm/s><direction>``
SIEMENS_VENC = re.compile(r"_v(\d+(?:\.\d+)?)(through|in|rl|lr|ap|pa|fh|hf)(?![a-z])", re.IGNORECASE)
#: the in-plane direction labels of Siemens' SequenceName, as patient axes (LPS)
SIEMENS_AXES = {
    "rl": (1.0, 0.0, 0.0), "lr": (-1.0, 0.0, 0.0),
    "ap": (0.0, 1.0, 0.0), "pa": (0.0, -1.0, 0.0),
    "fh": (0.0, 0.0, 1.0), "hf": (0.0, 0.0, -1.0),
}
_THROUGH = ("in", "through")
_VELOCITY_UNITS = {"cm/s": 1.0, "mm/s": 0.1, "m/s": 100.0}
_VENC_TAGS = ("the MR Velocity Encoding Sequence (0018,9197) with Velocity Encoding Direction "
              "(0018,9090) and Velocity Encoding Maximum Value (0018,9217), and a Siemens "
              "SequenceName (0018,0024) such as 'fl2d1_v20in' or 'fl2d1_v15rl'")


# ---------------------------------------------------------------------------------------
# Magnitude or phase
# ---------------------------------------------------------------------------------------
def _image_type(header: Dataset) -> list[str]:
    value = header.get("ImageType")
    if value is None:
        return []
    values = value.split("\\") if isinstance(value, str) else list(value)
    return [str(v).strip().upper() for v in values]


def _type_kind(value: str) -> str | None:
    if value in _MAGNITUDE_TYPES:
        return "magnitude"
    if value in _PHASE_TYPES:
        return "phase"
    return None


def image_kind(header: Dataset) -> tuple[str | None, str]:
    """Whether an image is a "magnitude" or a "phase" image (None: it does not say), and the
    element that said so: ImageType value 3, else ComplexImageComponent, else ImageType
    values 4 and later, else (last resort) "SeriesDescription": 'mag' / 'magnitude' / 'm' vs
    'phase' / 'pha' / 'p' as words, else 'vel' / 'velocity' / 'flow' / 'venc' for phase (a
    phase-sensitive / PSIR series is neither)."""
    values = _image_type(header)
    if len(values) > 2 and (kind := _type_kind(values[2])) is not None:
        return kind, "ImageType"
    component = str(header.get("ComplexImageComponent") or "").strip().upper()
    if component in ("MAGNITUDE", "PHASE"):
        return component.lower(), "ComplexImageComponent"
    for value in values[3:]:
        if (kind := _type_kind(value)) is not None:
            return kind, "ImageType"
    description = str(header.get("SeriesDescription") or "")
    if _NOT_PHASE_WORDS.search(description):
        return None, ""
    phase = bool(_PHASE_WORDS.search(description))
    magnitude = bool(_MAGNITUDE_WORDS.search(description))
    if phase != magnitude:
        return ("phase" if phase else "magnitude"), "SeriesDescription"
    if not phase and _VELOCITY_WORDS.search(description):
        return "phase", "SeriesDescription"
    return None, ""


def holds_velocity_mapping(headers: Sequence[tuple[Path, Dataset]]) -> bool:
    """Whether a folder's headers (as :func:`.dicom_series.read_series_headers` reads them)
    hold magnitude **and** phase images: a velocity-mapping folder."""
    kinds = {image_kind(header)[0] for _, header in headers}
    return "magnitude" in kinds and "phase" in kinds


# ---------------------------------------------------------------------------------------
# Encoding direction, VENC, phase -> velocity
# ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class VelocityEncoding:
    """How one phase image encodes velocity."""

    #: unit vector in patient coordinates (LPS): positive velocity along it
    direction_lps: tuple[float, float, float]
    #: Velocity Encoding Maximum Value, cm/s: the VENC
    venc_cm_s: float
    #: Velocity Encoding Minimum Value, cm/s (-venc_cm_s when symmetric or not stated)
    venc_min_cm_s: float
    #: "dicom-9197" | "siemens-sequence-name"
    source: str
    #: "rl", "through-plane", ... (Siemens) or the direction as text
    label: str


def _unit(values: Sequence[float]) -> np.ndarray | None:
    v = np.asarray(values, dtype=float)
    norm = float(np.linalg.norm(v))
    return v / norm if math.isfinite(norm) and norm > 1e-6 else None


def _slice_normal(orientation: Sequence[float]) -> np.ndarray | None:
    """row_dir x col_dir of ImageOrientationPatient, unit length; None when degenerate."""
    return _unit(np.cross(np.asarray(orientation[:3], float), np.asarray(orientation[3:6], float)))


def _text(direction: Sequence[float]) -> str:
    return "(" + ", ".join(f"{v:+.3f}" for v in direction) + ")"


def _encoding_9197(header: Dataset, file: Path) -> tuple[VelocityEncoding | None, str]:
    """The (0018,9197) item of an image (top level, else the shared functional groups), and
    what is wrong with it when it cannot be used."""
    items = header.get("MRVelocityEncodingSequence")
    if not items:
        shared = header.get("SharedFunctionalGroupsSequence")
        items = shared[0].get("MRVelocityEncodingSequence") if shared else None
    if not items:
        return None, "no MR Velocity Encoding Sequence (0018,9197)"
    if len(items) != 1:
        raise ClipError(f"the MR Velocity Encoding Sequence (0018,9197) has {len(items)} items; "
                        "a phase image encodes one direction", path=file)
    item = items[0]
    raw = vector(item, "VelocityEncodingDirection", 3)
    direction = None if raw is None else _unit(raw)
    vmax = number(item, "VelocityEncodingMaximumValue")
    vmin = number(item, "VelocityEncodingMinimumValue")
    if direction is None:
        return None, ("the (0018,9197) item has no usable Velocity Encoding Direction (0018,9090) "
                      f"(found {item.get('VelocityEncodingDirection')!r})")
    if vmax is None or vmax <= 0:
        return None, ("the (0018,9197) item has no positive Velocity Encoding Maximum Value "
                      f"(0018,9217) (found {item.get('VelocityEncodingMaximumValue')!r})")
    if vmin is None or not vmin < vmax:
        vmin = -vmax
    d = tuple(float(v) for v in direction)
    return VelocityEncoding(d, vmax, vmin, "dicom-9197", _text(d)), ""  # type: ignore[arg-type]


def phase_encoding(header: Dataset, file: Path) -> VelocityEncoding:
    """The encoding direction and VENC of a phase image: (a) the MR Velocity Encoding
    Sequence (0018,9197), else (b) Siemens' SequenceName ``..._v<VENC><dir>``.  Neither:
    a :class:`ClipError` naming ``file`` and the tags looked for."""
    encoding, problem = _encoding_9197(header, file)
    if encoding is not None:
        return encoding
    name = str(header.get("SequenceName") or "").strip()
    found = SIEMENS_VENC.search(name)
    if found is not None:
        venc = float(found.group(1))
        label = found.group(2).lower()
        if venc <= 0:
            raise ClipError(f"SequenceName {name!r} states a VENC of {venc:g} cm/s", path=file)
        if label in _THROUGH:
            orientation = vector(header, "ImageOrientationPatient", 6)
            normal = None if orientation is None else _slice_normal(orientation)
            if normal is None:
                raise ClipError(f"SequenceName {name!r} encodes through-plane velocity, but the image "
                                "states no usable ImageOrientationPatient", path=file)
            direction = tuple(float(v) for v in normal)
            label = "through-plane"
        else:
            direction = SIEMENS_AXES[label]
        return VelocityEncoding(direction, venc, -venc, "siemens-sequence-name", label)  # type: ignore[arg-type]
    shown = f"SequenceName {name!r}" if name else "no SequenceName"
    raise ClipError(f"phase image without a readable velocity encoding (VENC): looked for {_VENC_TAGS}; "
                    f"found {problem} and {shown}", path=file)


def _real_world_velocity(header: Dataset) -> tuple[float, float, str] | None:
    """(slope, intercept) in cm/s per stored value from a RealWorldValueMappingSequence item
    whose unit is a velocity, with the unit; None when there is none."""
    for item in header.get("RealWorldValueMappingSequence") or []:
        codes = item.get("MeasurementUnitsCodeSequence") or []
        unit = str(codes[0].get("CodeValue") or "").strip() if codes else ""
        slope, intercept = number(item, "RealWorldValueSlope"), number(item, "RealWorldValueIntercept")
        if unit in _VELOCITY_UNITS and slope is not None and slope != 0:
            scale = _VELOCITY_UNITS[unit]
            return slope * scale, (intercept or 0.0) * scale, unit
    return None


def phase_to_velocity(header: Dataset, encoding: VelocityEncoding) -> tuple[float, float, str]:
    """(a, b, rule): velocity in cm/s = stored value x a + b for a phase image (the rules in
    the module docstring); ``rule`` names which applied."""
    rwv = _real_world_velocity(header)
    if rwv is not None:
        return rwv[0], rwv[1], f"RealWorldValueMappingSequence ({rwv[2]})"
    bits = int(number(header, "BitsStored") or number(header, "BitsAllocated") or 16)
    signed = int(number(header, "PixelRepresentation") or 0) == 1
    slope = number(header, "RescaleSlope")
    slope = 1.0 if slope is None or slope == 0 else slope
    intercept = number(header, "RescaleIntercept") or 0.0
    half_range = abs(slope) * 2.0 ** (bits - 1)
    centre = intercept if signed else intercept + slope * 2.0 ** (bits - 1)
    venc_half = (encoding.venc_cm_s - encoding.venc_min_cm_s) / 2.0
    venc_centre = (encoding.venc_cm_s + encoding.venc_min_cm_s) / 2.0
    a = slope * venc_half / half_range
    b = (intercept - centre) * venc_half / half_range + venc_centre
    rule = (f"{'signed' if signed else 'unsigned'} {bits}-bit, (value - {centre:g}) / {half_range:g} "
            f"x VENC")
    return a, b, rule


# ---------------------------------------------------------------------------------------
# Indexing a folder
# ---------------------------------------------------------------------------------------
def _series_label(header: Dataset) -> str:
    number_ = header.get("SeriesNumber")
    description = str(header.get("SeriesDescription") or "").strip()
    if number_ not in (None, ""):
        return f"series {number_}" + (f" '{description}'" if description else "")
    uid = str(header.get("SeriesInstanceUID") or "").strip()
    return f"series {uid or '(no SeriesInstanceUID)'}" + (f" '{description}'" if description else "")


@dataclass(frozen=True)
class _Channel:
    """The images of the magnitude, or of one encoding direction, in phase order."""

    name: str
    #: the series the images come from, for messages
    series: str
    phases: tuple[SeriesEntry, ...]
    #: per phase: velocity = stored x a + b (cm/s); the magnitude: its rescale
    scales: tuple[tuple[float, float], ...]
    encoding: VelocityEncoding | None


def _pixel_kind(fmt: FrameFormat, file: Path, kind: str) -> None:
    if fmt.samples != 1 or fmt.palette is not None or (kind == "phase" and fmt.photometric != "MONOCHROME2"):
        raise ClipError(f"a {kind} image must be grey (MONOCHROME2{'' if kind == 'phase' else '/1'}), "
                        f"not {fmt.photometric} with {fmt.samples} sample(s) per pixel", path=file)


def _ordered(entries: list[SeriesEntry], name: str, warnings: list[str]) -> tuple[SeriesEntry, ...]:
    phases, doubt = order_phases(entries, f"{name}: TriggerTime missing: phases ordered by "
                                          "InstanceNumber, no timing from the files")
    if doubt is not None:
        warnings.append(doubt)
    return tuple(phases)


def _same_orientation(entries: Sequence[SeriesEntry], headers: dict[Path, Dataset],
                      path: Path) -> tuple[float, ...]:
    missing = [e.path.name for e in entries if e.orientation is None]
    if missing:
        raise ClipError(f"{len(missing)} image(s) state no ImageOrientationPatient ({', '.join(missing[:3])}"
                        f"{' ...' if len(missing) > 3 else ''}): velocity directions cannot be "
                        "mapped to the image axes", path=path)
    first = entries[0]
    for entry in entries[1:]:
        if max(abs(a - b) for a, b in zip(first.orientation, entry.orientation)) > IOP_TOLERANCE:  # type: ignore[arg-type]
            raise ClipError(f"ImageOrientationPatient differs: {_series_label(headers[first.path])} "
                            f"({first.path.name}) {list(first.orientation)}, "  # type: ignore[arg-type]
                            f"{_series_label(headers[entry.path])} ({entry.path.name}) "
                            f"{list(entry.orientation)}", path=path)  # type: ignore[arg-type]
    return first.orientation  # type: ignore[return-value]


def _check_phases(magnitude: _Channel, channel: _Channel, path: Path, warnings: list[str]) -> None:
    """The same number of phases, at the same trigger times, in the magnitude and ``channel``."""
    n, m = len(magnitude.phases), len(channel.phases)
    mag_times = [e.trigger_time_ms for e in magnitude.phases]
    times = [e.trigger_time_ms for e in channel.phases]
    known = all(t is not None for t in (*mag_times, *times))
    if n != m:
        more, fewer = (magnitude, channel) if n > m else (channel, magnitude)
        text = (f"{fewer.name} ({fewer.series}) has {len(fewer.phases)} phases where {more.name} "
                f"({more.series}) has {len(more.phases)}")
        if known and len(more.phases) > 1:
            step = float(np.median(np.diff([e.trigger_time_ms for e in more.phases])))  # type: ignore[arg-type]
            lacking = [e.trigger_time_ms for e in more.phases
                       if not any(abs(e.trigger_time_ms - f.trigger_time_ms) < step / 2  # type: ignore[operator]
                                  for f in fewer.phases)]
            if lacking:
                text += f": no image at trigger time {', '.join(f'{t:g}' for t in lacking)} ms"  # type: ignore[str-format]
        raise ClipError(text + " (velocity mapping needs every phase in the magnitude and each "
                        "encoding direction)", path=path)
    if not known or n < 2:
        return
    step = float(np.median(np.diff(mag_times)))  # type: ignore[arg-type]
    offsets = [abs(a - b) for a, b in zip(mag_times, times)]  # type: ignore[operator]
    worst = int(np.argmax(offsets))
    if offsets[worst] > step / 2:
        raise ClipError(f"phase {worst} is at trigger time {mag_times[worst]:g} ms in {magnitude.name} "
                        f"({magnitude.series}) but {times[worst]:g} ms in {channel.name} ({channel.series}): "
                        "the series do not hold the same phases", path=path)
    if offsets[worst] > 1.0:
        warnings.append(f"trigger times of {channel.name} ({channel.series}) differ from the magnitude's "
                        f"by up to {offsets[worst]:.1f} ms; phases are paired in order")


def _check_matrix(magnitude: _Channel, channel: _Channel, formats: dict[str, FrameFormat],
                  headers: dict[Path, Dataset], path: Path) -> None:
    a, b = formats[magnitude.name], formats[channel.name]
    if (a.rows, a.cols) != (b.rows, b.cols):
        raise ClipError(f"channels of mismatched size: {magnitude.name} ({magnitude.series}) is "
                        f"{a.rows}x{a.cols}, {channel.name} ({channel.series}) is {b.rows}x{b.cols} "
                        "(rows x columns)", path=path)
    sa = pair(headers[magnitude.phases[0].path], "PixelSpacing")
    sb = pair(headers[channel.phases[0].path], "PixelSpacing")
    if sa != sb and (sa is None or sb is None or max(abs(x - y) for x, y in zip(sa, sb)) > 1e-4):
        raise ClipError(f"channels of mismatched PixelSpacing: {magnitude.name} ({magnitude.series}) "
                        f"{sa}, {channel.name} ({channel.series}) {sb} (mm)", path=path)


def _axes_solve(directions: np.ndarray, basis: np.ndarray, labels: Sequence[str],
                path: Path) -> tuple[np.ndarray, str]:
    """(M, how): image-axis velocities = M @ measured velocities (M: 3 x K)."""
    a = directions @ basis.T  # a[k, j] = d_k . axis_j
    rounded = np.round(a)
    if (np.max(np.abs(a - rounded)) < 1e-3 and a.shape[0] == 3
            and np.array_equal(np.sort(np.abs(rounded), axis=None), [0, 0, 0, 0, 0, 0, 1, 1, 1])
            and np.all(np.abs(rounded).sum(axis=0) == 1) and np.all(np.abs(rounded).sum(axis=1) == 1)):
        return rounded.T.copy(), "signed permutation"  # orthogonal: its inverse is its transpose
    singular = np.linalg.svd(a, compute_uv=False)
    if singular[-1] < 0.1:
        raise ClipError(f"the velocity encoding directions {', '.join(labels)} are nearly coplanar "
                        f"(smallest singular value {singular[-1]:.3f}): the three image-axis "
                        "velocities cannot be solved from them", path=path)
    if a.shape[0] == 3:
        return np.linalg.inv(a), "solved 3x3"
    return np.linalg.pinv(a), f"least squares over {a.shape[0]} directions"


def _wrap_share(magnitude: np.ndarray, measured: Sequence[np.ndarray], half_ranges: Sequence[float]) -> float:
    """Share of the bright half of ``magnitude`` whose velocity along some encoding jumps by
    more than :data:`WRAP_JUMP_VENC` VENC to a bright 4-neighbour."""
    bright = magnitude >= np.median(magnitude)
    jump = np.zeros(magnitude.shape, dtype=bool)
    for m, venc in zip(measured, half_ranges):
        limit = WRAP_JUMP_VENC * venc
        for axis in (0, 1):
            big = np.abs(np.diff(m, axis=axis)) > limit
            if axis == 0:
                big &= bright[1:, :] & bright[:-1, :]
                jump[1:, :] |= big
                jump[:-1, :] |= big
            else:
                big &= bright[:, 1:] & bright[:, :-1]
                jump[:, 1:] |= big
                jump[:, :-1] |= big
    n_bright = int(bright.sum())
    return float((jump & bright).sum() / n_bright) if n_bright else 0.0


def _read_pixels(file: Path, folder: Path) -> np.ndarray:
    try:
        fh = open(file, "rb")
    except OSError as exc:
        raise ClipError(f"cannot open {file.name}: {exc}", path=folder) from exc
    with fh:
        header = read_header(fh, file)
        fmt = frame_format(header, file)
        check_pixel_data(fh, header, fmt, 1, file)
        (arr,) = decoded_frames(fh, fmt, 1, file)
    return arr


# ---------------------------------------------------------------------------------------
# Reader
# ---------------------------------------------------------------------------------------
class VelocitySeriesReader(ClipReader):
    """A velocity-mapping folder of one slice (magnitude and phase series, single-frame MR
    DICOM) as a clip of (rows, cols, 4) float32 frames: magnitude, v_x, v_y, v_z in cm/s (the
    rules in the module docstring).

    ``headers`` (with ``header_warnings``): the folder's headers as
    :func:`.dicom_series.read_series_headers` read them (``one_series=False``), when the
    caller has them already.  ``slice_index``: 0 or None (one slice per folder).  The wrap
    check decodes every frame once when the reader opens; frames are decoded again as
    they are reached.
    """

    def __init__(
        self,
        path: Path,
        *,
        spacing_mm: tuple[float, float] | None = None,
        fps: float | None = None,
        slice_index: int | None = None,
        headers: Sequence[tuple[Path, Dataset]] | None = None,
        header_warnings: Sequence[str] = (),
    ) -> None:
        self._path = path = Path(path)
        self._closed = False
        warnings = list(header_warnings)
        if headers is None:
            headers = read_series_headers(path, warnings, one_series=False)
        if slice_index not in (None, 0):
            raise ClipError(f"slice_index={slice_index} given, but a velocity-mapping folder holds one "
                            "slice", path=path)
        by_path = dict(headers)
        channels, orientation = self._index(path, list(headers), by_path, warnings)
        magnitude, encoded = channels[0], channels[1:]
        self._channels = channels

        formats = {c.name: same_format(c.phases, SeriesIndex(path, by_path, (), "", ()),
                                       f"images of {c.name} ({c.series})") for c in channels}
        for channel in channels:
            _pixel_kind(formats[channel.name], channel.phases[0].path,
                        "magnitude" if channel is magnitude else "phase")
        for channel in encoded:
            _check_phases(magnitude, channel, path, warnings)
            _check_matrix(magnitude, channel, formats, by_path, path)

        # image axes in patient coordinates: v_x, v_y, v_z (apex-signed normal)
        r = _unit(orientation[:3])
        c = _unit(orientation[3:])
        normal = _slice_normal(orientation)
        if r is None or c is None or normal is None:
            raise ClipError(f"ImageOrientationPatient {list(orientation)} is degenerate", path=path)
        apex_cos = float(normal @ APEX_LPS)
        if apex_cos < 0:
            normal = -normal
        if abs(apex_cos) < APEX_COS_MIN:
            warnings.append(f"the slice normal lies nearly across the nominal apex direction (cos "
                            f"{apex_cos:+.2f}): v_z's sign towards the apex is doubtful (not a "
                            "short-axis slice?)")
        basis = np.stack([r, c, normal])
        directions = np.array([ch.encoding.direction_lps for ch in encoded])  # type: ignore[union-attr]
        labels = [f"{ch.encoding.label} ({ch.series})" for ch in encoded]  # type: ignore[union-attr]
        self._solve, how = _axes_solve(directions, basis, labels, path)
        vencs = np.array([ch.encoding.venc_cm_s for ch in encoded])  # type: ignore[union-attr]
        self._half_ranges = [(ch.encoding.venc_cm_s - ch.encoding.venc_min_cm_s) / 2  # type: ignore[union-attr]
                             for ch in encoded]
        venc_by_axis = [round(float(v), 6) for v in np.abs(self._solve) @ vencs]

        first_header = by_path[magnitude.phases[0].path]
        fmt = formats[magnitude.name]
        self._shape = (fmt.rows, fmt.cols, len(CHANNELS))
        metadata = common_metadata(first_header, fmt)
        if "rescale_slope" in metadata:
            metadata["rescale_applied"] = True  # the magnitude's; each phase image's own is used
        spacing = header_spacing(first_header, fmt, metadata, warnings)
        fps_file, clock = trigger_timing([e.trigger_time_ms for e in magnitude.phases], metadata, warnings)
        spacing, fps_value, self._clock = apply_overrides(
            spacing_file=spacing, fps_file=fps_file, clock_file=clock, spacing_override=spacing_mm,
            fps_override=fps, metadata=metadata, path=path,
        )
        sources = sorted({ch.encoding.source for ch in encoded})  # type: ignore[union-attr]
        position = magnitude.phases[0].slice_pos_mm
        metadata.update(
            venc_cm_s=float(vencs.max()),
            venc_cm_s_by_axis=venc_by_axis,
            image_orientation_patient=[float(v) for v in orientation],
            slice_normal_lps=[float(v) for v in normal],
            apex_direction_lps=[round(float(v), 6) for v in APEX_LPS],
            velocity_units="cm/s",
            velocity_channels_source=sources[0] if len(sources) == 1 else " + ".join(sources),
            velocity_axes_mapping=how,
            velocity_encodings=[{
                "series": ch.series, "label": ch.encoding.label,  # type: ignore[union-attr]
                "direction_lps": [float(v) for v in ch.encoding.direction_lps],  # type: ignore[union-attr]
                "venc_cm_s": ch.encoding.venc_cm_s,  # type: ignore[union-attr]
                "venc_min_cm_s": ch.encoding.venc_min_cm_s,  # type: ignore[union-attr]
                "source": ch.encoding.source,  # type: ignore[union-attr]
                "phase_rule": self._rules[ch.name],
            } for ch in encoded],
            magnitude_series=magnitude.series,
            slice_position_mm=None if position is None else float(position),
            slice_thickness_mm=magnitude.phases[0].slice_thickness_mm,
            files={ch.name: [e.path.name for e in ch.phases] for ch in channels},
        )

        # the wrap check: every frame once
        shares = []
        for t in range(len(magnitude.phases)):
            mag, measured = self._measured(t)
            shares.append(_wrap_share(mag, measured, self._half_ranges))
        metadata["phase_wrap_share"] = [round(s, 6) for s in shares]
        wrapped = [t for t, s in enumerate(shares) if s > WRAP_WARN_SHARE]
        if wrapped:
            shown = ", ".join(map(str, wrapped[:10])) + (" ..." if len(wrapped) > 10 else "")
            warnings.append(f"phase wrapping likely in {len(wrapped)} of {len(shares)} frames ({shown}): "
                            f"up to {max(shares):.1%} of the bright half of the magnitude jumps by more "
                            f"than {WRAP_JUMP_VENC:g} VENC to a 4-neighbour; velocities are as stored "
                            "(unwrapping is left to the app)")
        if warnings:
            metadata["warnings"] = warnings
        self.info = ClipInfo(
            path=str(path),
            format="dicom-velocity-series",
            n_frames=len(magnitude.phases),
            shape=self._shape,
            dtype="float32",
            modality="MR",
            spacing_mm=spacing,
            fps=fps_value,
            channels=CHANNELS,
            metadata=merge_metadata(user_metadata(first_header, warnings), metadata),
        )

    def _index(self, path: Path, headers: list[tuple[Path, Dataset]], by_path: dict[Path, Dataset],
               warnings: list[str]) -> tuple[list[_Channel], tuple[float, ...]]:
        """The magnitude channel, then one per encoding direction, and the common
        ImageOrientationPatient."""
        kinds: dict[Path, str] = {}
        unknown, hinted = [], set()
        for file, header in headers:
            kind, source = image_kind(header)
            if kind is None:
                unknown.append(file.name)
                continue
            kinds[file] = kind
            if source == "SeriesDescription":
                hinted.add(_series_label(header))
        if "magnitude" not in kinds.values() or "phase" not in kinds.values():
            n_mag = sum(k == "magnitude" for k in kinds.values())
            raise ClipError(f"not a velocity-mapping folder: it holds {n_mag} magnitude and "
                            f"{len(kinds) - n_mag} phase images (ImageType, ComplexImageComponent); "
                            "velocity mapping needs both", path=path)
        if unknown:
            raise ClipError(f"{len(unknown)} image(s) are neither magnitude nor phase by ImageType, "
                            f"ComplexImageComponent or SeriesDescription ({', '.join(unknown[:5])}"
                            f"{' ...' if len(unknown) > 5 else ''}): a velocity-mapping folder holds "
                            "the magnitude and phase series of one slice only", path=path)
        if hinted:
            warnings.append("magnitude and phase told apart by SeriesDescription only (ImageType does "
                            f"not say) for {', '.join(sorted(hinted))}")

        entries, slices, _ = slice_groups(path, headers, warnings)
        if len(slices) > 1:
            shown = ", ".join(f"{s[0].slice_pos_mm:g}" for s in slices[:6])
            raise ClipError(f"the folder holds {len(slices)} slice positions ({shown}"
                            f"{' ...' if len(slices) > 6 else ''} mm) with phase images: one slice "
                            "per folder is read for velocity mapping (put each slice's magnitude "
                            "and phase series in a folder of its own)", path=path)
        orientation = _same_orientation(entries, by_path, path)

        # the magnitude: the first series by SeriesNumber
        by_series: dict[str, list[SeriesEntry]] = {}
        for entry in entries:
            if kinds[entry.path] == "magnitude":
                by_series.setdefault(str(by_path[entry.path].get("SeriesInstanceUID", "")), []).append(entry)

        def series_order(uid: str) -> tuple[float, str]:
            n = number(by_path[by_series[uid][0].path], "SeriesNumber")
            return (math.inf if n is None else n, uid)

        uids = sorted(by_series, key=series_order)
        if len(uids) > 1:
            warnings.append(f"{len(uids)} magnitude series; "
                            f"{_series_label(by_path[by_series[uids[0]][0].path])} is used")
        mag_entries = by_series[uids[0]]
        mag_phases = _ordered(mag_entries, "magnitude", warnings)
        magnitude = _Channel(
            name="magnitude", series=_series_label(by_path[mag_entries[0].path]), phases=mag_phases,
            scales=tuple((number(by_path[e.path], "RescaleSlope") or 1.0,
                          number(by_path[e.path], "RescaleIntercept") or 0.0) for e in mag_phases),
            encoding=None)

        # the phase images, grouped by encoding direction
        groups: list[tuple[VelocityEncoding, list[tuple[SeriesEntry, VelocityEncoding]]]] = []
        for entry in entries:
            if kinds[entry.path] != "phase":
                continue
            encoding = phase_encoding(by_path[entry.path], entry.path)
            for first, members in groups:
                if float(np.dot(first.direction_lps, encoding.direction_lps)) > SAME_DIRECTION_COS:
                    members.append((entry, encoding))
                    break
            else:
                groups.append((encoding, [(entry, encoding)]))
        if len(groups) < 3:
            shown = "; ".join(f"{enc.label} ({', '.join(sorted({_series_label(by_path[e.path]) for e, _ in m}))})"
                              for enc, m in groups)
            raise ClipError(f"{len(groups)} velocity encoding direction(s) ({shown}): velocity mapping "
                            "needs three non-parallel encoding directions", path=path)
        self._rules: dict[str, str] = {}
        channels = [magnitude]
        for encoding, members in groups:
            name = f"phase {encoding.label}"
            vencs = {enc.venc_cm_s for _, enc in members}
            series = ", ".join(sorted({_series_label(by_path[e.path]) for e, _ in members}))
            if len(vencs) > 1:
                warnings.append(f"{name} ({series}): the VENC differs between its images "
                                f"({sorted(vencs)} cm/s); each image's own is used")
            phases = _ordered([e for e, _ in members], name, warnings)
            own = {e.path: enc for e, enc in members}
            scales, rules = [], set()
            for e in phases:
                a, b, rule = phase_to_velocity(by_path[e.path], own[e.path])
                scales.append((a, b))
                rules.add(rule)
            self._rules[name] = " | ".join(sorted(rules))
            top = max(members, key=lambda m: m[1].venc_cm_s)[1]
            channels.append(_Channel(name, series, phases, tuple(scales), top))
        return channels, orientation

    def _measured(self, t: int) -> tuple[np.ndarray, list[np.ndarray]]:
        """Phase ``t``: the magnitude and the velocity along each encoding (cm/s), float64."""
        magnitude, *encoded = self._channels
        slope, intercept = magnitude.scales[t]
        mag = _read_pixels(magnitude.phases[t].path, self._path).astype(np.float64) * slope + intercept
        measured = []
        for channel in encoded:
            a, b = channel.scales[t]
            measured.append(_read_pixels(channel.phases[t].path, self._path).astype(np.float64) * a + b)
        return mag, measured

    def __iter__(self) -> Iterator[ClipFrame]:
        if self._closed:
            raise ClipError("reader is closed", path=self._path)
        for t in range(self.info.n_frames):
            mag, measured = self._measured(t)
            velocity = np.tensordot(self._solve, np.stack(measured), axes=1)  # (3, rows, cols)
            frame = np.empty(self._shape, dtype=np.float32)
            frame[..., 0] = mag
            frame[..., 1:] = np.moveaxis(velocity, 0, -1)
            yield ClipFrame(index=t, pixels=frame, t_s=self._clock.t_s(t))

    def close(self) -> None:
        self._closed = True


def open_series_folder(
    path: Path,
    *,
    spacing_mm: tuple[float, float] | None = None,
    fps: float | None = None,
    slice_index: int | None = None,
) -> ClipReader:
    """A folder of single-frame DICOM, as ``open_clip`` reads it: a
    :class:`VelocitySeriesReader` where it holds magnitude and phase images
    (:func:`holds_velocity_mapping`), else the ordinary :class:`.DicomSeriesReader` (the
    headers are read once for both)."""
    path = Path(path)
    warnings: list[str] = []
    headers = read_series_headers(path, warnings, one_series=False)
    if holds_velocity_mapping(headers):
        return VelocitySeriesReader(path, spacing_mm=spacing_mm, fps=fps, slice_index=slice_index,
                                    headers=headers, header_warnings=warnings)
    index = index_series(path, headers=headers, warnings=warnings)
    return DicomSeriesReader(path, spacing_mm=spacing_mm, fps=fps, slice_index=slice_index, index=index)


# ---------------------------------------------------------------------------------------
# Writer (tests and demos)
# ---------------------------------------------------------------------------------------
_SIEMENS_PHASE_BITS = 12
_SIEMENS_SLOPE, _SIEMENS_INTERCEPT = 2.0, -4096.0
_MAGNITUDE_MAX = 4095


def _ds(value: float) -> str:
    return format_number_as_ds(float(value))


def _wrap(values: np.ndarray, venc: float) -> np.ndarray:
    """Velocities wrapped into [-venc, venc) as a phase measurement wraps them."""
    return np.mod(values + venc, 2.0 * venc) - venc


def _writer_geometry(iop: Sequence[float], folder: Path) -> tuple[tuple[float, ...], np.ndarray]:
    try:
        orientation = tuple(float(v) for v in iop)
    except (TypeError, ValueError) as exc:
        raise ClipError(f"image_orientation_patient must be 6 numbers, got {iop!r}", path=folder) from exc
    if len(orientation) != 6 or not all(math.isfinite(v) for v in orientation):
        raise ClipError(f"image_orientation_patient must be 6 finite numbers, got {iop!r}", path=folder)
    r, c = np.array(orientation[:3]), np.array(orientation[3:])
    if abs(np.linalg.norm(r) - 1) > 1e-3 or abs(np.linalg.norm(c) - 1) > 1e-3 or abs(r @ c) > 1e-3:
        raise ClipError(f"image_orientation_patient {list(orientation)} is not two orthogonal unit "
                        "vectors", path=folder)
    n = np.cross(r, c)
    n = n / np.linalg.norm(n)
    if n @ APEX_LPS < 0:
        n = -n
    return orientation, np.stack([r, c, n])


def write_velocity_series(
    folder: str | Path,
    magnitude: np.ndarray,
    velocity_cm_s: np.ndarray,
    spacing_mm: tuple[float, float],
    trigger_times_ms: Sequence[float],
    venc_cm_s: float,
    style: str = "siemens",
    image_orientation_patient: Sequence[float] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0),
    *,
    encodings: Sequence[str | Sequence[float]] | None = None,
    image_position_patient: Sequence[float] = (0.0, 0.0, 0.0),
    one_phase_series: bool = False,
    slice_thickness_mm: float = 8.0,
) -> list[Path]:
    """Write a velocity-mapping folder of one slice, as a scanner exports it; returns the
    files written.

    ``magnitude`` (T, rows, cols), >= 0; ``velocity_cm_s`` (T, rows, cols, 3): v_x, v_y, v_z
    in cm/s in the reader's convention (v_x along +columns, v_y along +rows, v_z through
    the slice towards the apex).  ``trigger_times_ms``: T increasing times after the R wave.
    ``spacing_mm``: (row, col) PixelSpacing.  Each encoding's velocity (the tissue velocity
    along its direction) is wrapped into [-VENC, VENC) as a phase measurement wraps it.

    ``style="siemens"``: phase series with SequenceName ``fl2d1_v{venc}{label}``, ImageType
    ``ORIGINAL\\PRIMARY\\P\\ND``, unsigned 12-bit, RescaleSlope 2, RescaleIntercept -4096;
    ``encodings`` are labels (default ``("rl", "ap", "fh")``; ``"in"`` is through-plane).
    ``style="standard"``: the MR Velocity Encoding Sequence (0018,9197) with the direction
    and Minimum / Maximum -+VENC, ImageType ``...\\VELOCITY\\...``, signed 16-bit;
    ``encodings`` are direction vectors in patient axes (default: the image axes v_x,
    v_y, v_z).  The magnitude is one series (SeriesNumber 1, ImageType ``...\\M\\...``),
    12-bit with a RescaleSlope where it is not whole numbers up to 4095.  The phase images
    are one series per encoding (SeriesNumber 2, 3, ...) or, with ``one_phase_series``,
    one series whose images differ by encoding.  ``folder`` is created where missing and
    must hold no files.
    """
    folder = Path(folder)
    if style not in ("siemens", "standard"):
        raise ClipError(f"style must be 'siemens' or 'standard', got {style!r}", path=folder)
    mag = np.asarray(magnitude, dtype=np.float64)
    vel = np.asarray(velocity_cm_s, dtype=np.float64)
    if mag.ndim != 3 or min(mag.shape) < 1:
        raise ClipError(f"magnitude must be (T, rows, cols), got shape {mag.shape}", path=folder)
    if vel.shape != (*mag.shape, 3):
        raise ClipError(f"velocity_cm_s must be (T, rows, cols, 3) = {(*mag.shape, 3)}, got {vel.shape}",
                        path=folder)
    if not (np.all(np.isfinite(mag)) and np.all(np.isfinite(vel))) or mag.min() < 0:
        raise ClipError("magnitude must be finite and >= 0, velocities finite", path=folder)
    times = [float(t) for t in trigger_times_ms]
    if len(times) != mag.shape[0] or np.any(np.diff(times) <= 0) or min(times) < 0:
        raise ClipError(f"trigger_times_ms must be {mag.shape[0]} increasing times >= 0, got {times}",
                        path=folder)
    venc = float(venc_cm_s)
    if not (math.isfinite(venc) and venc > 0):
        raise ClipError(f"venc_cm_s must be > 0, got {venc_cm_s!r}", path=folder)
    spacing = check_spacing(spacing_mm, folder)
    orientation, basis = _writer_geometry(image_orientation_patient, folder)
    position = np.asarray([float(v) for v in image_position_patient], dtype=float)
    if position.shape != (3,):
        raise ClipError(f"image_position_patient must be 3 numbers, got {image_position_patient!r}",
                        path=folder)
    raw_normal = np.cross(basis[0], basis[1])
    if style == "siemens":
        labels = [str(e).lower() for e in (encodings or ("rl", "ap", "fh"))]
        bad = [x for x in labels if x not in SIEMENS_AXES and x not in _THROUGH]
        if bad:
            raise ClipError(f"Siemens encodings are labels {sorted([*SIEMENS_AXES, *_THROUGH])}, got {bad}",
                            path=folder)
        directions = [raw_normal if x in _THROUGH else np.array(SIEMENS_AXES[x]) for x in labels]
    else:
        raw = list(encodings) if encodings is not None else list(basis)
        directions = []
        for d in raw:
            unit = _unit([float(v) for v in d]) if not isinstance(d, str) and len(d) == 3 else None
            if unit is None:
                raise ClipError(f"standard encodings are 3-vectors in patient axes, got {d!r}", path=folder)
            directions.append(unit)
        labels = [_text(d) for d in directions]
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise ClipError("the folder must be new or empty", path=folder)
    if not folder.parent.is_dir():
        raise ClipError(f"directory {folder.parent} does not exist", path=folder)
    folder.mkdir(exist_ok=True)

    patient_velocity = vel @ basis  # (T, rows, cols, 3) in LPS
    if float(mag.max()) <= _MAGNITUDE_MAX and np.array_equal(mag, np.round(mag)):
        mag_slope = 1.0
    else:
        mag_slope = float(mag.max()) / _MAGNITUDE_MAX or 1.0
    mag_stored = np.clip(np.round(mag / mag_slope), 0, _MAGNITUDE_MAX).astype(np.uint16)

    study, frame_of_reference = generate_uid(), generate_uid()
    slice_location = float(position @ raw_normal)
    common = dict(study=study, frame_of_reference=frame_of_reference, orientation=orientation,
                  position=position, slice_location=slice_location, spacing=spacing,
                  thickness=slice_thickness_mm)
    written: list[Path] = []
    mag_uid = generate_uid()
    for t, trigger in enumerate(times):
        ds = _mr_image(series_uid=mag_uid, series_number=1, description="velocity mapping magnitude",
                       instance=t + 1, trigger_ms=trigger, **common)
        ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "ND" if style == "siemens" else "NONE"]
        if style == "siemens":
            ds.SequenceName = f"fl2d1_v{venc:g}in"
        else:
            ds.ComplexImageComponent = "MAGNITUDE"
        if mag_slope != 1.0:
            ds.RescaleSlope, ds.RescaleIntercept, ds.RescaleType = _ds(mag_slope), "0", "US"
        written.append(_save(folder / f"IM_01_{t + 1:03d}.dcm", ds, mag_stored[t], 12, signed=False))

    phase_uid = generate_uid()
    for k, (label, direction) in enumerate(zip(labels, directions)):
        measured = _wrap(patient_velocity @ direction, venc)  # (T, rows, cols)
        series_number = 2 if one_phase_series else 2 + k
        series_uid = phase_uid if one_phase_series else generate_uid()
        for t, trigger in enumerate(times):
            instance = k * len(times) + t + 1 if one_phase_series else t + 1
            description = "velocity mapping phase" + ("" if one_phase_series else f" {label}")
            ds = _mr_image(series_uid=series_uid, series_number=series_number, description=description,
                           instance=instance, trigger_ms=trigger, **common)
            if style == "siemens":
                ds.ImageType = ["ORIGINAL", "PRIMARY", "P", "ND"]
                ds.SequenceName = f"fl2d1_v{venc:g}{label}"
                ds.RescaleSlope, ds.RescaleIntercept = _ds(_SIEMENS_SLOPE), _ds(_SIEMENS_INTERCEPT)
                ds.RescaleType = "US"
                real = measured[t] / venc * _SIEMENS_SLOPE * 2.0 ** (_SIEMENS_PHASE_BITS - 1)  # +-4096
                stored = np.clip(np.round((real - _SIEMENS_INTERCEPT) / _SIEMENS_SLOPE), 0,
                                 2 ** _SIEMENS_PHASE_BITS - 1).astype(np.uint16)
                bits, signed = _SIEMENS_PHASE_BITS, False
            else:
                ds.ImageType = ["ORIGINAL", "PRIMARY", "VELOCITY", "NONE"]
                ds.ComplexImageComponent = "PHASE"
                item = Dataset()
                item.VelocityEncodingDirection = [float(v) for v in direction]
                item.VelocityEncodingMinimumValue = -venc
                item.VelocityEncodingMaximumValue = venc
                ds.MRVelocityEncodingSequence = [item]
                stored = np.clip(np.round(measured[t] / venc * 32768.0), -32768, 32767).astype(np.int16)
                bits, signed = 16, True
            written.append(_save(folder / f"IM_{series_number:02d}_{instance:03d}.dcm", ds, stored,
                                 bits, signed=signed))
    return written


def _mr_image(*, study: str, frame_of_reference: str, series_uid: str, series_number: int,
              description: str, instance: int, trigger_ms: float, orientation: Sequence[float],
              position: np.ndarray, slice_location: float, spacing: tuple[float, float],
              thickness: float) -> Dataset:
    """The header of one single-frame MR image of the folder (no pixels yet)."""
    ds, now = new_dataset(MRImageStorage)
    ds.StudyInstanceUID = study
    ds.SeriesInstanceUID = series_uid
    ds.FrameOfReferenceUID = frame_of_reference
    ds.Modality = "MR"
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = now.strftime("%Y%m%d")
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = now.strftime("%H%M%S")
    for keyword in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex",
                    "ReferringPhysicianName", "AccessionNumber", "StudyID", "PositionReferenceIndicator"):
        setattr(ds, keyword, "")
    ds.Manufacturer = "cardiostream"
    ds.SeriesNumber = series_number
    ds.SeriesDescription = description
    ds.InstanceNumber = instance
    ds.ScanningSequence = "GR"
    ds.SequenceVariant = "SP"
    ds.ScanOptions = ""
    ds.MRAcquisitionType = "2D"
    ds.EchoTrainLength = 1
    ds.TriggerTime = _ds(trigger_ms)
    ds.ImagePositionPatient = [_ds(v) for v in position]
    ds.ImageOrientationPatient = [_ds(v) for v in orientation]
    ds.SliceLocation = _ds(slice_location)
    ds.SliceThickness = _ds(thickness)
    ds.PixelSpacing = [_ds(spacing[0]), _ds(spacing[1])]
    return ds


def _save(path: Path, ds: Dataset, pixels: np.ndarray, bits: int, *, signed: bool) -> Path:
    rows, cols = pixels.shape
    ds.Rows, ds.Columns = rows, cols
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.PixelRepresentation = 1 if signed else 0
    ds.add_new(0x7FE00010, "OW", pixels.astype("<i2" if signed else "<u2").tobytes())
    with atomic_output(path) as tmp:
        try:
            ds.save_as(tmp, enforce_file_format=True)
        except (OSError, ValueError) as exc:
            raise ClipError(f"cannot write DICOM: {exc}", path=path) from exc
    return path
