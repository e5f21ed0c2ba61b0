"""bench/view_gate.py: the gate rules replayed over per-frame view probabilities."""

from __future__ import annotations

import numpy as np
import pytest

from streamer.vocab import VIEW_CLASSES

A4C = VIEW_CLASSES.index("a4c")


@pytest.fixture(scope="module")
def passed(bench_module):
    return bench_module("view_gate").passed


def probs(p_a4c: list[float], other: str = "a2c") -> np.ndarray:
    """Frames whose probability is p on A4C and the rest on one other view."""
    out = np.zeros((len(p_a4c), len(VIEW_CLASSES)))
    out[:, A4C] = p_a4c
    out[:, VIEW_CLASSES.index(other)] = 1.0 - np.asarray(p_a4c)
    return out


def test_the_mean_rule_averages_the_last_window_and_needs_its_threshold(passed):
    p = probs([0.9, 0.6, 0.6, 0.6, 0.3, 0.3])
    # window of 2 frames at 2 fps and 1 s: the mean of each frame and the one before
    assert passed(p, 2.0, "mean>=0.7", 1.0).tolist() == [True, True, False, False, False, False]
    assert passed(p, 2.0, "mean>=0.5", 1.0).tolist() == [True, True, True, True, False, False]


def test_the_vote_counts_frames_whose_own_answer_is_a4c(passed):
    p = probs([0.6, 0.4, 0.4, 0.6, 0.6])
    assert passed(p, 3.0, "vote", 1.0).tolist() == [True, True, False, False, True]
    # a window never reaches before the stream's first frame
    assert passed(probs([0.2]), 30.0, "vote", 1.0).tolist() == [False]
