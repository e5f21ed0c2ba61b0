"""Re-analysing an archive: clips per minute of ``cardiostream analyze PATHS --out-dir DIR``
in one process, in worker processes and on Ray, and whether their results are those of one
process per clip.

The archive (made once into ``WORK/archive`` and kept for the next run with the same
``--clips`` and ``--seed``): ``--clips`` N entries, of which four are damaged and the rest,
in turn (out of 20: 10 echo, 3 stacks, 4 slices, 3 velocity-mapping slices):

* echo A4C phantoms of 40-60 frames, 256 x 256 (``calib.datasets.random_echo_config``), as
  multi-frame DICOM: the ``echo`` app (view, segmentation, flow, tracking, GLS per beat);
* MR short-axis phantom slices (``random_mr_config``, 25 phases), magnitude only, as NIfTI:
  ``mr-sax`` (strain per slice and beat);
* MR short-axis stacks: the basal, mid and apical slice of one phantom heart
  (``wall_motion_stack_configs``, 20 phases) as a folder of single-frame DICOM (one clip):
  ``mr-sax`` with the stack's volumes, EF and mass and its wall-motion scores (MSI);
* MR velocity-mapping slices (``velocity_mapping_config``, 30 frames, four channels) as
  ``.npz``: ``mr-velocity``;
* damaged: a truncated echo DICOM, random bytes named ``.dcm``, an empty ``.nii`` (three
  clips that fail, with the reader's message), and an ``.npz`` whose frames are NaN (it
  runs; every frame is answered with a ``bad_pixels`` error line).

Modes (``--modes``), each a fresh output folder, timed from the command's start to its exit
(Python start, imports and engine builds included):

* ``reference``: ``cardiostream analyze CLIP --out REF/NAME.jsonl --threads 1 --t0-ns T0``
  for every clip, one process each (the acceptance's reference);
* ``w1``: ``analyze ARCHIVE --out-dir DIR`` (one worker, in the command's process);
* ``w1t2``: the same on two threads (``--threads 2``): another numerical setting, so its
  results are compared but need not be identical;
* ``w2``: ``--workers 2`` (two spawned processes, one thread each);
* ``ray``: ``--ray`` (a local Ray with this machine's cores: one actor per core);
then ``w2`` again into its folder: every clip done must be skipped, the failed ones retried.

Each study's ``clips/NAME.jsonl`` is compared line by line with the reference's, without
the wall-clock keys (``streamer.study.TIMING_KEYS``); the clips that failed must be the
clips whose reference run failed, with the same message. Clips per minute = clips found
(failed ones included) / wall seconds.

    python bench/archive.py [--clips 200] [--modes reference w1 w1t2 w2 ray]
        [--work /tmp/cardiostream-archive] [--out bench/results/archive.json]
        [-- ANALYZE_OPTIONS...]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from streamer.bench.latency import machine_info  # noqa: E402
from streamer.study import STUDY_T0_NS, discover, strip_timing  # noqa: E402

#: each run of 20 archive entries: what kind each is (10 echo, 3 stacks, 4 short-axis
#: slices, 3 velocity-mapping slices; a small archive gets a stack second)
PATTERN = ["echo", "stack", "echo", "sax", "echo", "velocity"] * 3 + ["echo", "sax"]
DAMAGED = ("truncated.dcm", "noise.dcm", "empty.nii", "nan.npz")
MODES = ("reference", "w1", "w1t2", "w2", "ray")
#: how the archive is made: a change here makes a new one
ARCHIVE_VERSION = 1


# ---------------------------------------------------------------------------------------
# the archive


def make_archive(folder: Path, n: int, seed: int) -> dict:
    """Write the archive of the module docstring into ``folder`` (reused where it was made
    with the same parameters); returns its manifest."""
    manifest_path = folder / "manifest.json"
    wanted = {"version": ARCHIVE_VERSION, "clips": n, "seed": seed}
    if manifest_path.is_file():
        manifest = json.loads(manifest_path.read_text())
        if {k: manifest.get(k) for k in wanted} == wanted:
            return manifest
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    kinds: dict[str, int] = {}
    start = time.perf_counter()
    for k in range(max(0, n - len(DAMAGED))):
        kind = PATTERN[k % len(PATTERN)]
        write_phantom(folder / kind, kind, k, seed + k)
        kinds[kind] = kinds.get(kind, 0) + 1
        print(f"\rmaking the archive: {k + 1}/{n - len(DAMAGED)} phantoms", end="", flush=True)
    write_damaged(folder / "damaged", seed)
    print(f" ({time.perf_counter() - start:.0f} s)")
    manifest = {**wanted, "kinds": kinds, "damaged": list(DAMAGED)}
    manifest_path.write_text(json.dumps(manifest, indent=1))
    return manifest


def write_phantom(folder: Path, kind: str, k: int, seed: int) -> Path:
    from calib import datasets
    from calib.echo import make_echo_clip
    from calib.mr import make_mr_clip
    from streamer.io.clips import write_clip

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    if kind == "echo":
        clip = make_echo_clip(datasets.random_echo_config(
            seed, view="a4c", frames=int(rng.integers(40, 61))))
        return write_clip(folder / f"echo-{k:04d}.dcm", clip.frames, spacing_mm=clip.spacing_mm,
                          fps=clip.fps, modality="US")
    if kind == "sax":
        clip = make_mr_clip(datasets.random_mr_config(seed, frames=25))
        return write_clip(folder / f"sax-{k:04d}.nii.gz", clip.frames,
                          spacing_mm=clip.spacing_mm, fps=clip.fps, modality="MR")
    if kind == "velocity":
        clip = make_mr_clip(datasets.velocity_mapping_config(seed, frames=30))
        frames = np.concatenate([clip.frames.astype(np.float32)[..., None],
                                 clip.velocity_mm_s.astype(np.float32)], axis=-1)
        return write_clip(folder / f"velocity-{k:04d}.npz", frames, spacing_mm=clip.spacing_mm,
                          fps=clip.fps, modality="MR",
                          channels=("magnitude", "v_col_mm_s", "v_row_mm_s", "v_through_mm_s"),
                          metadata={"venc_mm_s": clip.config.venc_mm_s})
    clips = [make_mr_clip(c) for c in datasets.wall_motion_stack_configs(seed, frames=20)]
    return write_dicom_stack(folder / f"stack-{k:04d}", clips[::-1])  # apical first


def write_dicom_stack(folder: Path, clips) -> Path:
    """The slices (apex to base, 10 mm apart) of one phantom heart as a folder of
    single-frame MR DICOM images, one per slice and phase, the anterior up on screen."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

    folder.mkdir(parents=True)
    study, series, number = generate_uid(), generate_uid(), 0
    for s, clip in enumerate(clips):
        for p, frame in enumerate(clip.frames):
            number += 1
            meta = FileMetaDataset()
            meta.MediaStorageSOPClassUID = MRImageStorage
            meta.MediaStorageSOPInstanceUID = generate_uid()
            meta.TransferSyntaxUID = ExplicitVRLittleEndian
            ds = Dataset()
            ds.file_meta = meta
            ds.SOPClassUID, ds.SOPInstanceUID = MRImageStorage, meta.MediaStorageSOPInstanceUID
            ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
            ds.Modality, ds.InstanceNumber = "MR", number
            ds.Rows, ds.Columns = frame.shape
            ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
            ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
            ds.PixelSpacing = [float(v) for v in clip.spacing_mm]
            ds.SliceThickness, ds.SliceLocation = 8.0, 10.0 * s
            ds.ImagePositionPatient = [0.0, 0.0, 10.0 * s]
            ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]  # rows run posterior: anterior up
            ds.TriggerTime = 1000.0 * p / clip.fps
            ds.PixelData = np.ascontiguousarray(frame, "<u2").tobytes()
            ds.save_as(folder / f"IM{number:05d}.dcm", enforce_file_format=True)
    return folder


