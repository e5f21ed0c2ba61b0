"""streamer.measure.polar (Cardiac-MOS's input): each AHA segment's polar image holds that
segment and no other, in the numbering direction of either display; the LV's size is
normalised away; the shapes and value range the network expects."""

import cv2
import numpy as np
import pytest

from calib.mr import MRPhantomConfig, make_mr_clip
from streamer.measure.polar import (
    ANGLES,
    CROP_PX,
    SECTORS,
    epicardial_radius_px,
    normalised_crops,
    segment_polar,
)
from streamer.measure.sax import rv_insertion_points
from streamer.vocab import AHA_SEGMENTS, MRLabel


@pytest.fixture(scope="module", params=[("basal", 3), ("mid", 4), ("apical", 5)],
                ids=lambda p: p[0])
def phantom(request):
    level, seed = request.param
    clip = make_mr_clip(MRPhantomConfig(slice_level=level, frames=4, seed=seed))
    return level, clip.frames, clip.truth.label_map(), clip.truth.segments


def _band(labels: np.ndarray, insertion) -> tuple[int, int]:
    """Radii (polar rows) of the myocardium's middle third: where every angle of a sector is
    myocardium."""
    r_epi = epicardial_radius_px(labels)
    myo = np.argwhere(labels == MRLabel.LV_MYOCARDIUM)
    d = np.linalg.norm(myo - insertion.centre_px, axis=1)
    inner, outer = np.percentile(d, 30), np.percentile(d, 70)
    to_polar = (CROP_PX / 2) / (1.6 * r_epi)
    return int(np.ceil(inner * to_polar)), int(np.floor(outer * to_polar)) + 1


@pytest.mark.parametrize("mirror", [False, True], ids=["standard", "mirrored"])
def test_each_segments_polar_image_holds_that_segment(phantom, mirror):
    level, _, labels, segments = phantom
    labels, segments = labels[0], segments[0]
    if mirror:                                   # RV on the image right: numbering clockwise
        labels, segments = labels[:, ::-1].copy(), segments[:, ::-1].copy()
    insertion = rv_insertion_points(labels)
    assert insertion.ccw is not mirror
    lo, hi = _band(labels, insertion)
    ids = [aha for aha, _, _ in SECTORS[level]]
    assert sorted(ids) == sorted(AHA_SEGMENTS[level])
    for target in ids:
        frames = (segments == target).astype(np.float32)[None].repeat(2, 0)   # 1 on the target
        polar = segment_polar(frames, labels, insertion, level, clahe_clip=None)
        assert set(polar) == set(ids)
        inside = polar[target][:, lo:hi, 6:-6].mean()   # away from the sector's edges
        others = max(polar[s][:, lo:hi, 6:-6].mean() for s in ids if s != target)
        assert inside > 0.9 and others < 0.05, (level, mirror, target, inside, others)


def test_shapes_range_and_clahe(phantom):
    level, frames, labels, _ = phantom
    insertion = rv_insertion_points(labels[0])
    polar = segment_polar(frames, labels[0], insertion, level)
    for image in polar.values():
        assert image.shape == (len(frames), CROP_PX // 2, ANGLES) and image.dtype == np.float32
        assert 0.0 <= image.min() and image.max() <= 1.0 and image.std() > 0.05
    plain = normalised_crops(frames, insertion.centre_px, epicardial_radius_px(labels[0]),
                             clahe_clip=None)
    equalised = normalised_crops(frames, insertion.centre_px, epicardial_radius_px(labels[0]))
    assert plain.shape == equalised.shape == (len(frames), CROP_PX, CROP_PX)
    assert plain.dtype == np.uint8 and not np.array_equal(plain, equalised)


def test_the_lvs_size_is_normalised_away(phantom):
    """The same slice drawn 1.5 times larger gives (nearly) the same polar images."""
    level, frames, labels, _ = phantom
    big_frames = np.stack([cv2.resize(f.astype(np.float32), None, fx=1.5, fy=1.5,
                                      interpolation=cv2.INTER_LINEAR) for f in frames])
    big_labels = cv2.resize(labels[0], None, fx=1.5, fy=1.5, interpolation=cv2.INTER_NEAREST)
    small = segment_polar(frames, labels[0], rv_insertion_points(labels[0]), level, clahe_clip=None)
    big = segment_polar(big_frames, big_labels, rv_insertion_points(big_labels), level,
                        clahe_clip=None)
    for aha in small:
        a, b = small[aha][:, 4:60].ravel(), big[aha][:, 4:60].ravel()   # the heart, not the rim
        assert np.corrcoef(a, b)[0, 1] > 0.9, aha


def test_bad_input_is_refused(phantom):
    level, frames, labels, _ = phantom
    insertion = rv_insertion_points(labels[0])
    with pytest.raises(ValueError, match="no LV"):
        segment_polar(frames, np.zeros_like(labels[0]), insertion, level)
    with pytest.raises(ValueError, match="NaN"):
        segment_polar(np.full(frames.shape, np.nan, np.float32), labels[0], insertion, level)
    with pytest.raises(ValueError, match=r"\(T, rows, cols\)"):
        segment_polar(frames[0], labels[0], insertion, level)
    with pytest.raises(ValueError, match="level"):
        segment_polar(frames, labels[0], insertion, "septal")
