"""DICOM clips: multi-frame files (uncompressed or JPEG), the shared header logic, and the writer.

Reading
-------
:class:`DicomClipReader` reads one multi-frame (or single-frame) file.  The header is read
without pixels, the pixel data element is located and checked against the declared frame
count before any decoding (native: element length and file size; encapsulated: the
fragment items are walked with seeks only), then frames are decoded one at a time through
:func:`pydicom.pixels.iter_pixels` (JPEG baseline decodes through Pillow).  Colour (RGB,
YBR_FULL, YBR_FULL_422) comes out as RGB uint8 (rows, cols, 3), and so does PALETTE COLOR
(the ultrasound scanners that write it) through its lookup tables, 16-bit entries to their
top 8 bits (``metadata["palette_applied"]``); MONOCHROME1 is inverted to the MONOCHROME2
sense and says so in the metadata.  Stored values are yielded as they
are: Rescale Slope / Intercept are reported in the metadata, not applied.  Directories of
one image per file are read by :mod:`.dicom_series` with the helpers here.

Calibration (spacing, row then column, mm per pixel): PixelSpacing, else ImagerPixelSpacing,
else the shared functional groups' PixelMeasures (enhanced multi-frame), else the
ultrasound region calibration (the 2-D tissue region, RegionSpatialFormat 1, physical units
cm, x 10 to mm).  ``metadata["calibration_source"]`` says which.  A region lying outside
the image (an image resized after calibration) keeps its stated spacing, with a warning.
Timing: FrameTime (ms), else FrameTimeVector (ms increments), else CineRate, else
RecommendedDisplayFrameRate (frames/s); ``metadata["fps_source"]`` says which.

Writing
-------
:func:`write_dicom` writes one uncompressed multi-frame file (Explicit VR Little Endian):
uint8 or uint16 grey (MONOCHROME2) or uint8 RGB.  Float or other integer frames are
refused with a :class:`ClipError` — scaling them would change the values silently; convert
explicitly, or write NIfTI / npz which keep floats.  The caller's metadata is stored as JSON
in a private element (0099,xx01) UT of the private creator "cardiostream" and comes back in
``info.metadata``.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import struct
from collections.abc import Iterator, Sequence
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.errors import InvalidDicomError
from pydicom.pixels import get_decoder, iter_pixels
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    MultiFrameGrayscaleByteSecondaryCaptureImageStorage,
    MultiFrameGrayscaleWordSecondaryCaptureImageStorage,
    MultiFrameTrueColorSecondaryCaptureImageStorage,
    UltrasoundMultiFrameImageStorage,
    generate_uid,
)
from pydicom.valuerep import format_number_as_ds

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
    merge_metadata,
)

__all__ = ["DicomClipReader", "is_dicom_file", "write_dicom"]

PRIVATE_GROUP = 0x0099
PRIVATE_CREATOR = "cardiostream"
PRIVATE_METADATA_ELEMENT = 0x01  # (0099,xx01) UT: JSON object of user metadata

_PIXEL_DATA = 0x7FE00010
_ITEM = 0xFFFEE000
_SEQ_DELIMITER = 0xFFFEE0DD
_COLOUR = ("RGB", "YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT")
_US_UNITS_CM = 3
_US_SPATIAL_2D = 1
# Raised by pydicom when a header element is cut short or malformed.
HEADER_ERRORS = (InvalidDicomError, EOFError, OSError, ValueError, struct.error, KeyError, TypeError)


def is_dicom_file(path: Path) -> bool:
    """True when ``path`` is a file with the DICOM preamble ("DICM" at byte 128)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


# ---------------------------------------------------------------------------------------
# Header interpretation
# ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class FrameFormat:
    """Per-frame layout that the header declares."""

    rows: int
    cols: int
    samples: int
    photometric: str
    bits_allocated: int
    bits_stored: int
    signed: bool
    #: PALETTE COLOR: RGB uint8 for every stored value (frames come out as RGB)
    palette: np.ndarray | None = field(default=None, compare=False, repr=False)

    @property
    def shape(self) -> tuple[int, ...]:
        if self.samples == 1 and self.palette is None:
            return (self.rows, self.cols)
        return (self.rows, self.cols, 3 if self.palette is not None else self.samples)

    @property
    def dtype(self) -> np.dtype:
        if self.bits_allocated == 1 or self.palette is not None:
            return np.dtype(np.uint8)
        return np.dtype(f"{'i' if self.signed else 'u'}{self.bits_allocated // 8}")

    def native_frame_bytes(self) -> float:
        """Bytes of one uncompressed frame (fractional for 1-bit data)."""
        samples = 2 if self.photometric == "YBR_FULL_422" else self.samples
        return self.rows * self.cols * samples * self.bits_allocated / 8


