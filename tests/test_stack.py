"""Short-axis stacks (streamer.io.clips.stack) from real files: the Sunnybrook series folder,
NIfTI files written by nibabel, an enhanced multi-frame MR file written by pydicom, and
Sunnybrook folders copied and damaged with pydicom."""

from __future__ import annotations

import shutil
import struct
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import EnhancedMRImageStorage, ExplicitVRLittleEndian, generate_uid

from streamer.io.clips import (
    ClipError,
    ClipReader,
    SliceClip,
    StackFrame,
    StackReader,
    open_clip,
    open_input,
    open_stack,
)
from streamer.io.clips.dicom_series import DicomSeriesReader
from streamer.io.clips.nifti import NiftiClipReader

# The Sunnybrook files carry UIDs with leading-zero components, which pydicom flags.
pytestmark = pytest.mark.filterwarnings("ignore:Invalid value for VR UI")

#: SCD0000101's files of slices 0 and 1 (lowest positions), phases 0..3
SLICE0, SLICE1 = ["221.dcm", "222.dcm", "223.dcm", "224.dcm"], ["201.dcm", "202.dcm", "203.dcm", "204.dcm"]


def copy_files(source: Path, names: list[str], folder: Path) -> Path:
    folder.mkdir()
    for name in names:
        shutil.copy(source / name, folder / name)
    return folder


def set_pixdim(path: Path, axis: int, value: float) -> None:
    """Overwrite pixdim[axis] in a written NIfTI-1 header (float32 at byte 76 + 4 * axis)."""
    with open(path, "r+b") as fh:
        fh.seek(76 + 4 * axis)
        fh.write(struct.pack("<f", value))


def write_enhanced_mr(path: Path, frames: np.ndarray, z_mm: list[float], trigger_ms: list[float]) -> Path:
    """An enhanced MR image file (one multi-frame file) of frames[slice, phase], stored phase
    by phase with the slices in decreasing position, per-frame functional groups giving each
    frame's plane position and trigger delay, the shared group its pixel measures and
    orientation."""
    n_slices, n_phases, rows, cols = frames.shape
    ds = Dataset()
    ds.ensure_file_meta()  # the rest of the file meta from the dataset, when saved
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID, ds.SOPInstanceUID = EnhancedMRImageStorage, generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Modality, ds.PatientName, ds.PatientID = "MR", "Stack^Test", "P-0001"
    ds.InstanceNumber = 1
    ds.Rows, ds.Columns, ds.NumberOfFrames = rows, cols, n_slices * n_phases
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    measures, facing, shared = Dataset(), Dataset(), Dataset()
    measures.PixelSpacing, measures.SliceThickness = [1.25, 1.5], 8
    facing.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    shared.PixelMeasuresSequence, shared.PlaneOrientationSequence = [measures], [facing]
    ds.SharedFunctionalGroupsSequence = [shared]
    per_frame, pixels = [], []
    for p in range(n_phases):
        for k in reversed(range(n_slices)):
            plane, cardiac, content, item = Dataset(), Dataset(), Dataset(), Dataset()
            plane.ImagePositionPatient = [-10.0, -20.0, z_mm[k]]
            cardiac.NominalCardiacTriggerDelayTime = trigger_ms[p]
            content.InStackPositionNumber, content.TemporalPositionIndex = k + 1, p + 1
            item.PlanePositionSequence, item.CardiacSynchronizationSequence = [plane], [cardiac]
            item.FrameContentSequence = [content]
            per_frame.append(item)
            pixels.append(frames[k, p])
    ds.PerFrameFunctionalGroupsSequence = per_frame
    ds.PixelData = np.stack(pixels).astype("<u2").tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def read_slices(stack: StackReader) -> list[list[StackFrame]]:
    slices = []
    for k in range(stack.info.n_slices):
        with stack.slice(k) as clip:
            assert isinstance(clip, ClipReader) and clip.info.n_frames == stack.info.n_phases
            frames = list(clip)
        assert all(isinstance(f, StackFrame) for f in frames)
        assert [f.phase_index for f in frames] == [f.index for f in frames] == list(range(len(frames)))
        assert {f.slice_index for f in frames} == {k}
        slices.append(frames)
    return slices


