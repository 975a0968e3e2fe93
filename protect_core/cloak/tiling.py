"""Geometry for cloaking large or odd-sized images: padding to the VAE grid, overlapping tiles, seamless blending.

A large image is cut into overlapping tiles (each a multiple of the VAE factor), each tile is cloaked on its own,
and the tiles' *deltas* are blended with feathered weights (linear ramps of width ``overlap`` toward every edge
that borders another tile, product of the x and y ramps). Every output pixel is a convex combination of tile
deltas (weights > 0, normalised to sum 1), so

* if every tile delta satisfies ``|d| <= eps`` and ``clean + d in [0, 1]``, so does the blend (both sets are
  convex), i.e. the L-inf budget survives blending;
* the blend changes by at most about ``|d_a - d_b| / overlap`` between neighbouring pixels where two tiles meet,
  instead of a hard jump at a cut line: no seams.

The tile plan and the ramps are :mod:`protect_core.vae_tiling`'s (the same geometry, in pixels here).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..vae_tiling import Box, axis_starts as tile_starts, plan_tiles as tile_boxes, ramp as _ramp  # noqa: F401


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
