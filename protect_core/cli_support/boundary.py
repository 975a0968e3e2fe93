"""The command line's error boundary: every way a run can end becomes one line on stderr and a true exit code.

=====  ==========================================================================================================
code   meaning
=====  ==========================================================================================================
0      everything asked for was written (or already existed and was skipped)
1      the work started but not everything was written: an input failed, an output could not be written (disk
       full, read-only), out of memory, or an unexpected internal error (``--debug`` shows its traceback)
2      the request cannot work as given (bad flag, value, path, model or device); nothing was done
130    interrupted (Ctrl-C, SIGINT); 143: terminated (SIGTERM); 129: hang-up (SIGHUP)
=====  ==========================================================================================================

SIGTERM and SIGHUP are turned into the same clean stop as Ctrl-C, so the temporary file of an output being
written is removed (``protect_core.atomic``) and finished outputs stay complete.
"""
from __future__ import annotations

import contextlib
import errno
import signal
import sys
import traceback

from ..errors import Cancelled, RunError, StyleCloakError


class Terminated(KeyboardInterrupt):
    """SIGTERM / SIGHUP, raised where the program is, so that cleanup runs as for Ctrl-C."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@contextlib.contextmanager
def signals_as_interrupts():
    """Within the block SIGTERM and SIGHUP raise :class:`Terminated` (only in the main thread)."""
    def handler(signum, frame):
        raise Terminated(signum)

    old = {}
    try:
        for sig in (signal.SIGTERM, getattr(signal, "SIGHUP", None)):
            if sig is not None:
                old[sig] = signal.signal(sig, handler)
    except ValueError:   # not the main thread: leave signals alone
        pass
    try:
        yield
    finally:
        for sig, h in old.items():
            signal.signal(sig, h)


def _os_message(e: OSError) -> str:
    where = f"'{e.filename}': " if getattr(e, "filename", None) else ""
    what = e.strerror or str(e)
    hint = {errno.ENOSPC: "free some space or choose another output folder",
            errno.EROFS: "the file system is read-only; choose another output folder",
            errno.EACCES: "check the permissions, or choose another location",
            errno.EPERM: "check the permissions, or choose another location",
            errno.ENAMETOOLONG: "shorten the name"}.get(e.errno, "")
    return f"{where}{what}" + (f"; {hint}" if hint else "")


def outcome(exc: BaseException) -> tuple[int, str]:
    """(exit code, one-line message) for an exception that ended a run."""
    if isinstance(exc, Terminated):
        return 128 + exc.signum, (f"stopped by {signal.Signals(exc.signum).name}; finished files are complete, "
                                  "unfinished ones were not written (rerun the same command to resume)")
    if isinstance(exc, (KeyboardInterrupt, Cancelled)):
        return 130, ("interrupted; finished files are complete, unfinished ones were not written (rerun the same "
                     "command to resume)")
    if isinstance(exc, RunError):
        return 1, f"error: {exc}"
    if isinstance(exc, (StyleCloakError, ValueError, FileNotFoundError)):
        return 2, f"error: {exc}"
    if isinstance(exc, OSError):
        return 1, f"error: {_os_message(exc)}"
    if isinstance(exc, MemoryError) or (isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()):
        return 1, ("error: out of memory; try --memory low, a smaller --batch-size or --tile, or a smaller image "
                   "(finished files are complete)")
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return 1, (f"internal error: {type(exc).__name__}: {first[:300]} (run again with --debug for the traceback, "
               "and please report it)")


def report(exc: BaseException, debug: bool = False) -> int:
    """Print the one-line message (and, with ``debug``, the traceback) for ``exc``; return the exit code."""
    code, message = outcome(exc)
    if debug and not isinstance(exc, KeyboardInterrupt):
        traceback.print_exception(type(exc), exc, exc.__traceback__, file=sys.stderr)
    print(f"stylecloak: {message}", file=sys.stderr)
    return code
