"""Segmental wall-motion scoring of short-axis cine MR: Cardiac-MOS (Xue et al. 2018).

"Cardiac motion scoring with segment- and subject-level non-local modeling", W. Xue et al.,
MICCAI 2018.  Each of the 16 AHA myocardial segments of a short-axis stack, followed over one
heart beat, is scored as normal, hypokinetic, akinetic or dyskinetic (:data:`CLASSES`,
wall-motion scores 1-4: :data:`WALL_MOTION_SCORES`).  The network looks at every segment
with the same 3-D CNN over (time, radius, angle), relates distant parts of one segment's
feature map with a segment-level non-local block, and relates the segments of one subject
with a subject-level non-local block, so that a segment's score can depend on how the rest
of that heart moves.  The parts, in the order a segment meets them:

* :class:`ConvKI` -- the first layer: a (k_t, 3, 3) convolution whose temporal kernel is
  stored at a reference frame count ``reference_frames`` (T0 = 25) with ``kernel_frames``
  (K0 = 5) taps and re-sampled in every forward for the input's frame count T (the paper's
  conv-KI, "kernel interpolation"), so one set of weights serves beats of 20, 25, 30, 50 ...
  frames (:func:`temporal_kernel_length`, :func:`kernel_interpolation` give the rule),
  its response re-sampled to T0 frames of beat time (:func:`resample_beat`, below);
* :class:`ConvBlock` x 4 -- convolution (conv-KI in the first, then :class:`CyclicConv3d`
  3x3x3), BatchNorm3d, ReLU and 2x2x2 max pooling of (T, R, A); widths 16-32-64-64;
* :class:`NonLocalBlock` at segment level (``segment_nl`` blocks, "seg-NL") -- within one
  segment's feature map after the third block, over its t x r x a positions (3 x 10 x 7 =
  210 for 80 x 60 at any frame count);
* global average pooling of each segment's map after the fourth block: one 64-vector per
  segment;
* :class:`NonLocalBlock` at subject level (``subject_nl`` blocks, "sub-NL") -- across the S
  segments of one subject, each segment's vector one position;
* the classifier: a linear layer to the 4 logits of each segment (no softmax in forward:
  :func:`probabilities`, :func:`wall_motion_scores`).

Input: ``(N, S, 1, T, R, A)`` float -- N subjects (stacks), S segments of each (16 for a full
stack; any S >= 1 runs), one channel, T >= 2 frames of one beat (the cine's whole R-R
interval: time is treated as circular, the frame after the last is the first), R = 80 radial
x A = 60 angular samples of the segment's polar resampling (:data:`INPUT_SIZE`; other sizes
run too).  Intensities as the data preparation leaves them (CLAHE, [0, 1]); the network does
no normalisation of its own.  Output: logits ``(N, S, 4)`` in :data:`CLASSES` order.
Segments are scored independently of each other except through the sub-NL blocks (in eval
mode; in training BatchNorm's batch statistics couple everything in a batch).

conv-KI rule (what the paper leaves to the reader; chosen here).  The stored kernel holds K0
samples of a continuous kernel w(tau), tau in beats, at tap times tau_j = (j - (K0 - 1)/2)/T0:
piecewise linear between the taps, held flat for half a tap beyond the outer ones, so its
support is |tau| <= K0/(2 T0) (0.1 beat by default) and its integral is exactly
sum_j w_j / T0.  For T frames the kernel gets k_t = the smallest odd integer >= K0 T/T0 taps
(K0 at T0; 5, 7, 11, 21 taps at 20, 30, 50, 100 frames; 1 tap below 5 frames), at tap times
tau_i = (i - (k_t - 1)/2)/T, and tap i is ``T0 * (length of its cell tau_i +- 1/(2T) inside
the support) * w(tau_i)`` -- the midpoint rule for T0 * integral of w.  So the kernel spans the
same fraction of the beat at every T, its taps sum to about the stored taps' sum (exactly at
T0, where the interpolation is the identity), and a beat sampled at T frames gives about the
response of the same beat at T0 frames at the same time points (0.6-0.7 % relative difference on
a smooth two-harmonic beat at 25 against 50 frames with random weights, 1 % at 100; the
tests bound 2 %).  Fewer frames than T0 cannot keep a kernel's structure finer than 1/T of a
beat: at 20 frames the same beat agrees to ~4 % with temporally smooth kernels (2 % at 30) and
only to 13-18 % with white random taps.
The parameter stays (C, 1, K0, 3, 3); the interpolation is a constant (k_t, K0) matrix times
the parameter, computed in forward (constant-folded in an ONNX export at a fixed T).

**Beat time after conv-KI.**  conv-KI's response, T frames, is re-sampled to T0 frames
(:func:`resample_beat`: linear interpolation, circular, at beat times j / T0) before its
BatchNorm, so every later layer works in beat time whatever the cine's frame count: the
3x3x3 convolutions and the poolings then see the same fraction of a beat per step at 20,
30 or 50 frames.  Without it (the first version of this file) a model trained on 20- and
25-frame beats scored 97-98 % of held-out phantom segments at 20-30 frames and 44 % at 50:
its later kernels had only met one time scale.  Re-sampling after the first layer, not
the input, keeps conv-KI's role: the first layer still sees every frame the scanner sent
(its kernel is a low-pass of 0.2 beat, so taking 50 frames to 25 after it does not alias).

Other choices made here: all convolutions are bias-free (BatchNorm follows), circular in
time and zero-padded in radius and angle (a segment is a sector, not a ring); an axis
already down to one sample is not pooled further (a beat of 2 frames runs); the non-local
blocks are Wang et al.'s embedded Gaussian (X. Wang, R. Girshick, A. Gupta, K. He,
"Non-local neural networks", CVPR 2018: theta, phi, g 1x1 projections to half the channels,
softmax over theta^T phi without scaling, W 1x1 back with a BatchNorm whose weight and bias
start at zero so the block starts as the identity, residual add; no subsampling of phi, g,
the maps are small); the sub-NL has no segment-position encoding (so S may be anything and
the segments are an unordered set to it; the AHA index of a segment is not an input).  A
sub-NL BatchNorm in training needs more than one value per channel (N x S > 1).

Size (:data:`DEFAULTS`): widths 16-32-64-64, K0 = 5 at T0 = 25.  Parameters: 181 k for the
baseline CNN (``cnn``), 189 k with one seg-NL (``seg_nl``) or one sub-NL (``sub_nl``), 198 k
with both (``seg_sub_nl``).  One subject of 16 segments x 25 frames x 80 x 60 is 13.1 GFLOP
(6.5 G multiply-adds: 1.4 G in conv-KI, 3.2 G in the second block, 1.6 G and 0.4 G in the
third and fourth; the non-local blocks add 0.15 GFLOP) and took a median 0.51-0.53 s in eager
fp32 torch on one thread (no grad, every variant), 0.27-0.9 s on two threads, as the other
load on this project's shared 2-core CPU allowed.  Widths 8-16-32-64 would
cost about a third (counted, not timed).
:func:`build` takes a variant name (:data:`VARIANTS`) and overrides of the sizes or block
counts, e.g. ``build("sub_nl", subject_nl=2)`` for "sub-NL-2".
"""

