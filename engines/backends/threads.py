"""One place for the thread counts of every numeric library in the worker.

torch, onnxruntime and OpenVINO each keep their own thread pool; left alone, each sizes
it to the machine and together they oversubscribe the cores (and numba's, used by
``streamer.measure``, is a fourth).  :func:`set_threads` sets torch's (and numba's when it
is loaded) and remembers the count; the onnxruntime and OpenVINO backends read it from
:func:`get_threads` when they open a session, so every engine made after the call uses it.
"""

from __future__ import annotations

import logging
import os
import sys

log = logging.getLogger(__name__)

_threads: int | None = None


def cpu_count() -> int:
    """Cores this process may run on (the affinity mask, not the machine's total)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def set_threads(n: int | None = None) -> int:
    """Use ``n`` threads (default: the number of cores) in torch, onnxruntime, OpenVINO and
    numba; returns the count in force."""
    global _threads
    if n is None:
        n = cpu_count()
    if int(n) < 1:
        raise ValueError(f"threads must be >= 1, got {n}")
    n = int(n)
    import torch

    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    if _threads is None:
        try:  # one inter-op thread: the worker runs one network at a time
            torch.set_num_interop_threads(1)
        except RuntimeError:  # already fixed by earlier parallel work in this process
            pass
    numba = sys.modules.get("numba")
    if numba is not None:
        try:
            numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))
        except Exception as exc:  # pragma: no cover - numba without a threading layer
            log.debug("numba threads not set: %s", exc)
    _threads = n
    return n


def get_threads() -> int:
    """The count set by :func:`set_threads`, setting the default first if none was."""
    return _threads if _threads is not None else set_threads()
