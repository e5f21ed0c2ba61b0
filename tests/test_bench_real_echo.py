"""bench/real_echo.py, the real-clip harness: it runs on both pydicom cines and its figures
agree with what the echo app published."""

import json

import pytest


@pytest.fixture(scope="module")
def bench(bench_module):
    return bench_module("real_echo")


def test_the_harness_measures_both_cines_with_and_without_the_hint(bench, tmp_path):
    assert bench.main(["--out", str(tmp_path)]) == 0
    for name in ("overlay.png", "overlay_beat.jpg", "gls.png", "real_echo.json"):
        assert (tmp_path / name).stat().st_size > 1000, name
    runs = json.loads((tmp_path / "real_echo.json").read_text())["runs"]
    assert [(r["clip"], r["view_hint"]) for r in runs] == [
        ("examples_ybr_color.dcm", None), ("examples_ybr_color.dcm", "a4c"),
        ("color3d_jpeg_baseline.dcm", None), ("color3d_jpeg_baseline.dcm", "a4c")]
    for run in runs:
        assert run["frames"] == len(run["gls_pct"]) == len(run["t_s"])
        published = [g for g in run["gls_pct"] if g is not None]
        assert run["measurable_share"] == len(published) / run["frames"]
        assert all(-40 <= g <= 15 for g in published)
        # every frame without a published number that was analysed says why
        for gls, unchecked, flags in zip(run["gls_pct"], run["gls_unchecked_pct"],
                                         run["flags"]):
            if gls is None and unchecked is not None:
                assert any(f.startswith("not_measurable:") for f in flags)
    # without a hint nothing the classifier does not call A4C is analysed
    assert all(r["analysed_share"] <= r["view_a4c_share"] + 1e-9
               for r in runs if r["view_hint"] is None)


def test_the_lv_length_curve_drops_single_frame_glitches_and_broken_masks(bench):
    nan = float("nan")
    curve = bench.lv_length_curve([200.0, 150.0, 198.0, nan, 180.0, 170.0])
    assert curve[1] == 198.0                      # one frame that lost a piece of wall
    assert curve[0] == 175.0 and curve[4] == 175.0  # at an edge or a gap: the median of what is there
    assert curve[3] != curve[3]                   # a broken mask gives no length
