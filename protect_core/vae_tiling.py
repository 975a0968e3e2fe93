"""VAE tiling: the host's VAE encodes and decodes a large image tile by tile, for the memory modes.

A memory mode's ``vae_tile`` (:class:`protect_core.memory.MemoryMode`; 512 px in ``low``, off in ``fast`` and
``balanced``) caps the side, in image pixels, that the VAE sees at once. :meth:`HostModel.posterior
<protect_core.host.HostModel.posterior>` (so also ``encode``) and :meth:`~protect_core.host.HostModel.decode` read
it from the host's active memory session and run the adapter's VAE through :func:`run_tiled`; every host adapter
inherits this, and no block has to know.

How (pure functions, planned on the latent grid so that image tiles stay aligned to the VAE factor ``f``):

* :func:`plan_tiles` cuts the latent grid into tiles of at most ``tile // f`` cells per side, evenly spread, each
  overlapping its neighbours by at least a quarter tile (:data:`OVERLAP`); a side that fits is taken whole;
* each tile's input (pixels ``f`` times the cells for encode, the cells themselves for decode) goes through the
  VAE on its own, one image of the batch at a time, and the outputs are blended with :func:`blend_weights`:
  linear ramps across each overlap toward every edge that borders another tile (product of the y and x ramps),
  normalised to sum to 1 at every output sample, so overlaps fade into each other without seams; the decoder's
  output tiles (and ramps) are ``f`` times the latent tiles;
* GroupNorm statistics are the whole image's (:mod:`protect_core.vae_groupnorm`): before the tiles of an image run
  for real, they run once while every GroupNorm's per-group moments are taken, weighted by the tiles' blend
  weights, and merged into the whole image's mean and variance; the tiles then run with hooks that normalise each
  GroupNorm by those statistics, so tone and contrast no longer drift from tile to tile (one more pass over the
  tiles, forward and backward). ``norm_stats="tile"`` keeps the tiles' own statistics (the previous behaviour, for
  comparison); a VAE without GroupNorm runs as before (after one probing tile);
* the whole thing is differentiable (IMPRESS and the cloak methods back-propagate through it), statistics
  included. While gradients are recorded each tile (and each tile of the statistics pass) is checkpointed: only
  the tile's input is kept and its activations are recomputed during backward, one tile at a time, so the VAE's
  activation memory is bounded by one tile in the backward pass as well as in the forward pass. With statistics,
  the tile is a :class:`ScopedTile` (the statistics are its inputs, so the recomputation uses the forward's
  values): its forward, its recomputation *and its backward* run inside the GroupNorm hooks, because a VAE
  checkpointed layer by layer (``low``'s ``checkpoint_vae``, nested in the tiles) recomputes its layers during
  backward, after the tile's forward has returned (``torch.utils.checkpoint`` around hooks set in the forward
  alone fails there); without statistics, ``torch.utils.checkpoint`` (non-reentrant) as before;
* an image that fits in one tile (and any call without a memory session asking for tiling) runs the VAE exactly as
  before: bit-identical results.

Tiled encode/decode is an *approximation*: the VAE's receptive field crosses tile borders (3x3 convolutions
stacked through the encoder and decoder, and the mid-block's self-attention, which sees the whole image untiled
but only its tile here), and the deeper layers' whole-image GroupNorm statistics are estimated from tiles. The
overlaps and ramps keep the difference small and seam-free; tests/test_vae_tiling.py measures it on the trained
toy VAE (tiled vs untiled decode well below the VAE's own reconstruction error, closer with whole-image statistics
than with per-tile ones, and far closer than tiles cut without overlap) and checks that it is exact for a VAE
whose receptive field stays inside a tile (with at most one GroupNorm).
"""
from __future__ import annotations

import math
from typing import Callable

import torch
from torch.utils.checkpoint import checkpoint

from .vae_groupnorm import overriding, tile_stats

#: minimum overlap between neighbouring tiles, as a fraction of the tile side
OVERLAP = 0.25

Box = tuple[int, int, int, int]  # top, left, height, width (latent cells)


