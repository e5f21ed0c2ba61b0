"""What the per-beat networks share (Cardiac-MOS, :mod:`engines.wall_motion`; OF-RNN,
:mod:`engines.infarct`): they run once per slice or stack and beat, on inputs whose frame
count varies with the cine, in eager torch fp32 on the CPU whatever ``--backend`` and
``--precision`` choose for the frame networks, and say so in their provenance
(:class:`BeatNetwork`'s ``backend``, ``precision``, ``device``, ``origin``, which the app's
declaration carries). Their weights are state dicts (:func:`read_state_dict`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from engines.cache import file_digest


def resample_cycle(x: np.ndarray, frames: int) -> np.ndarray:
    """(T, ...) one cardiac cycle -> ``frames`` frames at the same beat times, linear in
    circular beat time (frame k of the result at k / frames of the cycle; the frame after
    the last is the first)."""
    t = x.shape[0]
    if t == frames:
        return x
    position = np.arange(frames) * t / frames
    lo = np.floor(position).astype(int)
    w = (position - lo).reshape(-1, *([1] * (x.ndim - 1)))
    return (x[lo] * (1 - w) + x[(lo + 1) % t] * w).astype(x.dtype)


class BeatNetworkWeightsError(ValueError):
    """A per-beat network's weights file is missing or is not a state dict of it."""


@dataclass
class BeatNetwork:
    """A loaded per-beat network and where its weights came from."""

    model: torch.nn.Module
    origin: str
    backend: str = "torch"
    precision: str = "fp32"
    device: str = "cpu"
    #: sha256 of the weights file
    weights_sha256: str = ""

    def provenance(self) -> dict:
        """The app declaration's entry: how it runs and where its weights came from."""
        return {"backend": self.backend, "precision": self.precision, "device": self.device,
                "origin": self.origin, "weights_sha256": self.weights_sha256, "max_batch": 1}


def read_state_dict(path: Path, what: str, hint: str) -> tuple[dict, str, str]:
    """The state dict in ``path``, its origin (path and the start of its sha256) and the
    file's sha256; ``hint`` (how to get weights) joins the error when the file is missing."""
    if not path.is_file():
        raise BeatNetworkWeightsError(f"no {what} weights at {path}{': ' + hint if hint else ''}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise BeatNetworkWeightsError(f"{path}: not a readable state dict ({exc})") from None
    if not isinstance(state, dict):
        raise BeatNetworkWeightsError(f"{path}: holds a {type(state).__name__}, not a state dict")
    sha256 = file_digest(path)
    return state, f"{path} (sha256 {sha256[:12]})", sha256


def load_into(model: torch.nn.Module, state: dict, path: Path, what: str) -> torch.nn.Module:
    """``model`` with ``state`` loaded, in eval mode; a foreign state dict is an error
    naming ``path``."""
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise BeatNetworkWeightsError(f"{path}: not a state dict of {what} at the default sizes "
                                      f"({str(exc).splitlines()[0]})") from None
    return model.eval()
