"""streamer.measure.roi: the LV region of interest OF-RNN takes, its flow and scaling."""

from __future__ import annotations

import numpy as np
import pytest

from streamer.measure.polar import epicardial_radius_px as lv_radius_px
from streamer.measure.roi import ROI_PX, LvRoi, normalise_beat, roi_flow
from streamer.vocab import MRLabel


def test_the_region_is_centred_on_the_lv_and_sized_by_its_radius():
    labels = np.zeros((120, 160), np.uint8)
    rr, cc = np.mgrid[:120, :160]
    labels[(rr - 50) ** 2 + (cc - 90) ** 2 <= 20 ** 2] = MRLabel.LV_MYOCARDIUM
    labels[(rr - 50) ** 2 + (cc - 90) ** 2 <= 12 ** 2] = MRLabel.LV_CAVITY
    r = lv_radius_px(labels)
    assert r == pytest.approx(20, abs=0.3)
    roi = LvRoi.around((50, 90), r)
    region = roi.images(labels, nearest=True)
    assert region.shape == (ROI_PX, ROI_PX)
    rows, cols = np.nonzero(region > 0)
    assert rows.mean() == pytest.approx(31.5, abs=0.5) and cols.mean() == pytest.approx(31.5, abs=0.5)
    # the LV's diameter fills 1 / 1.5 of the side
    assert (cols.max() - cols.min() + 1) == pytest.approx(ROI_PX / 1.5, abs=2)
    assert roi.image_px_area() == pytest.approx((2 * 1.5 * r / ROI_PX) ** 2)
    # and back: a map of the region lands where the LV is
    back = roi.to_image((region > 0).astype(np.float32), labels.shape)
    inside = labels > 0
    assert back[inside].mean() > 0.95 and back[~inside].mean() < 0.02
    with pytest.raises(ValueError, match="no LV"):
        lv_radius_px(np.zeros((4, 4), np.uint8))
    with pytest.raises(ValueError, match="must be > 0"):
        LvRoi.around((1, 1), 0.0)


def test_roi_flow_follows_a_known_shift_and_wraps_the_beat():
    rng = np.random.default_rng(0)
    base = np.kron(rng.random((16, 16)), np.ones((4, 4))).astype(np.float32)   # 64 x 64 blobs
    frames = np.stack([np.roll(base, k, axis=1) for k in range(4)])            # +1 col a frame
    flow = roi_flow(frames)
    assert flow.shape == (4, 2, 64, 64) and flow.dtype == np.float32
    inner = (slice(None), slice(8, -8), slice(8, -8))
    assert np.median(flow[:3, 0][inner]) == pytest.approx(1.0, abs=0.15)        # dx
    assert np.median(np.abs(flow[:3, 1][inner])) < 0.15                         # dy
    assert np.median(flow[3, 0][inner[1:]]) == pytest.approx(-3.0, abs=0.5)     # last -> first
    with pytest.raises(ValueError, match="T >= 2"):
        roi_flow(frames[:1])


def test_normalise_beat_scales_the_region_over_the_beat():
    x = np.linspace(0, 1000, 2 * 64 * 64, dtype=np.float32).reshape(2, 64, 64)
    y = normalise_beat(x)
    assert y.min() == 0.0 and y.max() == 1.0 and y.dtype == np.float32
    assert np.allclose(normalise_beat(x / 1000.0), y, atol=1e-5)    # raw or already scaled
    x[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        normalise_beat(x)


def test_the_central_region_of_a_velocity_mapping_slice():
    """128 x 128 pixels of 1.4 mm around the image centre, whatever the frame's spacing; the
    velocities are resampled, not rescaled."""
    from streamer.measure.roi import VM_ROI_PX, VM_ROI_SPACING_MM, central_roi, region_velocity

    roi = central_roi((200, 240), (1.75, 1.75))
    assert roi.roi_px == VM_ROI_PX and roi.scale == pytest.approx(1.75 / VM_ROI_SPACING_MM)
    image = np.zeros((200, 240), np.float32)
    image[99:101, 119:121] = 1.0          # the centre
    out = roi.images(image)
    r, c = np.unravel_index(np.argmax(out), out.shape)
    assert abs(r - 63.5) <= 1 and abs(c - 63.5) <= 1
    v = np.full((2, 200, 240, 3), 3.0, np.float32)
    assert np.allclose(region_velocity(roi, v)[:, 40:80, 40:80], 3.0)
    with pytest.raises(ValueError):
        central_roi((10, 10), (0.0, 0.0))
