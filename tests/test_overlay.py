"""streamer.overlay: the centreline and contours drawn where the points lie, in the
segments' colours, on a scaled image; points that are not a finite list draw nothing."""

from __future__ import annotations

import numpy as np

from streamer.overlay import (
    ENDO_RGB,
    POINTS_PER_SEGMENT,
    SEGMENT_RGB,
    bgr,
    draw_overlay,
    has_overlay,
    to_pixels,
)


def test_a_point_lands_on_its_pixel_centre_at_any_scale():
    # pixel (row 10, col 20) at 0.5 mm: its centre is 5 mm, 10 mm from the top-left pixel's
    xy = to_pixels([[5.0, 10.0], [5.0, 10.0]], (0.5, 0.5), (1.0, 1.0)) / 16
    assert np.allclose(xy[0], [20, 10])
    # twice the size: cv2.resize puts that pixel's centre at 2 * (i + 0.5) - 0.5
    xy = to_pixels([[5.0, 10.0], [5.0, 10.0]], (0.5, 0.5), (2.0, 2.0)) / 16
    assert np.allclose(xy[0], [40.5, 20.5])
    for bad in (None, [[1.0, 2.0]], [[1.0, np.nan], [2.0, 3.0]], [[1, 2, 3], [4, 5, 6]], "x"):
        assert to_pixels(bad, (1.0, 1.0), (1.0, 1.0)) is None


def test_the_centreline_is_drawn_in_its_six_segments_colours_and_contours_closed():
    image = np.zeros((200, 200, 3), np.uint8)
    n = 6 * POINTS_PER_SEGMENT
    points = [[20.0 + 150.0 * k / (n - 1), 100.0] for k in range(n)]   # a vertical line, 1 mm/px
    fields = {"points_mm": points}
    assert has_overlay(fields) and not has_overlay({"points_mm": None})
    draw_overlay(image, fields, (1.0, 1.0), (1.0, 1.0))
    for k, rgb in enumerate(SEGMENT_RGB):
        row = round(20 + 150 * (k + 0.5) / 6)
        assert tuple(image[row, 100]) == bgr(rgb), k
    assert not image[:15].any() and not image[:, :90].any()
    ring = np.zeros((100, 100, 3), np.uint8)
    angles = np.linspace(0, 2 * np.pi, 48, endpoint=False)
    draw_overlay(ring, {"endo_mm": [[50 + 30 * np.sin(a), 50 + 30 * np.cos(a)] for a in angles]},
                 (1.0, 1.0), (1.0, 1.0))
    assert tuple(ring[80, 50]) == bgr(ENDO_RGB) and not ring[50, 50].any()
