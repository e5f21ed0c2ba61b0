"""`cardiostream engines build|check|train`: help, output, JSON, and exit 2 on user errors."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
import torch

from engines import cli
from engines.backends import onnx_export

pytestmark = pytest.mark.usefixtures("engine_cache")


def run(argv, capsys, read_frames=None):
    parser = argparse.ArgumentParser(prog="cardiostream")
    sub = parser.add_subparsers(dest="command", required=True)
    cli.add_engines_parser(sub, read_frames=read_frames)
    try:
        args = parser.parse_args(argv)
        code = args.func(args)
    except SystemExit as exc:
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("argv", [["engines", "--help"], ["engines", "build", "--help"],
                                  ["engines", "check", "--help"], ["engines", "train", "--help"]])
def test_help(argv, capsys):
    code, out, _ = run(argv, capsys)
    assert code == 0 and "usage:" in out
    if argv[1] == "build":
        assert "--weights ROLE=PATH" in out and "--precision" in out
    if argv[1] == "check":
        assert "--iterations" in out and "tolerance" in out


@pytest.mark.parametrize("argv, message", [
    (["engines", "check", "--roles", "seg,lv"], "unknown role 'lv'"),
    (["engines", "check", "--backends", "tflite"], "unknown backend 'tflite'"),
    (["engines", "build", "--backend", "tflite"], "invalid choice: 'tflite'"),
    (["engines", "build", "--weights", "seg=/nonexistent/w.pt"], "/nonexistent/w.pt: no such file"),
    (["engines", "build", "--weights", "seg"], "ROLE=PATH"),
    (["engines", "check", "--iterations", "0"], "positive integer"),
])
def test_user_errors_exit_2_without_traceback(argv, message, capsys):
    code, _, err = run(argv, capsys)
    assert code == 2 and message in err and "Traceback" not in err


def test_unusable_weights_file_exits_2_naming_it(tmp_path, capsys):
    bad = tmp_path / "broken.pt"
    bad.write_bytes(b"PK\x03\x04 not really a zip")
    code, _, err = run(["engines", "build", "--roles", "view", "--backend", "onnxruntime",
                        "--weights", f"view={bad}"], capsys)
    assert code == 2 and "broken.pt: truncated or corrupt" in err and "Traceback" not in err


def test_unavailable_backend_exits_2_with_reason(capsys, monkeypatch):
    from engines.backends import tensorrt_backend

    monkeypatch.setattr(tensorrt_backend, "unavailable", lambda device=None: "backend 'tensorrt' needs X")
    code, _, err = run(["engines", "build", "--roles", "view", "--backend", "tensorrt"], capsys)
    assert code == 2 and "backend 'tensorrt' needs X" in err


def test_check_prints_table_and_json(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(onnx_export, "exporter_for", lambda source: "legacy")  # faster; see test_backends
    out_json = tmp_path / "check.json"
    code, out, _ = run(["engines", "check", "--toy", "--roles", "view", "--inputs", "random",
                        "--iterations", "2", "--n-inputs", "2", "--backends", "torch,onnxruntime,tensorrt",
                        "--json", str(out_json)], capsys)
    assert code == 0, out
    assert "median ms" in out and "onnxruntime" in out
    rows = json.loads(out_json.read_text())["rows"]
    ort = next(r for r in rows if r["backend"] == "onnxruntime")
    assert ort["ok"] and ort["max_abs_diff"] < 1e-4 and ort["median_ms"] > 0
    trt = next(r for r in rows if r["backend"] == "tensorrt")
    if not (torch.cuda.is_available() and trt["status"] != "unavailable"):
        assert trt["status"] == "unavailable" and "tensorrt" in trt["reason"]


def test_build_then_from_cache_with_own_weights(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(onnx_export, "exporter_for", lambda source: "legacy")
    from engines import nets

    model = nets.build("view")
    path = tmp_path / "view_mine.pt"
    torch.save(model.state_dict(), path)
    argv = ["engines", "build", "--roles", "view", "--backend", "onnxruntime", "--weights", f"view={path}",
            "--json", str(tmp_path / "b.json")]
    code, out, err = run(argv, capsys)
    assert code == 0, err
    assert "view  onnxruntime  fp32  built" in out and "view_mine.pt" in out
    code, out, _ = run(argv, capsys)
    assert code == 0 and "from cache" in out
    assert json.loads((tmp_path / "b.json").read_text())["engines"][0]["state"] == "from cache"


def test_train_hands_the_rest_of_the_line_to_the_role_trainer(capsys):
    """The trainer (and torch) is imported only for `engines train ROLE`; its own parser
    reads the options."""
    code, out, _ = run(["engines", "train", "seg", "--help"], capsys)
    assert code == 0 and "--epochs" in out and "--threads" in out
    code, _, err = run(["engines", "train", "view", "--epochs", "-x"], capsys)
    assert code == 2 and "--epochs" in err


def test_train_records_the_same_arguments_as_the_trainers_own_entry_point(capsys, monkeypatch):
    """A weights record's arguments do not depend on how the run was started:
    `cardiostream engines train view ...` and `python -m engines.train.view view ...`."""
    from engines.train import common, view

    seen = []
    monkeypatch.setattr(view, "run", lambda args: seen.append(args) or 0)
    line = ["--epochs", "3", "--seed", "7"]
    assert run(["engines", "train", "view", *line], capsys)[0] == 0
    assert view.main(["view", *line]) == 0
    via_cli, via_module = (common.record_header(a, "view")["arguments"] for a in seen)
    assert via_cli == via_module and via_cli["role"] == "view"


def test_calibration_clip_is_read_by_the_callers_reader(tmp_path, capsys, monkeypatch):
    """The engines read no clips: ``--calibration-clip`` goes through the ``read_frames``
    the caller registered (streamer.cli passes streamer.io.clips.read_frames)."""
    monkeypatch.setattr(onnx_export, "exporter_for", lambda source: "legacy")
    calls = []

    def read_frames(path):
        calls.append(path)
        return list((np.random.default_rng(0).random((6, 40, 50)) * 255).astype(np.uint8))

    argv = ["engines", "check", "--toy", "--roles", "seg", "--backends", "onnxruntime",
            "--precisions", "int8", "--inputs", "random", "--iterations", "1", "--n-inputs", "1",
            "--calibration-clip", str(tmp_path / "rec.npz")]
    code, out, err = run(argv, capsys, read_frames=read_frames)
    assert code == 0, err
    assert calls == [tmp_path / "rec.npz"] and "int8" in out

    def broken(path):
        raise RuntimeError(f"{path}: not a clip")

    code, _, err = run(argv, capsys, read_frames=broken)
    assert code == 2 and "rec.npz: not a clip" in err and "Traceback" not in err
    code, _, err = run(argv, capsys)  # registered without a reader: no such option
    assert code == 2 and "--calibration-clip" in err
