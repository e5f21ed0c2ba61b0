"""analyze: the side-car's pipeline in one process, JSON lines out."""

import json

import numpy as np

from streamer.analyze import analyze
from streamer.io.clips import open_clip
from streamer.pipeline import PipelineConfig, build_pipeline
from streamer.replay import ReplayConfig


def lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_one_result_per_frame_between_start_and_end(npz_clip, tmp_path):
    out = tmp_path / "r.jsonl"
    seen = []
    with open_clip(npz_clip) as reader:
        summary = analyze(reader, out, build_pipeline(PipelineConfig(analysis="none")),
                          ReplayConfig(stream="a"),
                          on_frame=seen.append)
    rows = lines(out)
    assert [r["kind"] for r in rows] == ["start"] + ["result"] * 12 + ["end"]
    assert [r["seq"] for r in rows[1:-1]] == list(range(12))
    assert all(r["v"] == 1 and r["stream"] == "a" for r in rows)
    assert rows[1]["flags"] == ["analysis_off"] and "preprocess" in rows[1]["latency_ms"]
    assert rows[-1]["meta"]["processed"] == 12
    assert (summary.frames, summary.results, summary.errors) == (12, 12, 0)
    assert seen == list(range(1, 13))


def test_a_nan_frame_is_an_error_line_and_the_rest_go_on(tmp_path):
    frames = np.ones((4, 8, 8), np.float32)
    frames[2, 1, 1] = np.nan
    clip = tmp_path / "nan.npz"
    np.savez(clip, frames=frames, spacing_mm=np.array([1.0, 1.0]), fps=np.array(20.0),
             modality=np.array("MR"))
    out = tmp_path / "r.jsonl"
    with open_clip(clip) as reader:
        summary = analyze(reader, out, build_pipeline(PipelineConfig(analysis="none")))
    rows = lines(out)
    assert [r["kind"] for r in rows[1:-1]] == ["result", "result", "error", "result"]
    assert rows[3]["code"] == "bad_pixels" and rows[3]["seq"] == 2
    assert summary.errors == 1 and summary.results == 3
