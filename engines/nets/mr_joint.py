"""Joint segmentation and unsupervised motion for short-axis cine MR (Qin et al. 2018).

"Joint learning of motion estimation and segmentation for cardiac MR image sequences",
C. Qin et al., MICCAI 2018.  One encoder is shared by two branches, so that what the
motion task learns from every (unlabelled) frame helps the segmentation of the few
labelled ones.  The parts, in the order a frame meets them:

* :class:`FeatureEncoder` -- the shared feature encoder, used as a Siamese pair (the same
  weights on the reference and the current frame): strided 3x3 convolutions, features at
  1/2, 1/4, 1/8 and 1/16 of the input grid;
* :class:`MotionBranch` -- the multi-scale features of both frames brought to 1/8 and
  concatenated (with their difference), a :class:`ConvGRU` whose hidden state is carried
  from frame to frame over the sequence (the paper's recurrent unit), a flow head at 1/8,
  a refinement at 1/4 with the 1/4 features, and the flow bilinearly upsampled to the
  input grid;
* :func:`bilinear_sampler` -- the paper's bilinear sampler: warps an image (or a label
  map, or features) by a flow;
* :class:`SegmentationBranch` -- a small decoder over the current frame's encoder
  features (1/16 -> 1/2 with skip connections), logits of the four MR labels at 1/2,
  bilinearly upsampled to the input grid.

Labels (:class:`streamer.vocab.MRLabel`): 0 background, 1 LV cavity, 2 LV myocardium,
3 RV cavity.  Flow: channels (dx = d_col, dy = d_row) in pixels of the input grid, from
the **reference** frame to the current one, on the reference's grid, so
``bilinear_sampler(current, flow)`` brings the current frame onto the reference grid.

Motion against a reference, as Qin et al. estimate it: every frame of a cycle is paired
with the cycle's first (end-diastole in a gated cine), the recurrent state carried along
the cycle, so the motion from end-diastole to any phase is one estimate, not a sum of
frame-to-frame ones whose errors add up. Trained so (:mod:`engines.train.mr`), the
leave-one-patient-out end-systole -> end-diastole contour distance went from 1.75 to
1.68 mm on average, and segmentation gained a little with it (docs/benchmarks.md,
issue 13).

The engine contract (role ``mr`` in :mod:`engines.spec`) keeps one input and one output
tensor, so every existing backend runs it unchanged; the recurrent state rides as one
extra channel of each:

* input ``frames`` (1, 3, H, W): reference image, current image, state plane;
* output ``joint`` (1, 7, H, W): 4 label logits of the current frame, flow (dx, dy)
  reference -> current, the next state plane.

The state plane holds the ConvGRU's hidden state ((1, ``hidden``, H/8, W/8), pixel-shuffled
by 4 into the top-left (H/2, W/2) block of an (H, W) plane, zeros elsewhere:
:func:`pack_state` / :func:`unpack_state`).  A cycle starts with a zero plane and its
first image as the reference (the first call pairs it with itself), and feeds each
output's channel 6 back as the next input's channel 2.

Images go in normalised per image by :func:`normalise` (percentile scaling), the same
function in training and at run time.

Size (:data:`DEFAULTS`): 256 x 256 input, encoder widths 16/24/32/48, hidden state 16
channels at 1/8; 137 k parameters (a 0.56 MB state dict). :func:`build` also takes
``enc_extra`` (more 3x3 convolutions per encoder level), ``up1_kernel`` (3: a 3x3 decoder
step at 1/2) and ``full_res`` (a decoder step on the input grid); a wider variant (widths
24/32/64/96, one extra convolution per level, decoder 64/32/16, ``up1_kernel`` 3: 397 k
parameters) gained ~0.03 Dice on one segmentation-only ablation, not enough to pay for twice
the training time, so the defaults stay (docs/benchmarks.md, issue 13). One frame (segmentation + motion,
the engine call) took a median 7.5-9.4 ms in OpenVINO fp32 and 13.8 ms in eager torch on one
thread of this project's 2-core CPU while another training shared it (2026-12-06).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from engines.nets import flownet
from engines.spec import MR_PERCENTILES, NetSpec, get_role, percentile_normalise, role_contract
from streamer.vocab import MRLabel

#: input H x W the weights are trained for (Sunnybrook: 256 x 256 at 1.367 mm)
INPUT_SIZE = (256, 256)
#: label classes of the segmentation logits, in channel order
CLASSES = tuple(label.name.lower() for label in MRLabel)
#: output channels of the joint engine
SEG_CHANNELS = slice(0, 4)
FLOW_CHANNELS = slice(4, 6)
STATE_CHANNEL = 6
#: per-image intensity scaling: these percentiles go to 0 and 1 (then clipped to [0, 1])
NORMALISE_PERCENTILES = MR_PERCENTILES
#: the grid of the recurrent state and of the motion fusion, relative to the input
STATE_STRIDE = 8
#: channels of the motion branch's own view of the image pair ([reference, current,
#: difference] at 1/4): the brightness-constancy cue of sub-pixel motion
PAIR_WIDTH = 8

SPEC = NetSpec(
    role="mr",
    arch="qin2018-joint-lite",
    input=role_contract("mr", INPUT_SIZE)[0],
    output=role_contract("mr", INPUT_SIZE)[1],
    weights_file="mr.pt",
    normalisation=get_role("mr").normalisation,   # normalise(): NORMALISE_PERCENTILES -> [0, 1]
)

#: default hyperparameters of :func:`build`
DEFAULTS = dict(widths=(16, 24, 32, 48), fusion=32, hidden=16, refine=12, decoder=(32, 16, 12),
                enc_extra=(0, 1, 1, 1), up1_kernel=1, full_res=0)


#: the one intensity normalisation of this network (training and run time)
normalise = percentile_normalise


def _conv(cin: int, cout: int, stride: int = 1, k: int = 3, act: bool = True) -> nn.Module:
    conv = nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2)
    return nn.Sequential(conv, nn.LeakyReLU(0.1, inplace=True)) if act else conv


def bilinear_sampler(x: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """The bilinear sampler: ``x`` (N, C, H, W) sampled at (col + dx, row + dy) for the flow
    (N, 2, H, W) in pixels, border values repeated outside.  With the reference -> current
    flow, ``bilinear_sampler(current, flow)`` is the current frame on the reference grid.
    A whole-pixel flow reproduces the shifted pixels exactly.  The same warp as the echo
    flow network's (:func:`engines.nets.flownet.warp`, one implementation)."""
    return flownet.warp(x, flow)


