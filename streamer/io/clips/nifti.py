"""NIfTI clips (``.nii``, ``.nii.gz``) through nibabel's lazy array proxy.

Axis conventions.  nibabel indexes voxels as (x, y, z, t[, c]); a frame is yielded as
(rows = y, cols = x), i.e. transposed, and a 5th axis becomes the channel axis
(rows, cols, C).  Layouts read:

* 2-D (x, y): one frame;
* 3-D (x, y, t): a one-slice cine (the third axis is taken as time); with
  ``third_axis="slice"`` one phase of a stack (x, y, z): ``slice_index`` picks z and the
  clip has one frame (:mod:`.stack` reads 3-D files so);
* 4-D (x, y, z, t): ``slice_index`` picks z (default the middle slice);
* 5-D (x, y, z, t, C): as 4-D with C channels per frame.

Units.  Spacing is (pixdim_y, pixdim_x) converted to mm from the header's spatial unit
(meter, mm, micron); when the unit is "unknown" the spacing is not guessed: it is None and
``metadata["warnings"]`` says so.  Frame time is pixdim[4] (pixdim[3] for 3-D files) in the
header's time unit (sec, msec, usec); "unknown" gives no fps, with a warning.

The header's voxel geometry (dims, pixdim, units, affine) is :attr:`NiftiClipReader.geometry`.

Frames are read one at a time as ``img.dataobj[..., t]`` from a file object the reader
owns (for ``.nii.gz`` a forward-only gzip stream), never ``get_fdata()`` of the whole.

:func:`write_nifti` writes (x, y, 1, t) or (x, y, 1, t, C) with units mm / s and stores
modality, channel names, the exact (float64) spacing and frame rate that the float32 header
fields round, and the caller's metadata as JSON in a "comment" header extension.
"""

from __future__ import annotations

import gzip
import json
import math
import os
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import nibabel as nib
import numpy as np
from nibabel.filebasedimages import ImageFileError
from nibabel.nifti1 import Nifti1Extension
from nibabel.spatialimages import HeaderDataError

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
    full_suffix,
    merge_metadata,
    native_dtype_name,
)

__all__ = ["NiftiClipReader", "NiftiGeometry", "write_nifti"]

EXTENSION_KEY = "cardiostream"
_COMMENT = 6  # NIfTI-1 extension code "comment"
_SPATIAL_TO_MM = {"meter": 1000.0, "mm": 1.0, "micron": 1e-3}
_TIME_TO_S = {"sec": 1.0, "msec": 1e-3, "usec": 1e-6}
_READ_ERRORS = (EOFError, OSError, ValueError, zlib.error, gzip.BadGzipFile, HeaderDataError, ImageFileError)


def _open_image(fh: IO[bytes], path: Path) -> nib.Nifti1Image:
    """Parse a NIfTI-1 or NIfTI-2 header from ``fh`` (data stay in the file)."""
    errors = []
    for klass in (nib.Nifti1Image, nib.Nifti2Image):
        fh.seek(0)
        try:
            return klass.from_stream(fh)
        except _READ_ERRORS as exc:
            errors.append(f"{klass.__name__}: {exc}")
    raise ClipError(f"truncated or not a NIfTI file ({'; '.join(errors)})", path=path)


@dataclass(frozen=True)
class NiftiGeometry:
    """What a NIfTI header says of its voxels, as stated (the readers of slices x phases use it)."""

    #: voxel array shape, nibabel's (x, y, z, t[, c]) order
    dims: tuple[int, ...]
    #: pixdim[1..ndim] in the header's units as the file states them (nibabel would set a
    #: zero to 1), each as its shortest decimal
    zooms: tuple[float, ...]
    #: xyzt_units: "mm", "meter", "micron" or "unknown"; "sec", "msec", "usec" or "unknown"
    space_unit: str
    time_unit: str
    #: voxel (i, j, k, 1) -> RAS+ mm (nibabel's ``affine``: sform, else qform), 4 x 4
    affine: tuple[tuple[float, ...], ...]

    @property
    def voxel_mm(self) -> tuple[float, ...] | None:
        """pixdim[1..3] (x, y, z) in mm (not checked); None when the spatial unit is unknown
        or the image has fewer than three axes."""
        scale = _SPATIAL_TO_MM.get(self.space_unit)
        if scale is None or len(self.zooms) < 3:
            return None
        return tuple(z * scale for z in self.zooms[:3])

    @property
    def frame_time_ms(self) -> float | None:
        """pixdim[4] in ms for 4-D and 5-D images; None when the time unit is unknown or the
        step is not positive."""
        scale = _TIME_TO_S.get(self.time_unit)
        if scale is None or len(self.zooms) < 4 or not self.zooms[3] > 0:
            return None
        return self.zooms[3] * scale * 1000.0


