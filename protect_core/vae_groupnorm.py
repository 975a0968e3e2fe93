"""Whole-image GroupNorm statistics for tiled VAE passes (:mod:`protect_core.vae_tiling`).

A GroupNorm normalises each group of channels by its mean and variance over the whole input. Run tile by tile, a
VAE would normalise every tile by that tile's own statistics, which shifts tone and contrast from tile to tile.
This module owns the fix, for any VAE whose norms are ``torch.nn.GroupNorm`` modules or subclasses (diffusers,
ldm, A1111/Forge and ComfyUI VAEs; matched by ``isinstance``, whatever their class):

* :func:`tile_stats` -- the VAE part (encoder or decoder) runs once over all the tiles of one image while a forward
  hook on every module (:func:`recording`: ``torch.nn.modules.module.register_module_forward_hook``, this thread
  only) takes each GroupNorm input's per-group moments, weighted by the tile's blend weights (the weights that sum
  to 1 over the tiles at every point of the image, brought to the input's resolution: :func:`weight_map`);
  :func:`combined` merges the tiles' moments into the whole image's mean and variance (float64). The first
  norm's statistics are then exactly the whole image's; deeper norms', whose inputs passed through
  per-tile-normalised layers, are a close estimate. Norms that ran more or less than once in some tile (one module
  shared by several layers) are left out: they keep per-tile statistics. A VAE without GroupNorm is found out
  after one tile, and nothing is overridden;
* :func:`overriding` -- while the tiles run for real, a forward hook on each GroupNorm of the statistics replaces
  its output by its input normalised with those statistics and the module's own eps, weight and bias (those it
  holds at call time, so ``functional_call`` views and ComfyUI's cast weights are used as they are).

Gradients are the exact gradients of the tiled function, statistics included (the untiled VAE's GroupNorms, too,
pass gradients through their statistics; treating them as constants was tried and pointed the gradients further
from the untiled VAE's than per-tile statistics do). Memory stays bounded by one tile: each tile's moments come
from :class:`TileMoments`, which runs the tile without gradients and, in backward, runs it again with gradients
(the statistics pass is checkpointed like the tiles), and the statistics are a handful of (1, groups) tensors
saved as inputs of the checkpointed tiles (:class:`protect_core.vae_tiling.ScopedTile`), so a tile's
recomputation during backward uses exactly the values of its forward. The cost: one more pass over the tiles
forward, and one more backward pass over them.

Every hook is removed in ``finally`` (success, error, cancellation): the host's model keeps no trace.

(A cheaper estimate, the VAE run once on the image downsampled to fit one tile, was tried and rejected: on the toy
VAE downsampling removes about half of the activations' variance, and its tiles came out further from the untiled
VAE than with per-tile statistics.)
"""
from __future__ import annotations

import contextlib
import math
import threading
from typing import Callable, Iterable, Iterator

import torch
import torch.nn.functional as F

#: per GroupNorm module: (mean, var) of its input over the whole image, each (1, groups), float64 (with autograd
#: history in the image's tiles when gradients are recorded)
Stats = dict[torch.nn.Module, tuple[torch.Tensor, torch.Tensor]]


