"""Atomic file writes: content appears at the destination whole, or not at all (fsync + os.replace).

Every output StyleCloak writes (images, JSON summaries, report cards, selections) goes through here, so an
interrupted run never leaves a half-written file; on any exception (Ctrl-C, and SIGTERM in the command line,
included) the temporary file is removed. Temporary names are short and fixed in length (``.sc-PID-XXXXXXXX.part``,
whatever the output's name, so a 255-byte output name still works) and carry the writer's process id, so that
:func:`stale_temps` can tell the leftovers of a killed process (SIGKILL, power loss) from a live writer's.
"""
from __future__ import annotations

import contextlib
import os
import re
import tempfile
from pathlib import Path

_TEMP = re.compile(r"^\.sc-(\d+)-[A-Za-z0-9_]+\.part$")


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_UMASK = _umask()


@contextlib.contextmanager
def _atomic_open(path):
    """Binary file object whose content appears at ``path`` only if the block completes (fsync + os.replace)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    mode = path.stat().st_mode & 0o777 if path.exists() else 0o666 & ~_UMASK
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".sc-{os.getpid()}-", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as fp:
            yield fp
            fp.flush()
            os.fsync(fp.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    with contextlib.suppress(OSError):  # make the rename itself durable (POSIX); not possible everywhere
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


def atomic_write_bytes(path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (no partial file on failure or Ctrl-C)."""
    with _atomic_open(path) as fp:
        fp.write(data)
    return Path(path)


def atomic_write_text(path, text: str, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` atomically (no partial file on failure or Ctrl-C)."""
    return atomic_write_bytes(path, text.encode(encoding))


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True   # this process may be writing it right now (another thread)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True   # exists, owned by someone else
    return True


def stale_temps(folder, names=()) -> list[Path]:
    """Temporary files in ``folder`` whose writer is gone; ``names``: output names whose temporaries from older
    StyleCloak versions (``.NAME.XXXXXXXX.part``, no process id) count too."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    legacy = [re.compile(rf"^\.{re.escape(n)}\.[A-Za-z0-9_]{{8}}\.part$") for n in names]
    found = []
    for f in folder.iterdir():
        m = _TEMP.match(f.name)
        if (m and not _alive(int(m.group(1)))) or (not m and any(r.match(f.name) for r in legacy)):
            found.append(f)
    return sorted(found)