# ---------------------------------------------------------------------------------------
# a folder of single-frame DICOM: the Sunnybrook series
# ---------------------------------------------------------------------------------------
def test_sunnybrook_folder_is_a_stack_of_12_slices_by_20_phases(sunnybrook_series):
    with open_stack(sunnybrook_series) as stack:
        info = stack.info
        assert (info.format, info.n_slices, info.n_phases) == ("dicom-series", 12, 20)
        assert (info.shape, info.dtype, info.modality) == ((256, 256), "int16", "MR")
        assert info.metadata["stack_id_source"] == "SeriesInstanceUID"
        assert info.metadata["slice_position_source"] == "SliceLocation"
        assert len(info.stack_id) == 16 and int(info.stack_id, 16) >= 0  # a hash, no name
        positions = [s.position_mm for s in info.slices]
        assert positions == sorted(positions) and positions[0] == pytest.approx(-90.546)
        assert all(s.thickness_mm == 10.0 for s in info.slices)
        assert all(len(s.orientation) == 6 for s in info.slices)
        # InstanceNumber runs slice by slice, 20 phases each; the lowest slice is the last
        assert info.slices[0].instance_numbers == tuple(range(221, 241))
        assert info.slices[11].instance_numbers == tuple(range(1, 21))
        # ImagePositionPatient of the ends: the stack runs from the apex to the base here
        assert info.metadata["base_first"] is False
        with stack.slice(0) as first_slice:
            assert first_slice.stack_fields["base_first"] is False
        slices = read_slices(stack)
    first = slices[3][5]
    assert first.slice_position_mm == info.slices[3].position_mm and first.slice_thickness_mm == 10.0
    assert first.trigger_time_ms == info.slices[3].trigger_times_ms[5]
    assert first.instance_number == info.slices[3].instance_numbers[5]
    times = [f.trigger_time_ms for f in slices[3]]
    assert times == sorted(times) and times[0] > 0
    assert [f.t_s for f in slices[3]] == pytest.approx([(t - times[0]) / 1000 for t in times])
    # each slice is the clip that open_clip reads for that slice, image for image
    with open_clip(sunnybrook_series, slice_index=3) as clip:
        np.testing.assert_array_equal(np.stack([f.pixels for f in clip]),
                                      np.stack([f.pixels for f in slices[3]]))
    with open_stack(sunnybrook_series) as again:
        assert again.info.stack_id == info.stack_id  # stable


def test_which_end_of_a_stack_is_basal_follows_the_patient_axes():
    from streamer.io.clips.stack import base_first

    assert base_first([10.0, -10.0, -10.0]) is True      # left, anterior, inferior: apex-wards
    assert base_first([-5.0, 5.0, 5.0]) is False
    assert base_first([0.0, 0.0, 0.0]) is None and base_first(None) is None
    assert base_first([1.0, 1.0, 0.0]) is None           # across the long axis: unknown


def test_open_input_reads_a_stack_where_the_input_holds_several_slices(sunnybrook_series, tmp_path):
    with open_input(sunnybrook_series) as source:
        assert isinstance(source, StackReader) and source.info.n_slices == 12
    # one slice of a stack: a clip that knows its place in the stack, image for image the
    # slice that open_clip reads
    with open_input(sunnybrook_series, slice_index=2) as source, \
            open_clip(sunnybrook_series, slice_index=2) as alone:
        assert isinstance(source, SliceClip) and source.stack_fields["slice_index"] == 2
        assert source.stack_fields["n_slices"] == 12 and source.stack_fields["base_first"] is not None
        np.testing.assert_array_equal(np.stack([f.pixels for f in source]),
                                      np.stack([f.pixels for f in alone]))
    one = copy_files(sunnybrook_series, SLICE0, tmp_path / "one")
    with open_input(one) as source:
        assert isinstance(source, DicomSeriesReader) and source.info.n_frames == 4
    with open_input(one, stack=True) as source:
        assert isinstance(source, StackReader) and (source.info.n_slices, source.info.n_phases) == (1, 4)
    with pytest.raises(ClipError, match="give one or the other"):
        open_input(sunnybrook_series, slice_index=2, stack=True)


# ---------------------------------------------------------------------------------------
# bad input: a clear error naming the file
# ---------------------------------------------------------------------------------------
def test_a_slice_with_a_missing_phase_is_refused(sunnybrook_series, tmp_path):
    folder = copy_files(sunnybrook_series, SLICE0 + SLICE1, tmp_path / "series")
    with open_stack(folder) as stack:
        assert (stack.info.n_slices, stack.info.n_phases) == (2, 4)
    (folder / "203.dcm").unlink()
    for opener in (open_stack, open_input):
        with pytest.raises(ClipError) as caught:
            opener(folder)
        message = str(caught.value)
        assert message.startswith(f"{folder}: slice 1 ")
        assert "201.dcm .. 204.dcm" in message and "has 3 phases where other slices have 4" in message
        assert "no image at trigger time 100 ms" in message
    with open_input(folder, slice_index=0) as clip:  # one whole slice still reads as a clip
        assert clip.info.n_frames == 4 and not isinstance(clip, SliceClip)
        assert "goes without its place in the stack" in clip.info.metadata["warnings"][-1]


