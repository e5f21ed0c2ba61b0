"""LV myocardium segmentation of myocardial velocity mapping MR: 3D-EAR (Kuang et al. 2021).

"Three-Dimensional Embedded Attentive RNN (3D-EAR) Segmentor for Left Ventricle Delineation
from Myocardial Velocity Mapping", M. Kuang, Y. Wu, D. Alonso-Alvarez, D. Firmin, J. Keegan,
P. Gatehouse, G. Yang, FIMH 2021 (LNCS 12738, pp. 55-62, doi:10.1007/978-3-030-78710-3_6).
One short-axis slice of myocardial velocity mapping MR (MVM, tissue phase mapping) over one
cardiac cycle -- per frame a magnitude image and the three velocity components
(:data:`CHANNELS`) -- is segmented into background and LV myocardium (:data:`CLASSES`) in
every frame at once: a 3D U-Net over (time, row, column) ("2D+t") with attention gates on
its skip connections and a convolutional LSTM across the frames at its bottleneck.  The
parts, in the order the data meets them:

* :func:`normalise` (the caller's, before the network) -- one cycle's magnitude and
  velocities to the network's input scale;
* the encoder, ``encoder[0 .. levels-1]`` -- per level a :class:`ConvBlock` (two
  :class:`CyclicConv3d` 3x3x3 convolutions, each followed by a :class:`FrameGroupNorm` and a
  ReLU) and 1x2x2 max pooling (space only) to the next; widths ``base * 2**k`` (8-16-32);
* the bottleneck, ``encoder[levels]`` -- a :class:`ConvBlock` of ``base * 2**levels`` (64)
  channels at H / 2**levels x W / 2**levels (16 x 16 for a 128 x 128 crop);
* :class:`ConvLSTM` (``lstm``; ear3d only) -- the embedded RNN: a bidirectional 2D
  convolutional LSTM (a :class:`ConvLSTMCell` of ``lstm_hidden`` channels per direction)
  over the T frames of the bottleneck features, its states projected back and added to them;
* the decoder, coarsest level first, per level k: the coarser features through ``reduce[k]``
  (1x1x1 to the level's width) and nearest 1x2x2 up-sampling; the level's skip through its
  :class:`AttentionGate` (``gates[k]``; unet3d_att and ear3d only), gated by the coarser
  decoder features; the two concatenated; a :class:`ConvBlock`;
* ``head`` -- a 1x1x1 convolution to the 2 logits (no softmax in forward:
  :func:`myocardium_probability`).

Variants (:data:`VARIANTS`, the paper's ablation, its Table 1): ``unet3d`` (no gates, no
LSTM: the skips go straight to the concatenation), ``unet3d_att`` (the gates), ``ear3d``
(the gates and the LSTM; :data:`DEFAULT_VARIANT`).  They share the names of their common
parts: a smaller variant's state dict loads into a larger one with ``strict=False``, only
``gates.*`` and ``lstm.*`` missing, to fine-tune from it.

Input: ``(N, C, T, H, W)`` float32 as :func:`normalise` makes it (stacked to a batch): C =
``in_channels``, 4 (:data:`CHANNELS`) or 1 (the magnitude only: the paper's
multichannel-against-magnitude comparison); T >= 1 frames of one cardiac cycle, any count
(time is never pooled: trained on 20-30-frame cycles, run on 50); H and W multiples of
2**levels (8 by default).  Output: logits ``(N, 2, T, H, W)`` in :data:`CLASSES` order.
Train and eval modes compute alike (no BatchNorm, no dropout); the samples of a batch are
independent.  Bad inputs (not a tensor, rank, channel count, dtype, NaN or infinite values,
H or W not a multiple of 2**levels) raise ValueError naming the problem.

Losses (:func:`loss`, :data:`LOSSES`, the paper's comparison of three): ``cross_entropy``,
the mean over pixels; ``dice``, 1 - soft Dice of the myocardium; ``dice_iou``, (1 - soft
Dice) + (1 - soft IoU, i.e. Jaccard) of the myocardium.  Left unsaid by the paper and chosen
here: the overlaps are of the myocardium class only (the background's would swamp them),
from its softmax probability, per sample over all T x H x W pixels of the cycle, then the
mean over the batch; :data:`SMOOTH` = 1 is added to numerator and denominator (an empty
target predicted empty scores 1, never 0 / 0); Dice-IoU is the unweighted sum; the
cross-entropy has no class weights.

Choices made here where the paper is silent (or where this project's use differs):

* **Time is circular and never pooled.**  The 3x3x3 convolutions pad time by wrapping round
  (a cine covers one cardiac cycle: the frame after the last is the first, no frame is an
  edge) and space with zeros; pooling and up-sampling are 1x2x2, space only (as the authors'
  early public Keras draft of the 3D U-Net, github.com/kuangmeng/MRIUtils, also pools), so
  every frame count runs, and without the LSTM rolling the cycle by k frames rolls the
  logits by k (to float rounding).
* **Per-frame GroupNorm, not BatchNorm.**  Every norm takes the statistics of one frame of
  one sample (groups of :data:`NORM_GROUP_CHANNELS` channels): right for batches of one,
  the same in training and in use, independent of T, and the frames are coupled only by the
  temporal convolutions and the LSTM.  Without the LSTM an output frame sees exactly the
  input frames within :func:`temporal_receptive_field` frames of it (4 levels + 2: 14 at 3
  levels), circularly, and no others.
* **Attention gates** are Oktay et al.'s additive gates ("Attention U-Net", MIDL 2018) with
  1x1x1 convolutions: ``theta`` of the skip (no bias), ``phi`` of the gating signal (the
  coarser decoder features, taken at their own resolution, then up-sampled bilinearly frame
  by frame), ``psi`` to one channel, a sigmoid: one coefficient per frame and pixel; inner
  width half the skip's; the gated skip is the skip times the coefficient (no output
  convolution).  New gates start from random weights (coefficients about 0.5), also when
  fine-tuning from unet3d.
* **The LSTM** sits at the bottleneck only (1/64 of the pixels: the cheap place, and where a
  pixel's features see the most context); it is bidirectional (the whole cycle is recorded
  before it is segmented, so a frame may use the frames after it), its gates 3x3
  convolutions, forget-gate bias :data:`FORGET_BIAS`, ``lstm_hidden`` a quarter of the
  bottleneck width by default (16); the two directions' states are concatenated, projected
  by a 1x1x1 convolution (``lstm.projection``) and added to the bottleneck features (a
  residual: the U-Net's path stays and the LSTM adds to it).  **Warm-up**: the cycle wraps,
  so each direction first runs once over the whole cycle from a zero state, then runs the
  recorded pass from the state that leaves: frame 0's state has seen the end of the cycle
  as the last frame's has seen its start, and where the cycle starts matters much less
  (the tests see 5-10x smaller differences between rolled cycles than from a zero state;
  exact equivariance would need the state's fixed point), for twice the recurrent cost.
* **Up-sampling** is nearest-neighbour after a 1x1x1 convolution to the finer level's width
  (the same as the convolution after it, at a quarter of the cost), then the concatenation
  with the (gated) skip.
* **Input scale** (:func:`normalise`): the magnitude divided by its
  :data:`MAGNITUDE_PERCENTILE` th percentile over the whole cycle (scanner units vary; one
  bright pixel should not set the scale) and clipped to [0, :data:`MAGNITUDE_CLIP`]; the
  velocities divided by :data:`VELOCITY_SCALE_CM_S` and clipped to +- :data:`VELOCITY_CLIP`
  (30 cm/s: above myocardial velocities, which stay within ~20 cm/s, so blood flow and
  phase noise are what is clipped); non-finite values (e.g. masked phase) become 0.
* **Memory layout**: the network computes in the channels-last 3D format
  (:data:`CHANNELS_LAST`): its full-resolution convolutions of 4-16 channels ran about
  twice as fast there as in (N, C, T, H, W) (0.45 against 0.64 s for ear3d below), and the
  per-frame norms are views.  Inputs and logits are ordinary contiguous tensors.

Size (:data:`DEFAULTS`: widths 8-16-32-64, 3 levels, LSTM hidden 16 per direction):
parameters 333 k (unet3d), 335 k (unet3d_att: the gates 2 k), 429 k (ear3d: the ConvLSTM
94 k); of the U-Net's, 221 k are the encoder's (166 k of them the bottleneck block's) and
109 k the decoder's.  One cycle of 50 frames at 128 x 128 (4 channels) is 21.3 G
multiply-adds for unet3d (2.1 G per encoder level and for the bottleneck, 4.2 G per decoder
level: the same at every level, the widths doubling as the pixels quarter), 0.12 G more for
the gates and 1.4 G more for the ConvLSTM (both directions, warm-up included): 22.9 G for
ear3d (torch's FlopCounterMode: convolutions only, the element-wise work not counted).  In
eager fp32 torch, no grad, ``torch.set_num_threads(2)``, median of 3 after one warm-up run,
on this project's 2-core CPU shared with another job (load average ~0.7 at the time):
0.35 s (unet3d), 0.39 s (unet3d_att), 0.43 s (ear3d) per cycle; on one thread 0.81, 0.93,
0.99 s.  While the other job kept both cores busy (load ~3.5) the same runs took 3-4x
longer, and the ConvLSTM alone on two threads 4.6-6.1 s: each of its ~1000 small per-step
operations then waits for the busy core (as :mod:`engines.nets.of_rnn` found); on a loaded
CPU run it on one thread (:mod:`engines.backends.threads`).

:func:`build` takes a variant name and overrides of the sizes, e.g. ``build("unet3d",
in_channels=1)`` for the magnitude-only baseline.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

#: classes of the logits, in order
CLASSES = ("background", "myocardium")
#: the input channels, in order: the magnitude image and the three velocity components
#: (v_x along +columns, v_y along +rows, v_z through the plane)
CHANNELS = ("magnitude", "v_x", "v_y", "v_z")
#: the input channel counts a network may be built for, and what they are
INPUT_CHANNELS = {4: CHANNELS, 1: CHANNELS[:1]}
#: the variants of :func:`build`: the paper's Table 1 ablation
VARIANTS = ("unet3d", "unet3d_att", "ear3d")
#: the variant :func:`build` returns without one
DEFAULT_VARIANT = "ear3d"
#: the parts each variant has: attention gates on the skips, the ConvLSTM at the bottleneck
VARIANT_PARTS = {
    "unet3d": dict(attention=False, recurrent=False),
    "unet3d_att": dict(attention=True, recurrent=False),
    "ear3d": dict(attention=True, recurrent=True),
}
#: the losses of :func:`loss` (the paper's comparison of loss functions)
LOSSES = ("cross_entropy", "dice", "dice_iou")

#: velocities are divided by this (cm/s) ...
VELOCITY_SCALE_CM_S = 10.0
#: ... and clipped to +- this
VELOCITY_CLIP = 3.0
#: the magnitude is divided by this percentile of its finite values over the whole cycle ...
MAGNITUDE_PERCENTILE = 99.0
#: ... and clipped to [0, this]
MAGNITUDE_CLIP = 1.5
#: the smoothing term added to the numerator and the denominator of soft Dice and IoU
SMOOTH = 1.0
#: channels per group of the per-frame GroupNorm (one group where a width is not a multiple)
NORM_GROUP_CHANNELS = 4
#: initial bias of the ConvLSTM's forget gate (remember by default)
FORGET_BIAS = 1.0

#: the memory layout the network computes in: (N, T, H, W, C) in memory (2x faster 3x3x3
#: convolutions of few channels on the CPU than (N, C, T, H, W), and per-frame views for
#: the norms); inputs and logits are ordinary contiguous (N, C, T, H, W) tensors
CHANNELS_LAST = torch.channels_last_3d

#: default sizes of :func:`build`: input channels (4, or 1 for the magnitude only), width of
#: the first level (doubling per level), poolings (levels; the bottleneck is ``levels`` poolings
#: down), ConvLSTM hidden channels per direction (None: a quarter of the bottleneck width)
DEFAULTS = dict(in_channels=4, base=8, levels=3, lstm_hidden=None)


def widths(base: int = DEFAULTS["base"], levels: int = DEFAULTS["levels"]) -> tuple[int, ...]:
    """Channel widths of the encoder's levels, the bottleneck last: base * 2**k."""
    return tuple(int(base) * 2 ** k for k in range(int(levels) + 1))


