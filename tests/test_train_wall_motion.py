"""engines.train.wall_motion (Cardiac-MOS on phantom hearts): the scoring metrics are the
ones the paper reports and can fail, the data set holds each heart's 16 segments with the
classes its slices were made with, and a tiny run trains, judges and writes its record."""

import json

import numpy as np
import pytest
import torch

from calib.datasets import wall_motion_samples, wall_motion_stack_configs
from engines.nets import cardiac_mos
from engines.train import wall_motion


def test_scoring_metrics():
    true = np.array([[0] * 12 + [1, 2, 3, 1], [0] * 16, [2] * 16])
    perfect = wall_motion.scoring_metrics(true, true)
    assert perfect["accuracy"] == perfect["binary_accuracy"] == perfect["kappa"] == 1.0
    assert perfect["msi_pearson"] == pytest.approx(1.0) and perfect["msi_abs_error"] == 0.0
    all_normal = wall_motion.scoring_metrics(true, np.zeros_like(true))
    assert all_normal["accuracy"] == pytest.approx(28 / 48) and all_normal["kappa"] == 0.0
    assert np.isnan(all_normal["msi_pearson"])          # a constant prediction has no correlation
    wrong_grade = true.copy()
    wrong_grade[true == 2] = 1                           # akinetic called hypokinetic
    m = wall_motion.scoring_metrics(true, wrong_grade)
    assert m["binary_accuracy"] == 1.0 and m["accuracy"] == pytest.approx(31 / 48)
    assert np.array(m["confusion"]).sum() == 48 and m["confusion"][2][1] == 17


def test_a_data_set_holds_each_hearts_segments_and_classes():
    d = wall_motion_samples("test", 2, offset=500, frames=6)
    assert d["segments"].shape == (2, 16, 6, 80, 60) and d["segments"].dtype == np.uint8
    for i, seed in enumerate(d["seeds"]):
        classes = {int(s): c for cfg in wall_motion_stack_configs(int(seed), frames=6)
                   for s, c in cfg.wall_motion.items()}
        assert d["classes"][i].tolist() == [classes[s] for s in range(1, 17)]
        assert (d["segments"][i].reshape(16, -1).std(1) > 5).all()   # every segment imaged


def test_a_tiny_run_trains_judges_and_writes_its_record(tmp_path, monkeypatch):
    monkeypatch.setenv("CARDIOSTREAM_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("CARDIOSTREAM_NO_PROGRESS", "1")
    out = tmp_path / "wm.pt"
    assert wall_motion.main(["--train-hearts", "2", "--train-frames", "5", "--test-hearts", "1",
                             "--ki-test-hearts", "1", "--test-frames", "5", "7", "--epochs", "1",
                             "--threads", "1", "--out", str(out)]) == 0
    record = json.loads((tmp_path / "wall_motion.json").read_text())
    assert set(record["test"]) == {"5", "7"} and record["variant"] == "cnn"
    assert record["test"]["7"]["segments"] == 16 and 0 <= record["test"]["5"]["accuracy"] <= 1
    assert len(record["predictions"]["test"]["7"]["pred"]) == 1 and record["fold_test"] == {}
    model = cardiac_mos.build("cnn")
    model.load_state_dict(torch.load(out, weights_only=True))
    # three folds by subject: fold 1 of 3 holds out heart 1 of the 3 training hearts
    fold = tmp_path / "fold"
    assert wall_motion.main(["--train-hearts", "3", "--train-frames", "5", "--test-hearts", "1",
                             "--test-frames", "5", "--epochs", "1", "--threads", "1",
                             "--folds", "3", "--fold", "1", "--out", str(fold / "wm.pt")]) == 0
    record = json.loads((fold / "wall_motion.json").read_text())
    assert record["data"]["train_hearts"] == 2 and record["fold_test"]["5"]["hearts"] == 1
    with pytest.raises(SystemExit):
        wall_motion.main(["--folds", "3", "--fold", "3", "--out", str(fold / "x.pt")])
    # a non-local variant starts from the baseline's weights
    assert wall_motion.main(["--variant", "sub_nl", "--init", str(out), "--train-hearts", "2",
                             "--train-frames", "5", "--test-hearts", "1", "--test-frames", "5",
                             "--epochs", "1", "--threads", "1",
                             "--out", str(tmp_path / "sub.pt")]) == 0
    with pytest.raises(SystemExit, match="not a Cardiac-MOS state dict"):
        torch.save({"x": torch.zeros(1)}, tmp_path / "bad.pt")
        wall_motion.main(["--init", str(tmp_path / "bad.pt"), "--train-hearts", "2",
                          "--train-frames", "5", "--test-hearts", "1", "--test-frames", "5",
                          "--epochs", "1", "--out", str(tmp_path / "x.pt")])
