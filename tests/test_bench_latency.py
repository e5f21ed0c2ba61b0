"""`cardiostream bench latency`: real side-car child on loopback, real pipeline in process."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from streamer.bench import main
from streamer.bench.latency import SCHEMA, accounting, count_flags, summarize

ROOT = Path(__file__).resolve().parents[1]
#: a small phantom keeps the runs short (the phantom is made in this process)
SMALL_PHANTOM = ["--phantom-size-px", "64", "--phantom-frames", "8"]
FEW_FRAMES = ["--frames", "40", "--warmup", "5", "--quiet"]


def _bench(tmp_path: Path, capsys, *args: str) -> tuple[dict, str]:
    out = tmp_path / "latency.json"
    rc = main(["latency", *args, "--out", str(out)])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    return json.loads(out.read_text()), captured.out


def _check_report(report: dict, modes: tuple[str, ...], sent: int) -> None:
    assert report["schema"] == SCHEMA
    assert tuple(report["runs"]) == modes
    assert report["command"].startswith("cardiostream bench latency ")
    assert report["machine"]["cpus"] >= 1 and report["machine"]["python"]
    assert report["created_utc"].endswith("Z")
    for run in report["runs"].values():
        frames = run["frames"]
        assert frames["sent"] == sent and frames["warmup"] == 5 and frames["timed"] == 40
        assert 0 < frames["results_timed"] <= frames["timed"]
        # every frame sent is processed, dropped, stale or an error, by the side-car's count
        end = run["end_counts"]
        assert run["accounted"] == {"ok": True, "sent": sent, "counted": sent, "missing": 0}
        assert end["processed"] + end["dropped"] + end.get("stale", 0) + end["errors"] == sent
        assert frames["results"] == end["processed"] and frames["errors"] == end["errors"]
        assert run["throughput_fps"] > 0 and run["window_s"] > 0
        stats = {**run["latency_ms"], **run["measured_ms"]}
        assert {"preprocess", "total", "start_age"} <= set(stats)
        for key, s in stats.items():
            assert s["n"] == frames["results_timed"], key
            assert 0 <= s["p50"] <= s["p95"] <= s["p99"] <= s["max"], (key, s)
            assert s["p50"] <= s["max"] and s["mean"] <= s["max"], (key, s)
        series = run["series"]
        assert len(series["seq"]) == len(series["t_s"]) == frames["results_timed"]
        assert min(series["seq"]) >= 5
        assert all(len(v) == frames["results_timed"] for v in series["latency_ms"].values())
        assert run["max_start_age_ms"] == stats["start_age"]["max"]


def _check_png(path: Path) -> None:
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size[0] > 600 and image.size[1] > 400


def test_in_process_without_networks_reports_every_frame(tmp_path, capsys):
    report, table = _bench(tmp_path, capsys, "--transport", "in-process", "--analysis",
                           "none", *SMALL_PHANTOM, *FEW_FRAMES)
    _check_report(report, ("in-process",), sent=45)
    run = report["runs"]["in-process"]
    assert run["mode"] == "in-process" and run["backends"] == {} and run["floors"] == {}
    assert run["flags"] == {"analysis_off": 40}
    assert report["clip"]["source"] == "phantom" and report["clip"]["view_hint"] == "a4c"
    assert "== in-process: 40 timed frames after 5 warm-up" in table
    assert "latency_ms" in table and "p99" in table
    assert "all 45 sent frames accounted for" in table
    _check_png(tmp_path / "latency.png")


def test_sockets_live_sidecar_on_loopback_accounts_for_every_frame(tmp_path, capsys, npz_clip):
    report, table = _bench(tmp_path, capsys, "--transport", "sockets", "--analysis", "none",
                           "--clip", str(npz_clip), *FEW_FRAMES, "--plot",
                           str(tmp_path / "plot.png"))
    _check_report(report, ("sockets",), sent=45)
    run = report["runs"]["sockets"]
    assert run["mode"] == "live" and run["sidecar"]["ready"]["mode"] == "live"
    assert run["sidecar"]["stopped"]["frames"] == 45  # the side-car's own count, at exit
    # the side-car's transport, and the bench's own send -> result received
    assert "transport" in run["latency_ms"] and "send_to_receive" in run["measured_ms"]
    assert (run["measured_ms"]["send_to_receive"]["p50"]
            >= run["latency_ms"]["total"]["p50"])
    assert report["clip"]["source"] == str(npz_clip) and report["clip"]["view_hint"] is None
    assert "== sockets: 40 timed frames after 5 warm-up, sent at 50 fps to a live side-car" \
        in table
    assert "send_to_receive (bench)" in table
    _check_png(tmp_path / "plot.png")
    assert not (tmp_path / "latency.png").exists()


def test_budget_options_reach_the_sidecar_and_the_processor(tmp_path, capsys, npz_clip):
    # a frame budget nothing runs over, and a stage budget every frame runs over
    report, table = _bench(tmp_path, capsys, "--analysis", "none", "--clip", str(npz_clip),
                           "--lossless", "--budget-ms", "5000", "--stage-budget",
                           "preprocess=0.0001", *FEW_FRAMES, "--no-plot")
    _check_report(report, ("sockets", "in-process"), sent=45)
    assert report["settings"]["budget_ms"] == 5000
    assert report["settings"]["stage_budget_ms"] == {"preprocess": 0.0001}
    for run in report["runs"].values():
        assert run["budget_last"]["budget_ms"] == 5000
        assert run["flags_detail"] == {"over_budget:preprocess": 40}
    assert report["runs"]["sockets"]["mode"] == "lossless"
    assert "over_budget:preprocess 40" in table
    assert not (tmp_path / "latency.png").exists()


def test_in_process_echo_pipeline_times_every_stage(tmp_path, capsys):
    report, table = _bench(tmp_path, capsys, "--transport", "in-process", "--frames", "20",
                           "--warmup", "3", "--phantom-frames", "12", "--quiet", "--no-plot")
    run = report["runs"]["in-process"]
    assert {"view", "segment", "flow", "track", "strain"} <= set(run["latency_ms"])
    # --app auto loads every app a modality routes to: echo's three networks and MR's one
    assert set(run["backends"]) == {"view", "segment", "flow", "mr_net"}
    assert run["accounted"]["ok"] and run["frames"]["results_timed"] == 20
    for key in ("view", "segment", "flow", "track", "strain"):
        s = run["latency_ms"][key]
        assert s["n"] == 20 and 0 < s["p50"] <= s["p95"] <= s["p99"] <= s["max"]
    assert "backends: view " in table
    # each echo network against its arithmetic floor (the MR network ran no frame: no p50)
    floors = run["floors"]
    assert set(floors) == {"view", "segment", "flow", "networks"}
    for stage in ("view", "segment", "flow"):
        f = floors[stage]
        assert f["gflop"] > 0 and f["p50_ms"] == run["latency_ms"][stage]["p50"]
        assert f["over_floor"] == pytest.approx(f["p50_ms"] / f["floor_ms"], rel=0.02)
    assert floors["networks"]["floor_ms"] == pytest.approx(
        sum(floors[s]["floor_ms"] for s in ("view", "segment", "flow")), rel=1e-3)
    assert "network floor" in table


@pytest.mark.filterwarnings("ignore:Invalid value for VR UI")
def test_an_mr_stack_slice_is_timed_through_the_mr_app(tmp_path, capsys, sunnybrook_series):
    report, table = _bench(tmp_path, capsys, "--app", "mr-sax", "--clip", str(sunnybrook_series),
                           "--slice", "5", "--transport", "in-process", "--frames", "12",
                           "--warmup", "2", "--quiet", "--no-plot")
    run = report["runs"]["in-process"]
    assert set(run["backends"]) == {"mr_net"}
    assert {"mr_net", "geometry", "track", "strain", "quality"} <= set(run["latency_ms"])
    assert run["accounted"]["ok"] and run["frames"]["results_timed"] == 12


def test_user_errors_exit_2_with_one_line(tmp_path, capsys):
    for args, message in (
            (["--stage-budget", "flow"], "--stage-budget 'flow': expected STAGE=MS"),
            (["--budget-ms", "-1"], "the frame budget must be > 0 ms"),
            (["--phantom-seed", "5"], "phantom seed 5 is not in the held-out test split"),
            (["--clip", str(tmp_path / "missing.dcm")], "missing.dcm: no such file"),
            (["--frames", "0"], "--frames must be >= 1")):
        rc = main(["latency", "--analysis", "none", *args, "--out", str(tmp_path / "x.json")])
        err = capsys.readouterr().err.strip().splitlines()
        assert rc == 2
        assert err[-1].startswith("cardiostream bench latency: error: ") and message in err[-1]
        assert not any("Traceback" in line for line in err)
    assert not (tmp_path / "x.json").exists()


def test_bench_latency_script_keeps_its_in_process_default(tmp_path):
    out = tmp_path / "old.json"
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "latency.py"), "--analysis", "none", "--size",
         "64", "--clip-frames", "6", "--frames", "10", "--quiet", "--out", str(out),
         "--no-plot"], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    report = json.loads(out.read_text())
    assert list(report["runs"]) == ["in-process"]
    assert report["settings"]["warmup"] == 20 and report["clip"]["view_hint"] is None
    assert report["clip"]["shape"] == [64, 64] and report["clip"]["n_frames"] == 6


def test_statistics_helpers():
    s = summarize([3.0, None, 1.0, 2.0, 10.0])
    assert s["n"] == 4 and s["p50"] == 2.5 and s["max"] == 10.0 and s["mean"] == 4.0
    assert s["p50"] <= s["p95"] <= s["p99"] <= s["max"]
    assert summarize([None]) == {"n": 0}
    by_name, detail = count_flags([["dropped:2", "over_budget", "over_budget:flow"],
                                   ["degraded:half_rate", "stale:1", "view_reused"],
                                   ["over_budget:flow", "analysis_skipped"]])
    assert by_name == {"analysis_skipped": 1, "degraded": 1, "dropped": 1, "over_budget": 3,
                       "stale": 1, "view_reused": 1}
    assert detail == {"degraded:half_rate": 1, "over_budget": 1, "over_budget:flow": 2}
    assert accounting(10, {"processed": 6, "dropped": 3, "stale": 1, "errors": 0})["ok"]
    assert accounting(10, {"processed": 6, "dropped": 3, "errors": 0})["missing"] == 1
    assert not accounting(10, None)["ok"]
