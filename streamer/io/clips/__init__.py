"""Clip readers and writers behind one interface.

    reader = open_clip(path)            # dispatch on suffix / content
    reader.info -> ClipInfo             # what the file says, before any pixels
    for frame in reader: ...            # ClipFrame(index, pixels, t_s), streamed
    reader.close()                      # or `with open_clip(path) as reader:`
    frames = read_frames(path)          # every frame's pixels, read to the end

    stack = open_stack(path)            # a short-axis stack: slices x phases (:mod:`.stack`)
    with stack.slice(k) as clip: ...    # each slice an ordinary clip of StackFrames
    source = open_input(path)           # replay/analyze: a stack where the input holds several slices

    write_clip(path, frames, spacing_mm=(0.3, 0.3), fps=50.0, modality="US")

Formats (one module each): multi-frame DICOM, uncompressed or JPEG, and DICOM series
directories (:mod:`.dicom`, :mod:`.dicom_series`); stacks of slices x phases from those
(:mod:`.stack`); NIfTI (:mod:`.nifti`); video (:mod:`.video`); ``.npz``
(:mod:`.npz`).  Other formats plug in with :func:`register_reader`.

Units: ``spacing_mm`` is (row, col) millimetres per pixel, ``fps`` frames per second,
``ClipFrame.t_s`` seconds since the first frame (NaN when no timing is known).
Frames are C-contiguous, native byte order, shape ``info.shape``, dtype ``info.dtype``;
float frames with NaN pass through unchanged.

Errors are :class:`ClipError` with a message that names the file and what is wrong
("clip.dcm: truncated: header declares 30 frames but pixel data holds 12").
"""

from .base import ClipError, ClipFrame, ClipInfo, ClipReader, ReaderFactory
from .registry import open_clip, read_frames, register_reader, write_clip
from .stack import SliceClip, SliceInfo, StackFrame, StackInfo, StackReader, open_input, open_stack

__all__ = [
    "ClipError",
    "ClipFrame",
    "ClipInfo",
    "ClipReader",
    "ReaderFactory",
    "SliceClip",
    "SliceInfo",
    "StackFrame",
    "StackInfo",
    "StackReader",
    "open_input",
    "open_stack",
    "open_clip",
    "read_frames",
    "register_reader",
    "write_clip",
]
