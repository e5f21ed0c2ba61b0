"""INT8 on the CPU: static post-training quantisation with a calibration set.

The fp32 ONNX export is quantised by onnxruntime's ``quantize_static`` into QDQ form
(QuantizeLinear/DequantizeLinear pairs around each quantised operator): weights int8,
symmetric, per output channel; activations uint8 with MinMax ranges from the
calibration set (the U8S8 form onnxruntime recommends on x86, VNNI-friendly); only
convolutions and matrix products are quantised (:data:`OP_TYPES`).  The same
QDQ file runs on onnxruntime and, converted to IR, on OpenVINO, whose CPU plug-in turns
the QDQ pairs into int8 kernels.  The operator that produces the network output is
left in fp32 (``KEEP_OUTPUT_FP32``): the flow network's output is a regression in pixels
and an 8-bit output grid would quantise it to range/255.

Calibration inputs, in the network's input form (float32 [0, 1], N x C x H x W):

* default: ``calib.datasets.calibration_images(n, kind)`` from the phantom ``calib``
  split (never the test split), cached as .npy beside the engines;
* a user's recording, as :class:`Frames` (the clip's frames as arrays: the engines read
  no files -- the command line reads the clip and hands them over), scaled like the
  runtime's pre-processing and fitted to the input size like the runtime does
  (:func:`engines.spec.fit_to_input`) -- the right choice for real scanner data, whose
  grey-level statistics differ from the phantoms';
* an array of network inputs given by the caller (``calibration=``).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engines import cache
from engines.backends.base import EngineError, LoadedModel
from engines.spec import NetSpec, fit_to_input, get_role, network_image

log = logging.getLogger(__name__)

#: calibration images by default (onnxruntime's MinMax ranges settle by ~32 images here)
DEFAULT_CALIBRATION_N = 32
KEEP_OUTPUT_FP32 = True
#: activation ranges: "MinMax" | "Percentile" | "Entropy" (onnxruntime CalibrationMethod)
CALIBRATION_METHOD = "MinMax"
#: operator types quantised.  Only the arithmetic-heavy ones: quantising every type
#: onnxruntime can (Concat, Resize, MaxPool, Add, ...) requantises the U-Net's skip
#: concatenations and upsampling, and on the trained segmenter (16 held-out test
#: phantoms, OpenVINO) cut the argmax agreement with fp32 from 98.7 % to 94.5 % for no
#: speed gain (8.0 vs 5.1 ms).  Percentile ranges gave 99.0 %, Entropy 98.7 %.
OP_TYPES: tuple[str, ...] | None = ("Conv", "ConvTranspose", "Gemm", "MatMul")
EXTRA_OPTIONS: dict = {}
INT8_FILE = "model.onnx"


def _as_input(images: np.ndarray, spec: NetSpec) -> np.ndarray:
    """uint8/float images (N, H, W) or pairs (N, 2, H, W) -> float32 [0, 1] (N, C, H, W)."""
    a = np.asarray(images)
    a = a.astype(np.float32) / np.float32(255.0) if a.dtype == np.uint8 else a.astype(np.float32)
    if a.ndim == 3:
        a = a[:, None]
    want = tuple(spec.input.shape[1:])
    if tuple(a.shape[1:]) != want:
        raise EngineError(f"{spec.role}: calibration inputs have shape {tuple(a.shape[1:])} per "
                          f"sample, the network takes {want}")
    return np.ascontiguousarray(a)


@dataclass(frozen=True)
class Frames:
    """Raw frames of a recording to calibrate on: pixel arrays as a clip reader gives them
    ((rows, cols) grey or (rows, cols, channels)), any size; ``origin`` names them in errors."""

    frames: tuple[np.ndarray, ...]
    origin: str = "frames"

    @classmethod
    def of(cls, frames: Iterable[np.ndarray], origin: str = "frames") -> Frames:
        return cls(tuple(frames), str(origin))


def frames_calibration(frames: Frames, spec: NetSpec, n: int) -> np.ndarray:
    """Up to ``n`` inputs from a recording's frames, spread evenly over it (flow: consecutive pairs)."""
    grey = [network_image(np.asarray(f)) for f in frames.frames]
    if len(grey) < (2 if spec.role == "flow" else 1):
        raise EngineError(f"{frames.origin}: too few frames ({len(grey)}) to calibrate the "
                          f"{spec.role} network")
    size = spec.size
    fitted = [fit_to_input(f, size)[0] for f in grey]
    if spec.role == "flow":
        starts = np.unique(np.linspace(0, len(fitted) - 2, min(n, len(fitted) - 1)).round().astype(int))
        return np.stack([np.stack([fitted[i], fitted[i + 1]]) for i in starts]).astype(np.float32)
    picks = np.unique(np.linspace(0, len(fitted) - 1, min(n, len(fitted))).round().astype(int))
    return np.stack([fitted[i] for i in picks])[:, None].astype(np.float32)


