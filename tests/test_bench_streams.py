"""bench/streams.py: N streams into one real side-car, every timed frame accounted for, the
senders' phases as asked, and the batch sizes the side-car reports."""

import json

import numpy as np
import pytest


@pytest.fixture(scope="module")
def bench(bench_module):
    return bench_module("streams")


def test_phases_lie_in_the_first_frame_interval(bench):
    assert bench.phase_offsets_s("even", 4, 50.0, 0) == pytest.approx([0, 0.005, 0.01, 0.015])
    assert bench.phase_offsets_s("together", 3, 50.0, 0) == [0.0, 0.0, 0.0]
    random = bench.phase_offsets_s("random", 5, 50.0, 0)
    assert len(random) == 5 and all(0 <= o < 0.02 for o in random) and random == sorted(random)
    assert random == bench.phase_offsets_s("random", 5, 50.0, 0)   # seeded


def test_two_streams_into_one_side_car_are_measured_and_accounted(bench, tmp_path):
    out = tmp_path / "streams.json"
    assert bench.main(["--streams", "2", "--frames", "12", "--warmup", "3", "--phase", "together",
                       "--precision", "fp32", "--out", str(out), "--", "--max-batch", "2"]) == 0
    (run,) = json.loads(out.read_text())["runs"]
    assert run["streams"] == 2 and run["timed_sent"] == 24 and run["mode"] == "live"
    assert set(run["per_stream"]) == {"bench-0", "bench-1"}
    for s in run["per_stream"].values():
        assert s["end_counts"]["processed"] + s["end_counts"]["dropped"] \
            + s["end_counts"]["stale"] + s["end_counts"]["errors"] == 15
        assert 0 <= s["dropped_share"] <= 1
    assert run["dropped_share"] == pytest.approx(1 - run["timed_results"] / 24)
    assert run["e2e_ms"]["n"] == run["timed_results"] > 0
    assert set(run["batch_sizes"]) <= {"1", "2"}
    assert np.isclose(sum(run["batch_sizes"].values()), 1.0)
