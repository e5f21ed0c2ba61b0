"""How far the echo phantoms' appearance is from real echo: intensity statistics, no masks.

The networks are trained on phantoms only (``calib``) and fail on real clips. The phantom's
myocardium is a bright, even ring around a black cavity; a real wall is dim and uneven, the
blood pool is hazy, and the speckle and noise differ. This bench puts numbers on that gap
(issue 12), so that a change of the generator can be measured before and after: held-out
A4C phantoms (seeds of the ``test`` split, ``random_echo_config`` with its default
appearance, or ``--appearance random`` as training draws it; ``--fps`` 30 like the real
cines) against pydicom's two real apical 4-chamber
cines, ``examples_ybr_color.dcm`` (30 frames, 240 x 320) and ``color3d_jpeg_baseline.dcm``
(120 frames, 480 x 640, from the pydicom-data package).

The real clips have no annotations, so every statistic is computed without a mask of the
heart. Frames are brought to greyscale in [0, 1] as ``streamer.apps.common.Preprocess``
does (uint8 / 255, RGB -> luma with ``cv2.cvtColor``). Per clip:

* **sector mask**: the imaged fan, found from the frames themselves: pixels that change
  over the clip (temporal sd) and are not black (temporal max), closed and opened to drop
  specks and thin lines, the largest component, its convex hull (a fan is convex; dark cavities and
  shadows inside it belong to it), minus overlay (text, markers: pixels constant over the
  clip and bright), eroded by a small margin. Every statistic below is taken inside it.
  On the phantoms it is checked against their truth fan (IoU in the JSON): the phantoms
  leave parts of their fan wholly black (no tissue there, no noise), which a real fan
  never is, and the mask leaves those parts out.
* **normalisation**: intensities are divided by the sector's 99th percentile (pooled over
  frames), so that a gain or dynamic-range difference does not dominate the comparison.
* **histogram**: of the normalised intensity in the sector, pooled over frames. Distances
  to the phantoms' pooled histogram (each clip weighted equally): Wasserstein-1
  (``scipy.stats.wasserstein_distance``, values clipped at 2) and the Jensen-Shannon
  distance (base 2, 0..1) on 64 bins over [0, 1] (the top 1 % in the last bin; 8-bit
  levels spread over their step, so that they do not alias into the bins). For the
  phantoms, each clip's distance to the pooled histogram of the *other* phantom clips, so
  the phantom column is the spread within the phantom set.
* **dark/bright contrast**: a two-class Otsu split of the normalised intensities in the
  sector. The ratio of the class means (bright/dark; a phantom's black cavity makes it
  large, a real hazy cavity small), the dark class's share of the sector (blood pools and
  dark tissue outside the heart), and the 90th / 50th percentile ratio (the same question
  without a threshold).
* **speckle size**: the full width at half maximum of the spatial autocorrelation
  (unbiased, zero lag = 1) of the mean-removed intensity in square patches of
  ``--patch-mm`` (24 mm: 32 px at the phantoms' ~0.75 mm) that lie inside the sector and
  are mostly (>= 50 %, the 4 best per frame, 12 frames) of the bright class (tissue: speckle
  is measured where there is tissue). Axial = along the row index (depth, vertical lag),
  lateral = along the column index (horizontal lag), in mm with the clip's spacing; the
  median over patches and frames. The patch mean alone is not enough: a 24 mm patch holds
  the wall's edges, and the width then measures the anatomy (7-10 mm on the phantoms,
  ``--detrend-mm 0``). So each frame first loses its local mean (Gaussian, sigma
  ``--detrend-mm`` 3 mm), a high-pass that shortens the width of a known speckle by ~9 %
  at 2.3 mm FWHM, ~15 % at 3.3 mm, ~25 % at 5 mm (Gaussian-blurred noise): the same
  function of the physical size for every clip, so comparisons stay fair, and wide
  speckle is understated. A width near one pixel means the speckle is not resolved at
  that spacing.
* **temporal**: the mean absolute frame-to-frame difference of the normalised intensity in
  the sector, a proxy for speckle decorrelation, motion and noise (at equal frame rates).

The table has one row per statistic: the phantoms' mean +- sd over clips, each real cine,
and for each real cine its distance from the phantoms as z = (real - mean) / sd.

Spacing: ``examples_ybr_color.dcm`` is the first 30 frames of ``color3d_jpeg_baseline.dcm``
at half size (their pixels agree within ~1 grey level), but keeps the large clip's
ultrasound calibration (0.51 mm/px, calibration region beyond the image). When a clip's
calibration region lies outside its image, the spacing is scaled by the resize factor
(the region's extent over the image size, rounded up to an integer): 1.02 mm/px there.

    python bench/appearance.py [--phantom-clips 8] [--appearance neutral|random] [--size 256]
                               [--frames 30] [--fps 30]
                               [--patch-mm 24] [--detrend-mm 3]
                               [--out bench/results/appearance.json]
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from scipy.spatial.distance import jensenshannon
from scipy.stats import wasserstein_distance

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from engines.spec import network_image  # noqa: E402

REAL_CINES = (("examples_ybr_color.dcm", {}),
              ("color3d_jpeg_baseline.dcm", {"download": False}))
JS_BINS = 64                 # Jensen-Shannon histogram: 64 bins over [0, 1]
W1_BINS, W1_MAX = 2048, 2.0  # Wasserstein-1 on a fine histogram over [0, 2]
OTSU_BINS = 256

# (key, label, format) of the table's rows, in order
ROWS = (
    ("hist_w1", "histogram W1 to phantoms (norm. intensity)", "{:.3f}"),
    ("hist_js", "histogram JS distance to phantoms (64 bins)", "{:.3f}"),
    ("contrast_ratio", "bright/dark class mean ratio (Otsu)", "{:.2f}"),
    ("dark_fraction", "dark-class fraction of the sector", "{:.2f}"),
    ("p90_p50", "p90 / p50", "{:.2f}"),
    ("speckle_axial_mm", "speckle FWHM axial (rows), mm", "{:.2f}"),
    ("speckle_lateral_mm", "speckle FWHM lateral (cols), mm", "{:.2f}"),
    ("temporal_mad", "mean abs frame-to-frame diff (norm.)", "{:.3f}"),
)


# ============================================================================ frames
def to_gray(pixels: np.ndarray) -> np.ndarray:
    """One frame -> float32 luma in [0, 1], as the runtime's pre-processing does."""
    return network_image(pixels)


