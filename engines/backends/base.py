"""What every backend shares: the :class:`Engine` call contract, the error type, and the
:class:`LoadedModel` a backend builds from."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from engines import spec as _spec
from engines.spec import NetSpec

#: the concrete backends (engines.spec.BACKENDS without "auto")
BACKENDS = tuple(b for b in _spec.BACKENDS if b != "auto")
PRECISIONS = tuple(_spec.PRECISIONS)


class EngineError(ValueError):
    """An engine cannot be made as asked: the backend is missing or unusable here, the
    precision or device does not fit the backend, or the model cannot be converted.
    The message says why and, where there is one, what to do instead.  A ValueError, so
    a command line that reports bad values as user errors (exit 2) reports these too."""


class ModelLoadError(EngineError):
    """A model file cannot be used for a role; the message names the file and the problem."""


@dataclass
class LoadedModel:
    """A network ready to be built into an engine.

    Exactly one of ``module`` (a torch ``nn.Module`` or TorchScript module) and
    ``onnx_path`` is set.  ``digest`` is the sha256 of the weights (state-dict bytes or
    the file) and keys the engine cache; ``origin`` says where the model came from.
    """

    spec: NetSpec
    digest: str
    origin: str
    module: Any = None
    onnx_path: Path | None = None
    #: "module" (an nn.Module built from engines.nets or given), "state_dict", "torchscript", "onnx"
    kind: str = "module"
    extra: dict = field(default_factory=dict)

    @property
    def is_torchscript(self) -> bool:
        return self.kind == "torchscript"


class Engine:
    """One network on one backend: ``engine(x) -> y`` with NumPy float32 NCHW in and out.

    ``x`` must be float32 with exactly ``spec.input.shape``; the result is a new float32
    array of ``spec.output.shape``.  Subclasses implement :meth:`_run`.
    """

    def __init__(self, spec: NetSpec, backend: str, precision: str, device: str,
                 *, origin: str = "", artefact: Path | None = None, threads: int | None = None):
        self.spec = spec
        self.backend = backend
        self.precision = precision
        self.device = device
        #: where the model came from (a file, "shipped", "module")
        self.origin = origin
        #: the cached file the engine runs from (ONNX, OpenVINO IR, TensorRT program), if any
        self.artefact = artefact
        self.threads = threads
        #: sha256 of the weights it runs (the state dict's tensors, or the model file), set by
        #: engines.backends.create_engine; the results' provenance
        self.weights_sha256 = ""

    @property
    def role(self) -> str:
        return self.spec.role

    def check_input(self, x: Any) -> np.ndarray:
        shape = tuple(self.spec.input.shape)
        if not isinstance(x, np.ndarray) or x.dtype != np.float32 or tuple(x.shape) != shape:
            got = (f"{x.dtype} array of shape {tuple(x.shape)}" if isinstance(x, np.ndarray)
                   else type(x).__name__)
            raise ValueError(f"{self.role} engine ({self.backend}): input {self.spec.input.name!r} "
                             f"must be a float32 array of shape {shape}, got {got}")
        return np.ascontiguousarray(x)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        y = self._run(self.check_input(x))
        return np.asarray(y, dtype=np.float32).reshape(self.spec.output.shape)

    def _run(self, x: np.ndarray) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(role={self.role!r}, backend={self.backend!r}, "
                f"precision={self.precision!r}, device={self.device!r}, "
                f"input={self.spec.input.shape}, origin={self.origin!r})")
