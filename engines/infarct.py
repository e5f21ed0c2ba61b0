"""OF-RNN at run time: the infarct probability of each myocardial pixel of one short-axis
slice's beat, from its motion (no contrast agent).

The network (:mod:`engines.nets.of_rnn`) runs once per slice and beat on the LV region of
interest (64 x 64) over the beat's frames, in eager torch fp32 on one CPU thread
(:mod:`engines.beat_networks`; on a shared CPU its small per-step LSTM operations run
faster on one thread than on two), with only the myocardium's pixels computed.

Weights: :data:`SHIPPED` (``python -m engines.train.infarct``, phantom slices with exact
infarct maps; no public cine data carries pixel-level infarct truth without contrast), or a
state dict of the same architecture (``--infarct-weights``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from engines.beat_networks import BeatNetwork, load_into, read_state_dict
from engines.nets import of_rnn

#: the shipped weights
SHIPPED = Path(__file__).resolve().parent / "weights" / "infarct.pt"


@dataclass
class InfarctMapper(BeatNetwork):
    """A loaded OF-RNN: ``mapper(frames, flow, mask)`` with one beat's region frames (T, 64,
    64) in [0, 1], its flow (T, 2, 64, 64) and the myocardium mask (64, 64) bool -> the
    infarct probability (64, 64), 0 off the mask."""

    @torch.inference_mode()
    def __call__(self, frames: np.ndarray, flow: np.ndarray, mask: np.ndarray) -> np.ndarray:
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            logits = self.model(torch.from_numpy(np.asarray(frames, np.float32))[None],
                                torch.from_numpy(np.asarray(flow, np.float32))[None],
                                torch.from_numpy(np.asarray(mask, bool))[None])
        finally:
            torch.set_num_threads(threads)
        return of_rnn.infarct_probability(logits)[0].numpy()


def load_mapper(weights: str | Path | None = None) -> InfarctMapper:
    """The mapper of ``weights`` (an OF-RNN state dict; default :data:`SHIPPED`)."""
    path = Path(weights) if weights is not None else SHIPPED
    hint = ("train it with `python -m engines.train.infarct` (docs/benchmarks.md) or run with "
            "--infarct off") if weights is None else ""
    state, origin, sha256 = read_state_dict(path, "OF-RNN", hint)
    return InfarctMapper(load_into(of_rnn.build(), state, path, "OF-RNN"), origin=origin,
                         weights_sha256=sha256)
