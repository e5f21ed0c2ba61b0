"""Archives (streamer/study.py, ``analyze PATHS... --out-dir DIR``): discovery, each clip's
results equal to ``analyze CLIP --out`` of that clip alone with the same settings, in this
process, in worker processes and on Ray; failed clips listed, never stopping the run; reruns
that skip what is done; the study table.

Results are compared line by line without the wall-clock keys (``study.TIMING_KEYS``:
``t_recv_ns``, ``t_result_ns``, ``t_publish_ns`` and ``latency_ms``, the receive, result
and publish times and the per-stage latencies measured as the clip ran); every other key,
``t_acq_ns`` included, must be equal. The clips are tiny and analysed with ``--app none``
(the runtime without networks), so the worker processes and Ray actors start quickly."""

from __future__ import annotations

import csv
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest

from streamer.cli import main
from streamer.io.clips import write_clip
from streamer.study import (
    STUDY_T0_NS,
    TABLE_COLUMNS,
    StudyError,
    clip_rows,
    discover,
    import_ray,
    output_name,
    strip_timing,
)

#: the options of every run here: the runtime without networks, no progress bar
OPTIONS = ["--app", "none", "--no-progress"]


def write_series(folder: Path, phases: int = 5, seed: int = 0) -> Path:
    """A folder of single-frame MR DICOM images: one slice, ``phases`` phases."""
    import pydicom  # noqa: F401 - the writer below is pydicom's
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

    folder.mkdir(parents=True)
    rng, series, study = np.random.default_rng(seed), generate_uid(), generate_uid()
    for phase in range(phases):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = MRImageStorage, generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = MRImageStorage, meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.Modality, ds.InstanceNumber = "MR", phase + 1
        ds.Rows = ds.Columns = 24
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.PixelSpacing, ds.SliceThickness, ds.SliceLocation = [1.5, 1.5], 8, 0.0
        ds.ImagePositionPatient, ds.ImageOrientationPatient = [0, 0, 0], [1, 0, 0, 0, 1, 0]
        ds.TriggerTime = 40.0 * phase
        ds.PixelData = rng.integers(0, 1000, (24, 24)).astype("<u2").tobytes()
        ds.save_as(folder / f"IM{phase + 1:04d}", enforce_file_format=True)  # no suffix
    return folder


def npz_clip(path: Path, frames: int, seed: int, nan_frame: int | None = None) -> Path:
    pixels = np.random.default_rng(seed).random((frames, 24, 32)).astype(np.float32)
    if nan_frame is not None:
        pixels[nan_frame, 3, 3] = np.nan
    return write_clip(path, pixels, spacing_mm=(0.4, 0.4), fps=30.0, modality="US")


@pytest.fixture
def archive(tmp_path) -> Path:
    """Seven clips (three .npz, one of them with a NaN frame; a multi-frame DICOM; a DICOM
    series folder), a truncated DICOM and random bytes named .dcm, and two files no reader
    reads."""
    root = tmp_path / "archive"
    (root / "echo" / "deep").mkdir(parents=True)
    npz_clip(root / "echo" / "a.npz", 6, 1)
    npz_clip(root / "echo" / "deep" / "b.npz", 5, 2)
    npz_clip(root / "nan.npz", 4, 3, nan_frame=2)
    cine = write_clip(root / "echo" / "cine.dcm",
                      np.random.default_rng(4).integers(0, 255, (6, 24, 24)).astype(np.uint8),
                      spacing_mm=(0.5, 0.5), fps=25.0, modality="US")
    (root / "echo" / "cut.dcm").write_bytes(cine.read_bytes()[:-1500])
    (root / "noise.dcm").write_bytes(np.random.default_rng(5).bytes(3000))
    write_series(root / "mr" / "series")
    (root / "notes.txt").write_text("not a clip")
    (root / "echo" / "a.truth.npz").write_bytes(b"a phantom's truth is no clip")
    return root


CLIPS = ("a", "b", "cine", "cut", "nan", "noise", "series")
FAILED = ("cut", "noise")


def read_lines(path: Path) -> list[dict]:
    return [strip_timing(json.loads(line)) for line in path.read_text().splitlines()]


def outputs(out_dir: Path) -> dict[str, list[dict]]:
    """Each clip's results without the wall-clock keys, by the stem of its name."""
    return {p.stem.rsplit("-", 1)[0]: read_lines(p) for p in (out_dir / "clips").glob("*.jsonl")}


def index(out_dir: Path) -> dict[str, dict]:
    entries = [json.loads(line) for line in (out_dir / "index.jsonl").read_text().splitlines()]
    return {e["name"].rsplit("-", 1)[0]: e for e in entries}


