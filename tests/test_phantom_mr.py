"""MR short-axis phantom: AHA segments, exact strain truth, masks, velocity, validation."""

import cv2
import numpy as np
import pytest

from calib import truth as T
from calib.errors import PhantomParameterError
from calib.mr import MRPhantomConfig, make_mr_clip
from streamer.vocab import AHA_SEGMENTS, WALL_MOTION_CLASSES, WALL_MOTION_SCORES, MRLabel


@pytest.fixture(scope="module")
def mid():
    cfg = MRPhantomConfig(wall_motion={"8": "akinetic", "11": "dyskinetic"}, infarct_segments=[8], seed=1)
    return make_mr_clip(cfg)


def test_shapes_and_labels(mid):
    tr = mid.truth
    n = mid.config.frames
    assert mid.frames.shape == (n, 256, 256) and mid.frames.dtype == np.uint16
    assert mid.velocity_mm_s.shape == (n, 256, 256, 3)
    assert list(tr.segment_ids) == [7, 8, 9, 10, 11, 12]
    assert list(tr.segment_scores) == [0, 2, 0, 0, 3, 0]
    assert tr.msi == pytest.approx(np.mean([1, 3, 1, 1, 4, 1]))
    assert set(np.unique(tr.segments[0])) == {0, 7, 8, 9, 10, 11, 12}
    assert tr.infarct[0].any() and np.all(tr.segments[0][tr.infarct[0] > 0] == 8)
    assert tr.rv[0].any() and not (tr.rv[0] & tr.myocardium[0]).any()


def test_wall_motion_codes_and_scores_follow_the_vocabulary(mid):
    """segment_scores holds class codes (index in WALL_MOTION_CLASSES); the MSI is the mean score."""
    scores = [WALL_MOTION_SCORES[WALL_MOTION_CLASSES[c]] for c in mid.truth.segment_scores]
    assert mid.truth.msi == pytest.approx(np.mean(scores))
    assert MRPhantomConfig(wall_motion={"7": "hypokinetic"}).wall_motion == {"7": 1}


def test_label_map_uses_the_mr_label_values(mid):
    tr = mid.truth
    lab = tr.label_map()
    assert lab.shape == tr.myocardium.shape and lab.dtype == np.uint8
    assert set(np.unique(lab[0])) == {0, 1, 2, 3}
    assert np.array_equal(lab == MRLabel.LV_MYOCARDIUM, tr.myocardium > 0)
    assert np.array_equal(lab == MRLabel.LV_CAVITY, (tr.cavity > 0) & (tr.myocardium == 0))
    assert np.array_equal(lab == MRLabel.RV_CAVITY,
                          (tr.rv > 0) & (tr.cavity == 0) & (tr.myocardium == 0))


def test_aha_layout(mid):
    """Segment 7 anterior (top), 8-9 septal (image left, towards the RV), 10 inferior."""
    tr = mid.truth
    c = tr.lv_centre_mm / mid.spacing_mm[0]
    def centroid(s):
        r, q = np.nonzero(tr.segments[0] == s)
        return r.mean() - c[0], q.mean() - c[1]
    assert centroid(7)[0] < -10                                   # anterior = up
    assert centroid(10)[0] > 10                                   # inferior = down
    assert centroid(8)[1] < -5 and centroid(9)[1] < -5            # septum on the RV side (left)
    assert centroid(11)[1] > 5 and centroid(12)[1] > 5            # lateral wall right
    rv_c = np.nonzero(tr.rv[0])[1].mean() - c[1]
    assert rv_c < -10
    ins = tr.insertion_points_mm[0] / mid.spacing_mm[0] - c
    assert ins[0][0] < 0 < ins[1][0] and ins[0][1] < 0 and ins[1][1] < 0   # anterior / inferior, left


def test_circumferential_strain_recovered_from_truth_fields(mid):
    tr = mid.truth
    sp = mid.spacing_mm[0]
    from calib.mr import _Scene
    sc = _Scene(mid.config, np.random.default_rng(np.random.SeedSequence(mid.config.seed).spawn(3)[0]))
    rmid = sc.r_endo + sc.wall / 2
    pts = []
    for k in range(6):
        ph = np.deg2rad(np.linspace(sc.phi_bounds[k], sc.phi_bounds[k + 1], 41))
        pts.append(tr.lv_centre_mm + rmid * np.stack([-np.sin(ph), np.cos(ph)], 1))
    tracks = T.track_points(tr.displacement, np.concatenate(pts) / sp) * sp
    L = np.stack([T.polyline_length(tracks[:, 41 * k:41 * (k + 1)]) for k in range(6)], 1)
    strain = (L / L[0] - 1) * 100
    err = np.abs(strain - tr.circ_strain_pct).max()
    print(f"\nMR circumferential strain from integrated truth fields: max |error| {err:.3f} strain-%")
    assert err < 0.3
    es = int(tr.es_frames[0])
    assert tr.circ_strain_pct[es, 1] == pytest.approx(0.0)         # akinetic
    assert tr.circ_strain_pct[es, 4] > 0                           # dyskinetic