def frame_format(header: Dataset, path: Path) -> FrameFormat:
    missing = [k for k in ("Rows", "Columns", "BitsAllocated") if header.get(k) is None]
    if missing:
        raise ClipError(f"not an image (header lacks {', '.join(missing)}), or truncated", path=path)
    samples = int(header.get("SamplesPerPixel", 1))
    photometric = str(header.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
    bits = int(header.BitsAllocated)
    if samples == 1 and photometric not in ("MONOCHROME1", "MONOCHROME2", "PALETTE COLOR"):
        raise ClipError(f"photometric interpretation {photometric} is not supported (grey "
                        "MONOCHROME1/2 or PALETTE COLOR only)", path=path)
    if samples == 3 and photometric not in _COLOUR:
        raise ClipError(f"photometric interpretation {photometric} is not supported for colour", path=path)
    if samples not in (1, 3):
        raise ClipError(f"{samples} samples per pixel is not supported (1 or 3)", path=path)
    if bits not in (1, 8, 16, 32):
        raise ClipError(f"BitsAllocated {bits} is not supported (1, 8, 16 or 32)", path=path)
    bits_stored = int(header.get("BitsStored", bits))
    signed = int(header.get("PixelRepresentation", 0)) == 1
    return FrameFormat(
        rows=int(header.Rows),
        cols=int(header.Columns),
        samples=samples,
        photometric=photometric,
        bits_allocated=bits,
        bits_stored=bits_stored,
        signed=signed,
        palette=palette_table(header, bits, bits_stored, signed, path)
        if photometric == "PALETTE COLOR" else None,
    )


def palette_table(header: Dataset, bits: int, bits_stored: int, signed: bool,
                  path: Path) -> np.ndarray:
    """PALETTE COLOR: the RGB (uint8) of every stored value, shape (2**bits_stored, 3).

    Many ultrasound scanners write their greyscale-with-colour this way.  The Red, Green
    and Blue Palette Color Lookup Tables (PS3.3 C.7.6.3.1.5/6) are read here, each with
    its own descriptor (number of entries, 0 meaning 65536; first stored value mapped;
    bits per entry, 8 or 16), from the data element's raw bytes in the byte order the
    file was read with.  pydicom 3.0's ``apply_color_lut`` reads those bytes as
    little-endian whatever the file's order: the 16-bit tables of Explicit VR Big Endian
    files come out 0..255, black once cut to their top 8 bits.  Stored values below the first mapped one take entry
    0, values past the last entry take the last one; 16-bit entries keep their top 8 bits.
    Segmented tables (the Segmented...PaletteColorLookupTableData elements, PS3.3
    C.7.9.2) are expanded by ``pydicom.pixels.apply_color_lut``, which reads them in the
    file's byte order.  An Alpha table, if any, is ignored.  A missing or malformed table
    raises a :class:`ClipError` that names the problem.
    """
    if signed or bits not in (8, 16) or bits_stored > 16:
        raise ClipError(f"PALETTE COLOR with {'signed ' if signed else ''}{bits_stored}-bit "
                        "stored values is not supported (unsigned 8 or 16 bits only)", path=path)
    values = np.arange(1 << bits_stored, dtype=np.int64)
    if "SegmentedRedPaletteColorLookupTableData" in header and "RedPaletteColorLookupTableData" not in header:
        return _segmented_palette_table(header, values.astype(np.uint8 if bits == 8 else np.uint16), path)
    little_endian = header.original_encoding[1]
    if little_endian is None:
        raise ClipError("PALETTE COLOR lookup tables: the byte order of the header is unknown", path=path)
    rgb = np.empty((len(values), 3), dtype=np.uint8)
    for channel, colour in enumerate(("Red", "Green", "Blue")):
        n_entries, first_mapped, lut = _palette_lut(header, colour, bool(little_endian), path)
        rgb[:, channel] = lut[np.clip(values - first_mapped, 0, n_entries - 1)]
    return rgb


def _palette_lut(header: Dataset, colour: str, little_endian: bool, path: Path) -> tuple[int, int, np.ndarray]:
    """One colour's (number of entries, first stored value mapped, uint8 entries).

    The data element is OW: 16-bit words in the file's byte order.  16 bits per entry:
    one entry a word, its top 8 bits kept.  8 bits per entry: two entries a word, the
    low byte first (the standard's packing: the value length in bytes equals the number
    of entries, rounded up to even), or, as some writers do, one entry a word with the
    high byte zero (PS3.3 C.7.6.3.1.5, note); anything else is malformed.
    """
    descriptor_kw = f"{colour}PaletteColorLookupTableDescriptor"
    data_kw = f"{colour}PaletteColorLookupTableData"
    descriptor = header.get(descriptor_kw)
    if descriptor is None:
        raise ClipError(f"PALETTE COLOR without a {descriptor_kw} (0028,110x)", path=path)
    try:
        n_entries, first_mapped, entry_bits = (int(v) for v in descriptor)
    except (TypeError, ValueError) as exc:
        raise ClipError(f"malformed {descriptor_kw} {descriptor!r}: expected three numbers "
                        "(entries, first value mapped, bits per entry)", path=path) from exc
    if not 0 <= n_entries <= 0xFFFF:
        raise ClipError(f"malformed {descriptor_kw}: {n_entries} entries (0..65535; 0 means 65536)", path=path)
    n_entries = n_entries or 1 << 16
    if entry_bits not in (8, 16):
        raise ClipError(f"malformed {descriptor_kw}: {entry_bits} bits per entry (8 or 16)", path=path)
    if data_kw not in header:
        what = "segmented and plain tables mixed" if f"Segmented{data_kw}" in header else f"no {data_kw}"
        raise ClipError(f"PALETTE COLOR lookup tables cannot be read: {what}", path=path)
    element = header[data_kw]
    raw = element.value
    if not isinstance(raw, bytes) or element.VR not in ("OW", "OB or OW"):
        raise ClipError(f"malformed {data_kw}: VR {element.VR} holding {type(raw).__name__} "
                        "(expected OW bytes)", path=path)
    if len(raw) % 2:
        raise ClipError(f"malformed {data_kw}: odd length {len(raw)} for 16-bit words", path=path)
    words = np.frombuffer(raw, dtype="<u2" if little_endian else ">u2")
    if entry_bits == 16:
        if len(words) != n_entries:
            raise ClipError(f"malformed {data_kw}: {len(words)} 16-bit words for the {n_entries} "
                            "16-bit entries its descriptor declares", path=path)
        lut = (words >> 8).astype(np.uint8)
    elif len(words) == (n_entries + 1) // 2:  # two 8-bit entries a word, low byte first
        lut = np.stack([words & 0xFF, words >> 8], axis=1).reshape(-1)[:n_entries].astype(np.uint8)
    elif len(words) == n_entries:  # one 8-bit entry a word
        if int(words.max()) > 0xFF:
            raise ClipError(f"malformed {data_kw}: the descriptor declares 8-bit entries, stored one "
                            f"a word, but entries reach {int(words.max())}", path=path)
        lut = words.astype(np.uint8)
    else:
        raise ClipError(f"malformed {data_kw}: {len(raw)} bytes for the {n_entries} 8-bit entries "
                        f"its descriptor declares (expected {2 * ((n_entries + 1) // 2)} or "
                        f"{2 * n_entries})", path=path)
    return n_entries, first_mapped, lut


def _segmented_palette_table(header: Dataset, values: np.ndarray, path: Path) -> np.ndarray:
    """Segmented palettes (PS3.3 C.7.9.2), expanded by pydicom's ``apply_color_lut``."""
    from pydicom.pixels import apply_color_lut

    try:
        rgb = np.asarray(apply_color_lut(values, header))[:, :3]
    except Exception as exc:  # pydicom raises ValueError, AttributeError, struct.error ...
        raise ClipError(f"segmented PALETTE COLOR lookup tables cannot be read: "
                        f"{type(exc).__name__}: {exc}", path=path) from exc
    if rgb.dtype.itemsize > 1:  # 16-bit entries: keep the top 8 bits
        rgb = rgb >> (8 * rgb.dtype.itemsize - 8)
    return np.ascontiguousarray(rgb, dtype=np.uint8)


def number(header: Dataset, keyword: str) -> float | None:
    """A numeric element as float, None when absent, empty or not a number."""
    try:
        value = header.get(keyword)
        if value is None or value == "":
            return None
        result = float(value)
    except (TypeError, ValueError):
        return None
    return result if math.isfinite(result) else None


def pair(header: Dataset, keyword: str) -> tuple[float, float] | None:
    try:
        value = header.get(keyword)
        if value is None or len(value) != 2:
            return None
        row, col = float(value[0]), float(value[1])
    except (TypeError, ValueError):
        return None
    return (row, col) if row > 0 and col > 0 and math.isfinite(row + col) else None


def vector(header: Dataset, keyword: str, n: int) -> tuple[float, ...] | None:
    """A multi-valued numeric element (e.g. ImagePositionPatient, 3 values) as ``n`` finite
    floats; None when absent, of another length or not numbers."""
    try:
        value = header.get(keyword)
        if value is None or isinstance(value, str) or len(value) != n:
            return None
        numbers = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        return None
    return numbers if all(math.isfinite(v) for v in numbers) else None


def position_along_normal(position: Sequence[float], orientation: Sequence[float]) -> float:
    """Where an image's plane lies along its normal, in mm: ImagePositionPatient (3 values)
    dotted with the cross product of the row and column direction cosines of
    ImageOrientationPatient (6 values)."""
    normal = np.cross(np.asarray(orientation[:3], dtype=float), np.asarray(orientation[3:6], dtype=float))
    return float(np.asarray(position, dtype=float) @ normal)


def header_spacing(
    header: Dataset, fmt: FrameFormat, metadata: dict[str, Any], warnings: list[str]
) -> tuple[float, float] | None:
    """(row, col) mm per pixel from the header; records ``calibration_source`` in ``metadata``."""
    for keyword in ("PixelSpacing", "ImagerPixelSpacing"):
        spacing = pair(header, keyword)
        if spacing is not None:
            metadata["calibration_source"] = keyword
            return spacing
    try:
        measures = header.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0]
    except (AttributeError, IndexError, KeyError):
        measures = None
    if measures is not None and (spacing := pair(measures, "PixelSpacing")) is not None:
        metadata["calibration_source"] = "SharedFunctionalGroupsSequence.PixelMeasuresSequence.PixelSpacing"
        return spacing
    return _us_region_spacing(header, fmt, metadata, warnings)


