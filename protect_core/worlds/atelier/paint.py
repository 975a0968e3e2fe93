"""Painting primitives of the atelier world: seeded, vectorised torch operations on (3, S, S) canvases in [0, 1].

Everything takes a ``torch.Generator`` and draws all randomness from it, so an image depends only on its seed.
Coordinates are image-relative (0..1), so a style looks the same at any size.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def u(g, lo=0.0, hi=1.0) -> float:
    """A uniform float in [lo, hi)."""
    return lo + (hi - lo) * float(torch.rand((), generator=g))


def ui(g, lo: int, hi: int) -> int:
    """A uniform int in [lo, hi]."""
    return int(torch.randint(lo, hi + 1, (), generator=g))


def coords(s: int):
    r = (torch.arange(s, dtype=torch.float32) + 0.5) / s
    return torch.meshgrid(r, r, indexing="ij")  # y, x


def hexes(*codes: str) -> torch.Tensor:
    """Palette from hex strings, (k, 3)."""
    return torch.tensor([[int(c[i:i + 2], 16) / 255 for i in (0, 2, 4)] for c in codes], dtype=torch.float32)


def jitter_palette(g, pal: torch.Tensor, amount: float = 0.05) -> torch.Tensor:
    """A palette with a shared tint shift and small per-colour jitter (variation inside an artist)."""
    shift = amount * torch.randn(1, 3, generator=g)
    return (pal + shift + 0.5 * amount * torch.randn(pal.shape, generator=g)).clamp(0, 1)


def pick(g, families):
    return families[ui(g, 0, len(families) - 1)]


def noise(g, s: int, cells: int) -> torch.Tensor:
    """Smooth value noise (1, s, s) in about [0, 1]: a random (cells+1)^2 grid, bicubic upsampled."""
    grid = torch.rand(1, 1, cells + 1, cells + 1, generator=g)
    return F.interpolate(grid, size=(s, s), mode="bicubic", align_corners=True)[0].clamp(0, 1)


def fbm(g, s: int, base: int = 3, octaves: int = 4, gain: float = 0.5) -> torch.Tensor:
    """Fractal noise (1, s, s) normalised to [0, 1]: texture at several scales."""
    out, amp, total = torch.zeros(1, s, s), 1.0, 0.0
    for o in range(octaves):
        out += amp * noise(g, s, min(s - 1, base * 2 ** o))
        total += amp
        amp *= gain
    out = out / total
    return (out - out.min()) / (out.max() - out.min() + 1e-6)


def grain(g, s: int, amount: float) -> torch.Tensor:
    """Paper/canvas grain: fine noise plus a faint weave, zero-mean, (1, s, s)."""
    y, x = coords(s)
    weave = torch.sin(x * s * math.pi * u(g, 0.4, 0.6)) * torch.sin(y * s * math.pi * u(g, 0.4, 0.6))
    fine = torch.rand(1, s, s, generator=g) - 0.5
    return amount * (0.7 * fine + 0.3 * weave[None] * 0.5)


def blur(img: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of a (C, S, S) image, sigma in pixels."""
    if sigma <= 0.05:
        return img
    r = max(1, int(3 * sigma))
    t = torch.arange(-r, r + 1, dtype=torch.float32)
    k = torch.exp(-t ** 2 / (2 * sigma ** 2))
    k = k / k.sum()
    c = img.shape[0]
    x = F.pad(img[None], (r, r, r, r), mode="reflect")
    x = F.conv2d(x, k.view(1, 1, 1, -1).repeat(c, 1, 1, 1), groups=c)
    x = F.conv2d(x, k.view(1, 1, -1, 1).repeat(c, 1, 1, 1), groups=c)
    return x[0]


def fill(colour: torch.Tensor, s: int) -> torch.Tensor:
    return colour.view(3, 1, 1).expand(3, s, s).clone()


def over(canvas: torch.Tensor, colour, alpha: torch.Tensor) -> torch.Tensor:
    """Composite ``colour`` ((3,) or (3, S, S)) over ``canvas`` with ``alpha`` (1, S, S), in place."""
    col = colour.view(3, 1, 1) if colour.ndim == 1 else colour
    canvas.mul_(1 - alpha).add_(col * alpha)
    return canvas


def capsule(x, y, cx, cy, angle, half_len, half_w, s: int, soft: float = 1.0):
    """Soft mask (1, S, S) of a stroke: a segment of half length ``half_len`` and half width ``half_w`` (relative
    units) at ``angle``; also the along-stroke coordinate t in [-1, 1] and the across coordinate (relative)."""
    ca, sa = math.cos(angle), math.sin(angle)
    dx, dy = x - cx, y - cy
    along = dx * ca + dy * sa
    across = -dx * sa + dy * ca
    t = along.clamp(-half_len, half_len)
    d = torch.sqrt((along - t) ** 2 + across ** 2)
    mask = torch.sigmoid((half_w - d) * s / soft)
    return mask[None], (along / max(half_len, 1e-6))[None], across[None]


