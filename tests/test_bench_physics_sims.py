"""bench/physics_sims.py evaluate: the echo app on cached physics clips against their truth.

No PyMUST: the clip is the first validation configuration rendered by our own speckle
renderer (small, one cycle from end-diastole), written as the generator writes its clips,
so the evaluation reads it back from disk as it reads the PyMUST clips."""

import json
import math

import numpy as np
import pytest


@pytest.fixture(scope="module")
def bench(bench_module):
    return bench_module("physics_sims")


def test_centreline_distances(bench):
    ps = bench
    line = np.stack([np.linspace(0, 100, 120), np.zeros(120)], 1)
    shifted = line + [0.0, 1.5]
    index, curve = ps.centreline_distances(shifted, line)
    assert math.isclose(index, 1.5) and math.isclose(curve, 1.5)
    # the same curve sampled at other points: index-matched differs, the curve distance is ~0
    slid = np.stack([np.linspace(0, 100, 120) ** 1.02 / 100 ** 0.02, np.zeros(120)], 1)
    index, curve = ps.centreline_distances(slid, line)
    assert index > 0.2 and curve < 1e-9


def test_evaluate_a_cached_clip(bench, tmp_path):
    from calib.echo import make_echo_clip
    from calib.io import write_phantom
    from calib.physics_sim import validation_configs

    ps = bench
    cfg = validation_configs(1, 128, 128)[0]            # seed, timing, GLS of physics clip 0
    clip = make_echo_clip(cfg)
    name = f"a4c_00_seed{cfg.seed}_{cfg.rows}x{cfg.cols}_{cfg.frames}f.dcm"
    write_phantom(clip, tmp_path / name)
    assert ps.cached_clips(tmp_path) == [tmp_path / name]

    out = tmp_path / "report.json"
    assert ps.main(["evaluate", "--dir", str(tmp_path), "--view-hint", "a4c", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    (row,) = report["clips"]
    assert row["clip"] == name and row["view_hint"] == "a4c" and row["frames"] == cfg.frames
    assert row["peak_gls_truth_pct"] == float(clip.truth.midwall_gls_pct.min())
    assert row["analysed"] == cfg.frames and row["published"] > 0 and row["tracked"] > 0
    for key in ("peak_gls_pct", "peak_gls_error_pct", "centreline_index_mm", "centreline_curve_mm"):
        assert math.isfinite(row[key]), key
    assert row["centreline_curve_mm"] <= row["centreline_index_mm"] + 1e-9
    assert row["centreline_curve_mm"] < 5.0 and row["centreline_index_mm"] < 5.0
    assert abs(row["peak_gls_error_pct"]) < 10.0
    assert row["pass"] == ps.verdict(row)
    assert report["summary"]["a4c"]["clips"] == 1 and report["summary"]["a4c"]["pass"] is False  # < 4 clips
