"""The network roles: one registry (:data:`REGISTRY`) with each role's I/O contract, network
module, trainer, default CPU backend and INT8 calibration set; every other per-role table
in :mod:`engines` derives from it.

Four roles, each with exactly one input and one output, batch 1, float32, static shape
(three for echo, one for short-axis MR):

=======  ===========================  =================================================
role     input                        output
=======  ===========================  =================================================
view     ``image``  (1, 1, H, W)      ``logits`` (1, 8), classes in
                                      :data:`streamer.vocab.VIEW_CLASSES`
seg      ``image``  (1, 1, H, W)      ``logits`` (1, 3, H, W): background, LV myocardium,
                                      LV cavity (:data:`streamer.vocab.SEG_CLASSES`)
flow     ``frames`` (1, 2, H, W)      ``flow``   (1, 2, H, W) pixels of the input grid,
         previous then current        channels (dx = d_col, dy = d_row), previous ->
                                      current, on the previous frame's grid (OpenCV's
                                      ``calcOpticalFlow*(prev, next)`` convention)
mr       ``frames`` (1, 3, H, W)      ``joint``  (1, 7, H, W): logits of the MR labels
         previous image, current      of the current frame (:class:`streamer.vocab.
         image, recurrent state       MRLabel`: background, LV cavity, LV myocardium,
         plane                        RV cavity), flow (dx, dy) previous -> current
                                      as the flow role's, the next state plane
=======  ===========================  =================================================

The ``mr`` role is the joint network of Qin et al. 2018 (:mod:`engines.nets.mr_joint`):
its recurrent state travels as one extra input and output channel (a stream starts with
zeros and feeds output channel 6 back as the next input's channel 2), so the backends'
one-input / one-output contract holds; its images are normalised per image by
:func:`engines.nets.mr_joint.normalise`, not by :func:`unit_range`.

Images are greyscale in [0, 1] (the runtime's pre-processing), brought to the network's
H x W by :func:`fit_to_input` (aspect kept, zero padding, centred).

Each network file in :mod:`engines.nets` defines its :class:`NetSpec` (``SPEC``) with the
concrete H x W it was trained at; a user's model for a role must have the same input
and output shapes (checked by the loaders, with an error naming the file).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

# the class names of the view and seg outputs (their home is streamer.vocab)
from streamer.vocab import SEG_CLASSES, VIEW_CLASSES

#: ``--backend`` choices: auto = torch-tensorrt on a CUDA machine where installed, else the
#: role's :attr:`Role.cpu_backend`
BACKENDS = ("auto", "torch", "onnxruntime", "openvino", "tensorrt")
PRECISIONS = ("fp32", "bf16", "fp16", "int8")
#: what a user may ask for: a precision, or ``auto`` (engines.backends.resolve_precision)
PRECISION_CHOICES = (*PRECISIONS, "auto")
#: what every role's input holds
NORMALISATION = "greyscale in [0, 1]"


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[int, ...]
    dtype: str = "float32"


@dataclass(frozen=True)
class Role:
    """One network role: its I/O contract and where its parts live."""

    name: str
    #: input tensor name and channels: (1, input_channels, H, W)
    input_name: str
    input_channels: int
    #: output tensor name and channels; ``dense``: (1, C, H, W), else (1, C)
    output_name: str
    output_channels: int
    dense: bool
    #: module of the network (defines ``SPEC`` and ``build()``)
    network: str
    #: module of the trainer (``cardiostream engines train <role>``)
    trainer: str
    #: the CPU backend ``auto`` picks (the fastest measured, see :data:`REGISTRY`)
    cpu_backend: str
    #: ``calib.datasets.calibration_images`` kind of the default INT8 calibration set
    calibration_kind: str
    #: class names of the output channels (None: a regression)
    classes: tuple[str, ...] | None = None
    normalisation: str = NORMALISATION

    def contract(self, size: tuple[int, int]) -> tuple[TensorSpec, TensorSpec]:
        """The (input, output) tensor specs a model for this role at input size (H, W) has."""
        h, w = size
        out = (1, self.output_channels, h, w) if self.dense else (1, self.output_channels)
        inp = TensorSpec(self.input_name, (1, self.input_channels, h, w))
        return inp, TensorSpec(self.output_name, out)


#: The roles.  ``cpu_backend``: median latency in ms, batch 1, the shipped networks and
#: weights, 3 interleaved rounds of 30 calls, on this project's 2-core Xeon @ 2.8 GHz
#: (AVX-512 VNNI) while three training jobs shared it -- absolute figures are high and
#: +-30 %, but the ranking held in every round and in an earlier run on other versions of
#: the networks:
#:
#:   network (input)       threads  torch fp32  onnxruntime fp32/int8  openvino fp32/int8
#:   view (1x1x96x96)      2        564          0.43 / 1.49            1.04 / 1.10
#:                         1          7.5        0.41 / 0.77            0.73 / 0.83
#:   seg  (1x1x128x128)    2        628         17.0 / 20.1             8.4 / 4.0
#:                         1         26.6       11.9 / 12.1            11.5 / 5.1
#:   flow (1x2x256x256)    2        180         61.0 / 61.6            38.6 / 18.6
#:                         1         44.5       34.9 / 26.3            24.6 / 15.0
#:
#: OpenVINO is the fastest on the two networks that dominate a frame (seg up to 2x, flow
#: 1.4-1.6x onnxruntime; and its INT8 is 2x its fp32, where onnxruntime's QDQ INT8 gains
#: little); onnxruntime is faster on the small view classifier, where OpenVINO's per-call
#: overhead dominates.  Eager torch is slowest everywhere, and its OpenMP pool collapses
#: when the cores are shared (the 2-thread column).  Any backend can still be named.
REGISTRY: dict[str, Role] = {r.name: r for r in (
    Role("view", "image", 1, "logits", len(VIEW_CLASSES), dense=False, classes=VIEW_CLASSES,
         network="engines.nets.view_classifier", trainer="engines.train.view",
         cpu_backend="onnxruntime", calibration_kind="view"),
    Role("seg", "image", 1, "logits", len(SEG_CLASSES), dense=True, classes=SEG_CLASSES,
         network="engines.nets.segmenter", trainer="engines.train.seg",
         cpu_backend="openvino", calibration_kind="segmentation"),
    Role("flow", "frames", 2, "flow", 2, dense=True,
         network="engines.nets.flownet", trainer="engines.train.flow",
         cpu_backend="openvino", calibration_kind="flow"),
    # not measured yet: openvino as for the other dense networks
    Role("mr", "frames", 3, "joint", 7, dense=True,
         network="engines.nets.mr_joint", trainer="engines.train.mr",
         cpu_backend="openvino", calibration_kind="mr",
         normalisation="per image: percentiles 1 and 99.5 -> 0 and 1, clipped "
                       "(engines.nets.mr_joint.normalise)"),
)}
ROLES = tuple(REGISTRY)


def get_role(name: str) -> Role:
    """The registry entry of role ``name``; ValueError naming the roles for an unknown one."""
    try:
        return REGISTRY[name]
    except (KeyError, TypeError):
        raise ValueError(f"role {name!r} is unknown; choose one of {', '.join(ROLES)}") from None


@dataclass(frozen=True)
class NetSpec:
    """One network's contract: role, architecture name, tensor shapes, weights file."""

    role: str
    arch: str
    input: TensorSpec
    output: TensorSpec
    #: file name under ``engines/weights/`` (a state dict)
    weights_file: str
    normalisation: str = NORMALISATION

    @property
    def size(self) -> tuple[int, int]:
        """(H, W) of the input."""
        return tuple(self.input.shape[-2:])


