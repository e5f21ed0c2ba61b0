"""bench/mr_phantoms.py: the MR app on held-out phantoms, judged against their truth."""

from __future__ import annotations

import json

import pytest


@pytest.fixture(scope="module")
def bench(bench_module):
    return bench_module("mr_phantoms")


def test_the_harness_judges_a_slice_and_a_stack(bench, tmp_path):
    out = tmp_path / "mr_phantoms.json"
    assert bench.main(["--clips", "1", "--stacks", "1", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    [row] = report["slices"]
    assert row["quality"] == "good" and row["measurable"] >= 0.9 * row["frames"]
    assert set(row["segments"]) and all(v["circ_error"] is not None
                                        for v in row["segments"].values())
    [stack] = report["stacks"]
    assert abs(stack["ef_error_pct"]) < 5.0  # disk summation of the app's labels
    assert report["summary"]["aha_pixel_accuracy"] > 0.9
