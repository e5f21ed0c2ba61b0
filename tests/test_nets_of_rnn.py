"""OF-RNN (Xu et al. 2018): output contract for several frame counts and batch sizes, input
checks, locality of the local and global branches, masked computation, beat-time
re-sampling, the auto-encoder's reconstruction, gradients and the parameter budget."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from engines.nets import of_rnn as ofr

ROI = ofr.ROI_PX
#: the pixel the locality tests look at
PIXEL = (32, 30)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """One torch thread in this module: the LSTM's per-step work on a few pixels is small, and
    on a shared, loaded 2-core CPU every parallel region then waits for the busy core (a
    call on 2 pixels measured ~1 s on two threads against 0.02 s on one)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _inputs(n: int, t: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    frames = torch.rand(n, t, ROI, ROI, generator=g)
    flow = torch.randn(n, t, 2, ROI, ROI, generator=g)
    return frames, flow


def _mask(n: int, pixels) -> torch.Tensor:
    mask = torch.zeros(n, ROI, ROI, dtype=torch.bool)
    for r, c in pixels:
        mask[:, r, c] = True
    return mask


def _ring(n: int, inner: float = 10.0, outer: float = 17.0) -> torch.Tensor:
    """A myocardium-like ring around the ROI centre (~15 % of the pixels)."""
    yy, xx = torch.meshgrid(torch.arange(ROI) - 31.5, torch.arange(ROI) - 31.5, indexing="ij")
    r = (yy.square() + xx.square()).sqrt()
    return ((r >= inner) & (r <= outer)).expand(n, ROI, ROI).clone()


def _model() -> ofr.OFRNN:
    torch.manual_seed(0)
    return ofr.build().eval()


def _at(model, frames, flow, pixel=PIXEL) -> torch.Tensor:
    """The logits of one pixel (computed through a mask of that pixel only)."""
    with torch.no_grad():
        return model(frames, flow, _mask(frames.shape[0], [pixel]))[:, :, pixel[0], pixel[1]]


def test_constants_and_build():
    assert ofr.CLASSES == ("remote", "infarct")
    assert (ofr.ROI_PX, ofr.PATCH_PX, ofr.MIN_FRAMES) == (64, 11, 2)
    model = ofr.build()
    assert model.hparams == {**ofr.DEFAULTS, "encoder_widths": (128, 64, 32)}
    assert model.local_motion.projection.kernel_size == (11, 11)
    assert model.local_motion.lstm.num_layers == 2 and model.local_motion.lstm.batch_first
    assert model.feature_width == 64
    assert ofr.build(hidden=8, encoder_widths=(16, 8)).classifier.in_features == 8
    with pytest.raises(ValueError, match="unknown size"):
        ofr.build(depth=3)
    with pytest.raises(ValueError, match="hidden=0"):
        ofr.build(hidden=0)


def test_output_shape_for_several_frame_counts_and_batches():
    model = _model()
    with torch.no_grad():
        for t in (2, 5, 20, 50):
            for n in (1, 2):
                frames, flow = _inputs(n, t, seed=t)
                mask = _mask(n, [(10, 10), (32, 40)])
                out = model(frames, flow, mask)
                assert tuple(out.shape) == (n, 2, ROI, ROI) and out.dtype == torch.float32
                assert torch.isfinite(out).all()
                outside = ~mask
                assert (out[:, 1][outside] == ofr.OUTSIDE_LOGITS[1]).all()
        out = model(*_inputs(2, 5))                                         # the whole ROI
        assert tuple(out.shape) == (2, 2, ROI, ROI) and torch.isfinite(out).all()
        assert out[:, 1].std() > 0                                          # not the fill value
        empty = model(*_inputs(1, 5), torch.zeros(1, ROI, ROI, dtype=torch.bool))
        assert ofr.infarct_probability(empty).abs().max() == 0


def test_infarct_probability():
    logits = torch.zeros(2, 2, ROI, ROI)
    logits[0, 1] = 3.0
    p = ofr.infarct_probability(logits)
    assert tuple(p.shape) == (2, ROI, ROI)
    assert torch.allclose(p[0], torch.full((ROI, ROI), 1 / (1 + math.exp(-3.0))))
    assert torch.allclose(p[1], torch.full((ROI, ROI), 0.5))
    with pytest.raises(ValueError, match="expected"):
        ofr.infarct_probability(torch.zeros(2, 3, ROI, ROI))


@pytest.mark.parametrize("frames_shape, flow_shape, match", [
    ((1, 5, 64, 32), (1, 5, 2, 64, 32), "frames shape"),
    ((1, 5, 64), (1, 5, 2, 64), "frames shape"),
    ((1, 1, 64, 64), (1, 1, 2, 64, 64), "T >= 2"),
    ((1, 5, 64, 64), (1, 4, 2, 64, 64), "flow shape"),
    ((1, 5, 64, 64), (2, 5, 2, 64, 64), "flow shape"),
    ((1, 5, 64, 64), (1, 5, 3, 64, 64), "flow shape"),
    ((1, 5, 64, 64), (1, 5, 64, 64), "flow shape"),
])
def test_wrong_shapes_are_refused(frames_shape, flow_shape, match):
    with pytest.raises(ValueError, match=match):
        ofr.build()(torch.zeros(frames_shape), torch.zeros(flow_shape))


def test_wrong_dtypes_non_finite_values_and_masks_are_refused():
    model = ofr.build()
    frames, flow = _inputs(1, 3)
    with pytest.raises(ValueError, match="frames dtype torch.float64"):
        model(frames.double(), flow)
    with pytest.raises(ValueError, match="flow dtype torch.float16"):
        model(frames, flow.half())
    with pytest.raises(ValueError, match="frames dtype torch.uint8"):
        model((frames * 255).to(torch.uint8), flow)
    with pytest.raises(ValueError, match="expected a torch.Tensor"):
        model(frames.numpy(), flow)
    for name, bad in (("frames", float("nan")), ("flow", float("inf"))):
        f, g = frames.clone(), flow.clone()
        (f if name == "frames" else g).view(-1)[7] = bad
        with pytest.raises(ValueError, match=f"{name} contain NaN or infinite"):
            model(f, g)
    with pytest.raises(ValueError, match="mask"):
        model(frames, flow, torch.ones(1, ROI, ROI))                         # float, not bool
    with pytest.raises(ValueError, match="mask"):
        model(frames, flow, torch.ones(2, ROI, ROI, dtype=torch.bool))      # wrong N


def test_local_branch_sees_only_the_11x11_patch():
    model = _model()
    frames, flow = _inputs(1, 4)
    mask = _mask(1, [PIXEL])
    with torch.no_grad():
        base, base_feats = _at(model, frames, flow), model.features(frames, flow, mask)
    r, c = PIXEL

    def moved(dr: int, dc: int) -> tuple[float, float]:
        """Largest change of the pixel's logits and of its feature."""
        changed = frames.clone()
        changed[:, :, r + dr, c + dc] = 1.0 - changed[:, :, r + dr, c + dc]   # every frame
        with torch.no_grad():
            feats = model.features(changed, flow, mask)
        return (float((_at(model, changed, flow) - base).abs().max()),
                float((feats - base_feats).abs().max()))

    for dr, dc in ((0, 6), (6, 0), (-6, -6), (0, -20), (25, 25)):     # > 5 px: outside the patch
        assert max(moved(dr, dc)) < 1e-7                              # measured: exactly 0
    # inside the patch: with random weights the logits move by ~2e-6 - 4e-5, the feature by
    # ~7e-4 - 3e-3 (the patch's edge the least)
    for dr, dc in ((0, 5), (-5, 5), (0, 0), (2, -3)):
        logits, feature = moved(dr, dc)
        assert logits > 5e-7 and feature > 1e-4


def test_global_branch_sees_only_the_3x3_flow_neighbourhood():
    model = _model()
    frames, flow = _inputs(1, 4)
    base = _at(model, frames, flow)
    r, c = PIXEL

    def moved(dr: int, dc: int) -> float:
        changed = flow.clone()
        changed[:, :, :, r + dr, c + dc] += torch.tensor([3.0, -2.0]).reshape(1, 1, 2)
        return float((_at(model, frames, changed) - base).abs().max())

    for dr, dc in ((0, 2), (2, 2), (-2, 0), (10, -10)):                # outside the 3 x 3
        assert moved(dr, dc) < 1e-7                                   # measured: exactly 0
    for dr, dc in ((0, 0), (1, 1), (-1, 0), (1, -1)):                  # measured 1.5e-3 - 5e-3
        assert moved(dr, dc) > 1e-4


def test_global_branch_sees_the_flow():
    model = _model()
    frames, flow = _inputs(1, 6)
    mask = _ring(1)
    with torch.no_grad():
        base = model(frames, flow, mask)
        other = model(frames, flow.flip(1), mask)                         # the beat reversed
        zero = model(frames, torch.zeros_like(flow), mask)
        constant = model(frames, torch.full_like(flow, 0.5), mask)
    assert (base - other)[:, :, mask[0]].abs().max() > 1e-4
    assert (zero - constant)[:, :, mask[0]].abs().max() > 1e-4
    # with the flow the same everywhere, every pixel away from the border has one trajectory
    with torch.no_grad():
        paths = model.global_motion.trajectories(torch.full_like(flow, 0.5))[0]
    assert torch.equal(paths[20, 20], paths[40, 45])


def test_masked_logits_equal_unmasked_on_the_masked_pixels():
    model = _model()
    frames, flow = _inputs(2, 5, seed=3)
    mask = _ring(2)
    mask[1, :, :32] = False                                             # a different mask each
    with torch.no_grad():
        full = model(frames, flow)
        masked = model(frames, flow, mask)
        _, feats, recon = model.forward_with_reconstruction(frames, flow, mask)
        _, full_feats, full_recon = model.forward_with_reconstruction(frames, flow)
    for a, b in ((masked, full), (feats, full_feats), (recon, full_recon)):
        assert torch.allclose(a.permute(0, 2, 3, 1)[mask], b.permute(0, 2, 3, 1)[mask],
                              atol=1e-5)
    assert (masked[:, 0][~mask] == ofr.OUTSIDE_LOGITS[0]).all()
    assert (feats.permute(0, 2, 3, 1)[~mask] == 0).all()


def test_forward_with_reconstruction():
    model = _model()
    frames, flow = _inputs(1, 5)
    mask = _ring(1)
    with torch.no_grad():
        logits, feats, recon = model.forward_with_reconstruction(frames, flow, mask)
        assert torch.equal(logits, model(frames, flow, mask))
    assert tuple(feats.shape) == tuple(recon.shape) == (1, model.feature_width, ROI, ROI)
    # the feature is the local (LSTM: tanh-bounded) and the global (ReLU) part concatenated
    hidden = model.hparams["hidden"]
    inside = feats.permute(0, 2, 3, 1)[mask]
    assert inside[:, :hidden].abs().max() < 1 and inside[:, hidden:].min() >= 0
    assert inside.abs().sum() > 0 and recon.permute(0, 2, 3, 1)[mask].abs().sum() > 0
    loss = ofr.reconstruction_loss(feats, recon, mask)
    assert loss.dim() == 0 and float(loss) > 0


def test_gradients_reach_every_part():
    torch.manual_seed(0)
    model = ofr.build().train()
    frames, flow = _inputs(1, 4)
    mask = _mask(1, [(20, 20), (32, 45), (44, 30)])
    target = torch.zeros(1, ROI, ROI, dtype=torch.long)
    target[0, 32, 45] = 1
    logits, feats, recon = model.forward_with_reconstruction(frames, flow, mask)
    # the classification loss alone leaves the decoder without a gradient ...
    F.cross_entropy(logits.permute(0, 2, 3, 1)[mask], target[mask]).backward(retain_graph=True)
    assert all(p.grad is None for p in model.auto_encoder.decoder.parameters())
    # ... the reconstruction loss reaches it
    ofr.reconstruction_loss(feats, recon, mask).backward()
    lstm = model.local_motion.lstm
    reached = {
        "patch projection": model.local_motion.projection.weight,
        "LSTM layer 1": lstm.weight_ih_l0, "LSTM layer 2": lstm.weight_hh_l1,
        "trajectory encoder": model.global_motion.encoder.weight,
        "auto-encoder encoder": model.auto_encoder.encoder[0].weight,
        "auto-encoder code": model.auto_encoder.encoder[-2].weight,
        "auto-encoder decoder": model.auto_encoder.decoder[-1].weight,
        "classifier": model.classifier.weight,
    }
    for name, p in reached.items():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_resampling_matrices():
    for make in (ofr.point_resampling, ofr.interval_resampling):
        assert torch.equal(make(25, 25), torch.eye(25, dtype=torch.float64))
        for t in (2, 5, 20, 50):
            m = make(t, 25)
            assert tuple(m.shape) == (25, t) and torch.allclose(m.sum(1), torch.ones(25).double())
    # point samples: circular linear interpolation at beat times j / S
    assert ofr.point_resampling(4, 8)[7].tolist() == [0.5, 0, 0, 0.5]
    assert ofr.point_resampling(4, 2).tolist() == [[1, 0, 0, 0], [0, 0, 1, 0]]
    # intervals: each bin the mean over the frames' intervals it overlaps
    assert ofr.interval_resampling(4, 2).tolist() == [[0.5, 0.5, 0, 0], [0, 0, 0.5, 0.5]]
    assert ofr.interval_resampling(2, 4).tolist() == [[1, 0], [1, 0], [0, 1], [0, 1]]
    assert ofr.interval_resampling(3, 2)[0].tolist() == pytest.approx([2 / 3, 1 / 3, 0])


def test_trajectory_is_in_beat_time_at_any_frame_count():
    """The same smooth beat's flow at 25 and at 50 frames (each frame's displacement half as
    large at 50) gives about the same trajectory: the flow is scaled to displacement per
    1/25 beat and averaged over the 25 bins."""
    def beat_flow(t: int) -> torch.Tensor:
        s = (torch.arange(t, dtype=torch.float64) + 0.5) / t           # interval midpoints
        v = torch.stack([torch.sin(2 * math.pi * s), 0.5 * torch.cos(2 * math.pi * s)], 1)
        return (v / t * 25).float().reshape(1, t, 2, 1, 1).expand(1, t, 2, ROI, ROI)

    a, b = ofr.trajectory(beat_flow(25)), ofr.trajectory(beat_flow(50))
    assert tuple(a.shape) == tuple(b.shape) == (1, 25, 27, ROI, ROI)
    rel = float((a - b)[..., 1:-1, 1:-1].norm() / a[..., 1:-1, 1:-1].norm())
    assert rel < 0.02
    # ... and scaled, not used as is: the raw magnitudes at 50 frames are half
    raw = ofr.flow_values(beat_flow(50), reference_frames=50)[:, ::2, 0]
    assert float((raw - ofr.flow_values(beat_flow(25))[:, :, 0]).abs().max()) > 0.2
    # the magnitude and the unit orientation of a pixel's flow, tending to 0 for no flow
    v = ofr.flow_values(torch.tensor([3.0, 4.0, 0.0, 0.0]).reshape(1, 2, 2, 1, 1), 2)
    assert v[0, :, :, 0, 0].tolist()[0] == pytest.approx([5.0, 0.6, 0.8], abs=1e-5)
    assert v[0, 1, :, 0, 0].tolist() == [0.0, 0.0, 0.0]


def test_local_sequence_is_resampled_to_beat_time():
    """A beat at 50 frames and the same beat's every other frame (25) give about the same
    logits: the LSTM reads T0 = 25 steps of beat time whatever T."""
    model = _model()
    t = torch.arange(50, dtype=torch.float64) / 50
    wave = (0.5 + 0.3 * torch.sin(2 * math.pi * t)).float()
    g = torch.Generator().manual_seed(5)
    space = torch.rand(1, 1, ROI, ROI, generator=g)
    frames50 = (wave.reshape(1, 50, 1, 1) * space).contiguous()
    flow50 = torch.zeros(1, 50, 2, ROI, ROI)
    mask = _mask(1, [PIXEL, (20, 40)])
    with torch.no_grad():
        a = model(frames50, flow50, mask)
        b = model(frames50[:, ::2].contiguous(), flow50[:, ::2].contiguous(), mask)
    assert torch.allclose(a, b, atol=1e-5)


def test_parameter_budget():
    model = ofr.build()
    total = sum(p.numel() for p in model.parameters())
    assert 20_000 < total < 300_000
    assert total == 75_842                                          # the module docstring's count
    decoder = sum(p.numel() for p in model.auto_encoder.decoder.parameters())
    encoder = sum(p.numel() for p in model.auto_encoder.encoder.parameters())
    assert 0 < decoder and 0 < encoder
