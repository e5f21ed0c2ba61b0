"""streamer.measure.labels: argmax_labels answers what np.argmax answers, ties and NaN too."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from streamer.measure.labels import argmax_labels


@settings(max_examples=200, deadline=None)
@given(arrays(np.float32, st.tuples(st.integers(1, 5), st.integers(1, 6), st.integers(1, 6)),
              elements=st.sampled_from([0.0, 1.0, -1.0, 2.5, np.nan, np.inf, -np.inf])))
def test_it_is_numpys_argmax_over_the_classes(scores):
    """Few distinct values, so ties and NaN (numpy: the first NaN wins) are common."""
    labels = argmax_labels(scores)
    assert labels.dtype == np.uint8
    np.testing.assert_array_equal(labels, np.argmax(scores, axis=0))


def test_real_sized_maps_of_each_dtype():
    rng = np.random.default_rng(0)
    for dtype in (np.float32, np.float64, np.float16):
        scores = rng.standard_normal((4, 64, 48)).astype(dtype)
        np.testing.assert_array_equal(argmax_labels(scores), np.argmax(scores, axis=0))
    strided = rng.standard_normal((64, 48, 3)).astype(np.float32).transpose(2, 0, 1)
    np.testing.assert_array_equal(argmax_labels(strided), np.argmax(strided, axis=0))


def test_wrong_shapes_are_refused():
    with pytest.raises(ValueError, match="expected"):
        argmax_labels(np.zeros((4, 4), np.float32))
    with pytest.raises(ValueError, match="expected"):
        argmax_labels(np.zeros((0, 4, 4), np.float32))
