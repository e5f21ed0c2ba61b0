"""3D-EAR at run time: the LV myocardium of every frame of one velocity-mapping slice's
cycle, from its magnitude and three velocity channels.

The network (:mod:`engines.nets.ear3d`) runs once per slice and cycle on the central region
(:func:`streamer.measure.roi.central_roi`, 128 x 128 pixels of 1.4 mm) over the cycle, in
eager torch fp32 on the CPU (:mod:`engines.beat_networks`). It sees every cycle in **beat
time**: re-sampled to :data:`BEAT_FRAMES` frames (circular linear interpolation), its
probabilities re-sampled back to the cycle's frames (:func:`cycle_probability`). Its 3x3x3
convolutions then cover the same share of the cycle whatever the acquisition's frame count
(an acquisition of 50 frames met with the time scale of 20-25-frame training cycles
measured Dice 0.729 against 0.743 in beat time, on held-out phantoms), and a 50-frame cycle
costs what a 25-frame one does; a mask between two beat-time samples is interpolated, a
fraction of a pixel's motion at 25 samples a cycle.

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

from engines.beat_networks import BeatNetwork, load_into, read_state_dict, resample_cycle
from engines.nets import ear3d

#: the shipped weights
SHIPPED = Path(__file__).resolve().parent / "weights" / "velocity.pt"
#: frames of beat time the network sees (module docstring)
BEAT_FRAMES = 25


def cycle_probability(model: torch.nn.Module, magnitude: np.ndarray,
                      velocity_cm_s: np.ndarray | None) -> np.ndarray:
    """One cycle's magnitude (T, S, S) and velocities (T, S, S, 3) cm/s (None: the
    magnitude-only network) -> the myocardium probability (T, S, S), through the network in
    beat time (:data:`BEAT_FRAMES`)."""
    frames = len(magnitude)
    m = resample_cycle(np.asarray(magnitude, np.float32), BEAT_FRAMES)
    v = None if velocity_cm_s is None else resample_cycle(np.asarray(velocity_cm_s, np.float32),
                                                          BEAT_FRAMES)
    with torch.inference_mode():
        p = ear3d.myocardium_probability(model(ear3d.normalise(m, v)[None]))[0].numpy()
    return resample_cycle(p, frames)


@dataclass
class CycleSegmenter(BeatNetwork):
    """A loaded 3D-EAR: ``segmenter(magnitude, velocity_cm_s)`` with one cycle's region
    frames (T, S, S) and velocities (T, S, S, 3) cm/s (v_x, v_y, v_z) -> the myocardium
    probability (T, S, S)."""

    variant: str = ear3d.DEFAULT_VARIANT
    magnitude_only: bool = False

    def __call__(self, magnitude: np.ndarray, velocity_cm_s: np.ndarray) -> np.ndarray:
        return cycle_probability(self.model, magnitude,
                                 None if self.magnitude_only else velocity_cm_s)


def load_segmenter(weights: str | Path | None = None) -> CycleSegmenter:
    """The segmenter of ``weights`` (a 3D-EAR state dict; default :data:`SHIPPED`)."""
    path = Path(weights) if weights is not None else SHIPPED
    hint = ("train it with `python -m engines.train.velocity` (docs/benchmarks.md)"
            if weights is None else "")
    state, origin, sha256 = read_state_dict(path, "3D-EAR", hint)
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
                          weights_sha256=sha256, variant=variant, magnitude_only=magnitude_only)
