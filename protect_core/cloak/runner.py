"""The Cloak Image runner: a list of images of any sizes in, a list of :class:`CloakResult` out.

It plans the work (pad each image to the VAE grid with reflection, cut images larger than the tile size into
overlapping tiles, group equal-size pieces into batches; a ``joint`` method gets each equal-size group whole),
runs :func:`protect_core.cloak.optimize.optimize` on each batch, blends tile deltas seamlessly
(:mod:`protect_core.cloak.tiling`), crops back to the original size and re-finalises each tiled or padded image
(8-bit levels, L-inf and perceptual budgets, see :func:`~protect_core.cloak.optimize.finalize`; a single unpadded
piece keeps optimize's own finalisation). Hosts and the CLI call
:func:`cloak_images`; ``on_result(index, result)`` fires as soon as an image is complete (so the CLI can save it).
Randomness: each batch is seeded from the run's seed and the identities (``keys``, default the positions) of the
pieces in it, and the batches are planned over every image, ``skip`` ones included (images whose outputs already
exist: a batch of only skipped images is not run, a mixed one is run whole and only its other images returned), so
a resumed run produces the bytes of an uninterrupted one.
Progress: every update of the run (each batch's :func:`~protect_core.cloak.optimize.progress_steps`: image steps and
the method's own prepare and training units) is announced before the first; a batch retried after out-of-memory
counts its updates once, and a re-planning adds (or removes) exactly the updates of the batches it changed.
Memory: a mode (:mod:`protect_core.memory`, default ``auto``) is chosen once per call from the largest batch; a
batch that runs out of memory is retried in the next lower mode (said in the log and in ``stats["memory"]``); when
that mode caps the tile size below the batch's pieces (``low``: 512 px), every unfinished image is planned again in
tiles of the new cap before the work goes on. Below ``low`` a :class:`~protect_core.memory.MemoryLimitError` names the
settings to change.
"""
from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from ..cli_support.paths import batch_seed
from ..image_tensors import pad_to_multiple, unpad
from ..memory import resolve_memory, run_with_fallback
from ..metrics import image_stats, perceptual_distance
from ..progress import Progress
from .base import CloakMethod, CloakSettings, get_method
from .optimize import finalize, optimize, progress_steps, validate_settings
from .tiling import Box, blend, tile_boxes

log = logging.getLogger(__name__)


@dataclass
class CloakResult:
    """One cloaked image (3, H, W) in [0, 1] on 8-bit levels, a visualisation of its delta, and its numbers."""

    image: torch.Tensor
    perturbation_view: torch.Tensor  # 0.5 + delta * 0.5 / eps: grey = untouched, black/white = full budget
    stats: dict


@dataclass
class _Piece:
    index: int           # which input image
    box: Box             # where in the padded image
    pixels: torch.Tensor  # (3, th, tw) crop of the padded image
    tied: bool


def default_tile(method: CloakMethod) -> int:
    """Largest side cloaked in one piece: 512 px for UNet-backward methods, 1024 for encoder-only ones."""
    return int(getattr(method, "default_tile", None) or (512 if method.uses_unet else 1024))


def perturbation_view(delta: torch.Tensor, eps: float) -> torch.Tensor:
    return (0.5 + delta * (0.5 / eps)).clamp(0, 1)


def _check_image(i: int, img) -> torch.Tensor:
    if not isinstance(img, torch.Tensor) or img.ndim != 3 or img.shape[0] != 3:
        shape = tuple(img.shape) if isinstance(img, torch.Tensor) else type(img).__name__
        raise ValueError(f"image {i}: expected a (3, H, W) tensor in [0, 1], got {shape}")
    if img.shape[1] < 1 or img.shape[2] < 1:
        raise ValueError(f"image {i}: empty image {tuple(img.shape)}")
    img = img.detach().float()
    if not bool(torch.isfinite(img).all()):
        raise ValueError(f"image {i}: contains NaN or infinite values")
    return img.clamp(0, 1)


def plan_pieces(images: Sequence[torch.Tensor], factor: int, tile: int, overlap: int,
                tied: Sequence[bool]) -> tuple[list[_Piece], list[tuple[int, int]], list[list[Box]]]:
    """Pieces to optimise, each image's padded size, and each image's tile boxes."""
    pieces, padded_sizes, all_boxes = [], [], []
    for i, img in enumerate(images):
        padded, _ = pad_to_multiple(img, factor)
        hp, wp = padded.shape[-2:]
        boxes = tile_boxes(hp, wp, tile, overlap) if max(hp, wp) > tile else [(0, 0, hp, wp)]
        for (top, left, th, tw) in boxes:
            pieces.append(_Piece(i, (top, left, th, tw), padded[:, top:top + th, left:left + tw], tied[i]))
        padded_sizes.append((hp, wp))
        all_boxes.append(boxes)
    return pieces, padded_sizes, all_boxes