def test_a_folder_that_mixes_two_series_is_refused(sunnybrook_series, tmp_path):
    folder = copy_files(sunnybrook_series, SLICE0 + SLICE1, tmp_path / "series")
    other = pydicom.dcmread(folder / "202.dcm")
    other.SeriesInstanceUID = generate_uid()
    other.save_as(folder / "202.dcm")
    with pytest.raises(ClipError, match=r"directory mixes 2 series .* from 202\.dcm") as caught:
        open_stack(folder)
    assert str(caught.value).startswith(str(folder))


def test_images_of_different_sizes_are_refused(sunnybrook_series, tmp_path):
    folder = copy_files(sunnybrook_series, SLICE0 + SLICE1, tmp_path / "series")
    small = pydicom.dcmread(folder / "203.dcm")
    small.PixelData = np.ascontiguousarray(small.pixel_array[:128, :96]).tobytes()
    small.Rows, small.Columns = 128, 96
    small.save_as(folder / "203.dcm")
    with pytest.raises(ClipError, match=r"images of the stack differ: 221\.dcm is \(256, 256\) int16, "
                                        r"203\.dcm is \(128, 96\) int16"):
        open_input(folder)


@pytest.mark.parametrize("bad", [0.0, float("nan")])
def test_a_nifti_with_a_zero_or_nan_voxel_size_is_refused(write_nifti_stack, tmp_path, bad):
    path = write_nifti_stack(tmp_path / "sax.nii", np.zeros((6, 5, 3, 4), np.int16), (1.5, 1.25, 8.0, 40.0))
    set_pixdim(path, 3, bad)  # the slice thickness
    for opener in (open_stack, open_input):
        with pytest.raises(ClipError, match=r"sax\.nii: voxel size pixdim\[1:4\] = \(1\.5, 1\.25, (0\.0|nan)\) mm"):
            opener(path)


def test_a_nifti_without_a_spatial_unit_cannot_place_its_slices(write_nifti_stack, tmp_path):
    path = write_nifti_stack(tmp_path / "sax.nii", np.zeros((6, 5, 3, 4), np.int16), (1.5, 1.25, 8.0, 40.0),
                             units=("unknown", "msec"))
    with pytest.raises(ClipError, match="spatial unit is 'unknown'"):
        open_stack(path)


# ---------------------------------------------------------------------------------------
# NIfTI written by nibabel
# ---------------------------------------------------------------------------------------
def test_nifti_4d_is_slices_by_phases_timed_by_pixdim4(write_nifti_stack, tmp_path):
    data = np.random.default_rng(4).integers(0, 900, (6, 5, 3, 4)).astype(np.int16)  # x, y, z, t
    path = write_nifti_stack(tmp_path / "sax.nii.gz", data, (1.5, 1.25, 8.0, 40.0))
    with open_input(path) as stack:
        assert isinstance(stack, StackReader)
        info = stack.info
        assert (info.format, info.n_slices, info.n_phases, info.shape) == ("nifti", 3, 4, (5, 6))
        assert info.metadata["stack_id_source"] == "file" and len(info.stack_id) == 16
        # RAS+ affine diag(1.5, 1.25, 8) at z = 30 mm: rows run to -y, columns to -x in LPS
        assert [s.position_mm for s in info.slices] == pytest.approx([30.0, 38.0, 46.0])
        assert all(s.thickness_mm == 8.0 for s in info.slices)
        assert info.slices[0].orientation == pytest.approx((-1, 0, 0, 0, -1, 0))
        assert info.slices[1].trigger_times_ms == pytest.approx((0.0, 40.0, 80.0, 120.0))
        assert info.slices[1].instance_numbers == (-1, -1, -1, -1)
        # its slices step to the patient's head (superior): towards the base of a heart
        assert info.metadata["base_first"] is False
        with stack.slice(1) as clip:
            assert clip.info.fps == pytest.approx(25.0) and clip.info.spacing_mm == (1.25, 1.5)
            assert clip.info.metadata["stack_id"] == info.stack_id
        slices = read_slices(stack)
    for k in range(3):
        for p in range(4):
            np.testing.assert_array_equal(slices[k][p].pixels, data[:, :, k, p].T)
    assert [f.trigger_time_ms for f in slices[2]] == pytest.approx([0.0, 40.0, 80.0, 120.0])
    assert slices[2][3].t_s == pytest.approx(0.12) and slices[2][3].slice_position_mm == pytest.approx(46.0)


