"""Engine backends: one call signature for eager torch, onnxruntime, OpenVINO and TensorRT.

    from engines.backends import create_engine
    engine = create_engine("seg")                    # auto backend, fp32, shipped weights
    logits = engine(image)                           # (1, 1, H, W) float32 -> (1, 3, H, W)
    create_engine("flow", "openvino", "int8")        # INT8 on the CPU, calibrated on phantoms
    create_engine("seg", weights="my_unet.onnx")     # bring your own (engines.byo)

=============  ======================================  =====================  ==============
backend        runs                                    precisions             device
=============  ======================================  =====================  ==============
torch          eager PyTorch (the reference)           fp32, bf16; fp16 CUDA  cpu, cuda[:i]
onnxruntime    cached ONNX export, CPU provider        fp32, int8             cpu
openvino       cached IR of the same export            fp32, bf16, int8       cpu
tensorrt       Torch-TensorRT 2.13 (dynamo)            fp32, fp16, int8       cuda[:i]
=============  ======================================  =====================  ==============

openvino's bf16 needs a CPU that OpenVINO says computes BF16 (AVX512-BF16 or AMX); elsewhere
it is an error.

``auto`` is tensorrt when torch_tensorrt imports and CUDA is available, else
:data:`AUTO_CPU_BACKEND` (per role, as measured; for ``--precision bf16`` openvino, the CPU
backend that runs it).  ``--precision auto`` is the fastest format the backend runs on this
device within its stated bounds (:func:`resolve_precision`: fp16 on a GPU, bf16 on
openvino where the CPU computes BF16, else fp32).  A backend that cannot run here is an
:class:`EngineError` that says why; there is no silent fallback to another one.
"""

from __future__ import annotations

import importlib
import logging
import os

from engines.backends.base import (
    BACKENDS,
    PRECISIONS,
    Engine,
    EngineError,
    LoadedModel,
    ModelLoadError,
)
from engines.backends.threads import cpu_count, get_threads, set_threads
from engines.spec import PRECISION_CHOICES, REGISTRY, ROLES, NetSpec

log = logging.getLogger(__name__)

__all__ = ["AUTO_CPU_BACKEND", "BACKENDS", "PRECISIONS", "Engine", "EngineError", "LoadedModel",
           "ModelLoadError", "backend_module", "backend_status", "create_engine", "cpu_count",
           "get_threads", "resolve_backend", "resolve_precision", "set_threads", "source_for"]

#: The CPU backend ``auto`` picks, per role: the fastest measured (the figures are with
#: the role registry, :data:`engines.spec.REGISTRY`).
AUTO_CPU_BACKEND = {name: role.cpu_backend for name, role in REGISTRY.items()}

_MODULES = {"torch": "torch_backend", "onnxruntime": "onnxruntime_backend",
            "openvino": "openvino_backend", "tensorrt": "tensorrt_backend"}


def backend_module(name: str):
    if name not in _MODULES:
        raise EngineError(f"backend {name!r} is unknown; choose auto or one of {', '.join(BACKENDS)}")
    return importlib.import_module(f"engines.backends.{_MODULES[name]}")


def backend_status(device: str | None = None) -> dict[str, str | None]:
    """For each backend, None when it can run here, else the reason it cannot."""
    out = {}
    for name in BACKENDS:
        try:
            out[name] = backend_module(name).unavailable(device if name in ("torch", "tensorrt") else None)
        except Exception as exc:  # a broken install says so instead of crashing the listing
            out[name] = f"backend {name!r} failed to load: {type(exc).__name__}: {exc}"
    return out


#: the CPU backend ``auto`` takes for a precision that the role's own CPU backend may lack
AUTO_CPU_BACKEND_FOR_PRECISION = {"bf16": "openvino"}


def _cpu_bf16() -> bool:
    """Whether the CPU backend that runs bf16 (openvino) can run it here."""
    module = backend_module(AUTO_CPU_BACKEND_FOR_PRECISION["bf16"])
    return module.unavailable(None) is None and module.cpu_has_bf16()


def resolve_precision(precision: str, backend: str, device: str | None = None) -> str:
    """The precision an engine runs at: ``precision`` itself, or for ``auto`` the fastest
    one the backend runs on this device within its stated bounds (tolerance.py): fp16 on a
    GPU (tensorrt, torch on CUDA), bf16 on openvino where the CPU computes BF16 (measured
    on the shipped networks: 0.74x the echo pipeline's fp32 time, the held-out accuracy
    unchanged; docs/benchmarks.md), else fp32. INT8 is never chosen by ``auto``: it needs
    a calibration the user vouches for."""
    if precision != "auto":
        return precision
    if backend == "tensorrt" or (device is not None and str(device).startswith("cuda")):
        return "fp16"
    if backend == AUTO_CPU_BACKEND_FOR_PRECISION["bf16"] and _cpu_bf16():
        return "bf16"
    return "fp32"


