"""3D-EAR (FIMH 2021) and its ablation baselines: output contract of the three variants,
input checks, the circular time axis, the per-frame attention gates and the temporal
receptive field, the bidirectional ConvLSTM (fused against its reference cells, warm-up,
reach beyond the convolutions), the three losses, the input normalisation, the parameter
budget and the unet3d -> ear3d weight transfer."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from engines.nets import ear3d as E

#: small sizes for the tests: widths 4-8-16, H and W multiples of 4
SMALL = dict(base=4, levels=2)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """One torch thread: the ConvLSTM's per-step work is small, and on a shared, loaded 2-core
    CPU every parallel region then waits for the busy core."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _model(variant: str = E.DEFAULT_VARIANT, **overrides) -> E.EAR3D:
    torch.manual_seed(0)
    return E.build(variant, **{**SMALL, **overrides}).eval()


def _input(n: int, c: int, t: int, h: int, w: int | None = None, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, c, t, h, h if w is None else w, generator=g)


def _frame_gradient(model: E.EAR3D, x: torch.Tensor, frame: int = 0) -> torch.Tensor:
    """(T,): the largest |d sum(logits of output ``frame``) / d input| over each input frame."""
    x = x.clone().requires_grad_(True)
    model(x)[:, :, frame].sum().backward()
    return x.grad.abs().amax(dim=(0, 1, 3, 4))


def _circular_distance(t: int, frame: int = 0) -> torch.Tensor:
    k = torch.arange(t)
    return torch.minimum((k - frame) % t, (frame - k) % t)


# --- construction ---------------------------------------------------------------------------


def test_constants_and_build():
    assert E.CLASSES == ("background", "myocardium")
    assert E.VARIANTS == ("unet3d", "unet3d_att", "ear3d") and E.DEFAULT_VARIANT == "ear3d"
    assert E.LOSSES == ("cross_entropy", "dice", "dice_iou")
    assert E.CHANNELS == ("magnitude", "v_x", "v_y", "v_z")
    assert E.VELOCITY_SCALE_CM_S == 10.0
    model = E.build()
    assert model.variant == "ear3d" and isinstance(model, E.EAR3D)
    assert model.hparams == {**E.DEFAULTS, "attention": True, "recurrent": True}
    assert E.widths() == (8, 16, 32, 64)
    assert model.lstm.hidden == 16                                  # a quarter of 64
    assert [E.build(v).variant for v in E.VARIANTS] == list(E.VARIANTS)
    plain, gated = E.build("unet3d"), E.build("unet3d_att")
    assert plain.gates is None and plain.lstm is None
    assert gated.gates is not None and gated.lstm is None
    assert E.build(in_channels=1).encoder[0].conv1.in_channels == 1
    assert E.build(lstm_hidden=5).lstm.hidden == 5
    assert E.build(**SMALL).head.in_channels == 4
    with pytest.raises(ValueError, match="unknown variant 'unet'"):
        E.build("unet")
    with pytest.raises(ValueError, match="unknown size.*depth.*in_channels, base, levels"):
        E.build(depth=3)
    with pytest.raises(ValueError, match="in_channels=2"):
        E.build(in_channels=2)
    with pytest.raises(ValueError, match="base=0"):
        E.build(base=0)
    with pytest.raises(ValueError, match="levels=0"):
        E.build(levels=0)
    with pytest.raises(ValueError, match="lstm_hidden=0"):
        E.build(lstm_hidden=0)


# --- output contract ------------------------------------------------------------------------