def write_damaged(folder: Path, seed: int) -> None:
    from calib import datasets
    from calib.echo import make_echo_clip
    from streamer.io.clips import write_clip

    folder.mkdir(parents=True)
    clip = make_echo_clip(datasets.random_echo_config(seed, view="a4c", frames=20))
    whole = write_clip(folder / "whole.dcm", clip.frames, spacing_mm=clip.spacing_mm,
                       fps=clip.fps, modality="US")
    (folder / "truncated.dcm").write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    whole.unlink()
    (folder / "noise.dcm").write_bytes(np.random.default_rng(seed).bytes(50_000))
    (folder / "empty.nii").write_bytes(b"")
    write_clip(folder / "nan.npz", np.full((8, 64, 64), np.nan, np.float32),
               spacing_mm=(0.5, 0.5), fps=30.0, modality="US")


# ---------------------------------------------------------------------------------------
# the runs


def cardiostream(*args: str, timeout_s: float) -> tuple[subprocess.CompletedProcess, float]:
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "streamer", *args], capture_output=True,
                          text=True, timeout=timeout_s,
                          env={**os.environ, "CARDIOSTREAM_NO_PROGRESS": "1"})
    return done, time.perf_counter() - start


def run_reference(jobs, out: Path, options: list[str], timeout_s: float) -> dict:
    """One ``analyze CLIP --out`` process per clip."""
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    failed, wall_s = {}, 0.0
    for k, job in enumerate(jobs):
        done, seconds = cardiostream("analyze", str(job.path), "--out",
                                     str(out / f"{job.name}.jsonl"), "--threads", "1",
                                     "--t0-ns", str(STUDY_T0_NS), "--no-progress", *options,
                                     timeout_s=timeout_s)
        wall_s += seconds
        if done.returncode != 0:
            lines = done.stderr.strip().splitlines()
            failed[job.name] = lines[-1].split("error: ", 1)[-1] if lines else "?"
            (out / f"{job.name}.jsonl").unlink(missing_ok=True)
        print(f"\rreference: {k + 1}/{len(jobs)} clips, {wall_s:.0f} s", end="", flush=True)
    print()
    return {"mode": "reference", "workers": "1 process per clip", "threads": 1,
            "wall_s": round(wall_s, 2), "clips": len(jobs), "failed": failed}