def _us_region_spacing(
    header: Dataset, fmt: FrameFormat, metadata: dict[str, Any], warnings: list[str]
) -> tuple[float, float] | None:
    regions = list(header.get("SequenceOfUltrasoundRegions", None) or [])
    if not regions:
        return None
    tissue = [
        r
        for r in regions
        if r.get("RegionSpatialFormat") == _US_SPATIAL_2D
        and r.get("PhysicalUnitsXDirection") == _US_UNITS_CM
        and r.get("PhysicalUnitsYDirection") == _US_UNITS_CM
        and number(r, "PhysicalDeltaX")
        and number(r, "PhysicalDeltaY")
    ]
    if not tissue:
        warnings.append(
            f"{len(regions)} ultrasound region(s) but none is a 2-D tissue region calibrated in cm; no spacing"
        )
        return None

    def bounds(r: Dataset) -> tuple[int, int, int, int]:
        keys = ("RegionLocationMinX0", "RegionLocationMinY0", "RegionLocationMaxX1", "RegionLocationMaxY1")
        x0, y0, x1, y1 = (int(r.get(k, 0)) for k in keys)
        return x0, y0, x1, y1

    def area(r: Dataset) -> int:
        x0, y0, x1, y1 = bounds(r)
        return (x1 - x0 + 1) * (y1 - y0 + 1)

    region = max(tissue, key=area)
    deltas = {(abs(number(r, "PhysicalDeltaY") or 0.0), abs(number(r, "PhysicalDeltaX") or 0.0)) for r in tissue}
    if len(deltas) > 1:
        warnings.append(f"{len(tissue)} 2-D tissue regions with different calibrations; the largest region is used")
    dy_cm = abs(number(region, "PhysicalDeltaY") or 0.0)
    dx_cm = abs(number(region, "PhysicalDeltaX") or 0.0)
    x0, y0, x1, y1 = bounds(region)
    metadata["calibration_source"] = "SequenceOfUltrasoundRegions"
    metadata["calibration_region_px"] = {"x0": x0, "y0": y0, "x1": x1, "y1": y1}
    if x1 >= fmt.cols or y1 >= fmt.rows:
        warnings.append(
            f"ultrasound calibration region X {x0}..{x1}, Y {y0}..{y1} lies outside the "
            f"{fmt.rows}x{fmt.cols} image: the image was probably resized after calibration; "
            "the stated spacing is kept unscaled"
        )
    return (dy_cm * 10.0, dx_cm * 10.0)


