"""bench/mr_lopo.py: folds, their starting weights and the table (the trainer itself is
tests/test_train_mr.py's)."""

from __future__ import annotations

import json

import pytest

from engines.train import mr


@pytest.fixture(scope="module")
def bench(bench_module):
    return bench_module("mr_lopo")


def _record(patient: str, mcd: float) -> dict:
    holdout = {"patient": patient, "myocardium_dice_mean": 0.7, "cavity_dice_mean": 0.85,
               "mcd_endo_mm_mean": mcd, "mcd_endo_identity_mm_mean": 3.5,
               "largest_component": {"myocardium_dice_mean": 0.72, "cavity_dice_mean": 0.9}}
    phantoms = {"lv_cavity_dice_mean": 0.98, "lv_myocardium_dice_mean": 0.95,
                "rv_cavity_dice_mean": 0.92, "epe_myocardium_px": 0.7}
    return {"test": {"holdout": holdout, "phantoms": phantoms}, "command": "test",
            "weights_sha256": "0" * 64, "wall_s": {}}


def test_each_fold_starts_from_the_same_fold_of_the_earlier_run(bench, tmp_path, monkeypatch):
    seen = {}

    def fake_run(args):  # the trainer: record what it was asked, write its record
        seen[args.holdout_patient] = (args.init, args.refine_motion_steps)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        (args.out.parent / "mr.json").write_text(json.dumps(_record(args.holdout_patient, 1.4)))
        return 0

    monkeypatch.setattr(mr, "run", fake_run)
    earlier = tmp_path / "earlier"
    for p in ("A", "B"):
        bench.fold_weights(earlier, p).parent.mkdir(parents=True)
        bench.fold_weights(earlier, p).write_bytes(b"weights")
    rec = bench.train_fold("B", tmp_path / "new", 1, ["--refine-motion-steps", "5"], earlier)
    assert seen["B"] == (earlier / "fold-B" / "mr.pt", 5)
    assert rec["test"]["holdout"]["patient"] == "B"
    # a fold is never started from weights that saw its patient: a missing fold is an error
    with pytest.raises(SystemExit, match="no fold weights .*fold-C"):
        bench.train_fold("C", tmp_path / "new", 1, [], earlier)


def test_the_table_and_summary_judge_the_apps_labels_against_the_acceptance(bench):
    records = {p: _record(p, mcd) for p, mcd in zip(mr.SUNNYBROOK_PATIENTS, (1.4, 1.5, 1.6))}
    out = bench.summary(records)
    assert out["mean"]["mcd_endo_mm_mean"] == pytest.approx(1.5)
    assert out["mean"]["myocardium_dice_mean"] == pytest.approx(0.72)   # the app's labels
    assert out["mean_network_raw"]["myocardium_dice_mean"] == pytest.approx(0.7)
    assert out["meets_acceptance"] is False                              # myocardium < 0.80
    text = bench.table(records)
    assert "mean" in text and "1.50" in text