def run_mode(mode: str, archive: Path, out: Path, options: list[str], timeout_s: float,
             fresh: bool = True) -> dict:
    if fresh:
        shutil.rmtree(out, ignore_errors=True)
    extra = {"w1": [], "w1t2": ["--threads", "2"], "w2": ["--workers", "2"],
             "ray": ["--ray"]}[mode]
    done, seconds = cardiostream("analyze", str(archive), "--out-dir", str(out),
                                 "--no-progress", *options, *extra, timeout_s=timeout_s)
    if done.returncode not in (0, 1):
        raise SystemExit(f"{mode}: exit status {done.returncode}\n{done.stderr[-3000:]}")
    event = json.loads(done.stdout.strip().splitlines()[-1])
    errors = (out / "errors.txt").read_text().splitlines()
    failed = dict(line.split(": ", 1) for line in errors)
    print(f"{mode}: {event['ran']} ran, {event['skipped']} skipped, {event['failed']} failed "
          f"in {seconds:.0f} s", flush=True)
    return {"mode": mode, "workers": event["workers"], "threads": event["threads"],
            "wall_s": round(seconds, 2), "clips": event["clips"], "ran": event["ran"],
            "skipped": event["skipped"], "study_elapsed_s": event["elapsed_s"],
            "failed": failed, "frame_error_clips": event["frame_error_clips"]}


