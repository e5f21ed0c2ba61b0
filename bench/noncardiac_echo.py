"""Non-cardiac ultrasound and pure noise through the echo app: gated, and no GLS published?

Issue 12, acceptance 3: "non-cardiac ultrasound in pydicom-data (the lymph-node, pelvis and
obstetric files; palette-colour DICOM) and a clip of pure noise: read, then view ``unknown``
or gated on >= 90 % of frames, no GLS published."

Each clip goes frame by frame through one stream of the echo app (``build_analysis``, the
shipped networks on the default backend) WITHOUT a view hint, exactly as
``bench/real_echo.py: run_clip`` sends a clip (the classifier decides). The clips, all
Modality US (pydicom's test files and pydicom-data):

* obstetric (Philips CX50, ImageType OBSTETRICAL, PALETTE COLOR 8 bit, nearly empty sector
  with a calliper): ``OBXXXX1A`` (1 frame), its ``_2frame``, big-endian ``_expb`` and RLE
  ``_rle`` versions, and pydicom's ``examples_palette.dcm`` (the same image cut to 350 rows);
* lymph node (G.E. LOGIQ 700, SMALL PARTS, RGB power Doppler): ``US1_UNCR``/``UNCI``/
  ``J2KR``/``J2KI``, pydicom's ``examples_jpeg2k.dcm`` and ``examples_rgb_color.dcm`` (half
  size);
* pelvis (ALOKA SSD-4000, "3:PELVIS", PALETTE COLOR 16 bit, two B-mode panels of the
  bladder): ``gdcm-US-ALOKA-16`` and its big-endian ``_big``;
* ``ExplVR_BigEnd.dcm`` (pydicom; G.E., 60 x 80 RGB, a colour-flow patch whose header says
  EPICARDIAL): shown, not judged (it may be cardiac);
* pure noise, made here: 30 frames of 256 x 256 uint8, uniform and Rayleigh (speckle-like).

The US files of the two packages left out are cardiac: the two apical 4-chamber cines
(``bench/real_echo.py``), ``color-pl``/``color-px`` (transoesophageal colour Doppler) and
``JPGLosslessP14SV1_1s_1f_8b`` (Philips EPIQ echocardiogram; no JPEG-lossless decoder here).

None of these files states a frame rate and the lymph-node files state no pixel spacing,
which the replay needs (``replay`` asks for ``--fps``/``--spacing-mm``): each clip is read
with ``open_clip`` and its frames, unchanged, written to a temporary ``.npz`` with the file's
spacing (else ``--spacing-mm``, assumed) and ``--fps`` (assumed), which ``run_clip`` replays.

Per clip: frames read; frames analysed (the view gate let them on to segmentation, flow and
strain); the share of frames the classifier calls ``unknown`` or the gate stops (not
analysed); frames with a published ``gls_pct``; beats with a published ``peak_gls_pct``;
pass when that share is >= 90 % and no GLS is published. A file that cannot be read is
reported with the reader's error and fails.

    python bench/noncardiac_echo.py [--out bench/results/noncardiac_echo.json] [--backend auto]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from engines.spec import BACKENDS  # noqa: E402

GATED_SHARE_MIN = 0.9  # acceptance: unknown or gated on at least this share of frames


@dataclass(frozen=True)
class Case:
    """One clip of the bench: a pydicom test file (``name``) or a noise clip (``noise``)."""

    name: str
    group: str
    judged: bool = True  # counts for the acceptance
    noise: str | None = None  # "uniform" | "rayleigh": made here, not read


CASES = (
    *(Case(n, "obstetric") for n in (
        "OBXXXX1A.dcm", "OBXXXX1A_2frame.dcm", "OBXXXX1A_expb.dcm", "OBXXXX1A_expb_2frame.dcm",
        "OBXXXX1A_rle.dcm", "OBXXXX1A_rle_2frame.dcm", "examples_palette.dcm")),
    *(Case(n, "lymph node") for n in (
        "US1_UNCR.dcm", "US1_UNCI.dcm", "US1_J2KR.dcm", "US1_J2KI.dcm", "examples_jpeg2k.dcm",
        "examples_rgb_color.dcm")),
    *(Case(n, "pelvis") for n in ("gdcm-US-ALOKA-16.dcm", "gdcm-US-ALOKA-16_big.dcm")),
    Case("ExplVR_BigEnd.dcm", "unclear", judged=False),
    Case("noise_uniform", "noise", noise="uniform"),
    Case("noise_rayleigh", "noise", noise="rayleigh"),
)


def noise_clip(kind: str, frames: int = 30, size: int = 256, seed: int = 0) -> np.ndarray:
    """Pure noise, (frames, size, size) uint8: ``uniform`` over 0..255, or ``rayleigh``
    (fully developed speckle without tissue: Rayleigh amplitude, mode at grey 60)."""
    rng = np.random.default_rng(seed)
    if kind == "uniform":
        return rng.integers(0, 256, (frames, size, size), dtype=np.uint8)
    if kind == "rayleigh":
        return np.clip(rng.rayleigh(60.0, (frames, size, size)), 0, 255).astype(np.uint8)
    raise ValueError(f"noise {kind!r} is unknown; choose uniform or rayleigh")


def pydicom_file(name: str) -> Path:
    """A pydicom test file (pydicom's own or pydicom-data's), never downloaded."""
    from pydicom.data import get_testdata_file

    path = get_testdata_file(name, download=False)
    if path is None:
        raise FileNotFoundError(f"{name} not found: install the test extra (pydicom-data)")
    return Path(path)


def read_clip(path: Path) -> tuple[np.ndarray, tuple[float, float] | None, float | None]:
    """Every frame of the file as the side-car's reader gives it: (frames, spacing_mm, fps)
    (the last two None where the file does not say)."""
    from streamer.io.clips import open_clip

    with open_clip(path) as reader:
        info = reader.info
        frames = np.stack([np.asarray(f.pixels) for f in reader])
    spacing = None if info.spacing_mm is None else tuple(float(s) for s in info.spacing_mm)
    return frames, spacing, info.fps


def run_frames(analysis, name: str, frames: np.ndarray, spacing_mm: tuple[float, float],
               fps: float, workdir: Path):
    """``frames`` through one echo stream, no view hint, by ``real_echo.run_clip`` (via an
    ``.npz`` clip carrying the spacing and frame rate): frames, outcomes, beats."""
    from streamer.io.clips import write_clip

    sys.path.insert(0, str(ROOT / "bench"))
    from real_echo import run_clip

    clip = write_clip(workdir / f"{Path(name).name.split('.')[0]}.npz", frames,
                      spacing_mm=spacing_mm, fps=fps, modality="US")
    return run_clip(analysis, clip, None)


def count(outcomes, beats) -> dict:
    """The acceptance's figures from the echo app's outcomes and beat messages."""
    n = len(outcomes)
    values = [o.values for o in outcomes]
    labels = [v["view"]["label"] for v in values]
    analysed = [v["analyse"] is True for v in values]
    unknown_or_gated = [label == "unknown" or not a for label, a in zip(labels, analysed)]
    gls = [v.get("gls_pct") for v in values]
    beat_gls = [b for b in beats if b.get("peak_gls_pct") is not None]
    share = sum(unknown_or_gated) / n if n else None
    return {
        "frames_analysed": sum(analysed),
        "unknown_or_gated": sum(unknown_or_gated),
        "unknown_or_gated_share": share,
        "views": dict(Counter(labels).most_common()),
        "view_p": [v["view"]["p"] for v in values],
        "view_p_max": {label: max(v["view"]["p"] for v in values if v["view"]["label"] == label)
                       for label in set(labels)},
        "gls_published_frames": sum(g is not None for g in gls),
        "gls_published_beats": len(beat_gls),
        "beats": len(beats),
        "passed": (share is not None and share >= GATED_SHARE_MIN
                   and not any(g is not None for g in gls) and not beat_gls),
    }


def run_case(analysis, case: Case, workdir: Path, spacing_mm: tuple[float, float],
             fps: float) -> dict:
    """One row of the bench; a file the reader (or the replay) refuses is a failed row
    carrying the error."""
    row = {"clip": case.name, "group": case.group, "judged": case.judged, "frames_read": 0}
    try:
        if case.noise is not None:
            frames, spacing, file_fps = noise_clip(case.noise), None, None
        else:
            row["path"] = str(pydicom_file(case.name))
            frames, spacing, file_fps = read_clip(Path(row["path"]))
    except Exception as exc:  # unreadable: report it, go on with the next clip
        return {**row, "error": f"{type(exc).__name__}: {exc}", "passed": False}
    row["frames_read"] = len(frames)
    row["shape"] = list(frames.shape[1:])
    row["blank_frames"] = int(sum(int(f.max()) == int(f.min()) for f in frames))
    row["assumed"] = [k for k, v in (("spacing_mm", spacing), ("fps", file_fps)) if v is None]
    row["spacing_mm"] = list(spacing or spacing_mm)
    row["fps"] = file_fps or fps
    try:
        sent, outcomes, beats = run_frames(analysis, case.name, frames, tuple(row["spacing_mm"]),
                                           row["fps"], workdir)
    except Exception as exc:
        return {**row, "error": f"{type(exc).__name__}: {exc}", "passed": False}
    row["frames_sent"] = len(sent)
    return {**row, **count(outcomes, beats),
            "flags": [sorted(set(o.flags)) for o in outcomes]}


def verdict(row: dict) -> str:
    if not row["judged"]:
        return "-"
    return "pass" if row["passed"] else "FAIL"


def main(argv=None) -> int:
    from streamer.apps import AnalysisConfig, EngineConfig, add_weights_argument, build_analysis

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path,
                        default=ROOT / "bench" / "results" / "noncardiac_echo.json")
    parser.add_argument("--backend", default="auto", choices=BACKENDS)
    parser.add_argument("--fps", type=float, default=30.0,
                        help="frame rate where the file states none (default 30)")
    parser.add_argument("--spacing-mm", type=float, default=0.3,
                        help="pixel spacing, mm, where the file states none (default 0.3)")
    parser.add_argument("--clips", nargs="+", metavar="NAME",
                        help="only these clips (names as in the table)")
    add_weights_argument(parser)
    args = parser.parse_args(argv)
    cases = [c for c in CASES if args.clips is None or c.name in args.clips]
    if args.clips and len(cases) != len(args.clips):
        parser.error(f"unknown clip; choose from {' '.join(c.name for c in CASES)}")
    analysis = build_analysis(AnalysisConfig(app="echo", engines=EngineConfig(
        backend=args.backend, weights=tuple(args.weights))))
    rows = []
    print(f"{'clip':<26} {'group':<10} {'read':>4} {'analysed':>8} {'unk/gated':>9} "
          f"{'GLS frames':>10} {'GLS beats':>9}  {'':<4}  views")
    with tempfile.TemporaryDirectory() as tmp:
        for case in cases:
            row = run_case(analysis, case, Path(tmp), (args.spacing_mm,) * 2, args.fps)
            rows.append(row)
            if "error" in row:
                print(f"{case.name:<26} {case.group:<10} {row['frames_read']:>4} "
                      f"{'':>8} {'':>9} {'':>10} {'':>9}  {verdict(row):<4}  {row['error']}")
                continue
            views = ", ".join(f"{k} {v} (p <= {row['view_p_max'][k]:.2f})"
                              for k, v in row["views"].items())
            blank = f"  ({row['blank_frames']} blank)" if row["blank_frames"] else ""
            print(f"{case.name:<26} {case.group:<10} {row['frames_read']:>4} "
                  f"{row['frames_analysed']:>8} {row['unknown_or_gated_share']:>9.0%} "
                  f"{row['gls_published_frames']:>10} {row['gls_published_beats']:>9}  "
                  f"{verdict(row):<4}  {views}{blank}")
    judged = [r for r in rows if r["judged"]]
    passed = all(r["passed"] for r in judged)
    print(f"acceptance (>= {GATED_SHARE_MIN:.0%} unknown or gated, no GLS): "
          f"{sum(r['passed'] for r in judged)}/{len(judged)} clips pass")
    given = sys.argv[1:] if argv is None else list(argv)
    record = {"command": " ".join(["python bench/noncardiac_echo.py", *given]),
              "backend": args.backend, "weights": [list(w) for w in args.weights],
              "gated_share_min": GATED_SHARE_MIN,
              "assumed_fps": args.fps, "assumed_spacing_mm": args.spacing_mm,
              "passed": passed, "runs": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=1))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