def corrected_spacing(info) -> tuple[tuple[float, float], float]:
    """The clip's (row, col) mm per pixel and the factor it was scaled by: a calibration
    region beyond the image means the image was resized after calibration."""
    spacing = tuple(float(s) for s in (info.spacing_mm or (1.0, 1.0)))
    region = (info.metadata or {}).get("calibration_region_px")
    rows, cols = info.shape[:2]
    factor = 1.0
    if region and (region["x1"] >= cols or region["y1"] >= rows):
        factor = float(math.ceil(max((region["x1"] + 1) / cols, (region["y1"] + 1) / rows)))
    return (spacing[0] * factor, spacing[1] * factor), factor


# ======================================================================= sector mask
def sector_mask(frames: np.ndarray, std_min: float = 0.5 / 255, max_min: float = 4 / 255,
                overlay_min: float = 0.5, margin_frac: float = 0.01) -> np.ndarray:
    """The imaged fan of a clip (T, H, W) of grey levels in [0, 1] -> bool (H, W).

    Active pixels change over time and are not black; an opening (radius ~1 % of the
    image) drops specks and thin lines, the largest component is the fan, its convex hull
    fills dark cavities and shadows inside it; overlay (constant over time and bright:
    text, markers) is removed, and the mask is eroded by ``margin_frac`` of the image.
    """
    frames = np.asarray(frames, np.float32)
    h, w = frames.shape[1:]
    tstd, tmax = frames.std(0), frames.max(0)
    active = ((tstd > std_min) & (tmax > max_min)).astype(np.uint8)
    r = max(1, int(round(0.01 * min(h, w))))
    disk = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))
    active = cv2.morphologyEx(active, cv2.MORPH_CLOSE, disk)
    active = cv2.morphologyEx(active, cv2.MORPH_OPEN, disk)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(active, connectivity=8)
    if n <= 1:
        return np.zeros((h, w), bool)
    biggest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    pts = cv2.findNonZero((labels == biggest).astype(np.uint8))
    hull = np.zeros((h, w), np.uint8)
    cv2.fillConvexPoly(hull, cv2.convexHull(pts), 1)
    overlay = ((tstd <= std_min) & (tmax >= overlay_min)).astype(np.uint8)
    overlay = cv2.dilate(overlay, np.ones((5, 5), np.uint8))
    mask = hull & (1 - overlay)
    m = max(1, int(round(margin_frac * min(h, w))))
    mask = cv2.erode(mask, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * m + 1, 2 * m + 1)))
    return mask.astype(bool)


