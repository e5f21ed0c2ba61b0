"""Short-axis wall tracking (streamer.measure.sax_tracking): boundaries on rays, and the
tracker on MR phantoms against their exact truth (labels, soft masks, displacement)."""

from __future__ import annotations

import numpy as np
import pytest

from calib.mr import make_mr_clip
from streamer.measure.sax import rv_insertion_points, screen_angle
from streamer.measure.sax_tracking import SaxTrackerConfig, SaxWallTracker, wall_boundaries_px
from streamer.measure.strain import sax_strain
from streamer.vocab import MRLabel


def ring(shape=(128, 128), centre=(64.0, 60.0), r_in=15.0, r_out=24.0, supersample=8):
    """Area-coverage map of an annulus (sub-pixel exact boundaries)."""
    s = supersample
    rows = (np.arange(shape[0] * s) + 0.5) / s - 0.5
    cols = (np.arange(shape[1] * s) + 0.5) / s - 0.5
    rr = np.hypot(rows[:, None] - centre[0], cols[None, :] - centre[1])
    inside = ((rr >= r_in) & (rr < r_out)).astype(np.float32)
    return inside.reshape(shape[0], s, shape[1], s).mean((1, 3))


def test_boundaries_on_rays_find_an_annulus_to_a_tenth_of_a_pixel():
    centre = np.array([64.0, 60.0])
    angles = np.linspace(0, 2 * np.pi, 36, endpoint=False)
    endo, epi, valid = wall_boundaries_px(ring(), centre, angles)
    assert valid.all()
    np.testing.assert_allclose(np.hypot(*(endo - centre).T), 15.0, atol=0.1)
    np.testing.assert_allclose(np.hypot(*(epi - centre).T), 24.0, atol=0.1)
    # the points lie on their rays: screen angle, counter-clockwise from +col
    np.testing.assert_allclose(screen_angle(endo, centre), angles, atol=1e-6)


def test_a_ray_that_meets_no_myocardium_is_invalid():
    myo = ring()
    myo[:, 60:] = 0.0  # the right half of the ring is gone
    endo, epi, valid = wall_boundaries_px(myo, (64.0, 60.0), [0.0, np.pi])
    assert valid.tolist() == [False, True]
    assert np.isnan(endo[0]).all() and np.isfinite(epi[1]).all()
    with pytest.raises(ValueError, match="rows, cols"):
        wall_boundaries_px(np.zeros((2, 3, 4)), (1, 1), [0.0])


def test_config_is_checked():
    with pytest.raises(ValueError, match="n_rays"):
        SaxTrackerConfig(n_rays=4)
    with pytest.raises(ValueError, match="along_wall"):
        SaxTrackerConfig(along_wall="drift")


def track_phantom(clip, config=SaxTrackerConfig()):
    """The tracker on a phantom's truth (labels, soft myocardium, displacement); the
    strain of the tracked contours in the phantom's AHA frame."""
    truth = clip.truth
    labels, sp = truth.label_map(), np.array(clip.spacing_mm)
    tracker, endo, epi = SaxWallTracker(config), [], []
    for t in range(len(labels)):
        flow = None if t == 0 else truth.displacement[t - 1]
        track = tracker.step(labels[t], flow, t / clip.fps, sp, truth.myocardium_soft[t] / 255.0)
        assert track.valid, (t, track.flags)
        endo.append(track.endo_mm)
        epi.append(track.epi_mm)
    ins = rv_insertion_points(labels[0])
    anterior = screen_angle(ins.anterior_px * sp, ins.centre_px * sp)[0]
    return sax_strain(np.array(endo), np.array(epi), anterior, clip.config.slice_level,
                      ccw=ins.ccw)


@pytest.mark.parametrize("along_wall", ["flow", "rays"])
@pytest.mark.parametrize("level", ["basal", "mid", "apical"])
def test_tracked_strain_matches_the_phantoms_segments(level, along_wall):
    """With the phantom's own masks (and flow): every segment's peak circumferential strain
    within 1.5 %-points of the truth, an akinetic segment's included; radial strain within
    7 (the phantom prescribes each segment's thickening, and the wall between a normal and
    an akinetic segment realises neither)."""
    segments = {"basal": 4, "mid": 10, "apical": 15}
    clip = make_mr_clip(slice_level=level, frames=20, seed=3,
                        wall_motion={str(segments[level]): "akinetic"})
    s = track_phantom(clip, SaxTrackerConfig(along_wall=along_wall))
    truth = clip.truth
    assert s.segment_ids.tolist() == truth.segment_ids.tolist()
    np.testing.assert_allclose(s.segment_circumferential_pct.min(0),
                               truth.circ_strain_pct.min(0), atol=1.5)
    np.testing.assert_allclose(s.segment_radial_pct.max(0), truth.radial_strain_pct.max(0),
                               atol=7.0)
    akinetic = truth.segment_scores > 0
    assert s.segment_radial_pct.max(0)[akinetic][0] < 6.0


def test_the_track_restarts_after_a_frame_without_lv():
    clip = make_mr_clip(slice_level="mid", frames=6, seed=1)
    labels, sp = clip.truth.label_map(), np.array(clip.spacing_mm)
    tracker = SaxWallTracker()
    first = tracker.step(labels[0], None, 0.0, sp)
    assert first.valid and first.flags == ["reinitialised"]
    empty = np.zeros_like(labels[1])
    lost = tracker.step(empty, None, 0.04, sp)
    assert not lost.valid and lost.flags == ["no_lv"]
    again = tracker.step(labels[2], None, 0.08, sp)
    assert again.valid and "reinitialised" in again.flags
    rv_only = np.where(labels[3] == MRLabel.RV_CAVITY, labels[3], 0).astype(np.uint8)
    assert tracker.step(rv_only, None, 0.12, sp).flags == ["no_lv"]


def test_a_wall_without_a_cavity_has_no_endocardium():
    """A disk of myocardium (the apical cap, or a stray blob): every ray starts inside it,
    so no ray is valid and the tracker reports the wall lost instead of a strain."""
    disk = ring(r_in=0.0, r_out=6.0)
    endo, epi, valid = wall_boundaries_px(disk, (64.0, 60.0), np.linspace(0, 2 * np.pi, 12, endpoint=False))
    assert not valid.any() and np.isnan(endo).all() and np.isnan(epi).all()
    labels = np.where(disk >= 0.5, MRLabel.LV_MYOCARDIUM, MRLabel.BACKGROUND).astype(np.uint8)
    track = SaxWallTracker().step(labels, None, 0.0, (1.4, 1.4))
    assert not track.valid and track.flags == ["wall_lost"]
