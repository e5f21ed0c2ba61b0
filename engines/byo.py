"""Bring your own model: a user's state dict, TorchScript or ONNX file for a role.

The shipped weights are trained on phantoms; clinical use needs the user's own, for the
same I/O contract (:mod:`engines.spec`).  :func:`load_model` reads the file, checks it
against the role's contract -- declared shapes (ONNX), a run on a zeros input, the
output shape -- and returns a :class:`LoadedModel` that any backend builds from::

    state dict   .pt / .pth   torch.load(weights_only=True) into the role's network
                              (engines.nets); key and shape mismatches are listed
    TorchScript  .pt / .ts    torch.jit.load; runs on torch, onnxruntime, openvino
    ONNX         .onnx        runs on onnxruntime and openvino (not on torch/tensorrt)

The format is recognised from the content (a ``.pt`` may be either of the first two).
Every problem is a :class:`ModelLoadError` whose message starts with the file's path.
"""

from __future__ import annotations

import inspect
import logging
import os
import zipfile
from collections.abc import Callable
from pathlib import Path

from engines import cache
from engines.backends.base import EngineError, LoadedModel, ModelLoadError
from engines.spec import ROLES, NetSpec

log = logging.getLogger(__name__)

#: wrappers training scripts commonly put around a state dict
STATE_DICT_WRAPPERS = ("state_dict", "model_state_dict", "model", "net", "weights")
_SHOW = 5  # mismatches listed in an error


def _spec(role: str, spec: NetSpec | None) -> NetSpec:
    if role not in ROLES:
        raise EngineError(f"role {role!r} is unknown; choose one of {', '.join(ROLES)}")
    if spec is None:
        from engines import nets

        spec = nets.spec(role)
    if spec.role != role:
        raise EngineError(f"spec is for role {spec.role!r}, not {role!r}")
    return spec


def _contract(spec: NetSpec) -> str:
    return (f"the {spec.role} contract is one input {spec.input.name!r} {tuple(spec.input.shape)} "
            f"-> one output {spec.output.name!r} {tuple(spec.output.shape)}")


# ---------------------------------------------------------------- torch modules

def _n_required_inputs(module) -> int | None:
    try:
        if hasattr(module.forward, "schema"):          # TorchScript
            args = module.forward.schema.arguments[1:]  # drop self
            return sum(1 for a in args if a.default_value is None and not a.kwarg_only)
        params = inspect.signature(module.forward).parameters.values()
        return sum(1 for p in params if p.default is p.empty
                   and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD))
    except (TypeError, ValueError, AttributeError):
        return None


def validate_module(module, spec: NetSpec, origin: str) -> None:
    """Run ``module`` on zeros of the input shape; raise ModelLoadError unless the one output
    has the output shape."""
    import torch

    n = _n_required_inputs(module)
    if n is not None and n != 1:
        raise ModelLoadError(f"{origin}: the model takes {n} inputs; {_contract(spec)}")
    module.eval()
    try:
        with torch.inference_mode():
            y = module(torch.zeros(spec.input.shape, dtype=torch.float32))
    except Exception as exc:
        raise ModelLoadError(f"{origin}: the model fails on a zeros input of shape "
                             f"{tuple(spec.input.shape)} ({_contract(spec)}): "
                             f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:300]}") from exc
    if isinstance(y, (tuple, list)) and len(y) == 1:
        y = y[0]
    if not isinstance(y, torch.Tensor):
        kind = f"{len(y)} outputs" if isinstance(y, (tuple, list, dict)) else type(y).__name__
        raise ModelLoadError(f"{origin}: the model returns {kind}; {_contract(spec)}")
    if tuple(y.shape) != tuple(spec.output.shape):
        raise ModelLoadError(f"{origin}: output shape {tuple(y.shape)} does not fit the {spec.role} "
                             f"role: expected {spec.output.name!r} {tuple(spec.output.shape)}")
    if not y.is_floating_point():
        raise ModelLoadError(f"{origin}: output dtype {y.dtype}; expected floating point")


def from_module(role: str, module, spec: NetSpec | None = None) -> LoadedModel:
    """A LoadedModel of an in-memory ``nn.Module`` (checked against the contract)."""
    spec = _spec(role, spec)
    origin = f"module {type(module).__name__}"
    validate_module(module, spec, origin)
    return LoadedModel(spec=spec, digest=cache.state_dict_digest(module), origin=origin,
                       module=module.eval(), kind="module")