def test_masks_and_periodicity(mid):
    tr = mid.truth
    n = mid.config.frames
    d = [T.dice(T.warp_to_next(tr.myocardium_soft[t] / 255.0, tr.displacement[t]), tr.myocardium[(t + 1) % n])
         for t in range(n)]
    d_rv = [T.dice(T.warp_to_next(tr.rv_soft[t] / 255.0, tr.displacement[t]), tr.rv[(t + 1) % n]) for t in range(n)]
    d_cav = [T.dice(T.warp_to_next(tr.cavity_soft[t] / 255.0, tr.displacement[t]), tr.cavity[(t + 1) % n])
             for t in range(n)]
    print(f"\nMR Dice(warped, next) myocardium min {np.min(d):.4f} mean {np.mean(d):.4f}; "
          f"cavity min {np.min(d_cav):.4f}; RV min {np.min(d_rv):.4f}")
    assert np.min(d) >= 0.98 and np.min(d_cav) >= 0.98 and np.min(d_rv) >= 0.98
    assert np.array_equal(tr.myocardium_soft >= 128, tr.myocardium > 0)


def test_images_look_like_sunnybrook(mid):
    f = mid.frames[0].astype(float)
    tr = mid.truth
    blood = np.median(f[tr.cavity[0] > 0])
    myo = np.median(f[tr.myocardium[0] > 0])
    assert 220 < blood < 340 and 50 < myo < 120                   # Sunnybrook: ~280 / ~80


def test_velocity_channels(mid):
    tr = mid.truth
    v = tr.velocity_mm_s
    heart = (tr.myocardium[3] > 0)
    assert np.abs(v[3][heart]).max() > 10                          # systolic motion
    outside = ~(heart | (tr.cavity[3] > 0) | (tr.rv[3] > 0))
    outside &= cv2.erode(outside.astype(np.uint8), np.ones((9, 9))) > 0   # clear of the RV wall
    assert np.abs(v[3][outside]).max() == 0.0                     # truth velocity: heart only
    venc = mid.config.venc_mm_s
    assert np.abs(mid.velocity_mm_s).max() <= venc + 1e-3


def test_black_blood_and_background_phase_offsets_of_velocity_mapping():
    """blood_signal darkens the blood only; phase_offset_mm_s adds a smooth offset to the
    measured velocities (not to the truth, not to the magnitude) within its bound; both off
    by default leave the clip as it was."""
    kw = dict(frames=3, rows=96, cols=96, pixel_mm=2.8, venc_mm_s=400.0, noise_sigma=2.0, seed=4)
    plain = make_mr_clip(MRPhantomConfig(**kw))
    dark = make_mr_clip(MRPhantomConfig(**kw, blood_signal=0.2))
    offset = make_mr_clip(MRPhantomConfig(**kw, phase_offset_mm_s=30.0))
    cavity = plain.truth.cavity[0] > 0
    myo = plain.truth.myocardium[0] > 0
    ratio = dark.frames[0][cavity].mean() / plain.frames[0][cavity].mean()
    assert 0.15 < ratio < 0.3
    assert abs(dark.frames[0][myo].mean() / plain.frames[0][myo].mean() - 1) < 0.1
    assert np.array_equal(offset.frames, plain.frames)
    assert np.array_equal(offset.truth.velocity_mm_s, plain.truth.velocity_mm_s)
    venc = 400.0  # (in air the phase is noise and wraps: compare the phases modulo 2 VENC)
    diff = (offset.velocity_mm_s - plain.velocity_mm_s + venc) % (2 * venc) - venc
    assert 0.3 * 30.0 <= np.abs(diff).max() <= 30.0 + 1e-3
    # smooth: a plane with a quadratic part, the same in every frame
    assert np.allclose(diff[0], diff[2], atol=1e-3)
    assert np.abs(np.diff(diff[0], axis=0)).max() < 30.0 * 4 / 96


