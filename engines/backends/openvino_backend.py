"""OpenVINO on the CPU: ``ov.convert_model`` of the ONNX file (the same export onnxruntime
runs, or its INT8 QDQ form), saved as IR in the engine cache, compiled with
``PERFORMANCE_HINT=LATENCY``, ``INFERENCE_NUM_THREADS`` from :mod:`.threads` and
``INFERENCE_PRECISION_HINT=f32`` (without it OpenVINO runs bf16 on CPUs that have
AMX/AVX512-BF16, which would break the fp32 tolerance), or ``bf16`` for ``--precision
bf16`` (the same IR: OpenVINO lowers it when it compiles; refused on a CPU whose
``OPTIMIZATION_CAPABILITIES`` lack BF16, where OpenVINO would silently run f32).
Compiled blobs are kept by OpenVINO's model cache (``CACHE_DIR``) under the engine cache, so a restart skips the
compile too."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from engines import cache
from engines.backends.base import Engine, EngineError, LoadedModel

NAME = "openvino"
IR_FILE = "model.xml"
_core = None


def version() -> str:
    import openvino

    return openvino.__version__.split("-")[0]


def unavailable(device: str | None = None) -> str | None:
    try:
        import openvino  # noqa: F401
    except ImportError:
        return "backend 'openvino' needs the openvino package, which is not installed (pip install openvino)"
    if device not in (None, "cpu"):
        return f"backend 'openvino' runs on the CPU here; device {device!r} is not supported"
    return None


def core():
    global _core
    if _core is None:
        import openvino as ov

        _core = ov.Core()
    return _core


def capabilities() -> list[str]:
    """OpenVINO's list of what this CPU computes fast (e.g. FP32, BF16, INT8)."""
    return [str(c) for c in core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")]


def cpu_has_bf16() -> bool:
    return "BF16" in capabilities()


def convert(onnx_path: Path, folder: Path) -> None:
    import openvino as ov

    model = ov.convert_model(str(onnx_path))
    # keep the weights in fp32 (save_model compresses them to fp16 by default)
    ov.save_model(model, str(folder / IR_FILE), compress_to_fp16=False)


class OpenVinoEngine(Engine):
    def __init__(self, xml: Path, source: LoadedModel, precision: str, threads: int):
        super().__init__(source.spec, NAME, precision, "cpu", origin=source.origin,
                         artefact=xml, threads=threads)
        config = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": int(threads),
                  "INFERENCE_PRECISION_HINT": "bf16" if precision == "bf16" else "f32",
                  # OpenVINO's own cache of compiled CPU blobs (keyed by model, device and
                  # config by OpenVINO): the second start skips the ~1 s compile
                  "CACHE_DIR": str(cache.cache_root() / "openvino-compiled")}
        self._compiled = core().compile_model(str(xml), "CPU", config)
        self._request = self._compiled.create_infer_request()

    def _run(self, x: np.ndarray) -> np.ndarray:
        # the input is read in place (no copy; the call is synchronous); the output is
        # copied out of the request's buffer, which the next call overwrites
        return self._request.infer({0: x}, share_inputs=True, share_outputs=True)[0].copy()


def build(source: LoadedModel, precision: str, device: str | None, threads: int,
          *, use_cache: bool = True, calibration=None, **_ignored) -> OpenVinoEngine:
    reason = unavailable(device)
    if reason:
        raise EngineError(reason)
    if precision == "bf16" and not cpu_has_bf16():
        raise EngineError("backend 'openvino': this CPU has no bf16 support (its "
                          f"OPTIMIZATION_CAPABILITIES are {', '.join(capabilities())}); use fp32")
    from engines.backends.onnx_export import cpu_onnx_model, exporter_for

    onnx = cpu_onnx_model(source, precision, NAME, calibration=calibration, use_cache=use_cache)
    ir_precision = "fp32" if precision == "bf16" else precision  # bf16: the fp32 IR, compiled bf16
    if precision == "int8":
        extra = (("from", "onnx-int8-qdq"),)
    else:
        extra = (("from", "onnx"), ("exporter", "user-onnx" if source.onnx_path else exporter_for(source)))
    # the ONNX file's hash stands for everything it was made from (code, weights, exporter,
    # calibration set and quantiser settings)
    extra += (("onnx_sha256", cache.file_digest(onnx)),)
    key = cache.CacheKey(role=source.spec.role, arch=source.spec.arch, weights_sha256=source.digest,
                         input_shape=tuple(source.spec.input.shape), precision=ir_precision,
                         backend=NAME, backend_version=version(), device="cpu", extra=extra)
    folder, _ = cache.get_or_build(key, lambda d: convert(onnx, d), use_cache=use_cache)
    return OpenVinoEngine(folder / IR_FILE, source, precision, threads)