@pytest.mark.parametrize("variant", E.VARIANTS)
def test_output_shape_for_frame_counts_batches_and_channels(variant):
    for c in (4, 1):
        model = _model(variant, in_channels=c)
        with torch.no_grad():
            for t in (1, 2, 5):
                for n in (1, 2):
                    out = model(_input(n, c, t, 16, 12, seed=t))
                    assert tuple(out.shape) == (n, 2, t, 16, 12)
                    assert out.dtype == torch.float32 and out.is_contiguous()
                    assert torch.isfinite(out).all()
    with torch.no_grad():
        out = _model(variant)(_input(1, 4, 50, 16))                 # a 50-frame cycle
        assert tuple(out.shape) == (1, 2, 50, 16, 16) and torch.isfinite(out).all()
        out = E.build(variant).eval()(_input(1, 4, 3, 32))           # default sizes
        assert tuple(out.shape) == (1, 2, 3, 32, 32) and torch.isfinite(out).all()


def test_train_and_eval_modes_compute_alike():
    """No BatchNorm, no dropout: a batch of one in training mode gives the eval logits."""
    model = _model("ear3d")
    x = _input(1, 4, 4, 16)
    with torch.no_grad():
        evaluated = model(x)
        trained = model.train()(x)
    assert torch.allclose(evaluated, trained, atol=1e-6)


def test_myocardium_probability():
    logits = torch.zeros(2, 2, 3, 4, 4)
    logits[0, 1] = 2.0
    p = E.myocardium_probability(logits)
    assert tuple(p.shape) == (2, 3, 4, 4)
    assert torch.allclose(p[0], torch.full((3, 4, 4), 1 / (1 + np.exp(-2.0))))
    assert torch.allclose(p[1], torch.full((3, 4, 4), 0.5))
    with pytest.raises(ValueError, match="expected a float tensor"):
        E.myocardium_probability(torch.zeros(2, 3, 3, 4, 4))
    with pytest.raises(ValueError, match="expected a float tensor"):
        E.myocardium_probability(torch.zeros(2, 2, 4, 4))


# --- input checks ---------------------------------------------------------------------------


@pytest.mark.parametrize("x, match", [
    (torch.zeros(4, 3, 16, 16), "expected rank 5"),
    (torch.zeros(1, 1, 4, 3, 16, 16), "expected rank 5"),
    (torch.zeros(1, 3, 3, 16, 16), "has 3 channels: this network takes 4 "
                                   r"\(magnitude, v_x, v_y, v_z\)"),
    (torch.zeros(1, 4, 3, 16, 18), "multiples of 2\\*\\*levels = 4"),
    (torch.zeros(1, 4, 3, 10, 16), "multiples of 2\\*\\*levels = 4"),
    (torch.zeros(1, 4, 0, 16, 16), "T >= 1"),
    (torch.zeros(1, 4, 3, 16, 16, dtype=torch.float64), "dtype torch.float64: expected "
                                                        "torch.float32"),
    (torch.zeros(1, 4, 3, 16, 16, dtype=torch.uint8), "dtype torch.uint8"),
    (np.zeros((1, 4, 3, 16, 16), np.float32), "expected a torch.Tensor"),
])
def test_bad_inputs_are_refused(x, match):
    with pytest.raises(ValueError, match=match):
        _model("unet3d")(x)


def test_non_finite_inputs_and_magnitude_only_channel_count_are_refused():
    model = _model("unet3d")
    for bad in (float("nan"), float("inf")):
        x = _input(1, 4, 3, 16)
        x[0, 2, 1, 3, 4] = bad
        with pytest.raises(ValueError, match="NaN or infinite"):
            model(x)
    with pytest.raises(ValueError, match=r"has 4 channels: this network takes 1 \(magnitude\)"):
        _model("unet3d", in_channels=1)(_input(1, 4, 3, 16))


# --- the time axis --------------------------------------------------------------------------


def test_circular_time_pad():
    x = torch.arange(3.0).reshape(1, 1, 3, 1, 1)
    assert E.circular_time_pad(x, 1).flatten().tolist() == [2, 0, 1, 2, 0]
    assert E.circular_time_pad(x, 4).flatten().tolist() == [2, 0, 1, 2, 0, 1, 2, 0, 1, 2, 0]
    one = torch.full((1, 1, 1, 2, 2), 7.0)
    assert E.circular_time_pad(one, 1).shape[2] == 3 and (E.circular_time_pad(one, 1) == 7).all()
    cl = x.contiguous(memory_format=torch.channels_last_3d)
    assert E.circular_time_pad(cl, 1).is_contiguous(memory_format=torch.channels_last_3d)