@pytest.mark.parametrize("level", ["basal", "apical"])
def test_other_slices(level):
    c = make_mr_clip(MRPhantomConfig(slice_level=level, frames=4, rows=128, cols=128, pixel_mm=2.2))
    assert set(np.unique(c.truth.segments[0])) - {0} == set(AHA_SEGMENTS[level])


@pytest.mark.parametrize("kw, needle", [
    (dict(slice_level="top"), "slice_level='top'"),
    (dict(wall_motion={"17": "akinetic"}), "wall_motion segment=17"),
    (dict(wall_motion={"3": "floppy"}), "floppy"),
    (dict(peak_circ_strain_pct=-60), "peak_circ_strain_pct=-60"),
    (dict(frames=1), "frames=1"),
    (dict(blood_signal=-0.1), "blood_signal"),
    (dict(phase_offset_mm_s=-1.0), "phase_offset_mm_s"),
])
def test_bad_parameters(kw, needle):
    with pytest.raises(PhantomParameterError) as e:
        MRPhantomConfig(**kw)
    assert needle in str(e.value)


def test_segment_factors_spread_motion_inside_a_class():
    """wall_motion_factors scale a segment's prescribed strains inside its class's range; a
    factor outside that range is refused; without factors the class's own factors apply."""
    from calib.mr import CLASS_FACTORS, WALL_MOTION_FACTOR_RANGES

    cfg = MRPhantomConfig(slice_level="mid", frames=4, wall_motion={"8": "hypokinetic"},
                          wall_motion_factors={"8": 0.25, "9": 1.1})
    clip = make_mr_clip(cfg)
    factors = dict(zip(clip.truth.segment_ids.tolist(), clip.truth.segment_factors.tolist()))
    assert factors[8] == [0.25, 0.25] and factors[9] == [1.1, 1.1]
    assert factors[10] == list(CLASS_FACTORS[0])
    es = int(np.argmin(clip.truth.circ_strain_pct[:, 2]))       # segment 9, normal
    circ = dict(zip(clip.truth.segment_ids.tolist(), clip.truth.circ_strain_pct[es]))
    assert circ[8] == pytest.approx(0.25 / 1.1 * circ[9])
    lo, hi = WALL_MOTION_FACTOR_RANGES[1]
    with pytest.raises(PhantomParameterError, match="hypokinetic.*0.2..0.6"):
        MRPhantomConfig(slice_level="mid", wall_motion={"8": 1}, wall_motion_factors={"8": hi + 0.1})
    with pytest.raises(PhantomParameterError, match="normal"):
        MRPhantomConfig(slice_level="mid", wall_motion_factors={"8": lo})


def test_a_wall_motion_stack_is_one_heart_in_three_slices():
    from calib.datasets import CORONARY_TERRITORIES, split_seeds, wall_motion_stack_configs
    from calib.mr import WALL_MOTION_FACTOR_RANGES

    seen_abnormal = 0
    for seed in split_seeds("train", 40):
        configs = wall_motion_stack_configs(int(seed))
        assert [c.slice_level for c in configs] == ["basal", "mid", "apical"]
        assert len({(c.frames, c.heart_rate_bpm, c.peak_circ_strain_pct, c.rv_insertion_deg)
                    for c in configs}) == 1
        assert configs[0].frames in (20, 25)
        classes = {int(s): c for cfg in configs for s, c in cfg.wall_motion.items()}
        assert sorted(classes) == list(range(1, 17))
        for cfg in configs:
            for s, f in cfg.wall_motion_factors.items():
                lo, hi = WALL_MOTION_FACTOR_RANGES[classes[int(s)]]
                assert lo <= f <= hi
        abnormal = {s for s, c in classes.items() if c > 0}
        if abnormal:
            seen_abnormal += 1
            # abnormal segments lie in at most two coronary territories
            hit = [t for t, segs in CORONARY_TERRITORIES.items() if abnormal & set(segs)]
            assert 1 <= len(hit) <= 2
    assert 15 <= seen_abnormal <= 38
    assert wall_motion_stack_configs(5, frames=50)[1].frames == 50
    assert wall_motion_stack_configs(5)[0].to_dict() == wall_motion_stack_configs(5)[0].to_dict()
    clip = make_mr_clip(wall_motion_stack_configs(7, frames=4)[2])
    assert clip.truth.segment_ids.tolist() == [13, 14, 15, 16]
