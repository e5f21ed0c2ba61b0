"""bench/noncardiac_echo.py (issue 12, acceptance 3): it counts gated frames and published GLS
as the echo app reports them, fails a clip the app analyses, and reports unreadable files."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest


@pytest.fixture(scope="module")
def bench(bench_module):
    return bench_module("noncardiac_echo")


@pytest.fixture(scope="module")
def analysis():
    from streamer.apps import AnalysisConfig, build_analysis

    return build_analysis(AnalysisConfig(app="echo"))


def outcome(label, p=0.9, analyse=False, gls=None):
    return SimpleNamespace(values={"view": {"label": label, "p": p}, "analyse": analyse,
                                   "gls_pct": gls}, flags=[] if analyse else ["not_a4c"])


def test_count_on_made_up_outcomes(bench):
    gated = [outcome("psax")] * 8 + [outcome("unknown", analyse=True)]  # gate off: unknown
    figures = bench.count([*gated, outcome("a4c", 0.95, analyse=True, gls=-12.0)], [])
    assert figures["frames_analysed"] == 2
    assert figures["unknown_or_gated"] == 9 and figures["unknown_or_gated_share"] == 0.9
    assert figures["views"] == {"psax": 8, "unknown": 1, "a4c": 1}
    assert figures["view_p_max"]["a4c"] == 0.95
    assert figures["gls_published_frames"] == 1 and not figures["passed"]
    # the same without the published number passes (exactly 90 %) ...
    quiet = [*gated, outcome("a4c", 0.95, analyse=True)]
    assert bench.count(quiet, [])["passed"]
    # ... unless a beat publishes a peak GLS, or one more frame goes on (80 %)
    beats = [{"beat": 0, "peak_gls_pct": -15.0}, {"beat": 1, "peak_gls_pct": None}]
    with_beat = bench.count(quiet, beats)
    assert with_beat["gls_published_beats"] == 1 and with_beat["beats"] == 2
    assert not with_beat["passed"]
    more = bench.count([*gated[1:], *[outcome("a4c", 0.95, analyse=True)] * 2], [])
    assert more["unknown_or_gated_share"] == 0.8 and not more["passed"]


def test_noise_clip(bench):
    for kind in ("uniform", "rayleigh"):
        clip = bench.noise_clip(kind)
        assert clip.shape == (30, 256, 256) and clip.dtype == np.uint8
        assert np.array_equal(clip, bench.noise_clip(kind))  # seeded
        assert not np.array_equal(clip[0], clip[1])           # every frame new noise
    assert abs(bench.noise_clip("uniform").mean() - 127.5) < 1
    with pytest.raises(ValueError):
        bench.noise_clip("pink")


def test_an_a4c_phantom_the_app_analyses_fails(bench, analysis, tmp_path):
    from calib.datasets import random_echo_config
    from calib.echo import make_echo_clip

    clip = make_echo_clip(random_echo_config(2_000_101, view="a4c", rows=256, cols=256,
                                             frames=12, fps=50.0, start_phase=0.0))
    frames = np.asarray(clip.frames)
    sent, outcomes, beats = bench.run_frames(analysis, "a4c_phantom", frames,
                                             tuple(clip.spacing_mm), 50.0, tmp_path)
    assert len(sent) == len(outcomes) == 12
    assert all(np.array_equal(a, b) for a, b in zip(sent, frames))  # the frames, unchanged
    figures = bench.count(outcomes, beats)
    gls = [o.values["gls_pct"] for o in outcomes]
    assert figures["frames_analysed"] == sum("not_a4c" not in o.flags for o in outcomes) > 6
    assert figures["gls_published_frames"] == sum(g is not None for g in gls) > 0
    assert figures["unknown_or_gated_share"] < 0.5 and not figures["passed"]


def test_noise_and_a_pelvis_file_through_main(bench, tmp_path):
    out = tmp_path / "n.json"
    assert bench.main(["--clips", "noise_uniform", "gdcm-US-ALOKA-16.dcm",
                       "--out", str(out)]) == 0
    record = json.loads(out.read_text())
    rows = {r["clip"]: r for r in record["runs"]}
    assert list(rows) == ["gdcm-US-ALOKA-16.dcm", "noise_uniform"]
    assert rows["gdcm-US-ALOKA-16.dcm"]["frames_read"] == 1
    assert rows["gdcm-US-ALOKA-16.dcm"]["shape"] == [480, 640, 3]     # palette -> RGB
    assert rows["gdcm-US-ALOKA-16.dcm"]["assumed"] == ["fps"]         # spacing from regions
    assert rows["noise_uniform"]["frames_read"] == 30
    assert rows["noise_uniform"]["assumed"] == ["spacing_mm", "fps"]
    for row in rows.values():
        n = row["frames_read"]
        assert row["frames_sent"] == n == len(row["flags"]) == len(row["view_p"])
        assert sum(row["views"].values()) == n
        gated = sum("not_a4c" in flags for flags in row["flags"])
        assert row["frames_analysed"] == n - gated
        assert gated <= row["unknown_or_gated"] <= gated + row["views"].get("unknown", 0)
        assert row["passed"] == (row["unknown_or_gated_share"] >= 0.9
                                 and row["gls_published_frames"] == 0
                                 and row["gls_published_beats"] == 0)
    assert record["passed"] == all(r["passed"] for r in record["runs"] if r["judged"])


def test_an_unreadable_file_is_a_failed_row_not_a_crash(bench, tmp_path, monkeypatch):
    broken = tmp_path / "broken.dcm"  # a real file cut inside its header
    broken.write_bytes(bench.pydicom_file("OBXXXX1A.dcm").read_bytes()[:600])
    cases = (bench.Case("broken.dcm", "test"), bench.Case("missing.dcm", "test"),
             bench.Case("noise_rayleigh", "noise", noise="rayleigh"))
    monkeypatch.setattr(bench, "CASES", cases)
    real = bench.pydicom_file
    monkeypatch.setattr(bench, "pydicom_file",
                        lambda name: broken if name == "broken.dcm" else real(name))
    out = tmp_path / "n.json"
    assert bench.main(["--clips", "broken.dcm", "missing.dcm", "--out", str(out)]) == 0
    record = json.loads(out.read_text())
    assert [r["clip"] for r in record["runs"]] == ["broken.dcm", "missing.dcm"]
    assert "ClipError" in record["runs"][0]["error"]
    assert "FileNotFoundError" in record["runs"][1]["error"]
    assert all(r["frames_read"] == 0 and not r["passed"] for r in record["runs"])
    assert not record["passed"]
