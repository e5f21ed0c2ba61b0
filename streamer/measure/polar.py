"""Cardiac-MOS's input: each AHA segment of a short-axis slice over one beat, in polar
coordinates (Xue et al. 2018; the network is :mod:`engines.nets.cardiac_mos`).

For one slice and one beat (frames ``(T, rows, cols)``), with the LV centre and the RV
insertion points of its end-diastolic labels (:func:`streamer.measure.sax.rv_insertion_points`):

1. **Size**: every frame is cropped to a square centred on the LV centre whose half-width is
   ``crop_factor`` times the LV's end-diastolic epicardial radius (the radius of a circle of
   the cavity + myocardium area), resampled to ``crop_px`` x ``crop_px`` (160): every heart
   fills the crop alike.
2. **Intensity**: the crops are scaled to 0-255 by the 1st and 99.5th percentiles of the
   slice's crops over the beat, then CLAHE (OpenCV; ``clahe_clip``, 8 x 8 tiles) per frame.
3. **Polar**: each AHA segment of the slice's level is sampled at ``radii`` = crop_px / 2
   radii (one per crop pixel, 0 at the centre) times ``angles`` (60) angles across its
   sector, from the sector's first edge in the direction of the AHA numbering (the
   direction :func:`streamer.measure.strain.aha_segment_ids` numbers them): 60 degrees on
   basal and mid slices (one sample per degree), 90 degrees on apical slices (resampled to
   the same 60 samples). Alignment with the RV insertion points is what the sectors are:
   segment 2's first angle is the anterior insertion point on every heart.

The result maps each AHA id of the level to a float32 array ``(T, radii, angles)`` in [0, 1]
(bilinear sampling; outside the image: 0).
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from streamer.measure.sax import RvInsertion
from streamer.vocab import SAX_LEVELS, MRLabel

#: the crop side the sizes are normalised to (px), and the polar grid's angular samples
CROP_PX = 160
ANGLES = 60

#: (AHA id, first edge of its sector in degrees from the anterior insertion point towards
#: the septum, width in degrees) per level: as streamer.measure.strain.aha_segment_ids
SECTORS: dict[str, tuple[tuple[int, float, float], ...]] = {
    "basal": ((2, 0, 60), (3, 60, 60), (4, 120, 60), (5, 180, 60), (6, 240, 60), (1, 300, 60)),
    "mid": ((8, 0, 60), (9, 60, 60), (10, 120, 60), (11, 180, 60), (12, 240, 60), (7, 300, 60)),
    "apical": ((14, 15, 90), (15, 105, 90), (16, 195, 90), (13, 285, 90)),
}


def epicardial_radius_px(labels: np.ndarray) -> float:
    """Radius (px) of a disk with the area of the LV (cavity + myocardium) of a label image."""
    area = int(np.isin(labels, (MRLabel.LV_CAVITY, MRLabel.LV_MYOCARDIUM)).sum())
    if area == 0:
        raise ValueError("the label image holds no LV: nothing to centre the crop on")
    return math.sqrt(area / math.pi)


def normalised_crops(frames: np.ndarray, centre_px, radius_px: float, *, crop_factor: float = 1.6,
                     crop_px: int = CROP_PX, clahe_clip: float | None = 2.0) -> np.ndarray:
    """(T, crop_px, crop_px) uint8: steps 1 and 2 of the module docstring (``clahe_clip``
    None: no CLAHE)."""
    frames = np.asarray(frames)
    if frames.ndim != 3 or frames.shape[0] < 1:
        raise ValueError(f"frames must be (T, rows, cols), got shape {frames.shape}")
    if not np.isfinite(frames).all():
        raise ValueError("frames hold NaN or infinite values")
    if not radius_px > 0 or not crop_factor > 0:
        raise ValueError(f"radius_px {radius_px} and crop_factor {crop_factor} must be > 0")
    r0, c0 = (float(v) for v in np.asarray(centre_px, np.float64).reshape(2))
    scale = (crop_px / 2) / (crop_factor * radius_px)          # crop px per image px
    half = (crop_px - 1) / 2
    # image (x = col, y = row) -> crop: x' = scale (x - c0) + half, y' = scale (y - r0) + half
    m = np.array([[scale, 0.0, half - scale * c0], [0.0, scale, half - scale * r0]], np.float64)
    crops = np.stack([cv2.warpAffine(f.astype(np.float32), m, (crop_px, crop_px),
                                     flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                                     borderValue=0.0) for f in frames])
    lo, hi = np.percentile(crops, (1.0, 99.5))
    grey = np.clip((crops - lo) / (hi - lo if hi > lo else 1.0), 0.0, 1.0)
    out = np.round(grey * 255.0).astype(np.uint8)
    if clahe_clip is not None:
        clahe = cv2.createCLAHE(clipLimit=float(clahe_clip), tileGridSize=(8, 8))
        out = np.stack([clahe.apply(f) for f in out])
    return out


def polar_grid(insertion: RvInsertion, level: str, crop_px: int = CROP_PX, radii: int | None = None,
               angles: int = ANGLES) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """Per AHA id of ``level``: the (radii, angles) sampling maps (x = col, y = row) into a
    crop centred on the LV (step 3 of the module docstring)."""
    if level not in SAX_LEVELS:
        raise ValueError(f"level {level!r} is not one of {', '.join(SAX_LEVELS)}")
    radii = crop_px // 2 if radii is None else radii
    half = (crop_px - 1) / 2
    r = np.arange(radii, dtype=np.float64)[:, None]
    sign = 1.0 if insertion.ccw else -1.0
    out = {}
    for aha, start_deg, width_deg in SECTORS[level]:
        # sample centres across the sector, first edge -> last, in the numbering direction
        phi = np.radians(start_deg + (np.arange(angles) + 0.5) * width_deg / angles)
        theta = insertion.anterior_rad + sign * phi               # screen angle, ccw
        x = half + r * np.cos(theta)[None, :]
        y = half - r * np.sin(theta)[None, :]
        out[aha] = (x.astype(np.float32), y.astype(np.float32))
    return out


def segment_polar(frames: np.ndarray, ed_labels: np.ndarray, insertion: RvInsertion, level: str,
                  *, crop_factor: float = 1.6, crop_px: int = CROP_PX, angles: int = ANGLES,
                  clahe_clip: float | None = 2.0) -> dict[int, np.ndarray]:
    """One slice's beat -> {AHA id: (T, crop_px // 2, angles) float32 in [0, 1]}: the whole
    module docstring. ``ed_labels``: the slice's end-diastolic label image (its LV sets the
    crop's size); ``insertion``: its RV insertion points (their ``centre_px`` is the crop's
    centre)."""
    radius = epicardial_radius_px(np.asarray(ed_labels))
    crops = normalised_crops(frames, insertion.centre_px, radius, crop_factor=crop_factor,
                             crop_px=crop_px, clahe_clip=clahe_clip)
    return polar_segments(crops, insertion, level, angles=angles)


def polar_segments(crops: np.ndarray, insertion: RvInsertion, level: str, *,
                   angles: int = ANGLES) -> dict[int, np.ndarray]:
    """Step 3 alone: (T, S, S) uint8 crops centred on the LV (:func:`normalised_crops`)
    -> {AHA id: (T, S // 2, angles) float32 in [0, 1]} of ``level``, the sectors from
    ``insertion``'s anterior angle in its numbering direction (its ``centre_px`` is not
    used: the crop's centre is the LV's)."""
    crops = np.asarray(crops)
    if crops.ndim != 3 or crops.shape[1] != crops.shape[2] or crops.dtype != np.uint8:
        raise ValueError(f"crops must be (T, S, S) uint8, got {crops.shape} {crops.dtype}")
    out = {}
    for aha, (x, y) in polar_grid(insertion, level, int(crops.shape[1]), angles=angles).items():
        out[aha] = np.stack([cv2.remap(c, x, y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                                       borderValue=0) for c in crops]).astype(np.float32) / 255.0
    return out
