"""bench/accuracy.py: the table by appearance knob and the --appearance / --weights options."""

from __future__ import annotations

import numpy as np
import pytest


@pytest.fixture(scope="module")
def acc(bench_module):
    return bench_module("accuracy")


def records():
    """View frames (correct when gain > 0.5), seg frames (Dice = gain) and GLS clips
    (|error| = 10 * gain) with a numeric knob ``gain`` on different ranges per kind, a
    string knob, an optional knob with None and a constant one."""
    out = []
    for i, g in enumerate([0.1, 0.2, 0.3, 0.6, 0.7, 0.9]):          # view: median 0.45
        out.append({"kind": "view", "knobs": {"gain": g, "region": "lateral" if i % 2 else "apical",
                                              "q": None if i < 2 else float(i), "k": 1.0},
                    "correct": g > 0.5})
    for g in (0.80, 0.85, 0.90, 0.95):                                # seg: median 0.875
        out.append({"kind": "seg", "knobs": {"gain": g, "region": "apical", "q": 7.0, "k": 1.0},
                    "dice": g})
    for g in (0.1, 0.3, 0.5):                                          # gls: median 0.3
        out.append({"kind": "gls", "knobs": {"gain": g, "region": "lateral", "q": 9.0, "k": 1.0},
                    "gls_abs_error_pct": 10 * g})
    return out


def test_by_knob_splits_each_kind_at_its_median(acc):
    result = acc.by_knob(records())
    assert result["constant"] == {"k": 1.0}
    low, high = result["knobs"]["gain"]
    assert (low["bin"], high["bin"]) == ("low", "high")
    assert low["median"] == pytest.approx({"view": 0.45, "seg": 0.875, "gls": 0.3})
    assert low["n"] == {"view": 3, "seg": 2, "gls": 2} and high["n"] == {"view": 3, "seg": 2, "gls": 1}
    assert low["view_accuracy"] == 0.0 and high["view_accuracy"] == 1.0
    assert low["myocardium_dice"] == pytest.approx(0.825)
    assert high["myocardium_dice"] == pytest.approx(0.925)
    assert low["peak_gls_abs_error_pct"] == pytest.approx(2.0)
    assert high["peak_gls_abs_error_pct"] == pytest.approx(5.0)


def test_by_knob_strings_by_value_and_none_apart(acc):
    result = acc.by_knob(records())
    region = {row["bin"]: row for row in result["knobs"]["region"]}
    assert set(region) == {"apical", "lateral"}
    assert region["apical"]["n"] == {"view": 3, "seg": 4, "gls": 0}
    assert region["apical"]["peak_gls_abs_error_pct"] is None
    assert region["apical"]["view_accuracy"] == pytest.approx(1 / 3)    # view gains 0.1, 0.3, 0.7
    assert region["lateral"]["n"] == {"view": 3, "seg": 0, "gls": 3}
    q = {row["bin"]: row for row in result["knobs"]["q"]}
    assert set(q) == {"low", "high", "None"}
    assert q["None"]["n"] == {"view": 2, "seg": 0, "gls": 0}             # view values 2..5: median 3.5
    assert q["low"]["n"]["view"] == 2 and q["high"]["n"]["view"] == 2
    assert q["low"]["n"]["seg"] == 4 and q["high"]["n"]["seg"] == 0      # one value: all at the median
    table = acc.format_by_knob(result)
    assert "gain" in table and "3/2/2" in table and "constant" in table and "k=1" in table


def test_config_knobs_cover_appearance_and_anatomy(acc):
    from calib.appearance import EchoAppearance
    from calib.datasets import random_echo_config

    knobs = acc.config_knobs(random_echo_config(2_000_003, view="a4c", appearance="random"))
    for name in ("dropout_gain", "dropout_region", "persistence"):
        assert f"appearance.{name}" in knobs
    assert len([k for k in knobs if k.startswith("appearance.")]) >= len(
        EchoAppearance.__dataclass_fields__)
    for name in ("lv_length_mm", "depth_mm", "fps"):
        assert isinstance(knobs[f"anatomy.{name}"], float)


def test_clip_peak_needs_the_fair_share_of_frames(acc):
    nan = float("nan")
    assert acc.clip_peak_gls([0.0, -5.0, -12.5, -3.0], 0.6) == -12.5
    assert acc.clip_peak_gls([0.0, -5.0, nan, nan, nan], 0.6) is None   # 2 of 5 < 60 %
    assert acc.clip_peak_gls([0.0, -5.0, -9.0, nan, nan], 0.6) == -9.0  # 3 of 5
    assert acc.clip_peak_gls([nan, nan], 0.0) is None


def test_acceptance_verdicts(acc):
    report = {"networks": {"view": {"accuracy": 0.99}, "seg": {"myocardium_dice_mean": 0.91}},
              "end_to_end": {"peak_gls_abs_error_pct": {"mean": 1.2, "max": 2.0}}}
    assert acc.acceptance(report)["pass"] is True
    report["end_to_end"]["peak_gls_abs_error_pct"]["mean"] = 1.6
    verdict = acc.acceptance(report)
    assert verdict["pass"] is False and verdict["view_accuracy"]["pass"] is True
    assert "FAIL" in acc.format_acceptance(verdict)
    assert acc.acceptance({"networks": {"view": {"accuracy": 0.99}}})["pass"] is None


def test_arguments(acc):
    args = acc.parse_args([])
    assert args.appearance == "neutral" and args.weights == []
    args = acc.parse_args(["--appearance", "random", "--weights", "seg=/tmp/a.pt",
                           "--weights", "view=b.onnx"])
    assert args.appearance == "random"
    assert args.weights == [("seg", "/tmp/a.pt"), ("view", "b.onnx")]
    for bad in (["--appearance", "pretty"], ["--weights", "seg"], ["--weights", "nope=a.pt"]):
        with pytest.raises(SystemExit):
            acc.parse_args(bad)


def test_recording_hands_batches_in_order(acc):
    seen = []
    predict = acc.recording(lambda x: x * 2, lambda start, out: seen.append((start, out.tolist())))
    for batch in (np.array([1, 2]), np.array([3])):
        predict(batch)
    assert seen == [(0, [2, 4]), (2, [6])]
