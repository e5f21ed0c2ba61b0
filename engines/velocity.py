"""3D-EAR at run time: the LV myocardium of every frame of one velocity-mapping slice's
cycle, from its magnitude and three velocity channels.

The network (:mod:`engines.nets.ear3d`) runs once per slice and cycle on the central region
(:func:`streamer.measure.roi.central_roi`, 128 x 128 pixels of 1.4 mm) over the cycle's
frames, in eager torch fp32 on the CPU (:mod:`engines.beat_networks`).

Weights: :data:`SHIPPED` (``python -m engines.train.velocity``, velocity-mapping phantom
slices with exact masks; no public velocity-mapping data exists), or a state dict of the
same architecture (``--velocity-weights``), whose variant and input channels are read from
the JSON record beside it when there is one (``velocity.json``), else the shipped ones'.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from engines.beat_networks import BeatNetwork, load_into, read_state_dict
from engines.nets import ear3d

#: the shipped weights
SHIPPED = Path(__file__).resolve().parent / "weights" / "velocity.pt"


@dataclass
class CycleSegmenter(BeatNetwork):
    """A loaded 3D-EAR: ``segmenter(magnitude, velocity_cm_s)`` with one cycle's region
    frames (T, S, S) and velocities (T, S, S, 3) cm/s (v_x, v_y, v_z) -> the myocardium
    probability (T, S, S)."""

    variant: str = ear3d.DEFAULT_VARIANT
    magnitude_only: bool = False

    @torch.inference_mode()
    def __call__(self, magnitude: np.ndarray, velocity_cm_s: np.ndarray) -> np.ndarray:
        x = ear3d.normalise(np.asarray(magnitude, np.float32),
                            None if self.magnitude_only else np.asarray(velocity_cm_s, np.float32))
        return ear3d.myocardium_probability(self.model(x[None]))[0].numpy()


def load_segmenter(weights: str | Path | None = None) -> CycleSegmenter:
    """The segmenter of ``weights`` (a 3D-EAR state dict; default :data:`SHIPPED`)."""
    path = Path(weights) if weights is not None else SHIPPED
    hint = ("train it with `python -m engines.train.velocity` (docs/benchmarks.md)"
            if weights is None else "")
    state, origin = read_state_dict(path, "3D-EAR", hint)
    variant, channels = ear3d.DEFAULT_VARIANT, "all"
    record = path.with_name("velocity.json")
    if record.is_file():
        try:
            meta = json.loads(record.read_text())
            if meta.get("weights_file") == path.name:
                variant, channels = meta.get("variant", variant), meta.get("channels", channels)
        except (OSError, ValueError):
            pass
    magnitude_only = channels == "magnitude"
    model = ear3d.build(variant, in_channels=1 if magnitude_only else len(ear3d.CHANNELS))
    return CycleSegmenter(load_into(model, state, path, f"3D-EAR ({variant})"), origin=origin,
                          variant=variant, magnitude_only=magnitude_only)