def _unwrap(obj, path: Path) -> dict:
    import torch

    if isinstance(obj, dict):
        for key in STATE_DICT_WRAPPERS:
            if key in obj and isinstance(obj[key], dict) and not isinstance(obj[key], torch.Tensor):
                inner = obj[key]
                if inner and all(isinstance(v, torch.Tensor) for v in inner.values()):
                    obj = inner
                    break
    if not isinstance(obj, dict) or not obj:
        raise ModelLoadError(f"{path}: holds a {type(obj).__name__}, not a state dict "
                             "(a mapping of parameter names to tensors)")
    bad = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise ModelLoadError(f"{path}: not a state dict: entries {bad[:_SHOW]} are not tensors")
    if all(k.startswith("module.") for k in obj):     # saved from DataParallel/DDP
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return obj


def load_state_dict_into(module, state: dict, path: Path, spec: NetSpec) -> None:
    """Load ``state`` into ``module`` after checking names and shapes; list mismatches."""
    want = module.state_dict()
    ignorable = {k for k in want if k.endswith("num_batches_tracked")}
    missing = [k for k in want if k not in state and k not in ignorable]
    unexpected = [k for k in state if k not in want]
    shapes = [f"{k}: file {tuple(state[k].shape)} vs network {tuple(want[k].shape)}"
              for k in want if k in state and tuple(state[k].shape) != tuple(want[k].shape)]
    if missing or unexpected or shapes:
        parts = []
        for title, items in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", shapes)):
            if items:
                more = f" (+{len(items) - _SHOW} more)" if len(items) > _SHOW else ""
                parts.append(f"{len(items)} {title}: " + ", ".join(items[:_SHOW]) + more)
        raise ModelLoadError(f"{path}: the state dict does not fit the {spec.role} network "
                             f"({spec.arch}): " + "; ".join(parts))
    module.load_state_dict(state, strict=False)


# ---------------------------------------------------------------- file formats

def _format(path: Path) -> str:
    with open(path, "rb") as f:
        head = f.read(4)
    if not head:
        raise ModelLoadError(f"{path}: the file is empty")
    suffix = path.suffix.lower()
    if suffix == ".onnx":
        return "onnx"
    if head.startswith(b"PK"):
        try:
            with zipfile.ZipFile(path) as z:
                names = z.namelist()
        except (zipfile.BadZipFile, OSError) as exc:
            raise ModelLoadError(f"{path}: truncated or corrupt: not a complete PyTorch archive "
                                 f"({exc})") from exc
        if any("/code/" in n or n.endswith("constants.pkl") for n in names):
            return "torchscript"
        return "state_dict"
    if head[:1] == b"\x80":          # a legacy (non-zip) torch.save pickle
        return "state_dict"
    if suffix in (".pt", ".pth", ".ts", ".pkl", ".bin"):
        raise ModelLoadError(f"{path}: not a PyTorch file (neither a zip archive as torch.save and "
                             "torch.jit.save write, nor a legacy pickle): corrupt, or another format")
    return "onnx"                     # other suffixes: try ONNX, which says if it is not


def _load_torch_file(path: Path):
    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        msg = str(exc).strip().splitlines()[0][:300]
        if "weights_only" in str(exc) or "Unsupported global" in str(exc):
            raise ModelLoadError(f"{path}: holds pickled Python objects beyond tensors, which are "
                                 "not loaded for safety (torch.load weights_only=True); save "
                                 "model.state_dict() or a TorchScript module instead") from exc
        raise ModelLoadError(f"{path}: cannot be read as a PyTorch state dict (truncated or "
                             f"corrupt?): {type(exc).__name__}: {msg}") from exc


def _load_torchscript(path: Path):
    import torch

    try:
        return torch.jit.load(str(path), map_location="cpu")
    except Exception as exc:
        msg = str(exc).strip().splitlines()[0][:300]
        raise ModelLoadError(f"{path}: cannot be read as TorchScript (truncated or corrupt?): "
                             f"{type(exc).__name__}: {msg}") from exc


