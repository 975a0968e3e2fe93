"""Rendering the atelier world's artists: ``render(artist, n, size, seed)``, deterministic per image.

``ARTISTS`` lists all sixteen (see :mod:`.artists`): ``TRAINED`` (twelve) pre-train the world's model;
``HELD_OUT`` (pastel, cubist, batik) are never shown to it and are the artists whose mimicry is measured; ``DEV``
(gouache) is also unseen and is the only artist on which defaults may be chosen. Images are painted at twice the
size and area-downsampled (anti-aliased). Image ``i`` depends only on ``(artist, seed, i)``, never on ``n``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .artists import PAINTERS

ARTISTS = tuple(PAINTERS)
HELD_OUT = ("pastel", "cubist", "batik")
DEV = "gouache"
UNSEEN = HELD_OUT + (DEV,)
TRAINED = tuple(a for a in ARTISTS if a not in UNSEEN)
PROMPT_TEMPLATE = "a painting in {style} style"
NATIVE_SIZE = 64
SUPERSAMPLE = 2


def prompt_for(artist: str) -> str:
    _index(artist)
    return PROMPT_TEMPLATE.format(style=artist)


def _index(artist: str) -> int:
    if artist not in PAINTERS:
        raise ValueError(f"unknown atelier artist {artist!r}; choose from {', '.join(ARTISTS)}")
    return ARTISTS.index(artist)


def _image_seed(seed: int, k: int, i: int) -> int:
    return (int(seed) * 1_000_003 + k * 7_919 + i * 104_729 + 424_242) % (2 ** 62)


def render(artist: str, n: int, size: int = NATIVE_SIZE, seed: int = 0) -> torch.Tensor:
    """``n`` paintings by ``artist``, (n, 3, size, size) float32 in [0, 1]."""
    k = _index(artist)
    if n < 1 or size < 16:
        raise ValueError(f"need n >= 1 and size >= 16, got n={n}, size={size}")
    big = size * SUPERSAMPLE
    out = []
    for i in range(n):
        g = torch.Generator().manual_seed(_image_seed(seed, k, i))
        out.append(PAINTERS[artist](g, big).clamp(0, 1))
    return F.avg_pool2d(torch.stack(out), SUPERSAMPLE)


def render_mixed(artists, n_per: int, size: int = NATIVE_SIZE, seed: int = 0):
    """Renders of several artists stacked, with labels (indices into ``ARTISTS``)."""
    imgs = [render(a, n_per, size, seed) for a in artists]
    labels = torch.tensor([ARTISTS.index(a) for a in artists for _ in range(n_per)])
    return torch.cat(imgs), labels


def render_generic(n: int, size: int = NATIVE_SIZE, seed: int = 0) -> torch.Tensor:
    """Artist-less images for training a generic codec: collages of two trained artists' paintings under a soft
    random mask, and random fractal colour fields with grain. No unseen artist is used."""
    out = []
    for i in range(n):
        g = torch.Generator().manual_seed(_image_seed(seed, 999, i))
        if torch.rand((), generator=g) < 0.5:
            a, b = (TRAINED[int(j)] for j in torch.randint(0, len(TRAINED), (2,), generator=g))
            s = int(torch.randint(0, 2 ** 31, (), generator=g))
            m = F.interpolate(torch.rand(1, 1, 4, 4, generator=g), size=(size, size), mode="bicubic",
                              align_corners=True)[0]
            m = torch.sigmoid((m - 0.5) * 20)
            out.append(render(a, 1, size, s)[0] * m + render(b, 1, size, s + 1)[0] * (1 - m))
        else:
            f = sum(F.interpolate(torch.rand(1, 3, k + 1, k + 1, generator=g), size=(size, size), mode="bicubic",
                                  align_corners=True)[0] / (j + 1) for j, k in enumerate((2, 5, 11, 23)))
            lo, hi = f.amin((1, 2), keepdim=True), f.amax((1, 2), keepdim=True)
            f = (f - lo) / (hi - lo + 1e-6)
            out.append((f + 0.04 * (torch.rand(1, size, size, generator=g) - 0.5)).clamp(0, 1))
    return torch.stack(out)
