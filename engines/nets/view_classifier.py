"""Echo view classifier (method step 1): inception blocks with dense connectivity.

Østvik et al. (2018) classify every frame into eight views with a network of
inception-style blocks whose outputs are densely connected (each block sees the
concatenation of the stage input and all earlier blocks' outputs). This is the same
design scaled down to run in about a millisecond on a CPU:

* a stem of two strided 3x3 convolutions (``IMAGE_SIZE`` -> 1/4 resolution);
* three :class:`DenseStage` s, each a few :class:`InceptionBlock` s whose outputs are
  appended to the running feature map, followed (except the last) by a 1x1 transition
  convolution and 2x2 average pooling;
* global average pooling, dropout and a linear layer to the logits of
  :data:`streamer.vocab.VIEW_CLASSES`.

Input: greyscale in [0, 1], ``(1, 1, 96, 96)``; output: logits ``(1, 8)``.
"""

from __future__ import annotations

import torch
from torch import nn

from engines.spec import NetSpec, role_contract

IMAGE_SIZE = (96, 96)
_IN, _OUT = role_contract("view", IMAGE_SIZE)
SPEC = NetSpec(role="view", arch="inception-dense view classifier (Østvik 2018, scaled down)",
               input=_IN, output=_OUT, weights_file="view.pt")


def conv_bn(c_in: int, c_out: int, k: int = 3, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, k, stride, (k - 1) // 2, bias=False),
                         nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))


class InceptionBlock(nn.Module):
    """Four parallel branches (1x1; 1x1->3x3; 1x1->3x3->3x3 (a factorised 5x5); 1x1->3x3
    average pool), concatenated: ``growth`` output channels in all, split over the branches.

    (The pooling branch pools after its 1x1 projection and averages: a stride-1 max-pool
    over the wide block input dominated the CPU training time.)
    """

    def __init__(self, c_in: int, growth: int):
        super().__init__()
        b = growth // 4
        self.branch1 = conv_bn(c_in, b, 1)
        self.branch3 = nn.Sequential(conv_bn(c_in, b, 1), conv_bn(b, b, 3))
        self.branch5 = nn.Sequential(conv_bn(c_in, b, 1), conv_bn(b, b, 3), conv_bn(b, b, 3))
        self.branch_pool = nn.Sequential(conv_bn(c_in, growth - 3 * b, 1), nn.AvgPool2d(3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.branch1(x), self.branch3(x), self.branch5(x), self.branch_pool(x)], 1)


class DenseStage(nn.Module):
    """``blocks`` inception blocks, each fed the concatenation of everything before it."""

    def __init__(self, c_in: int, growth: int, blocks: int, c_out: int | None = None):
        super().__init__()
        self.blocks = nn.ModuleList(InceptionBlock(c_in + i * growth, growth) for i in range(blocks))
        c = c_in + blocks * growth
        # transition: 1x1 compression + 2x2 average pooling (absent on the last stage)
        self.transition = (nn.Sequential(conv_bn(c, c_out, 1), nn.AvgPool2d(2))
                           if c_out is not None else None)
        self.out_channels = c_out if c_out is not None else c

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = torch.cat([x, block(x)], 1)
        return self.transition(x) if self.transition is not None else x


class ViewClassifier(nn.Module):
    def __init__(self, n_classes: int = 8, stem: tuple[int, int] = (16, 32),
                 growth: tuple[int, ...] = (16, 32, 48), blocks: tuple[int, ...] = (1, 2, 2),
                 transition: tuple[int, ...] = (48, 96), dropout: float = 0.2):
        super().__init__()
        self.stem = nn.Sequential(conv_bn(1, stem[0], 3, 2), conv_bn(stem[0], stem[1], 3, 2))
        stages, c = [], stem[1]
        for i, (g, b) in enumerate(zip(growth, blocks)):
            st = DenseStage(c, g, b, transition[i] if i < len(transition) else None)
            stages.append(st)
            c = st.out_channels
        self.stages = nn.Sequential(*stages)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout),
                                  nn.Linear(c, n_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.stages(self.stem(x)))


def build() -> ViewClassifier:
    """The classifier with the shipped hyperparameters and random weights."""
    return ViewClassifier(n_classes=_OUT.shape[1])
