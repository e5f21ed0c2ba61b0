"""Built engine artefacts on disk: ONNX exports, OpenVINO IR, INT8 models, TensorRT programs.

Location: ``$CARDIOSTREAM_CACHE`` (default ``~/.cache/cardiostream/engines``).  One folder
per entry, named so a person can tell entries apart, ending in a hash of the full key::

    seg-unet-openvino-2026.4.1-fp32-cpu-1x1x256x256-3f9c1a2b7d4e

The key (:class:`CacheKey`) holds the role, architecture, weights hash (sha256 of the
state-dict bytes or of the user's file), input shape, precision, backend and its
version, device (for GPUs: name, compute capability and TensorRT version) and any extra
inputs of the build (exporter, calibration-set hash).  Each folder holds the artefact
files and ``key.json``; it is built in a temporary folder and renamed into place, so a
crashed or concurrent build never leaves a half-written entry behind.  Delete the folder
(or the whole cache) to force a rebuild.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

#: builds and hits since the process started, by backend (read by tests and ``engines build``)
STATS: Counter = Counter()


def cache_root() -> Path:
    return Path(os.environ.get("CARDIOSTREAM_CACHE",
                               Path.home() / ".cache" / "cardiostream" / "engines")).expanduser()


def state_dict_digest(module) -> str:
    """sha256 over a module's state dict: names, dtypes, shapes and tensor bytes, in order."""
    import torch

    h = hashlib.sha256()
    for name, t in module.state_dict().items():
        t = t.detach().to("cpu").contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        if t.dtype == torch.bfloat16:
            t = t.view(torch.int16)
        h.update(t.numpy().tobytes())
    return h.hexdigest()


def code_digest(module) -> str:
    """sha256 of the source files defining ``module``'s classes (all submodules).

    An export depends on ``forward`` as well as on the weights: a code change that keeps
    every parameter (another interpolation mode, say) must not reuse a stale artefact.
    TorchScript and ONNX models carry their code in the file, whose hash covers it.
    """
    import inspect

    files = set()
    for m in module.modules():
        try:
            files.add(inspect.getsourcefile(type(m)))
        except (TypeError, OSError):
            continue
    h = hashlib.sha256()
    for f in sorted(f for f in files if f and os.path.isfile(f) and "site-packages" not in f):
        h.update(f.encode() + b"|" + Path(f).read_bytes())
    return h.hexdigest()


def file_digest(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def array_digest(array) -> str:
    import numpy as np

    a = np.ascontiguousarray(array)
    return hashlib.sha256(f"{a.dtype}|{a.shape}|".encode() + a.tobytes()).hexdigest()


@dataclass(frozen=True)
class CacheKey:
    role: str
    arch: str
    weights_sha256: str
    input_shape: tuple[int, ...]
    precision: str
    #: what the artefact is: "onnx", "onnx-int8", "openvino", "tensorrt", ...
    backend: str
    backend_version: str
    device: str = "cpu"
    #: further build inputs, e.g. {"exporter": "dynamo"} or {"calibration_sha256": ...}
    extra: tuple[tuple[str, str], ...] = field(default_factory=tuple)

    def as_dict(self) -> dict:
        d = asdict(self)
        d["input_shape"] = list(self.input_shape)
        d["extra"] = dict(self.extra)
        return d

    @property
    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self.as_dict(), sort_keys=True).encode()).hexdigest()

    @property
    def dirname(self) -> str:
        shape = "x".join(str(s) for s in self.input_shape)
        parts = [self.role, self.arch, self.backend, self.backend_version, self.precision,
                 self.device, shape, self.digest[:12]]
        return "-".join(_safe(p) for p in parts)


def _safe(text: str) -> str:
    return "".join(c if (c.isascii() and c.isalnum()) or c in "._+" else "_" for c in str(text))[:40]


def entry_dir(key: CacheKey, root: Path | None = None) -> Path:
    return (root or cache_root()) / key.dirname


def lookup(key: CacheKey, root: Path | None = None) -> Path | None:
    """The entry's folder when it is complete, else None."""
    d = entry_dir(key, root)
    return d if (d / "key.json").is_file() else None


def get_or_build(key: CacheKey, build: Callable[[Path], None], *, root: Path | None = None,
                 use_cache: bool = True) -> tuple[Path, bool]:
    """The folder of ``key``'s entry, calling ``build(folder)`` to fill it when it is missing.

    Returns ``(folder, hit)``.  With ``use_cache=False`` the entry is rebuilt and replaces
    any existing one.
    """
    root = root or cache_root()
    if use_cache:
        found = lookup(key, root)
        if found is not None:
            STATS[f"hit:{key.backend}"] += 1
            log.debug("engine cache hit %s", found)
            return found, True
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".build-", dir=root))
    t0 = time.perf_counter()
    try:
        build(tmp)
        meta = {"key": key.as_dict(), "built_s": round(time.perf_counter() - t0, 3),
                "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "files": sorted(p.name for p in tmp.iterdir())}
        (tmp / "key.json").write_text(json.dumps(meta, indent=2))
        final = entry_dir(key, root)
        if final.exists():
            if use_cache and lookup(key, root) is not None:  # another process won the race
                shutil.rmtree(tmp, ignore_errors=True)
                STATS[f"hit:{key.backend}"] += 1
                return final, True
            shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    STATS[f"build:{key.backend}"] += 1
    log.info("built %s in %.1f s", final, time.perf_counter() - t0)
    return final, False


def entries(root: Path | None = None) -> list[dict]:
    """The complete entries under the cache root, with their key and build time."""
    root = root or cache_root()
    out = []
    if root.is_dir():
        for d in sorted(root.iterdir()):
            meta = d / "key.json"
            if meta.is_file():
                out.append({"path": str(d), **json.loads(meta.read_text())})
    return out
