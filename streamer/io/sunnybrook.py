"""Sunnybrook Cardiac Data: a patient's short-axis cine with its expert contours, as arrays.

    patient = read_patient(root, "SCD0000101")      # dict of arrays (below)
    xy = read_contour(path)                         # (K, 2) x = column, y = row, as in the file
    mask = rasterise_contour(xy, (256, 256))        # uint8 1 inside the contour

The layout (``../shared/data/sunnybrook/README.md``): ``dicoms/SCD0000N01/K.dcm`` single-frame
DICOM images, read as a stack (slices x phases) by :func:`streamer.io.clips.open_stack`;
``contours/SC-HF-I-n/{i,o}-contours/IM-0001-KKKK-{i,o}contour-manual.txt`` expert
endocardial (i) and epicardial (o) contours of the image with InstanceNumber KKKK, one
"x y" point per line in pixel coordinates (x = column, y = row); ``link.csv`` maps the
DICOM folder id to the contour folder's patient id.

**The files' pixel grid.** Their coordinates count pixels from 1 at pixel centres (as
MATLAB's image axes do; the points lie on a half-pixel lattice), not from 0 as the image
arrays do. Measured against the images themselves (``bench/sunnybrook_contours.py``): the
translation that carries the endocardial contours onto the blood-to-myocardium edges is
zero within 0.25 px in x and y on all three patients once 1 is subtracted, and 0.3-0.6 px
up and left with 0.5 subtracted (the "pixel corner at whole numbers" reading).
:func:`read_patient` therefore returns points with pixel centres at whole numbers from 0
(the file's minus :data:`CONTOUR_PIXEL_CENTRE`), the convention of the image arrays and of
:func:`rasterise_contour`; :func:`read_contour` returns the file's numbers.
Endocardial contours exist at end-diastole and end-systole of the annotated slices,
epicardial ones (in these three patients) at end-diastole only.

:func:`read_patient` returns plain arrays (the engines take arrays, never files):

==================  ===========================  =============================================
key                 shape, dtype                 meaning
==================  ===========================  =============================================
images              (S, P, rows, cols) int16     the stack, slices by position, phases by time
instance_number     (S, P) int64                 DICOM InstanceNumber of each image
spacing_mm          (2,) float64                 (row, col) mm per pixel
slice_position_mm   (S,) float64                 slice positions
label_slice         (K,) int64                   slice of each contoured image
label_phase         (K,) int64                   phase of each contoured image
label_instance      (K,) int64                   its InstanceNumber
cavity              (K, rows, cols) uint8        1 inside the endocardial contour
myocardium          (K, rows, cols) uint8        1 inside the epicardial and outside the
                                                 endocardial contour (0 where no epicardium)
has_epicardium      (K,) bool                    whether the image has an epicardial contour
endo_points         (sum K_i, 2) float64         endocardial contours, (x, y) pixels (centres at
                                                 whole numbers), concatenated
endo_offsets        (K + 1,) int64               contour i is endo_points[off[i]:off[i+1]]
epi_points          (sum, 2) float64             epicardial contours (none for images without)
epi_offsets         (K + 1,) int64
==================  ===========================  =============================================

Errors are :class:`ContourError` naming the file (an unreadable contour, a contour of an
instance the series lacks, an unknown patient).
"""

from __future__ import annotations

import csv
import logging
import re
import warnings
from pathlib import Path

import numpy as np

from .clips import StackInfo, open_stack

__all__ = ["CONTOUR_PIXEL_CENTRE", "ContourError", "patient_ids", "rasterise_contour",
           "read_contour", "read_patient"]

#: the first pixel's centre in the contour files' coordinates (module docstring)
CONTOUR_PIXEL_CENTRE = 1.0

_CONTOUR_NAME = re.compile(r"IM-\d+-(\d+)-([io])contour-manual\.txt$")


class ContourError(ValueError):
    """A contour file or a patient folder that cannot be used; the message names the path."""


def read_contour(path: str | Path) -> np.ndarray:
    """(K, 2) float64 points "x y" of one contour file (x = column, y = row, pixels), the
    file's numbers (the first pixel's centre at :data:`CONTOUR_PIXEL_CENTRE`)."""
    p = Path(path)
    try:
        pts = np.loadtxt(p, dtype=np.float64, ndmin=2)
    except (OSError, ValueError) as exc:
        raise ContourError(f"{p}: not a contour file of 'x y' lines ({exc})") from None
    if pts.ndim != 2 or pts.shape[1] != 2 or len(pts) < 3 or not np.isfinite(pts).all():
        raise ContourError(f"{p}: expected at least 3 finite 'x y' points, got an array of shape {pts.shape}")
    return pts


