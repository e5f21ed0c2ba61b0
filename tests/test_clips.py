"""Clip readers and writers (streamer.io.clips) on real files: pydicom's echo cines, the
Sunnybrook MR series, and files written by write_clip and then damaged."""

from __future__ import annotations

import json
import tracemalloc
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest

from streamer.io.clips import (
    ClipError,
    ClipFrame,
    ClipInfo,
    ClipReader,
    open_clip,
    register_reader,
    write_clip,
)


# ---------------------------------------------------------------------------------------
# helpers and fixtures
# ---------------------------------------------------------------------------------------
def _testdata(name: str) -> Path:
    """A file of pydicom's test data; the larger ones come from pydicom-data, a declared
    test dependency, so a missing file is a broken install and fails the test."""
    from pydicom.data import get_testdata_file

    path = get_testdata_file(name)
    assert path is not None, f"pydicom test file {name} missing: is pydicom-data installed?"
    return Path(path)


def _read_all(reader: ClipReader) -> list[ClipFrame]:
    frames = list(reader)
    for i, frame in enumerate(frames):
        assert frame.index == i
        assert frame.pixels.shape == reader.info.shape
        assert frame.pixels.dtype.name == reader.info.dtype
        assert frame.pixels.flags.c_contiguous
        assert frame.pixels.dtype.isnative
    return frames


def _smooth_frames(t: int, rows: int, cols: int, dtype: np.dtype, channels: int | None = None) -> np.ndarray:
    """Moving gradients: lossy codecs keep them close, unlike noise."""
    yy, xx = np.mgrid[0:rows, 0:cols]
    base = np.stack([(np.sin((xx + 3 * k) / 9.0) + np.cos((yy - 2 * k) / 7.0)) for k in range(t)])
    base = (base + 2.0) / 4.0  # 0..1
    if channels is not None:
        base = np.stack([np.roll(base, c * 5, axis=2) for c in range(channels)], axis=-1)
    info = np.iinfo(dtype) if np.dtype(dtype).kind in "ui" else None
    return (base * info.max).astype(dtype) if info else base.astype(dtype)


METADATA = {"phantom": {"gls_pct": -18.5, "seed": 7}, "note": "round trip", "warnings": ["from the writer"]}


# ---------------------------------------------------------------------------------------
# real DICOM echo cines
# ---------------------------------------------------------------------------------------
def test_examples_ybr_color_real_echo_cine():
    path = _testdata("examples_ybr_color.dcm")
    with open_clip(path) as reader:
        info = reader.info
        assert info.format == "dicom"
        assert info.n_frames == 30
        assert info.shape == (240, 320, 3)
        assert info.dtype == "uint8"
        assert info.modality == "US"
        assert info.metadata["transfer_syntax"] == pydicom.uid.JPEGBaseline8Bit
        assert info.metadata["frame_time_ms"] == pytest.approx(33.333)
        assert info.fps == pytest.approx(30.0, abs=0.01)
        # The region calibration is kept as stated, with a warning that it does not fit.
        assert info.spacing_mm == pytest.approx((0.5104970559477806, 0.5104970559477806))
        assert info.metadata["calibration_source"] == "SequenceOfUltrasoundRegions"
        assert any("outside" in w and "240x320" in w for w in info.metadata["warnings"])
        json.dumps(info.metadata)
        frames = _read_all(reader)
    assert len(frames) == 30
    assert np.diff([f.t_s for f in frames]) == pytest.approx(0.033333)
    assert frames[0].t_s == 0.0
    # Colour converted from YBR_FULL_422 to RGB: grey-scale tissue has R ~ G ~ B.
    px = frames[10].pixels.astype(int)
    bright = px.sum(axis=2) > 150
    assert np.abs(px[..., 0] - px[..., 1])[bright].mean() < 8


def test_color3d_jpeg_baseline_120_frames_us_region_spacing():
    path = _testdata("color3d_jpeg_baseline.dcm")
    with open_clip(path) as reader:
        info = reader.info
        assert (info.n_frames, info.shape, info.dtype, info.modality) == (120, (480, 640, 3), "uint8", "US")
        assert info.fps == pytest.approx(30.0, abs=0.01)
        assert info.spacing_mm == pytest.approx((0.5105, 0.5105), abs=1e-4)
        assert info.metadata["calibration_source"] == "SequenceOfUltrasoundRegions"
        assert not info.metadata.get("warnings")  # the region lies inside this image
        frames = _read_all(reader)
    assert len(frames) == 120
    assert frames[-1].t_s == pytest.approx(119 * 0.033333)


