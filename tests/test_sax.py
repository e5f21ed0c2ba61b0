"""Short-axis geometry from label images (streamer.measure.sax) against the MR phantom's truth."""

import math

import numpy as np
import pytest

from calib.mr import MRPhantomConfig, make_mr_clip
from streamer.measure.sax import (
    SaxGeometryError,
    aha_segment_map,
    base_is_first,
    ejection_fraction_pct,
    largest_lv_component,
    lv_volumes,
    rv_insertion_points,
    sax_levels,
    screen_angle,
)
from streamer.vocab import AHA_SEGMENTS, MRLabel


@pytest.fixture(scope="module", params=[("basal", 95.0, 3), ("mid", 120.0, 4), ("apical", 140.0, 5)],
                ids=lambda p: f"{p[0]}-{p[1]:g}deg")
def slice_truth(request):
    level, insertion_deg, seed = request.param
    clip = make_mr_clip(MRPhantomConfig(slice_level=level, frames=2, rv_insertion_deg=insertion_deg,
                                        seed=seed))
    return level, clip.truth, clip.spacing_mm


def _agreement(segments, truth):
    on = truth > 0
    assert ((segments > 0) == on).all()          # every myocardial pixel gets a segment
    return float((segments[on] == truth[on]).mean())


def test_segments_and_insertion_points_match_the_phantom(slice_truth):
    level, truth, spacing = slice_truth
    labels = truth.label_map()
    for f in range(len(labels)):
        ins = rv_insertion_points(labels[f])
        assert ins.ccw                          # the standard display: septum counter-clockwise
        segments = aha_segment_map(labels[f], level, ins)
        assert set(np.unique(segments)) == {0, *AHA_SEGMENTS[level]}
        assert _agreement(segments, truth.segments[f]) >= 0.95
        true_deg = np.degrees(screen_angle(truth.insertion_points_mm[f] / np.array(spacing), ins.centre_px))
        assert abs(math.degrees(ins.anterior_rad) - true_deg[0]) < 5.0
        assert abs(math.degrees(ins.inferior_rad) - true_deg[1]) < 5.0


def test_a_mirrored_or_rotated_display_keeps_the_segments(slice_truth):
    level, truth, _ = slice_truth
    labels, segments = truth.label_map()[0], truth.segments[0]
    mirrored = aha_segment_map(labels[:, ::-1], level)          # RV on the image right
    assert not rv_insertion_points(labels[:, ::-1]).ccw
    assert _agreement(mirrored, segments[:, ::-1]) >= 0.95
    # rotated a quarter turn clockwise: the patient's anterior now points to the image right
    rotated = aha_segment_map(np.rot90(labels, -1), level, anterior_dir=(0.0, 1.0))
    assert _agreement(rotated, np.rot90(segments, -1)) >= 0.95


def test_a_stray_rv_blob_on_the_lateral_wall_does_not_move_the_insertion_points(slice_truth):
    """A segmentation's few stray RV pixels against the lateral wall: the RV is the region
    with the longest contact, so the insertion points stay where they were."""
    level, truth, _ = slice_truth
    labels = truth.label_map()[0].copy()
    before = rv_insertion_points(labels)
    centre = before.centre_px.round().astype(int)
    rows, cols = np.nonzero(labels == MRLabel.LV_MYOCARDIUM)
    lateral = cols.max()  # the myocardium's right-most column, on the centre's row
    labels[centre[0] - 2:centre[0] + 3, lateral + 1:lateral + 4] = MRLabel.RV_CAVITY
    after = rv_insertion_points(labels)
    assert after.anterior_rad == pytest.approx(before.anterior_rad)
    assert after.inferior_rad == pytest.approx(before.inferior_rad)


def test_only_the_largest_lv_region_is_kept():
    lab = np.zeros((20, 20), np.uint8)
    lab[2:10, 2:10] = MRLabel.LV_MYOCARDIUM
    lab[4:8, 4:8] = MRLabel.LV_CAVITY
    lab[15:17, 15:17] = MRLabel.LV_CAVITY                      # a stray cavity blob
    lab[12, 0:3] = MRLabel.LV_MYOCARDIUM                      # and a stray strip of wall
    lab[0:2, 12:18] = MRLabel.RV_CAVITY
    out = largest_lv_component(lab)
    assert (out[15:17, 15:17] == MRLabel.BACKGROUND).all() and (out[12, 0:3] == MRLabel.BACKGROUND).all()
    assert np.array_equal(out[:12], lab[:12])                 # the LV and the RV untouched
    # touching only at a corner is two regions (4-connectivity): the smaller goes
    lab2 = lab.copy()
    lab2[15:17, 15:17] = 0
    lab2[10, 10] = MRLabel.LV_MYOCARDIUM
    assert largest_lv_component(lab2)[10, 10] == MRLabel.BACKGROUND
    one = np.where(lab == MRLabel.RV_CAVITY, lab, 0).astype(np.uint8)
    one[4:8, 4:8] = MRLabel.LV_CAVITY
    assert largest_lv_component(one) is one                   # one region: nothing to do


