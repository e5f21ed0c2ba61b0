"""The Sunnybrook reader (streamer.io.sunnybrook): expert contour files, their rasterisation,
and a real patient's stack with its contoured images."""

from __future__ import annotations

import numpy as np
import pytest

from streamer.io.sunnybrook import (
    CONTOUR_PIXEL_CENTRE,
    ContourError,
    rasterise_contour,
    read_contour,
    read_patient,
)


def _shoelace(xy: np.ndarray) -> float:
    x, y = xy[:, 0], xy[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))


def test_rasterise_a_square_by_pixel_centres():
    sq = np.array([[1.5, 2.5], [6.5, 2.5], [6.5, 8.5], [1.5, 8.5]])   # centres x 2..6, y 3..8
    m = rasterise_contour(sq, (12, 10))
    assert m.dtype == np.uint8 and m.shape == (12, 10) and int(m.sum()) == 30 == _shoelace(sq)
    rows, cols = np.nonzero(m)
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (3, 8, 2, 6)
    assert not rasterise_contour(sq + 100, (12, 10)).any()                # off the image


def test_a_real_contour_file_rasterises_to_its_polygon_area(sunnybrook_root):
    path = sunnybrook_root / "contours/SC-HF-I-1/i-contours/IM-0001-0059-icontour-manual.txt"
    xy = read_contour(path)
    assert xy.shape[1] == 2 and len(xy) > 100
    mask = rasterise_contour(xy, (256, 256))
    assert abs(int(mask.sum()) - _shoelace(xy)) / _shoelace(xy) < 0.05
    rows, cols = np.nonzero(mask)
    assert abs(rows.mean() - xy[:, 1].mean()) < 1.5 and abs(cols.mean() - xy[:, 0].mean()) < 1.5


def test_a_broken_contour_file_is_refused_by_name(tmp_path):
    bad = tmp_path / "IM-0001-0001-icontour-manual.txt"
    bad.write_text("1 2\n3\n")
    with pytest.raises(ContourError, match="IM-0001-0001"):
        read_contour(bad)


def test_read_patient_gives_the_stack_and_its_contoured_images(sunnybrook_root):
    p = read_patient(sunnybrook_root, "SCD0000101")
    assert p["images"].shape == (12, 20, 256, 256) and p["instance_number"].shape == (12, 20)
    assert np.allclose(p["spacing_mm"], 1.367, atol=1e-3)
    k = len(p["label_instance"])
    assert k == 18 and int(p["has_epicardium"].sum()) == 9 and len(p["endo_offsets"]) == k + 1
    # every contour sits on the image with that InstanceNumber
    s, ph = p["label_slice"], p["label_phase"]
    assert np.array_equal(p["instance_number"][s, ph], p["label_instance"])
    # end-diastole (epicardium drawn) at phase 18, end-systole at phase 7, in every slice
    assert set(ph[p["has_epicardium"]]) == {18} and set(ph[~p["has_epicardium"]]) == {7}
    assert not (p["cavity"] & p["myocardium"]).any()
    assert (p["myocardium"][~p["has_epicardium"]] == 0).all()
    # bright blood inside the endocardium, darker myocardium in the ring
    for i in np.flatnonzero(p["has_epicardium"]):
        img = p["images"][s[i], ph[i]].astype(float)
        assert img[p["cavity"][i] > 0].mean() > 1.5 * img[p["myocardium"][i] > 0].mean()


def test_an_unknown_patient_is_refused(sunnybrook_root):
    with pytest.raises(ContourError, match="SCD0000999"):
        read_patient(sunnybrook_root, "SCD0000999")


def test_read_patient_counts_pixels_from_zero_where_the_files_count_from_one(sunnybrook_root):
    p = read_patient(sunnybrook_root, "SCD0000301")
    path = next((sunnybrook_root / "contours/SC-HF-I-4/i-contours").glob(
        f"IM-0001-{int(p['label_instance'][0]):04d}-icontour-manual.txt"))
    assert CONTOUR_PIXEL_CENTRE == 1.0
    first = p["endo_points"][p["endo_offsets"][0]:p["endo_offsets"][1]]
    assert np.array_equal(first, read_contour(path) - 1.0)
    assert np.array_equal(p["cavity"][0], rasterise_contour(first, p["cavity"].shape[1:]))