def test_stopping_early_closes_the_decoder_before_the_file(monkeypatch):
    """A consumer that reads a few frames of a compressed cine and stops (the golden-results
    script, `--max-frames`) leaves no decoder behind that touches the closed file."""
    import gc
    import sys

    unraisable = []
    monkeypatch.setattr(sys, "unraisablehook", unraisable.append)
    with open_clip(_testdata("color3d_jpeg_baseline.dcm")) as reader:
        frames = iter(reader)
        assert next(frames).index == 0 and next(frames).index == 1
        del frames
    gc.collect()
    assert [str(u.exc_value) for u in unraisable] == []


def test_dicom_without_suffix_is_found_by_its_preamble(tmp_path):
    src = _testdata("examples_ybr_color.dcm")
    path = tmp_path / "echo_clip"
    path.write_bytes(src.read_bytes())
    with open_clip(path) as reader:
        assert reader.info.format == "dicom"
        assert reader.info.n_frames == 30


def test_jpeg_fragments_fewer_than_number_of_frames(tmp_path):
    ds = pydicom.dcmread(_testdata("examples_ybr_color.dcm"))
    ds.NumberOfFrames = 31
    path = tmp_path / "more_frames_declared.dcm"
    ds.save_as(path)
    with pytest.raises(ClipError, match=r"more_frames_declared\.dcm: truncated: header declares 31 frames"):
        open_clip(path)


@pytest.mark.parametrize("fraction", [0.02, 0.1, 0.5, 0.99])
def test_real_jpeg_cine_cut_anywhere(tmp_path, fraction):
    data = _testdata("examples_ybr_color.dcm").read_bytes()
    path = tmp_path / "cut_echo.dcm"
    path.write_bytes(data[: int(len(data) * fraction)])
    with pytest.raises(ClipError, match=r"cut_echo\.dcm: .*truncated"):
        with open_clip(path) as reader:
            _read_all(reader)


# ---------------------------------------------------------------------------------------
# Sunnybrook short-axis cine MR: a series directory
# ---------------------------------------------------------------------------------------
# The Sunnybrook files carry UIDs with leading-zero components, which pydicom flags.
sunnybrook_uid_warning = pytest.mark.filterwarnings("ignore:Invalid value for VR UI")


@sunnybrook_uid_warning
def test_sunnybrook_series_directory(sunnybrook_series):
    folder = sunnybrook_series
    with open_clip(folder) as reader:
        info = reader.info
        assert info.format == "dicom-series"
        assert info.n_frames == 20
        assert info.shape == (256, 256)
        assert info.dtype == "int16"
        assert info.modality == "MR"
        assert info.spacing_mm == pytest.approx((1.367, 1.367), abs=1e-3)
        assert info.metadata["n_slices"] == 12
        assert info.metadata["slice_index"] == 6  # the middle one by default
        assert info.metadata["fps_source"] == "TriggerTime"
        assert info.fps == pytest.approx(1000.0 / 37.5)
        frames = _read_all(reader)
    assert len(frames) == 20
    assert [f.t_s for f in frames] == pytest.approx([0.0375 * i for i in range(20)])
    assert frames[0].pixels.max() > 100  # real image content


@sunnybrook_uid_warning
def test_sunnybrook_slice_selection_and_range(sunnybrook_series):
    folder = sunnybrook_series
    with open_clip(folder, slice_index=0) as first, open_clip(folder, slice_index=11) as last:
        positions = first.info.metadata["slice_positions_mm"]
        assert positions == sorted(positions)
        assert first.info.metadata["slice_position_mm"] == positions[0]
        assert last.info.metadata["slice_position_mm"] == positions[-1]
        assert first.info.n_frames == last.info.n_frames == 20
        assert not np.array_equal(next(iter(first)).pixels, next(iter(last)).pixels)
    with pytest.raises(ClipError, match="out of range"):
        open_clip(folder, slice_index=12)