def upsample(x: torch.Tensor, size, scale: float = 1.0) -> torch.Tensor:
    """Bilinear resize to ``size`` (H, W), values times ``scale`` (flows: the grid ratio)."""
    y = F.interpolate(x, size=tuple(int(s) for s in size), mode="bilinear", align_corners=False)
    return y * scale if scale != 1.0 else y


class FeatureEncoder(nn.Module):
    """The shared encoder (one set of weights for every frame: the Siamese pair).

    Level k (1-based) has ``widths[k-1]`` channels at 1/2**k of the input: a strided 3x3
    convolution, then ``enc_extra[k-1]`` more 3x3 convolutions."""

    def __init__(self, widths=DEFAULTS["widths"], enc_extra=DEFAULTS["enc_extra"]):
        super().__init__()
        layers, cin = [], 1
        for k, w in enumerate(widths):
            parts = [_conv(cin, w, stride=2)] + [_conv(w, w) for _ in range(enc_extra[k])]
            layers.append(nn.Sequential(*parts))
            cin = w
        self.levels = nn.ModuleList(layers)
        self.widths = tuple(widths)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = x * 2.0 - 1.0
        out = []
        for level in self.levels:
            x = level(x)
            out.append(x)
        return out


class ConvGRU(nn.Module):
    """Convolutional GRU cell (3x3 gates): ``h' = (1 - z) h + z tanh(W [x, r h])``."""

    def __init__(self, cin: int, hidden: int):
        super().__init__()
        self.hidden = hidden
        self.gates = nn.Conv2d(cin + hidden, 2 * hidden, 3, padding=1)
        self.candidate = nn.Conv2d(cin + hidden, hidden, 3, padding=1)

    def forward(self, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        zr = torch.sigmoid(self.gates(torch.cat([x, h], 1)))
        z, r = zr[:, :self.hidden], zr[:, self.hidden:]
        c = torch.tanh(self.candidate(torch.cat([x, r * h], 1)))
        return (1.0 - z) * h + z * c


class MotionBranch(nn.Module):
    """Features of the reference and current frame at every scale -> flow (reference ->
    current, input pixels) and the next hidden state.

    Fusion at 1/8: the 1/4 features average-pooled, the 1/8 ones as they are, the 1/16
    ones upsampled, of both frames, plus the 1/8 difference; a 1x1 and a 3x3 convolution;
    the :class:`ConvGRU` over the sequence; a flow head at 1/8; a refinement at 1/4 from
    the upsampled hidden state and the 1/4 features of both frames; upsampled x4."""

    def __init__(self, widths=DEFAULTS["widths"], fusion: int = DEFAULTS["fusion"],
                 hidden: int = DEFAULTS["hidden"], refine: int = DEFAULTS["refine"]):
        super().__init__()
        w2, w3, w4 = widths[1], widths[2], widths[3]
        self.pair = nn.Sequential(_conv(3, PAIR_WIDTH, stride=2), _conv(PAIR_WIDTH, PAIR_WIDTH, stride=2))
        self.fuse = nn.Sequential(_conv(2 * (w2 + w3 + w4) + w3 + PAIR_WIDTH, fusion, k=1), _conv(fusion, fusion))
        self.gru = ConvGRU(fusion, hidden)
        self.coarse = _conv(hidden, 2, act=False)
        self.reduce = _conv(2 * w2, refine, k=1)
        self.refine = nn.Sequential(_conv(refine + hidden + PAIR_WIDTH + 2, refine), _conv(refine, 2, act=False))
        self.hidden = hidden

    def zero_state(self, n: int, size, like: torch.Tensor) -> torch.Tensor:
        h, w = size
        return like.new_zeros(n, self.hidden, h // STATE_STRIDE, w // STATE_STRIDE)

    def forward(self, ref: list[torch.Tensor], cur: list[torch.Tensor], state: torch.Tensor,
                size, images: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """``ref`` / ``cur``: encoder features; ``state`` (N, hidden, H/8, W/8); ``size``
        the input (H, W); ``images`` the (reference, current) frames (N, 1, H, W). Returns
        (flow (N, 2, H, W) in input pixels, next state)."""
        g = ref[2].shape[-2:]
        a, b = images
        pair = self.pair(torch.cat([a, b, (b - a) * 4.0], 1))        # 1/4: the intensity change
        parts = [F.avg_pool2d(pair, 2)]
        for f in (ref, cur):
            parts += [F.avg_pool2d(f[1], 2), f[2], upsample(f[3], g)]
        parts.append(cur[2] - ref[2])
        h = self.gru(self.fuse(torch.cat(parts, 1)), state)
        coarse = self.coarse(h)                                  # 1/8 pixels
        q = ref[1].shape[-2:]
        up = upsample(coarse, q, 2.0)                            # 1/4 pixels
        x = torch.cat([self.reduce(torch.cat([ref[1], cur[1]], 1)), pair, upsample(h, q), up], 1)
        flow = up + self.refine(x)
        return upsample(flow, size, float(size[0]) / float(q[0])), h


class SegmentationBranch(nn.Module):
    """Decoder over one frame's encoder features: 1/16 -> 1/8 -> 1/4 -> 1/2 by bilinear
    upsampling, skip concatenation and a 3x3 convolution per step (``up1_kernel`` at 1/2),
    then a 3x3 convolution; with ``full_res`` = 0 the 4 label logits come at 1/2 (a 1x1
    convolution) and are bilinearly upsampled to the input grid; with ``full_res`` > 0 the
    features go up to the input grid, meet ``full_res`` // 2 channels of a 3x3 convolution of
    the image itself, and a 3x3 convolution of ``full_res`` channels and a 1x1 convolution
    give the logits there (thin myocardium needs the full grid)."""

    def __init__(self, widths=DEFAULTS["widths"], decoder=DEFAULTS["decoder"], classes: int = len(CLASSES),
                 up1_kernel: int = DEFAULTS["up1_kernel"], full_res: int = DEFAULTS["full_res"]):
        super().__init__()
        d3, d2, d1 = decoder
        self.up3 = _conv(widths[3] + widths[2], d3)
        self.up2 = _conv(d3 + widths[1], d2)
        self.up1 = _conv(d2 + widths[0], d1, k=up1_kernel)
        self.full_res = full_res
        if full_res:
            self.head = _conv(d1, d1)
            self.image = _conv(1, full_res // 2)
            self.full = nn.Sequential(_conv(d1 + full_res // 2, full_res), _conv(full_res, classes, k=1, act=False))
        else:
            self.head = nn.Sequential(_conv(d1, d1), _conv(d1, classes, k=1, act=False))

    def forward(self, f: list[torch.Tensor], size, image: torch.Tensor | None = None) -> torch.Tensor:
        x = f[3]
        for skip, conv in ((f[2], self.up3), (f[1], self.up2), (f[0], self.up1)):
            x = conv(torch.cat([upsample(x, skip.shape[-2:]), skip], 1))
        if not self.full_res:
            return upsample(self.head(x), size)
        if image is None:
            raise ValueError("the full-resolution decoder needs the image")
        x = upsample(self.head(x), size)
        return self.full(torch.cat([x, self.image(image * 2.0 - 1.0)], 1))


def pack_state(h: torch.Tensor, size) -> torch.Tensor:
    """Hidden state (N, C, H/8, W/8) -> state plane (N, 1, H, W): pixel-shuffled by 4 into
    the top-left (H/2, W/2) block (C must be 16), zeros elsewhere."""
    n, c, gh, gw = h.shape
    if c != 16:
        raise ValueError(f"pack_state: the state plane holds 16 hidden channels, got {c}")
    block = F.pixel_shuffle(h, 4)                                 # (N, 1, H/2, W/2)
    H, W = size
    return F.pad(block, (0, W - block.shape[-1], 0, H - block.shape[-2]))


def unpack_state(plane: torch.Tensor, hidden: int = 16) -> torch.Tensor:
    """State plane (N, 1, H, W) -> hidden state (N, ``hidden``, H/8, W/8)."""
    H, W = plane.shape[-2:]
    if hidden != 16:
        raise ValueError(f"unpack_state: the state plane holds 16 hidden channels, got {hidden}")
    return F.pixel_unshuffle(plane[:, :, :H // 2, :W // 2], 4)


class MRJointNet(nn.Module):
    """The joint network. ``forward(frames)`` is the engine contract (see the module
    docstring); training uses :meth:`encode`, :meth:`motion`, :meth:`segment` and
    :meth:`sequence` directly."""

    def __init__(self, widths=DEFAULTS["widths"], fusion=DEFAULTS["fusion"], hidden=DEFAULTS["hidden"],
                 refine=DEFAULTS["refine"], decoder=DEFAULTS["decoder"], enc_extra=DEFAULTS["enc_extra"],
                 up1_kernel=DEFAULTS["up1_kernel"], full_res=DEFAULTS["full_res"]):
        super().__init__()
        widths, decoder, enc_extra = tuple(widths), tuple(decoder), tuple(enc_extra)
        if len(widths) != 4 or len(decoder) != 3 or len(enc_extra) != 4:
            raise ValueError(f"widths {widths} and enc_extra {enc_extra} must have 4 levels and decoder {decoder} 3")
        self.hparams = dict(widths=widths, fusion=fusion, hidden=hidden, refine=refine, decoder=decoder,
                            enc_extra=enc_extra, up1_kernel=up1_kernel, full_res=full_res)
        self.encoder = FeatureEncoder(widths, enc_extra)
        self.motion_branch = MotionBranch(widths, fusion, hidden, refine)
        self.segmentation_branch = SegmentationBranch(widths, decoder, up1_kernel=up1_kernel, full_res=full_res)

    def encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        """(N, 1, H, W) normalised images -> features at 1/2 .. 1/16 (H, W multiples of 16)."""
        h, w = x.shape[-2:]
        if h % 16 or w % 16:
            raise ValueError(f"input {h} x {w}: rows and columns must be multiples of 16")
        return self.encoder(x)

    def segment(self, feats: list[torch.Tensor], size, image: torch.Tensor | None = None) -> torch.Tensor:
        """Label logits (N, 4, H, W) from one frame's features (and the (N, 1, H, W) image
        itself, which the full-resolution decoder uses)."""
        return self.segmentation_branch(feats, size, image)

    def motion(self, ref, cur, state, size, images):
        return self.motion_branch(ref, cur, state, size, images)

    def sequence(self, frames: torch.Tensor, segment: bool = True):
        """A batch of sequences (N, T, H, W) -> (logits (N, T, 4, H, W) or None,
        flows (N, T-1, 2, H, W): frame 0 -> frame k+1 on frame 0's grid), the hidden
        state starting at zero. Every frame is paired with the sequence's first (the
        reference); the encoder runs once per frame."""
        n, t, h, w = frames.shape
        feats = self.encode(frames.reshape(n * t, 1, h, w))
        per = [[f.reshape(n, t, *f.shape[1:])[:, k] for f in feats] for k in range(t)]
        state = self.motion_branch.zero_state(n, (h, w), frames)
        flows = []
        for k in range(t - 1):
            flow, state = self.motion(per[0], per[k + 1], state, (h, w),
                                      (frames[:, 0:1], frames[:, k + 1:k + 2]))
            flows.append(flow)
        logits = None
        if segment:
            logits = self.segment(feats, (h, w), frames.reshape(n * t, 1, h, w)).reshape(n, t, len(CLASSES), h, w)
        return logits, torch.stack(flows, 1)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        """Engine contract: (N, 3, H, W) [reference, current, state plane] -> (N, 7, H, W)
        [4 label logits of the current frame, flow (dx, dy), next state plane]."""
        n, _, h, w = frames.shape
        feats = self.encode(torch.cat([frames[:, 0:1], frames[:, 1:2]], 0))
        ref = [f[:n] for f in feats]
        cur = [f[n:] for f in feats]
        state = unpack_state(frames[:, 2:3], self.motion_branch.hidden)
        flow, state = self.motion(ref, cur, state, (h, w), (frames[:, 0:1], frames[:, 1:2]))
        logits = self.segment(cur, (h, w), frames[:, 1:2])
        return torch.cat([logits, flow, pack_state(state, (h, w))], 1)


def build(**overrides) -> MRJointNet:
    """The joint network with default hyperparameters (or ``overrides``) and random weights."""
    return MRJointNet(**{**DEFAULTS, **overrides})
