"""Progress reporting and cooperative cancellation shared by every block and every host.

A block receives a :class:`Progress` and calls ``progress.step(...)`` once per unit of work; that call reports to
the host's progress bar (ComfyUI ProgressBar, A1111 shared.state, the CLI's tqdm) and raises
:class:`~protect_core.errors.Cancelled` as soon as the user has asked to stop. Hosts plug in by passing
``on_step`` and ``should_stop`` callables; no block knows which host it runs in.
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


def silent() -> Progress:
    """A progress object that reports nowhere and never cancels."""
    return Progress()
