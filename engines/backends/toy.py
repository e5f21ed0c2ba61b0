"""Small stand-in networks that satisfy each role's contract, with seeded random weights.

They are for tests and for ``cardiostream engines check --toy`` (comparing backends on a
machine without trained weights): the same operator families as the real networks
(strided and same-size convolutions, batch norm, ReLU, max pooling, bilinear upsampling,
a skip connection, global pooling + linear), small enough to run in milliseconds.
Their outputs mean nothing.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from engines.spec import NetSpec, role_contract


class _Down(nn.Sequential):
    def __init__(self, cin: int, cout: int):
        super().__init__(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout),
                         nn.ReLU(inplace=True))


class ToyView(nn.Module):
    def __init__(self, width: int = 8):
        super().__init__()
        self.a = _Down(1, width)
        self.b = _Down(width, 2 * width)
        self.head = nn.Linear(2 * width, 8)

    def forward(self, x):
        x = F.max_pool2d(self.a(x), 2)
        x = F.max_pool2d(self.b(x), 2)
        return self.head(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class _ToyUNet(nn.Module):
    def __init__(self, cin: int, cout: int, width: int = 8):
        super().__init__()
        self.enc = _Down(cin, width)
        self.mid = _Down(width, 2 * width)
        self.dec = _Down(3 * width, width)
        self.out = nn.Conv2d(width, cout, 1)

    def forward(self, x):
        e = self.enc(x)
        m = self.mid(F.max_pool2d(e, 2))
        m = F.interpolate(m, scale_factor=2.0, mode="bilinear", align_corners=False)
        return self.out(self.dec(torch.cat([e, m], 1)))


class ToySeg(_ToyUNet):
    def __init__(self, width: int = 8):
        super().__init__(1, 3, width)


class ToyFlow(_ToyUNet):
    def __init__(self, width: int = 8):
        super().__init__(2, 2, width)


class ToyMR(_ToyUNet):
    """The ``mr`` role's contract: [previous, current, state] -> [4 logits, flow, state]."""

    def __init__(self, width: int = 8):
        super().__init__(3, 7, width)


ARCHS = {"view": ToyView, "seg": ToySeg, "flow": ToyFlow, "mr": ToyMR}


def toy_spec(role: str, size: tuple[int, int] = (64, 64)) -> NetSpec:
    inp, out = role_contract(role, size)
    return NetSpec(role=role, arch=f"toy-{role}", input=inp, output=out,
                   weights_file=f"toy-{role}.pt")


def toy_model(role: str, seed: int = 0, width: int = 8) -> nn.Module:
    """The role's toy network, seeded random weights and batch-norm statistics, eval mode."""
    if role not in ARCHS:
        role_contract(role, (1, 1))  # raises the standard unknown-role error
    gen = torch.Generator().manual_seed(seed)
    model = ARCHS[role](width)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if t.is_floating_point():
                if name.endswith("running_var"):
                    t.copy_(0.5 + torch.rand(t.shape, generator=gen))
                elif name.endswith("weight") and t.ndim == 1:          # batch-norm gamma
                    t.copy_(0.5 + torch.rand(t.shape, generator=gen))
                else:
                    fan_in = max(1, t[0].numel()) if t.ndim > 1 else 1
                    t.copy_(torch.randn(t.shape, generator=gen) / fan_in ** 0.5)
    return model.eval()


def toy_inputs(spec: NetSpec, n: int, seed: int = 0):
    """``n`` smooth random inputs in [0, 1] for ``spec`` (N, C, H, W) float32: low-frequency
    noise, bilinearly upsampled, closer to image statistics than white noise."""
    import numpy as np

    gen = torch.Generator().manual_seed(seed)
    c, h, w = spec.input.shape[1:]
    coarse = torch.rand((n, c, max(2, h // 8), max(2, w // 8)), generator=gen)
    x = F.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False)
    return np.ascontiguousarray(x.numpy(), dtype=np.float32)