@sunnybrook_uid_warning
def test_series_directory_with_a_truncated_file(tmp_path, sunnybrook_series):
    folder = sunnybrook_series
    with open_clip(folder, slice_index=0) as reader:
        files = reader.info.metadata["files"]
    for name in files[:3]:
        (tmp_path / name).write_bytes((folder / name).read_bytes())
    data = (folder / files[2]).read_bytes()
    (tmp_path / files[2]).write_bytes(data[: len(data) - 1000])
    with open_clip(tmp_path) as reader:
        assert reader.info.n_frames == 3
        with pytest.raises(ClipError, match=rf"{files[2]}: truncated"):
            _read_all(reader)
    # Cut inside the header: found while indexing, not skipped as "not an image".
    (tmp_path / files[1]).write_bytes((folder / files[1]).read_bytes()[:600])
    with pytest.raises(ClipError, match=rf"{files[1]}: truncated"):
        open_clip(tmp_path)


# ---------------------------------------------------------------------------------------
# write_clip -> open_clip round trips
# ---------------------------------------------------------------------------------------
ROUND_TRIPS = [
    # name, frames, modality, channels, spacing
    ("grey8.dcm", _smooth_frames(6, 40, 56, np.uint8), "US", None, (0.31, 0.42)),
    ("grey16.dcm", _smooth_frames(6, 40, 56, np.uint16), "MR", None, (1.367188, 1.367188)),
    ("rgb.dcm", _smooth_frames(6, 40, 56, np.uint8, channels=3), "US", None, (0.2, 0.2)),
    ("nospacing.dcm", _smooth_frames(3, 16, 24, np.uint8), "OT", None, None),
    ("grey16.nii", _smooth_frames(6, 40, 56, np.uint16), "MR", None, (1.25, 1.5)),
    ("float.nii.gz", _smooth_frames(6, 40, 56, np.float32), "MR", None, (0.7, 0.7)),
    ("velocity.nii.gz", _smooth_frames(5, 24, 32, np.float32, channels=4), "MR", ("magnitude", "vx", "vy", "vz"), (2.0, 2.0)),
    ("rgb.nii", _smooth_frames(4, 24, 32, np.uint8, channels=3), "US", None, (0.3, 0.3)),
    ("grey8.npz", _smooth_frames(6, 40, 56, np.uint8), "US", None, (0.31, 0.42)),
    ("velocity.npz", _smooth_frames(5, 24, 32, np.float32, channels=4), "MR", ("magnitude", "vx", "vy", "vz"), (2.0, 2.0)),
    ("nospacing.npz", _smooth_frames(3, 16, 24, np.int16), "OT", None, None),
]


@pytest.mark.parametrize(("name", "frames", "modality", "channels", "spacing"), ROUND_TRIPS, ids=[r[0] for r in ROUND_TRIPS])
def test_lossless_round_trip(tmp_path, name, frames, modality, channels, spacing):
    path = write_clip(
        tmp_path / name, frames, spacing_mm=spacing, fps=47.5, modality=modality, metadata=METADATA, channels=channels
    )
    assert path == tmp_path / name and path.is_file()
    assert [p.name for p in tmp_path.iterdir()] == [name]  # no temporary left behind
    with open_clip(path) as reader:
        info = reader.info
        assert info.n_frames == frames.shape[0]
        assert info.shape == frames.shape[1:]
        assert info.dtype == frames.dtype.name
        assert info.modality == modality
        assert info.channels == channels
        assert info.fps == pytest.approx(47.5, rel=1e-9)
        if spacing is None:
            assert info.spacing_mm is None
        else:
            assert info.spacing_mm == pytest.approx(spacing, rel=1e-9)
        assert info.metadata["phantom"] == METADATA["phantom"]
        assert info.metadata["note"] == METADATA["note"]
        assert "from the writer" in info.metadata["warnings"]
        json.dumps(info.metadata)
        read = _read_all(reader)
    np.testing.assert_array_equal(np.stack([f.pixels for f in read]), frames)
    assert [f.t_s for f in read] == pytest.approx([i / 47.5 for i in range(frames.shape[0])], rel=1e-6)


