"""Tiny seeded training runs of the view and seg commands: files, JSON record, reproducibility."""

import argparse
import json

import pytest
import torch

from engines.train import common, seg, view


@pytest.fixture(scope="module")
def parser():
    p = argparse.ArgumentParser(prog="cardiostream engines train")
    sub = p.add_subparsers(dest="role", required=True)
    view.add_parser(sub)
    seg.add_parser(sub)
    return p


def _train(parser, role, out, seed=0, extra=None):
    if extra is None:
        extra = ["--neutral-samples", "0"] if role == "view" else []
    args = parser.parse_args([role, "--epochs", "1", "--samples", "16", "--val-samples", "8",
                              "--test-samples", "8", "--batch-size", "8", "--seed", str(seed),
                              "--threads", "1", "--out", str(out), *extra])
    assert args.func(args) == 0
    return json.loads(out.with_name(f"{role}.json").read_text())


@pytest.mark.parametrize("role", ["view", "seg"])
def test_tiny_run_writes_weights_and_record_reproducibly(parser, role, tmp_path, monkeypatch):
    monkeypatch.setenv("CARDIOSTREAM_NO_PROGRESS", "1")
    a = _train(parser, role, tmp_path / "a" / f"{role}.pt")
    b = _train(parser, role, tmp_path / "b" / f"{role}.pt")
    for rec, d in ((a, "a"), (b, "b")):
        assert rec["weights_sha256"] == common.sha256_file(tmp_path / d / f"{role}.pt")
    assert a["weights_sha256"] == b["weights_sha256"]             # same seed, same weights
    assert a["role"] == role and a["torch"] == torch.__version__ and a["epochs"] == 1
    assert a["command"] and a["arguments"]["seed"] == 0
    for split, lo in (("train", 0), ("val", 1_000_000), ("test", 2_000_000)):
        d = a["data"][split]
        assert d["split"] == split and d["seed_min"] >= lo and d["samples"] == (16 if split == "train" else 8)
    assert "accuracy" in a["test"] if role == "view" else "myocardium_dice_mean" in a["test"]
    state = torch.load(tmp_path / "a" / f"{role}.pt", weights_only=True)
    model = (view if role == "view" else seg)
    net = (model.view_classifier if role == "view" else model.segmenter).build()
    net.load_state_dict(state)
    c = _train(parser, role, tmp_path / "c" / f"{role}.pt", seed=1)
    assert c["weights_sha256"] != a["weights_sha256"]


def test_seg_schedule_crops_then_full_frames(parser, tmp_path, monkeypatch):
    monkeypatch.setenv("CARDIOSTREAM_NO_PROGRESS", "1")
    out = tmp_path / "seg.pt"
    args = parser.parse_args(["seg", "--epochs", "3", "--full-frame-epochs", "2", "--crop", "64",
                              "--samples", "16", "--val-samples", "8", "--test-samples", "8",
                              "--batch-size", "8", "--threads", "1", "--out", str(out)])
    assert args.func(args) == 0
    rec = json.loads(out.with_name("seg.json").read_text())
    assert rec["full_frame_epochs"] == 2 and rec["crop"] == 64
    assert [h["crop"] for h in rec["history"]] == [64, 0, 0]          # crops first, then full frames
    lrs = [h["lr_start"] for h in rec["history"]]
    assert lrs[1] > lrs[2]                                             # decaying rate on full frames
    assert 1 <= rec["best_epoch"] <= 3


@pytest.mark.parametrize("role", ["view", "seg"])
def test_defaults_reproduce_the_shipped_run(parser, role):
    """``cardiostream engines train ROLE`` with no options is the run of the shipped weights
    (its record's arguments), so the shipped weights are remade by the bare command."""
    import json

    from engines.train.common import WEIGHTS_DIR

    shipped = json.loads((WEIGHTS_DIR / f"{role}.json").read_text())["arguments"]
    args = vars(parser.parse_args([role]))
    differ = {k: (args.get(k), v) for k, v in shipped.items()   # threads: how, not what
              if k not in ("out", "device", "threads") and args.get(k) != v}
    assert not differ


def test_view_adds_plain_phantom_frames_from_the_next_clips(parser, tmp_path, monkeypatch):
    monkeypatch.setenv("CARDIOSTREAM_NO_PROGRESS", "1")
    rec = _train(parser, "view", tmp_path / "view.pt", extra=["--neutral-samples", "8"])
    random, plain = rec["data"]["train"]["random"], rec["data"]["train"]["neutral"]
    assert random["samples"] == 16 and plain["samples"] == 8
    assert random["appearance"] == "random" and "appearance" not in plain   # the builders' default
    assert plain["seed_min"] > random["seed_max"]                           # other clips


def test_help_names_the_options(parser, capsys):
    for role in ("view", "seg"):
        with pytest.raises(SystemExit):
            parser.parse_args([role, "--help"])
        text = capsys.readouterr().out
        for opt in ("--epochs", "--samples", "--seed", "--threads", "--out"):
            assert opt in text
        if role == "seg":
            assert "--full-frame-epochs" in text and "--crop" in text
