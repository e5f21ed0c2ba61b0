"""Held-out physics-simulated A4C clips (PyMUST) with exact motion truth, cached on disk.

The second echo generator of issue 12: the same scenes and deforming-LV kinematics as our
phantom (``calib.echo``), imaged by an acoustic simulation (``calib.physics_sim``: PyMUST,
P4-2v phased array, one diverging wave per frame, delay-and-sum) instead of our speckle
model. The truth (masks, displacement, centreline, GLS and regional strain) comes from the
kinematics, so it is exact for these frames. A validation set only: the seeds are
``calib.datasets.split_seeds("test", n, offset=90000)``, which no training set reaches.

Clips (cycled when --clips > 4): A4C, anatomy and imaging drawn from the seed, peak GLS
-22, -17, -12.5 (apical lateral akinetic) and -8 %, at 60-80 bpm and 32-40 fps; one
cardiac cycle from end-diastole to the next end-diastole (31-33 frames). Each clip is
written with ``calib.io.write_phantom`` (the clip, its truth ``<stem>.truth.npz``, the
metadata with ``generator: pymust`` and the simulation settings), plus ``index.json``
listing them. Clips already written (same seed, size and frame count: the file name) are
kept unless --force, so an interrupted run resumes.

Slow: ~40k scatterers per frame, about 0.2 ms each on 2 free cores (~10 s per frame, any
image size; 25 s measured on a CPU shared with training): the 4 clips (126 frames) take
roughly 25-55 min.
Needs the optional extra: pip install 'cardiostream[sim]'.

    python bench/physics_sims.py [--clips 4] [--size 256] [--frames N] [--out DIR]
                                 [--scatterers-per-cell 4] [--workers 0] [--force]

The folder defaults to $CARDIOSTREAM_DATA/physics (CARDIOSTREAM_DATA defaults to
~/.cache/cardiostream/datasets, as for the training sets).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time
from pathlib import Path

# before numpy loads: PyMUST's thousands of small BLAS products per frame cost ~3x the CPU
# with a multi-threaded BLAS; the parallelism is simus's thread pool (--workers)
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from calib.cli import parse_size  # noqa: E402


def default_out() -> Path:
    base = Path(os.environ.get("CARDIOSTREAM_DATA", Path.home() / ".cache" / "cardiostream" / "datasets"))
    return base / "physics"


def _hms(seconds: float) -> str:
    s = int(round(max(0.0, seconds)))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


class Eta:
    """A progress line per frame: render time, scatterers, ETA of the clip and of the set."""

    def __init__(self, clips: int, total_frames: int):
        self.clips, self.total = clips, total_frames
        self.done, self.sim_s, self.setup_s = 0, 0.0, 0.0

    def clip(self, i: int, cfg, t_clip: float):
        def progress(k: int, seconds: float, n_scat: int) -> None:
            if k == 0:                  # the clip's scene, DAS matrix and gain calibration came first
                self.setup_s = time.perf_counter() - t_clip - seconds
            self.done += 1
            self.sim_s += seconds
            per = self.sim_s / self.done
            left = per * (self.total - self.done) + self.setup_s * (self.clips - i - 1)
            setup = f", after {self.setup_s:.1f} s setup" if k == 0 else ""
            print(f"clip {i + 1}/{self.clips} seed {cfg.seed} frame {k + 1}/{cfg.frames}: {seconds:.1f} s "
                  f"({n_scat} scatterers{setup}) | ETA clip {_hms(per * (cfg.frames - k - 1))}, "
                  f"all {_hms(left)}", flush=True)
        return progress


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="Needs PyMUST (pip install 'cardiostream[sim]'). Slow: run it when the CPU is free.")
    parser.add_argument("--clips", type=int, default=4, help="number of clips (default 4; specs cycle)")
    parser.add_argument("--frames", type=int, default=None,
                        help="frames per clip (default: one cardiac cycle, ED to the next ED inclusive)")
    parser.add_argument("--size", default="256", metavar="ROWSxCOLS", help="image size (default 256)")
    parser.add_argument("--out", type=Path, default=None,
                        help="output folder (default $CARDIOSTREAM_DATA/physics, i.e. "
                             "~/.cache/cardiostream/datasets/physics)")
    parser.add_argument("--format", choices=("dcm", "npz", "nii.gz"), default="dcm",
                        help="clip file format (default dcm: multi-frame DICOM)")
    parser.add_argument("--scatterers-per-cell", type=float, default=None,
                        help="scatterers simulated per resolution cell (default: PhysicsConfig's, 4); "
                             "the cost is proportional")
    parser.add_argument("--workers", type=int, default=0, help="simulation threads (0: all CPUs)")
    parser.add_argument("--offset", type=int, default=None,
                        help="seed offset in the test split (default 90000)")
    parser.add_argument("--force", action="store_true", help="rewrite clips that exist")
    args = parser.parse_args(argv)

    from calib.io import read_truth, write_phantom
    from calib.physics_sim import (
        VALIDATION_OFFSET,
        PhysicsConfig,
        make_physics_clip,
        pymust_version,
        validation_configs,
    )

    rows, cols = parse_size(args.size)
    out = args.out or default_out()
    out.mkdir(parents=True, exist_ok=True)
    phys_kw = {"workers": args.workers}
    if args.scatterers_per_cell is not None:
        phys_kw["scatterers_per_cell"] = args.scatterers_per_cell
    physics = PhysicsConfig(**phys_kw)
    offset = VALIDATION_OFFSET if args.offset is None else args.offset
    cfgs = validation_configs(args.clips, rows, cols, frames=args.frames, offset=offset)
    total = sum(c.frames for c in cfgs)
    print(f"{len(cfgs)} clips, {total} frames {rows}x{cols} -> {out} (pymust {pymust_version()}, "
          f"{physics.probe}, {len(physics.tilts_deg)} diverging wave(s), "
          f"{physics.scatterers_per_cell:g} scatterers per resolution cell)", flush=True)

    t_all = time.perf_counter()
    eta, index = Eta(len(cfgs), total), []
    for i, cfg in enumerate(cfgs):
        path = out / f"a4c_{i:02d}_seed{cfg.seed}_{cfg.rows}x{cfg.cols}_{cfg.frames}f.{args.format}"
        peak = float(cfg.gls_pct * cfg.segment_factors.mean())
        if path.exists() and not args.force:
            print(f"clip {i + 1}/{len(cfgs)} seed {cfg.seed}: {path.name} exists, kept", flush=True)
            eta.total -= cfg.frames
            truth = read_truth(path)
            index.append({"file": path.name, "seed": int(cfg.seed), "frames": cfg.frames, "kept": True,
                          "peak_gls_pct": float(truth["gls_pct"].min()),
                          "peak_midwall_gls_pct": float(truth["midwall_gls_pct"].min())})
            continue
        t_clip = time.perf_counter()
        progress = eta.clip(i, cfg, t_clip)
        print(f"clip {i + 1}/{len(cfgs)} seed {cfg.seed}: {cfg.frames} frames at {cfg.fps:g} fps, "
              f"{cfg.heart_rate_bpm:g} bpm, depth {cfg.depth_mm:.0f} mm, sector {cfg.sector_angle_deg:.0f} deg, "
              f"GLS {cfg.gls_pct:g} % {cfg.dysfunction or ''} (peak {peak:.1f} %); setting up...", flush=True)
        clip = make_physics_clip(cfg, physics, progress=progress)
        cpath, tpath = write_phantom(clip, path)
        ph = clip.physics
        gls = clip.truth.gls_pct
        row = {"file": cpath.name, "truth": tpath.name, "seed": int(cfg.seed), "frames": cfg.frames,
               "fps": cfg.fps, "heart_rate_bpm": cfg.heart_rate_bpm, "gls_pct": cfg.gls_pct,
               "dysfunction": cfg.dysfunction, "peak_gls_pct": float(gls.min()),
               "peak_midwall_gls_pct": float(clip.truth.midwall_gls_pct.min()),
               "scatterers_simulated": ph["scatterers_simulated"],
               "render_s_per_frame": ph["render_s_per_frame"], "clip_s": time.perf_counter() - t_clip}
        index.append(row)
        print(f"wrote {cpath} and {tpath.name}: peak GLS {row['peak_gls_pct']:.1f} %, "
              f"{ph['render_s_per_frame']:.1f} s/frame, {_hms(row['clip_s'])}", flush=True)

    elapsed = time.perf_counter() - t_all
    record = {"generator": "pymust", "pymust_version": pymust_version(), "split": "test",
              "seed_offset": offset, "physics": physics.to_dict(), "size": [rows, cols],
              "command": " ".join(["python bench/physics_sims.py", *(argv if argv is not None else sys.argv[1:])]),
              "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "host": platform.node(), "runtime_s": elapsed, "clips": index}
    (out / "index.json").write_text(json.dumps(record, indent=1))
    print(f"{len(cfgs)} clips in {_hms(elapsed)}; wrote {out / 'index.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