def _timing(
    header: Dataset, n_frames: int, metadata: dict[str, Any], warnings: list[str]
) -> tuple[float | None, FrameClock]:
    """Frame rate (frames/s) and clock of a multi-frame header; records ``fps_source``."""
    frame_time_ms = number(header, "FrameTime")
    if frame_time_ms is not None and frame_time_ms > 0:
        metadata["fps_source"] = "FrameTime"
        metadata["frame_time_ms"] = frame_time_ms
        fps = 1000.0 / frame_time_ms
        return fps, FrameClock(fps=fps)
    vector = header.get("FrameTimeVector")
    if vector is not None:
        try:
            values = vector if isinstance(vector, Sequence) and not isinstance(vector, str) else [vector]
            increments_ms = [float(v) for v in values]
        except (TypeError, ValueError):
            increments_ms = []
        if len(increments_ms) == n_frames and n_frames > 1 and all(v > 0 for v in increments_ms[1:]):
            times_s = tuple(float(t) / 1000.0 for t in np.cumsum([0.0, *increments_ms[1:]]))
            mean_ms = float(np.mean(increments_ms[1:]))
            metadata["fps_source"] = "FrameTimeVector"
            metadata["frame_time_ms"] = mean_ms
            fps = 1000.0 / mean_ms
            return fps, FrameClock(fps=fps, times_s=times_s)
        warnings.append(f"FrameTimeVector with {len(increments_ms)} entries for {n_frames} frames is ignored")
    for keyword in ("CineRate", "RecommendedDisplayFrameRate"):
        rate = number(header, keyword)
        if rate is not None and rate > 0:
            metadata["fps_source"] = keyword
            metadata["frame_time_ms"] = 1000.0 / rate
            return rate, FrameClock(fps=rate)
    return None, FrameClock(fps=None)