# ======================================================================== statistics
def normalise(frames: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, float]:
    """Frames divided by the sector's 99th percentile (pooled over frames)."""
    p99 = float(np.percentile(frames[:, mask], 99))
    return frames / (p99 if p99 > 0 else 1.0), p99


def histograms(values: np.ndarray, quantum: float = 0.0) -> dict:
    """Probability histograms of normalised intensities: 64 bins on [0, 1] for JS (values
    above 1 in the last bin) and a fine one on [0, 2] for W1. ``quantum``: the step of
    quantised input (one grey level over the normalising p99); each value is spread
    uniformly over its step (fixed seed), else 8-bit levels alias into a comb of full and
    half-empty bins that the JS distance counts as a difference."""
    if quantum > 0:
        values = values + np.random.default_rng(0).random(values.size, np.float32) * np.float32(quantum)
    js, _ = np.histogram(np.clip(values, 0, 1), bins=JS_BINS, range=(0, 1))
    fine, _ = np.histogram(np.clip(values, 0, W1_MAX), bins=W1_BINS, range=(0, W1_MAX))
    return {"js": js / max(js.sum(), 1), "w1": fine / max(fine.sum(), 1)}


def hist_distances(a: dict, b: dict) -> dict:
    """Wasserstein-1 and Jensen-Shannon distance between two ``histograms``."""
    centres = (np.arange(W1_BINS) + 0.5) * (W1_MAX / W1_BINS)
    w1 = wasserstein_distance(centres, centres, a["w1"], b["w1"])
    js = float(jensenshannon(a["js"], b["js"], base=2))
    return {"hist_w1": float(w1), "hist_js": 0.0 if not np.isfinite(js) else js}


def otsu(values: np.ndarray, bins: int = OTSU_BINS) -> float:
    """Otsu's threshold of a 1-D sample (maximises the between-class variance)."""
    lo, hi = float(values.min()), float(values.max())
    if hi <= lo:
        return lo
    counts, edges = np.histogram(values, bins=bins, range=(lo, hi))
    centres = 0.5 * (edges[1:] + edges[:-1])
    p = counts / counts.sum()
    w0 = np.cumsum(p)
    m0 = np.cumsum(p * centres)
    mt = m0[-1]
    with np.errstate(divide="ignore", invalid="ignore"):
        between = (mt * w0 - m0) ** 2 / (w0 * (1 - w0))
    between[~np.isfinite(between)] = -1
    return float(edges[int(np.argmax(between)) + 1])


def contrast(values: np.ndarray) -> dict:
    """Two-class (Otsu) split of the sector's normalised intensities."""
    thr = otsu(values)
    dark, bright = values[values <= thr], values[values > thr]
    dark_mean = float(dark.mean()) if dark.size else float("nan")
    bright_mean = float(bright.mean()) if bright.size else float("nan")
    p50, p90 = np.percentile(values, [50, 90])
    return {"otsu_threshold": thr,
            "contrast_ratio": bright_mean / dark_mean if dark_mean > 0 else float("inf"),
            "dark_mean": dark_mean, "bright_mean": bright_mean,
            "bright_cv": float(bright.std() / bright_mean) if bright.size else float("nan"),
            "dark_fraction": float(dark.size / values.size),
            "p90_p50": float(p90 / p50) if p50 > 0 else float("inf")}


def autocorrelation(patch: np.ndarray) -> np.ndarray:
    """Unbiased, zero-lag-normalised autocorrelation of a patch's mean-removed values,
    lags centred (index [h-1, w-1] is lag 0), shape (2h-1, 2w-1)."""
    h, w = patch.shape
    x = patch.astype(np.float64) - patch.mean()
    shape = (2 * h - 1, 2 * w - 1)
    fx = np.fft.rfft2(x, s=shape)
    ac = np.fft.irfft2(fx * np.conj(fx), s=shape)
    overlap = np.fft.irfft2(np.abs(np.fft.rfft2(np.ones_like(x), s=shape)) ** 2, s=shape)
    ac = np.fft.fftshift(ac / np.maximum(np.round(overlap), 1))
    return ac / ac[h - 1, w - 1] if ac[h - 1, w - 1] > 0 else ac


