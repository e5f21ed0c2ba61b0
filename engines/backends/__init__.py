"""Engine backends: one call signature for eager torch, onnxruntime, OpenVINO and TensorRT.

    from engines.backends import create_engine
    engine = create_engine("seg")                    # auto backend, fp32, shipped weights
    logits = engine(image)                           # (1, 1, H, W) float32 -> (1, 3, H, W)
    create_engine("flow", "openvino", "int8")        # INT8 on the CPU, calibrated on phantoms
    create_engine("seg", weights="my_unet.onnx")     # bring your own (engines.byo)

=============  ======================================  ================  ==============
backend        runs                                    precisions        device
=============  ======================================  ================  ==============
torch          eager PyTorch (the reference)           fp32; fp16 CUDA   cpu, cuda[:i]
onnxruntime    cached ONNX export, CPU provider        fp32, int8        cpu
openvino       cached IR of the same export            fp32, int8        cpu
tensorrt       Torch-TensorRT 2.13 (dynamo)            fp32, fp16, int8  cuda[:i]
=============  ======================================  ================  ==============

``auto`` is tensorrt when torch_tensorrt imports and CUDA is available, else
:data:`AUTO_CPU_BACKEND` (per role, as measured).  A backend that cannot run here is an :class:`EngineError`
that says why; there is no silent fallback to another one.
"""

from __future__ import annotations

import importlib
import logging
import os

from engines.backends.base import (BACKENDS, PRECISIONS, Engine, EngineError, LoadedModel,
                                   ModelLoadError)
from engines.backends.threads import cpu_count, get_threads, set_threads
from engines.spec import ROLES, NetSpec

log = logging.getLogger(__name__)

__all__ = ["AUTO_CPU_BACKEND", "BACKENDS", "PRECISIONS", "Engine", "EngineError", "LoadedModel",
           "ModelLoadError", "backend_module", "backend_status", "create_engine", "cpu_count",
           "get_threads", "resolve_backend", "set_threads", "source_for"]

#: The CPU backend ``auto`` picks, per role: the fastest measured.  Median latency in ms,
#: batch 1, the shipped networks and weights, 3 interleaved rounds of 30 calls, on this
#: project's 2-core Xeon @ 2.8 GHz (AVX-512 VNNI) while three training jobs shared it --
#: absolute figures are high and +-30 %, but the ranking held in every round and in an
#: earlier run on other versions of the networks:
#:
#:   network (input)       threads  torch fp32  onnxruntime fp32/int8  openvino fp32/int8
#:   view (1x1x96x96)      2        564          0.43 / 1.49            1.04 / 1.10
#:                         1          7.5        0.41 / 0.77            0.73 / 0.83
#:   seg  (1x1x128x128)    2        628         17.0 / 20.1             8.4 / 4.0
#:                         1         26.6       11.9 / 12.1            11.5 / 5.1
#:   flow (1x2x256x256)    2        180         61.0 / 61.6            38.6 / 18.6
#:                         1         44.5       34.9 / 26.3            24.6 / 15.0
#:
#: OpenVINO is the fastest on the two networks that dominate a frame (seg up to 2x, flow
#: 1.4-1.6x onnxruntime; and its INT8 is 2x its fp32, where onnxruntime's QDQ INT8 gains
#: little); onnxruntime is faster on the small view classifier, where OpenVINO's per-call
#: overhead dominates.  Eager torch is slowest everywhere, and its OpenMP pool collapses
#: when the cores are shared (the 2-thread column).  Any backend can still be named.
AUTO_CPU_BACKEND = {"view": "onnxruntime", "seg": "openvino", "flow": "openvino"}

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


def resolve_backend(backend: str = "auto", device: str | None = None, role: str = "seg") -> str:
    """The backend ``backend`` names; for ``auto``: tensorrt when it can run here (or, on an
    explicit CUDA device without it, eager torch on that device), else the role's
    :data:`AUTO_CPU_BACKEND`."""
    if backend != "auto":
        backend_module(backend)  # unknown name -> EngineError
        return backend
    if device is not None and str(device).startswith("cuda"):
        return "tensorrt" if backend_module("tensorrt").unavailable(device) is None else "torch"
    if device in (None, "auto") and backend_module("tensorrt").unavailable(None) is None:
        return "tensorrt"
    return AUTO_CPU_BACKEND[role]


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


def create_engine(role: str, backend: str = "auto", precision: str = "fp32",
                  weights: str | os.PathLike | None = None, threads: int | None = None,
                  device: str | None = None, *, model=None, spec: NetSpec | None = None,
                  calibration=None, use_cache: bool = True) -> Engine:
    """An engine for ``role`` on ``backend`` at ``precision``.

    ``weights``: a user's state dict, TorchScript or ONNX file for the role (default: the
    shipped weights).  ``threads``: CPU threads for torch, onnxruntime and OpenVINO
    together (default: the count already set, else the number of cores).  ``device``:
    "cpu" or "cuda[:i]" (default: the backend's).  ``model`` + ``spec``: build from an
    ``nn.Module`` directly (tests, experiments).  ``calibration`` (int8): an array of
    inputs (N, C, H, W), a clip path, or None for the phantom calibration set.
    ``use_cache=False`` rebuilds the cached artefacts.
    """
    if role not in ROLES:
        raise EngineError(f"role {role!r} is unknown; choose one of {', '.join(ROLES)}")
    if precision not in PRECISIONS:
        raise EngineError(f"precision {precision!r} is unknown; choose one of {', '.join(PRECISIONS)}")
    name = resolve_backend(backend, device, role)
    module = backend_module(name)
    reason = module.unavailable(device)
    if reason:
        raise EngineError(reason)
    n_threads = set_threads(threads) if threads is not None else get_threads()
    source = source_for(role, weights, model=model, spec=spec)
    engine = module.build(source, precision, device, n_threads, calibration=calibration,
                          use_cache=use_cache)
    log.info("engine %s: %s %s on %s (%s)", role, name, precision, engine.device, source.origin)
    return engine
