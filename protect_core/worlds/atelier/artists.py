"""The atelier world's sixteen procedural artists: each a seeded painter ``(g, s) -> (3, s, s)`` in [0, 1].

Every artist has a technique (strokes, hatching, stippling, washes, relief, flat fills, pixels...), texture at
several scales (composition from low-frequency noise, marks at mid scale, grain or bristles at the finest) and
variation inside the artist (palette families with jitter, mark size, density, direction, composition). Twelve
artists train the world's model; ``HELD_OUT`` (three) are never shown to it and are the artists whose mimicry is
measured; ``DEV`` is a fourth unseen artist on which defaults are chosen.
"""
from __future__ import annotations

import math

import torch

from .paint import (blur, capsule, coords, dilate, edges, fbm, fill, grain, hexes, jitter_palette, lut, noise, over,
                    pick, shade_relief, strokes, u, ui, voronoi)

_P = {  # palette families per artist
    "brushwork": [hexes("3b5ba5", "e8b04a", "f2e2b6", "6d8f4e", "c1502e"),
                  hexes("7a4b2a", "d99a4e", "f4dba8", "566b3a", "2f3d5c")],
    "crosshatch": [hexes("f3ead6", "1f1a17"), hexes("eef0e8", "1c2a4a"), hexes("f5e6c8", "5a2e1a")],
    "stipple": [hexes("f7f1e3", "151515"), hexes("fbf3dc", "7a1f1f"), hexes("eaf2f0", "0f3b4a")],
    "watercolour": [hexes("fbf8f0", "6fa8dc", "e06666", "93c47d"), hexes("fdf9f2", "f6b26b", "8e7cc3", "76a5af")],
    "impasto": [hexes("1d3557", "e63946", "f1faee", "a8dadc", "f4a261"),
                hexes("264653", "2a9d8f", "e9c46a", "e76f51", "fefae0")],
    "lineart": [hexes("ffd166", "ef476f", "06d6a0", "118ab2", "fdfcdc"),
                hexes("f4f1de", "e07a5f", "3d405b", "81b29a", "f2cc8f")],
    "pixelart": [hexes("1a1c2c", "5d275d", "b13e53", "ef7d57", "ffcd75", "a7f070", "38b764", "257179"),
                 hexes("0f380f", "306230", "8bac0f", "9bbc0f")],
    "woodcut": [hexes("efe6d2", "141414"), hexes("e9dcc0", "3a1f0f"), hexes("f1e4c9", "8b1e1e")],
    "mosaic": [hexes("b5651d", "e0c097", "2e5e4e", "c9a227", "7b2d26"),
               hexes("1f4e79", "6fa8dc", "f9cb9c", "cc4125", "eeeeee")],
    "inkwash": [hexes("f2eee3", "2b2b2b"), hexes("ece6d6", "25303a")],
    "popart": [hexes("ffe600", "ff2d95", "00b3ff", "ffffff", "111111"),
               hexes("ff3b30", "ffd60a", "0a84ff", "f2f2f2", "111111")],
    "marbling": [hexes("0b3d91", "f2e8cf", "c44536", "1b998b", "e9c46a"),
                 hexes("3c1642", "086375", "1dd3b0", "affc41", "b2ff9e")],
    "pastel": [hexes("2f3e46", "f7c8d0", "ffe8a3", "bde0fe", "caffbf"),
               hexes("5c4033", "ffd6a5", "fdffb6", "9bf6ff", "ffc6ff")],
    "cubist": [hexes("6b705c", "a5a58d", "b7b7a4", "cb997e", "6d597a", "3d405b"),
               hexes("7f5539", "9c6644", "b08968", "ddb892", "355070")],
    "batik": [hexes("2d1e2f", "c06014", "f2b134", "4b3b47"), hexes("14213d", "1e6091", "fca311", "e5e5e5")],
    "gouache": [hexes("f94144", "f3722c", "f9c74f", "90be6d", "43aa8b", "577590"),
                hexes("fdf0d5", "c1121f", "003049", "669bbc")],
}


def _brushwork(g, s):
    """Impressionist: short bristly strokes following a flow field, over a loosely painted ground."""
    pal = jitter_palette(g, pick(g, _P["brushwork"]))
    img = lut(fbm(g, s, 2, 3), pal[torch.randperm(pal.shape[0], generator=g)[:3]])
    flow = fbm(g, s, 2, 2)[0] * math.pi * u(g, 1.5, 3) + u(g, 0, 3.2)
    strokes(g, img, ui(g, 90, 160), pal, width=(0.008, 0.02 * u(g, 1, 2)), length=(0.03, 0.08), angle=flow,
            bristle=0.8)
    return img + grain(g, s, 0.05)


