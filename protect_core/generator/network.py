"""The one-pass cloak network: image in [0, 1] -> perturbation direction in [-1, 1] (times eps = the perturbation).

A small fully convolutional U-Net (two stride-2 levels, residual blocks, skip connections, no normalisation, so a
tile's output does not depend on the rest of the batch): any image size works (inputs are reflect-padded to a
multiple of 4 and cropped back), and a 512 x 512 image costs a few GFLOPs (see benchmarks/instant_cloak.py for the
time it takes).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

#: architecture parameters a generator file records (and :class:`CloakNet` takes)
ARCH_KEYS = ("width", "depth")


class _Res(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.a = nn.Conv2d(ch, ch, 3, padding=1)
        self.b = nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, x):
        return x + self.b(F.silu(self.a(F.silu(x))))


class CloakNet(nn.Module):
    """``width`` channels at full resolution, 2x and 2x at the two lower levels; ``depth`` residual blocks at the
    lowest level. ``forward(x01)`` returns ``tanh`` of the output: a direction in [-1, 1] per pixel and channel."""

    def __init__(self, width: int = 24, depth: int = 3):
        super().__init__()
        if int(width) < 4 or int(depth) < 0:
            raise ValueError(f"CloakNet needs width >= 4 and depth >= 0, got {width}, {depth}")
        w, w2, w4 = int(width), 2 * int(width), 4 * int(width)
        self.width, self.depth = int(width), int(depth)
        self.stem = nn.Conv2d(3, w, 3, padding=1)
        self.down1 = nn.Conv2d(w, w2, 3, stride=2, padding=1)
        self.down2 = nn.Conv2d(w2, w4, 3, stride=2, padding=1)
        self.mid = nn.Sequential(*[_Res(w4) for _ in range(int(depth))])
        self.up2 = nn.Conv2d(w4, w2, 3, padding=1)
        self.up1 = nn.Conv2d(w2, w, 3, padding=1)
        self.head = nn.Conv2d(w, 3, 3, padding=1)
        nn.init.zeros_(self.head.weight)   # starts at "no perturbation"; training grows it
        nn.init.zeros_(self.head.bias)

    def forward(self, x01: torch.Tensor) -> torch.Tensor:
        h, w = x01.shape[-2:]
        ph, pw = (-h) % 4, (-w) % 4
        x = x01 * 2 - 1
        if ph or pw:
            mode = "reflect" if min(h, w) > max(ph, pw) else "replicate"
            x = F.pad(x, (0, pw, 0, ph), mode=mode)
        x = x.contiguous(memory_format=torch.channels_last)   # faster convolutions on CPU (oneDNN)
        s0 = F.silu(self.stem(x))
        s1 = F.silu(self.down1(s0))
        s2 = self.mid(F.silu(self.down2(s1)))
        u1 = F.silu(self.up2(F.interpolate(s2, scale_factor=2.0, mode="nearest"))) + s1
        u0 = F.silu(self.up1(F.interpolate(u1, scale_factor=2.0, mode="nearest"))) + s0
        return torch.tanh(self.head(u0)[..., :h, :w]).contiguous()

    def arch(self) -> dict:
        return {"width": self.width, "depth": self.depth}
