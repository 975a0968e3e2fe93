"""Progress reporting and cooperative cancellation shared by every block and every host.

A block receives a :class:`Progress` and calls ``progress.step(...)`` once per unit of work; that call reports to
the host's progress bar (ComfyUI ProgressBar, A1111 shared.state, the CLI's tqdm) and raises
:class:`~protect_core.errors.Cancelled` as soon as the user has asked to stop. Hosts plug in by passing
``on_step`` and ``should_stop`` callables; no block knows which host it runs in.

What counts as a step: one unit of model work -- an image step of a cloak, one surrogate or LoRA training step
inside it, one DDIM step, one fine-tune step, one VAE pass over a batch of a block's own images, one embedding of an
image set -- so the bar never waits on more than one such unit. A block announces every step it will take with
:meth:`Progress.add_total` before the first one (the bar's total is right from the start and only grows when the
work itself is re-planned), reports each with :meth:`Progress.step`, and ends on exactly its total;
:meth:`Progress.catch_up` is the safety net that moves a bar a block under-reported to where it must be.
Updates that are not the block's main step carry a ``phase`` in ``info`` (``"surrogate"``, ``"target"``,
``"robust"``, ``"encode"``, ``"ceiling"``, ``"embed"`` ...); hosts show every update alike.
"""
from __future__ import annotations

import threading
from typing import Callable, Optional

from .errors import Cancelled


class CancelToken:
    """A thread-safe stop flag the user (or a host's interrupt button) can set."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def cancel(self) -> None:
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()


class Progress:
    """Counts steps of one job, forwards them to a callback and checks for cancellation.

    ``on_step(done, total, info)`` receives the step count and a small dict (e.g. ``{"loss": 0.12,
    "preview": tensor}``); ``should_stop()`` returns True when the job must end.
    """

    def __init__(self, total: int = 0, on_step: Optional[Callable[[int, int, dict], None]] = None,
                 should_stop: Optional[Callable[[], bool]] = None, cancel: CancelToken | None = None):
        self.total, self.done = total, 0
        self._on_step, self._should_stop, self._cancel = on_step, should_stop, cancel

    def check(self) -> None:
        """Raise :class:`Cancelled` if a stop was requested."""
        if (self._cancel is not None and self._cancel.cancelled) or (self._should_stop and self._should_stop()):
            raise Cancelled("cancelled by the user; nothing was written")

    def add_total(self, n: int) -> None:
        self.total += n

    def step(self, n: int = 1, **info) -> None:
        self.check()
        self.done += n
        if self._on_step is not None:
            self._on_step(self.done, self.total, info)

    def holding_last(self, n: int, **info) -> "ProgressView":
        """A view for a helper that makes ``n`` step() calls and then still works (a sampler's VAE decode after its
        last DDIM step): the n-th update waits for :meth:`ProgressView.release`, so that work is inside the bar."""
        return ProgressView(self, info, hold=n)

    def catch_up(self, target: int, **info) -> None:
        """Jump to ``target`` in one update if fewer steps were reported (a block's count was off); never back."""
        if self.done < target:
            self.step(target - self.done, **info)


class ProgressView:
    """A :class:`Progress` as a helper sees it (:meth:`Progress.holding_last`): updates carry fixed ``info``, and
    with ``hold=n`` the n-th update is held until :meth:`release`."""

    def __init__(self, progress: Progress, info: dict, hold: int | None = None):
        self._progress, self._info, self._hold = progress, dict(info), hold
        self._seen, self._held = 0, None

    def check(self) -> None:
        self._progress.check()

    def step(self, n: int = 1, **info) -> None:
        self._seen += 1
        if self._seen == self._hold:
            self.check()
            self._held = (n, info)
            return
        self._progress.step(n, **{**self._info, **info})

    def release(self) -> None:
        """Report the held update (if any)."""
        if self._held is not None:
            (n, info), self._held = self._held, None
            self._progress.step(n, **{**self._info, **info})


def silent() -> Progress:
    """A progress object that reports nowhere and never cancels."""
    return Progress()
