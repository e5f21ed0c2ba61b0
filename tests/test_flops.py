"""The arithmetic floor of a network stage (engines.flops)."""

from __future__ import annotations

import pytest
import torch

from engines import flops


def test_a_convolution_counts_two_flops_per_multiply_add():
    conv = torch.nn.Conv2d(1, 4, 3, padding=1, bias=False)
    # 4 output channels x 9 taps x 64 output pixels multiply-adds, 2 FLOPs each
    assert flops.network_gflop(conv, (1, 1, 8, 8)) == pytest.approx(2 * 4 * 9 * 64 / 1e9)
    # element-wise work is not counted: the floor is a lower bound
    assert flops.network_gflop(torch.nn.ReLU(), (1, 1, 8, 8)) == 0.0


def test_the_shipped_networks_cost_what_issue_15_measured():
    """0.61 GFLOP for the three echo networks together (3.3 ms at 185 GFLOP/s)."""
    total = sum(flops.role_gflop(role) for role in ("view", "seg", "flow"))
    assert total == pytest.approx(0.609, abs=0.01)


@pytest.mark.parametrize("precision", ("fp32", "bf16"))
def test_the_gemm_rate_is_measured_in_the_precision_s_own_type(precision):
    rate = flops.gemm_peak_gflops(precision, n=256, repeats=2)
    assert 0.5 < rate < 1e5  # GFLOP/s: a CPU, not a clock glitch


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="precision 'fp8' is unknown"):
        flops.gemm_peak_gflops("fp8")
    with pytest.raises(ValueError, match="n must be >= 64"):
        flops.gemm_peak_gflops("fp32", n=8)
    with pytest.raises(ValueError, match="peak_gflops must be > 0"):
        flops.floor_ms(1.0, 0.0)
    assert flops.floor_ms(0.37, 185.0) == pytest.approx(2.0)
