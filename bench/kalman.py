"""Per-frame cost of the point tracker: numba batched Kalman filter vs a loop of filterpy filters.

One frame = predict over dt + update with z = [row, col, v_row, v_col] for every point
(120 by default).  Timed interleaved, frame by frame, in the same process, on the same
measurements (the two numba calls take turns at coming first after the filterpy loop, and
each is timed on its turn, so both meet the same cold caches; --frames per call):

* ``kf_frame`` - the per-frame hot path: packed arguments (x, P and one buffer holding z,
  dt, q, h, R) called through the compiled entry point of its specialisation
  (``kalman.FrameKalman``); the timing includes copying the frame's z into that buffer;
* ``kf_batch`` - the same arithmetic through the numba dispatcher with 10 arguments (the
  previous hot path, kept for comparison);
* the ``PointTracker.step`` wrapper (dt checks, bookkeeping, copies out; uses kf_frame);
* a Python loop over 120 ``filterpy.kalman.KalmanFilter`` objects (``predict(F=F, Q=Q)`` +
  ``update(z)``, F and Q rebuilt for the frame's dt as the numba kernel does).

The first-call cost is measured separately, in fresh interpreters running
``tracking.warmup()`` (the filter kernels, the RTS smoother and the centreline helpers):
once with an empty numba cache directory (a cold compile, what a first install pays) and
once more with that cache filled (what every later start-up pays).  The side-car pays it
at start-up, never on the first frame.

"Back-to-back" repeats a kernel with nothing in between (warm caches: the arithmetic
alone); "call floor" is an empty @njit function with the same arguments, called the same
way (dispatcher / compiled entry point) after the same Python work as in the interleaved
loop - what any such numba call costs there.

    python bench/kalman.py                      # 120 points, 2000 frames
    python bench/kalman.py --points 120 --frames 5000 --out bench/results/kalman.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

COMPILE_SNIPPET = (
    "import time; t0 = time.perf_counter(); "
    "from streamer.measure import tracking; t1 = time.perf_counter(); "
    "tracking.warmup(); t2 = time.perf_counter(); "
    "print(f'{t1 - t0:.6f} {t2 - t1:.6f}')"
)


def first_call_cost(cache_dir: str) -> dict:
    env = dict(os.environ, NUMBA_CACHE_DIR=cache_dir, PYTHONPATH=str(ROOT))
    out = subprocess.run([sys.executable, "-c", COMPILE_SNIPPET], env=env, cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout.split()
    return {"import_s": float(out[0]), "warmup_s": float(out[1])}


def stats_us(ns: list[int]) -> dict:
    a = np.asarray(ns, dtype=np.float64) / 1e3
    return {"median_us": float(np.median(a)), "p95_us": float(np.percentile(a, 95)),
            "min_us": float(a.min()), "mean_us": float(a.mean())}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__.split("\n\n", 1)[1])
    ap.add_argument("--points", type=int, default=120, help="tracked points per frame (120)")
    ap.add_argument("--frames", type=int, default=2000,
                    help="timed frames (2000; each numba call is timed on every other one)")
    ap.add_argument("--missing", type=float, default=0.0,
                    help="fraction of measurement components missing per frame (0)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-compile", action="store_true",
                    help="skip the fresh-interpreter compile measurement")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "kalman.json"),
                    help="JSON output path (default bench/results/kalman.json)")
    args = ap.parse_args(argv)

    compile_cost = None
    if not args.no_compile:
        with tempfile.TemporaryDirectory(prefix="numba-cache-") as d:
            cold = first_call_cost(d)
            warm = first_call_cost(d)
        compile_cost = {"cold_compile": cold, "cached_load": warm}

    import numba
    from filterpy.common import Q_continuous_white_noise
    from filterpy.kalman import KalmanFilter

    from streamer.measure import kalman as K
    from streamer.measure import tracking

    t0 = time.perf_counter()
    tracking.warmup()  # what the side-car pays at start-up (filter, smoother, centreline)
    in_process_warmup_s = time.perf_counter() - t0

    rng = np.random.default_rng(args.seed)
    n = args.points
    cfg = K.KalmanConfig()
    q = cfg.jerk_psd_mm2_s5
    R = cfg.R()
    x0 = np.zeros((n, 6))
    x0[:, :2] = rng.uniform(20, 100, (n, 2))
    P0 = np.tile(cfg.P0(False), (n, 1, 1))

    x, P = x0.copy(), P0.copy()
    x2, P2 = x0.copy(), P0.copy()
    fk = K.FrameKalman(n, q, R)
    tracker = K.PointTracker(n, cfg)
    tracker.initialise(x0[:, :2])
    kfs = []
    for i in range(n):
        kf = KalmanFilter(dim_x=6, dim_z=4)
        kf.x = x0[i].reshape(6, 1).copy()
        kf.P = P0[i].copy()
        kf.R = R.copy()
        kf.H = K.H_MATRIX.copy()
        kfs.append(kf)

    # a moving target: points on a breathing ellipse, noisy positions and velocities
    def measurement(k, dt):
        ph = 2 * np.pi * k * dt
        v = 40.0 * np.column_stack([np.cos(ph + np.arange(n) * 0.05), np.sin(ph)[None].repeat(n, 0)])
        p = x0[:, :2] + v * 0.1
        z = np.column_stack([p + rng.normal(0, 0.3, (n, 2)), v + rng.normal(0, 4, (n, 2))])
        valid = rng.random((n, 4)) >= args.missing
        return np.ascontiguousarray(z), np.ascontiguousarray(valid), np.where(valid, z, np.nan)

    dts = 0.02 + rng.uniform(-0.003, 0.003, args.frames + 50)
    meas = [measurement(k, dts[k]) for k in range(args.frames + 50)]
    t_nb, t_new, t_wrap, t_fp = [], [], [], []
    pc = time.perf_counter_ns
    fz = fk.z
    for k in range(args.frames + 50):
        z, valid, znan = meas[k]
        dt = float(dts[k])
        # the two numba calls take turns at running first, right after the filterpy loop
        # of the previous frame (cold caches); each is recorded only on its own turn
        new_first = k % 2 == 0
        if not new_first:
            a = pc()
            K.kf_batch(x, P, z, valid, dt, q, R, 0.0, True, True)  # dispatcher, 10 args
            b = pc()
        # numba kernel, packed hot path: copy z in, one call of the compiled entry point
        a0 = pc()
        fz[:] = znan
        fk(x2, P2, dt)
        a1 = pc()
        if new_first:
            a = pc()
            K.kf_batch(x, P, z, valid, dt, q, R, 0.0, True, True)
            b = pc()
        # the stateful wrapper (argument checks, dt checks, copies out)
        tracker.step(dt, z, valid)
        c = pc()
        # filterpy: F, Q for this dt, then predict + update per point
        F = np.eye(6)
        F[0, 2] = F[1, 3] = F[2, 4] = F[3, 5] = dt
        F[0, 4] = F[1, 5] = 0.5 * dt * dt
        Q = Q_continuous_white_noise(dim=3, dt=dt, spectral_density=q, block_size=2,
                                     order_by_dim=False)
        for i, kf in enumerate(kfs):
            kf.predict(F=F, Q=Q)
            idx = np.flatnonzero(valid[i])
            if len(idx) == 4:
                kf.update(z[i])
            elif len(idx) == 0:
                kf.update(None)
            else:
                kf.update(z[i, idx].reshape(-1, 1), R=R[np.ix_(idx, idx)], H=K.H_MATRIX[idx])
        d = pc()
        if k >= 50:  # skip the first frames (caches, allocator)
            (t_new if new_first else t_nb).append((a1 - a0) if new_first else (b - a))
            t_wrap.append(c - b)
            t_fp.append(d - c)

    # the same kernel back-to-back (caches and branch predictors warm), and the floor of
    # any numba call right after Python-heavy work: an empty @njit function, same arguments
    from numba import njit

    @njit(nogil=True)
    def empty(x, P, z, valid, dt, q, R, h, a, b):
        return 0

    @njit(nogil=True)
    def empty3(x, P, zp):
        return 0

    xh, Ph = x0.copy(), P0.copy()
    xh2, Ph2 = x0.copy(), P0.copy()
    empty(xh, Ph, *meas[0][:2], 0.02, q, R, 0.0, True, True)
    empty3(xh, Ph, fk.zp)
    empty3_entry = empty3.overloads[tuple(numba.typeof(v) for v in (xh, Ph, fk.zp))].entry_point
    t_hot, t_hot_new, t_empty, t_empty3 = [], [], [], []
    for k in range(args.frames + 50):
        z, valid, znan = meas[k]
        a = pc()
        K.kf_batch(xh, Ph, z, valid, float(dts[k]), q, R, 0.0, True, True)
        b = pc()
        fz[:] = znan
        fk(xh2, Ph2, float(dts[k]))
        c = pc()
        if k >= 50:
            t_hot.append(b - a)
            t_hot_new.append(c - b)
    dummies = []
    for _ in range(n):
        kf = KalmanFilter(dim_x=6, dim_z=4)
        kf.H = K.H_MATRIX.copy()
        dummies.append(kf)
    for k in range(min(args.frames, 300)):
        z, valid, _ = meas[k]
        for i, kf in enumerate(dummies):  # the same Python work as between interleaved calls
            kf.predict()
            kf.update(z[i])
        a = pc()
        empty(xh, Ph, z, valid, 0.02, q, R, 0.0, True, True)
        t_empty.append(pc() - a)
        for i, kf in enumerate(dummies):
            kf.predict()
            kf.update(z[i])
        a = pc()
        empty3_entry(xh, Ph, fk.zp)
        t_empty3.append(pc() - a)

    X = np.stack([kf.x.ravel() for kf in kfs])
    PP = np.stack([kf.P for kf in kfs])
    def dev(xa, Pa):
        return max(float(np.max(np.abs(xa - X)) / max(1.0, np.max(np.abs(X)))),
                   float(np.max(np.abs(Pa - PP)) / max(1.0, np.max(np.abs(PP)))))

    max_dev = dev(x, P)
    max_dev_new = dev(x2, P2)

    s_nb, s_wrap, s_fp = stats_us(t_nb), stats_us(t_wrap), stats_us(t_fp)
    s_new, s_hot_new, s_empty3 = stats_us(t_new), stats_us(t_hot_new), stats_us(t_empty3)
    s_hot, s_empty = stats_us(t_hot), stats_us(t_empty)
    ratio = s_fp["median_us"] / s_nb["median_us"]
    ratio_new = s_fp["median_us"] / s_new["median_us"]
    ratio_hot = s_fp["median_us"] / s_hot["median_us"]
    ratio_hot_new = s_fp["median_us"] / s_hot_new["median_us"]
    ratio_wrap = s_fp["median_us"] / s_wrap["median_us"]
    res = {
        "bench": "kalman",
        "points": n,
        "frames": args.frames,
        "missing_fraction": args.missing,
        "numba_kf_frame_entry_point": s_new,
        "numba_kernel": s_nb,
        "numba_point_tracker_step": s_wrap,
        "filterpy_loop": s_fp,
        "numba_kernel_back_to_back": s_hot,
        "numba_kf_frame_back_to_back": s_hot_new,
        "empty_njit_call_after_python_work": s_empty,
        "empty_njit_entry_point_3_args_after_python_work": s_empty3,
        "speedup_median_kf_frame": ratio_new,
        "speedup_median_kf_frame_back_to_back": ratio_hot_new,
        "speedup_median_kernel": ratio,
        "speedup_median_wrapper": ratio_wrap,
        "speedup_median_kernel_back_to_back": ratio_hot,
        "max_normwise_deviation_vs_filterpy": max_dev,
        "max_normwise_deviation_vs_filterpy_kf_frame": max_dev_new,
        "first_call": compile_cost,
        "in_process_warmup_s": in_process_warmup_s,
        "machine": {"python": platform.python_version(), "platform": platform.platform(),
                    "processor": platform.processor() or platform.machine(),
                    "cpu_count": os.cpu_count()},
        "versions": {m: __import__(m).__version__ for m in ("numpy", "numba", "filterpy")},
        "command": " ".join([Path(sys.argv[0]).name] + (argv if argv is not None else sys.argv[1:])),
    }

    print(f"Kalman update, {n} points, one frame (predict + update); numba, wrapper and "
          f"filterpy interleaved frame by frame over {args.frames} frames")
    w = 52
    print(f"{'':{w}s}{'median':>10s}{'p95':>12s}{'min':>12s}")
    for name, s in (("numba kf_frame (entry point, 3 args, incl. z copy)", s_new),
                    ("numba kf_batch (dispatcher, 10 args)", s_nb),
                    ("numba PointTracker.step (uses kf_frame)", s_wrap),
                    ("filterpy loop (120 filters)", s_fp),
                    ("numba kf_frame, back-to-back", s_hot_new),
                    ("numba kf_batch, back-to-back", s_hot),
                    ("empty @njit, entry point, 3 args (call floor)", s_empty3),
                    ("empty @njit, dispatcher, 10 args (call floor)", s_empty)):
        print(f"{name:{w}s}{s['median_us']:8.1f}us{s['p95_us']:10.1f}us{s['min_us']:10.1f}us")
    print(f"speed-up vs filterpy (median, interleaved): kf_frame {ratio_new:.0f}x, kf_batch "
          f"{ratio:.0f}x, wrapper {ratio_wrap:.0f}x; back-to-back kf_frame {ratio_hot_new:.0f}x, "
          f"kf_batch {ratio_hot:.0f}x")
    print(f"max deviation from filterpy after {args.frames + 50} frames: kf_frame "
          f"{max_dev_new:.1e}, kf_batch {max_dev:.1e} (normwise)")
    if compile_cost:
        cc, cl = compile_cost["cold_compile"], compile_cost["cached_load"]
        print(f"first call (fresh interpreter): cold compile {cc['warmup_s']:.2f} s, "
              f"from numba's cache {cl['warmup_s']:.3f} s (+ import {cl['import_s']:.3f} s)")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
