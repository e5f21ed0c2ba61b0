"""Make the pictures of docs/phantoms.md:  ``python -m calib.make_figures [--out DIR]``.

Writes into ``docs/img/phantoms/`` (default):

* ``echo_views.png`` -- the real A4C frame shipped with pydicom next to one frame of every
  phantom view (a4c a2c alax plax psax sc4c ivc unknown);
* ``a4c_cycle.png`` -- phantom A4C at ED, mid-systole, ES and early diastole with the truth
  myocardium contour, centreline and displacement arrows, and the GLS curves: prescribed,
  integrated from the truth fields, and integrated from OpenCV DIS flow;
* ``mr_sax.png`` -- MR phantom (ED, ES, velocity channel, AHA segments) next to a real
  Sunnybrook short-axis frame;
* ``numbers.json`` -- the figures quoted in the doc (speed, DIS end-point errors, GLS error).
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path

import cv2
import numpy as np

from calib import truth as T
from calib.echo import EchoPhantomConfig, make_echo_clip
from streamer.vocab import VIEW_CLASSES

SUNNYBROOK = Path("/work/shared/data/sunnybrook/dicoms/SCD0000101")


def _label(img: np.ndarray, text: str) -> np.ndarray:
    out = img if img.ndim == 3 else cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
    out = out.copy()
    cv2.putText(out, text, (6, 18), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 3, cv2.LINE_AA)
    cv2.putText(out, text, (6, 18), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (80, 255, 255), 1, cv2.LINE_AA)
    return out


def real_echo_frame(size: int = 256) -> np.ndarray | None:
    try:
        import pydicom
        from pydicom.data import get_testdata_file
        a = pydicom.dcmread(get_testdata_file("examples_ybr_color.dcm")).pixel_array[0]
    except Exception:                                   # pragma: no cover
        return None
    g = a.mean(axis=-1).astype(np.uint8)[5:215, 35:285]   # sector region, ~1 mm/px
    g = cv2.resize(g, (size, int(round(size * g.shape[0] / g.shape[1]))), interpolation=cv2.INTER_AREA)
    out = np.zeros((size, size), np.uint8)
    out[: g.shape[0]] = g[:size]
    return out


def real_mr_frame(size: int = 256) -> np.ndarray | None:
    f = SUNNYBROOK / "79.dcm"
    if not f.exists():
        return None
    import pydicom
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        a = pydicom.dcmread(f).pixel_array.astype(np.float32)
    return cv2.resize(a, (size, size))


def echo_views(out: Path) -> None:
    tiles = []
    real = real_echo_frame()
    if real is not None:
        tiles.append(_label(real, "real A4C (pydicom)"))
    for v in VIEW_CLASSES:
        clip = make_echo_clip(EchoPhantomConfig(view=v, frames=1, seed=1))
        tiles.append(_label(clip.frames[0], f"phantom {v}"))
    while len(tiles) % 3:
        tiles.append(np.zeros_like(tiles[0]))
    rows = [np.hstack(tiles[i:i + 3]) for i in range(0, len(tiles), 3)]
    cv2.imwrite(str(out / "echo_views.png"), np.vstack(rows))


def _plot(curves, size=(256, 512), ylim=(-25.0, 3.0), colors=None, labels=None, widths=None,
          title="GLS %  vs frame", markers=None) -> np.ndarray:
    h, w = size
    img = np.full((h, w, 3), 255, np.uint8)
    n = max(len(c) for c in curves)

    def x(i):
        return int(30 + (w - 40) * i / max(n - 1, 1))

    def y(v):
        return int(10 + (h - 30) * (ylim[1] - v) / (ylim[1] - ylim[0]))

    for gv in np.arange(np.ceil(ylim[0] / 5) * 5, ylim[1] + 1e-9, 5):
        cv2.line(img, (30, y(gv)), (w - 10, y(gv)), (225, 225, 225), 1)
        cv2.putText(img, f"{gv:.0f}", (2, y(gv) + 4), cv2.FONT_HERSHEY_SIMPLEX, 0.35, (0, 0, 0), 1)
    colors = colors or [(160, 160, 160), (0, 0, 255), (255, 0, 0)]
    widths = widths or [4, 1, 1]
    for c, col, wd in zip(curves, colors, widths):
        pts = np.array([[x(i), y(v)] for i, v in enumerate(c)], np.int32)
        cv2.polylines(img, [pts], False, col, wd, cv2.LINE_AA)
    for c, col in (markers or []):
        for i in range(0, len(c), 3):
            cv2.circle(img, (x(i), y(c[i])), 2, col, -1)
    for k, (lab, col) in enumerate(zip(labels or [], colors)):
        cv2.putText(img, lab, (w - 250, h - 20 - 14 * (len(labels) - k)), cv2.FONT_HERSHEY_SIMPLEX, 0.4, col, 1,
                    cv2.LINE_AA)
    cv2.putText(img, title, (35, h - 6), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1)
    return img


def a4c_cycle(out: Path) -> dict:
    cfg = EchoPhantomConfig(seed=1)
    make_echo_clip(EchoPhantomConfig(frames=2))          # warm the numba cache
    t0 = time.perf_counter()
    clip = make_echo_clip(cfg)
    dt = time.perf_counter() - t0
    tr = clip.truth
    sp = clip.spacing_mm[0]
    ed, es = int(tr.ed_frames[0]), int(tr.es_frames[0])
    dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
    flows = np.stack([dis.calc(clip.frames[t], clip.frames[t + 1], None) for t in range(cfg.frames - 1)]
                     + [np.zeros_like(tr.displacement[0])])
    epe = [T.endpoint_error(flows[t], tr.displacement[t], tr.myocardium[t]) for t in range(cfg.frames - 1)]
    other = make_echo_clip(EchoPhantomConfig(seed=1001, frames=cfg.frames))
    epe_ind = [T.endpoint_error(dis.calc(clip.frames[t], other.frames[t + 1], None), tr.displacement[t],
                                tr.myocardium[t]) for t in range(cfg.frames - 1)]
    pts0 = tr.centreline_mm[ed] / sp
    gls_truth, _ = T.gls_and_regional(T.track_points(tr.displacement, pts0) * sp)
    gls_dis, _ = T.gls_and_regional(T.track_points(flows, pts0) * sp)
    picks = [ed, max(ed + 1, es // 2), es, min(cfg.frames - 1, es + (es // 2))]
    tiles = []
    for t in picks:
        img = cv2.cvtColor(clip.frames[t], cv2.COLOR_GRAY2BGR)
        cnt, _ = cv2.findContours(tr.myocardium[t], cv2.RETR_LIST, cv2.CHAIN_APPROX_NONE)
        cv2.drawContours(img, cnt, -1, (0, 0, 255), 1)
        for p in tr.centreline_mm[t] / sp:
            cv2.circle(img, (int(round(p[1])), int(round(p[0]))), 1, (0, 255, 0), -1)
        d = tr.displacement[t]
        for r in range(8, img.shape[0], 12):
            for c in range(8, img.shape[1], 12):
                if tr.myocardium[t][r, c]:
                    e = (int(round(c + 4 * d[r, c, 0])), int(round(r + 4 * d[r, c, 1])))
                    cv2.arrowedLine(img, (c, r), e, (255, 200, 0), 1, tipLength=0.3)
        name = {ed: "ED", es: "ES"}.get(t, f"frame {t}")
        tiles.append(_label(img, f"A4C {name}"))
    plot = _plot([tr.gls_pct, gls_truth, gls_dis], size=(256, 512),
                 ylim=(min(-25.0, float(np.nanmin(gls_dis)) - 1), 3.0),
                 labels=["prescribed", "integrated truth field", "integrated DIS flow"])
    # regional strain of a dysfunctional heart: prescribed curves, dots = integrated truth fields
    dcfg = EchoPhantomConfig(seed=2, gls_pct=-22.0, dysfunction={"apical_septal": "akinetic",
                                                                  "basal_lateral": "dyskinetic",
                                                                  "mid_septal": "hypokinetic"})
    dclip = make_echo_clip(dcfg)
    dtr = dclip.truth
    _, reg = T.gls_and_regional(T.track_points(dtr.displacement, dtr.centreline_mm[0] / sp) * sp)
    cols6 = [(0, 0, 200), (0, 140, 255), (0, 200, 200), (0, 160, 0), (200, 120, 0), (200, 0, 160)]
    rplot = _plot([dtr.regional_pct[:, k] for k in range(6)], size=(256, 512), ylim=(-25.0, 10.0),
                  colors=cols6, widths=[1] * 6, title="regional strain %  (lines prescribed, dots integrated)",
                  labels=["basal septal", "mid septal (hypo)", "apical septal (akinetic)", "apical lateral",
                          "mid lateral", "basal lateral (dyskinetic)"],
                  markers=[(reg[:, k], c) for k, c in enumerate(cols6)])
    fig = np.hstack([np.vstack([np.hstack(tiles[:2]), np.hstack(tiles[2:])]), np.vstack([plot, rplot])])
    cv2.imwrite(str(out / "a4c_cycle.png"), fig)
    return {"a4c_60_frames_256_s": dt, "timings_s": clip.timings_s,
            "dis_epe_myocardium_px_mean": float(np.mean(epe)), "dis_epe_myocardium_px_max": float(np.max(epe)),
            "dis_epe_independent_speckle_px_mean": float(np.mean(epe_ind)),
            "gls_truth_integration_max_error_pct": float(np.max(np.abs(gls_truth - tr.gls_pct))),
            "gls_dis_peak_pct": float(np.min(gls_dis)), "gls_prescribed_peak_pct": float(np.min(tr.gls_pct))}


def mr_figure(out: Path) -> dict:
    from calib.mr import MRPhantomConfig, make_mr_clip
    cfg = MRPhantomConfig(wall_motion={"8": "akinetic", "9": "hypokinetic"}, infarct_segments=[8], seed=2)
    t0 = time.perf_counter()
    clip = make_mr_clip(cfg)
    dt = time.perf_counter() - t0
    tr = clip.truth
    ed, es = int(tr.ed_frames[0]), int(tr.es_frames[0])

    def scale(a):
        return np.clip(a / 550.0 * 255, 0, 255).astype(np.uint8)

    tiles = []
    real = real_mr_frame()
    if real is not None:
        tiles.append(_label(scale(real), "real SAX (Sunnybrook)"))
    tiles.append(_label(scale(clip.frames[ed].astype(np.float32)), "phantom SAX ED"))
    tiles.append(_label(scale(clip.frames[es].astype(np.float32)), "phantom SAX ES"))
    v = clip.velocity_mm_s[es // 2, ..., 1]
    vimg = cv2.applyColorMap(np.clip(128 + v * 128 / 60.0, 0, 255).astype(np.uint8), cv2.COLORMAP_JET)
    tiles.append(_label(vimg, "v_row (mm/s), systole"))
    seg = cv2.cvtColor(scale(clip.frames[ed].astype(np.float32)), cv2.COLOR_GRAY2BGR)
    lut = cv2.applyColorMap((np.arange(256) * 13 % 256).astype(np.uint8).reshape(-1, 1), cv2.COLORMAP_HSV)
    m = tr.segments[ed] > 0
    seg[m] = (0.5 * seg[m] + 0.5 * lut[tr.segments[ed][m] * 1, 0]).astype(np.uint8)
    seg[tr.infarct[ed] > 0] = (0, 0, 255)
    rvc, _ = cv2.findContours(tr.rv[ed], cv2.RETR_LIST, cv2.CHAIN_APPROX_NONE)
    cv2.drawContours(seg, rvc, -1, (255, 255, 0), 1)
    for p in tr.insertion_points_mm[ed] / clip.spacing_mm[0]:
        cv2.circle(seg, (int(p[1]), int(p[0])), 3, (0, 255, 0), -1)
    tiles.append(_label(seg, "AHA 7-12, infarct, RV, insertions"))
    tiles.append(np.zeros_like(tiles[0]))
    cv2.imwrite(str(out / "mr_sax.png"), np.vstack([np.hstack(tiles[:3]), np.hstack(tiles[3:6])]))
    return {"mr_25_phases_256_s": dt}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="docs/img/phantoms", help="output directory")
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    numbers = {}
    numbers.update(a4c_cycle(out))
    echo_views(out)
    numbers.update(mr_figure(out))
    (out / "numbers.json").write_text(json.dumps(numbers, indent=2, default=float) + "\n")
    print(json.dumps(numbers, indent=2, default=float))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
