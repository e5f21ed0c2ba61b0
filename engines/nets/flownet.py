"""Dense motion between consecutive frames: a small PWC-Net (Sun et al. 2018).

The paper (Østvik et al. 2018) used FlowNet-style stacked U-Nets with warping; a
coarse-to-fine PWC-Net reaches the same kind of accuracy on echo speckle at a fraction
of the cost, because the search happens in a cost volume over a few pixels per
pyramid level instead of in ever larger convolutions. The parts, in the order a frame
pair meets them:

* :class:`FeaturePyramid` -- the same small CNN on both frames, features at 1/2, 1/4
  and 1/8 of the input grid;
* :class:`MotionEncoder` -- early fusion of the pair ([previous, current, difference]),
  features at the same levels: the brightness-constancy cue for the sub-pixel motion of
  speckle (myocardial motion between echo frames is mostly well under a pixel, which a
  cost volume over integer shifts at 1/4 resolution alone resolves poorly);
* :func:`warp` -- the current frame's features pulled back onto the previous frame's
  grid by the flow estimated one level coarser (bilinear ``grid_sample``);
* :class:`CostVolume` -- correlation of previous-frame features with the warped
  current-frame features over a (2r + 1)^2 window of integer shifts;
* :class:`FlowEstimator` -- a few convolutions from [cost volume, features, motion
  features, flow] to a flow update at one level;
* :class:`ContextNetwork` -- dilated convolutions that refine the finest flow with
  image context;
* :func:`upsample` -- the finest flow (1/4 of the input grid by default) brought
  bilinearly to the input grid.

Default size (:data:`DEFAULTS`): 256 x 256 input, flow estimated at 1/8 (cost-volume
radius 2 = +-16 input px) and refined at 1/4 (radius 1 after warping: what is left there
is under a pixel of that level), context network at 1/4; about 40 k parameters (0.16 MB
of weights). Against the first shipped recipe (radius 2 at 1/4, 24 feature and 16 motion
channels at 1/4 and 1/2) it is 1.3x faster in OpenVINO at the same held-out EPE (0.223
against 0.220 px). The budget is a few milliseconds
on two CPU cores (OpenVINO / onnxruntime), which is why the finest flow stays at 1/4:
echo motion is smooth over the wall, and the upsampling costs next to nothing.

Everything is plain convolutions, pads, slices, sums and ``grid_sample`` with static
shapes, so the network exports to ONNX (opset >= 16) and OpenVINO unchanged.

Flow convention (:mod:`engines.spec`): output channels (dx = d_col, dy = d_row) in
pixels of the input grid, previous -> current, on the previous frame's grid -- the
convention of OpenCV's ``calcOpticalFlow*(prev, next)`` and of the phantoms'
``truth.displacement``. Internally the flow at pyramid level ``l`` is kept in pixels
of that level's grid (input pixels / 2**l).
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn

from engines.spec import NetSpec, role_contract

#: input H x W the shipped weights were trained for
INPUT_SIZE = (256, 256)

SPEC = NetSpec(
    role="flow",
    arch="pwc-lite",
    input=role_contract("flow", INPUT_SIZE)[0],
    output=role_contract("flow", INPUT_SIZE)[1],
    weights_file="flow.pt",
)

#: default hyperparameters of :func:`build` (the shipped weights were trained with these);
#: ``radii[0]`` is unused while ``finest`` = 2 (no estimation at 1/2)
DEFAULTS = dict(widths=(12, 16, 32), convs=(1, 1, 1), radii=(1, 1, 2), motion=(8, 12, 16),
                estimator_width=16, context_width=16, finest=2)


def _conv(cin: int, cout: int, stride: int = 1, dilation: int = 1, act: bool = True) -> nn.Sequential | nn.Conv2d:
    conv = nn.Conv2d(cin, cout, 3, stride=stride, padding=dilation, dilation=dilation)
    return nn.Sequential(conv, nn.LeakyReLU(0.1)) if act else conv


class FeaturePyramid(nn.Module):
    """Shared-weight CNN; level k (1-based) has ``widths[k-1]`` channels at 1/2**k of the input."""

    def __init__(self, widths=(16, 32, 48), convs=(2, 2, 2)):
        super().__init__()
        layers, cin = [], 1
        for w, k in zip(widths, convs):
            layers.append(nn.Sequential(_conv(cin, w, stride=2), *[_conv(w, w) for _ in range(k - 1)]))
            cin = w
        self.levels = nn.ModuleList(layers)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        out = []
        for level in self.levels:
            x = level(x)
            out.append(x)
        return out


def warp(feat: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """Sample ``feat`` (N, C, H, W) at (x + dx, y + dy) for the flow (N, 2, H, W) in pixels.

    ``warp(current, flow)`` brings the current frame onto the previous frame's grid when
    ``flow`` is the previous -> current motion. Outside the image the border is repeated.
    """
    n, _, h, w = flow.shape
    xs = torch.arange(w, dtype=flow.dtype, device=flow.device).view(1, 1, w).expand(1, h, w)
    ys = torch.arange(h, dtype=flow.dtype, device=flow.device).view(1, h, 1).expand(1, h, w)
    # normalised coordinates with align_corners=True: -1 at pixel 0, +1 at pixel w - 1
    gx = (xs + flow[:, 0]) * (2.0 / max(w - 1, 1)) - 1.0
    gy = (ys + flow[:, 1]) * (2.0 / max(h - 1, 1)) - 1.0
    grid = torch.stack([gx, gy], dim=-1)
    return F.grid_sample(feat, grid, mode="bilinear", padding_mode="border", align_corners=True)


class CostVolume(nn.Module):
    """Correlation over integer shifts: channel ``(dy + r) * (2r + 1) + (dx + r)`` holds
    ``mean_c f1[c, y, x] * f2[c, y + dy, x + dx]`` (zero outside ``f2``)."""

    def __init__(self, radius: int):
        super().__init__()
        self.radius = radius

    @property
    def channels(self) -> int:
        return (2 * self.radius + 1) ** 2

    def forward(self, f1: torch.Tensor, f2: torch.Tensor) -> torch.Tensor:
        r = self.radius
        h, w = f1.shape[-2:]
        p = F.pad(f2, (r, r, r, r))
        out = [(f1 * p[:, :, dy:dy + h, dx:dx + w]).mean(dim=1, keepdim=True)
               for dy in range(2 * r + 1) for dx in range(2 * r + 1)]
        return F.leaky_relu(torch.cat(out, dim=1), 0.1)


class MotionEncoder(nn.Module):
    """Early fusion of the pair: [previous, current, current - previous] at full resolution
    through strided convolutions, features at 1/2 .. 1/2**L. It hands the estimators the
    brightness-constancy cue (spatial and temporal derivatives) that sub-pixel motion of
    speckle needs and that a stride-4 cost volume alone cannot resolve."""

    def __init__(self, widths=(8, 16, 16)):
        super().__init__()
        layers, cin = [], 3
        for w in widths:
            layers.append(_conv(cin, w, stride=2))
            cin = w
        self.levels = nn.ModuleList(layers)

    def forward(self, prev: torch.Tensor, cur: torch.Tensor) -> list[torch.Tensor]:
        x = torch.cat([prev, cur, (cur - prev) * 4.0], dim=1)
        out = []
        for level in self.levels:
            x = level(x)
            out.append(x)
        return out


class FlowEstimator(nn.Module):
    """[cost volume, previous-frame features, flow] -> (flow update, features for context)."""

    def __init__(self, cin: int, width: int):
        super().__init__()
        self.body = nn.Sequential(_conv(cin, width), _conv(width, width), _conv(width, width // 2))
        self.head = _conv(width // 2, 2, act=False)
        self.out_channels = width // 2

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feat = self.body(x)
        return self.head(feat), feat


class ContextNetwork(nn.Module):
    """Dilated convolutions over [estimator features, flow] -> flow refinement."""

    def __init__(self, cin: int, width: int):
        super().__init__()
        self.body = nn.Sequential(_conv(cin, width, dilation=1), _conv(width, width, dilation=2),
                                  _conv(width, width, dilation=4), _conv(width, width // 2, dilation=1),
                                  _conv(width // 2, 2, act=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class FlowNet(nn.Module):
    """PWC-style flow: ``frames`` (N, 2, H, W) in [0, 1] -> ``flow`` (N, 2, H, W) in pixels.

    H and W must be multiples of 2**len(widths). ``radii[k]`` is the cost-volume radius
    at level k + 1; flow is estimated from the coarsest level down to level ``finest``
    (1 = half resolution), refined there by the context network and upsampled.
    """

    def __init__(self, widths=DEFAULTS["widths"], convs=DEFAULTS["convs"], radii=DEFAULTS["radii"],
                 motion=DEFAULTS["motion"],
                 estimator_width=DEFAULTS["estimator_width"], context_width=DEFAULTS["context_width"],
                 finest=DEFAULTS["finest"]):
        super().__init__()
        widths, convs, radii = tuple(widths), tuple(convs), tuple(radii)
        if len(radii) != len(widths) or len(convs) != len(widths) or not 1 <= finest <= len(widths):
            raise ValueError(f"radii {radii} must match widths {widths}; finest {finest} in 1..{len(widths)}")
        motion = tuple(motion)
        if motion and len(motion) != len(widths):
            raise ValueError(f"motion widths {motion} must match widths {widths} (or be empty)")
        self.hparams = dict(widths=widths, convs=convs, radii=radii, motion=motion, estimator_width=estimator_width,
                            context_width=context_width, finest=finest)
        self.finest = finest
        self.pyramid = FeaturePyramid(widths, convs)
        self.motion = MotionEncoder(motion) if motion else None
        self.levels = list(range(len(widths), finest - 1, -1))  # coarse -> fine, 1-based
        self.costs = nn.ModuleDict()
        self.estimators = nn.ModuleDict()
        for lv in self.levels:
            cv = CostVolume(radii[lv - 1])
            self.costs[str(lv)] = cv
            extra = motion[lv - 1] if motion else 0
            self.estimators[str(lv)] = FlowEstimator(cv.channels + widths[lv - 1] + extra + 2, estimator_width)
        self.context = ContextNetwork(self.estimators[str(finest)].out_channels + 2, context_width)

    def forward_levels(self, frames: torch.Tensor) -> list[tuple[int, torch.Tensor]]:
        """Flow at every estimated level, coarse to fine, as (level, flow in that level's pixels)."""
        n, _, h, w = frames.shape
        x = frames.reshape(n * 2, 1, h, w) * 2.0 - 1.0
        feats = [f.reshape(n, 2, f.shape[1], f.shape[2], f.shape[3]) for f in self.pyramid(x)]
        motion = self.motion(frames[:, :1], frames[:, 1:]) if self.motion is not None else None
        flow = None
        out = []
        for lv in self.levels:
            f1, f2 = feats[lv - 1][:, 0], feats[lv - 1][:, 1]
            if flow is None:
                flow = torch.zeros(n, 2, f1.shape[2], f1.shape[3], dtype=f1.dtype, device=f1.device)
                f2w = f2
            else:
                flow = upsample(flow, f1.shape[2:], 2.0)
                f2w = warp(f2, flow)
            cost = self.costs[str(lv)](f1, f2w)
            parts = [cost, f1, flow] if motion is None else [cost, f1, motion[lv - 1], flow]
            delta, est = self.estimators[str(lv)](torch.cat(parts, dim=1))
            flow = flow + delta
            if lv == self.finest:
                flow = flow + self.context(torch.cat([est, flow], dim=1))
            out.append((lv, flow))
        return out

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        lv, flow = self.forward_levels(frames)[-1]
        return upsample(flow, frames.shape[2:], float(2 ** lv))


@functools.lru_cache(maxsize=16)
def _interp_matrix(out_size: int, in_size: int) -> torch.Tensor:
    """(out, in) matrix of 1-D bilinear interpolation, ``F.interpolate(align_corners=False)``."""
    with torch.inference_mode(False):  # a cached constant autograd may use (engines.adapt)
        eye = torch.eye(in_size).reshape(1, 1, in_size, in_size)
        return F.interpolate(eye, size=(out_size, in_size), mode="bilinear",
                             align_corners=False)[0, 0]


def upsample(flow: torch.Tensor, size, scale: float) -> torch.Tensor:
    """Bilinear upsampling of a flow to ``size`` (H, W), values times ``scale``.

    The same numbers as ``scale * F.interpolate(flow, size, mode="bilinear")``, computed as
    two small matrix products (much faster than a large-factor Interpolate on CPU backends).
    """
    h, w = flow.shape[-2:]
    ah = _interp_matrix(int(size[0]), h).to(flow) * scale
    awt = _interp_matrix(int(size[1]), w).to(flow).t()
    return torch.matmul(torch.matmul(ah, flow), awt)


def build(**overrides) -> FlowNet:
    """The flow network with default hyperparameters (or ``overrides``) and random weights."""
    return FlowNet(**{**DEFAULTS, **overrides})
