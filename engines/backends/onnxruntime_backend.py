"""onnxruntime on the CPU: the cached ONNX export (or the user's ONNX file), or its INT8
QDQ form, with every graph optimisation on and the thread count of :mod:`.threads`."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from engines.backends.base import Engine, EngineError, LoadedModel

NAME = "onnxruntime"


def version() -> str:
    import onnxruntime

    return onnxruntime.__version__


def unavailable(device: str | None = None) -> str | None:
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return "backend 'onnxruntime' needs the onnxruntime package, which is not installed (pip install onnxruntime)"
    if device not in (None, "cpu"):
        return f"backend 'onnxruntime' runs on the CPU here (CPUExecutionProvider); device {device!r} is not supported"
    return None


def session(path: Path, threads: int):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3
    # Idle intra-op threads otherwise spin-wait after every run, holding a core the next
    # engine (OpenVINO, numba) needs: on 2 cores that doubled the seg and flow stages.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


class OnnxRuntimeEngine(Engine):
    def __init__(self, path: Path, source: LoadedModel, precision: str, threads: int):
        super().__init__(source.spec, NAME, precision, "cpu", origin=source.origin,
                         artefact=path, threads=threads)
        self._session = session(path, threads)
        self._input = self._session.get_inputs()[0].name
        self._output = self._session.get_outputs()[0].name

    def _run(self, x: np.ndarray) -> np.ndarray:
        return self._session.run([self._output], {self._input: x})[0]


def build(source: LoadedModel, precision: str, device: str | None, threads: int,
          *, use_cache: bool = True, calibration=None, **_ignored) -> OnnxRuntimeEngine:
    reason = unavailable(device)
    if reason:
        raise EngineError(reason)
    if precision == "bf16":
        raise EngineError("backend 'onnxruntime' has no bf16 kernels on the CPU; bf16 runs on "
                          "openvino (or torch)")
    from engines.backends.onnx_export import cpu_onnx_model

    path = cpu_onnx_model(source, precision, NAME, calibration=calibration, use_cache=use_cache)
    return OnnxRuntimeEngine(path, source, precision, threads)
