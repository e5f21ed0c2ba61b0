"""Torch -> ONNX, shared by the onnxruntime and OpenVINO backends and by CPU INT8.

Exporter choice, measured in torch 2.13 (2 threads, median of 3 interleaved rounds of 30
calls, on the project's 2-core machine shared with training jobs, so +-20 %):

=================  ==============  ==================  ==================  ===============
network            exporter        onnxruntime ms      openvino ms         export s
=================  ==============  ==================  ==================  ===============
view 1x1x96x96     dynamo/legacy   0.64 / 0.65         1.16 / 1.23         12.8 / 1.5
seg  1x1x128x128   dynamo/legacy   26.1 / 35.0         19.0 / 24.6         4.0 / 1.1
flow 1x2x256x256   dynamo/legacy   102.9 / 105.5       60.0 / 60.0         26.0 / 5.0
=================  ==============  ==================  ==================  ===============

Both graphs work on both runtimes and give the same outputs (max abs diff to eager torch
2e-7 or less for either).  The torch.export-based exporter (``dynamo=True``, the default
since torch 2.9) is as fast or faster (seg: 1.3x) and the legacy TorchScript one warns
that it "will be removed", so ``nn.Module`` models go through ``dynamo=True``; its longer
export (the first in a process also loads onnxscript) is paid once per cache entry.  A
user's TorchScript module cannot go through torch.export and uses the legacy exporter,
which accepts a ``ScriptModule`` directly.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from pathlib import Path

from engines import cache
from engines.backends.base import EngineError, LoadedModel

log = logging.getLogger(__name__)

#: opset of the dynamo exporter's graphs (its default in torch 2.13)
DYNAMO_OPSET = 18
#: opset for the legacy exporter (TorchScript inputs)
LEGACY_OPSET = 17
ONNX_FILE = "model.onnx"


def exporter_for(source: LoadedModel) -> str:
    return "legacy" if source.is_torchscript else "dynamo"


def export_onnx(source: LoadedModel, path: Path) -> Path:
    """Write ``source``'s module as a single-file ONNX model with the spec's tensor names."""
    import torch

    spec = source.spec
    example = (torch.zeros(spec.input.shape, dtype=torch.float32),)
    exporter = exporter_for(source)
    kwargs = dict(input_names=[spec.input.name], output_names=[spec.output.name])
    quiet = io.StringIO()
    noisy = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "torch._export",
                                            "torch.onnx._internal.exporter._registration")]
    levels = [lg.level for lg in noisy]
    try:
        for lg in noisy:
            lg.setLevel(logging.ERROR)
        with warnings.catch_warnings(), contextlib.redirect_stdout(quiet), torch.inference_mode(False), \
                torch.no_grad():
            warnings.simplefilter("ignore")
            if exporter == "dynamo":
                torch.onnx.export(source.module, example, str(path), dynamo=True,
                                  opset_version=DYNAMO_OPSET, optimize=True, verbose=False,
                                  external_data=False, **kwargs)
            else:
                torch.onnx.export(source.module, example, str(path), dynamo=False,
                                  opset_version=LEGACY_OPSET, do_constant_folding=True, **kwargs)
    except Exception as exc:
        raise EngineError(f"{spec.role}: could not export {source.origin} to ONNX "
                          f"({exporter} exporter): {type(exc).__name__}: {exc}") from exc
    finally:
        for lg, level in zip(noisy, levels):
            lg.setLevel(level)
    return path


def onnx_key(source: LoadedModel) -> cache.CacheKey:
    import torch

    return cache.CacheKey(
        role=source.spec.role, arch=source.spec.arch, weights_sha256=source.digest,
        input_shape=tuple(source.spec.input.shape), precision="fp32", backend="onnx",
        backend_version=f"torch{torch.__version__}", device="any",
        extra=(("exporter", exporter_for(source)), ("code_sha256", source_code_digest(source))))


def source_code_digest(source: LoadedModel) -> str:
    """The code part of the key: the model's Python source for modules built here; the
    file's hash already covers TorchScript and ONNX."""
    if source.kind in ("module", "state_dict") and source.module is not None:
        return cache.code_digest(source.module)
    return "in-file"


def onnx_model(source: LoadedModel, *, use_cache: bool = True) -> Path:
    """The fp32 ONNX file of ``source``: the user's own file, or a cached export."""
    if source.onnx_path is not None:
        return source.onnx_path
    folder, _ = cache.get_or_build(onnx_key(source), lambda d: export_onnx(source, d / ONNX_FILE),
                                   use_cache=use_cache)
    return folder / ONNX_FILE


def cpu_onnx_model(source: LoadedModel, precision: str, backend: str, *, calibration=None,
                   use_cache: bool = True) -> Path:
    """The ONNX file a CPU backend runs: the fp32 export (also for bf16, which the backend
    applies when it compiles), or its INT8 (QDQ) quantisation."""
    from engines.backends.base import EngineError

    if precision == "fp16":
        raise EngineError(f"backend {backend!r} runs fp32 and int8 on the CPU (no fast fp16 CPU "
                          "kernels); fp16 needs --backend tensorrt or torch on CUDA")
    if precision == "int8":
        from engines.int8 import quantized_onnx

        return quantized_onnx(source, onnx_model(source, use_cache=use_cache), calibration,
                              use_cache=use_cache)
    return onnx_model(source, use_cache=use_cache)
