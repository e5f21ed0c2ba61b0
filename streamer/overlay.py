"""The analysis drawn on a frame, the same in the live viewer (``streamer.viewer``) and in
the report's video (``streamer.report``): echo's tracked centreline in its six segments'
colours, the MR short axis' tracked endo- and epicardium.

Points are ``[row, col]`` mm from the frame's top-left pixel (the protocol's ``points_mm``,
``endo_mm``, ``epi_mm``); an image scaled by ``(sy, sx)`` from the frame gets them at the
pixel centres cv2.resize puts there, drawn with 4 fractional bits (cv2's ``shift``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from streamer.vocab import A4C_SEGMENTS

#: echo's centreline: 120 points, basal septum -> apex -> basal lateral, six segments of 20
POINTS_PER_SEGMENT = 20
#: one colour per echo segment (RGB), A4C_SEGMENTS order: the overlay's, the viewer's table's
#: and the report's curves'
SEGMENT_RGB = ((31, 119, 180), (44, 160, 44), (255, 187, 0),
               (255, 127, 14), (214, 39, 40), (148, 103, 189))
ENDO_RGB, EPI_RGB = (255, 80, 80), (80, 220, 120)
assert len(SEGMENT_RGB) == len(A4C_SEGMENTS)


def hex_colour(rgb: tuple[int, int, int]) -> str:
    return "#" + "".join(f"{c:02x}" for c in rgb)


def bgr(rgb: tuple[int, int, int]) -> tuple[int, int, int]:
    return rgb[2], rgb[1], rgb[0]


def to_pixels(points_mm: Any, spacing_mm, scale: tuple[float, float]) -> np.ndarray | None:
    """[row, col] mm -> (x, y) in the scaled image, fixed point with 4 fractional bits; None
    where the points are not a finite (N >= 2, 2) list."""
    try:
        mm = np.asarray(points_mm, dtype=np.float64)
    except (TypeError, ValueError):
        return None
    if mm.ndim != 2 or mm.shape[1] != 2 or len(mm) < 2 or not np.isfinite(mm).all():
        return None
    rows = (mm[:, 0] / spacing_mm[0] + 0.5) * scale[0] - 0.5
    cols = (mm[:, 1] / spacing_mm[1] + 0.5) * scale[1] - 0.5
    return np.round(np.stack([cols, rows], axis=1) * 16).astype(np.int32)


def has_overlay(fields: dict) -> bool:
    return any(isinstance(fields.get(k), list) for k in ("points_mm", "endo_mm", "epi_mm"))


def draw_overlay(image: np.ndarray, fields: dict, spacing_mm, scale: tuple[float, float]
                 ) -> None:
    """Draws a result's centreline or contours (``fields``: its header's keys) into the BGR
    ``image``, in place."""
    import cv2

    thickness = max(2, round(max(image.shape[:2]) / 200))
    points = to_pixels(fields.get("points_mm"), spacing_mm, scale)
    if points is not None:
        n = POINTS_PER_SEGMENT
        for i, rgb in enumerate(SEGMENT_RGB):
            # each segment joined to the next one's first point: one unbroken line
            part = points[i * n:(i + 1) * n + 1]
            if len(part) >= 2:
                cv2.polylines(image, [part], False, bgr(rgb), thickness, cv2.LINE_AA, 4)
    for key, rgb in (("endo_mm", ENDO_RGB), ("epi_mm", EPI_RGB)):
        contour = to_pixels(fields.get(key), spacing_mm, scale)
        if contour is not None:
            cv2.polylines(image, [contour], True, bgr(rgb), thickness, cv2.LINE_AA, 4)