def tile_cells(host) -> int | None:
    """Latent cells per tile side asked for by ``host``'s active memory session (its ``vae_tile`` px rounded down to
    the VAE grid; None: no tiling)."""
    mode = getattr(getattr(host, "_memory", None), "mode", None)
    side = getattr(mode, "vae_tile", None)
    if not side:
        return None
    return max(1, int(side) // int(host.vae_scale_factor))


def overlap_cells(cells: int) -> int:
    """Overlap (cells) used with tiles of ``cells`` cells: a quarter tile, at least one cell when the tile has
    two or more."""
    return min(cells - 1, max(1, round(cells * OVERLAP))) if cells > 1 else 0


def axis_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Evenly spread starts of tiles of ``tile`` cells covering ``length`` cells, neighbours overlapping by at least
    ``overlap`` cells; ``[0]`` when it fits."""
    if length <= tile:
        return [0]
    if not 0 <= overlap < tile:
        raise ValueError(f"tile overlap must be in [0, tile), got {overlap} for tile {tile}")
    n = math.ceil((length - tile) / (tile - overlap)) + 1
    return [round(i * (length - tile) / (n - 1)) for i in range(n)]


def plan_tiles(height: int, width: int, tile: int, overlap: int) -> list[Box]:
    """Row-major tile boxes (cells) covering a ``height`` x ``width`` grid."""
    th, tw = min(height, tile), min(width, tile)
    return [(y, x, th, tw) for y in axis_starts(height, tile, overlap) for x in axis_starts(width, tile, overlap)]


def ramp(n: int, start: int, total: int, overlap: int) -> torch.Tensor:
    """1-D blend weights (float64, all > 0) of a tile of ``n`` samples at ``start`` in an axis of ``total``: 1
    inside, a linear ramp over ``overlap`` samples toward each edge that borders another tile (not the image's)."""
    pos = torch.arange(n, dtype=torch.float64) + 0.5
    far = torch.full((n,), float("inf"), dtype=torch.float64)
    lo = pos if start > 0 else far
    hi = (n - pos) if start + n < total else far
    return (torch.minimum(lo, hi) / max(overlap, 1)).clamp(max=1.0)


def blend_weights(boxes: list[Box], height: int, width: int, overlap: int, unit: int = 1) -> list[torch.Tensor]:
    """Per-tile 2-D weights (float64, in output samples: ``unit`` per cell), normalised so that the tiles' weights
    sum to exactly 1 at every sample of the ``height`` x ``width`` cell grid."""
    H, W, o = height * unit, width * unit, overlap * unit
    raw = [torch.outer(ramp(h * unit, y * unit, H, o), ramp(w * unit, x * unit, W, o)) for y, x, h, w in boxes]
    total = torch.zeros(H, W, dtype=torch.float64)
    for (y, x, h, w), r in zip(boxes, raw):
        total[y * unit:(y + h) * unit, x * unit:(x + w) * unit] += r
    return [r / total[y * unit:(y + h) * unit, x * unit:(x + w) * unit] for (y, x, h, w), r in zip(boxes, raw)]


class ScopedTile(torch.autograd.Function):
    """``fn(piece)`` for one tile with its GroupNorms normalised by the whole-image statistics ``values`` (mean,
    var per module of ``modules``), differentiable in the tile and in the statistics; forward *and* backward run
    inside the GroupNorm hooks (:func:`~protect_core.vae_groupnorm.overriding`).

    ``keep=False`` (checkpointed): the forward runs without gradients and keeps only ``piece`` and the statistics;
    backward recomputes ``fn`` with gradients and back-propagates through it. ``keep=True``: the forward records
    the tile's graph (every activation kept, as long as the caller's graph) and backward runs through it. Either
    way any recomputation nested in ``fn`` (checkpointed layers) happens inside the hooks too. Outputs: a tuple."""

    @staticmethod
    def forward(ctx, piece, fn, keep, modules, *values):
        ctx.set_materialize_grads(False)
        ctx.fn, ctx.modules, ctx.graph = fn, modules, None
        if keep:
            inp, leaves = _leaves(piece, values)
            with torch.enable_grad(), overriding(_stats(modules, leaves)):
                outs = _as_tuple(fn(inp))
            ctx.graph = (inp, leaves, outs)
            return tuple(o.detach() for o in outs)
        ctx.save_for_backward(piece, *values)
        with torch.no_grad(), overriding(_stats(modules, values)):
            return tuple(o.detach() for o in _as_tuple(fn(piece)))

    @staticmethod
    def backward(ctx, *grads):
        if ctx.graph is None:
            piece, *values = ctx.saved_tensors
            (inp, leaves), outs = _leaves(piece, values), None
        else:
            inp, leaves, outs = ctx.graph
        none = (None,) * (3 + len(leaves))
        with torch.enable_grad(), overriding(_stats(ctx.modules, leaves)):
            outs = _as_tuple(ctx.fn(inp)) if outs is None else outs
            pairs = [(o, g) for o, g in zip(outs, grads) if g is not None and o.requires_grad]
            if not pairs:
                return (None, *none)
            got = torch.autograd.grad([o for o, _ in pairs], [inp, *leaves], [g for _, g in pairs],
                                      retain_graph=ctx.graph is not None, allow_unused=True)
        return (got[0], None, None, None, *got[1:])


def _leaves(piece: torch.Tensor, values) -> tuple[torch.Tensor, list[torch.Tensor]]:
    return piece.detach().requires_grad_(True), [v.detach().requires_grad_(True) for v in values]


def _stats(modules: list, values) -> dict:
    values = list(values)
    return dict(zip(modules, zip(values[0::2], values[1::2])))


def _as_tuple(out) -> tuple:
    return out if isinstance(out, tuple) else (out,)


def tile_runner(fn: Callable, stats: dict, grad: bool, checkpoint_tiles: bool) -> Callable:
    """How one tile runs: ``fn`` under the GroupNorm overrides of ``stats`` (none: plainly), checkpointed when
    ``grad`` and ``checkpoint_tiles``; returns a tuple."""
    if not stats:
        if grad and checkpoint_tiles:
            return lambda piece: _as_tuple(checkpoint(fn, piece, use_reentrant=False))
        return lambda piece: _as_tuple(fn(piece))
    if grad:
        modules = list(stats)
        values = [t for m in modules for t in stats[m]]
        return lambda piece: ScopedTile.apply(piece, fn, not checkpoint_tiles, modules, *values)

    def plain(piece):
        with overriding(stats):
            return _as_tuple(fn(piece))

    return plain


def run_tiled(fn: Callable, x: torch.Tensor, cells: int | None, in_unit: int, out_unit: int,
              overlap: int | None = None, checkpoint_tiles: bool = True, norm_stats: str = "image"):
    """``fn(x)`` computed tile by tile and blended; ``fn`` maps (B, C, h, w) to a tensor or tuple of tensors
    (B, C', h * out_unit / in_unit, w * out_unit / in_unit). ``x``'s grid has ``H / in_unit`` x ``W / in_unit``
    cells; tiles are ``cells`` cells per side (None, or a grid that fits: plainly ``fn(x)``), overlapping by
    ``overlap`` cells (default :func:`overlap_cells`). GroupNorm statistics: ``"image"`` the whole image's (merged
    from a first pass over the tiles), ``"tile"`` each tile's own. Differentiable; ``checkpoint_tiles`` recomputes
    each tile in backward instead of keeping its activations."""
    if norm_stats not in ("image", "tile"):
        raise ValueError(f"norm_stats must be 'image' or 'tile', got {norm_stats!r}")
    gh, gw = x.shape[-2] // in_unit, x.shape[-1] // in_unit
    if cells is None or (gh <= cells and gw <= cells):
        return fn(x)
    overlap = overlap_cells(cells) if overlap is None else int(overlap)
    boxes = plan_tiles(gh, gw, cells, overlap)
    weights = blend_weights(boxes, gh, gw, overlap, out_unit)
    cell_weights = blend_weights(boxes, gh, gw, overlap)     # the same ramps per latent cell, for tile_stats
    grad = torch.is_grad_enabled() and x.requires_grad
    images, single = [], []

    def tracked(t):   # fn, noting whether it returns one tensor or a tuple
        out = fn(t)
        single[:] = [not isinstance(out, tuple)]
        return out

    def piece(b: int, box: Box) -> torch.Tensor:
        y, x0, h, w = box
        return x[b:b + 1, :, y * in_unit:(y + h) * in_unit, x0 * in_unit:(x0 + w) * in_unit]

    for b in range(x.shape[0]):   # one image at a time: the VAE holds one tile of one image
        stats = tile_stats(fn, ((piece(b, box), wt) for box, wt in zip(boxes, cell_weights)), grad) \
            if norm_stats == "image" else {}
        run = tile_runner(tracked, stats, grad, checkpoint_tiles)
        acc = None
        for (y, x0, h, w), wt in zip(boxes, weights):
            outs = run(piece(b, (y, x0, h, w)))
            if acc is None:
                acc = [o.new_zeros(1, o.shape[1], gh * out_unit, gw * out_unit) for o in outs]
            box = (slice(None), slice(None), slice(y * out_unit, (y + h) * out_unit),
                   slice(x0 * out_unit, (x0 + w) * out_unit))
            for a, o in zip(acc, outs):
                a[box] = a[box] + o * wt.to(o.device, o.dtype)
        images.append(acc)
    merged = tuple(torch.cat(parts) for parts in zip(*images))
    return merged[0] if single[0] else merged
