"""LV myocardium / cavity segmenter (method step 2): a small U-Net.

The paper segments the LV myocardium with a U-Net. This one keeps the U-Net shape
(encoder of double 3x3 convolutions and 2x2 max-pooling, decoder of bilinear 2x
upsampling, skip concatenation and double 3x3 convolutions) with fewer filters and a
smaller input so a frame costs a few milliseconds on a CPU:

* input greyscale in [0, 1], ``IMAGE_SIZE`` (the 256 x 256 phantom frame downsampled by
  :func:`engines.spec.fit_to_input`);
* ``WIDTHS`` filters per level, the last entry the bottleneck;
* a 1x1 head to the logits of :data:`streamer.vocab.SEG_CLASSES` (background, myocardium,
  cavity) at the input resolution. Callers that need masks on a finer grid upsample the
  logits bilinearly before the argmax.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from engines.spec import NetSpec, role_contract

IMAGE_SIZE = (128, 128)
WIDTHS = (8, 16, 32, 64)
_IN, _OUT = role_contract("seg", IMAGE_SIZE)
SPEC = NetSpec(role="seg", arch=f"U-Net {'-'.join(map(str, WIDTHS))} filters",
               input=_IN, output=_OUT, weights_file="seg.pt")


class DoubleConv(nn.Sequential):
    def __init__(self, c_in: int, c_out: int):
        super().__init__(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out),
                         nn.ReLU(inplace=True),
                         nn.Conv2d(c_out, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out),
                         nn.ReLU(inplace=True))


class Up(nn.Module):
    """Bilinear 2x upsampling, concatenation with the skip, double convolution."""

    def __init__(self, c_in: int, c_skip: int, c_out: int):
        super().__init__()
        self.conv = DoubleConv(c_in + c_skip, c_out)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)
        return self.conv(torch.cat([x, skip], 1))


class UNet(nn.Module):
    def __init__(self, n_classes: int = 3, widths: tuple[int, ...] = WIDTHS):
        super().__init__()
        self.down = nn.ModuleList()
        c = 1
        for w in widths:
            self.down.append(DoubleConv(c, w))
            c = w
        self.up = nn.ModuleList(Up(widths[i + 1], widths[i], widths[i])
                                for i in reversed(range(len(widths) - 1)))
        self.head = nn.Conv2d(widths[0], n_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for i, block in enumerate(self.down):
            if i:
                x = F.max_pool2d(x, 2)
            x = block(x)
            skips.append(x)
        for up, skip in zip(self.up, reversed(skips[:-1])):
            x = up(x, skip)
        return self.head(x)


def build() -> UNet:
    """The segmenter with the shipped hyperparameters and random weights."""
    return UNet(n_classes=_OUT.shape[1], widths=WIDTHS)
