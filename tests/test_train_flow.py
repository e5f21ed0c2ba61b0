"""Training of the flow network: a tiny seeded run writes weights + record, and repeats exactly."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from engines.train import flow

TINY = ["flow", "--samples", "8", "--epochs", "1", "--val-samples", "4", "--test-samples", "4",
        "--batch-size", "4", "--crop", "64", "--seed", "3", "--threads", "1"]


@pytest.fixture(scope="module")
def data_cache(tmp_path_factory):
    """A private data-set cache, shared by the runs of this module (3 small clips)."""
    path = tmp_path_factory.mktemp("flow-data")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CARDIOSTREAM_DATA", str(path))
        mp.setenv("CARDIOSTREAM_NO_PROGRESS", "1")
        yield path


def test_tiny_run_writes_weights_and_record_and_repeats(data_cache, tmp_path):
    outs = [tmp_path / "a" / "flow.pt", tmp_path / "b" / "flow.pt"]
    for out in outs:
        assert flow.main([*TINY, "--out", str(out)]) == 0
    rec = json.loads((outs[0].parent / "flow.json").read_text())
    assert rec["role"] == "flow" and rec["weights_file"] == "flow.pt" and rec["epochs"] == 1
    assert "engines.train.flow" in rec["command"] and rec["torch"] == torch.__version__
    assert rec["data"]["train"]["split"] == "train" and rec["data"]["train"]["samples"] == 8
    assert rec["data"]["test"]["seed_min"] >= 2_000_000
    for key in ("epe_myocardium_px", "epe_dis_medium_px", "n_pairs"):
        assert key in rec["test"]
    a, b = (torch.load(p, weights_only=True) for p in outs)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert rec["weights_sha256"] == json.loads((outs[1].parent / "flow.json").read_text())["weights_sha256"]


def test_evaluate_scores_truth_and_zero_flow(data_cache):
    samples, _ = flow.load("val", 4)
    truth = samples["flow"].transpose(0, 3, 1, 2)
    perfect = flow.evaluate(lambda x: truth[:len(x)], samples, batch_size=16, dis=False)
    assert perfect["epe_myocardium_px"] < 1e-6 and perfect["n_pairs"] == 4
    assert perfect["slope_dx"] == pytest.approx(1.0) and perfect["slope_dy"] == pytest.approx(1.0)
    assert all(b["fraction"] == pytest.approx(1.0) for b in perfect["fraction_of_truth"] if b["pixels"])
    half = flow.evaluate(lambda x: 0.5 * truth[:len(x)], samples, batch_size=16, dis=False)
    assert half["slope_dx"] == pytest.approx(0.5, abs=1e-3) and half["slope_dy"] == pytest.approx(0.5, abs=1e-3)
    assert all(b["fraction"] == pytest.approx(0.5, abs=1e-3) for b in half["fraction_of_truth"] if b["pixels"])
    zero = flow.evaluate(lambda x: np.zeros((len(x), 2) + x.shape[2:], np.float32), samples)
    assert zero["epe_myocardium_px"] == pytest.approx(zero["epe_zero_flow_myocardium_px"])
    assert 0 < zero["epe_dis_medium_px"] < 5


def test_shrink_terms_vanish_for_truth_and_penalise_shrunk_flow():
    g = torch.Generator().manual_seed(0)
    truth = torch.randn(2, 2, 16, 16, generator=g) * 0.3
    myo = torch.zeros(2, 1, 16, 16)
    myo[:, :, 4:12, 4:12] = 1.0
    rel, slope = flow.shrink_terms(truth.clone(), truth, myo)
    assert float(rel) < 2e-3 and float(slope) < 1e-4
    rel, slope = flow.shrink_terms(0.5 * truth, truth, myo)
    assert float(slope) == pytest.approx(1.5, abs=1e-3) and float(rel) > 0.1
    rel, slope = flow.shrink_terms(truth, truth, torch.zeros_like(myo))
    assert float(rel) == 0.0 and float(slope) == 0.0


def test_flip_augmentation_negates_dx():
    g = torch.Generator().manual_seed(0)
    pairs = np.random.default_rng(0).integers(0, 255, (1, 2, 32, 32)).astype(np.uint8)
    flows = np.zeros((1, 32, 32, 2), np.float32)
    flows[..., 0], flows[..., 1] = 1.5, -0.5
    myo = np.zeros((1, 32, 32), bool)
    seen = set()
    for _ in range(12):
        _, f, _ = flow.make_batch(pairs, flows, myo, np.array([0]), 0, g)
        seen.add((float(f[0, 0].mean()), float(f[0, 1].mean())))
    assert seen == {(1.5, -0.5), (-1.5, -0.5)}