def test_nifti_3d_is_one_phase_of_its_slices_when_read_as_a_stack(write_nifti_stack, tmp_path):
    data = np.arange(6 * 5 * 3, dtype=np.float32).reshape(6, 5, 3)
    path = write_nifti_stack(tmp_path / "ed.nii", data, (1.5, 1.25, 8.0))
    with open_input(path) as clip:  # without --stack: a one-slice cine, as always
        assert isinstance(clip, NiftiClipReader) and clip.info.n_frames == 3
    with open_input(path, stack=True) as stack:
        assert (stack.info.n_slices, stack.info.n_phases) == (3, 1)
        assert stack.info.slices[2].trigger_times_ms == (None,)
        slices = read_slices(stack)
    for k in range(3):
        np.testing.assert_array_equal(slices[k][0].pixels, data[:, :, k].T)
        assert slices[k][0].trigger_time_ms is None


def test_nifti_4d_of_one_slice_stays_a_clip(write_nifti_stack, tmp_path):
    path = write_nifti_stack(tmp_path / "cine.nii", np.zeros((6, 5, 1, 4), np.int16), (1.5, 1.25, 8.0, 40.0))
    with open_input(path) as clip:
        assert isinstance(clip, NiftiClipReader) and clip.info.n_frames == 4


# ---------------------------------------------------------------------------------------
# enhanced multi-frame MR DICOM written by pydicom
# ---------------------------------------------------------------------------------------
def test_enhanced_mr_file_is_grouped_by_plane_position_and_trigger_delay(tmp_path):
    frames = (np.arange(2 * 3)[:, None, None] * 100 + np.arange(4 * 5).reshape(4, 5)).reshape(2, 3, 4, 5)
    path = write_enhanced_mr(tmp_path / "sax.dcm", frames.astype(np.uint16), z_mm=[-4.0, 6.0],
                             trigger_ms=[10.0, 50.0, 90.0])
    with open_clip(path) as clip:  # the file as one clip: six frames in file order, as before
        assert clip.info.n_frames == 6
    with open_input(path) as stack:
        assert isinstance(stack, StackReader)
        info = stack.info
        assert (info.format, info.n_slices, info.n_phases, info.shape) == ("dicom-enhanced", 2, 3, (4, 5))
        assert info.metadata["stack_id_source"] == "SeriesInstanceUID"
        assert [s.position_mm for s in info.slices] == [-4.0, 6.0]
        assert [s.thickness_mm for s in info.slices] == [8.0, 8.0]
        assert info.slices[1].orientation == (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
        assert info.slices[0].trigger_times_ms == (10.0, 50.0, 90.0)
        with stack.slice(0) as clip:
            assert clip.info.spacing_mm == (1.25, 1.5) and clip.info.fps == pytest.approx(25.0)
            assert clip.info.metadata["fps_source"] == "NominalCardiacTriggerDelayTime"
        slices = read_slices(stack)
    for k in range(2):
        for p in range(3):
            np.testing.assert_array_equal(slices[k][p].pixels, frames[k, p])
            assert slices[k][p].instance_number == -1
    assert [f.t_s for f in slices[1]] == pytest.approx([0.0, 0.04, 0.08])


def test_an_enhanced_file_without_plane_positions_says_which_frame(tmp_path):
    path = write_enhanced_mr(tmp_path / "sax.dcm", np.zeros((2, 2, 4, 5), np.uint16), z_mm=[0.0, 8.0],
                             trigger_ms=[0.0, 40.0])
    ds = pydicom.dcmread(path)
    del ds.PerFrameFunctionalGroupsSequence[2].PlanePositionSequence
    ds.save_as(path)
    with pytest.raises(ClipError, match=r"sax\.dcm: frame 2 states no ImagePositionPatient"):
        open_stack(path)
    with open_input(path) as clip:  # not known to be a stack: the file's frames as one clip
        assert not isinstance(clip, StackReader) and clip.info.n_frames == 4


def test_files_that_are_not_stacks_say_so(tmp_path, npz_clip):
    with pytest.raises(ClipError, match=r"clip\.npz: cannot be read as a stack"):
        open_stack(npz_clip)
    with pytest.raises(ClipError, match="no such file or directory"):
        open_stack(tmp_path / "absent")
