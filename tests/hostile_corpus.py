"""A hostile-input corpus for the command line, generated (nothing downloaded): broken and odd image files, odd
names. ``python tests/hostile_corpus.py DIR`` writes it; the tests call :func:`make_corpus`.

Each bad file must end in one line naming it (exit 1, the good files still written); each good file with an odd
name must be cloaked and purified like any other.
"""
from __future__ import annotations

import io
import pickle
import struct
import sys
import zlib
from pathlib import Path

import numpy as np
from PIL import Image


def png_bytes(h: int = 32, w: int = 32, seed: int = 0) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def _bomb_header(w: int, h: int) -> bytes:
    """A PNG whose header claims w x h pixels (nothing behind it): must be refused from the header alone."""
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    return b"\x89PNG\r\n\x1a\n" + struct.pack(">I", len(ihdr)) + chunk + struct.pack(">I", zlib.crc32(chunk))


BAD = {   # name -> bytes (each must fail with a message naming it)
    "empty.png": lambda: b"",
    "text.png": lambda: b"this is not an image\n",
    "truncated.png": lambda: png_bytes(64, 64)[:300],
    "pickle.png": lambda: pickle.dumps({"state_dict": [1, 2, 3]}),
    "gif_inside.png": lambda: _gif(),
    "one_pixel.png": lambda: png_bytes(1, 1),
    "bomb_header.png": lambda: _bomb_header(100_000, 100_000),
}
GOOD = {   # odd but legal names
    "a" * 240 + ".png": 1,                        # 244 bytes: the temp name must not push it over 255
    "ümlaut ✓ space.png": 2,
    "new\nline.png": 3,
    "-starts-with-dash.png": 4,
}


def _gif() -> bytes:
    buf = io.BytesIO()
    Image.new("P", (32, 32)).save(buf, "GIF")
    return buf.getvalue()


def make_corpus(root) -> dict[str, list[Path]]:
    """Write the corpus into ``root``: ``{"bad": [...], "good": [...]}``."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    bad, good = [], []
    for name, make in BAD.items():
        (root / name).write_bytes(make())
        bad.append(root / name)
    for name, seed in GOOD.items():
        (root / name).write_bytes(png_bytes(32, 32, seed))
        good.append(root / name)
    return {"bad": bad, "good": good}


if __name__ == "__main__":
    made = make_corpus(sys.argv[1] if len(sys.argv) > 1 else "hostile_corpus")
    print(f"{len(made['bad'])} bad and {len(made['good'])} good files")
