"""A minimal 16-bit PNG codec (zlib + struct): Pillow reduces 16-bit colour PNGs to 8 bits, this keeps them whole.

Reads non-interlaced 16-bit grey / grey+alpha / RGB / RGBA PNGs (all five filter types) into uint16 arrays and writes
them back (filter 0, with optional ICC profile and DPI). Used by :mod:`protect_core.images` only.
"""
from __future__ import annotations

import struct
import zlib

import numpy as np

_PNG_SIG = b"\x89PNG\r\n\x1a\n"
_PNG_CHANNELS = {0: 1, 2: 3, 4: 2, 6: 4}


def _png_chunks(data: bytes):
    pos = 8
    while pos < len(data):
        if pos + 12 > len(data):
            raise ValueError("PNG chunk cut short: the file is truncated")
        n, typ = struct.unpack(">I4s", data[pos:pos + 8])
        payload, crc = data[pos + 8:pos + 8 + n], data[pos + 8 + n:pos + 12 + n]
        if len(crc) < 4:
            raise ValueError("PNG chunk cut short: the file is truncated")
        if zlib.crc32(typ + payload) != struct.unpack(">I", crc)[0]:
            raise ValueError(f"PNG chunk {typ.decode('latin-1')} is damaged (CRC mismatch)")
        yield typ, payload
        if typ == b"IEND":
            return
        pos += 12 + n


def _read_png16(data: bytes):
    """(H, W, C) uint16 pixels and the other chunks of a non-interlaced 16-bit PNG; None if it is interlaced."""
    w, h, depth, ctype, _, _, interlace = struct.unpack(">IIBBBBB", data[16:29])
    if depth != 16 or ctype not in _PNG_CHANNELS or data[:8] != _PNG_SIG:
        raise ValueError(f"unexpected PNG header (bit depth {depth}, colour type {ctype})")
    if interlace:
        return None
    idat, chunks = [], {}
    for typ, payload in _png_chunks(data):
        if typ == b"IDAT":
            idat.append(payload)
        else:
            chunks.setdefault(typ, payload)
    c = _PNG_CHANNELS[ctype]
    stride = 1 + w * 2 * c
    d = zlib.decompressobj()
    raw = d.decompress(b"".join(idat), h * stride)
    if len(raw) < h * stride:
        raise ValueError("PNG pixel data ends early: the file is truncated")
    rows = np.frombuffer(raw, np.uint8).reshape(h, stride)
    arr = _unfilter(rows, w, 2 * c).reshape(h, w * 2 * c).view(">u2").reshape(h, w, c).astype(np.uint16)
    key = chunks.get(b"tRNS")
    if key is not None and ctype in (0, 2):  # colour-key transparency becomes an alpha channel
        hit = (arr == np.frombuffer(key[:2 * c], ">u2")).all(-1)
        arr = np.concatenate([arr, np.where(hit, 0, 65535).astype(np.uint16)[..., None]], -1)
    return arr, chunks


def _unfilter(rows: np.ndarray, w: int, bpp: int) -> np.ndarray:
    """Undo PNG row filters: None/Sub/Up rows vectorised per row, runs of Average/Paeth rows by anti-diagonals."""
    h = rows.shape[0]
    kind = rows[:, 0]
    if kind.max(initial=0) > 4:
        raise ValueError("invalid PNG filter type: the file is damaged")
    src = rows[:, 1:].reshape(h, w, bpp).astype(np.int16)
    out = np.zeros((h + 1, w + 1, bpp), np.int16)  # a zero row on top and a zero column on the left
    y = 0
    while y < h:
        if kind[y] == 0:
            out[y + 1, 1:] = src[y]
        elif kind[y] == 1:
            out[y + 1, 1:] = np.cumsum(src[y], 0, dtype=np.int64) & 255
        elif kind[y] == 2:
            out[y + 1, 1:] = (src[y] + out[y, 1:]) & 255
        else:
            end = y
            while end < h and kind[end] >= 3:
                end += 1
            _unfilter_diagonals(out, src, kind, y, end)
            y = end
            continue
        y += 1
    return out[1:, 1:].astype(np.uint8)


def _unfilter_diagonals(out, src, kind, y0: int, y1: int) -> None:
    """Rows y0..y1-1 (Average/Paeth): pixel (y, x) needs (y, x-1), (y-1, x), (y-1, x-1), so each anti-diagonal
    of the block depends only on earlier ones and is computed in one vectorised step."""
    w = src.shape[1]
    for k in range(y1 - y0 + w - 1):
        y = y0 + np.arange(max(0, k - w + 1), min(y1 - y0 - 1, k) + 1)
        x = k - (y - y0)
        a, b, c = out[y + 1, x], out[y, x + 1], out[y, x]
        pa, pb, pc = np.abs(b - c), np.abs(a - c), np.abs(a + b - 2 * c)
        paeth = np.where((pa <= pb) & (pa <= pc), a, np.where(pb <= pc, b, c))
        pred = np.where(kind[y][:, None] == 3, (a + b) >> 1, paeth)
        out[y + 1, x + 1] = (src[y, x] + pred) & 255


def _png_chunk(typ: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + typ + payload + struct.pack(">I", zlib.crc32(typ + payload))


def _write_png16(fp, arr: np.ndarray, icc: bytes | None = None, dpi=None) -> None:
    """Write (H, W, C) uint16 pixels (C = 1 grey, 2 grey+alpha, 3 RGB, 4 RGBA) as a 16-bit PNG (Sub filter)."""
    h, w, c = arr.shape
    bpp = 2 * c
    raw = arr.astype(">u2").view(np.uint8).reshape(h, w * bpp)
    sub = raw.copy()
    sub[:, bpp:] = raw[:, bpp:] - raw[:, :-bpp]  # uint8 arithmetic wraps modulo 256, as PNG requires
    body = zlib.compress(np.concatenate([np.ones((h, 1), np.uint8), sub], 1).tobytes(), 6)
    ctype = {1: 0, 2: 4, 3: 2, 4: 6}[c]
    fp.write(_PNG_SIG + _png_chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, ctype, 0, 0, 0)))
    if icc:
        fp.write(_png_chunk(b"iCCP", b"ICC profile\0\0" + zlib.compress(icc)))
    if dpi:
        ppm = [max(1, round(float(d) / 0.0254)) for d in dpi[:2]]
        fp.write(_png_chunk(b"pHYs", struct.pack(">IIB", ppm[0], ppm[-1], 1)))
    for i in range(0, len(body), 1 << 20):
        fp.write(_png_chunk(b"IDAT", body[i:i + (1 << 20)]))
    fp.write(_png_chunk(b"IEND", b""))
