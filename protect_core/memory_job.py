"""Memory modes for the blocks other than cloak (purify, mimicry): choose, apply, fall back on out-of-memory.

The same user-facing behaviour as the cloak runner, on :mod:`protect_core.memory`'s parts: ``memory="auto" |
"fast" | "balanced" | "low"`` (or a :class:`~protect_core.memory.MemoryMode`) is resolved once per call from the
job's size, applied with :func:`~protect_core.memory.memory_session` inside ``host.borrowed()``, and an
out-of-memory error restarts the whole job in the next lower mode (:func:`~protect_core.memory.run_with_fallback`:
logged and recorded in ``fallbacks``). Below ``low`` a :class:`~protect_core.memory.MemoryLimitError` names the
settings of *this* block to change.

What a job asks of memory is a list of :class:`MemoryJob` (one per kind of work it does): ``unet_backward`` for
work that back-propagates through the UNet (the mimicry fine-tune), False for work that back-propagates through the
VAE only (IMPRESS) or runs inference (diffusion purifiers, generation); ``pixels`` is the image pixels the model
sees at once; ``image_pixels`` (optional) is one image's pixels as the VAE sees it, so that the estimate for ``low``
counts only one VAE tile of a larger image (:func:`~protect_core.memory.estimate_bytes`; unknown: the whole of
``pixels``). ``auto`` takes the lowest of the modes the jobs resolve to. Score distillation (a cloak-only
approximation) and the cloak's tile cap never apply here; the VAE tiling of ``low`` (``vae_tile``) does.

A call made while the caller already holds a memory session on the host (``with memory_session(...)``, e.g.
benchmarks/perf.py, or the mimicry runner calling its own fine-tune) with ``memory="auto"`` or ``None`` runs in
that session as it is: no second session and no fallback of its own (the session's owner decides).
(Shared by purify and mimicry.)
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from .memory import (MODES, MemoryLimitError, MemoryMode, memory_mode, memory_session, resolve_memory,
                      run_with_fallback)


@dataclass(frozen=True)
class MemoryJob:
    """One kind of work, as :func:`protect_core.memory.resolve_memory` reads it (``unet_backward``, ``pixels``,
    ``image_pixels``)."""

    unet_backward: bool
    pixels: int
    allows_score_distillation: bool = False   # cloak-only: never here
    image_pixels: int | None = None           # one image's H x W as the VAE sees it (None: unknown)


def block_mode(mode: MemoryMode) -> MemoryMode:
    """``mode`` without the cloak-only parts (score distillation, the cloak's tile cap)."""
    return dataclasses.replace(mode, score_distillation=False, tile=None)


def resolve_jobs(memory, host, jobs: Sequence[MemoryJob], available: int | None = None) -> MemoryMode:
    """One concrete mode for all ``jobs``: the lowest that any of them resolves to (``auto``), or ``memory``.
    ``available``: free bytes to plan for (default: the host device's, :func:`~protect_core.memory.available_bytes`)."""
    picked = [resolve_memory(memory, host, job, pixels=max(1, int(job.pixels)), available=available,
                             image_pixels=None if job.image_pixels is None else max(1, int(job.image_pixels)))
              for job in jobs]
    if not picked:
        picked = [resolve_memory(memory, host, MemoryJob(False, 1), pixels=1, available=available)]
    lowest = max(picked, key=lambda m: MODES.index(m.name) if m.name in MODES else -1)
    return block_mode(lowest)


def active_memory(host):
    """The memory session the caller holds on ``host`` (an ActiveMemory), or None."""
    return getattr(host, "_memory", None) if host is not None else None


def unscale_grads(active, grads: Sequence[torch.Tensor]) -> bool:
    """Undo the session's loss scale on ``grads`` in place; False when they overflowed (skip this step: the scale
    was lowered, see ActiveMemory.unscale). Full precision (scale 1, no autocast): nothing to do."""
    if active is None or (active.autocast_dtype is None and active.loss_scale == 1.0):
        return True
    for g in grads:
        if g is not None and not bool(torch.isfinite(g).all()):
            return active.unscale(g) is not None   # lowers the scale (or raises below 1); None here
    for g in grads:
        if g is not None:
            g.div_(active.loss_scale)
    return True


def run_in_memory_mode(host, memory, fn: Callable[[], object], jobs: Sequence[MemoryJob], *, work: str,
                       advice: str, progress=None) -> tuple[object, dict]:
    """``fn()`` inside ``host.borrowed()`` and a memory session; returns ``(result, memory record)``.

    ``memory``: "auto", "fast", "balanced", "low", a MemoryMode or dict, or None (no session of its own). On
    out-of-memory ``fn`` runs again from the start in the next lower mode (``progress.done`` is rewound so the
    retried steps count once); ``fn`` must not write anything the caller can see before it returns. Below ``low``:
    :class:`MemoryLimitError` "out of memory on <device> <work> even with memory='low'. <advice>".
    """
    spec = None if memory is None else memory_mode(memory)   # a bad name fails here, before any work
    outer = active_memory(host)
    if spec is None or (spec.name == "auto" and outer is not None):
        with host.borrowed():
            result = fn()
        if outer is None:
            return result, {"name": "fast", "fallbacks": [], "note": "no memory session: the host as it is"}
        return result, {**outer.describe(), "fallbacks": [], "note": "the caller's memory session"}
    mode = resolve_jobs(spec, host, jobs)
    done = None if progress is None else progress.done

    def attempt(m: MemoryMode):
        if progress is not None:
            progress.done = done
        with host.borrowed(), memory_session(host, block_mode(m)) as active:
            out = fn()
        return out, active.describe()

    try:
        (result, record), _, fallbacks = run_with_fallback(attempt, mode, host.device, work)
    except MemoryLimitError:
        failed = True
    else:
        failed = False
    if failed:   # this block's own advice instead of the cloak's flags (raised outside the except: no context)
        raise MemoryLimitError(f"out of memory on {host.device} {work} even with memory='low'. {advice}") from None
    record["fallbacks"] = fallbacks
    return result, record