def test_no_rv_or_no_contact_is_a_clear_error():
    labels = np.zeros((64, 64), np.uint8)
    yy, xx = np.mgrid[:64, :64]
    r = np.hypot(yy - 32, xx - 40)
    labels[r < 14] = MRLabel.LV_MYOCARDIUM
    labels[r < 9] = MRLabel.LV_CAVITY
    with pytest.raises(SaxGeometryError, match="no RV cavity"):
        rv_insertion_points(labels)
    labels[:, :5] = MRLabel.RV_CAVITY                          # far from the LV
    with pytest.raises(SaxGeometryError, match="does not touch"):
        rv_insertion_points(labels)
    with pytest.raises(SaxGeometryError, match="no LV"):
        rv_insertion_points(np.zeros((8, 8), np.uint8))
    with pytest.raises(ValueError, match="level"):
        aha_segment_map(labels, "basalish")


def test_levels_are_thirds_of_the_slices_with_lv_from_the_base():
    has = [False, True, True, True, True, True, True, True, True, True, True, False]
    levels = sax_levels(has)
    assert levels == [None] + ["basal"] * 3 + ["mid"] * 4 + ["apical"] * 3 + [None]
    assert sax_levels(has, base_first=False) == [None] + ["apical"] * 3 + ["mid"] * 4 + ["basal"] * 3 + [None]
    assert sax_levels([True, True]) == ["basal", "mid"]
    assert base_is_first([0, 1500, 1400, 900, 300, 0]) and not base_is_first([200, 900, 1600])
    with pytest.raises(SaxGeometryError):
        base_is_first([0, 0])


def test_disk_summation_volumes_mass_and_ejection_fraction():
    labels = np.zeros((3, 10, 10), np.uint8)
    labels[:, 2:6, 2:7] = MRLabel.LV_CAVITY            # 20 px a slice
    labels[1, 7:9, 2:7] = MRLabel.LV_MYOCARDIUM        # 10 px on one slice
    vol = lv_volumes(labels, (1.5, 2.0), slice_spacing_mm=10.0)
    assert vol.cavity_ml == pytest.approx(3 * 20 * 1.5 * 2.0 * 10.0 / 1000)
    assert vol.myocardium_ml == pytest.approx(10 * 30.0 / 1000)
    assert vol.mass_g == pytest.approx(vol.myocardium_ml * 1.05)
    assert ejection_fraction_pct(120.0, 48.0) == pytest.approx(60.0)
    with pytest.raises(ValueError):
        lv_volumes(labels[0], (1.0, 1.0), 10.0)
    with pytest.raises(ValueError):
        ejection_fraction_pct(0.0, 0.0)


# -- stack volumes by disk summation -------------------------------------------------------


def test_stack_volumes_sum_the_slices_and_find_ed_and_es_by_volume():
    from streamer.measure.sax import slice_spacing_mm, stack_volumes

    # 3 slices x 4 phases of cavity area (mm²): the largest total at phase 3, smallest at 1
    cavity = np.array([[1000, 600, 800, 1100], [1500, 900, 1200, 1600], [500, 300, 400, 600]])
    myo = np.full((3, 4), 800.0)
    v = stack_volumes(cavity, myo, 10.0)
    assert (v.ed_phase, v.es_phase) == (3, 1)
    assert v.edv_ml == pytest.approx(33.0) and v.esv_ml == pytest.approx(18.0)
    assert v.sv_ml == pytest.approx(15.0) and v.ef_pct == pytest.approx(100 * 15 / 33)
    assert v.mass_g == pytest.approx(24.0 * 1.05)
    assert slice_spacing_mm([30.0, 10.0, 20.0]) == 10.0
    assert slice_spacing_mm([5.0], thickness_mm=8.0) == 8.0
    with pytest.raises(SaxGeometryError, match="slice spacing"):
        slice_spacing_mm([5.0])
    with pytest.raises(ValueError, match="slices, phases"):
        stack_volumes(cavity, myo[:, :2], 10.0)
