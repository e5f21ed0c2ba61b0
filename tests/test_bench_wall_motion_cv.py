"""bench/wall_motion_cv.py: pooling the folds' held-out hearts, the conv-KI check and the
table, on records shaped as engines.train.wall_motion writes them."""

from __future__ import annotations

import numpy as np


def record(fold_true, fold_pred, test: dict) -> dict:
    return {"data": {"train_frames": [20, 25]}, "wall_s": {"train": 10.0},
            "predictions": {"fold_test": {"20": {"true": fold_true, "pred": fold_pred}},
                            "test": {t: {"true": a, "pred": b} for t, (a, b) in test.items()}}}


def test_folds_pool_and_conv_ki_is_judged_against_the_trained_frame_counts(bench_module):
    cv = bench_module("wall_motion_cv")
    normal, sick = [0] * 16, [1] * 4 + [0] * 12
    right = {"20": ([sick], [sick]), "25": ([normal], [normal]), "50": ([sick], [sick])}
    wrong50 = {**right, "50": ([sick], [normal])}                  # 4 of 16 wrong at 50 frames
    records = {"cnn": [record([sick], [sick], right), record([normal], [sick], right)],
               "sub_nl": [record([sick], [sick], wrong50), record([normal], [normal], wrong50)]}
    s = cv.summary(records)
    # the folds' held-out hearts pooled: 2 hearts of 16 segments, one heart 4 segments wrong
    assert s["cnn"]["cv"]["segments"] == 32
    assert np.isclose(s["cnn"]["cv"]["accuracy"], 28 / 32)
    assert s["sub_nl"]["cv"]["accuracy"] == 1.0 and s["sub_nl"]["paper"]["accuracy"] == 0.774
    assert s["cnn"]["ki_accuracy_change"] == {"50": 0.0} and s["cnn"]["ki_within_tolerance"]
    assert s["sub_nl"]["ki_accuracy_change"] == {"50": -0.25}
    assert not s["sub_nl"]["ki_within_tolerance"]
    table = cv.table(s)
    assert "| cnn | 87.5% |" in table and "77.4% / 0.926" in table
    assert table.splitlines()[0].count("test") == 3                 # 20, 25, 50 frames
