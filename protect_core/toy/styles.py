"""Procedural art styles of the toy world: pure, seeded generators of small paintings.

Each style is a family of images with its own texture *and* palette (so an x8 VAE can tell them apart at 32 px),
and variation inside the family (palette jitter, scale, orientation, phase, placement). Geometry is defined in
image-relative units, so a style looks the same at 32, 64 or 256 px. Images are rendered at twice the size and
area-downsampled (anti-aliased edges).

``render(style, n, size, seed)`` is deterministic: image ``i`` depends only on ``(style, seed, i)``, never on
``n``. ``HELD_OUT`` is never shown to the toy model during pre-training; it is the "artist" that mimicry tries to
learn.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

# Trained styles first, the held-out style last. Every name is a word the tiny tokenizer can spell.
STYLES = ("stripes", "dots", "checker", "gradient", "rings", "strokes", "waves", "mosaic", "hatching", "blobs")
HELD_OUT = "blobs"
TRAINED = tuple(s for s in STYLES if s != HELD_OUT)
SUPERSAMPLE = 2
PROMPT_TEMPLATE = "a painting in {style} style"


def prompt_for(style: str) -> str:
    """The caption used for ``style`` in training and evaluation."""
    _index(style)
    return PROMPT_TEMPLATE.format(style=style)


def render(style: str, n: int, size: int = 32, seed: int = 0) -> torch.Tensor:
    """``n`` images of ``style``, shape ``(n, 3, size, size)``, float32 in [0, 1], deterministic in ``seed``."""
    k = _index(style)
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if size < 8:
        raise ValueError(f"size must be >= 8, got {size}")
    fn = _PAINTERS[style]
    big = size * SUPERSAMPLE
    y, x = _coords(big)
    out = []
    for i in range(n):
        g = torch.Generator().manual_seed(_image_seed(seed, k, i))
        out.append(fn(g, x, y, big))
    imgs = torch.stack(out).clamp(0, 1)
    return F.avg_pool2d(imgs, SUPERSAMPLE)


def render_mixed(styles, n_per_style: int, size: int = 32, seed: int = 0):
    """Renders of several styles stacked, with integer labels (index into ``STYLES``)."""
    imgs, labels = [], []
    for s in styles:
        imgs.append(render(s, n_per_style, size, seed))
        labels += [STYLES.index(s)] * n_per_style
    return torch.cat(imgs), torch.tensor(labels)


def render_generic(n: int, size: int = 32, seed: int = 0) -> torch.Tensor:
    """Style-less images for training the VAE as a generic codec: smooth random colour fields, half of them
    thresholded into two random colours with soft edges. No painter of ``STYLES`` is used."""
    out = []
    for i in range(n):
        g = torch.Generator().manual_seed(_image_seed(seed, 999, i))
        k = int(_u(g, 2, 7))
        field = F.interpolate(torch.rand(1, 3, k, k, generator=g), size=(size, size), mode="bicubic",
                              align_corners=False)[0]
        if _u(g) < 0.5:
            m = F.interpolate(torch.rand(1, 1, k, k, generator=g), size=(size, size), mode="bicubic",
                              align_corners=False)[0]
            m = torch.sigmoid((m - _u(g, 0.35, 0.65)) * _u(g, 10, 40))
            field = _mix(m, torch.rand(3, 1, 1, generator=g), torch.rand(3, 1, 1, generator=g))
        out.append(field)
    return torch.stack(out).clamp(0, 1)


def _index(style: str) -> int:
    if style not in STYLES:
        raise ValueError(f"unknown toy style {style!r}; choose from {', '.join(STYLES)}")
    return STYLES.index(style)


def _image_seed(seed: int, k: int, i: int) -> int:
    return (int(seed) * 1_000_003 + k * 7_919 + i * 104_729 + 12_345) % (2 ** 62)


def _coords(big: int):
    r = (torch.arange(big, dtype=torch.float32) + 0.5) / big
    return torch.meshgrid(r, r, indexing="ij")


# --- random helpers (all through the per-image generator) -------------------------------------------------------
def _u(g, lo=0.0, hi=1.0) -> float:
    return lo + (hi - lo) * float(torch.rand((), generator=g))


def _colour(g, rgb, jitter=0.06) -> torch.Tensor:
    c = torch.tensor(rgb, dtype=torch.float32) + jitter * torch.randn(3, generator=g)
    return c.clamp(0, 1).view(3, 1, 1)


def _mix(mask: torch.Tensor, fg: torch.Tensor, bg: torch.Tensor) -> torch.Tensor:
    return fg * mask + bg * (1 - mask)


def _soft(v: torch.Tensor, big: int, width_px: float = 1.0) -> torch.Tensor:
    """Soft step of a signed, image-relative distance (anti-aliased edge about one pixel wide)."""
    return torch.sigmoid(v * big / width_px)


def _hsv(h: torch.Tensor, s: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """HSV (each (k,), h in [0,1)) to RGB (k, 3)."""
    k = (torch.stack([5 + h * 6, 3 + h * 6, 1 + h * 6], -1)) % 6
    m = torch.clamp(torch.minimum(k, 4 - k), 0, 1)
    return v[:, None] - v[:, None] * s[:, None] * m


# --- the painters: (generator, x, y, big) -> (3, big, big) ------------------------------------------------------
def _stripes(g, x, y, big):
    """Bold parallel bands, warm red on cream, any orientation."""
    th, period = _u(g, 0, math.pi), _u(g, 0.2, 0.33)
    u = x * math.cos(th) + y * math.sin(th)
    duty = _u(g, 0.4, 0.6)
    s = torch.remainder(u / period + _u(g), 1.0)
    inside = torch.minimum(s, duty - s)
    outside = -torch.minimum(s - duty, 1 - s)
    mask = _soft(torch.where(s < duty, inside, outside) * period, big)
    return _mix(mask, _colour(g, (0.85, 0.15, 0.10)), _colour(g, (0.98, 0.88, 0.66)))


def _dots(g, x, y, big):
    """Polka dots on a staggered lattice: yellow on navy."""
    d = _u(g, 0.2, 0.3)
    r = d * _u(g, 0.25, 0.35)
    ox, oy = _u(g), _u(g)
    row = torch.floor(y / d + oy)
    fx = torch.remainder(x / d + ox + 0.5 * row, 1.0) - 0.5
    fy = torch.remainder(y / d + oy, 1.0) - 0.5
    dist = torch.sqrt(fx ** 2 + fy ** 2) * d
    return _mix(_soft(r - dist, big), _colour(g, (0.98, 0.85, 0.15)), _colour(g, (0.07, 0.10, 0.38)))


def _checker(g, x, y, big):
    """Large axis-aligned checkerboard, near-black and near-white (cells 1/4 to 1/2 of the image)."""
    c = _u(g, 0.25, 0.45)
    ox, oy = _u(g), _u(g)
    sx = torch.sin(math.pi * (x / c + ox))
    sy = torch.sin(math.pi * (y / c + oy))
    mask = _soft(sx * sy * c / math.pi, big)
    return _mix(mask, _colour(g, (0.93, 0.93, 0.90), 0.03), _colour(g, (0.08, 0.08, 0.10), 0.03))


def _gradient(g, x, y, big):
    """Smooth linear blend of two pastels (pink to sky blue), any direction, a gentle S-curve."""
    th = _u(g, 0, 2 * math.pi)
    u = (x - 0.5) * math.cos(th) + (y - 0.5) * math.sin(th)
    t = torch.sigmoid(u * _u(g, 3.0, 6.0) + _u(g, -0.5, 0.5))
    a, b = _colour(g, (1.0, 0.70, 0.80)), _colour(g, (0.60, 0.85, 1.0))
    return _mix(t, a, b)


def _rings(g, x, y, big):
    """Concentric rings around a random centre: light green on dark green."""
    cx, cy = _u(g, -0.2, 1.2), _u(g, -0.2, 1.2)
    period = _u(g, 0.24, 0.34)
    r = torch.sqrt((x - cx) ** 2 + (y - cy) ** 2)
    s = torch.sin(2 * math.pi * (r / period + _u(g)))
    mask = _soft(s * period / (2 * math.pi), big)
    return _mix(mask, _colour(g, (0.55, 0.90, 0.40)), _colour(g, (0.05, 0.30, 0.12)))


def _strokes(g, x, y, big):
    """Thick short brush strokes in earthy ochre/sienna/olive over a brown ground."""
    img = _colour(g, (0.40, 0.25, 0.12)).expand(3, big, big).clone()
    palette = ((0.85, 0.60, 0.20), (0.65, 0.30, 0.12), (0.50, 0.50, 0.20), (0.90, 0.80, 0.55))
    base_th = _u(g, 0, math.pi)
    for _ in range(int(_u(g, 9, 14))):
        cx, cy = _u(g, -0.1, 1.1), _u(g, -0.1, 1.1)
        th = base_th + _u(g, -0.4, 0.4)
        half, w = _u(g, 0.14, 0.24), _u(g, 0.05, 0.08)
        dx, dy = x - cx, y - cy
        along = dx * math.cos(th) + dy * math.sin(th)
        across = -dx * math.sin(th) + dy * math.cos(th)
        dist = torch.sqrt(torch.clamp(along.abs() - half, min=0) ** 2 + across ** 2)
        col = _colour(g, palette[int(_u(g, 0, len(palette) - 1e-6))], 0.05)
        img = _mix(_soft(w - dist, big), col, img)
    return img


def _waves(g, x, y, big):
    """Wavy horizontal-ish bands: turquoise sea and white foam."""
    th = _u(g, -0.4, 0.4)
    u = -x * math.sin(th) + y * math.cos(th)
    v = x * math.cos(th) + y * math.sin(th)
    amp, lam, period = _u(g, 0.04, 0.09), _u(g, 0.3, 0.55), _u(g, 0.22, 0.32)
    w = u + amp * torch.sin(2 * math.pi * v / lam + _u(g, 0, 2 * math.pi))
    s = torch.sin(2 * math.pi * (w / period + _u(g)))
    mask = _soft((s - 0.3) * period / (2 * math.pi), big)
    return _mix(mask, _colour(g, (0.85, 0.97, 1.0), 0.04), _colour(g, (0.0, 0.50, 0.55)))


def _mosaic(g, x, y, big):
    """Voronoi tiles of saturated random hues separated by dark grout."""
    k = int(_u(g, 5, 9))
    pts = torch.rand(k, 2, generator=g)
    cols = _hsv(torch.rand(k, generator=g), 0.75 + 0.25 * torch.rand(k, generator=g),
                0.8 + 0.2 * torch.rand(k, generator=g))
    d = torch.sqrt((y[None] - pts[:, 0, None, None]) ** 2 + (x[None] - pts[:, 1, None, None]) ** 2)
    two = torch.topk(d, 2, dim=0, largest=False)
    near = cols[two.indices[0]].permute(2, 0, 1)
    edge = _soft((two.values[1] - two.values[0]) / 2 - _u(g, 0.02, 0.03), big)
    return _mix(edge, near, _colour(g, (0.12, 0.10, 0.10), 0.02))


def _hatching(g, x, y, big):
    """Ink cross-hatching on paper: dark brown lines in one direction, crossed by a second set where a random
    shade is dark."""
    th = _u(g, 0, math.pi)
    period = _u(g, 0.2, 0.26)
    shade = torch.sigmoid(((x - _u(g)) * math.cos(_u(g, 0, 6.3)) + (y - _u(g)) * math.sin(_u(g, 0, 6.3))) * 8)
    ink = torch.zeros_like(x)
    for j, ang in enumerate((th, th + math.pi / 2 + _u(g, -0.3, 0.3))):
        u = x * math.cos(ang) + y * math.sin(ang)
        f = torch.remainder(u / period + _u(g), 1.0)
        dist = torch.minimum(f, 1 - f) * period
        line = _soft(0.2 * period - dist, big)
        ink = torch.maximum(ink, line if j == 0 else line * shade)
    return _mix(ink, _colour(g, (0.22, 0.15, 0.10), 0.04), _colour(g, (0.95, 0.92, 0.82), 0.03))


def _blobs(g, x, y, big):
    """Soft metaball blobs: violet on lime (held out of pre-training)."""
    field = torch.zeros_like(x)
    for _ in range(int(_u(g, 3, 7))):
        cx, cy, r = _u(g, -0.1, 1.1), _u(g, -0.1, 1.1), _u(g, 0.10, 0.22)
        field = field + torch.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * r * r))
    mask = torch.sigmoid((field - 0.55) * 12)
    return _mix(mask, _colour(g, (0.50, 0.12, 0.62)), _colour(g, (0.72, 0.92, 0.22)))


_PAINTERS = {"stripes": _stripes, "dots": _dots, "checker": _checker, "gradient": _gradient, "rings": _rings,
             "strokes": _strokes, "waves": _waves, "mosaic": _mosaic, "hatching": _hatching, "blobs": _blobs}
assert set(_PAINTERS) == set(STYLES)