def test_written_dicom_header_is_standard(tmp_path):
    grey = write_clip(tmp_path / "g.dcm", _smooth_frames(4, 16, 24, np.uint16), spacing_mm=(0.5, 0.6), fps=25.0, modality="MR")
    us = write_clip(tmp_path / "u.dcm", _smooth_frames(4, 16, 24, np.uint8, channels=3), spacing_mm=(0.5, 0.6), fps=25.0)
    g, u = pydicom.dcmread(grey), pydicom.dcmread(us)
    assert g.SOPClassUID == pydicom.uid.MultiFrameGrayscaleWordSecondaryCaptureImageStorage
    assert u.SOPClassUID == pydicom.uid.UltrasoundMultiFrameImageStorage
    assert (g.Modality, u.Modality) == ("MR", "US")
    assert (g.PhotometricInterpretation, u.PhotometricInterpretation) == ("MONOCHROME2", "RGB")
    assert int(g.NumberOfFrames) == 4 and float(g.FrameTime) == pytest.approx(40.0) and int(g.CineRate) == 25
    assert [float(v) for v in g.PixelSpacing] == [0.5, 0.6]
    assert u.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
    region = u.SequenceOfUltrasoundRegions[0]
    assert (region.PhysicalDeltaY, region.PhysicalDeltaX, region.PhysicalUnitsXDirection) == (0.05, 0.06, 3)
    np.testing.assert_array_equal(u.pixel_array[2], _smooth_frames(4, 16, 24, np.uint8, channels=3)[2])


def test_dicom_monochrome1_and_frame_time_vector(tmp_path):
    frames = _smooth_frames(4, 12, 16, np.uint8)
    path = write_clip(tmp_path / "m1.dcm", frames, spacing_mm=None, fps=25.0)
    ds = pydicom.dcmread(path)
    ds.PhotometricInterpretation = "MONOCHROME1"
    del ds.FrameTime, ds.CineRate, ds.RecommendedDisplayFrameRate
    ds.FrameTimeVector = [0, 20, 30, 50]  # ms since the previous frame
    ds.FrameIncrementPointer = pydicom.tag.Tag("FrameTimeVector")
    ds.save_as(path)
    with open_clip(path) as reader:
        assert reader.info.metadata["inverted_to_monochrome2"] is True
        assert reader.info.metadata["fps_source"] == "FrameTimeVector"
        assert reader.info.fps == pytest.approx(1000.0 / np.mean([20, 30, 50]))
        read = _read_all(reader)
    assert [f.t_s for f in read] == pytest.approx([0.0, 0.02, 0.05, 0.1])
    np.testing.assert_array_equal(read[1].pixels, 255 - frames[1])


def test_plain_numpy_savez_is_read_and_nan_passes_through(tmp_path):
    frames = _smooth_frames(5, 20, 30, np.float64)
    frames[2, 3, 4] = np.nan
    frames[4] = np.nan
    path = tmp_path / "plain.npz"
    np.savez(path, frames=frames.astype(">f8"), fps=np.float64(20.0), modality=np.str_("MR"))  # big-endian on purpose
    with open_clip(path) as reader:
        assert (reader.info.dtype, reader.info.fps, reader.info.spacing_mm) == ("float64", 20.0, None)
        read = _read_all(reader)
    out = np.stack([f.pixels for f in read])
    assert len(read) == 5
    np.testing.assert_array_equal(out, frames)  # NaN positions included
    assert np.isnan(out[4]).all()


def test_video_round_trip_is_lossy_but_close(tmp_path):
    frames = _smooth_frames(12, 64, 80, np.uint8, channels=3)
    with pytest.warns(UserWarning, match="cannot store spacing_mm, metadata"):
        path = write_clip(tmp_path / "cine.avi", frames, spacing_mm=(0.3, 0.3), fps=25.0, metadata=METADATA)
    with open_clip(path) as reader:
        info = reader.info
        assert (info.format, info.n_frames, info.shape, info.dtype, info.fps) == ("video", 12, (64, 80, 3), "uint8", 25.0)
        assert info.spacing_mm is None
        read = _read_all(reader)
    out = np.stack([f.pixels for f in read]).astype(float)
    assert np.abs(out - frames).mean() < 6  # MJPG is lossy; RGB order kept (not BGR)
    assert read[3].t_s == pytest.approx(3 / 25.0)