def trigger_timing(
    times_ms: Sequence[float | None], metadata: dict[str, Any], warnings: list[str], *, source: str = "TriggerTime"
) -> tuple[float | None, FrameClock]:
    """Frame rate (frames/s) and clock of one slice's phases from their trigger times (ms after
    the R wave, in phase order; ``source`` names the element they came from).

    ``t_s`` is each trigger time less the first; the frame rate is one over the median step.
    No rate when a time is missing or the times do not increase (with a warning); records
    ``fps_source``, ``frame_time_ms`` and ``trigger_times_ms`` in ``metadata``.
    """
    if len(times_ms) < 2 or any(t is None for t in times_ms):
        return None, FrameClock(fps=None)
    steps = np.diff(np.asarray(times_ms, dtype=float))
    if np.any(steps <= 0):
        warnings.append(f"repeated {source} values within the slice; no frame rate from the files")
        return None, FrameClock(fps=None)
    step_ms = float(np.median(steps))
    if np.ptp(steps) > 0.05 * step_ms:
        warnings.append(f"{source} steps are uneven ({steps.min():.3f}..{steps.max():.3f} ms)")
    metadata["fps_source"] = source
    metadata["frame_time_ms"] = step_ms
    metadata["trigger_times_ms"] = [float(t) for t in times_ms]  # type: ignore[arg-type]
    t0 = float(times_ms[0])  # type: ignore[arg-type]
    times_s = tuple((float(t) - t0) / 1000.0 for t in times_ms)  # type: ignore[arg-type]
    return 1000.0 / step_ms, FrameClock(fps=1000.0 / step_ms, times_s=times_s)


def user_metadata(header: Dataset, warnings: list[str]) -> dict[str, Any]:
    """The JSON object that :func:`write_dicom` stored in the private block, else {}."""
    try:
        element = header.private_block(PRIVATE_GROUP, PRIVATE_CREATOR)[PRIVATE_METADATA_ELEMENT]
    except KeyError:
        return {}
    value = element.value
    text = value.decode("utf-8", errors="replace") if isinstance(value, bytes) else str(value)
    try:
        data = json.loads(text.rstrip("\x00 "))
    except json.JSONDecodeError as exc:
        warnings.append(f"private cardiostream metadata is not valid JSON ({exc}); ignored")
        return {}
    if not isinstance(data, dict):
        warnings.append("private cardiostream metadata is not a JSON object; ignored")
        return {}
    return data


def common_metadata(header: Dataset, fmt: FrameFormat) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "transfer_syntax": str(header.file_meta.get("TransferSyntaxUID", "")) if hasattr(header, "file_meta") else "",
        "photometric_interpretation": fmt.photometric,
        "bits_stored": fmt.bits_stored,
    }
    if sop := header.get("SOPClassUID"):
        meta["sop_class_uid"] = str(sop)
    slope, intercept = number(header, "RescaleSlope"), number(header, "RescaleIntercept")
    if (slope is not None and slope != 1.0) or (intercept is not None and intercept != 0.0):
        meta["rescale_slope"] = 1.0 if slope is None else slope
        meta["rescale_intercept"] = 0.0 if intercept is None else intercept
        meta["rescale_applied"] = False
    if fmt.photometric == "MONOCHROME1":
        meta["inverted_to_monochrome2"] = True
    if fmt.palette is not None:
        meta["palette_applied"] = True  # PALETTE COLOR frames come out as RGB uint8
    return meta


# ---------------------------------------------------------------------------------------
# Pixel data: locate, check for truncation, decode
# ---------------------------------------------------------------------------------------
def read_header(fh: IO[bytes], path: Path) -> Dataset:
    """Header up to (not including) the pixel data; ``fh`` is left at the pixel data tag."""
    size = os.fstat(fh.fileno()).st_size
    try:
        header = pydicom.dcmread(fh, stop_before_pixels=True)
    except InvalidDicomError as exc:
        hint = "truncated (the file ends inside the preamble / file meta)" if size < 256 else "not a DICOM file"
        raise ClipError(f"{hint}: {exc}", path=path) from exc
    except HEADER_ERRORS as exc:
        raise ClipError(f"truncated or corrupt header: {type(exc).__name__}: {exc}", path=path) from exc
    if fh.tell() >= size:
        # pydicom stops quietly at the end of the data; an image header must be followed by pixels.
        what = "truncated" if header.get("Rows") is not None else "truncated, or not an image"
        raise ClipError(f"{what}: the file ends at byte {size} inside the header, before any pixel data", path=path)
    return header


