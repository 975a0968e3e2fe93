"""Output paths of the command line: planned, checked and cleaned before any model work starts.

* :func:`plan_outputs`: one output per input under ``OUT/``, keeping the input folders' relative layout
  (``--recursive``). Two inputs with the same stem in one folder keep their old suffix too (``a.jpg`` and
  ``a.png`` -> ``a.jpg.png``, ``a.png.png``); two inputs that would still map to one output (``x/pic.png`` and
  ``y/pic.png``), an output that is one of the inputs, or a name over the file system's 255-byte limit stop the
  run with one line naming them, before anything is written.
* :func:`image_seed` / :func:`batch_seed`: randomness from the image's own identity (its path relative to the
  input it was found under), not its position in the queue, so a resumed run writes the bytes of an
  uninterrupted one and adding files to a folder does not change the others' outputs.
* :func:`check_output_dir` / :func:`check_output_file`: the output location can be created and written (not a
  file where a folder is needed or the other way round, not read-only) — checked before the model is loaded.
* :func:`clean_stale_temps`: temporary files left by a killed run (SIGKILL, power loss) are removed at the start.
"""
from __future__ import annotations

import hashlib
import os
from collections import Counter
from pathlib import Path, PurePosixPath
from typing import Callable, Sequence

from ..errors import StyleCloakError

NAME_MAX = 255


def image_seed(seed: int, key: str) -> int:
    """A seed in [0, 2^63) from the run's ``seed`` and the image's identity ``key`` (its relative path)."""
    digest = hashlib.sha256(f"{int(seed)}\0{key}".encode("utf-8", "surrogateescape")).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def batch_seed(seed: int, keys: Sequence[str]) -> int:
    """The seed of a batch: the image's own seed for one image, else one derived from every member's key."""
    return image_seed(seed, keys[0] if len(keys) == 1 else "\0".join(sorted(keys)))


def plan_outputs(items: Sequence[tuple[Path, str]], out_dir, suffix: Callable[[Path], str]) -> list[Path]:
    """Output path per ``(source, key)`` from :func:`protect_core.images.list_image_keys`; ``suffix(source)``
    gives the new suffix (``".png"``). Raises StyleCloakError for collisions, inputs as outputs, long names."""
    out_dir = Path(out_dir)
    rel = [PurePosixPath(key) for _, key in items]
    natural = [r.parent / (r.stem + suffix(src)) for (src, _), r in zip(items, rel)]
    counts = Counter(natural)
    dst = [out_dir / (n if counts[n] == 1 else r.parent / (r.name + suffix(src)))
           for (src, _), r, n in zip(items, rel, natural)]
    seen: dict[Path, Path] = {}
    for (src, _), d in zip(items, dst):
        if d in seen:
            raise StyleCloakError(f"'{seen[d]}' and '{src}' would both be written to '{d}'; give them separate "
                                  "output folders (or rename one), or pass their folders with --recursive")
        seen[d] = src
        if len(os.fsencode(d.name)) > NAME_MAX:
            raise StyleCloakError(f"output name for '{src}' would be {len(os.fsencode(d.name))} bytes, over the "
                                  f"file system's {NAME_MAX}-byte limit; shorten the input's name")
    sources = {os.path.realpath(s) for s, _ in items}
    for (src, _), d in zip(items, dst):
        if os.path.realpath(d) in sources:
            raise StyleCloakError(f"the output for '{src}' would overwrite the input '{d}'; choose another output "
                                  "folder (inputs are never overwritten)")
    return dst


def _nearest_existing(p: Path) -> Path:
    p = Path(os.path.abspath(p))
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def _check_writable_parent(target: Path, flag: str, start: Path | None = None) -> None:
    anc = _nearest_existing(target if start is None else start)
    if not anc.is_dir():
        raise StyleCloakError(f"{flag} {target}: '{anc}' is a file, so this path cannot be created; choose another")
    if not os.access(anc, os.W_OK | os.X_OK):
        raise StyleCloakError(f"{flag} {target}: cannot write to '{anc}' (read-only or no permission); choose "
                              "another location")


def check_output_dir(path, flag: str = "-o") -> Path:
    """The output folder is a folder (or can be created) and can be written to."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise StyleCloakError(f"{flag} {p}: this is a file, but an output folder is needed here; pass a folder "
                              "(it is created if missing)")
    _check_writable_parent(p, flag)
    return p


def check_output_file(path, flag: str, example: str = "") -> Path:
    """The output file is not a folder and its folder can be created and written to."""
    p = Path(path)
    if p.is_dir():
        raise StyleCloakError(f"{flag} {p}: this is a folder, but a file name is needed here"
                              + (f" (e.g. {Path(p, example)})" if example else ""))
    _check_writable_parent(p, flag, start=p.parent)
    return p


def clean_stale_temps(folders, names: Sequence[str] = ()) -> list[Path]:
    """Remove temporary files of killed runs in the existing ``folders`` (see :func:`protect_core.atomic.
    stale_temps`); ``names``: output names whose temporaries of older StyleCloak versions go too."""
    from ..atomic import stale_temps

    removed = []
    for folder in {Path(f) for f in folders}:
        for f in stale_temps(folder, names):
            try:
                f.unlink()
                removed.append(f)
            except OSError:
                pass
    return removed


def status_counts(rows) -> dict[str, int]:
    """``written`` / ``skipped`` / ``failed`` counts of a summary's per-file rows (their ``status`` prefixes)."""
    return {s: sum(1 for r in rows if r.get("status", "").startswith(s)) for s in ("written", "skipped", "failed")}
