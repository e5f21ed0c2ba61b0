"""The I/O contract of each network role, shared by every backend and by user weights.

Three roles, each with exactly one input and one output, batch 1, float32, static shape:

=======  ===========================  =================================================
role     input                        output
=======  ===========================  =================================================
view     ``image``  (1, 1, H, W)      ``logits`` (1, 8), classes in :data:`VIEW_CLASSES`
seg      ``image``  (1, 1, H, W)      ``logits`` (1, 3, H, W): background, LV myocardium,
                                      LV cavity (:data:`SEG_CLASSES`)
flow     ``frames`` (1, 2, H, W)      ``flow``   (1, 2, H, W) pixels of the input grid,
         previous then current        channels (dx = d_col, dy = d_row), previous ->
                                      current, on the previous frame's grid (OpenCV's
                                      ``calcOpticalFlow*(prev, next)`` convention)
=======  ===========================  =================================================

Images are greyscale in [0, 1] (``streamer.pipeline.Preprocess``), brought to the
network's H x W by :func:`fit_to_input` (aspect kept, zero padding, centred).

Each network file in :mod:`engines.nets` defines its :class:`NetSpec` (``SPEC``) with the
concrete H x W it was trained at; a user's model for a role must have the same input
and output shapes (checked by the loaders, with an error naming the file).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

ROLES = ("view", "seg", "flow")
#: ``--backend`` choices: auto = torch-tensorrt on a CUDA machine where installed, else the
#: fastest CPU backend
BACKENDS = ("auto", "torch", "onnxruntime", "openvino", "tensorrt")
PRECISIONS = ("fp32", "fp16", "int8")
#: view classes, in the order of the classifier's logits (= ``calib.echo.VIEWS``)
VIEW_CLASSES = ("a4c", "a2c", "alax", "plax", "psax", "sc4c", "ivc", "unknown")
#: segmentation classes, in the order of the segmenter's logit channels
SEG_CLASSES = ("background", "myocardium", "cavity")


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[int, ...]
    dtype: str = "float32"


@dataclass(frozen=True)
class NetSpec:
    """One network's contract: role, architecture name, tensor shapes, weights file."""

    role: str
    arch: str
    input: TensorSpec
    output: TensorSpec
    #: file name under ``engines/weights/`` (a state dict)
    weights_file: str
    normalisation: str = "greyscale in [0, 1]"

    @property
    def size(self) -> tuple[int, int]:
        """(H, W) of the input."""
        return tuple(self.input.shape[-2:])


def role_contract(role: str, size: tuple[int, int]) -> tuple[TensorSpec, TensorSpec]:
    """The (input, output) tensor specs a model for ``role`` at input size (H, W) must have."""
    h, w = size
    if role == "view":
        return TensorSpec("image", (1, 1, h, w)), TensorSpec("logits", (1, len(VIEW_CLASSES)))
    if role == "seg":
        return TensorSpec("image", (1, 1, h, w)), TensorSpec("logits", (1, len(SEG_CLASSES), h, w))
    if role == "flow":
        return TensorSpec("frames", (1, 2, h, w)), TensorSpec("flow", (1, 2, h, w))
    raise ValueError(f"role {role!r} is unknown; choose one of {', '.join(ROLES)}")


@dataclass(frozen=True)
class Fit:
    """Where a (rows, cols) frame sits inside the network's (H, W) input."""

    scale: float        # network pixels per frame pixel
    top: int
    left: int
    rows: int           # size of the resized frame inside the input
    cols: int


def fit_geometry(frame_shape: tuple[int, int], size: tuple[int, int]) -> Fit:
    rows, cols = frame_shape
    h, w = size
    scale = min(h / rows, w / cols)
    r, c = max(1, round(rows * scale)), max(1, round(cols * scale))
    return Fit(scale=scale, top=(h - r) // 2, left=(w - c) // 2, rows=r, cols=c)


def fit_to_input(image: np.ndarray, size: tuple[int, int]) -> tuple[np.ndarray, Fit]:
    """Resize a (rows, cols) float32 image into (H, W), aspect kept, zero padding, centred."""
    fit = fit_geometry(image.shape[:2], size)
    h, w = size
    if (fit.rows, fit.cols) == (h, w) and image.shape[:2] == (h, w):
        return np.ascontiguousarray(image, dtype=np.float32), fit
    interp = cv2.INTER_AREA if fit.scale < 1 else cv2.INTER_LINEAR
    resized = cv2.resize(np.asarray(image, np.float32), (fit.cols, fit.rows), interpolation=interp)
    out = np.zeros((h, w), np.float32)
    out[fit.top:fit.top + fit.rows, fit.left:fit.left + fit.cols] = resized
    return out, fit
