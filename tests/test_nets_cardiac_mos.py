"""Cardiac-MOS (Xue et al. 2018): output contract for every variant and frame count, conv-KI's
kernel interpolation, the non-local blocks (identity at start, subject-level mixing only in
sub-NL), gradients, the ONNX export and the parameter budget."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from engines.nets import cardiac_mos as cm

#: a small polar grid for the tests where the size does not matter
SMALL = (16, 12)


def _segments(n: int, s: int, t: int, size=SMALL, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, s, 1, t, *size, generator=g)


def _perturb_w(model: cm.CardiacMOS) -> None:
    """Move every non-local block's W (its BatchNorm's weight) away from zero."""
    for nl in [*model.seg_nl, *model.sub_nl]:
        with torch.no_grad():
            nl.W[1].weight.normal_(0.0, 1.0)
            nl.W[1].bias.normal_(0.0, 0.1)


def _beat(frames: int, size=SMALL) -> torch.Tensor:
    """A smooth periodic beat (two harmonics in time times a smooth spatial pattern), sampled
    at ``frames`` frames: (1, 1, T, R, A)."""
    t = torch.arange(frames, dtype=torch.float64) / frames
    r = torch.linspace(0, 1, size[0], dtype=torch.float64)
    a = torch.linspace(0, 1, size[1], dtype=torch.float64)
    space = torch.sin(math.pi * r)[:, None] * torch.cos(math.pi * a)[None, :] + 0.5
    time = torch.sin(2 * math.pi * t + 0.3) + 0.4 * torch.sin(4 * math.pi * t + 1.0)
    return (time[:, None, None] * space).reshape(1, 1, frames, *size).float()


def test_constants_and_variants():
    assert cm.CLASSES == ("normal", "hypokinetic", "akinetic", "dyskinetic")
    assert cm.WALL_MOTION_SCORES == (1, 2, 3, 4) and cm.AHA_SEGMENTS == 16
    assert cm.INPUT_SIZE == (80, 60)
    assert set(cm.VARIANTS) == {"cnn", "seg_nl", "sub_nl", "seg_sub_nl"}
    for name, counts in cm.VARIANTS.items():
        model = cm.build(name)
        blocks = (len(model.seg_nl), len(model.sub_nl))
        assert blocks == (counts["segment_nl"], counts["subject_nl"])
    assert len(cm.build("sub_nl", subject_nl=2).sub_nl) == 2                 # sub-NL-2
    assert cm.build(widths=(8, 16, 32, 32)).classifier.in_features == 32
    with pytest.raises(ValueError, match="unknown variant"):
        cm.build("resnet")
    with pytest.raises(ValueError, match="four positive channel widths"):
        cm.build(widths=(16, 32, 64))


@pytest.mark.parametrize("variant", list(cm.VARIANTS))
def test_output_shape_for_every_frame_count_and_segment_count(variant):
    torch.manual_seed(0)
    model = cm.build(variant).eval()
    with torch.no_grad():
        for t in (20, 25, 30, 50, 2):
            for s in (1, 16):
                out = model(_segments(1, s, t))
                assert tuple(out.shape) == (1, s, 4) and out.dtype == torch.float32
                assert torch.isfinite(out).all()
        out = model(_segments(2, 3, 25))                                    # N > 1
        assert tuple(out.shape) == (2, 3, 4)


def test_full_size_input_and_helpers():
    torch.manual_seed(0)
    model = cm.build().eval()
    with torch.no_grad():
        logits = model(_segments(1, 2, 20, size=cm.INPUT_SIZE))
    assert tuple(logits.shape) == (1, 2, 4) and torch.isfinite(logits).all()
    p = cm.probabilities(logits)
    assert torch.allclose(p.sum(-1), torch.ones(1, 2)) and (p >= 0).all()
    scores = cm.wall_motion_scores(torch.tensor([[[5.0, 0, 0, 0], [0, 0, 0, 1.0], [0, 2.0, 1, 0]]]))
    assert scores.tolist() == [[1, 4, 2]] and scores.dtype == torch.int64


@pytest.mark.parametrize("shape", [(1, 16, 25, 16, 12), (1, 16, 2, 25, 16, 12),
                                   (1, 16, 1, 1, 16, 12)])
def test_wrong_input_shapes_are_refused(shape):
    with pytest.raises(ValueError, match=r"expected \(N, S, 1, T, R, A\)"):
        cm.build()(torch.zeros(shape))


def test_conv_ki_kernel_length_scales_with_the_frame_count():
    # K0 = 5 taps at T0 = 25; the smallest odd count >= 5 T / 25 elsewhere
    expected = {25: 5, 20: 5, 30: 7, 50: 11, 100: 21, 10: 3, 2: 1, 40: 9, 24: 5, 26: 7}
    ki = cm.ConvKI(1, 4)
    assert (ki.kernel_frames, ki.reference_frames) == (5, 25)
    for t, k in expected.items():
        assert ki.kernel_length(t) == k == cm.temporal_kernel_length(t)
        assert k % 2 == 1 and 0 <= k - 5 * t / 25 < 2
        assert tuple(ki.kernel(t).shape) == (4, 1, k, 3, 3)
    assert cm.temporal_kernel_length(21, kernel_frames=7, reference_frames=21) == 7
    # at the reference the interpolation is the identity, and the kernel is the parameter
    assert np.array_equal(np.array(cm.kernel_interpolation(25)), np.eye(5))
    assert torch.equal(ki.kernel(25), ki.weight)
    # the stored taps' sum is kept when the kernel is stretched (an exact multiple of T0)
    for t in (50, 100):
        assert np.allclose(np.array(cm.kernel_interpolation(t)).sum(0), 1.0)


def test_conv_ki_parameter_stays_at_the_base_length():
    torch.manual_seed(0)
    model = cm.build("cnn")
    names = {name for name, _ in model.named_parameters()}
    assert "conv_ki.weight" in names and not any("interp" in n for n in names)
    for t in (20, 25, 50):
        model(_segments(1, 2, t))
        assert tuple(model.conv_ki.weight.shape) == (16, 1, 5, 3, 3)
        assert model.blocks[0].conv is model.conv_ki


def test_conv_ki_response_agrees_across_frame_counts():
    """A smooth beat at 25 and at 50 frames: the first layer's responses at the shared time
    points (every other frame of the 50) agree to ~0.7 % (relative L2; 0.6-0.7 % over seeds),
    bound at 2 %: the remaining error is the midpoint rule over a piecewise-linear kernel,
    O((1/T)^2).  Without conv-KI's rule the same weights miss by far: the stored kernel used
    as is at 50 frames spans half the time (~13 %), the interpolated kernel without the
    rescaling doubles the response (~120 %)."""
    torch.manual_seed(0)
    ki = cm.ConvKI(1, 8)
    x25, x50 = _beat(25), _beat(50)
    assert torch.allclose(x50[:, :, ::2], x25, atol=1e-6)                  # the same beat
    with torch.no_grad():
        y25 = ki(x25)
        y50 = ki(x50)                                # re-sampled to 25 frames: every other
        assert y50.shape == y25.shape
        rel = float((y50 - y25).norm() / y25.norm())
        assert rel < 0.02
        as_is = F.conv3d(cm.circular_time_pad(x50, 2), ki.weight, padding=(0, 1, 1))[:, :, ::2]
        assert float((as_is - y25).norm() / y25.norm()) > 5 * rel
        unscaled = ki.kernel(50) * (11 / 5)
        raw = F.conv3d(cm.circular_time_pad(x50, 5), unscaled, padding=(0, 1, 1))[:, :, ::2]
        assert float((raw - y25).norm() / y25.norm()) > 0.5
    # 20 frames (fewer taps than the stored kernel): a temporally smooth kernel (as training
    # leaves it) agrees to ~4 % at the shared time points (every 4th / every 5th frame);
    # white random taps only to ~15 %, their structure finer than 1/20 beat being lost.
    taps = torch.arange(5.0) - 2.0
    coef = torch.randn(8, 1, 3, 3, 3)
    with torch.no_grad():
        ki.weight.copy_(sum(coef[:, :, p, None] * (taps[:, None, None] / 2) ** p for p in range(3)))
        y25, y20 = ki(x25), ki(_beat(20))
        # at the shared time points (every 5th of the 25, every 4th of the 20) ...
        assert float((y20[:, :, ::5] - y25[:, :, ::5]).norm() / y25[:, :, ::5].norm()) < 0.08
        # ... and over the whole beat, the 20 frames' response interpolated in beat time
        assert float((y20 - y25).norm() / y25.norm()) < 0.08


def test_resample_beat_interpolates_in_circular_beat_time():
    x = torch.arange(4.0).reshape(1, 1, 4, 1, 1)                 # frames at beat times k / 4
    assert cm.resample_beat(x, 4) is x
    assert cm.resample_beat(x, 8).flatten().tolist() == [0, 0.5, 1, 1.5, 2, 2.5, 3, 1.5]
    assert cm.resample_beat(x, 2).flatten().tolist() == [0, 2]
    # every layer after conv-KI sees T0 frames, whatever the cine's count
    model = cm.build("cnn").eval()
    for frames in (2, 20, 50):
        assert model.conv_ki(torch.rand(1, 1, frames, 8, 6)).shape[2] == 25


def test_circular_time_pad_wraps_the_beat():
    x = torch.arange(3.0).reshape(1, 1, 3, 1, 1)
    assert cm.circular_time_pad(x, 2).flatten().tolist() == [1, 2, 0, 1, 2, 0, 1]
    assert cm.circular_time_pad(x, 4).flatten().tolist() == [2, 0, 1, 2, 0, 1, 2, 0, 1, 2, 0]
    assert cm.circular_time_pad(x, 0) is x


def test_non_local_block_starts_as_the_identity():
    torch.manual_seed(0)
    for block, x in ((cm.NonLocalBlock(64), torch.randn(3, 64, 3, 4, 5)),   # segment level
                     (cm.NonLocalBlock(64, 32), torch.randn(2, 64, 16))):   # subject level
        block.eval()
        with torch.no_grad():
            assert torch.equal(block(x), x)
            block.W[1].weight.normal_()
            y = block(x)
        assert y.shape == x.shape and not torch.allclose(y, x, atol=1e-3)


def _segment_5_moves(model: cm.CardiacMOS) -> float:
    """Largest change of segment 5's logits when only segment 3's input changes (eval), its
    contrast x 4: with random weights and untrained BatchNorm statistics the features are
    small, and a new random segment 3 moves segment 5 by only ~4e-5."""
    model.eval()
    x = _segments(1, 8, 20, seed=1)
    y = x.clone()
    y[:, 3] = 4.0 * x[:, 3]
    with torch.no_grad():
        a, b = model(x), model(y)
    assert not torch.allclose(a[:, 3], b[:, 3], atol=1e-4)                 # segment 3 did change
    return float((a[:, 5] - b[:, 5]).abs().max())


def test_only_the_subject_level_block_mixes_segments():
    torch.manual_seed(0)
    sub = cm.build("sub_nl")
    assert _segment_5_moves(sub) == 0.0                                    # identity at start
    _perturb_w(sub)
    assert _segment_5_moves(sub) > 3e-4                                    # measured ~3e-3
    for variant in ("cnn", "seg_nl"):
        model = cm.build(variant)
        _perturb_w(model)
        assert _segment_5_moves(model) < 1e-6


def test_gradients_reach_conv_ki_and_the_non_local_projections():
    torch.manual_seed(0)
    model = cm.build("seg_sub_nl").train()
    x = _segments(2, 3, 20)
    # at initialisation only W's BatchNorm sees a gradient (the block's output is zero)
    model(x).square().mean().backward()
    assert model.conv_ki.weight.grad is not None and model.conv_ki.weight.grad.abs().sum() > 0
    for nl in (model.seg_nl[0], model.sub_nl[0]):
        assert nl.W[1].weight.grad.abs().sum() > 0
        assert not nl.theta.weight.grad.abs().sum() > 0
    model.zero_grad()
    _perturb_w(model)
    model(x).square().mean().backward()
    assert model.conv_ki.weight.grad.abs().sum() > 0
    for nl in (model.seg_nl[0], model.sub_nl[0]):
        for proj in (nl.theta, nl.phi, nl.g, nl.W[0]):
            assert proj.weight.grad is not None and proj.weight.grad.abs().sum() > 0


@pytest.mark.filterwarnings("ignore::DeprecationWarning")   # the legacy exporter's own warning
@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")   # shapes are constants at a fixed T
def test_onnx_export_matches_onnxruntime(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    torch.manual_seed(0)
    model = cm.build("seg_sub_nl")
    _perturb_w(model)
    model.eval()
    x = _segments(1, cm.AHA_SEGMENTS, 25, size=cm.INPUT_SIZE)
    path = tmp_path / "cardiac_mos.onnx"
    torch.onnx.export(model, (x,), str(path), dynamo=False, opset_version=17,
                      input_names=["segments"], output_names=["logits"])
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {"segments": x.numpy()})[0]
    with torch.no_grad():
        ref = model(x).numpy()
    assert got.shape == (1, 16, 4)
    np.testing.assert_allclose(got, ref, atol=1e-4)


def test_parameter_budget():
    counts = {v: sum(p.numel() for p in cm.build(v).parameters()) for v in cm.VARIANTS}
    assert all(n < 2_000_000 for n in counts.values())
    assert counts["cnn"] < counts["seg_nl"] == counts["sub_nl"] < counts["seg_sub_nl"]