def study(paths, out_dir: Path, *extra: str) -> int:
    return main(["analyze", *map(str, paths), "--out-dir", str(out_dir), *OPTIONS, *extra])


# ---------------------------------------------------------------------------------------
# discovery


def test_discover_walks_folders_takes_a_dicom_series_as_one_clip_and_counts_the_rest(archive):
    found = discover([archive])
    names = {Path(job.path).name: job for job in found.jobs}
    assert set(names) == {"a.npz", "b.npz", "nan.npz", "cine.dcm", "cut.dcm", "noise.dcm",
                          "series"}
    assert names["series"].series and not names["a.npz"].series
    assert all(job.path.is_absolute() for job in found.jobs)
    assert sorted(Path(p).name for p in found.unsupported) == ["a.truth.npz", "notes.txt"]
    # the same clip given again, by a folder, a file and a glob, is one clip
    again = discover([archive / "echo", archive / "echo" / "a.npz", f"{archive}/**/*.npz"])
    assert sorted(Path(j.path).name for j in again.jobs) == ["a.npz", "b.npz", "cine.dcm",
                                                            "cut.dcm", "nan.npz"]
    assert [Path(j.path).name for j in discover([f"{archive}/*/*.dcm"]).jobs] == \
        ["cine.dcm", "cut.dcm"]
    # the images of a series, named one by one, stand for their series
    images = discover([f"{archive}/mr/series/IM*", archive / "mr" / "series" / "IM0002"])
    assert [(Path(j.path).name, j.series) for j in images.jobs] == [("series", True)]


def test_discover_keeps_still_images_beside_multi_frame_clips_out(archive, tmp_path):
    """A folder with multi-frame cines is not a series: its single images (stills) are
    skipped, each cine is a clip."""
    folder = tmp_path / "exam"
    write_series(folder)  # five single images ...
    (folder / "cine.dcm").write_bytes((archive / "echo" / "cine.dcm").read_bytes())  # ... a cine
    found = discover([folder])
    assert [Path(j.path).name for j in found.jobs] == ["cine.dcm"]
    assert len(found.unsupported) == 5
    assert discover([folder / "IM0001"]).jobs == ()  # a still named alone: no clip


def test_discover_refuses_missing_paths_and_empty_patterns(tmp_path):
    with pytest.raises(StudyError, match="no such file or folder"):
        discover([tmp_path / "nothing.dcm"])
    with pytest.raises(StudyError, match="matches no file"):
        discover([f"{tmp_path}/*.nii"])


def test_output_names_are_readable_stable_and_share_the_stream_hash(tmp_path):
    from streamer.replay import default_stream_name

    path = tmp_path / "Patient 01.nii.gz"
    name = output_name(path)
    assert name.startswith("Patient_01-") and name == output_name(path)
    assert name.rsplit("-", 1)[1].startswith(default_stream_name(path).removeprefix("clip-"))
    assert output_name(tmp_path / "a" / "x.dcm") != output_name(tmp_path / "b" / "x.dcm")


# ---------------------------------------------------------------------------------------
# a study


def reference(clip: Path, out: Path) -> list[dict]:
    """``analyze CLIP --out`` of the clip alone, with the study's settings."""
    assert main(["analyze", str(clip), "--out", str(out), *OPTIONS, "--threads", "1",
                 "--t0-ns", str(STUDY_T0_NS)]) == 0
    return read_lines(out)


