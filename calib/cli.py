"""``cardiostream phantom echo|mr ... --out CLIP``: the phantom subcommand.

The project CLI calls :func:`add_phantom_parser` on its subparsers; the handler stored in
``func`` returns an exit code.  Bad parameters raise :class:`calib.errors.PhantomParameterError`
(a ValueError) whose message names the parameter, e.g. ``gls_pct=-55 is outside -40..+20 %``.

Examples::

    cardiostream phantom echo --view a4c --frames 60 --fps 60 --heart-rate-bpm 70 \\
        --gls-pct -18 --dysfunction apical_septal=akinetic --seed 3 --out a4c.dcm
    cardiostream phantom mr --slice mid --frames 25 --wall-motion 7=hypokinetic \\
        --infarct 7,8 --seed 1 --out sax.nii.gz
"""

from __future__ import annotations

import argparse
import sys

from calib.errors import PhantomParameterError
from streamer.vocab import A4C_SEGMENTS, SAX_LEVELS, VIEW_CLASSES, WALL_MOTION_CLASSES


def parse_size(text: str) -> tuple[int, int]:
    """"256" -> (256, 256); "240x320" -> (240, 320) as rows x cols."""
    t = str(text).lower().replace("*", "x")
    parts = t.split("x")
    try:
        vals = [int(p) for p in parts]
    except ValueError:
        raise PhantomParameterError(f"size={text!r} is not ROWSxCOLS or N (pixels)") from None
    if len(vals) == 1:
        vals = vals * 2
    if len(vals) != 2:
        raise PhantomParameterError(f"size={text!r} is not ROWSxCOLS or N (pixels)")
    return vals[0], vals[1]


def parse_assignments(items, name: str) -> dict:
    """["a=1", "b=akinetic"] -> {"a": "1", "b": "akinetic"}."""
    out = {}
    for item in items or []:
        for part in str(item).split(","):
            if not part.strip():
                continue
            if "=" not in part:
                raise PhantomParameterError(f"{name}={part!r} must look like SEGMENT=VALUE")
            k, v = part.split("=", 1)
            out[k.strip()] = v.strip()
    return out


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, metavar="PATH",
                   help="clip to write: .dcm (multi-frame DICOM), .nii/.nii.gz or .npz; "
                        "truth goes beside it as <stem>.truth.npz")
    p.add_argument("--frames", type=int, default=None, help="number of frames")
    p.add_argument("--heart-rate-bpm", type=float, default=None, help="heart rate, beats per minute")
    p.add_argument("--size", type=str, default=None, metavar="ROWSxCOLS", help="image size in pixels")
    p.add_argument("--seed", type=int, default=0, help="random seed (recorded in the file)")
    p.add_argument("--vary-anatomy", action="store_true",
                   help="draw anatomy and imaging parameters from the seed (as the data sets do)")


def add_phantom_parser(subparsers) -> None:
    """Add ``phantom echo`` and ``phantom mr`` to an argparse subparsers object."""
    ph = subparsers.add_parser(
        "phantom", help="make echo / MR phantom clips with exact ground truth",
        description="Generate a phantom clip and its truth (<stem>.truth.npz); the parameters "
                    "and seed are stored in both files so the clip can be remade exactly.")
    sub = ph.add_subparsers(dest="phantom_kind", metavar="{echo,mr}")
    sub.required = True

    e = sub.add_parser("echo", help="echocardiography clip (B-mode sector, speckle)",
                       description=f"Echo phantom. Views: {' '.join(VIEW_CLASSES)}.")
    _common(e)
    e.add_argument("--view", default="a4c",
                   help=f"{' | '.join(VIEW_CLASSES)} (default a4c)")
    e.add_argument("--fps", type=float, default=None, help="frames per second")
    e.add_argument("--gls-pct", type=float, default=None,
                   help="peak global longitudinal strain of normal segments, %% (-40..+20)")
    e.add_argument("--dysfunction", action="append", metavar="SEGMENT=FACTOR",
                   help="segment contraction factor (1 normal, 0.5 or hypokinetic, 0 or akinetic, "
                        f"<0 or dyskinetic); segments: {' '.join(A4C_SEGMENTS)}; repeatable or "
                        "comma-separated")
    e.add_argument("--depth-mm", type=float, default=None, help="imaging depth, mm")
    e.add_argument("--sector-angle-deg", type=float, default=None, help="sector opening, degrees")
    e.add_argument("--start-phase", type=float, default=None,
                   help="cardiac phase of the first frame in cycles (0 = end-diastole)")
    e.set_defaults(func=run_echo)

    m = sub.add_parser("mr", help="short-axis cine MR with velocity mapping channels",
                       description="MR short-axis cine phantom (magnitude + 3 velocity channels).")
    _common(m)
    m.add_argument("--slice", default="mid", help=f"{' | '.join(SAX_LEVELS)} (default mid)")
    m.add_argument("--pixel-mm", type=float, default=None, help="pixel size, mm")
    m.add_argument("--peak-circ-strain-pct", type=float, default=None,
                   help="peak midwall circumferential strain of normal segments, %%")
    m.add_argument("--peak-radial-strain-pct", type=float, default=None,
                   help="peak radial (thickening) strain of normal segments, %%")
    m.add_argument("--wall-motion", action="append", metavar="SEGMENT=CLASS",
                   help=f"AHA segment (1..16) = {'|'.join(WALL_MOTION_CLASSES)} (or 0.."
                        f"{len(WALL_MOTION_CLASSES) - 1}); repeatable or comma-separated")
    m.add_argument("--infarct", default=None, metavar="SEGMENTS",
                   help="comma-separated AHA segments with a (subendocardial to transmural) infarct")
    m.add_argument("--venc-mm-s", type=float, default=None, help="velocity encoding, mm/s")
    m.add_argument("--velocity-mapping", action="store_true",
                   help="a velocity-mapping acquisition as the 3D-EAR network learnt them "
                        "(calib.datasets.velocity_mapping_config from the seed: black blood, "
                        "VENC 15-30 cm/s, background phase offsets, the anatomy varied; 50 "
                        "frames unless --frames); write .npz or .nii.gz to keep the velocities")
    m.add_argument("--blood-signal", type=float, default=None,
                   help="blood signal as a fraction of the bright-blood cine's (black blood: "
                        "~0.03-0.15)")
    m.add_argument("--phase-offset-mm-s", type=float, default=None,
                   help="largest background phase offset of each velocity channel, mm/s")
    m.set_defaults(func=run_mr)


