"""Where the Sunnybrook experts' endocardial contours lie against the images' own edges.

A check of the contour files' pixel grid (``streamer.io.sunnybrook``): if a file's
coordinates put a pixel's centre at whole numbers, as the image arrays do, the bright
blood's edge should lie around each contour with no shift common to every direction; a
convention with pixel corners at whole numbers shows as a translation of about half a
pixel in x and in y.

For every endocardial contour the image (lightly smoothed, Gaussian sigma 0.7 px) is
sampled along each point's outward normal, -3 to +3 px, and the edge is the steepest
fall of intensity (blood bright inside, myocardium darker outside). Each point's edge
offset ``o_i`` (px along its normal ``n_i``) is then fitted, per patient, as

    o_i = t . n_i + r                         (least squares, residuals over 1.5 px dropped twice)

``t`` (x, y) px: the translation that carries the contours onto the edges; ``r`` px: a
radial term, the experts' contour outside (r < 0) or inside (r > 0) the strongest
blood edge (they draw the endocardium outside trabeculae and papillary muscles).
Three readings of the files are fitted: the file's numbers (``read_contour``), the
file's minus 0.5 (a pixel's corner at whole numbers) and the points
:func:`streamer.io.sunnybrook.read_patient` returns (the file's minus
``CONTOUR_PIXEL_CENTRE``). The fit's response to a known shift is below one (about
0.6-0.9: the window and the outlier rule hold large offsets back), so the reading to
trust is the one whose translation is near zero, not the size of the others'.

    python bench/sunnybrook_contours.py [--out bench/results/sunnybrook_contours.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from engines.train.mr import SUNNYBROOK_PATIENTS, default_sunnybrook  # noqa: E402
from streamer.io.sunnybrook import CONTOUR_PIXEL_CENTRE, read_patient  # noqa: E402

#: the normal's samples, px (inside the contour negative)
PROFILE_PX = np.arange(-3.0, 3.0001, 0.05)


def edge_offsets_px(image: np.ndarray, points_xy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Outward unit normals (K, 2) [x, y] of a closed contour and the offset (K,) px along
    each normal of the steepest intensity fall (NaN where it lies at the profile's ends)."""
    img = cv2.GaussianBlur(np.asarray(image, np.float32), (0, 0), 0.7)
    pts = np.asarray(points_xy, np.float64)
    tangent = np.roll(pts, -1, 0) - np.roll(pts, 1, 0)
    n = np.stack([tangent[:, 1], -tangent[:, 0]], 1)
    n /= np.linalg.norm(n, axis=1, keepdims=True) + 1e-12
    n[((pts - pts.mean(0)) * n).sum(1) < 0] *= -1          # outward
    q = pts[:, None, :] + PROFILE_PX[None, :, None] * n[:, None, :]
    profile = cv2.remap(img, q[..., 0].astype(np.float32), q[..., 1].astype(np.float32),
                        cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    k = np.argmax(-np.gradient(profile, axis=1), 1)
    off = PROFILE_PX[k]
    off[(k < 3) | (k > PROFILE_PX.size - 4)] = np.nan
    return n, off


def fit_translation(normals: np.ndarray, offsets: np.ndarray) -> dict:
    """The fit of the module docstring: translation (x, y) px, radial term px, points kept."""
    ok = np.isfinite(offsets)
    A = np.column_stack([normals[ok], np.ones(ok.sum())])
    b = offsets[ok]
    sol, *_ = np.linalg.lstsq(A, b, rcond=None)
    for _ in range(2):
        keep = np.abs(A @ sol - b) < 1.5
        A, b = A[keep], b[keep]
        sol, *_ = np.linalg.lstsq(A, b, rcond=None)
    return {"translation_x_px": round(float(sol[0]), 3), "translation_y_px": round(float(sol[1]), 3),
            "radial_px": round(float(sol[2]), 3), "points": int(len(b))}


def measure(patient: dict) -> dict:
    """Fits for one patient (``read_patient``'s arrays), with its points and the file's."""
    off = patient["endo_offsets"]
    out = {}
    readings = (("file", CONTOUR_PIXEL_CENTRE), ("file - 0.5", CONTOUR_PIXEL_CENTRE - 0.5),
                ("read_patient", 0.0))
    for name, shift in readings:
        normals, offsets = [], []
        for i in range(len(off) - 1):
            pts = patient["endo_points"][off[i]:off[i + 1]] + shift
            image = patient["images"][patient["label_slice"][i], patient["label_phase"][i]]
            n, o = edge_offsets_px(image, pts)
            normals.append(n)
            offsets.append(o)
        out[name] = fit_translation(np.concatenate(normals), np.concatenate(offsets))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sunnybrook", type=Path, default=None,
                    help="the Sunnybrook folder (default: ../shared/data/sunnybrook)")
    ap.add_argument("--patients", default=",".join(SUNNYBROOK_PATIENTS), metavar="ID[,ID]")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "sunnybrook_contours.json")
    args = ap.parse_args(argv)
    root = args.sunnybrook or default_sunnybrook()
    rows = []
    print(f"{'patient':11s} {'points as':13s} {'translation x, y px':>20s} {'radial px':>10s} {'points':>7s}")
    for pid in args.patients.split(","):
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Invalid value for VR UI")
            fits = measure(read_patient(root, pid))
        rows.append({"patient": pid, **fits})
        for name, f in fits.items():
            print(f"{pid:11s} {name:13s} {f['translation_x_px']:+9.2f}, {f['translation_y_px']:+8.2f} "
                  f"{f['radial_px']:+10.2f} {f['points']:7d}", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"command": " ".join(sys.argv),
                                    "contour_pixel_centre": CONTOUR_PIXEL_CENTRE,
                                    "patients": rows}, indent=1))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
