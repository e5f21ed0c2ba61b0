"""The cardiostream command: every subcommand as a user runs it, over real sockets and files."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from pydicom.data import get_testdata_file

from streamer.cli import build_parser
from streamer.io.clips import open_clip
from streamer.io.protocol import decode
from streamer.io.recording import iter_records
from streamer.io.sockets import ResultSubscriber, SubscriberConfig

CLI = [sys.executable, "-m", "streamer"]


def run(*args, timeout=120) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *map(str, args)], capture_output=True, text=True,
                          timeout=timeout)


def test_every_command_explains_itself():
    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices
    assert {"serve", "replay", "record", "analyze", "demo"} <= set(commands)
    for name, sub in commands.items():
        text = sub.format_help()
        assert len(text) > 200, name
    assert "--lossless" in commands["serve"].format_help()


@pytest.mark.parametrize("name,frames,shape,fps", [
    ("examples_ybr_color.dcm", 30, (240, 320, 3), 30.0),
    ("color3d_jpeg_baseline.dcm", 120, (480, 640, 3), 30.0),
])
def test_real_echo_dicom_replays_end_to_end(serve, name, frames, shape, fps):
    path = Path(get_testdata_file(name))
    with open_clip(path) as reader:  # what the file says
        assert reader.info.n_frames == frames and reader.info.shape == shape
        assert reader.info.fps == pytest.approx(fps, rel=1e-3)
        assert reader.info.metadata["frame_time_ms"] == pytest.approx(33.333, abs=1e-3)
    sidecar = serve("--lossless")
    with ResultSubscriber(SubscriberConfig(sidecar.ready["publish"])) as subscriber:
        sent = run("replay", path, "--to", sidecar.ready["ingest"], "--max-rate", "--quiet")
        assert sent.returncode == 0, sent.stderr
        messages = list(subscriber.iter_until_end(timeout_s=60))
    start, results = messages[0], [m for m in messages if m.kind == "result"]
    assert start.kind == "start" and start.meta["shape"] == list(shape)
    assert start.meta["fps"] == pytest.approx(fps, rel=1e-3)
    assert [r.seq for r in results] == list(range(frames))
    assert messages[-1].meta["processed"] == frames


def test_record_listen_then_replay_the_recording_with_its_timing(serve, npz_clip, tmp_path):
    recording = tmp_path / "scan.csrec"
    recorder = subprocess.Popen([*CLI, "record", "--listen", "tcp://127.0.0.1:*",
                                 "--out", str(recording), "--until-end"],
                                stdout=subprocess.PIPE, text=True)
    # the recorder binds a free port and says where, as a JSON event on stdout
    event = json.loads(recorder.stdout.readline())
    assert event["event"] == "recording"
    endpoint = event["endpoint"]
    sent = run("replay", npz_clip, "--to", endpoint, "--fps", "25", "--quiet")
    assert sent.returncode == 0, sent.stderr
    out, _ = recorder.communicate(timeout=30)
    assert recorder.returncode == 0
    event = json.loads(out.strip().splitlines()[-1])
    assert event["messages"] == {"start": 1, "frame": 12, "end": 1}
    # the recording replays with its original timing (~40 ms apart) into a side-car
    with open_clip(recording) as clip:
        times = [f.t_s for f in clip]
    assert np.median(np.diff(times)) == pytest.approx(0.04, abs=0.01)
    sidecar = serve("--lossless", "--analysis", "none")
    with ResultSubscriber(SubscriberConfig(sidecar.ready["publish"])) as subscriber:
        resent = run("replay", recording, "--to", sidecar.ready["ingest"], "--quiet")
        assert resent.returncode == 0, resent.stderr
        results = [m for m in subscriber.iter_until_end() if m.kind == "result"]
    assert len(results) == 12
    gaps = np.diff([r.t_recv_ns for r in results]) / 1e6
    assert np.median(gaps) == pytest.approx(40, abs=10)


def test_record_from_a_sidecar_keeps_frames_and_results(serve, npz_clip, tmp_path):
    sidecar = serve("--lossless", "--republish-frames", "--analysis", "none")
    out = tmp_path / "results.csrec"
    recorder = subprocess.Popen([*CLI, "record", "--from", sidecar.ready["publish"],
                                 "--out", str(out), "--until-end"],
                                stdout=subprocess.PIPE, text=True)
    # "recording" is printed once the side-car's hello arrived: subscribed, nothing missed
    assert json.loads(recorder.stdout.readline())["event"] == "recording"
    sent = run("replay", npz_clip, "--to", sidecar.ready["ingest"], "--max-rate", "--quiet")
    assert sent.returncode == 0
    recorder.communicate(timeout=30)
    assert recorder.returncode == 0
    kinds = [decode(r.parts).kind for r in iter_records(out)]
    assert kinds[0] == "start" and kinds.count("start") == 1 and kinds[-1] == "end"
    assert kinds.count("frame") == 12 and kinds.count("result") == 12
    assert kinds.index("frame") < kinds.index("result")  # each frame before its result
    with open_clip(out) as clip:  # and the recording replays as a clip
        assert clip.info.n_frames == 12 and len(list(clip)) == 12


def test_analyze_writes_json_lines(npz_clip, tmp_path):
    out = tmp_path / "r.jsonl"
    done = run("analyze", npz_clip, "--out", out, "--no-progress", "--analysis", "none")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["results"] == 12
    assert len(out.read_text().splitlines()) == 14


def test_what_a_reader_warns_of_reaches_the_user(tmp_path):
    """A clip whose reader warns (here: frames in Fortran order, read whole): analyze and
    replay log the warning, naming the file."""
    clip = tmp_path / "fortran.npz"
    frames = np.asfortranarray(np.zeros((3, 16, 16), np.uint8))
    np.savez(clip, frames=frames, spacing_mm=np.array([0.3, 0.3]), fps=np.array(30.0),
             modality=np.array("US"))
    done = run("analyze", clip, "--out", tmp_path / "r.jsonl", "--no-progress", "--analysis", "none")
    assert done.returncode == 0, done.stderr
    assert "fortran.npz: frames are stored in Fortran order" in done.stderr
    nobody = run("replay", clip, "--to", "tcp://127.0.0.1:9", "--connect-timeout-s", "0.2", "--quiet")
    assert "fortran.npz: frames are stored in Fortran order" in nobody.stderr


def test_truncated_and_missing_clips_are_clear_cli_errors(tmp_path, npz_clip):
    dicom = Path(get_testdata_file("examples_ybr_color.dcm")).read_bytes()
    cut = tmp_path / "cut.dcm"
    cut.write_bytes(dicom[: len(dicom) // 2])
    for args in (["analyze", cut, "--out", tmp_path / "x.jsonl", "--no-progress"],
                 ["replay", cut, "--to", "tcp://127.0.0.1:9", "--quiet"]):
        done = run(*args)
        assert done.returncode == 2
        assert "cut.dcm" in done.stderr and "truncated" in done.stderr, done.stderr
        assert "Traceback" not in done.stderr
    missing = run("analyze", tmp_path / "nope.dcm", "--out", tmp_path / "x.jsonl")
    assert missing.returncode == 2 and "nope.dcm" in missing.stderr
    nobody = run("replay", npz_clip, "--to", "tcp://127.0.0.1:9", "--connect-timeout-s", "0.5",
                 "--quiet")
    assert nobody.returncode == 2 and "no peer answered at tcp://127.0.0.1:9" in nobody.stderr


def test_serve_on_a_taken_port_says_so(serve):
    sidecar = serve("--analysis", "none")
    done = run("serve", "--ingest", sidecar.ready["ingest"], "--publish", "tcp://127.0.0.1:*",
               "--analysis", "none", timeout=30)
    assert done.returncode == 2 and "cannot bind" in done.stderr


def test_bad_user_weights_and_missing_backends_are_clear_cli_errors(npz_clip, tmp_path):
    seg = Path(__file__).resolve().parents[1] / "engines" / "weights" / "seg.pt"
    cut = tmp_path / "cut.pt"
    cut.write_bytes(seg.read_bytes()[:1000])
    cases = [
        (["--weights", f"seg={cut}"], "cut.pt: truncated or corrupt"),
        (["--weights", f"flow={seg}"], "seg.pt: the state dict does not fit the flow network"),
        (["--weights", "heart=x.pt"], "expected ROLE=PATH with ROLE one of view, seg, flow"),
    ]
    from engines.backends import backend_status

    if backend_status()["tensorrt"] is not None:  # where TensorRT cannot run, say why
        cases.append((["--backend", "tensorrt"], "backend 'tensorrt' needs"))
    for extra, message in cases:
        done = run("analyze", npz_clip, "--out", tmp_path / "x.jsonl", "--no-progress", *extra)
        assert done.returncode == 2 and message in done.stderr, (extra, done.stderr)
        assert "Traceback" not in done.stderr


def test_stack_options_explain_themselves_and_slice_with_stack_is_refused(
        write_nifti_stack, tmp_path, capsys):
    from streamer.cli import main

    commands = build_parser()._subparsers._group_actions[0].choices
    for name in ("replay", "analyze"):
        text = " ".join(commands[name].format_help().split())
        assert "--stack" in text and "NAME/slice-K" in text and "3-D NIfTI" in text, name
    path = write_nifti_stack(tmp_path / "sax.nii", np.zeros((6, 5, 2, 3), np.int16),
                             (1.5, 1.25, 8.0, 40.0))
    assert main(["analyze", str(path), "--slice", "1", "--stack", "--out",
                 str(tmp_path / "x.jsonl"), "--no-progress"]) == 2
    assert "sax.nii: a slice index reads one slice as a clip" in capsys.readouterr().err
