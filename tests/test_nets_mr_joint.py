"""The joint MR network (Qin et al. 2018): contract, the bilinear sampler, the recurrent
state's packing, the engine path against the training path, the intensity normalisation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from engines.nets import mr_joint
from engines.spec import get_role, role_contract


def _smooth(h, w, seed=0, n=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, h // 4, w // 4, generator=g)
    return F.interpolate(x, size=(h, w), mode="bicubic", align_corners=False).clamp(0, 1)


def test_spec_matches_the_role_contract():
    spec = mr_joint.SPEC
    assert spec.role == "mr" and spec.weights_file == "mr.pt" and spec.size == (256, 256)
    assert (spec.input, spec.output) == role_contract("mr", spec.size)
    assert spec.input.shape == (1, 3, 256, 256) and spec.output.shape == (1, 7, 256, 256)
    role = get_role("mr")
    assert role.network == "engines.nets.mr_joint" and role.trainer == "engines.train.mr"
    assert mr_joint.CLASSES == ("background", "lv_cavity", "lv_myocardium", "rv_cavity")


def test_forward_shapes_and_parameter_budget():
    model = mr_joint.build().eval()
    n_params = sum(p.numel() for p in model.parameters())
    assert n_params < 500_000                                   # a few hundred kB of fp32 weights
    with torch.no_grad():
        out = model(torch.rand(2, 3, 64, 96))
        assert tuple(out.shape) == (2, 7, 64, 96) and out.dtype == torch.float32
        logits, flows = model.sequence(torch.rand(2, 5, 64, 64))
        assert tuple(logits.shape) == (2, 5, 4, 64, 64) and tuple(flows.shape) == (2, 4, 2, 64, 64)
    with pytest.raises(ValueError, match="multiples of 16"):
        model(torch.rand(1, 3, 40, 64))


def test_bilinear_sampler_warps_a_whole_pixel_shift_exactly():
    img = _smooth(48, 64)
    dx, dy = 3.0, -2.0
    flow = torch.zeros(1, 2, 48, 64)
    flow[:, 0], flow[:, 1] = dx, dy
    out = mr_joint.bilinear_sampler(img, flow)
    # out[r, c] = img[r + dy, c + dx] wherever that pixel exists
    expect = img[:, :, 0:46, 3:64]
    assert torch.allclose(out[:, :, 2:48, 0:61], expect, atol=1e-6)


def test_bilinear_sampler_half_pixel_is_the_mean_of_neighbours():
    img = _smooth(32, 32, seed=2)
    flow = torch.zeros(1, 2, 32, 32)
    flow[:, 0] = 0.5
    out = mr_joint.bilinear_sampler(img, flow)
    assert torch.allclose(out[..., :-1], (img[..., :-1] + img[..., 1:]) / 2, atol=1e-6)


def test_state_plane_round_trip():
    h = torch.randn(2, 16, 8, 12)
    plane = mr_joint.pack_state(h, (64, 96))
    assert tuple(plane.shape) == (2, 1, 64, 96)
    assert torch.equal(mr_joint.unpack_state(plane), h)
    assert float(plane[:, :, 32:].abs().sum()) == 0.0 and float(plane[:, :, :, 48:].abs().sum()) == 0.0


def test_engine_path_equals_the_training_path_and_carries_the_state():
    torch.manual_seed(0)
    model = mr_joint.build().eval()
    seq = _smooth(64, 64, seed=3, n=3)[:, 0][None]              # (1, 3, 64, 64): three frames
    with torch.no_grad():
        logits, flows = model.sequence(seq)
        state = torch.zeros(1, 1, 64, 64)
        outs = []
        for t in range(1, 3):
            out = model(torch.cat([seq[:, 0:1], seq[:, t:t + 1], state], 1))  # against frame 0
            state = out[:, mr_joint.STATE_CHANNEL:mr_joint.STATE_CHANNEL + 1]
            outs.append(out)
    for t, out in zip((1, 2), outs):
        assert torch.allclose(out[:, mr_joint.SEG_CHANNELS], logits[:, t], atol=1e-5)
        assert torch.allclose(out[:, mr_joint.FLOW_CHANNELS], flows[:, t - 1], atol=1e-5)
    # the second pair saw the first pair's state: a zero state gives another flow
    with torch.no_grad():
        fresh = model(torch.cat([seq[:, 0:1], seq[:, 2:3], torch.zeros(1, 1, 64, 64)], 1))
    assert not torch.allclose(fresh[:, mr_joint.FLOW_CHANNELS], outs[1][:, mr_joint.FLOW_CHANNELS])


def test_normalise_scales_by_percentiles_per_image():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 1000, (64, 64)).astype(np.int16)
    a = mr_joint.normalise(img)
    b = mr_joint.normalise(img.astype(np.float64) * 3.0 + 7.0)   # any gain and offset: the same
    assert a.dtype == np.float32 and 0.0 <= a.min() and a.max() <= 1.0
    assert np.allclose(a, b, atol=1e-5)
    lo, hi = np.percentile(img, mr_joint.NORMALISE_PERCENTILES)
    assert a[img <= lo].max() == 0.0 and a[img >= hi].min() == 1.0
    assert not mr_joint.normalise(np.full((8, 8), 5)).any()
    with pytest.raises(ValueError, match="NaN"):
        mr_joint.normalise(np.array([[1.0, np.nan], [0.0, 2.0]]))
    with pytest.raises(ValueError, match="one"):
        mr_joint.normalise(np.zeros((2, 8, 8)))
