"""What a platform worker does with images it was sent as bytes: decode, cloak, encode (no Ray in here).

:func:`cloak_group` takes a group of uploads (``key``, file bytes, output suffix, ``skip``) and returns one result
per item: the output file's bytes and its numbers, or a one-line error. Decoding goes through
:func:`protect_core.images.load_image` (every policy of the command line: size limits, alpha, 16-bit, ICC) on a
private temporary copy, and encoding through :func:`~protect_core.images.save_image` with ``like=`` the input, so
a worker returns exactly the bytes ``stylecloak cloak`` would write. Seeds come from the run's seed and each
item's key (:func:`protect_core.cli_support.paths.batch_seed` via the runner), so the bytes do not depend on which
worker ran the group, or when: a group is always the same items (the driver plans groups from sorted keys), and
``skip`` items (already done) are still planned, as in a resumed ``stylecloak cloak``.
"""
from __future__ import annotations

import hashlib
import re
import tempfile
import time
from pathlib import Path

from protect_core.errors import StyleCloakError

SAFE = re.compile(r"[^A-Za-z0-9._-]+")


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def settings_record(settings) -> dict:
    """The settings as plain JSON (what the manifest stores and compares on a rerun)."""
    out = {}
    for k, v in settings.__dict__.items():
        out[k] = v if isinstance(v, (str, int, float, bool, type(None), list, dict)) else str(v)
    return out


def _tmp_name(i: int, key: str) -> str:
    name = SAFE.sub("_", Path(key).name)[-80:] or "image"
    return f"{i:04d}_{name}"


def cloak_group(host, items: list[dict], settings, *, batch_size: int = 4, max_pixels: int | None = None,
                tile: int | None = None, memory: str = "auto", progress=None) -> list[dict]:
    """Cloak ``items`` ({"key", "data", "suffix", "skip"}) as one run; one result dict per item, in order:
    ``{"key", "status": "done" | "error" | "skipped", "data", "sha256", "stats", "warnings", "error", "seconds"}``.

    A bad image is an ``error`` result, never an exception; a failure of the whole run (e.g. out of memory below
    the lowest memory mode) makes every unfinished item an error with that message. Interrupts propagate."""
    from protect_core.images import DEFAULT_MAX_PIXELS, load_image, save_image
    from protect_core.cloak.runner import cloak_images

    t0 = time.time()
    results = [{"key": it["key"], "status": "skipped" if it.get("skip") else "error", "data": None, "sha256": None,
                "stats": None, "warnings": [], "error": None, "seconds": 0.0} for it in items]
    with tempfile.TemporaryDirectory(prefix="stylecloak-") as tmp:
        tmpdir = Path(tmp)
        loaded, index = [], []
        for i, it in enumerate(items):
            src = tmpdir / _tmp_name(i, it["key"])
            src.write_bytes(it["data"])
            try:
                img = load_image(src, max_pixels=max_pixels or DEFAULT_MAX_PIXELS)
            except StyleCloakError as e:
                if not it.get("skip"):
                    results[i]["error"] = str(e).replace(str(src), it["key"])
                continue
            loaded.append(img)
            index.append(i)

        def save(j, result):
            i = index[j]
            out = tmpdir / (f"out_{i:04d}" + items[i]["suffix"])
            notes = save_image(out, result.image, like=loaded[j])
            data = out.read_bytes()
            stats = {k: v for k, v in result.stats.items() if k != "settings"}
            results[i].update(status="done", data=data, sha256=sha256(data), stats=stats,
                              warnings=list(loaded[j].warnings) + list(notes))

        todo = [not items[i].get("skip") for i in index]
        if any(todo):
            try:
                cloak_images(host, [img.rgb for img in loaded], settings, progress, batch_size=batch_size,
                             channel_tied=[img.is_grey for img in loaded], tile_size=tile, on_result=save,
                             memory=memory, keys=[items[i]["key"] for i in index], skip=[not t for t in todo])
            except StyleCloakError as e:
                for i in index:
                    if results[i]["status"] == "error" and not results[i]["error"]:
                        results[i]["error"] = str(e)
    seconds = (time.time() - t0) / max(1, len(items))
    for r in results:
        r["seconds"] = round(seconds, 3)
    return results


def cloak_bytes(host, data: bytes, settings, *, name: str = "upload.png", suffix: str = ".png",
                max_pixels: int | None = None, memory: str = "auto") -> dict:
    """One upload: :func:`cloak_group` of a single item (``name`` is its key: it sets the image's seed)."""
    return cloak_group(host, [{"key": name, "data": data, "suffix": suffix, "skip": False}], settings,
                       batch_size=1, max_pixels=max_pixels, memory=memory)[0]
