"""`cardiostream bench compare`: two latency reports side by side; bad inputs exit 2."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from streamer.bench import main
from streamer.bench.latency import SCHEMA


def _stats(p50: float) -> dict:
    return {"n": 100, "p50": p50, "p95": p50 * 1.5, "p99": p50 * 2, "max": p50 * 3,
            "mean": p50 * 1.1}


def _report(scale: float, backend: str, cpu: str, modes=("sockets", "in-process"),
            extra_key: str | None = None) -> dict:
    runs = {}
    for mode in modes:
        latency = {"decode": _stats(0.1 * scale), "segment": _stats(8 * scale),
                   "flow": _stats(14 * scale), "total": _stats(25 * scale)}
        if extra_key:
            latency[extra_key] = _stats(1.0)
        measured = {"send_to_receive": _stats(27 * scale)} if mode == "sockets" else {}
        runs[mode] = {
            "transport": mode, "mode": "live" if mode == "sockets" else "in-process",
            "backends": {"segment": f"{backend}/fp32", "flow": f"{backend}/fp32"},
            "frames": {"sent": 330, "warmup": 30, "timed": 300, "results": 320,
                       "results_timed": 290, "errors": 0, "dropped": 10},
            "end_counts": {"processed": 320, "dropped": 10, "stale": 0, "errors": 0},
            "throughput_fps": 40.0 / scale, "latency_ms": latency, "measured_ms": measured,
        }
    return {"schema": SCHEMA, "created_utc": "2026-01-01T00:00:00Z",
            "command": f"cardiostream bench latency --backend {backend}",
            "git_commit": "abc1234",
            "machine": {"cpu": cpu, "cpus": 2, "cpus_usable": 2, "python": "3.11.7",
                        "platform": "Linux", "hostname": "box"},
            "settings": {}, "clip": {}, "runs": runs}


@pytest.fixture
def reports(tmp_path):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps(_report(1.0, "openvino", "Xeon A")))
    b.write_text(json.dumps(_report(0.5, "onnxruntime", "Xeon B", extra_key="publish")))
    return a, b


def test_compare_prints_both_reports_and_the_ratios(reports, tmp_path, capsys):
    a, b = reports
    out = tmp_path / "cmp.json"
    assert main(["compare", str(a), str(b), "--json", str(out)]) == 0
    table = capsys.readouterr().out
    assert "== sockets ==" in table and "== in-process ==" in table
    rows = {line.split()[0]: line.split() for line in table.splitlines()
            if line.split() and line.split()[0] in ("segment", "flow", "publish")}
    # A p50 p95 p99, B p50 p95 p99, B/A p50 p95 p99
    assert rows["flow"][1:] == ["14.00", "21.00", "28.00", "7.00", "10.50", "14.00",
                                "0.50", "0.50", "0.50"]
    assert rows["publish"][1:4] == ["-", "-", "-"] and rows["publish"][-3:] == ["-"] * 3
    assert "send_to_receive (bench)" in table
    assert "throughput results/s: A 40.0  B 80.0  B/A 2.00" in table
    assert "frames A: sent 330, results 320, dropped 10, stale 0, errors 0" in table
    assert "backends A: segment openvino/fp32, flow openvino/fp32" in table
    assert "backends B: segment onnxruntime/fp32" in table
    assert "machine A: Xeon A" in table and "machine B: Xeon B" in table
    comparison = json.loads(out.read_text())
    assert comparison["schema"] == "cardiostream-bench-compare/1"
    flow = comparison["modes"]["sockets"]["latency_ms"]["flow"]
    assert flow["ratio"] == {"p50": 0.5, "p95": 0.5, "p99": 0.5}
    assert flow["a"] == {"n": 100, "p50": 14.0, "p95": 21.0, "p99": 28.0}
    assert comparison["modes"]["in-process"]["latency_ms"]["publish"]["a"] is None
    assert comparison["modes"]["sockets"]["throughput_fps"]["ratio"] == 2.0


def test_compare_only_the_modes_in_both(tmp_path, capsys):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps(_report(1.0, "openvino", "X", modes=("sockets", "in-process"))))
    b.write_text(json.dumps(_report(2.0, "openvino", "X", modes=("in-process",))))
    assert main(["compare", str(a), str(b)]) == 0
    table = capsys.readouterr().out
    assert "== in-process ==" in table and "== sockets ==" not in table
    assert "(only in A, not compared: sockets)" in table


def _bad(tmp_path, name: str, text: str | bytes):
    path = tmp_path / name
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return path


@pytest.mark.parametrize("make, message", [
    (lambda d: d / "missing.json", "missing.json: no such file"),
    (lambda d: _bad(d, "broken.json", "{not json"), "broken.json: not JSON"),
    (lambda d: _bad(d, "plot.png", b"\x89PNG\r\n\x1a\n\x00\xff"), "plot.png: not JSON"),
    (lambda d: _bad(d, "list.json", "[1, 2]"), "not a cardiostream-bench-latency/1 report"),
    (lambda d: _bad(d, "other.json", json.dumps({"schema": "something/2", "runs": {}})),
     "not a cardiostream-bench-latency/1 report (schema 'something/2')"),
    (lambda d: _bad(d, "old.json", json.dumps({"benchmark": "latency (in-process pipeline)",
                                               "latency_ms": {}})),
     "old.json: not a cardiostream-bench-latency/1 report (no schema key)"),
    (lambda d: _bad(d, "norun.json", json.dumps(_report(1.0, "openvino", "X", modes=()))),
     "no transport mode in common"),
])
def test_bad_inputs_exit_2_with_one_clear_line(reports, tmp_path, capsys, make, message):
    good, _ = reports
    bad = make(tmp_path)
    assert main(["compare", str(good), str(bad)]) == 2
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("cardiostream bench compare: error: ")
    assert message in err[0]
    assert captured.out == ""


def test_module_entry_point_exits_2_without_a_traceback(tmp_path):
    done = subprocess.run([sys.executable, "-m", "streamer.bench", "compare",
                           str(tmp_path / "a.json"), str(tmp_path / "b.json")],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert done.stderr.strip() == (f"cardiostream bench compare: error: "
                                   f"{tmp_path / 'a.json'}: no such file")
