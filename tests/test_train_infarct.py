"""engines.train.infarct: the pixel metrics, the data set and a tiny run that trains, judges
and writes its record."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from engines.nets import of_rnn
from engines.train import infarct


def test_pixel_metrics():
    true = np.array([1, 1, 0, 0, 0, 1], bool)
    pred = np.array([1, 0, 0, 1, 0, 1], bool)
    m = infarct.pixel_metrics(true, pred)
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["sensitivity"] == pytest.approx(2 / 3) and m["specificity"] == pytest.approx(2 / 3)
    assert m["dice"] == pytest.approx(4 / 6) and m["infarct_pixels"] == 3
    none = infarct.pixel_metrics(np.zeros(3, bool), np.zeros(3, bool))
    assert none["accuracy"] == 1.0 and np.isnan(none["sensitivity"]) and np.isnan(none["dice"])


def test_a_data_set_holds_regions_masks_and_the_infarct(tmp_path, monkeypatch):
    from calib.datasets import infarct_samples, infarct_slice_config

    monkeypatch.setenv("CARDIOSTREAM_DATA", str(tmp_path))
    d = infarct_samples("train", 3, frames=6)
    assert d["frames"].shape == (3, 6, 64, 64) and d["frames"].dtype == np.uint8
    assert d["myocardium"].shape == d["infarct"].shape == (3, 64, 64)
    assert (d["infarct"] <= d["myocardium"]).all()             # infarct lies in the wall
    for i, seed in enumerate(d["seeds"]):
        cfg = infarct_slice_config(int(seed), frames=6)
        assert list(np.flatnonzero(d["infarct_segments"][i]) + 1) == sorted(cfg.infarct_segments)
        assert d["infarct"][i].any() == bool(cfg.infarct_segments)
        assert not set(cfg.wall_motion) & {str(s) for s in cfg.infarct_segments}


def test_a_tiny_run_trains_judges_and_writes_its_record(tmp_path, monkeypatch):
    monkeypatch.setenv("CARDIOSTREAM_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("CARDIOSTREAM_NO_PROGRESS", "1")
    out = tmp_path / "of.pt"
    assert infarct.main(["--train-slices", "2", "--train-frames", "5", "--test-slices", "1",
                         "--test-frames", "5", "7", "--epochs", "1", "--threads", "1",
                         "--out", str(out)]) == 0
    record = json.loads((tmp_path / "infarct.json").read_text())
    assert set(record["test"]) == {"5", "7"} and record["seconds_per_slice_beat"] > 0
    assert 0 <= record["test"]["5"]["accuracy"] <= 1
    of_rnn.build().load_state_dict(torch.load(out, weights_only=True))