def check_pixel_data(fh: IO[bytes], header: Dataset, fmt: FrameFormat, n_frames: int, path: Path) -> list[str]:
    """Check that the pixel data can hold ``n_frames`` frames; ``fh`` must be at its tag.

    Cheap: reads element and item headers only and seeks over the values.  Raises a
    "truncated" :class:`ClipError` when frames are missing; returns warnings otherwise.
    """
    size = os.fstat(fh.fileno()).st_size
    start = fh.tell()
    tsyntax = UID(header.file_meta.TransferSyntaxUID)
    endian = "<" if tsyntax.is_little_endian else ">"
    head = fh.read(8)
    if len(head) < 8:
        raise ClipError(
            f"truncated: the file ends at byte {size} before the (7FE0,0010) Pixel Data element "
            f"(header declares {n_frames} frames)",
            path=path,
        )
    group, element = struct.unpack(f"{endian}HH", head[:4])
    tag = group << 16 | element
    if tag != _PIXEL_DATA:
        raise ClipError(f"pixel data element ({group:04X},{element:04X}) is not supported (only (7FE0,0010))", path=path)
    if tsyntax.is_implicit_VR:
        (length,) = struct.unpack(f"{endian}L", head[4:8])
    else:
        rest = fh.read(4)
        if len(rest) < 4:
            raise ClipError("truncated: the file ends inside the Pixel Data element header", path=path)
        (length,) = struct.unpack(f"{endian}L", rest)
    value_start = fh.tell()

    if not tsyntax.is_encapsulated:
        frame_bytes = fmt.native_frame_bytes()
        needed = math.ceil(n_frames * frame_bytes)
        if length == 0xFFFFFFFF:
            raise ClipError("corrupt: native pixel data with undefined length", path=path)
        in_file = max(0, min(length, size - value_start))
        if in_file < needed:
            where = "pixel data holds" if length < needed else "the file holds pixel data for"
            raise ClipError(
                f"truncated: header declares {n_frames} frames but {where} {int(in_file // frame_bytes)}",
                path=path,
            )
        fh.seek(start)
        return []

    # Encapsulated: walk the items (basic offset table, then one or more fragments per frame).
    warnings: list[str] = []
    items: list[tuple[int, int]] = []
    pos = value_start
    while True:
        fh.seek(pos)
        item = fh.read(8)
        if len(item) < 8:
            if items and pos == size:
                warnings.append("encapsulated pixel data ends without a sequence delimiter")
                break
            raise ClipError(
                f"truncated: encapsulated pixel data is cut after {max(len(items) - 1, 0)} complete fragments "
                f"(header declares {n_frames} frames)",
                path=path,
            )
        group, element, item_length = struct.unpack(f"{endian}HHL", item)
        item_tag = group << 16 | element
        if item_tag == _SEQ_DELIMITER:
            break
        if item_tag != _ITEM or item_length == 0xFFFFFFFF:
            raise ClipError(
                f"corrupt encapsulated pixel data: unexpected item ({group:04X},{element:04X}) at byte {pos}", path=path
            )
        if pos + 8 + item_length > size:
            raise ClipError(
                f"truncated: header declares {n_frames} frames but pixel data holds "
                f"{max(len(items) - 1, 0)} complete fragments (fragment {len(items)} runs past the end of the file)",
                path=path,
            )
        items.append((pos + 8, item_length))
        pos += 8 + item_length
    if not items:
        raise ClipError("corrupt encapsulated pixel data: no basic offset table item", path=path)
    (bot_start, bot_length), fragments = items[0], items[1:]
    if bot_length:
        fh.seek(bot_start)
        offsets = struct.unpack(f"{endian}{bot_length // 4}L", fh.read(bot_length - bot_length % 4))
        total = sum(8 + n for _, n in fragments)
        present = sum(1 for off in offsets if off < total)
        if len(offsets) < n_frames or present < n_frames:
            raise ClipError(
                f"truncated: header declares {n_frames} frames but pixel data holds {min(len(offsets), present)}",
                path=path,
            )
    elif "ExtendedOffsetTable" not in header and len(fragments) < n_frames:
        raise ClipError(
            f"truncated: header declares {n_frames} frames but pixel data holds {len(fragments)} fragments",
            path=path,
        )
    fh.seek(start)
    return warnings


def decoded_frames(
    fh: IO[bytes], fmt: FrameFormat, n_frames: int, path: Path, indices: Sequence[int] | None = None
) -> Iterator[np.ndarray]:
    """Decode frames one at a time from an open file (positioned anywhere): all ``n_frames``,
    or only the frames numbered ``indices`` (0-based, in the order given)."""
    fh.seek(0)
    wanted = range(n_frames) if indices is None else list(indices)
    produced = 0
    # closed here, while ``fh`` is still open, when the caller stops early: pydicom's
    # generator seeks the file back as it closes
    with closing(iter_pixels(fh) if indices is None else iter_pixels(fh, indices=wanted)) as frames:
        while produced < len(wanted):
            try:
                arr = next(frames)
            except StopIteration:
                break
            except Exception as exc:  # pydicom / Pillow decode errors have no common base class
                raise ClipError(
                    f"truncated or corrupt: frame {wanted[produced]} of {n_frames} cannot be "
                    f"decoded ({type(exc).__name__}: {exc})",
                    path=path,
                ) from exc
            if fmt.photometric == "MONOCHROME1":
                arr = (~arr) if fmt.signed else (np.asarray((1 << fmt.bits_stored) - 1, dtype=arr.dtype) - arr)
            elif fmt.palette is not None:
                arr = fmt.palette[np.minimum(arr, len(fmt.palette) - 1)]
            yield arr
            produced += 1
    if produced < len(wanted):
        raise ClipError(f"truncated: declares {n_frames} frames, decoded {produced}", path=path)