def _crosshatch(g, s):
    """Ink hatching and cross-hatching: tone from noise, darker tones get more hatch directions; wobbly lines."""
    paper, ink = jitter_palette(g, pick(g, _P["crosshatch"]), 0.03)
    y, x = coords(s)
    tone = fbm(g, s, ui(g, 2, 4), 3)[0]
    wob = (fbm(g, s, 6, 2)[0] - 0.5) * 0.01
    period = u(g, 0.025, 0.045)
    base = u(g, 0, math.pi)
    ink_amt = torch.zeros(s, s)
    for k, thr in enumerate((0.75, 0.55, 0.35, 0.18)):
        a = base + k * math.pi / (2.6 + u(g, 0, 0.6))
        ph = (x * math.cos(a) + y * math.sin(a) + wob) / period
        line = torch.exp(-((ph - ph.round()) ** 2) / (2 * u(g, 0.04, 0.09) ** 2))
        ink_amt = torch.maximum(ink_amt, line * torch.sigmoid((thr - tone) * 30))
    img = fill(paper, s)
    over(img, ink, ink_amt[None] * u(g, 0.8, 1.0))
    return img + grain(g, s, 0.04)


def _stipple(g, s):
    """Pointillist ink dots of two sizes whose density follows the tone."""
    paper, ink = jitter_palette(g, pick(g, _P["stipple"]), 0.03)
    tone = fbm(g, s, ui(g, 2, 4), 3)
    img = fill(paper, s)
    for r, dens in ((ui(g, 0, 1), u(g, 0.08, 0.16)), (ui(g, 1, 2), u(g, 0.01, 0.03))):
        seeds = (torch.rand(1, s, s, generator=g) < dens * (1 - tone) ** 1.5).float()
        over(img, ink, dilate(seeds, r) * 0.95)
    return img + grain(g, s, 0.03)


def _watercolour(g, s):
    """Transparent washes with bleeding, darkened edges (pigment pooling) and paper grain."""
    pal = jitter_palette(g, pick(g, _P["watercolour"]))
    img = fill(pal[0], s)
    paper = fbm(g, s, 16, 3)
    for _ in range(ui(g, 3, 6)):
        f = fbm(g, s, ui(g, 2, 4), 4)
        m = torch.sigmoid((f - u(g, 0.5, 0.7)) * u(g, 12, 30))
        m = blur(m, u(g, 0.5, 2.5))
        edge = (m * (1 - m) * 4) ** 2
        col = pal[ui(g, 1, pal.shape[0] - 1)]
        over(img, col.view(3, 1, 1) * (1 - 0.25 * edge), (m * u(g, 0.35, 0.6) * (0.8 + 0.4 * paper)).clamp(0, 1))
    return img * (0.95 + 0.08 * paper) + grain(g, s, 0.02)


def _impasto(g, s):
    """Thick paint: overlapping strokes whose relief is lit from the upper left, with knife marks."""
    pal = jitter_palette(g, pick(g, _P["impasto"]))
    img = fill(pal[ui(g, 0, pal.shape[0] - 1)], s)
    h = fbm(g, s, 8, 3) * 2
    strokes(g, img, ui(g, 35, 60), pal, width=(0.02, 0.05), length=(0.06, 0.16), angle=u(g, 0, 3.2), bristle=0.5,
            height=h)
    return img * shade_relief(blur(h, 1.0), u(g, 0.25, 0.4))


def _lineart(g, s):
    """Flat-fill comic art: overlapping shapes in flat colours with bold black outlines."""
    pal = jitter_palette(g, pick(g, _P["lineart"]), 0.03)
    y, x = coords(s)
    lab = torch.zeros(s, s, dtype=torch.long)
    for k in range(1, ui(g, 5, 9)):
        cx, cy, r = u(g), u(g), u(g, 0.1, 0.35)
        wob = (noise(g, s, 4)[0] - 0.5) * r * 0.6
        inside = torch.sqrt((x - cx) ** 2 / u(g, 0.5, 1.5) + (y - cy) ** 2) < r + wob
        lab = torch.where(inside, k, lab)
    cols = pal[torch.randint(0, pal.shape[0], (16,), generator=g)]
    img = cols[lab].permute(2, 0, 1).clone()
    line = dilate(edges(lab), ui(g, 1, 2))
    over(img, torch.tensor([0.06, 0.05, 0.07]), line)
    return img


