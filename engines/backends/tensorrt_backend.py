"""Torch-TensorRT 2.13 on a CUDA GPU (TensorRT 11).

Nothing heavy is imported at module import time: torch_tensorrt, TensorRT and ModelOpt
are imported inside the functions, so this module loads on a CPU-only machine and
:func:`unavailable` can say why the backend cannot run.

Path, as Torch-TensorRT 2.13 wants it:

* ``torch_tensorrt.compile(module, ir="dynamo", inputs=[Input(static shape)])``;
* fp16: ``enabled_precisions`` is ignored on the dynamo path, so the model and its inputs
  are cast to half before compiling (and each call casts the input, the output goes back
  to float32);
* int8: NVIDIA ModelOpt ``mtq.quantize(model, mtq.INT8_DEFAULT_CFG, forward_loop=...)``
  over the calibration set, exported under ``export_torch_mode()``, then compiled;
* Torch-TensorRT's own engine cache (``cache_built_engines`` / ``reuse_cached_engines``,
  which need ``immutable_weights=False``) is keyed on the graph and weights only -- not on
  the GPU or the TensorRT version -- so its folder name carries both:
  ``$CARDIOSTREAM_CACHE/tensorrt-engines/<gpu>-sm<major><minor>-trt<version>``;
* the compiled program is also saved (``torch_tensorrt.save``) in our own cache entry,
  keyed like every other artefact with device = GPU name + compute capability + TensorRT
  version, and loaded with ``torch_tensorrt.load`` the next time.
"""

from __future__ import annotations

import copy
import importlib.util
from pathlib import Path

import numpy as np

from engines import cache
from engines.backends.base import Engine, EngineError, LoadedModel

NAME = "tensorrt"
PROGRAM_FILE = "program.ep"
INSTALL_HINT = "pip install 'cardiostream[tensorrt]'"


def unavailable(device: str | None = None) -> str | None:
    """Why TensorRT cannot run here, or None.  Imports nothing heavy when the package is absent."""
    if importlib.util.find_spec("torch_tensorrt") is None:
        return (f"backend 'tensorrt' needs torch_tensorrt, which is not installed ({INSTALL_HINT})")
    import torch

    if not torch.cuda.is_available():
        return "backend 'tensorrt' needs a CUDA GPU; torch.cuda.is_available() is False"
    if device is not None and not str(device).startswith("cuda"):
        return f"backend 'tensorrt' runs on a CUDA device, not {device!r}"
    return _import_problem()


_import_checked: list[str | None] = []


def _import_problem() -> str | None:
    """Import torch_tensorrt once (only here, on a CUDA machine that has it): a broken
    install is a reason, not a traceback at build time."""
    if not _import_checked:
        try:
            import torch_tensorrt  # noqa: F401
            _import_checked.append(None)
        except Exception as exc:  # ImportError, OSError from missing TensorRT libraries, ...
            _import_checked.append(f"backend 'tensorrt': torch_tensorrt is installed but does not "
                                   f"import: {type(exc).__name__}: {exc}")
    return _import_checked[0]


def version() -> str:
    import torch_tensorrt

    return torch_tensorrt.__version__


def device_tag(device: str) -> str:
    """GPU name, compute capability and TensorRT version, e.g. ``NVIDIA_H100_80GB_HBM3-sm90-trt11.0.0``."""
    import tensorrt
    import torch

    index = torch.device(device).index or 0
    name = torch.cuda.get_device_name(index).replace(" ", "_")
    major, minor = torch.cuda.get_device_capability(index)
    return f"{name}-sm{major}{minor}-trt{tensorrt.__version__}"


def trt_engine_cache_dir(device: str) -> Path:
    return cache.cache_root() / "tensorrt-engines" / cache._safe(device_tag(device))


class TensorRTEngine(Engine):
    def __init__(self, program, source: LoadedModel, precision: str, device: str, artefact: Path):
        import torch

        super().__init__(source.spec, NAME, precision, device, origin=source.origin, artefact=artefact)
        self._torch = torch
        self._program = program
        self._dtype = torch.float16 if precision == "fp16" else torch.float32
        self._dev = torch.device(device)

    def _run(self, x: np.ndarray) -> np.ndarray:
        torch = self._torch
        with torch.inference_mode():
            t = torch.from_numpy(x).to(self._dev, self._dtype)
            y = self._program(t)
            if isinstance(y, (tuple, list)):
                y = y[0]
            return y.float().cpu().numpy()