from __future__ import annotations

from fractions import Fraction

import torch
import torch.nn.functional as F
from torch import nn

from streamer.vocab import WALL_MOTION_CLASSES
from streamer.vocab import WALL_MOTION_SCORES as VOCAB_SCORES

#: classes of the logits, in order (streamer.vocab.WALL_MOTION_CLASSES)
CLASSES = WALL_MOTION_CLASSES
#: wall-motion score of each class of :data:`CLASSES`
WALL_MOTION_SCORES = tuple(VOCAB_SCORES[name] for name in CLASSES)
#: segments of a full short-axis stack (AHA 16-segment model, apex excluded)
AHA_SEGMENTS = 16
#: (R, A): radial x angular samples of one segment's polar resampling (R: half the 160 x 160
#: crop)
INPUT_SIZE = (80, 60)
#: the fewest frames of a beat the network accepts
MIN_FRAMES = 2
#: the segment-level non-local blocks sit after this convolution block (1-based)
SEGMENT_NL_AFTER = 3

#: default sizes of :func:`build`: channel widths of the four blocks, conv-KI's base kernel
#: length K0 (taps) at the reference frame count T0, non-local inner width = channels //
#: ``nl_reduction``
DEFAULTS = dict(widths=(16, 32, 64, 64), kernel_frames=5, reference_frames=25, nl_reduction=2)