def _pixelart(g, s):
    """Pixel art: a mirrored sprite on a low-resolution grid, limited palette, hard edges, ordered dithering."""
    pal = pick(g, _P["pixelart"])
    n = pick(g, [8, 12, 16])
    half = torch.randint(0, pal.shape[0], (n, (n + 1) // 2), generator=g)
    blank = torch.rand(n, (n + 1) // 2, generator=g) < 0.35
    half = torch.where(blank, 0, half)
    grid = torch.cat([half, half.flip(1)[:, n % 2:]], 1)
    img = pal[grid].permute(2, 0, 1)[None]
    img = torch.nn.functional.interpolate(img, size=(s, s), mode="nearest")[0]
    y, x = coords(s)
    cell = (x * n * 2).floor() + (y * n * 2).floor()
    dither = (cell % 2)[None] * u(g, 0.0, 0.12)
    return img * (1 - dither)


def _woodcut(g, s):
    """Woodcut: carved lines following a warped flow, thick where the tone is dark, high contrast."""
    paper, ink = jitter_palette(g, pick(g, _P["woodcut"]), 0.03)
    phi = fbm(g, s, 2, 3)[0] * u(g, 6, 12) + coords(s)[ui(g, 0, 1)] * u(g, 4, 10)
    tone = fbm(g, s, 3, 2)[0]
    wave = 0.5 + 0.5 * torch.sin(phi * 2 * math.pi)
    cut = torch.sigmoid((wave - tone) * 25)
    img = fill(paper, s)
    over(img, ink, cut[None])
    gouge = (torch.rand(1, s, s, generator=g) < 0.02).float()
    return img * (1 - 0.3 * dilate(gouge, 1) * cut[None]) + grain(g, s, 0.04)


def _mosaic(g, s):
    """Mosaic: irregular tiles coloured from an underlying picture, each with its own shade, grey grout."""
    pal = jitter_palette(g, pick(g, _P["mosaic"]))
    lab, border = voronoi(g, s, ui(g, 60, 150), u(g, 0.6, 1.0))
    picture = lut(fbm(g, s, 2, 2), pal)
    n = int(lab.max()) + 1
    means = torch.zeros(n, 3).index_add_(0, lab.flatten(), picture.flatten(1).T)
    counts = torch.bincount(lab.flatten(), minlength=n).clamp(min=1)[:, None]
    tile = (means / counts) * (0.85 + 0.3 * torch.rand(n, 1, generator=g))
    img = tile[lab].permute(2, 0, 1).clamp(0, 1)
    grout = torch.sigmoid((u(g, 0.004, 0.01) - border) * s * 1.5)[None]
    over(img, torch.tensor([0.45, 0.43, 0.40]), grout)
    return img + grain(g, s, 0.05) * (1 - grout)


def _inkwash(g, s):
    """Sumi-e: graded grey washes, a few bold dry-brush strokes, rice paper fibres."""
    paper, ink = jitter_palette(g, pick(g, _P["inkwash"]), 0.02)
    img = fill(paper, s)
    for _ in range(ui(g, 2, 4)):
        m = torch.sigmoid((fbm(g, s, 2, 4) - u(g, 0.45, 0.65)) * u(g, 6, 14))
        over(img, ink, m * u(g, 0.2, 0.45))
    strokes(g, img, ui(g, 3, 7), ink[None], width=(0.015, 0.04), length=(0.15, 0.35), angle=None, bristle=1.0,
            dry=0.35, alpha=(0.85, 1.0))
    fibres = blur((torch.rand(1, s, s, generator=g) < 0.01).float(), 0.7) * 2
    return img * (1 - 0.15 * fibres.clamp(0, 1)) + grain(g, s, 0.02)


def _popart(g, s):
    """Pop art: bold flat regions, halftone dots whose size follows the shading, black outlines."""
    pal = jitter_palette(g, pick(g, _P["popart"]), 0.02)
    lab, _ = voronoi(g, s, ui(g, 4, 9), 1.0)
    cols = pal[torch.randint(0, 3, (int(lab.max()) + 1,), generator=g)]
    img = cols[lab].permute(2, 0, 1).clone()
    y, x = coords(s)
    a = math.radians(u(g, 15, 45))
    period = u(g, 0.03, 0.05)
    xr, yr = (x * math.cos(a) + y * math.sin(a)) / period, (-x * math.sin(a) + y * math.cos(a)) / period
    d = torch.sqrt((xr - xr.round()) ** 2 + (yr - yr.round()) ** 2)
    tone = fbm(g, s, 2, 2)[0]
    dots = torch.sigmoid((0.55 * tone - d) * s * period * 1.5)
    over(img, pal[4], dots[None] * 0.85)
    over(img, pal[4], dilate(edges(lab), 2))
    return img


def _marbling(g, s):
    """Paper marbling: bands of colour combed and swirled by a domain warp."""
    pal = jitter_palette(g, pick(g, _P["marbling"]))
    y, x = coords(s)
    w1, w2 = fbm(g, s, 3, 3)[0] - 0.5, fbm(g, s, 3, 3)[0] - 0.5
    k = u(g, 1.0, 2.5)
    xx, yy = x + k * w1 * 0.5, y + k * w2 * 0.5
    comb = torch.sin(xx * u(g, 20, 40)) * 0.03
    t = torch.frac((yy + comb) * u(g, 3, 7) + 0.2 * torch.sin(xx * 8))
    return lut(t[None], pal) + grain(g, s, 0.02)


# --- unseen artists ------------------------------------------------------------------------------------------------
def _pastel(g, s):
    """Soft pastel: chalky strokes broken by the tooth of a tinted paper."""
    pal = jitter_palette(g, pick(g, _P["pastel"]))
    img = fill(pal[0], s)
    tooth = fbm(g, s, 24, 2)
    y, x = coords(s)
    for _ in range(ui(g, 40, 70)):
        m, t, _ = capsule(x, y, u(g), u(g), u(g, 0, 3.2) * 0.3 + 0.6, u(g, 0.05, 0.14), u(g, 0.015, 0.035), s)
        chalk = (tooth > u(g, 0.3, 0.6)).float() * 0.8 + 0.2
        over(img, pal[ui(g, 1, pal.shape[0] - 1)], m * chalk * u(g, 0.6, 0.9))
    return img + grain(g, s, 0.04)


def _cubist(g, s):
    """Cubist facets: the picture cut by straight lines into planes, each shaded by its own gradient."""
    pal = jitter_palette(g, pick(g, _P["cubist"]))
    y, x = coords(s)
    lab = torch.zeros(s, s, dtype=torch.long)
    for k in range(ui(g, 6, 10)):
        a, c = u(g, 0, math.pi), u(g, 0.2, 0.8)
        lab = lab * 2 + ((x - 0.5) * math.cos(a) + (y - 0.5) * math.sin(a) + 0.5 > c).long()
    lab = torch.unique(lab, return_inverse=True)[1]
    n = int(lab.max()) + 1
    cols = pal[torch.randint(0, pal.shape[0], (n,), generator=g)]
    ang = torch.rand(n, generator=g) * 2 * math.pi
    grad = (x * torch.cos(ang)[lab] + y * torch.sin(ang)[lab]) * 0.5 + 0.75
    img = cols[lab].permute(2, 0, 1) * grad[None]
    over(img, pal[-1] * 0.5, dilate(edges(lab), 0) * 0.6)
    return img + grain(g, s, 0.03)


def _batik(g, s):
    """Batik: dyed fields with wax-resist motifs (rings and petals) and a fine network of wax cracks."""
    pal = jitter_palette(g, pick(g, _P["batik"]))
    img = lut(fbm(g, s, 2, 2), pal[[0, 3]])
    y, x = coords(s)
    for _ in range(ui(g, 3, 7)):
        cx, cy, r = u(g), u(g), u(g, 0.06, 0.18)
        d = torch.sqrt((x - cx) ** 2 + (y - cy) ** 2)
        petals = r * (1 + 0.25 * torch.cos(ui(g, 5, 9) * torch.atan2(y - cy, x - cx)))
        over(img, pal[1], torch.sigmoid((petals - d) * s)[None])
        over(img, pal[2], torch.sigmoid((petals * 0.45 - d) * s)[None])
    n = fbm(g, s, 10, 2)
    crack = torch.exp(-((n - 0.5) ** 2) / 0.0006)
    over(img, pal[0] * 0.6, crack * 0.7)
    return img + grain(g, s, 0.03)


def _gouache(g, s):
    """Gouache (the dev artist): opaque, matte, broad flat strokes with crisp edges, little bristle texture."""
    pal = jitter_palette(g, pick(g, _P["gouache"]))
    img = fill(pal[ui(g, 0, pal.shape[0] - 1)], s)
    strokes(g, img, ui(g, 14, 26), pal, width=(0.04, 0.08), length=(0.1, 0.25), angle=None, bristle=0.15,
            taper=False, alpha=(0.95, 1.0))
    return img + grain(g, s, 0.025)


PAINTERS = {"brushwork": _brushwork, "crosshatch": _crosshatch, "stipple": _stipple, "watercolour": _watercolour,
            "impasto": _impasto, "lineart": _lineart, "pixelart": _pixelart, "woodcut": _woodcut, "mosaic": _mosaic,
            "inkwash": _inkwash, "popart": _popart, "marbling": _marbling,
            "pastel": _pastel, "cubist": _cubist, "batik": _batik, "gouache": _gouache}