def _stated_zooms(fh: IO[bytes], header_class: type) -> tuple[float, ...]:
    """pixdim[1..ndim] as the file states them: nibabel's checked header sets a zero to 1
    (with a log line only), so the header is read again unchecked."""
    fh.seek(0)
    raw = header_class.from_fileobj(fh, check=False)
    return tuple(float(str(np.float32(v))) for v in raw.get_zooms())


def _cardiostream_extension(header: Any, warnings: list[str]) -> dict[str, Any]:
    for ext in header.extensions:
        if ext.get_code() != _COMMENT:
            continue
        content = ext.get_content()
        text = content.decode("utf-8", errors="replace") if isinstance(content, bytes) else str(content)
        if not text.lstrip().startswith("{"):
            continue
        try:
            data = json.loads(text.rstrip("\x00 "))
        except json.JSONDecodeError:
            continue
        if isinstance(data, dict) and isinstance(data.get(EXTENSION_KEY), dict):
            return data[EXTENSION_KEY]
    return {}


def _exact(header_value: float, stored: Any, what: str, warnings: list[str]) -> float:
    """The extension's exact value where it agrees with the float32 header field, else the header's."""
    try:
        value = float(stored)
    except (TypeError, ValueError):
        warnings.append(f"extension {what} {stored!r} is not a number; the header value is used")
        return header_value
    if math.isfinite(value) and abs(value - header_value) <= 1e-6 * abs(header_value):
        return value
    warnings.append(f"extension {what} {value} disagrees with the header's {header_value}; the header value is used")
    return header_value


