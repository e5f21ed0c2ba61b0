"""bench/layer_floor.py: OpenVINO's per-layer counters are read and split into the
arithmetic layers (against the floor) and the rest; the figures add up to what was run; a
role is profiled on the IR its engine runs."""

import json

import pytest
import torch
from torch import nn

pytestmark = pytest.mark.usefixtures("engine_cache")


@pytest.fixture(scope="module")
def bench(bench_module):
    return bench_module("layer_floor")


class TwoConvsAndAResize(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(1, 8, 3, padding=1)
        self.b = nn.Conv2d(8, 2, 3, padding=1)

    def forward(self, x):
        y = torch.relu(self.a(x))
        y = nn.functional.interpolate(nn.functional.max_pool2d(y, 2), scale_factor=2.0, mode="nearest")
        return self.b(y)


def test_a_probe_splits_the_time_into_convolutions_and_the_rest(bench):
    r = bench.probe("toy", TwoConvsAndAResize(), (1, 1, 32, 32), "fp32", 1, 5, peak=100.0)
    # 2 FLOPs per multiply-add: (1*9*8 + 8*9*2) * 32 * 32 * 2
    assert r["gflop"] == pytest.approx((72 + 144) * 1024 * 2 / 1e9)
    assert r["floor_ms"] == pytest.approx(r["gflop"] / 100.0 * 1e3)
    assert r["arithmetic_ms"] > 0 and r["other_layers_ms"] > 0
    assert "Convolution" in r["layer_ms"] and "Interpolate" in r["layer_ms"]
    assert r["arithmetic_x_floor"] == pytest.approx(r["arithmetic_ms"] / r["floor_ms"])
    assert r["outside_layers_ms"] == pytest.approx(r["wall_ms"] - r["arithmetic_ms"] - r["other_layers_ms"])


def test_the_command_line_writes_its_json(bench, tmp_path, capsys):
    out = tmp_path / "lf.json"
    assert bench.main(["--roles", "view", "--calls", "3", "--no-peer", "--precision", "fp32",
                       "--threads", "1", "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["precision"] == "fp32" and [r["network"] for r in data["results"]] == ["view"]
    assert "echo networks together" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        bench.main(["--calls", "0"])
