"""Eager PyTorch: the reference every other backend is compared with.

CPU or CUDA, under ``torch.inference_mode``; fp16 (CUDA only) and bf16 cast the model and
each input to half / bfloat16 and the output back to float32.
"""

from __future__ import annotations

import copy

import numpy as np

from engines.backends.base import Engine, EngineError, LoadedModel

NAME = "torch"


def version() -> str:
    import torch

    return torch.__version__


def unavailable(device: str | None = None) -> str | None:
    """Why the backend cannot run on ``device`` here, or None when it can."""
    if device is not None and str(device).startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            return f"device {device!r} needs a CUDA GPU; torch.cuda.is_available() is False"
    return None


class TorchEngine(Engine):
    def __init__(self, module, source: LoadedModel, precision: str, device: str, threads: int | None):
        import torch

        super().__init__(source.spec, NAME, precision, device, origin=source.origin, threads=threads)
        self._torch = torch
        self._dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(precision, torch.float32)
        self._dev = torch.device(device)
        self.module = module

    def _run(self, x: np.ndarray) -> np.ndarray:
        torch = self._torch
        with torch.inference_mode():
            t = torch.from_numpy(x)
            if self._dev.type != "cpu" or self._dtype != torch.float32:
                t = t.to(self._dev, self._dtype, non_blocking=False)
            y = self.module(t)
            return y.float().cpu().numpy()


def build(source: LoadedModel, precision: str, device: str | None, threads: int | None,
          **_ignored) -> TorchEngine:
    import torch

    device = str(device or "cpu")
    if source.module is None:
        raise EngineError(f"{source.spec.role}: {source.origin} is an ONNX model, which can't run "
                          "on the torch backend; use --backend onnxruntime or openvino, or give "
                          "the model as a state dict or TorchScript file")
    if precision == "int8":
        raise EngineError("backend 'torch' runs fp32, bf16 (and fp16 on CUDA); int8 runs on "
                          "onnxruntime or openvino (CPU) or tensorrt (GPU)")
    if precision == "fp16" and not device.startswith("cuda"):
        raise EngineError("backend 'torch' runs fp16 only on a CUDA device (half-precision "
                          "convolutions on the CPU are slower than fp32); use precision fp32 "
                          "on the CPU")
    reason = unavailable(device)
    if reason:
        raise EngineError(f"backend 'torch': {reason}")
    module = source.module
    if device != "cpu" or precision in ("fp16", "bf16"):
        module = copy.deepcopy(module)   # leave the caller's module as it was
        module = module.to(torch.device(device))
        if precision == "fp16":
            module = module.half()
        elif precision == "bf16":
            module = module.to(torch.bfloat16)
    module.eval()
    return TorchEngine(module, source, precision, device, threads)