def check_decoder(header: Dataset, path: Path) -> None:
    """Raise a :class:`ClipError` unless pydicom can decode the file's transfer syntax here."""
    tsyntax = UID(header.file_meta.get("TransferSyntaxUID", ""))
    if not tsyntax:
        raise ClipError("file meta has no Transfer Syntax UID", path=path)
    if tsyntax == DeflatedExplicitVRLittleEndian:
        raise ClipError("the deflated transfer syntax cannot be streamed frame by frame; inflate the file first", path=path)
    try:
        decoder = get_decoder(tsyntax)
    except NotImplementedError as exc:
        raise ClipError(f"transfer syntax {tsyntax.name} is not supported", path=path) from exc
    if not decoder.is_available:
        raise ClipError(
            f"no decoder installed for {tsyntax.name}: {'; '.join(decoder.missing_dependencies)}", path=path
        )


# ---------------------------------------------------------------------------------------
# Multi-frame file
# ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class FrameSelection:
    """Some frames of a multi-frame file, in the order they are to be yielded: the phases
    of one slice of an enhanced MR file (``indices``, 0-based frame numbers) with their
    trigger times (ms after the R wave, None where the file gives none)."""

    indices: tuple[int, ...]
    trigger_times_ms: tuple[float | None, ...]
    #: the element the trigger times came from (named in ``fps_source`` and warnings)
    trigger_source: str


class DicomClipReader(ClipReader):
    """A multi-frame (or single-frame) DICOM file, streamed frame by frame.

    With ``frames`` only the selected frames are yielded, in its order, and their timing is
    their trigger times (one slice of an enhanced multi-frame MR file: :mod:`.stack`).
    """

    def __init__(
        self,
        path: Path,
        *,
        spacing_mm: tuple[float, float] | None = None,
        fps: float | None = None,
        slice_index: int | None = None,
        frames: FrameSelection | None = None,
    ) -> None:
        self._path = Path(path)
        self._closed = False
        if slice_index not in (None, 0):
            raise ClipError(f"slice_index={slice_index} given, but a multi-frame DICOM file has one slice", path=path)
        try:
            fh = open(self._path, "rb")
        except FileNotFoundError as exc:
            raise ClipError("no such file", path=path) from exc
        except OSError as exc:
            raise ClipError(f"cannot open: {exc}", path=path) from exc
        with fh:
            header = read_header(fh, self._path)
            self._fmt = frame_format(header, self._path)
            self._file_frames = n_frames = int(number(header, "NumberOfFrames") or 1)
            if n_frames < 1:
                raise ClipError(f"NumberOfFrames is {n_frames}", path=path)
            check_decoder(header, self._path)
            warnings = check_pixel_data(fh, header, self._fmt, n_frames, self._path)

        metadata = common_metadata(header, self._fmt)
        spacing = header_spacing(header, self._fmt, metadata, warnings)
        self._indices = None if frames is None else frames.indices
        if frames is None:
            fps_file, clock = _timing(header, n_frames, metadata, warnings)
        else:
            outside = [i for i in frames.indices if not 0 <= i < n_frames]
            if outside or not frames.indices:
                raise ClipError(f"frames {list(frames.indices)} selected, but the file holds frames "
                                f"0..{n_frames - 1}", path=path)
            metadata["frames"] = list(frames.indices)
            fps_file, clock = trigger_timing(frames.trigger_times_ms, metadata, warnings,
                                             source=frames.trigger_source)
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
            format="dicom",
            n_frames=n_frames if frames is None else len(frames.indices),
            shape=self._fmt.shape,
            dtype=self._fmt.dtype.name,
            modality=str(header.get("Modality") or "OT"),
            spacing_mm=spacing,
            fps=fps_value,
            channels=None,
            metadata=merge_metadata(user_metadata(header, warnings), metadata),
        )

    def __iter__(self) -> Iterator[ClipFrame]:
        if self._closed:
            raise ClipError("reader is closed", path=self._path)
        try:
            fh = open(self._path, "rb")
        except OSError as exc:
            raise ClipError(f"cannot open: {exc}", path=self._path) from exc
        # the decoder closes before the file (a consumer that stops early leaves both open)
        with fh, closing(decoded_frames(fh, self._fmt, self._file_frames, self._path,
                                        self._indices)) as decoded:
            for index, arr in enumerate(decoded):
                yield ClipFrame(index=index, pixels=check_frame(arr, self.info, index), t_s=self._clock.t_s(index))

    def close(self) -> None:
        self._closed = True


# ---------------------------------------------------------------------------------------
# Writer
# ---------------------------------------------------------------------------------------
def _ds(value: float) -> str:
    return format_number_as_ds(float(value))


