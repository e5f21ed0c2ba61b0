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
"""

from __future__ import annotations

import numpy as np

REL_TOL = {"fp32": 1e-4, "fp16": 2e-2}
INT8_VIEW_TOP1 = 0.90
INT8_SEG_AGREEMENT = 0.95
INT8_FLOW_EPE_PX = 0.25


def compare(role: str, precision: str, ref: np.ndarray, out: np.ndarray) -> dict:
    """Metrics of ``out`` against ``ref`` (stacked outputs, N x output shape) and whether
    they are within the bound for ``precision``."""
    ref = np.asarray(ref, np.float64)
    out = np.asarray(out, np.float64)
    diff = np.abs(out - ref)
    scale = max(1.0, float(np.abs(ref).max()))
    m = {"max_abs_diff": float(diff.max()), "mean_abs_diff": float(diff.mean()),
         "output_scale": float(np.abs(ref).max())}
    if role == "view":
        m["top1_agreement"] = float((out.argmax(-1) == ref.argmax(-1)).mean())
    elif role == "seg":
        m["argmax_agreement"] = float((out.argmax(-3) == ref.argmax(-3)).mean())
    elif role == "flow":
        m["epe_to_ref_px"] = float(np.sqrt(((out - ref) ** 2).sum(-3)).mean())
    if precision in REL_TOL:
        m["bound"] = f"max_abs_diff <= {REL_TOL[precision]:g} x {scale:.3g}"
        m["ok"] = bool(m["max_abs_diff"] <= REL_TOL[precision] * scale)
    elif role == "view":
        m["bound"] = f"top1_agreement >= {INT8_VIEW_TOP1}"
        m["ok"] = m["top1_agreement"] >= INT8_VIEW_TOP1
    elif role == "seg":
        m["bound"] = f"argmax_agreement >= {INT8_SEG_AGREEMENT}"
        m["ok"] = m["argmax_agreement"] >= INT8_SEG_AGREEMENT
    else:
        m["bound"] = f"epe_to_ref_px <= {INT8_FLOW_EPE_PX}"
        m["ok"] = m["epe_to_ref_px"] <= INT8_FLOW_EPE_PX
    return m