def _check_onnx(path: Path, spec: NetSpec) -> None:
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=True)
        onnx.checker.check_model(model)
    except Exception as exc:
        msg = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
        raise ModelLoadError(f"{path}: not a valid ONNX model (truncated or corrupt?): {msg}") from exc
    graph = model.graph
    if not graph.node:
        raise ModelLoadError(f"{path}: not a valid ONNX model: the graph has no operators")
    init = {i.name for i in graph.initializer}
    inputs = [i for i in graph.input if i.name not in init]
    for what, items, tensor in (("inputs", inputs, spec.input), ("outputs", graph.output, spec.output)):
        if len(items) != 1:
            names = ", ".join(repr(i.name) for i in items)
            raise ModelLoadError(f"{path}: the model has {len(items)} {what} ({names}); {_contract(spec)}")
        info = items[0].type.tensor_type
        if info.elem_type not in (0, onnx.TensorProto.FLOAT):
            raise ModelLoadError(f"{path}: {what[:-1]} {items[0].name!r} has element type "
                                 f"{onnx.TensorProto.DataType.Name(info.elem_type)}; expected float32")
        if info.HasField("shape"):
            dims = [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in info.shape.dim]
            fixed_ok = len(dims) == len(tensor.shape) and all(
                not isinstance(d, int) or d == e for d, e in zip(dims, tensor.shape))
            if not fixed_ok:
                raise ModelLoadError(f"{path}: declares {what[:-1]} {items[0].name!r} of shape "
                                     f"{tuple(dims)}; the {spec.role} role expects {tensor.name!r} "
                                     f"{tuple(tensor.shape)}")


def validate_onnx(path: Path, spec: NetSpec) -> None:
    """Declared shapes, then a run on zeros in onnxruntime with the output shape checked."""
    import numpy as np
    import onnxruntime as ort

    _check_onnx(path, spec)
    try:
        options = ort.SessionOptions()
        options.log_severity_level = 3
        options.intra_op_num_threads = 1
        sess = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        y = sess.run(None, {sess.get_inputs()[0].name: np.zeros(spec.input.shape, np.float32)})[0]
    except Exception as exc:
        msg = str(exc).strip().splitlines()[0][:300]
        raise ModelLoadError(f"{path}: the model fails on a zeros input of shape "
                             f"{tuple(spec.input.shape)} ({_contract(spec)}): {msg}") from exc
    if tuple(y.shape) != tuple(spec.output.shape):
        raise ModelLoadError(f"{path}: output shape {tuple(y.shape)} does not fit the {spec.role} "
                             f"role: expected {spec.output.name!r} {tuple(spec.output.shape)}")


def load_model(role: str, path: str | os.PathLike, *, spec: NetSpec | None = None,
               build: Callable | None = None) -> LoadedModel:
    """A user's model file for ``role``, checked against the role's contract.

    ``spec`` defaults to the role's network spec (engines.nets); ``build`` makes the
    architecture a state dict is loaded into (default ``engines.nets.build(role)``).
    """
    spec = _spec(role, spec)
    path = Path(path).expanduser()
    if not path.exists():
        raise ModelLoadError(f"{path}: no such file")
    if not path.is_file():
        raise ModelLoadError(f"{path}: not a file")
    fmt = _format(path)
    digest = cache.file_digest(path)
    if fmt == "onnx":
        validate_onnx(path, spec)
        return LoadedModel(spec=spec, digest=digest, origin=str(path), onnx_path=path.resolve(), kind="onnx")
    if fmt == "torchscript":
        module = _load_torchscript(path)
        validate_module(module, spec, str(path))
        return LoadedModel(spec=spec, digest=digest, origin=str(path), module=module, kind="torchscript")
    state = _unwrap(_load_torch_file(path), path)
    if build is None:
        from engines import nets

        module = nets.build(role)
    else:
        module = build()
    load_state_dict_into(module, state, path, spec)
    validate_module(module, spec, str(path))
    return LoadedModel(spec=spec, digest=digest, origin=str(path), module=module.eval(), kind="state_dict")


def shipped_model(role: str) -> LoadedModel:
    """The role's network with the weights shipped in ``engines/weights/``."""
    from engines import nets

    spec = _spec(role, None)
    path = nets.shipped_weights(role)
    if not path.is_file():
        raise EngineError(f"no trained weights for the {role} network: {path} is missing; train "
                          f"them with `cardiostream engines train {role}` or pass your own "
                          "(weights=PATH / --weights ROLE=PATH)")
    model = load_model(role, path, spec=spec)
    model.origin = f"shipped {path.name}"
    return model