def strokes(g, canvas, n: int, palette, width=(0.01, 0.03), length=(0.04, 0.12), angle=None, alpha=(0.8, 1.0),
            bristle: float = 0.3, taper: bool = True, height: torch.Tensor | None = None, dry: float = 0.0,
            region=(0.0, 1.0)):
    """Paint ``n`` brush strokes. ``angle``: None (random), a float (all near it) or a (S, S) field of radians
    read at each stroke's centre. Bristle streaks run along the stroke; ``dry`` breaks it up with grain.
    ``height`` (1, S, S), if given, accumulates relief (for impasto)."""
    s = canvas.shape[-1]
    y, x = coords(s)
    for _ in range(n):
        cx, cy = u(g, *region), u(g, *region)
        if angle is None:
            a = u(g, 0, math.pi)
        elif isinstance(angle, float):
            a = angle + 0.35 * float(torch.randn((), generator=g))
        else:
            a = float(angle[min(s - 1, int(cy * s)), min(s - 1, int(cx * s))])
            a += 0.2 * float(torch.randn((), generator=g))
        hw, hl = u(g, *width), u(g, *length)
        m, t, across = capsule(x, y, cx, cy, a, hl, hw, s)
        if taper:
            m = m * (1 - 0.6 * t.abs().clamp(0, 1) ** 3)
        streak = torch.sin(across / max(hw, 1e-6) * u(g, 4, 9) + u(g, 0, 6.3))
        col = palette[ui(g, 0, palette.shape[0] - 1)]
        shade = 1 + bristle * 0.25 * streak
        a_mask = m * u(g, *alpha)
        if dry > 0:
            a_mask = a_mask * (torch.rand(1, s, s, generator=g) > dry * (t.abs() * 0.5 + 0.5)).float()
        over(canvas, (col.view(3, 1, 1) * shade).clamp(0, 1), a_mask)
        if height is not None:
            height.add_(m * (0.6 + 0.4 * streak) * hw * s * 0.3)
    return canvas


def voronoi(g, s: int, n: int, jitter: float = 1.0):
    """Nearest-seed labels (S, S) and distance-to-border estimate (S, S, relative units) for ``n`` seeds on a
    jittered grid."""
    k = max(1, int(round(math.sqrt(n))))
    gy, gx = torch.meshgrid(torch.arange(k), torch.arange(k), indexing="ij")
    pts = (torch.stack([gx.flatten(), gy.flatten()], 1).float() + 0.5
           + jitter * (torch.rand(k * k, 2, generator=g) - 0.5)) / k
    y, x = coords(s)
    d = (x[None] - pts[:, 0, None, None]) ** 2 + (y[None] - pts[:, 1, None, None]) ** 2
    two = d.topk(2, dim=0, largest=False)
    lab = two.indices[0]
    border = torch.sqrt(two.values[1]) - torch.sqrt(two.values[0])
    return lab, border


def edges(labels: torch.Tensor) -> torch.Tensor:
    """1 where a label differs from a neighbour, (1, S, S) float."""
    e = torch.zeros_like(labels, dtype=torch.float32)
    e[:, 1:] += (labels[:, 1:] != labels[:, :-1]).float()
    e[1:, :] += (labels[1:, :] != labels[:-1, :]).float()
    return (e > 0).float()[None]


def dilate(mask: torch.Tensor, r: int) -> torch.Tensor:
    if r <= 0:
        return mask
    return F.max_pool2d(mask[None], 2 * r + 1, stride=1, padding=r)[0]


def lut(t: torch.Tensor, palette: torch.Tensor) -> torch.Tensor:
    """Map values t (1, S, S) in [0, 1] through a palette gradient (k, 3) -> (3, S, S)."""
    k = palette.shape[0]
    p = t.clamp(0, 1)[0] * (k - 1)
    i0 = p.floor().long().clamp(0, k - 2) if k > 1 else p.long() * 0
    f = (p - i0.float()).clamp(0, 1)
    if k == 1:
        return palette[0].view(3, 1, 1).expand(3, *p.shape).clone()
    c = palette[i0] * (1 - f[..., None]) + palette[i0 + 1] * f[..., None]
    return c.permute(2, 0, 1)


def shade_relief(height: torch.Tensor, strength: float, light=(0.7, -0.7)) -> torch.Tensor:
    """Lambert-like shading factor (1, S, S) from a height field, light from the upper left."""
    gx = F.pad(height[:, :, 1:] - height[:, :, :-1], (0, 1, 0, 0))
    gy = F.pad(height[:, 1:, :] - height[:, :-1, :], (0, 0, 0, 1))
    return 1 + strength * (light[0] * -gx + light[1] * gy).tanh()