def test_grey_mp4_comes_back_as_rgb_with_overrides(tmp_path):
    frames = _smooth_frames(8, 48, 64, np.uint8)
    path = write_clip(tmp_path / "grey.mp4", frames, spacing_mm=None, fps=30.0)
    with open_clip(path, spacing_mm=(0.25, 0.25), fps=60.0) as reader:
        info = reader.info
        assert (info.n_frames, info.shape, info.fps, info.spacing_mm) == (8, (48, 64, 3), 60.0, (0.25, 0.25))
        assert info.metadata["calibration_source"] == "override"
        assert info.metadata["fps_source"] == "override" and info.metadata["file_fps"] == pytest.approx(30.0)
        read = _read_all(reader)
    out = np.stack([f.pixels for f in read]).astype(float)
    assert np.abs(out - frames[..., None]).mean() < 8
    assert read[6].t_s == pytest.approx(0.1)


def test_overrides_win_over_the_file(tmp_path):
    path = write_clip(tmp_path / "c.dcm", _smooth_frames(3, 8, 8, np.uint8), spacing_mm=(0.4, 0.4), fps=50.0)
    with open_clip(path, spacing_mm=(0.1, 0.2), fps=10.0) as reader:
        assert reader.info.spacing_mm == (0.1, 0.2) and reader.info.fps == 10.0
        assert reader.info.metadata["file_spacing_mm"] == pytest.approx([0.4, 0.4])
        assert [f.t_s for f in reader] == pytest.approx([0.0, 0.1, 0.2])


def test_nifti_slice_index_of_4d(tmp_path):
    import nibabel as nib

    data = np.arange(6 * 5 * 3 * 4, dtype=np.int16).reshape(6, 5, 3, 4)  # (x, y, z, t)
    img = nib.Nifti1Image(data, np.diag([0.8, 0.9, 8.0, 1.0]))
    img.header.set_xyzt_units("mm", "msec")
    img.header.set_zooms((0.8, 0.9, 8.0, 40.0))
    path = tmp_path / "stack.nii"
    img.to_filename(path)
    with open_clip(path) as middle, open_clip(path, slice_index=2) as top:
        assert middle.info.metadata["slice_index"] == 1
        assert middle.info.shape == (5, 6)  # (rows = y, cols = x)
        assert middle.info.spacing_mm == pytest.approx((0.9, 0.8))
        assert middle.info.fps == pytest.approx(25.0)
        assert middle.info.modality == "OT"
        np.testing.assert_array_equal(list(top)[3].pixels, data[:, :, 2, 3].T)
    with pytest.raises(ClipError, match="out of range"):
        open_clip(path, slice_index=3)


def test_nifti_3d_is_a_one_slice_cine_and_2d_one_frame(tmp_path):
    """Regression: 2-D and 3-D files were refused ("unreadable: IndexError")."""
    import nibabel as nib

    cine = np.arange(6 * 5 * 3, dtype=np.int16).reshape(6, 5, 3)  # (x, y, t)
    img = nib.Nifti1Image(cine, np.diag([0.8, 0.9, 1.0, 1.0]))
    img.header.set_xyzt_units("mm", "msec")
    img.header.set_zooms((0.8, 0.9, 40.0))
    img.to_filename(tmp_path / "cine.nii")
    nib.Nifti1Image(cine[:, :, 0], np.eye(4)).to_filename(tmp_path / "one.nii")
    with open_clip(tmp_path / "cine.nii") as reader:
        assert (reader.info.n_frames, reader.info.shape) == (3, (5, 6))
        assert reader.info.fps == pytest.approx(25.0) and reader.info.metadata["time_axis"] == 2
        np.testing.assert_array_equal(list(reader)[2].pixels, cine[:, :, 2].T)
    with open_clip(tmp_path / "one.nii") as reader:
        assert reader.info.n_frames == 1
        np.testing.assert_array_equal(next(iter(reader)).pixels, cine[:, :, 0].T)


# ---------------------------------------------------------------------------------------
# damaged and unsupported input
# ---------------------------------------------------------------------------------------
# Cutting only the last bytes of a video loses its index / trailing atoms but no frame data;
# FFmpeg then still decodes every frame, so videos are cut deeper.
TRUNCATIONS = [
    (suffix, fraction)
    for suffix in (".dcm", ".nii", ".nii.gz", ".npz", ".avi", ".mp4")
    for fraction in ((0.3, 0.7) if suffix in (".avi", ".mp4") else (0.3, 0.7, 0.995))
]