#: named variants of :func:`build`: numbers of segment- and subject-level non-local blocks
VARIANTS = {
    "cnn": dict(segment_nl=0, subject_nl=0),          # the baseline CNN
    "seg_nl": dict(segment_nl=1, subject_nl=0),       # seg-NL-1
    "sub_nl": dict(segment_nl=0, subject_nl=1),       # sub-NL-1
    "seg_sub_nl": dict(segment_nl=1, subject_nl=1),   # both
}
#: the variant :func:`build` returns without one: the subject-level block is what lets a
#: segment's score depend on the rest of the heart
DEFAULT_VARIANT = "sub_nl"


def temporal_kernel_length(frames: int, kernel_frames: int = DEFAULTS["kernel_frames"],
                           reference_frames: int = DEFAULTS["reference_frames"]) -> int:
    """conv-KI's temporal taps for a beat of ``frames`` frames: the smallest odd integer
    >= ``kernel_frames * frames / reference_frames`` (exactly ``kernel_frames`` at the
    reference, when that is odd; less than 2 taps over the proportional length otherwise)."""
    excess = kernel_frames * frames - reference_frames              # (k - 1) * T0 >= this
    return 2 * max(0, -(-excess // (2 * reference_frames))) + 1


def kernel_interpolation(frames: int, kernel_frames: int = DEFAULTS["kernel_frames"],
                         reference_frames: int = DEFAULTS["reference_frames"]) -> list[list[float]]:
    """The (k_t, K0) matrix that takes conv-KI's stored K0 taps to the k_t taps of a beat of
    ``frames`` frames (module docstring: linear interpolation of the taps in beat time, each
    new tap weighted by T0 x its cell's length inside the kernel's support).  Exact rational
    arithmetic: at ``frames == reference_frames`` it is the identity."""
    k0, t0, t = kernel_frames, reference_frames, frames
    k = temporal_kernel_length(t, k0, t0)
    half = Fraction(k0, 2 * t0)                                     # support: |tau| <= half
    rows = []
    for i in range(k):
        tau = Fraction(2 * i - (k - 1), 2 * t)                      # tap time, beats
        inside = min(tau + Fraction(1, 2 * t), half) - max(tau - Fraction(1, 2 * t), -half)
        scale = t0 * max(inside, Fraction(0))
        u = min(max(tau * t0 + Fraction(k0 - 1, 2), Fraction(0)), Fraction(k0 - 1))  # in taps
        row = [Fraction(0)] * k0
        lo = min(int(u), max(k0 - 2, 0))
        frac = u - lo
        row[lo] += (1 - frac) * scale
        if frac:
            row[lo + 1] += frac * scale
        rows.append([float(v) for v in row])
    return rows


def circular_time_pad(x: torch.Tensor, pad: int) -> torch.Tensor:
    """(B, C, T, H, W) with ``pad`` frames wrapped around at each end of the time axis (one
    beat is a cycle: the frame after the last is the first)."""
    if pad == 0:
        return x
    t = x.shape[2]
    if pad > t:                                                     # kernel longer than the beat
        reps = -(-pad // t)
        ring = torch.cat([x] * (2 * reps + 1), 2)
        return ring[:, :, reps * t - pad:reps * t + t + pad]
    return torch.cat([x[:, :, t - pad:], x, x[:, :, :pad]], 2)


def resample_beat(x: torch.Tensor, frames: int) -> torch.Tensor:
    """(B, C, T, H, W) one beat at T frames -> the same beat at ``frames`` frames: linear
    interpolation in beat time, circular (frame j of the result lies at beat time j /
    ``frames``, between input frames floor(j T / frames) and the next, the last's next being
    the first). The identity when T == ``frames``."""
    t = int(x.shape[2])
    if t == frames:
        return x
    position = [Fraction(j * t, frames) for j in range(frames)]
    lo = [int(p) for p in position]
    hi = torch.tensor([(k + 1) % t for k in lo])
    frac = torch.tensor([float(p - k) for p, k in zip(position, lo)], dtype=x.dtype,
                        device=x.device).reshape(1, 1, frames, 1, 1)
    return x[:, :, torch.tensor(lo)] * (1 - frac) + x[:, :, hi] * frac


class ConvKI(nn.Module):
    """conv-KI, the first layer: a (k_t, 3, 3) convolution over (T, R, A) whose temporal
    kernel is stored at ``reference_frames`` with ``kernel_frames`` taps and re-sampled to
    the input's frame count in every forward (:meth:`kernel`); circular in time, zero-padded
    in space, no bias. Its response is re-sampled to ``reference_frames`` frames of beat
    time (:func:`resample_beat`), whatever the input's count."""

    def __init__(self, cin: int, cout: int, kernel_frames: int = DEFAULTS["kernel_frames"],
                 reference_frames: int = DEFAULTS["reference_frames"]):
        super().__init__()
        if kernel_frames < 1 or reference_frames < 1:
            raise ValueError(f"conv-KI needs kernel_frames and reference_frames >= 1, got "
                             f"{kernel_frames} and {reference_frames}")
        self.kernel_frames, self.reference_frames = kernel_frames, reference_frames
        conv = nn.Conv3d(cin, cout, (kernel_frames, 3, 3), bias=False)   # for its initialisation
        self.weight = nn.Parameter(conv.weight.detach().clone())         # (cout, cin, K0, 3, 3)

    def kernel_length(self, frames: int) -> int:
        """Temporal taps used for a beat of ``frames`` frames (:func:`temporal_kernel_length`)."""
        return temporal_kernel_length(frames, self.kernel_frames, self.reference_frames)

    def kernel(self, frames: int) -> torch.Tensor:
        """The weight (cout, cin, k_t, 3, 3) used for a beat of ``frames`` frames."""
        if frames == self.reference_frames:
            return self.weight
        m = torch.tensor(kernel_interpolation(frames, self.kernel_frames, self.reference_frames),
                         dtype=self.weight.dtype, device=self.weight.device)
        return torch.einsum("ij,ocjhw->ocihw", m, self.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.kernel(int(x.shape[2]))
        y = F.conv3d(circular_time_pad(x, (w.shape[2] - 1) // 2), w, padding=(0, 1, 1))
        return resample_beat(y, self.reference_frames)


class CyclicConv3d(nn.Conv3d):
    """3x3x3 convolution, circular in time, zero-padded in radius and angle, no bias."""

    def __init__(self, cin: int, cout: int):
        super().__init__(cin, cout, 3, padding=(0, 1, 1), bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(circular_time_pad(x, 1))


class ConvBlock(nn.Module):
    """``conv`` (conv-KI in the first block), BatchNorm3d, ReLU, 2x2x2 max pooling of
    (T, R, A); an axis already down to one sample is not pooled."""

    def __init__(self, conv: nn.Module, width: int):
        super().__init__()
        self.conv = conv
        self.bn = nn.BatchNorm3d(width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn(self.conv(x)))
        kernel = tuple(2 if int(n) >= 2 else 1 for n in x.shape[2:])
        return F.max_pool3d(x, kernel) if kernel != (1, 1, 1) else x


class NonLocalBlock(nn.Module):
    """Embedded-Gaussian non-local block (Wang et al. 2018) over the positions of a
    (B, C, *positions) tensor: ``z_i = x_i + W(sum_j softmax_j(theta_i . phi_j) g_j)``.

    ``W`` is a 1x1 projection back to C channels followed by a BatchNorm whose weight and bias
    start at zero, so a new block is the identity (exactly, in eval mode)."""

    def __init__(self, channels: int, inner: int | None = None):
        super().__init__()
        inner = inner or max(1, channels // 2)
        self.theta = nn.Conv1d(channels, inner, 1)
        self.phi = nn.Conv1d(channels, inner, 1)
        self.g = nn.Conv1d(channels, inner, 1)
        self.W = nn.Sequential(nn.Conv1d(inner, channels, 1), nn.BatchNorm1d(channels))
        nn.init.zeros_(self.W[1].weight)
        nn.init.zeros_(self.W[1].bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(x.shape[0], x.shape[1], -1)                # (B, C, P)
        theta, phi, g = self.theta(flat), self.phi(flat), self.g(flat)
        attention = torch.softmax(theta.transpose(1, 2) @ phi, dim=-1)   # (B, P_i, P_j)
        y = g @ attention.transpose(1, 2)                           # (B, inner, P_i)
        return x + self.W(y).reshape(x.shape)


class CardiacMOS(nn.Module):
    """The scoring network: ``(N, S, 1, T, R, A)`` segments -> ``(N, S, 4)`` logits (module
    docstring).  ``segment_nl`` / ``subject_nl``: numbers of segment- and subject-level
    non-local blocks (0 and 0: the baseline CNN)."""

    def __init__(self, widths=DEFAULTS["widths"], kernel_frames: int = DEFAULTS["kernel_frames"],
                 reference_frames: int = DEFAULTS["reference_frames"], segment_nl: int = 0,
                 subject_nl: int = 0, nl_reduction: int = DEFAULTS["nl_reduction"]):
        super().__init__()
        widths = tuple(int(w) for w in widths)
        if len(widths) != 4 or min(widths) < 1:
            raise ValueError(f"widths {widths}: four positive channel widths, one per block")
        if segment_nl < 0 or subject_nl < 0 or nl_reduction < 1:
            raise ValueError(f"segment_nl {segment_nl} and subject_nl {subject_nl} must be >= 0 "
                             f"and nl_reduction {nl_reduction} >= 1")
        self.hparams = dict(widths=widths, kernel_frames=kernel_frames,
                            reference_frames=reference_frames, segment_nl=segment_nl,
                            subject_nl=subject_nl, nl_reduction=nl_reduction)
        self.conv_ki = ConvKI(1, widths[0], kernel_frames, reference_frames)
        convs = [self.conv_ki] + [CyclicConv3d(a, b) for a, b in zip(widths[:-1], widths[1:])]
        self.blocks = nn.ModuleList(ConvBlock(c, w) for c, w in zip(convs, widths))
        seg_width, sub_width = widths[SEGMENT_NL_AFTER - 1], widths[-1]
        self.seg_nl = nn.ModuleList(NonLocalBlock(seg_width, max(1, seg_width // nl_reduction))
                                    for _ in range(segment_nl))
        self.sub_nl = nn.ModuleList(NonLocalBlock(sub_width, max(1, sub_width // nl_reduction))
                                    for _ in range(subject_nl))
        self.classifier = nn.Linear(sub_width, len(CLASSES))

    def segment_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1, T, R, A) segments -> (B, C) feature vectors, each from its own segment only."""
        for k, block in enumerate(self.blocks, 1):
            x = block(x)
            if k == SEGMENT_NL_AFTER:
                for nl in self.seg_nl:
                    x = nl(x)
        return x.mean(dim=(2, 3, 4))

    def score(self, features: torch.Tensor) -> torch.Tensor:
        """(N, S, C) segment feature vectors -> (N, S, 4) logits (through the sub-NL blocks)."""
        h = features.transpose(1, 2)                                # (N, C, S): S positions
        for nl in self.sub_nl:
            h = nl(h)
        return self.classifier(h.transpose(1, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 6 or int(x.shape[2]) != 1 or int(x.shape[3]) < MIN_FRAMES:
            raise ValueError(f"input {tuple(x.shape)}: expected (N, S, 1, T, R, A) with "
                             f"T >= {MIN_FRAMES}")
        n, s = int(x.shape[0]), int(x.shape[1])
        features = self.segment_features(x.reshape(n * s, *x.shape[2:]))
        return self.score(features.reshape(n, s, -1))


def probabilities(logits: torch.Tensor) -> torch.Tensor:
    """Class probabilities (softmax over the last axis) of (..., 4) logits."""
    return torch.softmax(logits, dim=-1)


def wall_motion_scores(logits: torch.Tensor) -> torch.Tensor:
    """The wall-motion score (1-4, int64) of the most probable class of each segment."""
    scores = torch.tensor(WALL_MOTION_SCORES, dtype=torch.int64, device=logits.device)
    return scores[logits.argmax(dim=-1)]


def build(variant: str = DEFAULT_VARIANT, **overrides) -> CardiacMOS:
    """The network of ``variant`` (a key of :data:`VARIANTS`) with the default sizes (or
    ``overrides``, block counts included) and random weights."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; one of {', '.join(VARIANTS)}")
    return CardiacMOS(**{**DEFAULTS, **VARIANTS[variant], **overrides})