def compare(jobs, reference: Path, study: Path) -> dict:
    """Per clip: the study's results against the reference's, wall-clock keys stripped."""
    identical, differing, missing = 0, [], []
    for job in jobs:
        ref, got = reference / f"{job.name}.jsonl", study / "clips" / f"{job.name}.jsonl"
        if not ref.is_file() and not got.is_file():
            continue  # failed in both
        if not ref.is_file() or not got.is_file():
            missing.append(job.name)
            continue
        a = [strip_timing(json.loads(line)) for line in ref.read_text().splitlines()]
        b = [strip_timing(json.loads(line)) for line in got.read_text().splitlines()]
        if a == b:
            identical += 1
        else:
            first = next((k for k, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
            differing.append({"clip": job.name, "lines": [len(a), len(b)], "first_line": first})
    return {"identical": identical, "differing": differing, "missing": missing}


def format_table(rows: list[dict]) -> str:
    lines = [f"{'mode':10s} {'workers':>20s} {'threads':>7s} {'wall s':>8s} {'clips/min':>9s} "
             f"{'failed':>6s} {'identical':>10s}"]
    for r in rows:
        same = r.get("identity")
        same_text = "-" if same is None else f"{same['identical']}/{same['identical'] + len(same['differing']) + len(same['missing'])}"
        lines.append(f"{r['mode']:10s} {str(r['workers']):>20s} {r['threads']:>7} "
                     f"{r['wall_s']:8.1f} {r['clips_per_min']:9.2f} {len(r['failed']):6d} "
                     f"{same_text:>10s}")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clips", type=int, default=200, help="archive entries (default 200)")
    p.add_argument("--seed", type=int, default=4_000_000, help="first phantom seed")
    p.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    p.add_argument("--work", type=Path, default=Path("/tmp/cardiostream-archive"),
                   help="where the archive and the outputs go")
    p.add_argument("--timeout-s", type=float, default=6 * 3600, help="per command")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "archive.json")
    p.add_argument("analyze_args", nargs="*", help="more `cardiostream analyze` options, after --")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    archive = args.work / "archive"
    manifest = make_archive(archive, args.clips, args.seed)
    jobs = sorted(discover([archive]).jobs, key=lambda j: j.name)
    print(f"{len(jobs)} clips: {manifest['kinds']} and {len(DAMAGED)} damaged", flush=True)
    if "ray" in args.modes:
        try:
            import ray  # noqa: F401
        except ImportError:
            print("ray: skipped (Ray is the optional extra cardiostream[ray])")
            args.modes = [m for m in args.modes if m != "ray"]
    rows, options = [], list(args.analyze_args)
    reference = args.work / "reference"
    if "reference" in args.modes:
        rows.append(run_reference(jobs, reference, options, args.timeout_s))
    for mode in [m for m in args.modes if m != "reference"]:
        row = run_mode(mode, archive, args.work / mode, options, args.timeout_s)
        if reference.is_dir():
            row["identity"] = compare(jobs, reference, args.work / mode)
            row["failed_as_reference"] = row["failed"] == rows[0]["failed"] \
                if rows and rows[0]["mode"] == "reference" else None
        rows.append(row)
    for row in rows:
        row["clips_per_min"] = round(row["clips"] / row["wall_s"] * 60, 2)
    rerun = None
    if "w2" in args.modes:
        again = run_mode("w2", archive, args.work / "w2", options, args.timeout_s, fresh=False)
        done = next(r for r in rows if r["mode"] == "w2")
        rerun = {"skipped": again["skipped"], "ran": again["ran"], "wall_s": again["wall_s"],
                 "skipped_every_done_clip": again["skipped"] == done["clips"] - len(done["failed"])
                 and again["ran"] == len(done["failed"])}
    print(format_table(rows))
    for row in rows:
        same = row.get("identity")
        if same and (same["differing"] or same["missing"]):
            print(f"{row['mode']}: differing {same['differing'][:5]} missing {same['missing'][:5]}")
        if row.get("failed_as_reference") is False:
            print(f"{row['mode']}: failed clips differ from the reference's: {row['failed']}")
    if rows and rows[0]["mode"] == "reference":
        print("failed clips (reference):")
        for name, message in rows[0]["failed"].items():
            print(f"  {name}: {message}")
    if rerun:
        print(f"rerun of w2: {rerun['skipped']} skipped, {rerun['ran']} ran "
              f"({'every done clip skipped' if rerun['skipped_every_done_clip'] else 'NOT as expected'})")
    report = {"command": " ".join([Path(sys.argv[0]).name, *(argv or sys.argv[1:])]),
              "machine": machine_info(), "archive": manifest, "t0_ns": STUDY_T0_NS,
              "modes": rows, "rerun": rerun}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