@pytest.mark.parametrize("variant", ["unet3d", "unet3d_att"])
def test_rolling_the_cycle_rolls_the_logits(variant):
    """Circular time padding, space-only pooling and per-frame norms and gates: the cycle has
    no first frame; rolling the input by k frames rolls the logits by k frames."""
    model = _model(variant)
    x = _input(2, 4, 6, 16)
    with torch.no_grad():
        base = model(x)
        for k in (1, 3, 5):
            rolled = model(x.roll(k, dims=2))
            assert torch.allclose(rolled, base.roll(k, dims=2), atol=1e-5)


def test_ear3d_is_about_roll_equivariant_thanks_to_the_warm_up():
    """With the warm-up pass each direction's state at the start of the recorded pass has seen
    the whole cycle, so where the cycle starts matters much less than with a zero state
    (exact equivariance would need the state's fixed point)."""
    model = _model("ear3d")
    x = _input(1, 4, 8, 16, seed=2)

    def roll_error() -> float:
        with torch.no_grad():
            base = model(x)
            return max(float((model(x.roll(k, dims=2)) - base.roll(k, dims=2)).abs().max())
                       for k in (1, 3, 4))

    warm = roll_error()
    model.lstm.warmup = False
    cold = roll_error()
    with torch.no_grad():
        spread = float(model(x).std())
    # measured with random weights (seeds 0-3): warm / cold 0.1-0.2, warm / spread 0.015-0.07,
    # cold / spread 0.14-0.36 (the LSTM term counts)
    assert warm < 0.5 * cold and warm < 0.2 * spread and cold > 0.05 * spread


def test_warm_up_makes_frame_0_depend_on_the_end_of_the_cycle():
    """The forward direction's state at frame 0: from the warm-up pass it depends on every
    frame (the last one included); from a zero state only on frame 0 itself."""
    torch.manual_seed(1)
    lstm = E.ConvLSTM(6, 3)
    hid = lstm.hidden
    x = torch.randn(1, 6, 7, 4, 4)

    def gradient(warmup: bool) -> torch.Tensor:
        lstm.warmup = warmup
        xx = x.clone().requires_grad_(True)
        lstm.states(xx)[:, :hid, 0].sum().backward()               # forward direction, frame 0
        return xx.grad.abs().amax(dim=(0, 1, 3, 4))

    cold, warm = gradient(False), gradient(True)
    assert cold[0] > 0 and (cold[1:] == 0).all()
    assert (warm > 0).all() and warm[-1] > 1e-6


def test_fused_conv_lstm_equals_its_reference_cells():
    torch.manual_seed(0)
    for warmup in (False, True):
        lstm = E.ConvLSTM(6, 3, warmup=warmup)
        x = torch.randn(2, 6, 5, 4, 4)
        with torch.no_grad():
            fused = lstm.states(x)
            directions = []
            for cell, order in ((lstm.forward_cell, range(5)),
                                (lstm.backward_cell, range(4, -1, -1))):
                state, out = None, {}
                for _ in range(2 if warmup else 1):
                    for t in order:
                        state = cell(x[:, :, t], state)
                        out[t] = state[0]
                directions.append(torch.stack([out[t] for t in range(5)], 2))
        assert torch.allclose(fused, torch.cat(directions, 1), atol=1e-6)
        assert torch.allclose(lstm(x), x + lstm.projection(fused), atol=1e-6)


# --- attention per frame, the receptive field and the LSTM's reach -------------------------