def weight_map(cells: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """The blend weights ``cells`` (h, w) of a tile brought to the spatial samples of an activation of ``shape``
    (N, C, *spatial), flattened (float32): repeated (nearest) or averaged (area) to its (h', w'); a flattened 1-D
    spatial axis (attention norms) is taken as (h', w') of the tile's aspect; anything else: uniform."""
    spatial, (h, w) = tuple(shape[2:]), cells.shape
    if len(spatial) == 1:
        s = math.sqrt(spatial[0] / (h * w))
        spatial = (round(h * s), round(w * s))
        if spatial[0] * spatial[1] != shape[2]:
            return torch.ones(shape[2])
    if len(spatial) != 2:
        return torch.ones(math.prod(spatial))
    mode = "nearest" if spatial[0] >= h and spatial[1] >= w else "area"
    return F.interpolate(cells[None, None].float(), size=spatial, mode=mode).flatten()


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def moments(x: torch.Tensor, groups: int, weights: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Weighted per-group moments of ``x`` (N, C, ...) with spatial ``weights`` (flattened): total weight, mean and
    sum of weighted squared deviations, (N, groups) each, float64; differentiable in ``x``."""
    n, c = x.shape[:2]
    a = x.to(_compute_dtype(x)).reshape(n, groups, c // groups, -1)
    wt = weights.to(a.device, a.dtype)
    total = wt.sum() * (c // groups)
    mean = (a * wt).sum((-1, -2)) / total
    m2 = ((a - mean[..., None, None]).square() * wt).sum((-1, -2))
    return total.detach().double().expand_as(mean), mean.double(), m2.double()


def combined(parts: list[tuple[torch.Tensor, ...]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and (biased) variance, float64, of the union of parts given as :func:`moments` (Chan's pairwise rule);
    differentiable."""
    total = sum(p[0] for p in parts)
    mean = sum(p[0] * p[1] for p in parts) / total
    m2 = sum(p[2] + p[0] * (p[1] - mean).square() for p in parts)
    return mean, (m2 / total).clamp(min=0)


@contextlib.contextmanager
def recording(cells: torch.Tensor) -> Iterator[dict[torch.nn.Module, list]]:
    """Inside the block, each ``torch.nn.GroupNorm`` that runs in this thread appends its input's :func:`moments`
    (weighted by the tile's blend weights ``cells``) to its list in the yielded dict, one entry per call."""
    calls: dict[torch.nn.Module, list] = {}
    thread = threading.get_ident()

    def hook(module, args, output):
        if isinstance(module, torch.nn.GroupNorm) and threading.get_ident() == thread and args \
                and torch.is_tensor(args[0]):
            calls.setdefault(module, []).append(moments(args[0], module.num_groups, weight_map(cells, args[0].shape)))

    handle = torch.nn.modules.module.register_module_forward_hook(hook)
    try:
        yield calls
    finally:
        handle.remove()


class TileMoments(torch.autograd.Function):
    """Each GroupNorm's input moments (first call) in ``fn``'s run on one tile, as a flat tuple (mean, m2 per norm),
    differentiable in the tile. The forward runs without gradients and keeps only the tile; backward runs it again
    with gradients and back-propagates, both while recording (a VAE checkpointed layer by layer recomputes its
    layers, hooks included, inside that backward), so one tile's activations at a time. ``found`` (a list) receives
    ``(module, calls, total weight)`` per norm, in the order of the tuple."""

    @staticmethod
    def forward(ctx, piece, fn, cells, found):
        ctx.set_materialize_grads(False)
        ctx.fn, ctx.cells = fn, cells
        ctx.save_for_backward(piece)
        with torch.no_grad(), recording(cells) as calls:
            fn(piece)
        ctx.modules = list(calls)
        found[:] = [(m, len(c), c[0][0]) for m, c in calls.items()]
        return tuple(t for c in calls.values() for t in c[0][1:]) or (piece.new_zeros(()),)

    @staticmethod
    def backward(ctx, *grads):
        inp = ctx.saved_tensors[0].detach().requires_grad_(True)
        with torch.enable_grad(), recording(ctx.cells) as calls:
            ctx.fn(inp)
            outs = [t for m in ctx.modules for t in calls[m][0][1:]]
            pairs = [(o, g) for o, g in zip(outs, grads) if g is not None and o.requires_grad]
            if not pairs:
                return None, None, None, None
            (g,) = torch.autograd.grad([o for o, _ in pairs], inp, [g for _, g in pairs], allow_unused=True)
        return g, None, None, None


def tile_stats(fn: Callable, tiles: Iterable[tuple[torch.Tensor, torch.Tensor]], grad: bool = False) -> Stats:
    """Whole-image GroupNorm statistics of ``fn`` (a VAE part) from its run on every ``(piece, cell_weights)`` of
    one image, differentiable in the pieces when ``grad`` (:class:`TileMoments`); empty for a VAE without
    GroupNorm (found out after the first tile)."""
    parts: dict[torch.nn.Module, list] = {}
    skip: set[torch.nn.Module] = set()
    count = 0
    for piece, cells in tiles:
        found: list = []
        with torch.set_grad_enabled(grad):
            flat = iter(TileMoments.apply(piece, fn, cells, found))
        count += 1
        if not found:
            return {}            # no GroupNorm ran: nothing to estimate
        for module, calls, total in found:
            mean, m2 = next(flat), next(flat)
            parts.setdefault(module, []).append((total, mean, m2))
            if calls != 1:       # a shared norm: its calls cannot be told apart
                skip.add(module)
    return {m: combined(p) for m, p in parts.items() if m not in skip and len(p) == count}


def normalized(module: torch.nn.GroupNorm, x: torch.Tensor, mean: torch.Tensor, var: torch.Tensor) -> torch.Tensor:
    """``module``'s output for ``x`` (N, C, ...) with the given per-group statistics instead of ``x``'s own
    (float32, float64 for a float64 ``x``; the same eps, weight and bias)."""
    shape, groups, dt = x.shape, module.num_groups, _compute_dtype(x)
    mean, var = mean.to(x.device, dt), var.to(x.device, dt)
    y = (x.to(dt).reshape(shape[0], groups, -1) - mean[..., None]) * torch.rsqrt(var[..., None] + module.eps)
    y = y.reshape(shape)
    affine = (1, shape[1]) + (1,) * (x.dim() - 2)
    if getattr(module, "weight", None) is not None:
        y = y * module.weight.to(y.device, dt).reshape(affine)
    if getattr(module, "bias", None) is not None:
        y = y + module.bias.to(y.device, dt).reshape(affine)
    return y


@contextlib.contextmanager
def overriding(stats: Stats) -> Iterator[None]:
    """Inside the block, each GroupNorm of ``stats`` outputs its input normalised with its statistics (in the dtype
    of its own output); the hooks are removed on exit, however it ends."""
    def hook(module, args, output):
        if not args or not torch.is_tensor(args[0]) or not torch.is_tensor(output):
            return None
        return normalized(module, args[0], *stats[module]).to(output.dtype)

    handles = []
    try:
        for module in stats:
            handles.append(module.register_forward_hook(hook))
        yield
    finally:
        for h in handles:
            h.remove()
