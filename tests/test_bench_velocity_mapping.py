"""bench/velocity_mapping.py: the ablation's order and table from trainer records, and the
curves' judgement of one held-out slice through the app's measurement against its truth."""

from __future__ import annotations

import json

import numpy as np


def test_the_ablation_runs_the_proposal_first_and_tabulates_records(bench_module, tmp_path,
                                                                    capsys):
    vm = bench_module("velocity_mapping")
    runs = vm.runs(None)
    assert runs[:2] == [("ear3d", "dice_iou", "all"), ("ear3d", "dice_iou", "magnitude")]
    assert len(runs) == 10 and len(set(runs)) == 10
    for k, (variant, loss, channels) in enumerate(runs):
        folder = tmp_path / vm.name_of(variant, loss, channels)
        folder.mkdir()
        test = {"dice": 0.5 + k / 100, "raw": {"dice": 0.5}, "sensitivity": 0.6, "ppv": 0.7,
                "seconds_per_cycle": 0.4}
        (folder / "velocity.json").write_text(json.dumps(
            {"test": test, "parameters": 1000, "wall_s": {"train": 1.0}}))

    class Args:
        out, reuse, steps, threads, train_slices, crop = tmp_path, True, 1, 1, 1, 64

    assert vm.ablation(Args) == 0
    table = capsys.readouterr().out
    assert "ear3d        dice_iou       magnitude" in table and "0.91" in table
    rows = json.loads((tmp_path / "velocity_ablation.json").read_text())["rows"]
    assert [r["dice"] for r in rows][:2] == [0.5, 0.51]


def test_one_slice_is_measured_against_its_truth(bench_module):
    """A segmenter that returns the true mask: the measured curves match the truth's within
    the phase noise and the offset's fit (the measurement, not the network, is judged)."""
    from calib.datasets import velocity_mapping_samples

    vm = bench_module("velocity_mapping")
    d = velocity_mapping_samples("test", 1, frames=12)

    def oracle(magnitude, velocity):
        return d["myocardium"][0, :len(magnitude)].astype(np.float32)

    truth, measured, pt, pm, dice = vm.measure_slice(oracle, d, 0)
    assert dice == 1.0
    for name in ("radial", "circumferential", "longitudinal"):
        assert np.sqrt(np.mean((truth.curve(name) - measured.curve(name)) ** 2)) < 0.2