def phantom_calibration(spec: NetSpec, n: int = DEFAULT_CALIBRATION_N) -> np.ndarray:
    """``n`` phantom inputs from the ``calib`` split at the network's size (cached on disk)."""
    from calib.datasets import calibration_images

    h, w = spec.size
    kind = get_role(spec.role).calibration_kind
    path = cache.cache_root() / "calibration" / f"{kind}-{n}-{h}x{w}.npy"
    if path.is_file():
        return _as_input(np.load(path), spec)
    images = calibration_images(n, kind, rows=h, cols=w)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp.npy")
    np.save(tmp, images)
    os.replace(tmp, path)
    return _as_input(images, spec)


def calibration_inputs(spec: NetSpec, calibration=None, *, n: int = DEFAULT_CALIBRATION_N) -> np.ndarray:
    """The calibration set as network inputs: an array of inputs, a recording's
    :class:`Frames`, or None (phantoms)."""
    if calibration is None:
        return phantom_calibration(spec, n)
    if isinstance(calibration, Frames):
        return frames_calibration(calibration, spec, n)
    if isinstance(calibration, (str, os.PathLike)):
        raise EngineError(f"{calibration}: the engines read no clips; read its frames and pass "
                          "engines.int8.Frames (the command line does this for --calibration-clip)")
    return _as_input(calibration, spec)


class _Reader:
    """onnxruntime CalibrationDataReader over an (N, C, H, W) array."""

    def __init__(self, name: str, data: np.ndarray):
        self.name, self.data, self.i = name, data, 0

    def get_next(self):
        if self.i >= len(self.data):
            return None
        x = self.data[self.i:self.i + 1]
        self.i += 1
        return {self.name: x}

    def rewind(self):
        self.i = 0


def quantize(fp32_onnx: Path, out: Path, data: np.ndarray) -> Path:
    """QDQ, per-channel int8 weights, uint8 MinMax activations, from ``data``."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    pre = out.with_name("preprocessed.onnx")
    try:
        quant_pre_process(str(fp32_onnx), str(pre), skip_symbolic_shape=True)
    except Exception as exc:  # the optimiser pass is an improvement, not a requirement
        log.warning("quantisation pre-processing skipped (%s); quantising the export as is", exc)
        pre = fp32_onnx
    model = onnx.load(str(pre))
    input_name = model.graph.input[0].name
    exclude = []
    if KEEP_OUTPUT_FP32:
        outputs = {o.name for o in model.graph.output}
        exclude = [n.name for n in model.graph.node if outputs & set(n.output) and n.name]
    quantize_static(str(pre), str(out), _Reader(input_name, data),
                    quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    calibrate_method=getattr(CalibrationMethod, CALIBRATION_METHOD),
                    op_types_to_quantize=list(OP_TYPES) if OP_TYPES else None,
                    nodes_to_exclude=exclude,
                    extra_options={"WeightSymmetric": True, "ActivationSymmetric": False,
                                   **EXTRA_OPTIONS})
    if pre != fp32_onnx:
        pre.unlink(missing_ok=True)
    return out


def quantized_onnx(source: LoadedModel, fp32: Path, calibration=None, *,
                   n: int = DEFAULT_CALIBRATION_N, use_cache: bool = True) -> Path:
    """The cached INT8 QDQ ONNX model of ``source``, quantised from its fp32 ONNX file
    ``fp32`` (:func:`engines.backends.onnx_export.onnx_model`), built on first use."""
    import onnxruntime

    spec = source.spec
    data = calibration_inputs(spec, calibration, n=n)
    key = cache.CacheKey(role=spec.role, arch=spec.arch, weights_sha256=source.digest,
                         input_shape=tuple(spec.input.shape), precision="int8", backend="onnx-int8",
                         backend_version=f"ort{onnxruntime.__version__}", device="any",
                         extra=(("calibration_sha256", cache.array_digest(data)),
                                ("fp32_onnx_sha256", cache.file_digest(fp32)),
                                ("scheme", f"qdq-u8s8-perchannel-{CALIBRATION_METHOD}-ops="
                                 f"{','.join(OP_TYPES) if OP_TYPES else 'all'}-{sorted(EXTRA_OPTIONS.items())}"
                                 + ("-outfp32" if KEEP_OUTPUT_FP32 else ""))))

    def build(folder: Path) -> None:
        quantize(fp32, folder / INT8_FILE, data)
        np.save(folder / "calibration_summary.npy",
                np.array([len(data), float(data.min()), float(data.max()), float(data.mean())]))

    folder, _ = cache.get_or_build(key, build, use_cache=use_cache)
    return folder / INT8_FILE
