"""bench/fast_peer.py: the peer U-Net is the one the issue names, our side runs the same
ONNX file and answers what eager torch answers, the summary's ratios are what the runs
say, and a missing FAST says how to install it. FAST's own side runs where its virtual
environment exists (CARDIOSTREAM_FAST_PYTHON); elsewhere that test skips with the reason."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from engines.flops import network_gflop

pytestmark = [pytest.mark.filterwarnings("ignore::DeprecationWarning"),  # the legacy ONNX export
              pytest.mark.usefixtures("engine_cache")]


@pytest.fixture(scope="module")
def bench(bench_module):
    return bench_module("fast_peer")


@pytest.fixture(scope="module")
def workdir(bench, tmp_path_factory):
    """The peer's ONNX file, a few random frames and torch's answer on the first."""
    d = tmp_path_factory.mktemp("peer")
    model = bench.build_peer_unet(seed=1)
    bench.export_onnx(model, d / bench.ONNX_FILE)
    frames = np.random.default_rng(2).random((3, *bench.SIZE), dtype=np.float32)
    np.save(d / bench.FRAMES_FILE, frames)
    with torch.inference_mode():
        np.save(d / bench.REFERENCE_FILE, model(torch.from_numpy(frames[:1, None])).numpy()[0])
    return d


def test_the_peer_unet_is_the_one_fast_was_measured_with(bench):
    model = bench.build_peer_unet()
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    # two 3x3 convolutions per level: 5 down, 4 up, then the 1x1 head to 2 classes
    assert [c.out_channels for c in convs[:10]] == [16, 16, 32, 32, 64, 64, 64, 64, 64, 64]
    assert [c.out_channels for c in convs[10:18]] == [64, 64, 64, 64, 32, 32, 16, 16]
    assert convs[-1].kernel_size == (1, 1) and convs[-1].out_channels == 2
    assert all(c.kernel_size == (3, 3) for c in convs[:-1])
    assert network_gflop(model, (1, 1, 256, 256)) == pytest.approx(4.97, abs=0.01)
    with torch.inference_mode():
        p = model(torch.rand(1, 1, 256, 256))
    assert p.shape == (1, 2, 256, 256)
    torch.testing.assert_close(p.sum(1), torch.ones(1, 256, 256))
    # seeded: the same weights each time, other seeds other weights
    a, b, c = (bench.build_peer_unet(s).head.weight for s in (0, 0, 1))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_our_side_runs_the_onnx_file_and_matches_torch(bench, workdir):
    args = bench.build_parser().parse_args(["--worker", "ours", "--workdir", str(workdir),
                                            "--frames", "4", "--warmup", "1", "--precision", "fp32"])
    assert bench.worker_main(args) == 0
    out = json.loads((workdir / "ours-0.json").read_text())
    assert len(out["ms"]) == 4 and all(m > 0 for m in out["ms"])
    assert "openvino fp32" in out["engine"]
    assert out["max_abs_diff_vs_torch_fp32"] < 1e-4


def _run(side, ms, call_only=None):
    r = {"side": side, "ms": ms, "engine": side, "max_abs_diff_vs_torch_fp32": 0.0}
    if call_only is not None:
        r["call_only_ms"] = call_only
    return r


def test_summary_ratios_are_those_of_the_runs(bench):
    runs = [_run("fast", [10.0, 10.0, 12.0], [9.0, 9.0, 9.0]), _run("ours", [5.0, 6.0, 7.0]),
            _run("ours", [8.0, 8.0, 8.0]), _run("fast", [10.0, 10.0, 10.0], [9.0, 9.0, 9.0])]
    s = bench.summarise(runs)
    assert s["fast"]["median_ms"] == 10.0 and s["ours"]["median_ms"] == 7.5
    assert s["ratio_ours_over_fast"] == 0.75
    assert s["ratio_ours_over_fast_call_only"] == pytest.approx(7.5 / 9.0)
    assert s["round_ratios"] == [0.6, 0.8]   # each round: ours' median / FAST's
    assert "ours / FAST: 0.75x" in bench.format_table(s)


def test_without_fast_it_says_how_to_install_it(bench, tmp_path):
    with pytest.raises(SystemExit, match="pip install pyfast"):
        bench.main(["--fast-python", str(tmp_path / "nope" / "python"), "--out", str(tmp_path / "x.json")])


def test_a_failing_side_names_itself_and_the_recipe(bench, tmp_path):
    args = bench.build_parser().parse_args(["--frames", "2"])
    with pytest.raises(SystemExit, match="the fast run .round 0. failed.*(?s:.*)pocl-opencl-icd"):
        bench.run_side("fast", sys.executable, tmp_path, 0, args)   # no pyfast in this venv


FAST_PYTHON = os.environ.get("CARDIOSTREAM_FAST_PYTHON")


@pytest.mark.skipif(not (FAST_PYTHON and Path(FAST_PYTHON).exists()),
                    reason="FAST (pyfast) is not part of the install; set CARDIOSTREAM_FAST_PYTHON to "
                           "the Python of its virtual environment (bench/fast_peer.py's recipe)")
def test_fast_side_runs_the_same_network(bench, workdir):
    proc = subprocess.run([FAST_PYTHON, str(Path(bench.__file__)), "--worker", "fast", "--workdir",
                           str(workdir), "--frames", "3", "--warmup", "1"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads((workdir / "fast-0.json").read_text())
    assert len(out["ms"]) == len(out["call_only_ms"]) == 3
    assert out["max_abs_diff_vs_torch_fp32"] < 5e-3   # OpenVINO's bf16 on this CPU, or fp32