def new_dataset(sop_class) -> tuple[Dataset, _dt.datetime]:
    """An empty Part-10 dataset of ``sop_class`` (explicit VR little endian, a new SOP
    Instance UID) and the time it was made (for the dates the writer sets)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    return ds, _dt.datetime.now()


def write_dicom(path: Path, args: WriteArgs) -> None:
    """Write an uncompressed multi-frame DICOM file (Explicit VR Little Endian).

    Accepts uint8 / uint16 grey (T, rows, cols) and uint8 RGB (T, rows, cols, 3).
    Other dtypes (float, signed) and multichannel data are refused with a ClipError: no
    implicit scaling.  SOP class: Ultrasound Multi-frame Image Storage for modality US,
    else the multi-frame secondary capture class for the pixel type (grey byte / grey
    word / true colour).  Writes FrameTime (ms), CineRate and RecommendedDisplayFrameRate
    (frames/s, rounded), NumberOfFrames, PixelSpacing (mm, when known; for US also one
    ultrasound region over the whole image in cm) and the metadata JSON privately.
    """
    frames = args.frames
    if args.channels is not None or (frames.ndim == 4 and frames.shape[3] != 3):
        what = f"channels {args.channels}" if args.channels else f"{frames.shape[-1]}-channel frames"
        raise ClipError(f"DICOM holds grey or RGB frames, not {what}; write .nii/.nii.gz or .npz instead", path=path)
    rgb = frames.ndim == 4
    if frames.dtype == np.uint8:
        bits = 8
    elif frames.dtype == np.uint16 and not rgb:
        bits = 16
    else:
        raise ClipError(
            f"DICOM writer stores uint8 (grey or RGB) or uint16 (grey) frames, got {frames.dtype}"
            f"{' RGB' if rgb else ''}; convert explicitly (e.g. scale to uint16) or write .nii/.npz",
            path=path,
        )
    n_frames, rows, cols = frames.shape[:3]

    if args.modality == "US":
        sop_class = UltrasoundMultiFrameImageStorage
    elif rgb:
        sop_class = MultiFrameTrueColorSecondaryCaptureImageStorage
    elif bits == 8:
        sop_class = MultiFrameGrayscaleByteSecondaryCaptureImageStorage
    else:
        sop_class = MultiFrameGrayscaleWordSecondaryCaptureImageStorage

    ds, now = new_dataset(sop_class)
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = args.modality
    ds.StudyDate = ds.ContentDate = now.strftime("%Y%m%d")
    ds.StudyTime = ds.ContentTime = now.strftime("%H%M%S")
    ds.PatientName = ""
    ds.PatientID = ""
    ds.PatientBirthDate = ""
    ds.PatientSex = ""
    ds.ReferringPhysicianName = ""
    ds.AccessionNumber = ""
    ds.StudyID = ""
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.PatientOrientation = ""
    ds.Manufacturer = "cardiostream"
    if sop_class != UltrasoundMultiFrameImageStorage:
        ds.ConversionType = "WSD"
    ds.ImageType = ["DERIVED", "SECONDARY"]

    ds.NumberOfFrames = n_frames
    ds.FrameTime = _ds(1000.0 / args.fps)
    ds.FrameIncrementPointer = pydicom.tag.Tag("FrameTime")
    ds.CineRate = max(1, round(args.fps))
    ds.RecommendedDisplayFrameRate = max(1, round(args.fps))
    if args.spacing_mm is not None:
        ds.PixelSpacing = [_ds(args.spacing_mm[0]), _ds(args.spacing_mm[1])]
        if args.modality == "US":
            region = Dataset()
            region.RegionSpatialFormat = _US_SPATIAL_2D
            region.RegionDataType = 1  # tissue
            region.RegionFlags = 0
            region.RegionLocationMinX0, region.RegionLocationMinY0 = 0, 0
            region.RegionLocationMaxX1, region.RegionLocationMaxY1 = cols - 1, rows - 1
            region.PhysicalUnitsXDirection = region.PhysicalUnitsYDirection = _US_UNITS_CM
            region.PhysicalDeltaX = args.spacing_mm[1] / 10.0
            region.PhysicalDeltaY = args.spacing_mm[0] / 10.0
            ds.SequenceOfUltrasoundRegions = [region]

    ds.Rows, ds.Columns = rows, cols
    ds.SamplesPerPixel = 3 if rgb else 1
    ds.PhotometricInterpretation = "RGB" if rgb else "MONOCHROME2"
    if rgb:
        ds.PlanarConfiguration = 0
    ds.BitsAllocated = ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.PixelRepresentation = 0
    ds.LossyImageCompression = "00"
    ds.private_block(PRIVATE_GROUP, PRIVATE_CREATOR, create=True).add_new(
        PRIVATE_METADATA_ELEMENT, "UT", args.metadata_json
    )
    data = frames.astype(frames.dtype.newbyteorder("<"), copy=False).tobytes()
    if len(data) % 2:
        data += b"\x00"
    ds.add_new(_PIXEL_DATA, "OB" if bits == 8 else "OW", data)
    with atomic_output(path) as tmp:
        try:
            ds.save_as(tmp, enforce_file_format=True)
        except (OSError, ValueError) as exc:
            raise ClipError(f"cannot write DICOM: {exc}", path=path) from exc
