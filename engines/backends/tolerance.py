"""How close a backend must come to eager torch fp32 on the same weights and inputs.

=========  ==============================================================================
precision  bound (per network output, over the inputs compared)
=========  ==============================================================================
fp32       max |y - y_ref| <= 1e-4 x max(1, max |y_ref|)   (graph rewrites, other kernels)
fp16       max |y - y_ref| <= 2e-2 x max(1, max |y_ref|)   (10-bit mantissa through the net)
int8       view: top-1 class agrees on >= 90 % of inputs
           seg:  per-pixel argmax (class map) agrees on >= 95 % of pixels
           flow: mean end-point difference to fp32 <= 0.25 px (the EPE can change by at
                 most this much, by the triangle inequality)
bf16       view: top-1 class agrees on >= 98 % of inputs
           seg and the MR labels: per-pixel argmax agrees on >= 99.5 % of pixels
           flow and the MR flow: mean end-point difference to fp32 <= 0.05 px
=========  ==============================================================================

The fp32 bound is relative to the output's scale because logits and flows are not
bounded.  Measured on the shipped networks, 24 held-out test phantoms, 2 threads
(onnxruntime / openvino):

* fp32: max |diff| view 1.7e-6 / 1.9e-6 (logit scale 4.3), seg 2.0e-5 / 2.3e-5 (scale
  14.3, i.e. 1.6e-6 relative), flow 1.2e-6 / 1.4e-6 px (scale 4.5); argmax always equal.
* int8 (engines.int8: QDQ, per-channel, MinMax, convolutions only): view top-1 agreement
  100 % (accuracy 1.0 = fp32's), seg argmax agreement 98.8 % (myocardium Dice 0.914 vs
  0.910 fp32), flow end-point difference to fp32 0.025 px (EPE to the truth 0.112 vs
  0.104 px fp32).  On 4 phantoms seg agreement was 97.6 %, hence the 95 % bound.
* bf16 (OpenVINO ``INFERENCE_PRECISION_HINT=bf16`` on this AVX512-BF16 CPU; eager torch
  bfloat16 alike), 24 held-out phantoms each (``cardiostream engines check --precisions
  fp32,bf16 --n-inputs 24``, 2026-12-06): seg argmax agreement 99.99 %, flow end-point
  difference 0.0014 px, MR labels 100.00 % and MR flow 0.0026 px; view top-1 95.8 % on 24
  (one flip) and 99.3 % on 300 inputs, hence the 98 % bound (judged on many inputs).
"""

from __future__ import annotations

import numpy as np

REL_TOL = {"fp32": 1e-4, "fp16": 2e-2}
INT8_VIEW_TOP1 = 0.90
INT8_SEG_AGREEMENT = 0.95
INT8_FLOW_EPE_PX = 0.25
#: bf16 (8-bit mantissa: ~0.4 % per rounding) is judged on what the outputs are used for,
#: as int8 is, with bounds a fifth to a tenth as loose (measured: module docstring)
BF16_VIEW_TOP1 = 0.98
BF16_SEG_AGREEMENT = 0.995
BF16_FLOW_EPE_PX = 0.05
#: the MR joint output's channels (engines.nets.mr_joint): label logits, flow
_MR_LOGITS, _MR_FLOW = slice(0, 4), slice(4, 6)


def _task_metrics(role: str, ref: np.ndarray, out: np.ndarray) -> dict:
    """What a role's output is used for: view top-1, segmentation arg-max, flow end points
    (the MR joint output: its labels and its flow)."""
    if role == "view":
        return {"top1_agreement": float((out.argmax(-1) == ref.argmax(-1)).mean())}
    if role == "seg":
        return {"argmax_agreement": float((out.argmax(-3) == ref.argmax(-3)).mean())}
    if role == "flow":
        return {"epe_to_ref_px": float(np.sqrt(((out - ref) ** 2).sum(-3)).mean())}
    if role == "mr":
        lo, ro = out[..., _MR_LOGITS, :, :], ref[..., _MR_LOGITS, :, :]
        fo, fr = out[..., _MR_FLOW, :, :], ref[..., _MR_FLOW, :, :]
        return {"argmax_agreement": float((lo.argmax(-3) == ro.argmax(-3)).mean()),
                "epe_to_ref_px": float(np.sqrt(((fo - fr) ** 2).sum(-3)).mean())}
    return {}


def _task_bound(role: str, m: dict, top1: float, agreement: float, epe_px: float) -> tuple[str, bool]:
    if role == "view":
        return f"top1_agreement >= {top1}", m["top1_agreement"] >= top1
    if role == "seg":
        return f"argmax_agreement >= {agreement}", m["argmax_agreement"] >= agreement
    if role == "flow":
        return f"epe_to_ref_px <= {epe_px}", m["epe_to_ref_px"] <= epe_px
    if role == "mr":
        return (f"argmax_agreement >= {agreement} and epe_to_ref_px <= {epe_px}",
                m["argmax_agreement"] >= agreement and m["epe_to_ref_px"] <= epe_px)
    raise ValueError(f"no {role!r} bound for a task-level comparison")


def compare(role: str, precision: str, ref: np.ndarray, out: np.ndarray) -> dict:
    """Metrics of ``out`` against ``ref`` (stacked outputs, N x output shape) and whether
    they are within the bound for ``precision``."""
    ref = np.asarray(ref, np.float64)
    out = np.asarray(out, np.float64)
    diff = np.abs(out - ref)
    scale = max(1.0, float(np.abs(ref).max()))
    m = {"max_abs_diff": float(diff.max()), "mean_abs_diff": float(diff.mean()),
         "output_scale": float(np.abs(ref).max())}
    m.update(_task_metrics(role, ref, out))
    if precision in REL_TOL:
        m["bound"] = f"max_abs_diff <= {REL_TOL[precision]:g} x {scale:.3g}"
        m["ok"] = bool(m["max_abs_diff"] <= REL_TOL[precision] * scale)
    elif precision == "bf16":
        m["bound"], m["ok"] = _task_bound(role, m, BF16_VIEW_TOP1, BF16_SEG_AGREEMENT, BF16_FLOW_EPE_PX)
    else:
        m["bound"], m["ok"] = _task_bound(role, m, INT8_VIEW_TOP1, INT8_SEG_AGREEMENT, INT8_FLOW_EPE_PX)
    m["ok"] = bool(m["ok"])
    return m
