"""Velocity-mapping folders (streamer.io.clips.velocity_series): magnitude and phase series
of one slice, written by write_velocity_series in both styles, read back through open_clip
as (rows, cols, 4) float32 frames; bad input refused with the file or series named."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from streamer.io.clips import ClipError, open_clip
from streamer.io.clips.dicom_series import DicomSeriesReader
from streamer.io.clips.velocity_series import (
    APEX_LPS,
    CHANNELS,
    VelocityEncoding,
    VelocitySeriesReader,
    phase_to_velocity,
    write_velocity_series,
)

VENC = 20.0
TIMES_MS = [0.0, 45.0, 90.0, 135.0, 180.0, 225.0]
SPACING = (1.5, 1.6)
#: a short-axis-like orientation (the Sunnybrook one, made orthonormal): oblique to every
#: patient axis, its row x column normal pointing away from the apex
_ROW = np.array([0.77038, 0.618446, 0.155046])
_ROW /= np.linalg.norm(_ROW)
_COL = np.array([-0.15161, 0.41389, -0.897613])
_COL -= (_COL @ _ROW) * _ROW
_COL /= np.linalg.norm(_COL)
ROTATED = (*_ROW, *_COL)
AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)


def _cycle(amplitude: float, t: int = 6, rows: int = 32, cols: int = 40) -> tuple[np.ndarray, np.ndarray]:
    """A smooth synthetic cycle: magnitude (T, rows, cols) and velocities (T, rows, cols, 3)
    in cm/s whose vector length stays within ``amplitude`` x VENC (so every encoding's
    component does too, whatever its direction)."""
    tt, yy, xx = np.meshgrid(np.arange(t), np.arange(rows), np.arange(cols), indexing="ij")
    a = 2 * np.pi * (xx / cols + tt / t)
    b = 2 * np.pi * (yy / rows - tt / t)
    unit = np.stack([np.sin(a), np.cos(a) * np.sin(b), np.cos(a) * np.cos(b)], axis=-1)
    length = amplitude * VENC * (0.55 + 0.45 * np.sin(2 * np.pi * (xx + yy) / 50.0 + tt))
    magnitude = 400.0 + 300.0 * np.cos(2 * np.pi * xx / cols) * np.sin(2 * np.pi * yy / rows + tt)
    return magnitude, unit * length[..., None]


def _write(folder: Path, style: str = "siemens", amplitude: float = 0.8, iop=ROTATED, **kwargs):
    magnitude, velocity = _cycle(amplitude, **kwargs.pop("cycle", {}))
    write_velocity_series(folder, magnitude, velocity, SPACING, TIMES_MS, VENC, style=style,
                          image_orientation_patient=iop, **kwargs)
    return magnitude, velocity


def _read(folder: Path) -> tuple[VelocitySeriesReader, np.ndarray]:
    with open_clip(folder) as reader:
        frames = np.stack([f.pixels for f in reader])
        times = [f.t_s for f in reader]
    assert isinstance(reader, VelocitySeriesReader)
    assert times == pytest.approx([(t - TIMES_MS[0]) / 1000 for t in TIMES_MS])
    return reader, frames


# ---------------------------------------------------------------------------------------
# round trips
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("style, encodings, step, mapping", [
    # Siemens: rl/ap/fh are patient axes, oblique to the rotated image: the 3x3 solve
    ("siemens", None, VENC / 2048, "solved 3x3"),
    ("siemens", ("rl", "ap", "in"), VENC / 2048, "solved 3x3"),
    # standard: the (0018,9197) directions along the image axes: a signed permutation
    ("standard", None, VENC / 32768, "signed permutation"),
])
def test_round_trip(tmp_path, style, encodings, step, mapping):
    magnitude, velocity = _write(tmp_path / "vm", style, encodings=encodings)
    reader, frames = _read(tmp_path / "vm")
    info = reader.info
    assert info.channels == CHANNELS == ("magnitude", "v_x", "v_y", "v_z")
    assert info.shape == (32, 40, 4) and info.dtype == "float32" and frames.dtype == np.float32
    assert info.n_frames == 6 and frames.shape == (6, 32, 40, 4)
    assert info.modality == "MR" and info.format == "dicom-velocity-series"
    assert info.spacing_mm == SPACING
    assert info.fps == pytest.approx(1000 / 45)
    meta = info.metadata
    json.dumps(meta, allow_nan=False)  # the replay sends it in the stream's start
    assert meta["venc_cm_s"] == VENC
    assert meta["velocity_channels_source"] == ("siemens-sequence-name" if style == "siemens" else "dicom-9197")
    assert meta["velocity_axes_mapping"] == mapping
    assert meta["image_orientation_patient"] == pytest.approx(list(ROTATED), abs=1e-9)
    assert "warnings" not in meta and max(meta["phase_wrap_share"]) == 0
    by_axis = np.array(meta["venc_cm_s_by_axis"])
    if style == "standard":
        assert by_axis.tolist() == [VENC] * 3
    else:  # oblique encodings: each image axis is bounded by the sum over them
        assert np.all(by_axis >= VENC - 1e-6) and by_axis.max() > VENC
    # within the quantisation: half a step of each encoding, through the solve (by_axis / VENC
    # is the sum of |solve| over the encodings of each axis)
    assert np.all(np.abs(frames[..., 1:] - velocity).max(axis=(0, 1, 2)) <= by_axis / VENC * step / 2 + 1e-5)
    slope = magnitude.max() / 4095
    assert np.abs(frames[..., 0] - magnitude).max() <= slope / 2 + 1e-4


def test_replay_and_analyze_open_a_velocity_folder_as_one_clip(tmp_path):
    """``open_input`` (what replay and analyze read) takes the folder as the velocity clip,
    not as a folder mixing four series."""
    from streamer.io.clips import open_input

    _write(tmp_path / "vm", "standard")
    with open_input(tmp_path / "vm") as reader:
        assert isinstance(reader, VelocitySeriesReader) and reader.info.n_frames == 6


def test_phase_images_of_one_series_are_grouped_by_encoding_direction(tmp_path):
    _, velocity = _write(tmp_path / "vm", "standard", one_phase_series=True)
    reader, frames = _read(tmp_path / "vm")
    assert len({e["series"] for e in reader.info.metadata["velocity_encodings"]}) == 1
    assert np.abs(frames[..., 1:] - velocity).max() <= VENC / 32768


def test_series_descriptions_tell_magnitude_from_phase_as_a_last_resort(tmp_path):
    folder = tmp_path / "vm"
    _, velocity = _write(folder, "standard", iop=AXIAL, cycle={"t": 6, "rows": 8, "cols": 10})
    for file in folder.iterdir():
        ds = pydicom.dcmread(file)
        ds.ImageType = ["DERIVED", "SECONDARY"]
        del ds.ComplexImageComponent
        ds.SeriesDescription = "tpm_flow_MAG" if file.name.startswith("IM_01") else f"tpm_flow_P{file.name[4]}"
        ds.save_as(file)
    reader, frames = _read(folder)
    assert any("SeriesDescription only" in w for w in reader.info.metadata["warnings"])
    assert np.abs(frames[..., 1:] - velocity).max() <= VENC / 32768


@pytest.mark.parametrize("iop", [ROTATED, AXIAL], ids=["rotated", "axial"])
def test_v_z_is_positive_towards_the_apex(tmp_path, iop):
    """Tissue moving 10 cm/s through the slice towards the apex: the stored rl/ap/fh phase
    images, decoded here by hand, hold a patient-axis velocity along the slice normal with a
    positive component towards the nominal apex, and the reader gives v_z = +10."""
    folder = tmp_path / "vm"
    magnitude = np.full((6, 8, 10), 500.0)
    velocity = np.zeros((6, 8, 10, 3))
    velocity[..., 2] = 10.0
    write_velocity_series(folder, magnitude, velocity, SPACING, TIMES_MS, VENC, style="siemens",
                          image_orientation_patient=iop)
    lps = []
    for series in (2, 3, 4):  # rl, ap, fh: +x, +y, +z of the patient axes (LPS)
        ds = pydicom.dcmread(folder / f"IM_{series:02d}_001.dcm")
        real = ds.pixel_array.astype(float) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
        lps.append(float(real.mean()) / 4096 * VENC)
    lps = np.array(lps)
    normal = np.cross(iop[:3], iop[3:])
    assert np.linalg.norm(lps) == pytest.approx(10.0, abs=0.02)
    assert abs(lps @ normal) == pytest.approx(10.0, abs=0.02)  # through the slice
    assert lps @ APEX_LPS > 0  # towards the apex
    if iop == AXIAL:  # an axial slice: the apex lies towards the feet (-z)
        assert lps == pytest.approx([0.0, 0.0, -10.0], abs=0.02)
    reader, frames = _read(folder)
    assert np.asarray(reader.info.metadata["slice_normal_lps"]) @ APEX_LPS > 0
    assert frames[..., 3] == pytest.approx(10.0, abs=0.02)
    assert np.abs(frames[..., 1:3]).max() < 0.02


def test_phase_rule_siemens_unsigned_12_bit_and_signed_16_bit():
    encoding = VelocityEncoding((1.0, 0.0, 0.0), VENC, -VENC, "siemens-sequence-name", "rl")
    siemens = Dataset()
    siemens.BitsAllocated, siemens.BitsStored, siemens.PixelRepresentation = 16, 12, 0
    siemens.RescaleSlope, siemens.RescaleIntercept = "2", "-4096"
    a, b, _ = phase_to_velocity(siemens, encoding)
    stored = np.array([0, 2048, 4095])  # rescaled: -4096, 0, 4094
    assert stored * a + b == pytest.approx([-VENC, 0.0, VENC * 4094 / 4096])

    signed = Dataset()
    signed.BitsAllocated, signed.BitsStored, signed.PixelRepresentation = 16, 16, 1
    a, b, _ = phase_to_velocity(signed, encoding)
    stored = np.array([-32768, 0, 16384, 32767])
    assert stored * a + b == pytest.approx([-VENC, 0.0, VENC / 2, VENC * 32767 / 32768])

    # a real-world value mapping in velocity units wins over the rule (mm/s -> cm/s)
    item, unit = Dataset(), Dataset()
    unit.CodeValue, unit.CodingSchemeDesignator, unit.CodeMeaning = "mm/s", "UCUM", "mm/s"
    item.MeasurementUnitsCodeSequence = [unit]
    item.RealWorldValueSlope, item.RealWorldValueIntercept = 0.5, -10.0
    signed.RealWorldValueMappingSequence = [item]
    a, b, rule = phase_to_velocity(signed, encoding)
    assert (a, b) == pytest.approx((0.05, -1.0)) and "RealWorldValueMapping" in rule


def test_wrapped_velocities_are_reported_not_unwrapped(tmp_path):
    _write(tmp_path / "vm", "siemens", amplitude=1.5)
    reader, frames = _read(tmp_path / "vm")
    warnings = reader.info.metadata["warnings"]
    assert any("phase wrapping likely" in w and "1.5 VENC" in w for w in warnings)
    assert max(reader.info.metadata["phase_wrap_share"]) > 0.001
    # the encodings stay within +-VENC as stored; the app unwraps
    assert np.isfinite(frames).all()


# ---------------------------------------------------------------------------------------
# bad input
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("style, tag", [("siemens", "SequenceName"), ("standard", "MRVelocityEncodingSequence")])
def test_a_phase_series_without_venc_is_refused_naming_the_file(tmp_path, style, tag):
    folder = tmp_path / "vm"
    _write(folder, style, cycle={"t": 6, "rows": 8, "cols": 10})
    for file in sorted(folder.glob("IM_03_*.dcm")):
        ds = pydicom.dcmread(file)
        delattr(ds, tag)
        ds.save_as(file)
    with pytest.raises(ClipError, match=r"IM_03_001\.dcm: phase image without a readable velocity "
                                        r"encoding \(VENC\)") as caught:
        open_clip(folder)
    assert "(0018,9197)" in str(caught.value) and "SequenceName (0018,0024)" in str(caught.value)


def test_a_phase_series_with_a_phase_missing_is_refused_naming_it(tmp_path):
    folder = tmp_path / "vm"
    _write(folder, cycle={"t": 6, "rows": 8, "cols": 10})
    (folder / "IM_03_004.dcm").unlink()
    with pytest.raises(ClipError, match=r"phase ap \(series 3 'velocity mapping phase ap'\) has 5 phases "
                                        r"where magnitude \(series 1 .*\) has 6: no image at trigger "
                                        r"time 135 ms") as caught:
        open_clip(folder)
    assert str(caught.value).startswith(str(folder))


def test_a_phase_series_of_another_matrix_size_is_refused_naming_it(tmp_path):
    folder, other = tmp_path / "vm", tmp_path / "other"
    _write(folder, cycle={"t": 6, "rows": 8, "cols": 10})
    _write(other, cycle={"t": 6, "rows": 8, "cols": 12})
    for file in folder.glob("IM_04_*.dcm"):
        file.unlink()
    for file in other.glob("IM_04_*.dcm"):
        shutil.copy(file, folder / file.name)
    with pytest.raises(ClipError, match=r"channels of mismatched size: magnitude \(series 1 .*\) is 8x10, "
                                        r"phase fh \(series 4 'velocity mapping phase fh'\) is 8x12"):
        open_clip(folder)


def test_two_encoding_directions_are_refused(tmp_path):
    folder = tmp_path / "vm"
    _write(folder, encodings=("rl", "ap"), cycle={"t": 6, "rows": 8, "cols": 10})
    with pytest.raises(ClipError, match=r"2 velocity encoding direction\(s\) \(rl .*; ap .*\): velocity "
                                        r"mapping needs three non-parallel encoding directions"):
        open_clip(folder)


def test_several_slice_positions_are_refused(tmp_path):
    folder, other = tmp_path / "vm", tmp_path / "other"
    _write(folder, iop=AXIAL, cycle={"t": 6, "rows": 8, "cols": 10})
    _write(other, iop=AXIAL, image_position_patient=(0.0, 0.0, 10.0), cycle={"t": 6, "rows": 8, "cols": 10})
    for file in other.iterdir():
        shutil.copy(file, folder / f"B_{file.name}")
    with pytest.raises(ClipError, match=r"2 slice positions \(0, 10 mm\) with phase images: one slice per "
                                        r"folder is read for velocity mapping"):
        open_clip(folder)


# ---------------------------------------------------------------------------------------
# dispatch: ordinary folders read as before
# ---------------------------------------------------------------------------------------
def test_a_folder_of_magnitude_images_only_is_an_ordinary_series(tmp_path):
    folder = tmp_path / "vm"
    _write(folder, cycle={"t": 6, "rows": 8, "cols": 10})
    for file in folder.glob("IM_0[234]_*.dcm"):
        file.unlink()
    with open_clip(folder) as reader:
        assert type(reader) is DicomSeriesReader
        assert reader.info.n_frames == 6 and reader.info.shape == (8, 10)
    # and two series of it are refused as before
    ds = pydicom.dcmread(folder / "IM_01_002.dcm")
    ds.SeriesInstanceUID = generate_uid()
    ds.save_as(folder / "IM_01_002.dcm")
    with pytest.raises(ClipError, match=r"directory mixes 2 series .* from IM_01_002\.dcm"):
        open_clip(folder)


def test_a_sunnybrook_cine_folder_still_opens_with_the_ordinary_reader(sunnybrook_root):
    folder = sunnybrook_root / "dicoms" / "SCD0000201"
    if not folder.is_dir():
        pytest.skip(f"the Sunnybrook cine series {folder} is not here")
    with open_clip(folder) as reader, DicomSeriesReader(folder) as before:
        assert type(reader) is DicomSeriesReader
        assert reader.info == before.info
        first = next(iter(reader))
        assert np.array_equal(first.pixels, next(iter(before)).pixels)
