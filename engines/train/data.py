"""Phantom data sets for training, cached on disk so a second run does not remake them.

The builders are :mod:`calib.datasets`' (fixed seed ranges per split, so a cached set
is exactly what the builder would make again). The cache lives in
``$CARDIOSTREAM_DATA`` (default ``~/.cache/cardiostream/datasets``), one ``.npz`` per
builder, arguments and version of the generator: the key holds a digest of the phantom
package's source (:func:`generator_digest`), so a change of the generator makes new sets
instead of returning stale ones.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

BUILDERS = ("view_samples", "segmentation_samples", "flow_samples", "mr_segmentation_samples",
            "mr_sequence_samples", "wall_motion_samples", "infarct_samples",
            "velocity_mapping_samples")
#: sources outside ``calib`` a builder's samples depend on (their digest joins its cache key)
EXTRA_SOURCES = {"wall_motion_samples": ("streamer/measure/polar.py", "streamer/measure/sax.py"),
                 "infarct_samples": ("streamer/measure/roi.py", "streamer/measure/sax.py"),
                 "velocity_mapping_samples": ("streamer/measure/roi.py",)}


def cache_dir() -> Path:
    return Path(os.environ.get("CARDIOSTREAM_DATA", Path.home() / ".cache" / "cardiostream" / "datasets"))


def generator_digest() -> str:
    """SHA-256 (16 hex) of the source of the ``calib`` package, the phantoms' generator."""
    import calib

    h = hashlib.sha256()
    for path in sorted(Path(calib.__file__).parent.glob("*.py")):
        h.update(path.name.encode())
        h.update(path.read_bytes())
    return h.hexdigest()[:16]


def dataset(builder: str, split: str, n: int, **kwargs) -> dict[str, np.ndarray]:
    """``calib.datasets.<builder>(split, n, **kwargs)``, from the cache when it is there."""
    from calib import datasets

    if builder not in BUILDERS:
        raise ValueError(f"builder {builder!r} is unknown; choose one of {', '.join(BUILDERS)}")
    extra = {}
    if builder in EXTRA_SOURCES:
        root = Path(__file__).resolve().parents[2]
        h = hashlib.sha256()
        for name in EXTRA_SOURCES[builder]:
            h.update((root / name).read_bytes())
        extra = {"sources": h.hexdigest()[:16]}
    key = json.dumps({"builder": builder, "split": split, "n": n, "generator": generator_digest(),
                      **extra, **kwargs}, sort_keys=True)
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    path = cache_dir() / f"{builder}-{split}-{n}-{digest}.npz"
    if path.exists():
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files if k != "meta_json"}
    t0 = time.perf_counter()
    log.info("making %s %s n=%d (cached in %s)", builder, split, n, path)
    samples = getattr(datasets, builder)(split, n, **kwargs)
    tmp = path.with_suffix(".tmp.npz")
    datasets.write_dataset(tmp, samples)
    os.replace(tmp, path)
    log.info("made %s in %.1f s", path.name, time.perf_counter() - t0)
    return {k: v for k, v in samples.items() if isinstance(v, np.ndarray)}