def test_attention_coefficients_are_per_frame_and_pixel():
    torch.manual_seed(0)
    gate = E.AttentionGate(4, 8, 2)
    x, g = torch.randn(1, 4, 5, 8, 8), torch.randn(1, 8, 5, 4, 4)
    alpha = gate.coefficients(x, g)
    assert tuple(alpha.shape) == (1, 1, 5, 8, 8)
    assert (alpha > 0).all() and (alpha < 1).all() and alpha.std() > 0
    assert torch.allclose(gate(x, g), x * alpha)
    x2, g2 = x.clone(), g.clone()
    x2[:, :, 2] += 1.0
    g2[:, :, 2] -= 1.0
    changed = (gate.coefficients(x2, g2) != alpha).flatten(3).any(-1).flatten()
    assert changed.tolist() == [False, False, True, False, False]


@pytest.mark.parametrize("variant", ["unet3d", "unet3d_att"])
def test_frames_meet_only_within_the_temporal_receptive_field(variant):
    """Without the LSTM, an output frame sees the input frames within temporal_receptive_field
    frames of it (circularly: one per 3x3x3 convolution on the longest path) and no other:
    the gates, the norms and the poolings work frame by frame."""
    levels = 1
    reach = E.temporal_receptive_field(levels)
    assert reach == 6 and E.temporal_receptive_field(3) == 14
    t = 2 * reach + 4                                               # 16: 3 frames out of reach
    model = _model(variant, levels=levels)
    grad = _frame_gradient(model, _input(1, 4, t, 8), frame=0)
    distance = _circular_distance(t)
    assert (grad[distance > reach] == 0).all()
    assert (grad[distance <= reach] > 0).all()


def test_the_lstm_reaches_beyond_the_convolutions():
    """ear3d: output frame 0 depends on the input frames beyond the convolutions' temporal
    reach, through the ConvLSTM; unet3d's and unet3d_att's do not (exactly)."""
    levels = 1
    reach = E.temporal_receptive_field(levels)
    t = 2 * reach + 4
    x = _input(1, 4, t, 8, seed=3)
    far = _circular_distance(t) > reach
    for variant in E.VARIANTS:
        grad = _frame_gradient(_model(variant, levels=levels), x, frame=0)
        if variant == "ear3d":
            assert (grad[far] > 0).all() and float(grad[far].max()) > 1e-7
        else:
            assert (grad[far] == 0).all()


# --- losses ---------------------------------------------------------------------------------


def _target(n: int = 2, t: int = 3, h: int = 8, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, t, h, h, generator=g) > 0.6


def _logits_for(target: torch.Tensor, margin: float) -> torch.Tensor:
    """Logits that say ``target`` with the given margin (negative: the opposite)."""
    y = target.float()
    return torch.stack([-margin * (2 * y - 1), margin * (2 * y - 1)], 1) / 2


def test_losses_of_perfect_and_worst_logits():
    target = _target()
    perfect, worst = _logits_for(target, 30.0), _logits_for(target, -30.0)
    for kind in E.LOSSES:
        assert float(E.loss(perfect, target, kind)) < 1e-4
    assert float(E.loss(worst, target, "cross_entropy")) > 25.0
    assert float(E.loss(worst, target, "dice")) > 0.99
    assert float(E.loss(worst, target, "dice_iou")) > 1.98
    undecided = torch.zeros(2, 2, *target.shape[1:])
    assert abs(float(E.loss(undecided, target, "cross_entropy")) - np.log(2)) < 1e-6
    # an empty target predicted empty: Dice and IoU 1 by the smoothing, the loss 0
    empty = torch.zeros_like(target)
    assert float(E.loss(_logits_for(empty, 30.0), empty, "dice_iou")) < 1e-4


def test_soft_dice_and_iou_are_per_sample_then_averaged():
    target = _target(2, 2, 4)
    logits = torch.randn(2, 2, 2, 4, 4, generator=torch.Generator().manual_seed(5))
    p = E.myocardium_probability(logits)
    y = target.float()
    inter = (p * y).sum((1, 2, 3))
    total = p.sum((1, 2, 3)) + y.sum((1, 2, 3))
    dice = (2 * inter + 1) / (total + 1)
    iou = (inter + 1) / (total - inter + 1)
    assert torch.allclose(E.loss(logits, target, "dice"), (1 - dice).mean())
    assert torch.allclose(E.loss(logits, target, "dice_iou"), (2 - dice - iou).mean())
    assert torch.allclose(E.loss(logits, target, "cross_entropy"),
                          torch.nn.functional.cross_entropy(logits, target.long()))


