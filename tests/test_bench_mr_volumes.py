"""bench/mr_volumes.py: volumes and EF against the Sunnybrook experts' contours."""

from __future__ import annotations

import numpy as np
import pytest


@pytest.fixture(scope="module")
def bench(bench_module):
    return bench_module("mr_volumes")


def test_volumes_compare_the_same_slices_and_phases(bench):
    """Two contoured phases of two slices; the app's labels a little smaller than the
    experts' masks at end-systole."""
    cavity = np.zeros((4, 8, 8), np.uint8)
    cavity[0, :5, :4] = 1  # slice 1, phase 9 (ED): 20 px
    cavity[1, :5, :4] = 1  # slice 2, phase 9: 20 px
    cavity[2, :2, :5] = 1  # slice 1, phase 3 (ES): 10 px
    cavity[3, :2, :5] = 1  # slice 2, phase 3: 10 px
    patient = {"spacing_mm": np.array([1.0, 1.0]), "slice_position_mm": np.array([0, 10, 20.]),
               "label_slice": np.array([1, 2, 1, 2]), "label_phase": np.array([9, 9, 3, 3]),
               "cavity": cavity}
    labels = np.zeros((3, 10, 8, 8), np.uint8)
    labels[1:, 9, :5, :4] = 1
    labels[1:, 3, :2, :4] = 1  # 8 px each at ES
    out = bench.measure(patient, labels)
    assert (out["ed_phase"], out["es_phase"]) == (9, 3)
    assert out["volumes"][9] == {"slices": [1, 2], "expert_ml": 0.4, "app_ml": 0.4}
    assert out["volumes"][3]["expert_ml"] == 0.2 and out["volumes"][3]["app_ml"] == 0.16
    assert out["ef_expert_pct"] == 50.0 and out["ef_app_pct"] == 60.0
    assert out["ef_error_pct"] == 10.0


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:Invalid value for VR UI")
def test_the_shipped_app_on_the_three_patients(bench, sunnybrook_root, tmp_path):
    out = tmp_path / "v.json"
    assert bench.main(["--sunnybrook", str(sunnybrook_root), "--out", str(out)]) == 0