def _set(kw: dict, key: str, value) -> None:
    if value is not None:
        kw[key] = value


def echo_config_from_args(args):
    from calib.echo import EchoPhantomConfig
    kw: dict = {}
    if args.vary_anatomy:
        from calib.datasets import random_echo_config
        base = random_echo_config(args.seed, view=args.view)
        kw.update({k: v for k, v in base.to_dict().items() if k != "speckle"})
        kw["speckle"] = base.speckle
    kw["view"] = args.view
    kw["seed"] = args.seed
    _set(kw, "frames", args.frames)
    _set(kw, "fps", args.fps)
    _set(kw, "heart_rate_bpm", args.heart_rate_bpm)
    _set(kw, "gls_pct", args.gls_pct)
    _set(kw, "depth_mm", args.depth_mm)
    _set(kw, "sector_angle_deg", args.sector_angle_deg)
    _set(kw, "start_phase", args.start_phase)
    if args.size is not None:
        kw["rows"], kw["cols"] = parse_size(args.size)
    dys = parse_assignments(args.dysfunction, "dysfunction")
    if dys:
        kw["dysfunction"] = dys
    return EchoPhantomConfig(**kw)


def mr_config_from_args(args):
    from calib.mr import MRPhantomConfig
    kw: dict = {}
    if args.velocity_mapping:
        from calib.datasets import velocity_mapping_config
        kw.update(velocity_mapping_config(args.seed, frames=args.frames or 50,
                                          slice_level=args.slice).to_dict())
    elif args.vary_anatomy:
        from calib.datasets import random_mr_config
        kw.update(random_mr_config(args.seed, slice_level=args.slice).to_dict())
    kw["slice_level"] = args.slice
    kw["seed"] = args.seed
    _set(kw, "frames", args.frames)
    _set(kw, "heart_rate_bpm", args.heart_rate_bpm)
    _set(kw, "pixel_mm", args.pixel_mm)
    _set(kw, "peak_circ_strain_pct", args.peak_circ_strain_pct)
    _set(kw, "peak_radial_strain_pct", args.peak_radial_strain_pct)
    _set(kw, "venc_mm_s", args.venc_mm_s)
    _set(kw, "blood_signal", args.blood_signal)
    _set(kw, "phase_offset_mm_s", args.phase_offset_mm_s)
    if args.size is not None:
        kw["rows"], kw["cols"] = parse_size(args.size)
    wm = parse_assignments(args.wall_motion, "wall_motion")
    if wm:
        kw["wall_motion"] = wm
    if args.infarct:
        try:
            kw["infarct_segments"] = [int(s) for s in str(args.infarct).split(",") if s.strip()]
        except ValueError:
            raise PhantomParameterError(f"infarct={args.infarct!r} must be comma-separated AHA "
                                        f"segment numbers 1..16") from None
    return MRPhantomConfig(**kw)


def run_echo(args) -> int:
    from calib.echo import make_echo_clip
    from calib.io import write_phantom
    cfg = echo_config_from_args(args)
    clip = make_echo_clip(cfg)
    path, tpath = write_phantom(clip, args.out)
    tr = clip.truth
    peak = f"{float(min(tr.gls_pct)):.1f} %" if tr.gls_pct.size and tr.gls_pct[0] == tr.gls_pct[0] else "n/a"
    print(f"wrote {path} ({cfg.frames} frames {cfg.rows}x{cfg.cols}, {clip.spacing_mm[0]:.3f} mm/px, "
          f"{cfg.fps:g} fps, view {cfg.view}, peak GLS {peak}, {clip.timings_s['total_s']:.2f} s)")
    print(f"wrote {tpath}")
    sys.stdout.flush()
    return 0


def run_mr(args) -> int:
    from calib.io import write_phantom
    from calib.mr import make_mr_clip
    cfg = mr_config_from_args(args)
    clip = make_mr_clip(cfg)
    path, tpath = write_phantom(clip, args.out)
    print(f"wrote {path} ({cfg.frames} phases {cfg.rows}x{cfg.cols}, {cfg.pixel_mm:g} mm/px, "
          f"{cfg.slice_level} slice, {clip.timings_s['total_s']:.2f} s)")
    print(f"wrote {tpath}")
    sys.stdout.flush()
    return 0


def main(argv=None) -> int:
    """Stand-alone entry (``python -m calib.cli echo ...``) for use before the project CLI."""
    parser = argparse.ArgumentParser(prog="calib")
    sub = parser.add_subparsers(dest="command")
    add_phantom_parser(sub)
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] != "phantom":
        argv = ["phantom"] + argv
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except PhantomParameterError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
