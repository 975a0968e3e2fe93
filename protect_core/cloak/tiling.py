"""Geometry for cloaking large images: overlapping tiles and their seamless blending (padding odd sizes to the VAE
grid is :func:`protect_core.image_tensors.pad_to_multiple`).

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

from ..vae_tiling import Box, plan_tiles as tile_boxes, ramp as _ramp  # noqa: F401 (Box, tile_boxes: re-exported)


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