@pytest.mark.parametrize(("suffix", "fraction"), TRUNCATIONS)
def test_truncated_written_files(tmp_path, suffix, fraction):
    frames = _smooth_frames(10, 48, 64, np.uint8, channels=3 if suffix in (".avi", ".mp4") else None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        full = write_clip(tmp_path / f"full{suffix}", frames, spacing_mm=(0.3, 0.3), fps=25.0)
    data = full.read_bytes()
    cut = tmp_path / f"cut{suffix}"
    cut.write_bytes(data[: int(len(data) * fraction)])
    with pytest.raises(ClipError) as err:
        with open_clip(cut) as reader:
            _read_all(reader)
    message = str(err.value)
    assert cut.name in message
    assert "truncated" in message or "cannot be opened" in message  # cv2 cannot say why an mp4 fails


def test_header_cut_dicom(tmp_path):
    data = write_clip(tmp_path / "full.dcm", _smooth_frames(2, 8, 8, np.uint8), spacing_mm=None, fps=10.0).read_bytes()
    for n in (100, 200, 400):
        cut = tmp_path / f"head{n}.dcm"
        cut.write_bytes(data[:n])
        with pytest.raises(ClipError, match=rf"head{n}\.dcm: truncated"):
            open_clip(cut)


def test_missing_unknown_and_garbage(tmp_path):
    with pytest.raises(ClipError, match=r"nothere\.dcm: no such file"):
        open_clip(tmp_path / "nothere.dcm")
    odd = tmp_path / "clip.xyz"
    odd.write_bytes(b"\x00" * 200)
    with pytest.raises(ClipError, match=r"clip\.xyz: unknown clip format '\.xyz'"):
        open_clip(odd)
    for name in ("garbage.dcm", "garbage.nii", "garbage.npz", "garbage.avi"):
        (tmp_path / name).write_bytes(b"not a clip at all " * 20)
        with pytest.raises(ClipError, match=rf"{name}: "):
            open_clip(tmp_path / name)
    empty = tmp_path / "empty_dir"
    empty.mkdir()
    with pytest.raises(ClipError, match="empty_dir: directory holds no DICOM image files"):
        open_clip(empty)


def test_npz_without_frames_and_with_a_pickle(tmp_path):
    np.savez(tmp_path / "noframes.npz", images=np.zeros((2, 4, 4)))
    with pytest.raises(ClipError, match=r"noframes\.npz: npz has no 'frames' array \(keys: \['images'\]\)"):
        open_clip(tmp_path / "noframes.npz")
    np.savez(tmp_path / "objects.npz", frames=np.array([None, 1], dtype=object))
    with pytest.raises(ClipError, match=r"objects\.npz: 'frames' has dtype object"):
        open_clip(tmp_path / "objects.npz")


def test_write_clip_refusals(tmp_path):
    floats = _smooth_frames(2, 8, 8, np.float32)
    with pytest.raises(ClipError, match=r"f\.dcm: DICOM writer stores uint8 .* got float32"):
        write_clip(tmp_path / "f.dcm", floats, spacing_mm=None, fps=10.0)
    with pytest.raises(ClipError, match=r"v\.dcm: DICOM holds grey or RGB frames, not channels"):
        write_clip(tmp_path / "v.dcm", _smooth_frames(2, 8, 8, np.uint8, channels=2), spacing_mm=None, fps=10.0, channels=("a", "b"))
    with pytest.raises(ClipError, match="channels .* do not match"):
        write_clip(tmp_path / "c.npz", floats, spacing_mm=None, fps=10.0, channels=("a",))
    with pytest.raises(ClipError, match="not JSON-serialisable"):
        write_clip(tmp_path / "m.npz", floats, spacing_mm=None, fps=10.0, metadata={"x": object()})
    with pytest.raises(ClipError, match="fps must be finite and positive"):
        write_clip(tmp_path / "r.npz", floats, spacing_mm=None, fps=0.0)
    with pytest.raises(ClipError, match=r"x\.gif: cannot write '\.gif'"):
        write_clip(tmp_path / "x.gif", floats, spacing_mm=None, fps=10.0)
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------------------
# streaming and the plug-in registry
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("compressed", [False, True], ids=["savez", "savez_compressed"])
def test_npz_streams_300_frames_without_loading_the_array(tmp_path, compressed):
    frames = np.random.default_rng(1).random((300, 64, 64), dtype=np.float32)
    path = tmp_path / "long.npz"
    (np.savez_compressed if compressed else np.savez)(path, frames=frames, fps=np.float64(50.0))
    total = frames.nbytes
    del frames
    tracemalloc.start()
    try:
        with open_clip(path) as reader:
            count = 0
            for frame in reader:
                count += 1
                last = frame.pixels
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert count == 300 and last.shape == (64, 64)
    assert peak < total / 10, f"peak {peak} bytes while reading a {total}-byte clip"


def test_register_reader_plugs_a_format_into_open_clip(tmp_path):
    class OneFrameReader(ClipReader):
        def __init__(self, path, *, spacing_mm, fps, slice_index):
            self.info = ClipInfo(
                path=str(path), format="test-plugin", n_frames=1, shape=(2, 2), dtype="uint8",
                modality="OT", spacing_mm=spacing_mm, fps=fps,
            )

        def __iter__(self):
            yield ClipFrame(index=0, pixels=np.zeros((2, 2), np.uint8), t_s=0.0)

        def close(self):
            pass

    from streamer.io.clips.registry import has_reader

    assert not has_reader(tmp_path / "rec.cstestplugin2") and has_reader("a.nii.gz")
    register_reader((".cstestplugin2",), OneFrameReader)
    assert has_reader(tmp_path / "REC.CSTESTPLUGIN2")
    register_reader((".cstestplugin",), OneFrameReader)
    register_reader((".cstestplugin",), OneFrameReader)  # the same factory again is fine
    with pytest.raises(ValueError, match="already handled"):
        register_reader((".cstestplugin",), lambda path, **kw: None)
    with pytest.raises(ValueError, match="already handled"):
        register_reader((".npz",), OneFrameReader)
    path = tmp_path / "rec.CSTESTPLUGIN"
    path.write_bytes(b"")
    with open_clip(path, fps=12.0) as reader:
        assert reader.info.format == "test-plugin" and reader.info.fps == 12.0
        assert len(list(reader)) == 1

    def broken(path, **kw):
        raise KeyError("no such record")

    register_reader((".cstestbroken",), broken)
    (tmp_path / "x.cstestbroken").write_bytes(b"")
    with pytest.raises(ClipError, match=r"x\.cstestbroken: unreadable: KeyError"):
        open_clip(tmp_path / "x.cstestbroken")


def test_reader_can_be_iterated_again_and_refuses_after_close(tmp_path):
    path = write_clip(tmp_path / "c.nii.gz", _smooth_frames(4, 8, 8, np.uint8), spacing_mm=None, fps=10.0)
    reader = open_clip(path)
    first = [f.pixels for f in reader]
    second = [f.pixels for f in reader]
    np.testing.assert_array_equal(first, second)
    reader.close()
    reader.close()
    with pytest.raises(ClipError, match="closed"):
        next(iter(reader))


def test_palette_colour_ultrasound_reads_as_rgb_through_its_lookup_tables():
    """Many scanners write PALETTE COLOR; frames come out as RGB uint8, the LUT's top 8 bits
    (pydicom-data's 16-bit ALOKA pelvis scan, little- and big-endian)."""
    import pydicom
    from pydicom.data import get_testdata_file
    from pydicom.pixels import apply_color_lut

    for name in ("gdcm-US-ALOKA-16.dcm", "gdcm-US-ALOKA-16_big.dcm"):
        path = get_testdata_file(name)
        with open_clip(path) as reader:
            [frame] = list(reader)
            info = reader.info
        assert info.shape == (480, 640, 3) and info.dtype == "uint8"
        assert info.metadata["palette_applied"] is True and info.modality == "US"
        ds = pydicom.dcmread(path)
        expected = (apply_color_lut(ds.pixel_array, ds) >> 8).astype(np.uint8)
        np.testing.assert_array_equal(frame.pixels, expected)


def _palette_file(name: str) -> Path:
    """A PALETTE COLOR file of pydicom-data (no download: a missing file is a broken install)."""
    from pydicom.data import get_testdata_file

    path = get_testdata_file(name, download=False)
    assert path is not None, f"pydicom test file {name} missing: is pydicom-data installed?"
    return Path(path)


def _all_pixels(path: Path) -> np.ndarray:
    with open_clip(path) as reader:
        return np.stack([frame.pixels for frame in _read_all(reader)])


def test_palette_colour_plain_tables_match_apply_color_lut_little_endian():
    """Plain (non-segmented) 16-bit tables of a little-endian file, where pydicom's
    apply_color_lut is right: pixel for pixel the same, top 8 bits."""
    from pydicom.pixels import apply_color_lut

    path = _palette_file("OBXXXX1A.dcm")
    frames = _all_pixels(path)
    ds = pydicom.dcmread(path)
    expected = (apply_color_lut(ds.pixel_array, ds) >> 8).astype(np.uint8)
    assert frames.shape == (1, 600, 800, 3)
    np.testing.assert_array_equal(frames[0], expected)


@pytest.mark.parametrize(
    ("big_endian", "little_endian", "n_frames"),
    [("OBXXXX1A_expb.dcm", "OBXXXX1A.dcm", 1), ("OBXXXX1A_expb_2frame.dcm", "OBXXXX1A_2frame.dcm", 2)],
)
def test_palette_colour_big_endian_tables_read_in_the_files_byte_order(big_endian, little_endian, n_frames):
    """pydicom 3.0's apply_color_lut reads big-endian 16-bit tables as little-endian (entries
    0..255, top 8 bits 0: all black); the reader reads them in the file's byte order."""
    frames = _all_pixels(_palette_file(big_endian))
    expected = _all_pixels(_palette_file(little_endian))
    assert frames.shape == (n_frames, 600, 800, 3)
    assert all(frame.max() == 255 for frame in frames)
    np.testing.assert_array_equal(frames, expected)
    np.testing.assert_array_equal(_all_pixels(_palette_file("OBXXXX1A_rle.dcm")), expected[:1])


@pytest.mark.parametrize("name", ["OBXXXX1A.dcm", "OBXXXX1A_expb.dcm"], ids=["little", "big"])
@pytest.mark.parametrize("packing", ["two_a_word", "one_a_word"])
def test_palette_colour_8_bit_entries_in_16_bit_words(tmp_path, name, packing):
    """8 bits per entry (descriptor's third value), the data still OW: two entries a word,
    low byte first (the standard), or one a word (PS3.3 C.7.6.3.1.5, note); in either byte
    order the same colours as the 16-bit table's top 8 bits."""
    source = _palette_file(name)
    ds = pydicom.dcmread(source)
    order = "<" if ds.original_encoding[1] else ">"
    for colour in ("Red", "Green", "Blue"):
        words16 = np.frombuffer(ds[f"{colour}PaletteColorLookupTableData"].value, dtype=f"{order}u2")
        entries = (words16 >> 8).astype(np.uint16)
        if packing == "two_a_word":
            words = entries[0::2] | (entries[1::2] << 8)
        else:
            words = entries
        ds[f"{colour}PaletteColorLookupTableDescriptor"].value = [256, 0, 8]
        ds[f"{colour}PaletteColorLookupTableData"].value = words.astype(f"{order}u2").tobytes()
    ds.save_as(tmp_path / "pal8.dcm")
    np.testing.assert_array_equal(_all_pixels(tmp_path / "pal8.dcm"), _all_pixels(source))


@pytest.mark.parametrize(
    ("element", "value", "message"),
    [
        ("RedPaletteColorLookupTableDescriptor", [256, 0, 12], "12 bits per entry"),
        ("GreenPaletteColorLookupTableDescriptor", [256, 0], "expected three numbers"),
        ("BluePaletteColorLookupTableData", bytes(510), "255 16-bit words for the 256"),
        ("RedPaletteColorLookupTableDescriptor", [256, 0, 8], "8-bit entries, stored one a word, but entries reach"),
        ("RedPaletteColorLookupTableDescriptor", [300, 0, 8], r"512 bytes for the 300 8-bit entries"),
    ],
)
def test_palette_colour_malformed_tables_are_clip_errors(tmp_path, element, value, message):
    ds = pydicom.dcmread(_palette_file("OBXXXX1A_expb.dcm"))
    ds[element].value = value
    ds.save_as(tmp_path / "bad.dcm")
    with pytest.raises(ClipError, match=message) as caught:
        open_clip(tmp_path / "bad.dcm")
    assert "PaletteColorLookupTable" in str(caught.value)