def rasterise_contour(points_xy: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """uint8 (rows, cols) mask: 1 for the pixels whose centre lies inside the closed polygon
    ``points_xy`` ((K, 2), x = column, y = row, pixel centres at whole numbers). The mask's
    area matches the polygon's (cv2.fillPoly would add the boundary pixels, about half the
    perimeter)."""
    from matplotlib.path import Path as Polygon

    pts = np.asarray(points_xy, np.float64)
    rows, cols = shape
    lo = np.maximum(np.floor(pts.min(0)).astype(int), 0)
    hi = np.minimum(np.ceil(pts.max(0)).astype(int) + 1, [cols, rows])
    mask = np.zeros(shape, np.uint8)
    if (hi <= lo).any():
        return mask
    yy, xx = np.mgrid[lo[1]:hi[1], lo[0]:hi[0]]
    inside = Polygon(pts).contains_points(np.stack([xx.ravel(), yy.ravel()], 1))
    mask[lo[1]:hi[1], lo[0]:hi[0]] = inside.reshape(yy.shape)
    return mask


def patient_ids(root: str | Path) -> dict[str, str]:
    """DICOM folder id -> contour folder id, from ``root/link.csv``."""
    path = Path(root) / "link.csv"
    try:
        with open(path, newline="") as fh:
            rows = list(csv.DictReader(fh))
        return {r["patient_id"].strip(): r["original_id"].strip() for r in rows}
    except (OSError, KeyError) as exc:
        raise ContourError(f"{path}: cannot read the patient table ({exc})") from None


def _contour_files(folder: Path, kind: str) -> dict[int, Path]:
    out = {}
    sub = folder / f"{kind}-contours"
    if not sub.is_dir():
        return out
    for f in sorted(sub.iterdir()):
        m = _CONTOUR_NAME.search(f.name)
        if m and m.group(2) == kind:
            out[int(m.group(1))] = f
    return out


def _ragged(items: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    offsets = np.zeros(len(items) + 1, np.int64)
    for i, a in enumerate(items):
        offsets[i + 1] = offsets[i] + len(a)
    points = np.concatenate(items) if items else np.zeros((0, 2))
    return points.astype(np.float64).reshape(-1, 2), offsets


def _read_stack(series: Path) -> tuple[np.ndarray, tuple[float, float] | None, StackInfo]:
    with open_stack(series) as stack:
        images, spacing = [], None
        for k in range(stack.info.n_slices):
            with stack.slice(k) as clip:
                spacing = spacing or clip.info.spacing_mm
                images.append(np.stack([np.asarray(f.pixels) for f in clip]))
        return np.stack(images), spacing, stack.info


def read_patient(root: str | Path, patient: str) -> dict[str, np.ndarray]:
    """The stack and expert contours of ``patient`` (a DICOM folder id such as
    "SCD0000101") under the Sunnybrook ``root``, as the arrays of the module docstring."""
    root = Path(root)
    ids = patient_ids(root)
    if patient not in ids:
        raise ContourError(f"{root / 'link.csv'}: patient {patient!r} is not listed "
                           f"(listed: {', '.join(sorted(ids))})")
    series, contours = root / "dicoms" / patient, root / "contours" / ids[patient]
    if not contours.is_dir():
        raise ContourError(f"{contours}: no contour folder for {patient}")
    # the Sunnybrook UIDs have leading-zero components, which pydicom reports once per file
    # (as a warning and a log record)
    quiet = logging.getLogger("pydicom")
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Invalid value for VR UI")
            images, spacing, info = _read_stack(series)
    finally:
        quiet.setLevel(level)
    if spacing is None:
        raise ContourError(f"{series}: the series states no pixel spacing")
    images = np.stack(images)
    instance = np.array([s.instance_numbers for s in info.slices], np.int64)
    where = {int(n): (s, p) for (s, p), n in np.ndenumerate(instance)}
    endo, epi = _contour_files(contours, "i"), _contour_files(contours, "o")
    stray = sorted(set(epi) - set(endo))
    if stray:
        raise ContourError(f"{contours}: epicardial contours without an endocardial one: instances {stray}")
    shape = images.shape[-2:]
    rows = []
    for n in sorted(endo):
        if n not in where:
            raise ContourError(f"{endo[n]}: instance {n} is not in the series {series}")
        e = read_contour(endo[n]) - CONTOUR_PIXEL_CENTRE
        o = read_contour(epi[n]) - CONTOUR_PIXEL_CENTRE if n in epi else None
        cav = rasterise_contour(e, shape)
        myo = (rasterise_contour(o, shape) & (1 - cav)) if o is not None else np.zeros(shape, np.uint8)
        rows.append((n, where[n], e, o, cav, myo))
    if not rows:
        raise ContourError(f"{contours}: no endocardial contours")
    endo_points, endo_offsets = _ragged([r[2] for r in rows])
    epi_points, epi_offsets = _ragged([r[3] if r[3] is not None else np.zeros((0, 2)) for r in rows])
    return {
        "images": images, "instance_number": instance,
        "spacing_mm": np.array(spacing, np.float64),
        "slice_position_mm": np.array([s.position_mm for s in info.slices], np.float64),
        "label_slice": np.array([r[1][0] for r in rows], np.int64),
        "label_phase": np.array([r[1][1] for r in rows], np.int64),
        "label_instance": np.array([r[0] for r in rows], np.int64),
        "cavity": np.stack([r[4] for r in rows]), "myocardium": np.stack([r[5] for r in rows]),
        "has_epicardium": np.array([r[3] is not None for r in rows]),
        "endo_points": endo_points, "endo_offsets": endo_offsets,
        "epi_points": epi_points, "epi_offsets": epi_offsets,
    }