def test_losses_take_bool_and_integer_targets_and_give_finite_gradients():
    target = _target()
    for kind in E.LOSSES:
        logits = torch.randn(2, 2, *target.shape[1:], requires_grad=True)
        values = [E.loss(logits, t, kind) for t in (target, target.long(), target.to(torch.uint8))]
        assert torch.allclose(values[0], values[1]) and torch.allclose(values[0], values[2])
        values[0].backward()
        assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0


def test_losses_refuse_bad_arguments():
    target = _target()
    logits = torch.zeros(2, 2, *target.shape[1:])
    with pytest.raises(ValueError, match="unknown loss 'focal'"):
        E.loss(logits, target, "focal")
    with pytest.raises(ValueError, match="target"):
        E.loss(logits, target[:1], "dice")                          # wrong N
    with pytest.raises(ValueError, match="target"):
        E.loss(logits, target[:, :, :4], "dice")                    # wrong H
    with pytest.raises(ValueError, match="target"):
        E.loss(logits, target.float(), "cross_entropy")             # float labels
    with pytest.raises(ValueError, match="logits"):
        E.loss(torch.zeros(2, 3, *target.shape[1:]), target, "dice")    # 3 classes
    with pytest.raises(ValueError, match="logits"):
        E.loss(logits[:, :, 0], target[:, 0], "dice")               # rank 4
    with pytest.raises(ValueError, match="0 \\(background\\) or 1"):
        E.loss(logits, target.long() * 2, "cross_entropy")


# --- normalisation --------------------------------------------------------------------------


def _cycle(t: int = 3, h: int = 8, w: int = 6, seed: int = 0):
    rng = np.random.default_rng(seed)
    magnitude = rng.uniform(0, 1000, (t, h, w))
    velocity = rng.normal(0, 15, (t, h, w, 3))
    return magnitude, velocity


def test_normalise_scales_clips_and_orders_the_channels():
    magnitude, velocity = _cycle()
    x = E.normalise(magnitude, velocity)
    assert tuple(x.shape) == (4, 3, 8, 6) and x.dtype == torch.float32
    scale = np.percentile(magnitude, E.MAGNITUDE_PERCENTILE)
    expected_m = np.clip(magnitude / scale, 0, E.MAGNITUDE_CLIP)
    assert np.allclose(x[0].numpy(), expected_m, atol=1e-6)
    assert float(x[0].max()) <= E.MAGNITUDE_CLIP and float(x[0].min()) >= 0
    expected_v = np.clip(velocity / E.VELOCITY_SCALE_CM_S, -3, 3)
    for k, name in enumerate(E.CHANNELS[1:], 1):                    # v_x, v_y, v_z in order
        assert np.allclose(x[k].numpy(), expected_v[..., k - 1], atol=1e-6), name
    big = velocity.copy()
    big[0, 0, 0] = (100.0, -100.0, 25.0)                              # cm/s
    assert E.normalise(magnitude, big)[1:, 0, 0, 0].tolist() == pytest.approx([3.0, -3.0, 2.5])
    # torch in, the same out; an integer magnitude (raw scanner units) too
    same = E.normalise(torch.from_numpy(magnitude), torch.from_numpy(velocity))
    assert torch.allclose(same, x)
    ints = E.normalise(np.round(magnitude).astype(np.uint16), velocity)
    assert ints.dtype == torch.float32 and torch.allclose(ints[0], x[0], atol=2e-3)


