"""Other echo views: every view renders, has its own anatomy and the right truth."""

import numpy as np
import pytest

from calib.echo import EchoPhantomConfig, make_echo_clip
from streamer.vocab import VIEW_CLASSES


@pytest.fixture(scope="module")
def clips():
    return {v: make_echo_clip(EchoPhantomConfig(view=v, frames=3, rows=160, cols=160, seed=5))
            for v in VIEW_CLASSES}


def test_view_order_is_the_convention():
    assert VIEW_CLASSES == ("a4c", "a2c", "alax", "plax", "psax", "sc4c", "ivc", "unknown")


@pytest.mark.parametrize("view", VIEW_CLASSES)
def test_every_view_renders_with_truth(clips, view):
    c = clips[view]
    tr = c.truth
    assert c.frames.shape == (3, 160, 160) and c.frames.dtype == np.uint8
    assert tr.view == view and tr.view_index == VIEW_CLASSES.index(view)
    assert np.isfinite(tr.displacement).all()
    assert c.frames[:, tr.sector_mask > 0].mean() > 3           # something is imaged
    has_lv = view in ("a4c", "a2c", "alax", "plax", "psax", "sc4c")
    assert bool(tr.myocardium.any()) == has_lv
    strain = view in ("a4c", "a2c", "alax", "sc4c")
    assert np.isfinite(tr.gls_pct).all() == strain


def test_views_differ_in_anatomy(clips):
    """Mean images of the views differ well beyond the speckle differences of one view."""
    import cv2

    def smooth(frames):                      # speckle averaged out, anatomy kept
        return cv2.GaussianBlur(frames.astype(np.float32).mean(0), (0, 0), 4.0)
    ref = smooth(clips["a4c"].frames)
    same = np.abs(ref - smooth(make_echo_clip(EchoPhantomConfig(view="a4c", frames=3, rows=160, cols=160,
                                                                 seed=6)).frames)).mean()
    for v in VIEW_CLASSES[1:]:
        assert np.abs(ref - smooth(clips[v].frames)).mean() > 1.5 * same, v


def test_psax_masks_follow_truth_field(clips):
    from calib import truth as T
    tr = clips["psax"].truth
    d = T.dice(T.warp_to_next(tr.myocardium[0], tr.displacement[0]), tr.myocardium[1])
    assert d > 0.96
