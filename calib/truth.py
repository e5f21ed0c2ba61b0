"""Helpers to use and check phantom truth: follow points through the displacement fields,
warp masks to the next frame, lengths, strain and Dice.

Displacement fields follow OpenCV's forward-flow convention: ``field[t]`` has shape
(rows, cols, 2) with channel 0 = d_col (dx) and channel 1 = d_row (dy) in pixels; tissue at
pixel (r, c) of frame t is at (r + dy, c + dx) in frame t + 1.
"""

from __future__ import annotations

import cv2
import numpy as np


def sample_field(field: np.ndarray, pts_rc: np.ndarray) -> np.ndarray:
    """Bilinear sample of a (rows, cols, 2) field at points [row, col] (px) -> (N, 2) [drow, dcol]."""
    pts = np.asarray(pts_rc, dtype=np.float32).reshape(-1, 1, 2)
    mx = np.ascontiguousarray(pts[..., 1])
    my = np.ascontiguousarray(pts[..., 0])
    dx = cv2.remap(np.ascontiguousarray(field[..., 0], dtype=np.float32), mx, my, cv2.INTER_CUBIC,
                   borderMode=cv2.BORDER_REPLICATE)
    dy = cv2.remap(np.ascontiguousarray(field[..., 1], dtype=np.float32), mx, my, cv2.INTER_CUBIC,
                   borderMode=cv2.BORDER_REPLICATE)
    return np.stack([dy.ravel(), dx.ravel()], axis=1).astype(np.float64)


def track_points(fields: np.ndarray, pts0_rc: np.ndarray, start: int = 0, stop: int | None = None) -> np.ndarray:
    """Follow points (px, [row, col]) from frame ``start`` through ``fields``.

    Returns (stop - start, N, 2): positions in frames start .. stop - 1.
    """
    stop = fields.shape[0] if stop is None else stop
    p = np.asarray(pts0_rc, dtype=np.float64).copy()
    out = [p.copy()]
    for t in range(start, stop - 1):
        p = p + sample_field(fields[t], p)
        out.append(p.copy())
    return np.stack(out)


def polyline_length(pts: np.ndarray) -> np.ndarray:
    """Length of polylines (..., N, 2) in the units of pts."""
    return np.sum(np.linalg.norm(np.diff(pts, axis=-2), axis=-1), axis=-1)


def strain_pct(lengths: np.ndarray, l0: float) -> np.ndarray:
    return (np.asarray(lengths) - l0) / l0 * 100.0


def gls_and_regional(centreline: np.ndarray, ed_index: int = 0, groups: int = 6):
    """GLS % and regional strain % (groups of equal point count) of (T, N, 2) centrelines."""
    cl = np.asarray(centreline, dtype=np.float64)
    gls = strain_pct(polyline_length(cl), polyline_length(cl[ed_index]))
    n = cl.shape[1] // groups
    reg = np.stack([strain_pct(polyline_length(cl[:, k * n:(k + 1) * n]),
                               polyline_length(cl[ed_index, k * n:(k + 1) * n]))
                    for k in range(groups)], axis=1)
    return gls, reg


def warp_to_next(mask: np.ndarray, field: np.ndarray, iterations: int = 6) -> np.ndarray:
    """Mask of frame t carried to frame t+1 by the forward field of frame t.

    For each pixel y of frame t+1 the origin x with x + u(x) = y is found by fixed-point
    iteration; the mask is sampled there bilinearly and thresholded at 0.5.
    """
    rows, cols = mask.shape
    gy, gx = np.mgrid[0:rows, 0:cols].astype(np.float32)
    fx = np.ascontiguousarray(field[..., 0], dtype=np.float32)
    fy = np.ascontiguousarray(field[..., 1], dtype=np.float32)
    x, y = gx.copy(), gy.copy()
    for _ in range(iterations):
        x = gx - cv2.remap(fx, x, y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        y = gy - cv2.remap(fy, x, y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    warped = cv2.remap(mask.astype(np.float32), x, y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
    return (warped >= 0.5).astype(np.uint8)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    a = np.asarray(a) > 0
    b = np.asarray(b) > 0
    s = a.sum() + b.sum()
    return 1.0 if s == 0 else float(2.0 * np.logical_and(a, b).sum() / s)


def endpoint_error(flow: np.ndarray, truth: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Mean end-point error (px) of a (rows, cols, 2) flow against the truth (inside mask)."""
    e = np.linalg.norm(np.asarray(flow, dtype=np.float64) - truth, axis=-1)
    return float(e[mask > 0].mean() if mask is not None else e.mean())