class NiftiClipReader(ClipReader):
    """Reader for NIfTI-1/-2 clips (see the module docstring for axes and units)."""

    def __init__(
        self,
        path: Path,
        *,
        spacing_mm: tuple[float, float] | None = None,
        fps: float | None = None,
        slice_index: int | None = None,
        third_axis: str = "time",
    ) -> None:
        if third_axis not in ("time", "slice"):
            raise ValueError(f"third_axis must be 'time' or 'slice', got {third_axis!r}")
        self._path = Path(path)
        self._gz = full_suffix(self._path).endswith(".gz")
        self._raw: IO[bytes] | None = None
        try:
            self._fh: IO[bytes] | None = self._open()
        except FileNotFoundError as exc:
            raise ClipError("no such file", path=path) from exc
        except OSError as exc:
            raise ClipError(f"cannot open: {exc}", path=path) from exc
        try:
            self._init(spacing_mm, fps, slice_index, third_axis == "slice")
        except BaseException:
            self.close()
            raise

    def _open(self) -> IO[bytes]:
        self._raw = open(self._path, "rb")
        return gzip.GzipFile(fileobj=self._raw, mode="rb") if self._gz else self._raw  # type: ignore[return-value]

    def _init(
        self,
        spacing_override: tuple[float, float] | None,
        fps_override: float | None,
        slice_index: int | None,
        volume: bool,
    ) -> None:
        assert self._fh is not None
        img = _open_image(self._fh, self._path)
        header = img.header
        stated_zooms = _stated_zooms(self._fh, type(header))
        dims = tuple(int(d) for d in img.shape)
        ndim = len(dims)
        if ndim not in (2, 3, 4, 5):
            raise ClipError(f"{ndim}-D NIfTI is not a clip (2-D to 5-D only), shape {dims}", path=self._path)
        volume = volume and ndim == 3  # a 3-D image read as one phase of a stack (x, y, z)
        n_slices = dims[2] if ndim >= 4 or volume else 1
        if ndim >= 4 or volume:
            z = n_slices // 2 if slice_index is None else slice_index
        else:
            z = 0 if slice_index is None else slice_index
        if not 0 <= z < n_slices:
            raise ClipError(f"slice_index {slice_index} is out of range: the image has {n_slices} slices", path=self._path)
        n_frames = 1 if volume or ndim == 2 else dims[2] if ndim == 3 else dims[3]
        n_channels = dims[4] if ndim == 5 else None

        raw_dtype = np.dtype(img.get_data_dtype())
        rgb_struct = raw_dtype.fields is not None
        if rgb_struct and (ndim == 5 or set(raw_dtype.names or ()) - {"R", "G", "B", "A"}):
            raise ClipError(f"structured voxel type {raw_dtype} is not supported", path=self._path)
        slope, inter = header.get_slope_inter()
        scaled = not (slope in (None, 1.0) and inter in (None, 0.0))
        if rgb_struct:
            out_dtype = np.dtype(np.uint8)
        elif scaled:
            out_dtype = np.result_type(raw_dtype, np.float32)
        else:
            out_dtype = raw_dtype
        shape: tuple[int, ...] = (dims[1], dims[0])
        if rgb_struct:
            shape += (len(raw_dtype.names or ()),)
        elif n_channels is not None:
            shape += (n_channels,)

        if not self._gz:
            needed = int(img.dataobj.offset) + math.prod(dims) * raw_dtype.itemsize
            size = os.fstat(self._fh.fileno()).st_size
            if size < needed:
                frame_bytes = math.prod(dims) // max(n_frames, 1) * raw_dtype.itemsize
                have = max(0, size - int(img.dataobj.offset)) // frame_bytes if frame_bytes else 0
                raise ClipError(
                    f"truncated: header declares {n_frames} frames ({needed} bytes) but the file holds {size} bytes "
                    f"(about {have} volumes of data)",
                    path=self._path,
                )

        warnings: list[str] = []
        stored = _cardiostream_extension(header, warnings)
        metadata: dict[str, Any] = {
            "nifti_shape": list(dims),
            "slice_index": z,
            "n_slices": n_slices,
            "affine": np.asarray(img.affine, dtype=float).round(9).tolist(),
        }
        if scaled:
            metadata["scl_slope"] = None if slope is None else float(slope)
            metadata["scl_inter"] = None if inter is None else float(inter)
            metadata["rescale_applied"] = True
        # pixdim is float32: take each value as its shortest decimal (0.3, not 0.30000001).
        zooms = [float(str(np.float32(v))) for v in header.get_zooms()]
        space_unit, time_unit = header.get_xyzt_units()
        spacing: tuple[float, float] | None = None
        if space_unit in _SPATIAL_TO_MM:
            zy, zx = zooms[1] * _SPATIAL_TO_MM[space_unit], zooms[0] * _SPATIAL_TO_MM[space_unit]
            if zy > 0 and zx > 0:
                spacing = (zy, zx)
                metadata["calibration_source"] = f"pixdim ({space_unit})"
            else:
                warnings.append(f"pixdim x/y {zooms[:2]} are not positive; no spacing")
        else:
            warnings.append(f"NIfTI spatial unit is '{space_unit}': pixdim {zooms[:2]} not taken as mm; no spacing")
        fps_file: float | None = None
        if ndim >= 3 and not volume:
            axis = 3 if ndim >= 4 else 2
            if ndim == 3:
                metadata["time_axis"] = 2
            frame_time = zooms[axis] if axis < len(zooms) else 0.0
            if time_unit in _TIME_TO_S and frame_time > 0:
                frame_time_s = frame_time * _TIME_TO_S[time_unit]
                fps_file = 1.0 / frame_time_s
                metadata["frame_time_ms"] = frame_time_s * 1000.0
                metadata["fps_source"] = f"pixdim[{axis + 1}] ({time_unit})"
            elif n_frames > 1:
                warnings.append(f"NIfTI time unit '{time_unit}' with frame step {frame_time}: no frame rate")
        # The header fields are float32; the extension keeps the writer's exact values.
        if spacing is not None and isinstance(stored.get("spacing_mm"), list) and len(stored["spacing_mm"]) == 2:
            spacing = (
                _exact(spacing[0], stored["spacing_mm"][0], "row spacing (mm)", warnings),
                _exact(spacing[1], stored["spacing_mm"][1], "column spacing (mm)", warnings),
            )
        if fps_file is not None and stored.get("fps") is not None:
            fps_file = _exact(fps_file, stored["fps"], "frame rate (1/s)", warnings)
            metadata["frame_time_ms"] = 1000.0 / fps_file
        if warnings:
            metadata["warnings"] = warnings

        spacing, fps_value, self._clock = apply_overrides(
            spacing_file=spacing,
            fps_file=fps_file,
            clock_file=FrameClock(fps=fps_file),
            spacing_override=spacing_override,
            fps_override=fps_override,
            metadata=metadata,
            path=self._path,
        )
        channels = stored.get("channels")
        if channels is not None:
            channels = tuple(str(c) for c in channels)
            if n_channels is None or len(channels) != n_channels:
                raise ClipError(f"stored channel names {channels} do not match the image shape {dims}", path=self._path)
        user = stored.get("metadata", {})
        self._ndim, self._z, self._rgb_struct, self._out_dtype = ndim, z, rgb_struct, out_dtype
        self._volume = volume
        self._img = img
        self.geometry = NiftiGeometry(
            dims=dims,
            zooms=stated_zooms,
            space_unit=str(space_unit),
            time_unit=str(time_unit),
            affine=tuple(tuple(float(v) for v in row) for row in np.asarray(img.affine, dtype=float)),
        )
        self.info = ClipInfo(
            path=str(self._path),
            format="nifti",
            n_frames=n_frames,
            shape=shape,
            dtype=native_dtype_name(out_dtype),
            modality=str(stored.get("modality") or "OT"),
            spacing_mm=spacing,
            fps=fps_value,
            channels=channels,
            metadata=merge_metadata(user if isinstance(user, dict) else {}, metadata),
        )

    def _frame(self, t: int) -> np.ndarray:
        proxy = self._img.dataobj
        if self._ndim == 2:
            xy = proxy[:, :]
        elif self._ndim == 3:
            xy = proxy[:, :, self._z if self._volume else t]
        elif self._ndim == 4:
            xy = proxy[:, :, self._z, t]
        else:
            xy = proxy[:, :, self._z, t, :]
        xy = np.asarray(xy)
        if self._rgb_struct:
            xy = np.stack([xy[name] for name in xy.dtype.names], axis=-1)
        frame = np.swapaxes(xy, 0, 1)  # (x, y[, C]) -> (rows = y, cols = x[, C])
        return frame.astype(self._out_dtype, copy=False)

    def __iter__(self) -> Iterator[ClipFrame]:
        if self._fh is None:
            raise ClipError("reader is closed", path=self._path)
        if self._gz:
            # A gzip stream only seeks forward cheaply: restart it for every pass.
            self._fh.seek(0)
        for t in range(self.info.n_frames):
            try:
                frame = self._frame(t)
            except _READ_ERRORS as exc:
                raise ClipError(
                    f"truncated or corrupt: declares {self.info.n_frames} frames, frame {t} cannot be read "
                    f"({type(exc).__name__}: {exc})",
                    path=self._path,
                ) from exc
            if self._gz and t == self.info.n_frames - 1:
                self._check_gzip_end()
            yield ClipFrame(index=t, pixels=check_frame(frame, self.info, t), t_s=self._clock.t_s(t))

    def _check_gzip_end(self) -> None:
        """Read the gzip stream to its end so a cut trailer (CRC, size) is noticed."""
        assert self._fh is not None
        try:
            while self._fh.read(1 << 16):
                pass
        except _READ_ERRORS as exc:
            raise ClipError(
                f"truncated or corrupt: the gzip stream ends early or fails its check ({type(exc).__name__}: {exc})",
                path=self._path,
            ) from exc

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()  # a GzipFile does not close the file it wraps
            self._fh = None
        if self._raw is not None:
            self._raw.close()
            self._raw = None


