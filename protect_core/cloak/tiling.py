"""Geometry for cloaking large or odd-sized images: padding to the VAE grid, overlapping tiles, seamless blending.

A large image is cut into overlapping tiles (each a multiple of the VAE factor), each tile is cloaked on its own,
and the tiles' *deltas* are blended with feathered weights (linear ramps of width ``overlap`` toward every edge
that borders another tile, product of the x and y ramps). Every output pixel is a convex combination of tile
deltas (weights > 0, normalised to sum 1), so

* if every tile delta satisfies ``|d| <= eps`` and ``clean + d in [0, 1]``, so does the blend (both sets are
  convex), i.e. the L-inf budget survives blending;
* the blend changes by at most about ``|d_a - d_b| / overlap`` between neighbouring pixels where two tiles meet,
  instead of a hard jump at a cut line: no seams.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

Box = tuple[int, int, int, int]  # top, left, height, width


def pad_to_multiple(x: torch.Tensor, multiple: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """Pad (..., H, W) at the bottom/right to multiples of ``multiple`` (reflect; replicate when too small)."""
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if not ph and not pw:
        return x, (h, w)
    mode = "reflect" if ph < h and pw < w else "replicate"
    batched = x if x.ndim == 4 else x.unsqueeze(0)
    out = F.pad(batched, (0, pw, 0, ph), mode=mode)
    return (out if x.ndim == 4 else out[0]), (h, w)


def unpad(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    return x[..., : size[0], : size[1]]


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Evenly spread starts of tiles of ``tile`` px covering ``length`` with at least ``overlap`` px overlap."""
    if length <= tile:
        return [0]
    if not 0 <= overlap < tile:
        raise ValueError(f"tile overlap must be in [0, tile), got {overlap} for tile {tile}")
    n = math.ceil((length - tile) / (tile - overlap)) + 1
    return [round(i * (length - tile) / (n - 1)) for i in range(n)]


def tile_boxes(h: int, w: int, tile: int, overlap: int) -> list[Box]:
    """Row-major tile boxes; a side shorter than ``tile`` is taken whole."""
    th, tw = min(h, tile), min(w, tile)
    return [(y, x, th, tw) for y in tile_starts(h, tile, overlap) for x in tile_starts(w, tile, overlap)]


def _ramp(n: int, start: int, total: int, overlap: int) -> torch.Tensor:
    pos = torch.arange(n, dtype=torch.float64) + 0.5
    far = torch.full((n,), float("inf"), dtype=torch.float64)
    d_lo = pos if start > 0 else far                      # only edges that touch another tile are feathered
    d_hi = (n - pos) if start + n < total else far
    return (torch.minimum(d_lo, d_hi) / max(overlap, 1)).clamp(max=1.0)


def feather_weights(box: Box, h: int, w: int, overlap: int) -> torch.Tensor:
    """(th, tw) blending weights of one tile, in (0, 1]."""
    top, left, th, tw = box
    return torch.outer(_ramp(th, top, h, overlap), _ramp(tw, left, w, overlap)).float()


def blend(deltas: list[torch.Tensor], boxes: list[Box], h: int, w: int, overlap: int) -> torch.Tensor:
    """Feathered, normalised blend of per-tile deltas (C, th, tw) into one (C, h, w) delta."""
    if len(deltas) != len(boxes) or not deltas:
        raise ValueError("blend needs one delta per tile box")
    c = deltas[0].shape[0]
    acc = torch.zeros(c, h, w, dtype=torch.float64)
    wsum = torch.zeros(1, h, w, dtype=torch.float64)
    for d, box in zip(deltas, boxes):
        top, left, th, tw = box
        wt = feather_weights(box, h, w, overlap).double()
        acc[:, top:top + th, left:left + tw] += d.detach().double().cpu() * wt
        wsum[:, top:top + th, left:left + tw] += wt
    if bool((wsum <= 0).any()):
        raise ValueError("tile boxes do not cover the image")
    return (acc / wsum).float().to(deltas[0].device)
