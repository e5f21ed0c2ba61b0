"""The arithmetic floor of a network stage: its FLOPs at the fastest rate this CPU multiplies
matrices (issue 15: "stages near their floor").

* :func:`network_gflop`: the multiply-adds of one forward pass, counted by
  ``torch.utils.flop_counter.FlopCounterMode`` (2 FLOPs per multiply-add of the
  convolutions and matrix products; element-wise work, resizes and the flow warp are not
  counted, so the floor is a lower bound);
* :func:`gemm_peak_gflops`: the best rate of a square matrix product (torch, ``n`` x ``n``,
  the engine threads) in float32 or bfloat16, measured here (on this project's 2-core
  machine 337-369 GFLOP/s fp32 and 1253-1259 bf16 with AMX, 2026-12-06; issue 15 quoted
  185 and 405);
* :func:`floor_ms`: the one divided by the other, in milliseconds.

A stage's time over its floor says how much of it is not network arithmetic (call overhead,
layout copies, resizes, a kernel far from the GEMM rate).
"""

from __future__ import annotations

import time

#: the peak rate each engine precision is judged against (int8 and fp16: their float
#: counterparts on the CPU, where no faster GEMM of those types is measured here)
PEAK_DTYPE = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float32", "int8": "float32"}


def network_gflop(module, input_shape: tuple[int, ...]) -> float:
    """GFLOP of one forward pass of ``module`` on a zero input of ``input_shape``."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.zeros(tuple(input_shape))
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        module(x)
    return counter.get_total_flops() / 1e9


def role_gflop(role: str) -> float:
    """GFLOP of one forward pass of the role's network at its input size (the architecture
    decides it; no weights are loaded)."""
    from engines import nets

    return network_gflop(nets.build(role).eval(), nets.spec(role).input.shape)


def gemm_peak_gflops(precision: str = "fp32", n: int = 1024, repeats: int = 5) -> float:
    """The best of ``repeats`` timed ``n`` x ``n`` matrix products, GFLOP/s, in the dtype
    ``precision`` is judged against (:data:`PEAK_DTYPE`), on torch's current threads."""
    import torch

    if precision not in PEAK_DTYPE:
        raise ValueError(f"precision {precision!r} is unknown; choose one of {', '.join(PEAK_DTYPE)}")
    if n < 64 or repeats < 1:
        raise ValueError(f"n must be >= 64 and repeats >= 1, got {n}, {repeats}")
    dtype = getattr(torch, PEAK_DTYPE[precision])
    g = torch.Generator().manual_seed(0)
    a = torch.rand(n, n, generator=g).to(dtype)
    b = torch.rand(n, n, generator=g).to(dtype)
    with torch.inference_mode():
        torch.mm(a, b)  # warm-up: the kernel's first call sets up its buffers
        best = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            torch.mm(a, b)
            best = min(best, time.perf_counter() - t0)
    return 2.0 * n ** 3 / best / 1e9


def floor_ms(gflop: float, peak_gflops: float) -> float:
    """Milliseconds ``gflop`` takes at ``peak_gflops``."""
    if peak_gflops <= 0:
        raise ValueError(f"peak_gflops must be > 0, got {peak_gflops}")
    return gflop / peak_gflops * 1e3
