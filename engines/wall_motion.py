"""Cardiac-MOS at run time: segmental wall-motion scores of one short-axis stack and beat.

The network (:mod:`engines.nets.cardiac_mos`) runs once per stack and beat, not per frame,
on a 6-D input whose frame count varies with the cine; it runs in eager torch, fp32, on the
CPU, whatever ``--backend`` and ``--precision`` choose for the frame networks (they are
not built for it), and says so in its provenance (:attr:`WallMotionScorer.backend`, ...,
which the app's declaration carries). One stack of 16 segments at 20-25 frames takes about
0.3-0.5 s on this project's 2-core CPU.

Weights: :data:`SHIPPED` (``python -m engines.train.wall_motion``, phantom hearts with
exact per-segment labels; no public data set carries them), or a state dict of the same
architecture (``--wall-motion-weights``). The variant (baseline CNN, seg-NL, sub-NL) is read
from the state dict's keys.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from engines.beat_networks import BeatNetwork, BeatNetworkWeightsError, load_into, read_state_dict
from engines.nets import cardiac_mos

#: the shipped weights
SHIPPED = Path(__file__).resolve().parent / "weights" / "wall_motion.pt"
#: the error a missing or foreign weights file raises
WallMotionWeightsError = BeatNetworkWeightsError


def blocks_in(state: dict, prefix: str) -> int:
    """How many non-local blocks ``prefix`` ("seg_nl" or "sub_nl") a state dict holds."""
    found = {int(m.group(1)) for key in state if (m := re.match(rf"{prefix}\.(\d+)\.", key))}
    return max(found) + 1 if found else 0


@dataclass
class WallMotionScorer(BeatNetwork):
    """A loaded Cardiac-MOS: ``scorer(segments)`` with (S, T, R, A) float32 polar segments
    of one stack and beat (S >= 1 segments, T >= 2 frames, [0, 1]) -> (S, 4) class
    probabilities in :data:`engines.nets.cardiac_mos.CLASSES` order."""

    @property
    def variant(self) -> str:
        h = self.model.hparams
        return {(0, 0): "cnn", (1, 0): "seg_nl", (0, 1): "sub_nl", (1, 1): "seg_sub_nl"}.get(
            (h["segment_nl"], h["subject_nl"]),
            f"seg_nl={h['segment_nl']},sub_nl={h['subject_nl']}")

    @torch.inference_mode()
    def __call__(self, segments: np.ndarray) -> np.ndarray:
        x = np.asarray(segments, np.float32)
        if x.ndim != 4 or x.shape[0] < 1 or x.shape[1] < cardiac_mos.MIN_FRAMES:
            raise ValueError(f"segments must be (S, T, R, A) with S >= 1 and T >= "
                             f"{cardiac_mos.MIN_FRAMES}, got shape {x.shape}")
        if not np.isfinite(x).all():
            raise ValueError("segments hold NaN or infinite values")
        logits = self.model(torch.from_numpy(x)[None, :, None])[0]
        return cardiac_mos.probabilities(logits).numpy().astype(np.float64)


def load_scorer(weights: str | Path | None = None) -> WallMotionScorer:
    """The scorer of ``weights`` (a Cardiac-MOS state dict; default :data:`SHIPPED`)."""
    path = Path(weights) if weights is not None else SHIPPED
    hint = ("train it with `python -m engines.train.wall_motion` (docs/benchmarks.md) or run "
            "with --wall-motion off") if weights is None else ""
    state, origin, sha256 = read_state_dict(path, "Cardiac-MOS", hint)
    model = cardiac_mos.CardiacMOS(**{**cardiac_mos.DEFAULTS,
                                      "segment_nl": blocks_in(state, "seg_nl"),
                                      "subject_nl": blocks_in(state, "sub_nl")})
    return WallMotionScorer(load_into(model, state, path, "Cardiac-MOS"), origin=origin,
                            weights_sha256=sha256)