def half_max_width(profile: np.ndarray) -> float:
    """FWHM (in samples) of a profile from lag 0 (value 1) outward; NaN if it never falls
    to a half."""
    below = np.flatnonzero(profile < 0.5)
    if below.size == 0:
        return float("nan")
    k = int(below[0])
    a, b = profile[k - 1], profile[k]
    return 2.0 * ((k - 1) + (a - 0.5) / (a - b))


def speckle_fwhm_px(patch: np.ndarray) -> tuple[float, float]:
    """(axial, lateral) FWHM in pixels of a patch's autocorrelation: axial along the row
    index (vertical lag), lateral along the column index; each the mean of both signs."""
    ac = autocorrelation(patch)
    h, w = patch.shape
    ax = 0.5 * (ac[h - 1:, w - 1] + ac[h - 1::-1, w - 1])
    lat = 0.5 * (ac[h - 1, w - 1:] + ac[h - 1, w - 1::-1])
    return half_max_width(ax), half_max_width(lat)


def bright_patches(frame: np.ndarray, mask: np.ndarray, thr: float, size: int, k: int,
                   min_bright: float = 0.5) -> list[tuple[int, int]]:
    """Top-left corners of up to ``k`` non-overlapping ``size`` patches wholly inside the
    mask with the largest bright-class share (at least ``min_bright``)."""
    h, w = frame.shape
    inside = cv2.integral(mask.astype(np.uint8))
    bright = cv2.integral(((frame > thr) & mask).astype(np.uint8))
    def area(ii, r, c):
        return int(ii[r + size, c + size] - ii[r, c + size] - ii[r + size, c] + ii[r, c])

    cands = []
    for r in range(0, h - size + 1, size // 2):
        for c in range(0, w - size + 1, size // 2):
            if area(inside, r, c) < size * size:
                continue
            share = area(bright, r, c) / (size * size)
            if share >= min_bright:
                cands.append((share, r, c))
    chosen: list[tuple[int, int]] = []
    for _share, r, c in sorted(cands, reverse=True):
        if all(abs(r - r2) >= size or abs(c - c2) >= size for r2, c2 in chosen):
            chosen.append((r, c))
            if len(chosen) == k:
                break
    return chosen


def detrend(frame: np.ndarray, sigma_px: float) -> np.ndarray:
    """The frame less its local mean (Gaussian of ``sigma_px``; 0: unchanged)."""
    if sigma_px <= 0:
        return frame
    frame = np.asarray(frame, np.float32)
    return frame - cv2.GaussianBlur(frame, (0, 0), sigma_px, borderType=cv2.BORDER_REFLECT)


def speckle_size(frames: np.ndarray, mask: np.ndarray, thr: float, spacing_mm, patch_mm: float,
                 detrend_mm: float = 3.0, max_frames: int = 12, per_frame: int = 4) -> dict:
    """Median axial/lateral speckle FWHM (mm) over bright patches of evenly chosen frames;
    each frame less its local mean (Gaussian of ``detrend_mm``) before the patches' own
    means are removed, so that the wall's edges do not pass for speckle."""
    size = max(12, int(round(patch_mm / float(np.mean(spacing_mm)))))
    picks = np.unique(np.linspace(0, len(frames) - 1, min(max_frames, len(frames))).round().astype(int))
    ax, lat = [], []
    for t in picks:
        fine = detrend(frames[t], detrend_mm / float(np.mean(spacing_mm)))
        for r, c in bright_patches(frames[t], mask, thr, size, per_frame):
            a, b = speckle_fwhm_px(fine[r:r + size, c:c + size])
            ax.append(a * spacing_mm[0])
            lat.append(b * spacing_mm[1])
    return {"speckle_axial_mm": float(np.nanmedian(ax)) if ax else float("nan"),
            "speckle_lateral_mm": float(np.nanmedian(lat)) if lat else float("nan"),
            "speckle_patches": len(ax), "speckle_patch_px": size}


def temporal_mad(frames: np.ndarray, mask: np.ndarray) -> float:
    """Mean |frame t+1 - frame t| inside the mask."""
    if len(frames) < 2:
        return float("nan")
    return float(np.abs(np.diff(frames, axis=0))[:, mask].mean())


@dataclass
class ClipStats:
    name: str
    stats: dict
    hist: dict
    mask: np.ndarray


def clip_statistics(name: str, frames: np.ndarray, spacing_mm, patch_mm: float = 24.0,
                    detrend_mm: float = 3.0, mask: np.ndarray | None = None,
                    levels: int = 255) -> ClipStats:
    """Every statistic of one clip of grey frames (T, H, W) in [0, 1], quantised to
    ``levels`` steps (8-bit: 255; 0: continuous)."""
    frames = np.asarray(frames, np.float32)
    if mask is None:
        mask = sector_mask(frames)
    norm, p99 = normalise(frames, mask)
    values = norm[:, mask]
    stats = {"frames": int(len(frames)), "shape": list(frames.shape[1:]),
             "spacing_mm": [float(s) for s in spacing_mm], "sector_px": int(mask.sum()),
             "sector_fraction": float(mask.mean()), "p99_grey": p99}
    stats.update(contrast(values.ravel()))
    stats.update(speckle_size(norm, mask, stats["otsu_threshold"], spacing_mm, patch_mm, detrend_mm))
    stats["temporal_mad"] = temporal_mad(norm, mask)
    quantum = 1.0 / levels / p99 if levels and p99 > 0 else 0.0
    return ClipStats(name, stats, histograms(values.ravel(), quantum), mask)


# ============================================================================ inputs
def phantom_clips(n: int, size: int, frames: int, fps: float, appearance: str = "neutral"):
    """Held-out A4C phantoms (test split) of an appearance ("neutral" or "random", as
    ``random_echo_config`` draws it): (name, grey, spacing, truth sector mask)."""
    from calib.datasets import _echo_clip, split_seeds

    for seed in split_seeds("test", n):
        kw = dict(view="a4c", rows=size, cols=size, frames=frames, appearance=appearance)
        if fps > 0:
            kw["fps"] = fps
        clip = _echo_clip(int(seed), **kw)
        grey = np.stack([to_gray(f) for f in clip.frames])
        yield f"phantom {int(seed)}", grey, clip.spacing_mm, clip.truth.sector_mask.astype(bool)


def real_cines():
    """pydicom's two real A4C cines: (name, grey, spacing, spacing factor)."""
    from pydicom.data import get_testdata_file

    from streamer.io.clips import open_clip

    for name, kw in REAL_CINES:
        path = get_testdata_file(name, **kw)
        if path is None:
            raise SystemExit(f"{name}: not found (the pydicom-data package provides it)")
        with open_clip(path) as reader:
            spacing, factor = corrected_spacing(reader.info)
            grey = np.stack([to_gray(f.pixels) for f in reader])
        yield name, grey, spacing, factor


# ============================================================================ report
def summarise(phantoms: list[ClipStats], reals: list[ClipStats]) -> dict:
    """Histogram distances, the phantom mean/sd per statistic and each real clip's z."""
    pooled = {k: np.mean([p.hist[k] for p in phantoms], axis=0) for k in ("js", "w1")}
    for i, p in enumerate(phantoms):  # leave-one-out: the spread within the phantom set
        others = [q for j, q in enumerate(phantoms) if j != i] or phantoms
        rest = {k: np.mean([q.hist[k] for q in others], axis=0) for k in ("js", "w1")}
        p.stats.update(hist_distances(p.hist, rest))
    for r in reals:
        r.stats.update(hist_distances(r.hist, pooled))
    rows = {}
    for key, label, _ in ROWS:
        vals = np.array([p.stats[key] for p in phantoms], float)
        vals = vals[np.isfinite(vals)]
        mean = float(vals.mean()) if vals.size else float("nan")
        sd = float(vals.std(ddof=1)) if vals.size > 1 else float("nan")
        row = {"label": label, "phantom_mean": mean, "phantom_sd": sd, "real": {}, "z": {}}
        for r in reals:
            v = float(r.stats[key])
            row["real"][r.name] = v
            row["z"][r.name] = (v - mean) / sd if sd and np.isfinite(sd) and sd > 0 else float("nan")
        rows[key] = row
    real_pair = hist_distances(reals[0].hist, reals[1].hist) if len(reals) > 1 else {}
    return {"rows": rows, "pooled_phantom_hist64": pooled["js"].tolist(), "real_to_real": real_pair}


def table(summary: dict, reals: list[str]) -> str:
    short = [r.split(".")[0] for r in reals]
    head = ["statistic", "phantoms (mean ± sd)", *short, *[f"z {s}" for s in short]]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|"]
    for key, label, fmt in ROWS:
        row = summary["rows"][key]
        cells = [label, f"{fmt.format(row['phantom_mean'])} ± {fmt.format(row['phantom_sd'])}",
                 *[fmt.format(row["real"][r]) for r in reals],
                 *[f"{row['z'][r]:+.1f}" for r in reals]]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def jsonable(x):
    if isinstance(x, dict):
        return {k: jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return jsonable(x.tolist())
    if isinstance(x, (np.floating, float)):
        return float(x) if np.isfinite(x) else None
    if isinstance(x, np.integer):
        return int(x)
    return x


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--phantom-clips", type=int, default=8, help="held-out A4C phantom clips")
    parser.add_argument("--size", type=int, default=256, help="phantom rows = cols")
    parser.add_argument("--frames", type=int, default=30, help="frames per phantom clip")
    parser.add_argument("--fps", type=float, default=30.0,
                        help="phantom frame rate (the real cines' 30; 0 keeps each config's own)")
    parser.add_argument("--appearance", choices=("neutral", "random"), default="neutral",
                        help="phantom appearance: neutral (the plain phantom) or random (every "
                             "appearance and display knob drawn per clip, as training draws them)")
    parser.add_argument("--patch-mm", type=float, default=24.0, help="speckle patch side, mm")
    parser.add_argument("--detrend-mm", type=float, default=3.0,
                        help="speckle: local mean (Gaussian sigma, mm) removed first; 0: the patch mean only")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "appearance.json")
    args = parser.parse_args(argv)
    t0 = time.perf_counter()

    phantoms, mask_iou = [], []
    for name, grey, spacing, truth_mask in phantom_clips(args.phantom_clips, args.size,
                                                         args.frames, args.fps, args.appearance):
        cs = clip_statistics(name, grey, spacing, args.patch_mm, args.detrend_mm)
        inter, union = (cs.mask & truth_mask).sum(), (cs.mask | truth_mask).sum()
        cs.stats["sector_iou_vs_truth"] = float(inter / union) if union else float("nan")
        mask_iou.append(cs.stats["sector_iou_vs_truth"])
        phantoms.append(cs)
    t_phantoms = time.perf_counter() - t0
    reals = []
    for name, grey, spacing, factor in real_cines():
        cs = clip_statistics(name, grey, spacing, args.patch_mm, args.detrend_mm)
        cs.stats["spacing_factor"] = factor
        reals.append(cs)
    summary = summarise(phantoms, reals)
    names = [r.name for r in reals]
    text = table(summary, names)
    elapsed = time.perf_counter() - t0
    print(text)
    print(f"\nphantoms: {len(phantoms)} held-out A4C clips, {args.size}x{args.size}, "
          f"{args.frames} frames at {args.fps or 'config'} fps; sector mask IoU against the "
          f"phantoms' truth: min {min(mask_iou):.3f}, mean {np.mean(mask_iou):.3f}")
    for r in reals:
        s = r.stats
        print(f"{r.name}: {s['frames']} frames {s['shape'][0]}x{s['shape'][1]}, "
              f"{s['spacing_mm'][0]:.3f} mm/px (x{s['spacing_factor']:g}), sector "
              f"{100 * s['sector_fraction']:.0f} % of the image, {s['speckle_patches']} speckle patches")
    if summary["real_to_real"]:
        print(f"real to real ({names[0]} vs {names[1]}): W1 {summary['real_to_real']['hist_w1']:.3f}, "
              f"JS {summary['real_to_real']['hist_js']:.3f}")
    print(f"{elapsed:.1f} s (phantoms {t_phantoms:.1f} s)")

    record = {
        "bench": "appearance", "issue": 12,
        "command": " ".join(["python bench/appearance.py", *(argv if argv is not None else sys.argv[1:])]),
        "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "host": platform.node(), "python": platform.python_version(),
        "options": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "runtime_s": elapsed,
        "table_markdown": text,
        "summary": summary,
        "phantoms": [{"name": p.name, **p.stats, "hist64": p.hist["js"]} for p in phantoms],
        "real": [{"name": r.name, **r.stats, "hist64": r.hist["js"]} for r in reals],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(jsonable(record), indent=1))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
