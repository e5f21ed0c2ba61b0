"""The dense-flow network: I/O contract, its parts on synthetic shifts, shipped weights on phantoms."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from engines.nets import flownet, shipped_weights
from engines.spec import role_contract


@pytest.fixture(scope="module")
def shipped():
    path = shipped_weights("flow")
    assert path.exists(), f"shipped flow weights missing: {path}"
    model = flownet.build()
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return model.eval()


@pytest.fixture(scope="module")
def held_out():
    """8 frame pairs (2 clips) of the held-out 'test' split, never used in training."""
    from calib.datasets import flow_samples

    return flow_samples("test", 8)


def _smooth_image(h, w, seed=0, channels=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(1, channels, h // 4, w // 4, generator=g)
    return F.interpolate(x, size=(h, w), mode="bicubic", align_corners=False)


def test_spec_and_shapes():
    spec = flownet.SPEC
    assert spec.role == "flow" and spec.weights_file == "flow.pt"
    assert (spec.input, spec.output) == role_contract("flow", spec.size)
    model = flownet.build().eval()
    with torch.no_grad():
        out = model(torch.rand(*spec.input.shape))
        assert tuple(out.shape) == spec.output.shape and out.dtype == torch.float32
        # fully convolutional: any size that is a multiple of 8
        assert tuple(model(torch.rand(2, 2, 64, 96)).shape) == (2, 2, 64, 96)


def test_warp_brings_current_frame_onto_previous_grid():
    prev = _smooth_image(48, 64)
    dx, dy = 3.0, -2.0
    # tissue at (r, c) in prev is at (r + dy, c + dx) in current
    cur = torch.roll(prev, shifts=(int(dy), int(dx)), dims=(2, 3))
    flow = torch.tensor([dx, dy]).view(1, 2, 1, 1).expand(1, 2, 48, 64)
    back = flownet.warp(cur, flow)
    inner = (slice(None), slice(None), slice(4, -4), slice(4, -4))
    assert torch.allclose(back[inner], prev[inner], atol=1e-5)
    # sub-pixel: a linear ramp is warped exactly by bilinear sampling
    ramp = torch.arange(64.0).view(1, 1, 1, 64).expand(1, 1, 48, 64).contiguous()
    half = torch.tensor([0.25, 0.0]).view(1, 2, 1, 1).expand(1, 2, 48, 64)
    assert torch.allclose(flownet.warp(ramp, half)[..., :-1], ramp[..., :-1] + 0.25, atol=1e-5)


def test_cost_volume_peaks_at_the_true_shift():
    r = 2
    cv = flownet.CostVolume(r)
    f1 = torch.randn(1, 32, 24, 24, generator=torch.Generator().manual_seed(1))
    for sy, sx in ((0, 0), (1, -2), (-2, 2)):
        f2 = torch.roll(f1, shifts=(sy, sx), dims=(2, 3))     # f2[y + sy, x + sx] = f1[y, x]
        cost = cv(f1, f2)
        assert cost.shape == (1, cv.channels, 24, 24)
        best = cost[0, :, r:-r, r:-r].argmax(0)
        assert torch.all(best == (sy + r) * (2 * r + 1) + (sx + r))
        assert torch.allclose(cost[0, (sy + r) * (2 * r + 1) + (sx + r), r:-r, r:-r],
                              (f1 * f1).mean(1)[0, r:-r, r:-r], atol=1e-5)


def test_upsample_matches_bilinear_interpolate():
    f = torch.randn(1, 2, 32, 24)
    ref = 4.0 * F.interpolate(f, size=(128, 96), mode="bilinear", align_corners=False)
    assert torch.allclose(flownet.upsample(f, (128, 96), 4.0), ref, atol=1e-5)


def test_onnx_export_matches_torch(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    model = flownet.build().eval()
    x = torch.rand(*flownet.SPEC.input.shape)
    path = tmp_path / "flow.onnx"
    torch.onnx.export(model, (x,), str(path), input_names=["frames"], output_names=["flow"],
                      opset_version=17, dynamo=False)
    out = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"frames": x.numpy()})[0]
    with torch.no_grad():
        assert np.abs(out - model(x).numpy()).max() < 1e-4


def test_zero_motion_gives_zero_flow(shipped, held_out):
    for frame, myo in zip(held_out["pairs"][::3, 0], held_out["myocardium"][::3] > 0):
        x = torch.from_numpy(np.stack([frame, frame])[None].astype(np.float32) / 255.0)
        with torch.no_grad():
            flow = shipped(x)[0].numpy()
        mag = np.hypot(flow[0], flow[1])
        assert mag[myo].mean() < 0.05, mag[myo].mean()
        assert mag.mean() < 0.05, mag.mean()


def test_shipped_weights_beat_dis_medium_on_held_out_pairs(shipped, held_out):
    from engines.train import common
    from engines.train.flow import evaluate

    m = evaluate(common.torch_predict(shipped), held_out)
    assert m["n_pairs"] == 8
    assert m["epe_myocardium_px"] < m["epe_dis_medium_px"], m
    assert m["epe_myocardium_px"] < m["epe_zero_flow_myocardium_px"], m
