"""Label maps from a network's per-class scores.

``argmax_labels`` is ``np.argmax(scores, axis=0).astype(np.uint8)`` (the same answer, ties
and NaN included: the first maximum, or the first NaN) in one pass over the pixels: NumPy's
arg-max along the class axis of a (classes, rows, cols) array walks it with a stride and
took 1.27 ms on a 4 x 256 x 256 map here (the MR app, every frame), this 0.16 ms.
"""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True, nogil=True)
def _argmax_first(scores):
    classes, rows, cols = scores.shape
    out = np.zeros((rows, cols), np.uint8)
    for i in range(rows):
        for j in range(cols):
            best, k = scores[0, i, j], 0
            if not np.isnan(best):
                for c in range(1, classes):
                    v = scores[c, i, j]
                    if np.isnan(v):
                        k = c
                        break
                    if v > best:
                        best, k = v, c
            out[i, j] = k
    return out


def argmax_labels(scores: np.ndarray) -> np.ndarray:
    """(classes, rows, cols) scores (logits or probabilities; at most 256 classes) -> the
    (rows, cols) uint8 index of each pixel's largest score."""
    scores = np.asarray(scores)
    if scores.ndim != 3 or not 1 <= scores.shape[0] <= 256:
        raise ValueError(f"argmax_labels: expected (classes <= 256, rows, cols) scores, got "
                         f"shape {scores.shape}")
    if scores.dtype not in (np.float32, np.float64):
        scores = scores.astype(np.float32)
    return _argmax_first(np.ascontiguousarray(scores))


def warmup() -> None:
    """Compile (or load from numba's cache) before the first frame."""
    argmax_labels(np.zeros((2, 1, 1), np.float32))
    argmax_labels(np.zeros((2, 1, 1), np.float64))