def temporal_receptive_field(levels: int = DEFAULTS["levels"]) -> int:
    """Frames on each side of an output frame that can change it in the variants without the
    ConvLSTM: one per 3x3x3 convolution on the longest path (two per encoder level and the
    bottleneck, two per decoder level), the attention gates and all norms working frame by
    frame.  Circular: a cycle of T > 2 x this frames has frames an output frame ignores."""
    return 2 * (int(levels) + 1) + 2 * int(levels)


def circular_time_pad(x: torch.Tensor, pad: int = 1) -> torch.Tensor:
    """(N, C, T, H, W) with ``pad`` frames wrapped around at each end of the time axis (one
    cardiac cycle: the frame after the last is the first); any T >= 1, the memory format
    kept."""
    t = int(x.shape[2])
    if pad == 0:
        return x
    if pad > t:                                                     # more than one turn
        return x.index_select(2, torch.arange(-pad, t + pad, device=x.device) % t)
    return torch.cat([x[:, :, t - pad:], x, x[:, :, :pad]], 2)


def upsample_space(x: torch.Tensor, mode: str = "nearest") -> torch.Tensor:
    """(N, C, T, H, W) -> (N, C, T, 2H, 2W): each frame up-sampled on its own (``nearest``, or
    ``bilinear``: trilinear with the time axis kept, align_corners False)."""
    n, c, t, h, w = x.shape
    if mode == "nearest":
        return F.interpolate(x, size=(t, 2 * h, 2 * w), mode="nearest")
    return F.interpolate(x, size=(t, 2 * h, 2 * w), mode="trilinear", align_corners=False)