def write_nifti(path: Path, args: WriteArgs) -> None:
    """Write a NIfTI-1 clip: voxel array (x, y, 1, t) or (x, y, 1, t, C), dtype kept, NaN kept.

    pixdim x, y are the column and row spacing in mm (1.0 with unit "unknown" when the
    spacing is not known), pixdim[4] the frame time in seconds.  Modality, channel names,
    RGB-ness and the caller's metadata go into a JSON "comment" extension.
    """
    frames = args.frames
    if frames.dtype == np.float16:
        raise ClipError("NIfTI has no float16 voxel type; convert to float32 first", path=path)
    data = np.moveaxis(frames, (0, 1, 2), (2, 1, 0))  # (T, r, c[, C]) -> (c, r, T[, C])
    data = np.expand_dims(data, 2)  # (x, y, 1, t[, C])
    col_mm, row_mm = (args.spacing_mm[1], args.spacing_mm[0]) if args.spacing_mm else (1.0, 1.0)
    img = nib.Nifti1Image(np.asarray(data), np.diag([col_mm, row_mm, 1.0, 1.0]))
    header = img.header
    header.set_data_dtype(frames.dtype)
    header.set_xyzt_units("mm" if args.spacing_mm else "unknown", "sec")
    header.set_zooms((col_mm, row_mm, 1.0, 1.0 / args.fps) + ((1.0,) if frames.ndim == 4 else ()))
    if frames.ndim == 4 and not args.is_rgb:
        header.set_intent("vector")
    stored = {
        EXTENSION_KEY: {
            "version": 1,
            "modality": args.modality,
            "channels": list(args.channels) if args.channels else None,
            "rgb": args.is_rgb,
            "fps": args.fps,
            "spacing_mm": list(args.spacing_mm) if args.spacing_mm else None,
            "metadata": json.loads(args.metadata_json),
        }
    }
    header.extensions.append(Nifti1Extension(_COMMENT, json.dumps(stored).encode("utf-8")))
    header["descrip"] = f"cardiostream {args.modality}".encode()
    with atomic_output(path) as tmp:
        try:
            img.to_filename(tmp)
        except (HeaderDataError, ValueError, OSError) as exc:
            raise ClipError(f"cannot write NIfTI: {exc}", path=path) from exc