def test_normalise_magnitude_only_and_degenerate_values():
    magnitude, velocity = _cycle()
    x = E.normalise(magnitude)
    assert tuple(x.shape) == (1, 3, 8, 6)
    assert torch.allclose(x, E.normalise(magnitude, velocity)[:1])
    m, v = magnitude.copy(), velocity.copy()
    m[1, 2, 3], m[0, 0, 0] = np.nan, np.inf
    v[2, 1, 1, 0], v[0, 5, 5, 2] = np.nan, -np.inf
    y = E.normalise(m, v)
    assert torch.isfinite(y).all()
    assert float(y[0, 1, 2, 3]) == 0 and float(y[0, 0, 0, 0]) == 0
    assert float(y[1, 2, 1, 1]) == 0 and float(y[3, 0, 5, 5]) == 0
    finite = np.isfinite(m)
    scale = np.percentile(m[finite], E.MAGNITUDE_PERCENTILE)          # finite values only
    assert float(y[0, 1, 0, 0]) == pytest.approx(min(m[1, 0, 0] / scale, 1.5), abs=1e-6)
    assert (E.normalise(np.zeros((2, 4, 4))) == 0).all()             # no division by zero
    assert (E.normalise(np.full((2, 4, 4), np.nan)) == 0).all()


def test_normalise_refuses_bad_shapes():
    magnitude, velocity = _cycle()
    with pytest.raises(ValueError, match="magnitude shape"):
        E.normalise(magnitude[0])
    with pytest.raises(ValueError, match="velocity_cm_s shape"):
        E.normalise(magnitude, velocity[..., :2])
    with pytest.raises(ValueError, match="velocity_cm_s shape"):
        E.normalise(magnitude, velocity[:2])
    with pytest.raises(ValueError, match="velocity_cm_s shape"):
        E.normalise(magnitude, np.moveaxis(velocity, -1, 0))        # channels first
    with pytest.raises(ValueError, match="real numbers"):
        E.normalise(magnitude.astype(np.complex64))


def test_normalised_cycle_runs_through_the_network():
    magnitude, velocity = _cycle(t=4, h=16, w=16)
    with torch.no_grad():
        out = _model()(E.normalise(magnitude, velocity)[None])
        out1 = _model(in_channels=1)(E.normalise(magnitude)[None])
    assert tuple(out.shape) == tuple(out1.shape) == (1, 2, 4, 16, 16)


# --- size, weight transfer, gradients -------------------------------------------------------


def test_parameter_budget():
    counts = {v: E.parameter_count(E.build(v)) for v in E.VARIANTS}
    assert counts["unet3d"] < counts["unet3d_att"] < counts["ear3d"] < 500_000
    assert counts["unet3d"] > 300_000                                  # not accidentally tiny
    assert E.parameter_count(E.build(in_channels=1)) == counts["ear3d"] - 3 * 27 * 8


def test_unet3d_weights_load_into_the_other_variants():
    source = E.build("unet3d")
    state = source.state_dict()
    for variant in ("unet3d_att", "ear3d"):
        target = E.build(variant)
        result = target.load_state_dict(state, strict=False)
        assert result.unexpected_keys == []
        assert result.missing_keys and all(k.startswith(("gates.", "lstm."))
                                           for k in result.missing_keys)
        shared = target.state_dict()
        assert all(torch.equal(shared[k], v) for k, v in state.items())
        expected_missing = {k for k in shared if k not in state}
        assert set(result.missing_keys) == expected_missing
    # and with the same gates, unet3d_att's weights load into ear3d the same way
    result = E.build("ear3d").load_state_dict(E.build("unet3d_att").state_dict(), strict=False)
    assert result.unexpected_keys == [] and all(k.startswith("lstm.") for k in result.missing_keys)


@pytest.mark.parametrize("variant", E.VARIANTS)
def test_gradients_reach_every_parameter(variant):
    model = _model(variant).train()
    x = _input(1, 4, 3, 8)
    target = _target(1, 3, 8)
    E.loss(model(x), target, "dice_iou").backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name