def test_a_study_gives_each_clip_its_own_analysis_lists_failures_and_resumes(
        archive, tmp_path, capsys):
    out = tmp_path / "study"
    assert study([archive], out) == 1  # some clips failed
    captured = capsys.readouterr()
    event = json.loads(captured.out.splitlines()[-1])
    assert (event["event"], event["mode"], event["clips"], event["ran"], event["done"],
            event["failed"], event["skipped"], event["unsupported"], event["threads"]) == \
        ("study", "in-process", 7, 7, 5, 2, 0, 2, 1)
    assert event["frame_error_clips"] == 1  # nan.npz: its NaN frame is an error line
    # the failures, on stderr and in errors.txt, each with its reader's message
    assert "2 of 7 clip(s) failed" in captured.err
    errors = (out / "errors.txt").read_text().splitlines()
    assert [line.split("-", 1)[0] for line in errors] == list(FAILED)
    assert "truncated" in errors[0] and "cut.dcm" in errors[0]
    assert "not a DICOM file" in errors[1]

    # every clip's results as `analyze CLIP --out` gives them (wall-clock aside)
    results = outputs(out)
    assert set(results) == set(CLIPS) - set(FAILED)
    for job in discover([archive]).jobs:
        stem = job.name.rsplit("-", 1)[0]
        if stem not in FAILED:
            assert results[stem] == reference(job.path, tmp_path / f"{stem}.jsonl"), stem
    assert [r["kind"] for r in results["series"]] == ["start"] + ["result"] * 5 + ["end"]
    assert [r["kind"] for r in results["nan"]][1:-1] == ["result", "result", "error", "result"]

    entries = index(out)
    assert {k: e["status"] for k, e in entries.items()} == {
        k: "error" if k in FAILED else "done" for k in CLIPS}
    assert entries["a"]["frames"] == 6 and entries["a"]["threads"] == 1
    assert entries["a"]["digest"].startswith("sha256:") and entries["a"]["output"]
    assert entries["cut"]["output"] is None and "truncated" in entries["cut"]["error"]

    # the table: every clip, one row each here (no app runs, no beats), failures with errors
    with open(out / "study.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == list(TABLE_COLUMNS)
    assert [r["clip"].rsplit("-", 1)[0] for r in rows] == sorted(CLIPS)
    by_clip = {r["clip"].rsplit("-", 1)[0]: r for r in rows}
    assert by_clip["a"]["app"] == "none" and by_clip["a"]["stream"].startswith("clip-")
    assert by_clip["noise"]["status"] == "error" and by_clip["noise"]["error"]

    # a rerun skips what is done and retries the failures
    finished = {k: e["finished"] for k, e in entries.items()}
    (archive / "echo" / "cut.dcm").write_bytes((archive / "echo" / "cine.dcm").read_bytes())
    assert study([archive], out) == 1  # noise.dcm is still noise
    event = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert (event["skipped"], event["ran"], event["done"], event["failed"]) == (5, 2, 1, 1)
    entries = index(out)
    assert entries["cut"]["status"] == "done"
    assert all(entries[k]["finished"] == finished[k] for k in CLIPS if k not in FAILED)
    assert len((out / "index.jsonl").read_text().splitlines()) == 7  # one line per input

    # a changed clip is analysed again, an unchanged but touched one is not
    npz_clip(archive / "echo" / "a.npz", 7, 11)
    (archive / "echo" / "deep" / "b.npz").touch()
    study([archive], out)
    event = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert (event["skipped"], event["ran"]) == (5, 2)  # a.npz and the noise again
    assert index(out)["a"]["frames"] == 7

    # other settings: refused, naming the setting, before anything runs
    assert study([archive], out, "--t0-ns", "5") == 2
    err = capsys.readouterr().err
    assert "analysed with other settings" in err and "t0_ns" in err


def test_worker_processes_give_the_results_of_one_process(archive, tmp_path, capsys):
    one, two = tmp_path / "one", tmp_path / "two"
    assert study([archive], one) == 1
    assert study([archive], two, "--workers", "2") == 1
    event = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert (event["mode"], event["workers"], event["done"], event["failed"]) == \
        ("processes", 2, 5, 2)
    assert outputs(two) == outputs(one)
    assert (two / "errors.txt").read_text() == (one / "errors.txt").read_text()
    assert all(e["worker"].rsplit(":", 1)[1] != str(os.getpid())  # not this process
               for e in index(two).values())


def test_ray_actors_give_the_results_of_one_process(archive, tmp_path, capsys):
    pytest.importorskip("ray", reason="Ray is the optional extra cardiostream[ray]")
    one, ray_out = tmp_path / "one", tmp_path / "ray"
    assert study([archive], one) == 1
    assert study([archive], ray_out, "--workers", "2", "--ray") == 1
    event = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert (event["mode"], event["workers"], event["done"], event["failed"]) == \
        ("ray", 2, 5, 2)
    assert outputs(ray_out) == outputs(one)
    assert (ray_out / "errors.txt").read_text() == (one / "errors.txt").read_text()


def test_one_clip_options_and_archive_options_are_refused_where_they_do_not_apply(
        archive, tmp_path, capsys):
    clip = archive / "echo" / "a.npz"
    assert study([clip], tmp_path / "s", "--stream", "x") == 2
    assert "--stream" in capsys.readouterr().err
    assert main(["analyze", str(clip), "--out", str(tmp_path / "r.jsonl"), "--workers", "2",
                 *OPTIONS]) == 2
    assert "--out-dir" in capsys.readouterr().err
    with pytest.raises(SystemExit) as stop:  # argparse: one of --out and --out-dir
        main(["analyze", str(clip), "--out", "r.jsonl", "--out-dir", "d"])
    assert stop.value.code == 2
    assert study([archive / "notes.txt"], tmp_path / "s") == 2
    assert "no clips found" in capsys.readouterr().err


def test_ray_missing_says_which_extra_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(StudyError, match=r"pip install 'cardiostream\[ray\]'"):
        import_ray()


# ---------------------------------------------------------------------------------------
# the study table


def test_table_rows_take_each_apps_beat_fields_and_a_stacks_volumes_and_msi(tmp_path):
    """Beat lines as the apps write them: an echo beat, an MR stack's slice beats (the
    last completing the stack, its wall_motion right after) and a velocity cycle."""
    lines = [
        {"v": 1, "kind": "start", "stream": "e", "meta": {"app": {"name": "echo"}}},
        {"v": 1, "kind": "result", "stream": "e", "seq": 0, "app": "echo"},
        {"v": 1, "kind": "beat", "stream": "e", "beat": 0, "ed_seq": 3, "es_seq": 17,
         "peak_gls_pct": -19.2, "quality": "good", "measurable_fraction": 1.0,
         "regional_peak_pct": {"basal_septal": -15.5, "apical_lateral": -22.0}},
        {"v": 1, "kind": "start", "stream": "s/slice-0", "meta": {}},
        {"v": 1, "kind": "result", "stream": "s/slice-0", "seq": 0, "app": "mr-sax"},
        {"v": 1, "kind": "beat", "stream": "s/slice-0", "beat": 0, "ed_seq": 0,
         "peak_circumferential_strain_pct": -18.0, "peak_radial_strain_pct": 30.5,
         "aha_level": "mid", "quality": "fair", "stack": None},
        {"v": 1, "kind": "beat", "stream": "s/slice-1", "beat": 0, "ed_seq": 0,
         "peak_circumferential_strain_pct": -17.0, "quality": "good",
         "stack": {"stack_id": "abc", "edv_ml": 120.5, "esv_ml": 50.0, "ef_pct": 58.5,
                   "mass_g": 101.0}},
        {"v": 1, "kind": "wall_motion", "stream": "s", "beat": 0, "stack_id": "abc",
         "msi": 1.25},
        {"v": 1, "kind": "beat", "stream": "v", "beat": 0, "quality": "good",
         "peak_systolic_radial_velocity_cm_s": 3.5,
         "peak_late_diastolic_longitudinal_velocity_cm_s": -2.25},
    ]
    path = tmp_path / "r.jsonl"
    path.write_text("".join(json.dumps(line, separators=(",", ":")) + "\n" for line in lines))
    rows = clip_rows(path)
    assert [(r["stream"], r["app"], r["beat"]) for r in rows] == [
        ("e", "echo", 0), ("s/slice-0", "mr-sax", 0), ("s/slice-1", None, 0), ("v", None, 0)]
    echo, sax0, sax1, velocity = rows
    assert (echo["peak_gls_pct"], echo["regional_peak_basal_septal_pct"],
            echo["regional_peak_apical_lateral_pct"], echo["es_seq"]) == (-19.2, -15.5, -22.0, 17)
    assert (sax0["peak_radial_strain_pct"], sax0["aha_level"], "edv_ml" in sax0) == \
        (30.5, "mid", False)
    assert (sax1["edv_ml"], sax1["esv_ml"], sax1["ef_pct"], sax1["mass_g"], sax1["msi"]) == \
        (120.5, 50.0, 58.5, 101.0, 1.25)
    assert velocity["peak_late_diastolic_longitudinal_velocity_cm_s"] == -2.25
    assert set().union(*rows) - {"_stack_id"} <= set(TABLE_COLUMNS)


def test_each_clip_meets_fresh_app_state_on_the_same_engines():
    """The MR app gathers a stack's slices across streams; a worker gives the next clip a
    fresh app on the same engines, so a stack analysed again (one series in two folders)
    does not meet the slices of the first."""
    from types import SimpleNamespace

    from streamer.apps import APPS, Analysis
    from streamer.study import fresh_analysis

    engine = SimpleNamespace(spec=SimpleNamespace(size=(256, 256)))  # never called here
    used = Analysis({"mr-sax": APPS["mr-sax"](None, {"mr": engine})})
    assert used.apps["mr-sax"].stacks.add("stack", 2, SimpleNamespace(slice_index=0)) is None
    fresh = fresh_analysis(used).apps["mr-sax"]
    assert fresh is not used.apps["mr-sax"] and fresh.engines["mr"] is engine
    assert fresh.config is used.apps["mr-sax"].config
    assert fresh.stacks.add("stack", 2, SimpleNamespace(slice_index=1)) is None  # no slice 0
    assert len(used.apps["mr-sax"].stacks.add("stack", 2, SimpleNamespace(slice_index=1))) == 2