def role_contract(role: str, size: tuple[int, int]) -> tuple[TensorSpec, TensorSpec]:
    """The (input, output) tensor specs a model for ``role`` at input size (H, W) must have."""
    return get_role(role).contract(size)


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


#: ITU-R BT.601 luma weights (R, G, B)
LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


def grey_plane(pixels: np.ndarray, multichannel: bool = False) -> np.ndarray:
    """A frame's grey plane: RGB -> luma (BT.601; uint8 through OpenCV, which rounds), a
    multichannel frame (MR velocity mapping: ``multichannel=True``) -> its first channel
    (magnitude); grey frames as they are. The dtype is kept (float for float RGB)."""
    if pixels.ndim != 3:
        return pixels
    if multichannel or pixels.shape[2] != 3:
        return pixels[..., 0]
    if pixels.dtype == np.uint8:
        return cv2.cvtColor(np.ascontiguousarray(pixels), cv2.COLOR_RGB2GRAY)
    return pixels @ LUMA


def unit_range(grey: np.ndarray) -> np.ndarray:
    """A grey plane -> float32 in [0, 1], the networks' input normalisation: integer frames
    by their dtype's maximum, float frames min-max per frame (NaN ignored)."""
    if grey.dtype.kind == "f":
        lo, hi = float(np.nanmin(grey)), float(np.nanmax(grey))
        return (grey.astype(np.float32) - lo) / (hi - lo if hi > lo else 1.0)
    return grey.astype(np.float32) * np.float32(1.0 / np.iinfo(grey.dtype).max)


def network_image(pixels: np.ndarray, multichannel: bool = False) -> np.ndarray:
    """A frame's pixels -> the image every network takes before :func:`fit_to_input`:
    float32 greyscale in [0, 1] (what the runtime's pre-processing gives)."""
    return unit_range(grey_plane(pixels, multichannel))


#: the ``mr`` role's per-image intensity scaling: these percentiles go to 0 and 1
MR_PERCENTILES = (1.0, 99.5)


def percentile_normalise(image: np.ndarray, percentiles=MR_PERCENTILES) -> np.ndarray:
    """One image (rows, cols), any real dtype -> float32 in [0, 1]: the ``percentiles`` of
    its own pixels go to 0 and 1, values outside are clipped (the ``mr`` role's input
    normalisation, the same in training and at run time). ValueError for an image that is
    not 2-D or holds a non-finite value; a constant image gives zeros."""
    a = np.asarray(image)
    if a.ndim != 2:
        raise ValueError(f"normalise: expected one (rows, cols) image, got shape {a.shape}")
    a = a.astype(np.float32)
    if not np.isfinite(a).all():
        raise ValueError("normalise: the image holds NaN or infinite values")
    lo, hi = np.percentile(a, percentiles)
    if hi <= lo:
        return np.zeros(a.shape, np.float32)
    return np.clip((a - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)


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
