"""Out of memory: recognising it, freeing what can be freed, and retrying a job in the next lower memory mode.

:func:`run_with_fallback` runs ``fn(mode)``; on an out-of-memory error (``torch.cuda.OutOfMemoryError``,
``RuntimeError('... out of memory ...')``, ``MemoryError``: :func:`is_oom`) it frees cached memory, retries with
``mode.lower()`` and says so (log + returned messages); below ``low`` it raises :class:`MemoryLimitError`, a
:class:`~protect_core.errors.StyleCloakError` naming the settings to change (:func:`limit_message`). Any other error
is re-raised unchanged. The modes themselves live in :mod:`protect_core.memory`, which re-exports these names.
"""
from __future__ import annotations

import dataclasses
import gc
import logging
from typing import TYPE_CHECKING, Callable

import torch

from .errors import StyleCloakError

if TYPE_CHECKING:   # no runtime import: protect_core.memory imports this module
    from .memory import MemoryMode

log = logging.getLogger(__name__)

_OOM_TEXT = ("out of memory", "can't allocate memory", "cannot allocate memory", "not enough memory")


class MemoryLimitError(StyleCloakError):
    """Out of memory even in the lowest memory mode; the message names what to change."""


def is_oom(exc: BaseException) -> bool:
    """True for CUDA/CPU/MPS out-of-memory errors."""
    if isinstance(exc, MemoryError):
        return True
    oom_cls = getattr(torch.cuda, "OutOfMemoryError", None)
    if oom_cls is not None and isinstance(exc, oom_cls):
        return True
    return isinstance(exc, RuntimeError) and any(t in str(exc).lower() for t in _OOM_TEXT)


def free_memory(device=None) -> None:
    """Collect garbage and, on CUDA, hand the allocator's cached blocks back."""
    gc.collect()
    if torch.cuda.is_available() and (device is None or torch.device(device).type == "cuda"):
        torch.cuda.empty_cache()


def limit_message(mode: "MemoryMode", device, work: str = "") -> str:
    """The cloak's message when even ``mode`` (the lowest) ran out of memory."""
    return (f"out of memory on {device}{' ' + work if work else ''} even with memory='{mode.name}'. "
            "Lower the batch size (--batch-size), the tile size (--tile, e.g. 384), the image size, "
            "load the model in half precision (--dtype fp16), or run on the CPU (--device cpu).")


def run_with_fallback(fn: Callable[["MemoryMode"], object], mode: "MemoryMode", device, work: str = ""):
    """``fn(mode)``; on out-of-memory retry with lower modes. Returns ``(result, mode used, fallback messages)``;
    raises :class:`MemoryLimitError` when even ``low`` runs out."""
    messages = []
    while True:
        failed = False
        try:
            return fn(mode), mode, messages
        except Exception as e:  # noqa: BLE001 (only out-of-memory is handled; everything else re-raised)
            if not is_oom(e):
                raise
            failed = True
        if failed:  # outside the except block, so the traceback's frames (and their tensors) are freed
            free_memory(device)
            lower = mode.lower()
            if lower is None:
                raise MemoryLimitError(limit_message(mode, device, work)) from None
            msg = (f"out of memory on {device}{' ' + work if work else ''} with memory='{mode.name}'; "
                   f"retrying with memory='{lower.name}'")
            log.warning(msg)
            messages.append(msg)
            mode = dataclasses.replace(lower, reason=msg)
