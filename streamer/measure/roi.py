"""Regions of interest of a short-axis slice: the LV region as OF-RNN takes it (issue 16),
and the central region of a velocity-mapping slice (:func:`central_roi`, issue 17).

The LV region:

A square of side ``2 * factor * r`` image pixels centred on the LV centre (r: the radius of a
disk with the area of the end-diastolic LV, cavity plus myocardium:
:func:`streamer.measure.polar.epicardial_radius_px`), resampled to ``roi_px``
x ``roi_px`` (64): every heart fills the region alike. :class:`LvRoi` maps images, label
maps and flow fields into the region and probability maps back; :func:`roi_flow` is the
dense motion OF-RNN's global branch reads: OpenCV's DIS optical flow between consecutive
frames of the region (the classical flow, the same in training and in the app), and
:func:`normalise_beat` its intensity scaling.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

#: side of the region, pixels (OF-RNN's input)
ROI_PX = 64
#: half the region's side in LV radii: the LV (diameter 2 r) fills 1 / factor of the side
ROI_FACTOR = 1.5
#: side of the central region the velocity-mapping network sees (issue 17), pixels
VM_ROI_PX = 128
#: its pixel size, mm: the region covers 179 mm around the image centre
VM_ROI_SPACING_MM = 1.4


@dataclass(frozen=True)
class LvRoi:
    """The affine map image -> region: region = scale * (image - centre) + (roi_px - 1) / 2,
    (x = col, y = row)."""

    centre_px: tuple[float, float]      # [row, col] in the image
    scale: float                         # region pixels per image pixel
    roi_px: int = ROI_PX

    @classmethod
    def around(cls, centre_px, lv_radius_px: float, *, factor: float = ROI_FACTOR,
               roi_px: int = ROI_PX) -> LvRoi:
        """The region centred on ``centre_px`` whose half side is ``factor`` LV radii."""
        if not lv_radius_px > 0 or not factor > 0:
            raise ValueError(f"lv_radius_px {lv_radius_px} and factor {factor} must be > 0")
        r, c = (float(v) for v in np.asarray(centre_px, np.float64).reshape(2))
        return cls((r, c), (roi_px / 2) / (factor * lv_radius_px), roi_px)

    def matrix(self) -> np.ndarray:
        """The 2 x 3 affine (OpenCV order: x = col, y = row) image -> region."""
        half = (self.roi_px - 1) / 2
        r0, c0 = self.centre_px
        s = self.scale
        return np.array([[s, 0.0, half - s * c0], [0.0, s, half - s * r0]], np.float64)

    def images(self, images: np.ndarray, *, nearest: bool = False) -> np.ndarray:
        """(T, rows, cols) or (rows, cols) -> the same in the region (float32; bilinear, or
        nearest for label maps; 0 outside the image)."""
        a = np.asarray(images)
        flat = a[None] if a.ndim == 2 else a
        flags = cv2.INTER_NEAREST if nearest else cv2.INTER_LINEAR
        out = np.stack([cv2.warpAffine(f.astype(np.float32), self.matrix(),
                                       (self.roi_px, self.roi_px), flags=flags,
                                       borderMode=cv2.BORDER_CONSTANT, borderValue=0.0)
                        for f in flat])
        return out[0] if a.ndim == 2 else out

    def to_image(self, region_map: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
        """A (roi_px, roi_px) map back onto an image of ``shape`` (bilinear; 0 outside)."""
        inverse = cv2.invertAffineTransform(self.matrix())
        return cv2.warpAffine(np.asarray(region_map, np.float32), inverse, (shape[1], shape[0]),
                              flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                              borderValue=0.0)

    def image_px_area(self) -> float:
        """Image pixels per region pixel (area)."""
        return 1.0 / (self.scale * self.scale)


def normalise_beat(region_frames: np.ndarray, low_pct: float = 1.0,
                   high_pct: float = 99.5) -> np.ndarray:
    """(T, S, S) region frames of one beat -> float32 in [0, 1]: the ``low_pct`` and
    ``high_pct`` percentiles of the region over the beat to 0 and 1, clipped (the same
    whether the frames came raw or already scaled per image)."""
    f = np.asarray(region_frames, np.float32)
    if not np.isfinite(f).all():
        raise ValueError("region frames hold NaN or infinite values")
    lo, hi = np.percentile(f, (low_pct, high_pct))
    return np.clip((f - lo) / (hi - lo if hi > lo else 1.0), 0.0, 1.0).astype(np.float32)


def roi_flow(frames: np.ndarray) -> np.ndarray:
    """(T, S, S) region frames in [0, 1] -> (T, 2, S, S) float32 flow from frame t to t + 1
    (the last to the first: one beat is a cycle), channels (dx, dy) in region pixels: OpenCV's
    DIS optical flow (medium preset) on the frames scaled to 0-255."""
    f = np.asarray(frames, np.float32)
    if f.ndim != 3 or f.shape[0] < 2:
        raise ValueError(f"frames must be (T >= 2, S, S), got shape {f.shape}")
    grey = np.clip(np.round(f * 255.0), 0, 255).astype(np.uint8)
    dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
    t = len(grey)
    out = np.empty((t, 2, *grey.shape[1:]), np.float32)
    for k in range(t):
        flow = dis.calc(grey[k], grey[(k + 1) % t], None)
        out[k] = flow.transpose(2, 0, 1)
    return out


def central_roi(shape: tuple[int, int], spacing_mm) -> LvRoi:
    """The network's region: :data:`VM_ROI_PX` pixels of :data:`VM_ROI_SPACING_MM` around
    the image centre (the LV of a planned short-axis slice lies near the isocentre; a heart
    more than ~45 mm off it is cut)."""
    rows, cols = shape
    sp = float(np.mean(np.asarray(spacing_mm, np.float64)))
    if not sp > 0:
        raise ValueError(f"spacing_mm {spacing_mm} must be > 0")
    return LvRoi(((rows - 1) / 2.0, (cols - 1) / 2.0), sp / VM_ROI_SPACING_MM, VM_ROI_PX)


def region_velocity(roi: LvRoi, velocity_cm_s: np.ndarray) -> np.ndarray:
    """(T, rows, cols, 3) -> (T, S, S, 3) in the region (bilinear; velocities are not
    rescaled: the region only resamples the grid)."""
    v = np.asarray(velocity_cm_s, np.float32)
    return np.stack([roi.images(v[..., k]) for k in range(3)], axis=-1)