class CyclicConv3d(nn.Conv3d):
    """3x3x3 convolution over (T, H, W): circular in time (:func:`circular_time_pad`),
    zero-padded in space, no bias (a norm follows)."""

    def __init__(self, cin: int, cout: int):
        super().__init__(cin, cout, 3, padding=(0, 1, 1), bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(circular_time_pad(x, 1))


class FrameGroupNorm(nn.GroupNorm):
    """GroupNorm of every frame on its own: statistics over (channels of a group, H, W) of one
    frame of one sample, so frames are coupled only by the convolutions (and the ConvLSTM),
    and batch size 1, any T and train / eval modes compute alike."""

    def __init__(self, channels: int):
        groups = channels // NORM_GROUP_CHANNELS if channels % NORM_GROUP_CHANNELS == 0 else 1
        super().__init__(groups, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, t, h, w = x.shape
        y = F.group_norm(x.transpose(1, 2).reshape(n * t, c, h, w), self.num_groups,
                         self.weight, self.bias, self.eps)
        return y.reshape(n, t, c, h, w).transpose(1, 2)


class ConvBlock(nn.Module):
    """Two (:class:`CyclicConv3d`, :class:`FrameGroupNorm`, ReLU): one level of the encoder or
    the decoder, or the bottleneck."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv1, self.norm1 = CyclicConv3d(cin, cout), FrameGroupNorm(cout)
        self.conv2, self.norm2 = CyclicConv3d(cout, cout), FrameGroupNorm(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.norm1(self.conv1(x)), inplace=True)
        return F.relu(self.norm2(self.conv2(x)), inplace=True)


class AttentionGate(nn.Module):
    """Additive attention gate (Oktay et al. 2018) on one skip connection: the skip ``x``
    (N, Cx, T, H, W) is multiplied by ``alpha = sigmoid(psi(relu(theta(x) + up(phi(g)))))``,
    ``g`` (N, Cg, T, H/2, W/2) the gating signal from the coarser decoder level, ``theta``,
    ``phi``, ``psi`` 1x1x1 convolutions, ``up`` bilinear per frame: one coefficient per frame
    and pixel."""

    def __init__(self, skip_channels: int, gate_channels: int, inter_channels: int):
        super().__init__()
        self.theta = nn.Conv3d(skip_channels, inter_channels, 1, bias=False)
        self.phi = nn.Conv3d(gate_channels, inter_channels, 1)
        self.psi = nn.Conv3d(inter_channels, 1, 1)

    def coefficients(self, x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        """alpha (N, 1, T, H, W) in (0, 1)."""
        q = F.relu(self.theta(x) + upsample_space(self.phi(g), "bilinear"))
        return torch.sigmoid(self.psi(q))

    def forward(self, x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        return x * self.coefficients(x, g)


class ConvLSTMCell(nn.Module):
    """One direction of the ConvLSTM: a 2D convolutional LSTM cell.  The gates (i, f, o, g)
    are a 3x3 convolution of [x_t, h_{t-1}], held as ``input_conv`` (of x, with the bias) and
    ``hidden_conv`` (of h, no bias); c_t = f c_{t-1} + i g, h_t = o tanh(c_t) (sigmoid i, f,
    o; tanh g)."""

    def __init__(self, channels: int, hidden: int):
        super().__init__()
        self.hidden = int(hidden)
        self.input_conv = nn.Conv2d(channels, 4 * hidden, 3, padding=1)
        self.hidden_conv = nn.Conv2d(hidden, 4 * hidden, 3, padding=1, bias=False)
        with torch.no_grad():
            self.input_conv.bias[hidden:2 * hidden].fill_(FORGET_BIAS)

    def forward(self, x: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor] | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """One step: x (N, C, h, w), state (h, c) (N, hidden, h, w) each or None (zeros) ->
        the new (h, c).  (:class:`ConvLSTM` runs both directions' steps fused; this is the
        reference it is tested against.)"""
        gates = self.input_conv(x)
        if state is not None:
            gates = gates + self.hidden_conv(state[0])
        return _lstm_update(gates, None if state is None else state[1], self.hidden, 1)


def _lstm_update(gates: torch.Tensor, c: torch.Tensor | None, hidden: int, groups: int):
    """(h, c) from the gates (N, groups x 4 hidden, h, w), in (i, f, o, g) order per group,
    and the previous cell c (N, groups x hidden, h, w) or None (zeros)."""
    n, _, height, width = gates.shape
    g = gates.view(n, groups, 4 * hidden, height, width)
    sig = torch.sigmoid(g[:, :, :3 * hidden])
    i, f, o = sig[:, :, :hidden], sig[:, :, hidden:2 * hidden], sig[:, :, 2 * hidden:]
    candidate = torch.tanh(g[:, :, 3 * hidden:])
    if c is None:
        c_new = i * candidate
    else:
        c_new = f * c.view(n, groups, hidden, height, width) + i * candidate
    h_new = o * torch.tanh(c_new)
    shape = (n, groups * hidden, height, width)
    return h_new.reshape(shape), c_new.reshape(shape)


class ConvLSTM(nn.Module):
    """The embedded RNN at the bottleneck: a bidirectional ConvLSTM (``forward_cell`` over
    frames 0 .. T-1, ``backward_cell`` over T-1 .. 0, :class:`ConvLSTMCell` each) on the
    (N, C, T, h, w) features, the two hidden states of each frame concatenated, projected
    back to C channels (``projection``, 1x1x1) and added to the features (a residual).

    ``warmup`` (True in the network): each direction first runs once over the whole cycle
    from a zero state and then runs the recorded pass from the state that leaves (the cycle
    wraps, so frame 0's state has seen the end of the cycle; module docstring).  The two
    directions run as one: their convolutions concatenated, the hidden one grouped (2
    groups), so each step is one set of small operations, not two."""

    def __init__(self, channels: int, hidden: int, warmup: bool = True):
        super().__init__()
        self.hidden = int(hidden)
        self.warmup = bool(warmup)
        self.forward_cell = ConvLSTMCell(channels, hidden)
        self.backward_cell = ConvLSTMCell(channels, hidden)
        self.projection = nn.Conv3d(2 * hidden, channels, 1)

    def states(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, T, h, w) -> (N, 2 hidden, T, h, w): each frame's forward and backward hidden
        state (of the recorded pass)."""
        n, ch, t, height, width = x.shape
        hid = self.hidden
        cells = (self.forward_cell, self.backward_cell)
        frames = x.transpose(1, 2).reshape(n * t, ch, height, width).contiguous()
        gx = F.conv2d(frames, torch.cat([c.input_conv.weight for c in cells]),
                      torch.cat([c.input_conv.bias for c in cells]), 1, 1)
        gx = gx.view(n, t, 2, 4 * hid, height, width)
        # step s: the forward direction's frame s, the backward direction's frame T-1-s
        gx = torch.stack([gx[:, :, 0], gx[:, :, 1].flip(1)], 2).reshape(n, t, 8 * hid,
                                                                         height, width)
        w_hidden = torch.cat([c.hidden_conv.weight for c in cells])   # (8 hid, hid, 3, 3)

        def run(state):
            h, c = state
            outputs = []
            for s in range(t):
                gates = gx[:, s]
                if h is not None:
                    gates = gates + F.conv2d(h, w_hidden, None, 1, 1, 1, 2)
                h, c = _lstm_update(gates, c, hid, 2)
                outputs.append(h)
            return outputs, (h, c)

        state = run((None, None))[1] if self.warmup else (None, None)
        steps = torch.stack(run(state)[0], 2).view(n, 2, hid, t, height, width)
        return torch.cat([steps[:, 0], steps[:, 1].flip(2)], 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.projection(self.states(x))


class EAR3D(nn.Module):
    """The segmentor: ``(N, C, T, H, W)`` -> logits ``(N, 2, T, H, W)`` (module docstring).
    ``attention``: gates on the skips; ``recurrent``: the ConvLSTM at the bottleneck (both:
    3D-EAR; neither: the plain 3D U-Net)."""

    def __init__(self, in_channels: int = DEFAULTS["in_channels"], base: int = DEFAULTS["base"],
                 levels: int = DEFAULTS["levels"],
                 lstm_hidden: int | None = DEFAULTS["lstm_hidden"], attention: bool = True,
                 recurrent: bool = True):
        super().__init__()
        if in_channels not in INPUT_CHANNELS:
            raise ValueError(f"in_channels={in_channels}: 4 ({', '.join(CHANNELS)}) or 1 "
                             f"(magnitude only)")
        if int(base) < 1 or int(levels) < 1:
            raise ValueError(f"base={base} and levels={levels} must be >= 1")
        if lstm_hidden is not None and int(lstm_hidden) < 1:
            raise ValueError(f"lstm_hidden={lstm_hidden} must be >= 1 (or None)")
        w = widths(base, levels)
        self.levels = int(levels)
        self.in_channels = int(in_channels)
        self.hparams = dict(in_channels=int(in_channels), base=int(base), levels=int(levels),
                            lstm_hidden=lstm_hidden, attention=bool(attention),
                            recurrent=bool(recurrent))
        cins = (self.in_channels,) + w[:-1]
        self.encoder = nn.ModuleList(ConvBlock(a, b) for a, b in zip(cins, w))
        self.lstm = (ConvLSTM(w[-1], int(lstm_hidden or max(1, w[-1] // 4)))
                     if recurrent else None)
        self.gates = (nn.ModuleList(AttentionGate(w[k], w[k + 1], max(1, w[k] // 2))
                                    for k in range(self.levels)) if attention else None)
        self.reduce = nn.ModuleList(nn.Conv3d(w[k + 1], w[k], 1) for k in range(self.levels))
        self.decoder = nn.ModuleList(ConvBlock(2 * w[k], w[k]) for k in range(self.levels))
        self.head = nn.Conv3d(w[0], len(CLASSES), 1)
        for m in self.modules():                                    # module docstring: layout
            if isinstance(m, nn.Conv3d):
                m.weight.data = m.weight.data.contiguous(memory_format=CHANNELS_LAST)

    @property
    def variant(self) -> str:
        """The name of this network's variant in :data:`VARIANTS`."""
        parts = dict(attention=self.gates is not None, recurrent=self.lstm is not None)
        for name, p in VARIANT_PARTS.items():
            if p == parts:
                return name
        return "custom"

    def check_input(self, x) -> None:
        """ValueError naming the problem unless ``x`` is a finite (N, C, T, H, W) tensor of
        the parameters' dtype, C = ``in_channels``, H and W divisible by 2**levels."""
        if not isinstance(x, torch.Tensor):
            raise ValueError(f"input: expected a torch.Tensor (N, C, T, H, W), got "
                             f"{type(x).__name__}")
        if x.dim() != 5:
            raise ValueError(f"input shape {tuple(x.shape)}: expected rank 5 (N, C, T, H, W)")
        dtype = self.head.weight.dtype
        if not x.is_floating_point() or x.dtype != dtype:
            raise ValueError(f"input dtype {x.dtype}: expected {dtype} (normalise() gives it)")
        n, c, t, h, w = (int(v) for v in x.shape)
        if c != self.in_channels:
            names = ", ".join(INPUT_CHANNELS[self.in_channels])
            raise ValueError(f"input has {c} channels: this network takes {self.in_channels} "
                             f"({names})")
        step = 2 ** self.levels
        if min(n, t, h, w) < 1 or h % step or w % step:
            raise ValueError(f"input shape {tuple(x.shape)}: N, T >= 1 and H, W positive "
                             f"multiples of 2**levels = {step} (crop or pad the frames)")
        if not bool(torch.isfinite(x).all()):
            raise ValueError("input contains NaN or infinite values (normalise() zeroes them)")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        skips = []
        h = x.contiguous(memory_format=CHANNELS_LAST)
        for k, block in enumerate(self.encoder):
            if k:
                h = F.max_pool3d(h, (1, 2, 2))
            h = block(h)
            skips.append(h)
        h = skips.pop()                                             # the bottleneck
        if self.lstm is not None:
            h = self.lstm(h)
        for k in reversed(range(self.levels)):
            skip = skips[k] if self.gates is None else self.gates[k](skips[k], h)
            up = upsample_space(self.reduce[k](h))
            h = self.decoder[k](torch.cat([up, skip], 1))
        return self.head(h).contiguous()


def _real_tensor(value, name: str) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        t = value
    else:
        array = np.asarray(value)
        if array.dtype.kind not in "biuf":
            raise ValueError(f"{name}: expected real numbers, got dtype {array.dtype}")
        t = torch.from_numpy(np.ascontiguousarray(array))
    if t.is_complex():
        raise ValueError(f"{name}: expected real numbers, got dtype {t.dtype}")
    return t.to(torch.float64)


def _percentile(values: torch.Tensor, q: float) -> float:
    """numpy's default (linear) percentile of a 1-D tensor."""
    n = int(values.numel())
    position = q / 100.0 * (n - 1)
    lo = int(position)
    hi = min(lo + 1, n - 1)
    a = float(values.kthvalue(lo + 1).values)
    b = float(values.kthvalue(hi + 1).values) if hi != lo else a
    return a + (b - a) * (position - lo)


def normalise(magnitude, velocity_cm_s=None) -> torch.Tensor:
    """The network's input for one cycle: float32 (C, T, H, W), channels in :data:`CHANNELS`
    order (only the magnitude when ``velocity_cm_s`` is None).

    ``magnitude`` (T, H, W), any scale: divided by its :data:`MAGNITUDE_PERCENTILE` th
    percentile over the whole cycle (its finite values; 1 where that is not positive), clipped
    to [0, :data:`MAGNITUDE_CLIP`].  ``velocity_cm_s`` (T, H, W, 3), (v_x along +columns, v_y
    along +rows, v_z through the plane) in cm/s: divided by :data:`VELOCITY_SCALE_CM_S`,
    clipped to +- :data:`VELOCITY_CLIP`.  Non-finite values become 0.  numpy arrays or torch
    tensors (the result on a tensor's device)."""
    m = _real_tensor(magnitude, "magnitude")
    if m.dim() != 3 or min(m.shape) < 1:
        raise ValueError(f"magnitude shape {tuple(m.shape)}: expected (T, H, W)")
    finite = torch.isfinite(m)
    values = m[finite]
    scale = _percentile(values, MAGNITUDE_PERCENTILE) if values.numel() else 0.0
    scale = scale if scale > 0 else 1.0
    m = torch.where(finite, m / scale, torch.zeros_like(m)).clamp(0.0, MAGNITUDE_CLIP)
    channels = [m[None]]
    if velocity_cm_s is not None:
        v = _real_tensor(velocity_cm_s, "velocity_cm_s").to(m.device)
        if tuple(v.shape) != (*m.shape, 3):
            raise ValueError(f"velocity_cm_s shape {tuple(v.shape)}: expected (T, H, W, 3) = "
                             f"{(*m.shape, 3)}, the magnitude's T, H, W")
        v = torch.where(torch.isfinite(v), v / VELOCITY_SCALE_CM_S, torch.zeros_like(v))
        channels.append(v.clamp(-VELOCITY_CLIP, VELOCITY_CLIP).permute(3, 0, 1, 2))
    return torch.cat(channels, 0).to(torch.float32).contiguous()


def _check_logits(logits, name: str = "logits") -> None:
    if not isinstance(logits, torch.Tensor) or logits.dim() != 5 \
            or int(logits.shape[1]) != len(CLASSES) or not logits.is_floating_point():
        got = (f"{tuple(logits.shape)} {logits.dtype}" if isinstance(logits, torch.Tensor)
               else type(logits).__name__)
        raise ValueError(f"{name} {got}: expected a float tensor (N, {len(CLASSES)}, T, H, W)")


def myocardium_probability(logits: torch.Tensor) -> torch.Tensor:
    """(N, 2, T, H, W) logits -> (N, T, H, W) probability of myocardium (softmax over the
    classes)."""
    _check_logits(logits)
    return torch.softmax(logits, dim=1)[:, CLASSES.index("myocardium")]


def soft_overlaps(logits: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(soft Dice, soft IoU) of the myocardium class per sample, (N,) each, over T, H, W, with
    :data:`SMOOTH` added to numerator and denominator (1 for an empty target predicted empty)."""
    p = myocardium_probability(logits)
    y = target.to(p.dtype)
    inter = (p * y).sum((1, 2, 3))
    total = p.sum((1, 2, 3)) + y.sum((1, 2, 3))
    dice = (2 * inter + SMOOTH) / (total + SMOOTH)
    iou = (inter + SMOOTH) / (total - inter + SMOOTH)
    return dice, iou


def loss(logits: torch.Tensor, target: torch.Tensor, kind: str) -> torch.Tensor:
    """The training loss ``kind`` (:data:`LOSSES`) of logits (N, 2, T, H, W) against the
    labels ``target`` (N, T, H, W) bool or integer (1 = myocardium, 0 = background):
    ``cross_entropy``, the mean over pixels; ``dice``, 1 - soft Dice of the myocardium;
    ``dice_iou``, (1 - soft Dice) + (1 - soft IoU) of the myocardium (per sample, then the
    mean over the batch: :func:`soft_overlaps`)."""
    if kind not in LOSSES:
        raise ValueError(f"unknown loss {kind!r}; one of {', '.join(LOSSES)}")
    _check_logits(logits)
    if not isinstance(target, torch.Tensor) or target.is_floating_point() \
            or target.is_complex() or tuple(target.shape) != (logits.shape[0], *logits.shape[2:]):
        got = (f"{tuple(target.shape)} {target.dtype}" if isinstance(target, torch.Tensor)
               else type(target).__name__)
        raise ValueError(f"target {got}: expected a bool or integer tensor (N, T, H, W) = "
                         f"{(logits.shape[0], *logits.shape[2:])}")
    if target.dtype != torch.bool and bool(((target != 0) & (target != 1)).any()):
        raise ValueError("target: labels must be 0 (background) or 1 (myocardium)")
    if kind == "cross_entropy":
        return F.cross_entropy(logits, target.long())
    dice, iou = soft_overlaps(logits, target)
    if kind == "dice":
        return (1 - dice).mean()
    return ((1 - dice) + (1 - iou)).mean()


def parameter_count(model: nn.Module) -> int:
    """Number of parameters of ``model``."""
    return sum(p.numel() for p in model.parameters())


def build(variant: str = DEFAULT_VARIANT, **overrides) -> EAR3D:
    """The network of ``variant`` (:data:`VARIANTS`) with the default sizes (:data:`DEFAULTS`,
    or ``overrides`` of them) and random weights."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; one of {', '.join(VARIANTS)}")
    unknown = set(overrides) - set(DEFAULTS)
    if unknown:
        raise ValueError(f"unknown size(s) {', '.join(sorted(unknown))}; the sizes are "
                         f"{', '.join(DEFAULTS)}")
    return EAR3D(**{**DEFAULTS, **overrides}, **VARIANT_PARTS[variant])