def batch_pieces(pieces: list[_Piece], joint: bool, batch_size: int) -> list[list[_Piece]]:
    """Equal-size (and equally tied) pieces together; joint methods get each such group whole."""
    groups: dict[tuple, list[_Piece]] = {}
    for p in pieces:
        groups.setdefault((*p.pixels.shape[-2:], p.tied), []).append(p)
    if joint:
        return list(groups.values())
    return [g[i:i + batch_size] for g in groups.values() for i in range(0, len(g), batch_size)]


def cloak_images(host, images: Sequence[torch.Tensor], settings: CloakSettings, progress: Progress | None = None,
                 batch_size: int = 4, channel_tied: bool | Sequence[bool] = False, tile_size: int | None = None,
                 tile_overlap: int | None = None,
                 on_result: Callable[[int, CloakResult], None] | None = None, memory="auto",
                 keys: Sequence[str] | None = None, skip: Sequence[bool] | None = None) -> list[CloakResult | None]:
    """Cloak ``images`` (each (3, H, W) in [0, 1], any size) with ``settings.method``; results in input order.

    ``channel_tied``: one flag for all or one per image (greyscale art: one delta shared by the channels).
    ``tile_size``: largest side optimised in one piece (default :func:`default_tile`); ``tile_overlap`` defaults
    to a quarter tile. ``stats`` objective numbers are those of the batch(es) the image was optimised in (None with
    option ``objective_samples=0``); ``objective_seconds`` is this image's share of what evaluating them cost.
    ``memory``: "auto" (default), "fast", "balanced", "low" or a :class:`~protect_core.memory.MemoryMode`; a mode's
    ``tile`` caps the default tile size (an explicit ``tile_size`` wins).
    ``keys``: each image's identity for its seed (e.g. its relative path; default its position); ``skip``: images
    not wanted back (their result is None; see the module docstring for why they are still planned).
    """
    ref = get_method(settings.method)
    s = settings.resolved(ref)
    validate_settings(s)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    images = [_check_image(i, img) for i, img in enumerate(images)]
    if not images:
        return []
    tied = [bool(channel_tied)] * len(images) if isinstance(channel_tied, bool) else [bool(t) for t in channel_tied]
    if len(tied) != len(images):
        raise ValueError(f"channel_tied has {len(tied)} flags for {len(images)} images")
    keys = [str(i) for i in range(len(images))] if keys is None else [str(k) for k in keys]
    skip = [False] * len(images) if skip is None else [bool(x) for x in skip]
    if len(keys) != len(images) or len(skip) != len(images):
        raise ValueError(f"keys/skip need one entry per image ({len(images)})")
    f = host.vae_scale_factor
    side = min(default_tile(ref), max(max(img.shape[-2:]) for img in images))
    group = len(images) if ref.joint else min(batch_size, len(images))
    mode = resolve_memory(memory, host, ref, pixels=side * side * group)

    def tile_for(m) -> int:
        return (int(tile_size or min(default_tile(ref), m.tile or default_tile(ref))) // f) * f

    tile = tile_for(mode)
    if tile < 2 * f:
        raise ValueError(f"tile size must be at least {2 * f} px, got {tile_size}")
    overlap = tile // 4 if tile_overlap is None else int(tile_overlap)
    pieces, padded_sizes, boxes = plan_pieces(images, f, tile, overlap, tied)
    queue = [b for b in batch_pieces(pieces, ref.joint, batch_size) if not all(skip[p.index] for p in b)]
    progress = progress or Progress()
    units = progress_steps(ref, s)               # every update of one batch, prepare and training work included
    progress.add_total(len(queue) * units)       # the whole run, announced before the first step

    pending = [len(b) for b in boxes]
    overlaps = [overlap] * len(images)
    deltas: list[dict] = [dict() for _ in images]
    seconds, before, after = [0.0] * len(images), [[] for _ in images], [[] for _ in images]
    objective_seconds = [0.0] * len(images)
    memories: list[dict] = [{} for _ in images]
    results: list[CloakResult | None] = [None] * len(images)
    replanned: list[str] = []   # said in the stats of every image completed after a re-planning
    while queue:
        batch = queue.pop(0)
        x = torch.stack([p.pixels for p in batch])
        done, start, seen = progress.done, mode, []

        def attempt(m, x=x, batch=batch, start=start, seen=seen):
            if m is not start:
                seen.append(m.reason)                     # this batch's fallback messages so far
            if tile_size is None and tile_for(m) < max(x.shape[-2:]):
                raise _Replan(m, list(seen))              # a lower mode with a smaller tile cap: re-plan first
            progress.done = done                          # a retried batch counts its steps once
            method = get_method(s.method)                 # fresh state per batch (and per retry)
            seed = batch_seed(int(s.seed), [_piece_key(keys, boxes, p) for p in batch])
            return optimize(host, method, x, dataclasses.replace(s, seed=seed), progress,
                            channel_tied=batch[0].tied, memory=m, announced=True)

        work = f"cloaking {len(batch)} piece(s) of {x.shape[-1]}x{x.shape[-2]} px"
        try:
            (cloaked, info), mode, fallbacks = run_with_fallback(attempt, mode, host.device, work)
        except _Replan as replan:
            progress.done, mode = done, replan.mode
            tile = tile_for(mode)
            overlap = tile // 4 if tile_overlap is None else min(int(tile_overlap), tile // 2)
            redo = [i for i, r in enumerate(results) if r is None and not skip[i]]
            fresh, _, fresh_boxes = plan_pieces(images, f, tile, overlap, tied)
            for i in redo:   # unfinished images start again in the new tiles (one tile size per image)
                boxes[i], pending[i], overlaps[i] = fresh_boxes[i], len(fresh_boxes[i]), overlap
                deltas[i], before[i], after[i] = {}, [], []
            msg = (f"re-planned {len(redo)} image(s) into tiles of at most {tile} px for memory='{mode.name}'")
            log.warning(msg)
            replanned += replan.messages + [msg]
            remaining = len(queue) + 1
            unfinished = set(redo)
            queue = batch_pieces([p for p in fresh if p.index in unfinished], ref.joint, batch_size)
            progress.add_total((len(queue) - remaining) * units)
            continue
        info["memory"]["fallbacks"] = replanned + fallbacks
        for j, (p, c) in enumerate(zip(batch, cloaked.cpu())):
            deltas[p.index][p.box] = c - p.pixels
            seconds[p.index] += info["seconds"] / len(batch)
            objective_seconds[p.index] += info["objective_seconds"] / len(batch)
            memories[p.index] = info["memory"]
            before[p.index].append(info["objective_before"])
            after[p.index].append(info["objective_after"])
            pending[p.index] -= 1
            if pending[p.index] == 0 and skip[p.index]:
                deltas[p.index] = {}
            elif pending[p.index] == 0:
                i = p.index
                # one piece, no padding: optimize's finalised result is this image's, budgets and all
                single = len(boxes[i]) == 1 and padded_sizes[i] == tuple(images[i].shape[-2:])
                final = (c, None if info["perceptual"] is None else info["perceptual"][j]) if single else None
                results[i] = _assemble(images[i], deltas[i], boxes[i], padded_sizes[i], overlaps[i], s,
                                       {"seconds": seconds[i], "objective_before": _mean(before[i]),
                                        "objective_after": _mean(after[i]),
                                        "objective_seconds": objective_seconds[i], "memory": memories[i]},
                                       final)
                deltas[i] = {}
                if on_result is not None:
                    on_result(i, results[i])
    return results


def _piece_key(keys: list[str], boxes: list[list[Box]], p: _Piece) -> str:
    return keys[p.index] if len(boxes[p.index]) == 1 else f"{keys[p.index]}@{','.join(map(str, p.box))}"


class _Replan(Exception):
    """A batch's memory fallback lowered the tile cap below its pieces: plan the unfinished images again."""

    def __init__(self, mode, messages: list[str]):
        super().__init__(mode.reason)
        self.mode, self.messages = mode, messages


def _mean(values: list[float | None]) -> float | None:
    """Mean over an image's tiles; None when the objective was not evaluated (``objective_samples=0``)."""
    if any(v is None for v in values):
        return None
    return sum(values) / len(values)


def _assemble(clean: torch.Tensor, deltas: dict, boxes: list[Box], padded: tuple[int, int], overlap: int,
              s: CloakSettings, numbers: dict, final: tuple | None = None) -> CloakResult:
    """One image's result: blended tile deltas cropped and finalised again (blending and cropping can move the
    perceptual distance), or, for an unpadded single piece, ``final``: the pixels and distance optimize's own
    finalisation already gave (finalising them again would change nothing and pay the perceptual checks twice)."""
    if final is not None:
        cloaked, dist = final[0][None], None if final[1] is None else torch.tensor([float(final[1])])
    else:
        if len(boxes) == 1:
            delta = deltas[boxes[0]]
        else:
            delta = blend([deltas[b] for b in boxes], boxes, padded[0], padded[1], overlap)
        delta = unpad(delta, clean.shape[-2:])
        cloaked, dist = finalize(clean[None], delta[None], float(s.eps), s.perceptual_budget, s.perceptual_kind)
    with torch.no_grad():
        if dist is None:
            dist = perceptual_distance(cloaked, clean[None], s.perceptual_kind)
    stats = {**image_stats(clean[None], cloaked)[0], "perceptual": round(float(dist[0]), 6),
             **{k: (round(v, 6) if isinstance(v, float) else v) for k, v in numbers.items()},
             "tiles": len(boxes), "method": s.method, "settings": dataclasses.asdict(s)}
    cloaked = cloaked[0]
    return CloakResult(cloaked, perturbation_view(cloaked - clean, float(s.eps)), stats)