def _quantize_int8(module, source: LoadedModel, calibration, device: str):
    import torch

    try:
        import modelopt.torch.quantization as mtq
    except ImportError as exc:
        raise EngineError("tensorrt int8 needs NVIDIA ModelOpt, which is not installed "
                          "(pip install 'cardiostream[tensorrt]', which adds nvidia-modelopt)") from exc
    from engines.int8 import calibration_inputs

    data = torch.from_numpy(calibration_inputs(source.spec, calibration)).to(device)

    def forward_loop(model):
        for i in range(len(data)):
            model(data[i:i + 1])

    return mtq.quantize(module, mtq.INT8_DEFAULT_CFG, forward_loop=forward_loop)


def _compile(source: LoadedModel, precision: str, device: str, calibration, folder: Path) -> None:
    import torch
    import torch_tensorrt

    module = copy.deepcopy(source.module).eval().to(device)
    dtype = torch.float16 if precision == "fp16" else torch.float32
    example = torch.zeros(source.spec.input.shape, dtype=dtype, device=device)
    settings = dict(ir="dynamo", min_block_size=1, cache_built_engines=True,
                    reuse_cached_engines=True, immutable_weights=False,
                    engine_cache_dir=str(trt_engine_cache_dir(device)))
    with torch.no_grad():
        if precision == "fp16":
            module = module.half()
        if precision == "int8":
            from modelopt.torch.quantization.utils import export_torch_mode

            module = _quantize_int8(module, source, calibration, device)
            with export_torch_mode():
                program = torch.export.export(module, (example,), strict=False)
                compiled = torch_tensorrt.dynamo.compile(program, inputs=[example], **{
                    k: v for k, v in settings.items() if k != "ir"})
        else:
            compiled = torch_tensorrt.compile(
                module, inputs=[torch_tensorrt.Input(tuple(source.spec.input.shape), dtype=dtype)],
                **settings)
    torch_tensorrt.save(compiled, str(folder / PROGRAM_FILE), output_format="exported_program",
                        inputs=[example])


def build(source: LoadedModel, precision: str, device: str | None, threads: int | None,
          *, use_cache: bool = True, calibration=None, **_ignored) -> TensorRTEngine:
    device = str(device or "cuda:0")
    if device == "cuda":
        device = "cuda:0"
    if precision == "bf16":
        raise EngineError("backend 'tensorrt' runs fp32, fp16 and int8 here; use fp16 on the GPU "
                          "(bf16 is for CPUs with AVX512-BF16 or AMX, on openvino)")
    reason = unavailable(device)
    if reason:
        raise EngineError(reason)
    if source.module is None:
        raise EngineError(f"{source.spec.role}: {source.origin} is an ONNX model; backend "
                          "'tensorrt' (Torch-TensorRT) compiles torch modules -- give a state "
                          "dict, or run the ONNX file on onnxruntime/openvino")
    if source.is_torchscript:
        raise EngineError(f"{source.spec.role}: {source.origin} is TorchScript; Torch-TensorRT's "
                          "dynamo path needs an nn.Module -- give the weights as a state dict")
    import torch_tensorrt  # noqa: F401  (registers the TensorRT ops torch_tensorrt.load needs)

    from engines.backends.onnx_export import source_code_digest

    extra = (("code_sha256", source_code_digest(source)),)
    if precision == "int8":
        from engines.int8 import calibration_inputs

        extra += (("calibration_sha256", cache.array_digest(calibration_inputs(source.spec, calibration))),
                  ("quantizer", "modelopt-INT8_DEFAULT_CFG"))
    key = cache.CacheKey(role=source.spec.role, arch=source.spec.arch, weights_sha256=source.digest,
                         input_shape=tuple(source.spec.input.shape), precision=precision,
                         backend=NAME, backend_version=version(), device=device_tag(device),
                         extra=extra)
    folder, _ = cache.get_or_build(
        key, lambda d: _compile(source, precision, device, calibration, d), use_cache=use_cache)
    program = torch_tensorrt.load(str(folder / PROGRAM_FILE)).module()
    return TensorRTEngine(program, source, precision, device, folder / PROGRAM_FILE)