def resolve_backend(backend: str = "auto", device: str | None = None, role: str = "seg",
                    precision: str = "fp32") -> str:
    """The backend ``backend`` names; for ``auto``: tensorrt when it can run here (or, on an
    explicit CUDA device without it, eager torch on that device), else the role's
    :data:`AUTO_CPU_BACKEND`, or for a precision in :data:`AUTO_CPU_BACKEND_FOR_PRECISION`
    the CPU backend that runs it (bf16: openvino, for every role)."""
    if backend != "auto":
        backend_module(backend)  # unknown name -> EngineError
        return backend
    if device is not None and str(device).startswith("cuda"):
        return "tensorrt" if backend_module("tensorrt").unavailable(device) is None else "torch"
    if device in (None, "auto") and backend_module("tensorrt").unavailable(None) is None:
        return "tensorrt"
    if precision == "auto":  # the CPU's fastest format decides the backend
        precision = "bf16" if _cpu_bf16() else "fp32"
    return AUTO_CPU_BACKEND_FOR_PRECISION.get(precision, AUTO_CPU_BACKEND[role])


def source_for(role: str, weights: str | os.PathLike | None = None, *, model=None,
               spec: NetSpec | None = None) -> LoadedModel:
    """The model an engine is built from: ``model`` (an nn.Module, checked against
    ``spec``), a user's file ``weights`` (:func:`engines.byo.load_model`), or the role's
    network with its shipped weights."""
    from engines import byo

    if role not in ROLES:
        raise EngineError(f"role {role!r} is unknown; choose one of {', '.join(ROLES)}")
    if model is not None:
        if weights is not None:
            return byo.load_model(role, weights, spec=spec, build=lambda: model)
        return byo.from_module(role, model, spec=spec)
    if weights is not None:
        return byo.load_model(role, weights, spec=spec)
    return byo.shipped_model(role)


def _batched(source: LoadedModel, batch: int, precision: str) -> LoadedModel:
    """``source`` at batch size ``batch`` (the same module and weights, the spec's batch)."""
    import dataclasses

    from engines.batching import with_batch

    if batch < 1:
        raise EngineError(f"batch must be >= 1, got {batch}")
    if source.module is None:
        raise EngineError(f"{source.origin}: an ONNX file runs at the batch size it was "
                          f"exported with; batching ({batch} frames) needs the role's torch "
                          "model (a state dict or TorchScript file), or --max-batch 1")
    if precision == "int8":
        raise EngineError("int8 engines are calibrated at batch 1; batching needs fp32, bf16 "
                          "or fp16 (or --max-batch 1)")
    return dataclasses.replace(source, spec=with_batch(source.spec, batch))


def create_engine(role: str, backend: str = "auto", precision: str = "fp32",
                  weights: str | os.PathLike | None = None, threads: int | None = None,
                  device: str | None = None, *, model=None, spec: NetSpec | None = None,
                  calibration=None, use_cache: bool = True, batch: int = 1) -> Engine:
    """An engine for ``role`` on ``backend`` at ``precision`` (``auto``: see
    :func:`resolve_precision`; the engine's ``precision`` is the one it runs at).

    ``weights``: a user's state dict, TorchScript or ONNX file for the role (default: the
    shipped weights).  ``threads``: CPU threads for torch, onnxruntime and OpenVINO
    together (default: the count already set, else the number of cores).  ``device``:
    "cpu" or "cuda[:i]" (default: the backend's).  ``model`` + ``spec``: build from an
    ``nn.Module`` directly (tests, experiments).  ``calibration`` (int8): an array of
    inputs (N, C, H, W), a recording's frames (:class:`engines.int8.Frames`), or None for
    the phantom calibration set.
    ``use_cache=False`` rebuilds the cached artefacts.  ``batch``: the engine takes
    ``batch`` frames at once (its input and output shapes start with ``batch``; built and
    cached for that fixed shape, :mod:`engines.batching`); it needs a torch model (an ONNX
    file has its own batch size) and a precision other than int8 (calibrated at batch 1).
    """
    if role not in ROLES:
        raise EngineError(f"role {role!r} is unknown; choose one of {', '.join(ROLES)}")
    if precision not in PRECISION_CHOICES:
        raise EngineError(f"precision {precision!r} is unknown; choose one of {', '.join(PRECISION_CHOICES)}")
    name = resolve_backend(backend, device, role, precision)
    precision = resolve_precision(precision, name, device)
    module = backend_module(name)
    reason = module.unavailable(device)
    if reason:
        raise EngineError(reason)
    n_threads = set_threads(threads) if threads is not None else get_threads()
    source = source_for(role, weights, model=model, spec=spec)
    if batch != 1:
        source = _batched(source, batch, precision)
    engine = module.build(source, precision, device, n_threads, calibration=calibration,
                          use_cache=use_cache)
    engine.weights_sha256 = source.digest
    log.info("engine %s: %s %s on %s (%s)", role, name, precision, engine.device, source.origin)
    return engine
