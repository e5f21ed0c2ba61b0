"""Data-set builders: fixed disjoint seed ranges, determinism, balanced views."""

import numpy as np
import pytest

from calib.datasets import (
    SPLITS,
    calibration_images,
    flow_samples,
    random_echo_config,
    segmentation_samples,
    split_of,
    split_seeds,
    view_samples,
    write_dataset,
)
from calib.errors import PhantomParameterError


def test_splits_are_disjoint_and_fixed():
    ranges = sorted(SPLITS.values())
    assert all(a[1] <= b[0] for a, b in zip(ranges, ranges[1:]))
    assert SPLITS["test"] == (2_000_000, 2_100_000)
    assert split_of(int(split_seeds("test", 3)[0])) == "test"
    with pytest.raises(PhantomParameterError):
        split_seeds("val", 200_000)


def test_random_configs_are_deterministic_and_varied():
    a, b = random_echo_config(17), random_echo_config(17)
    assert a.to_dict() == b.to_dict()
    c = random_echo_config(18)
    assert c.lv_length_mm != a.lv_length_mm and c.view != a.view


def test_view_samples_balanced_and_reproducible(tmp_path):
    s = view_samples("train", 8, rows=96, cols=96)
    assert list(s["labels"]) == list(range(8))
    assert s["images"].shape == (8, 96, 96)
    again = view_samples("train", 2, rows=96, cols=96)
    assert np.array_equal(again["images"], s["images"][:2])
    p = write_dataset(tmp_path / "views.npz", s)
    z = np.load(p)
    assert list(z["seeds"]) == list(s["seeds"]) and "meta_json" in z


def test_segmentation_and_flow_samples():
    s = segmentation_samples("val", 4, rows=96, cols=96, frames_per_clip=2)
    assert s["images"].shape == (4, 96, 96) and s["myocardium"].any(axis=(1, 2)).all()
    assert (s["seeds"] >= SPLITS["val"][0]).all() and (s["seeds"] < SPLITS["val"][1]).all()
    f = flow_samples("train", 2, rows=96, cols=96, pairs_per_clip=2)
    assert f["pairs"].shape == (2, 2, 96, 96) and f["flow"].shape == (2, 96, 96, 2)


def test_calibration_set_comes_from_calib_split():
    imgs = calibration_images(2, kind="view", rows=64, cols=64)
    assert imgs.shape == (2, 64, 64)


def test_view_samples_several_frames_per_clip():
    s = view_samples("val", 5, rows=64, cols=64, frames_per_clip=2)       # 3 clips, cut to 5 frames
    assert s["images"].shape == (5, 64, 64)
    assert list(s["labels"]) == [0, 0, 1, 1, 2]
    assert list(s["seeds"]) == [1_000_000, 1_000_000, 1_000_001, 1_000_001, 1_000_002]
    assert not np.array_equal(s["images"][0], s["images"][1])            # another phase of the cycle
    with pytest.raises(PhantomParameterError):
        view_samples("val", 2, rows=64, cols=64, frames_per_clip=0)


def test_velocity_mapping_slices_are_black_blood_with_offsets_and_as_the_network_sees_them():
    from calib.datasets import velocity_mapping_config, velocity_mapping_samples
    from streamer.measure.roi import VM_ROI_PX

    cfgs = [velocity_mapping_config(s) for s in range(20)]
    assert all(0.03 <= c.blood_signal <= 0.15 and 150 <= c.venc_mm_s <= 300
               and 2.0 <= c.phase_offset_mm_s <= 25.0 and 20 <= c.frames <= 30 for c in cfgs)
    assert velocity_mapping_config(3, frames=50).frames == 50
    d = velocity_mapping_samples("test", 2, frames=6)
    assert d["magnitude"].shape == (2, 6, VM_ROI_PX, VM_ROI_PX)
    assert d["velocity_cm_s"].shape == d["true_velocity_cm_s"].shape == (2, 6, VM_ROI_PX,
                                                                        VM_ROI_PX, 3)
    assert list(d["frames_n"]) == [6, 6] and d["myocardium"][:, 0].any(axis=(1, 2)).all()
    # the myocardium's measured velocity is its true one plus noise and an offset of cm/s
    err = (d["velocity_cm_s"] - d["true_velocity_cm_s"]).astype(np.float32)[d["myocardium"]]
    assert np.abs(np.median(err, axis=0)).max() < 3.0
