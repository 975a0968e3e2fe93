"""Image input/output for every block and host: load, validate, save (atomically), list image files.

Tensor helpers (validation, quantisation, padding, batching) live in :mod:`protect_core.image_tensors` and are
re-exported here.

Policies (what happens to each kind of input, and why):

* Formats: PNG, JPEG (and camera MPO), WebP, TIFF and BMP are read; the output format comes from the suffix
  (``.png .jpg .jpeg .webp .tif .tiff .bmp``). PNG is the default and is lossless. The file's content decides how
  it is read, not its suffix; other formats (GIF, PSD, ...) are refused with a message saying to convert to PNG.
* Lossy output: JPEG and lossy WebP compression partly washes a cloak out, so choosing them returns (and logs) a
  warning. JPEG is written at quality 95 with 4:4:4 chroma; WebP at quality 95, or lossless when ``quality=100``.
* Alpha: RGBA / LA / palette-with-transparency / colour-key transparency keep their alpha values exactly (same
  dtype); only RGB is cloaked and ``save_image(..., like=loaded)`` puts the original alpha back. JPEG has no alpha:
  it is dropped with a warning.
* Greyscale (L, I;16, I, 1-bit): ``is_grey`` is True and ``rgb`` holds the grey value in all three channels; when
  saved ``like`` it stays greyscale (the mean of the three cloaked channels).
* 16-bit: 16-bit PNGs are decoded by a small built-in PNG reader (Pillow reduces 16-bit colour to 8 bits) and kept
  at full precision in float32 (``bits == 16``); saving ``like`` them to .png writes 16-bit PNG with a small
  built-in writer (zlib + struct). 16-bit greyscale TIFF is kept at 16 bits; 16-bit colour TIFF and interlaced
  16-bit colour PNG are read at 8 bits with a warning (Pillow limitation). Formats without 16-bit storage
  (JPEG, WebP, BMP, colour TIFF) are written at 8 bits with a warning.
* CMYK (e.g. print JPEGs) is converted to sRGB, through its embedded ICC profile when it has one, else with
  Pillow's simple formula; a warning says which. Other colour spaces (YCbCr, LAB, HSV) are converted to RGB.
* ICC profiles are kept (pixels are not colour-converted) and written back when the output colour space matches.
  DPI is kept. EXIF, XMP and text chunks are not copied: camera and location data do not leak into outputs.
* EXIF orientation is applied on load, so ``rgb`` is upright; outputs carry no orientation tag.
* Odd sizes: ``pad_to_multiple`` pads (reflect, or replicate when the image is too small to reflect) to what the
  model needs and ``unpad`` restores the exact original size, so outputs always match the input size.
* Size limits: images smaller than ``min_side`` (16) pixels a side are refused. Images above ``max_pixels``
  (default 4096 x 4096) are refused from the header alone, before any pixel is decoded; the limit protects memory
  and can be raised (the cloak block processes images above its tile size in tiles, so large images only cost
  time). Pillow's decompression-bomb check is turned into the same message.
* Every load failure raises ``ImageError`` with one message naming the file, the problem and what to do.
* Writes are atomic: a temporary file in the same folder, fsync, ``os.replace``; on any exception (Ctrl-C
  included) the temporary file is removed and no partial output exists. The input file is never overwritten
  (library callers can allow it with ``save_image(..., overwrite_input=True)``; the command line cannot).
* Quantisation: ``to_uint8`` (``torch.round(x * 255)``, round half to even) is the exact rounding used for every
  8-bit output, so perturbation budgets measured on ``quantize(x)`` hold for the saved file.
"""
from __future__ import annotations

import contextlib
import io
import logging
import os
import struct
import threading
import warnings as _warnings
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageFile, UnidentifiedImageError, features

from .atomic import _atomic_open, atomic_write_bytes, atomic_write_text  # noqa: F401  (public re-exports)
from .errors import ImageError, OutputError
from .image_tensors import (SizeGroup, pad_to_multiple, quantize, stack_same_size, to_uint8,  # noqa: F401
                            to_uint16, unpad, validate_tensor)  # public re-exports
from .png16 import _read_png16, _write_png16

log = logging.getLogger(__name__)

DEFAULT_MAX_PIXELS = 4096 * 4096
MIN_SIDE = 16
IMAGE_SUFFIXES = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP", ".tif": "TIFF",
                  ".tiff": "TIFF", ".bmp": "BMP"}
READABLE_FORMATS = {"PNG", "JPEG", "MPO", "WEBP", "TIFF", "BMP"}
LOSSY_FORMATS = {"JPEG", "WEBP"}
_PIL_LOCK = threading.Lock()


@dataclass
class LoadedImage:
    """An image ready for the engine: ``rgb`` (3, H, W) float32 in [0, 1] plus what is needed to save it back."""

    rgb: torch.Tensor
    alpha: np.ndarray | None = None
    path: Path | None = None
    mode: str = "RGB"
    bits: int = 8
    is_grey: bool = False
    icc_profile: bytes | None = None
    warnings: list[str] = field(default_factory=list)
    format: str | None = None
    dpi: tuple | None = None

    @property
    def size(self) -> tuple[int, int]:
        return int(self.rgb.shape[-1]), int(self.rgb.shape[-2])


def _fail(path, what: str, todo: str = "") -> ImageError:
    return ImageError(f"cannot use image '{path}': {what}." + (f" {todo}" if todo else ""))


def _too_large(path, what: str, max_pixels: int) -> ImageError:
    side = int(max_pixels ** 0.5)
    return _fail(path, f"{what} is over the limit of max_pixels={max_pixels} (about {side}x{side})",
                 "Downscale it, or raise max_pixels (CLI: --max-pixels) if the machine has the memory; the cloak "
                 "processes large images in tiles, so a bigger limit costs time rather than GPU memory.")


# ----------------------------------------------------------------------------------------------------- loading
def load_image(path, max_pixels: int = DEFAULT_MAX_PIXELS, min_side: int = MIN_SIDE) -> LoadedImage:
    """Read one image file (see the module docstring for every policy); failures raise ``ImageError``."""
    p = Path(path)
    if not p.exists():
        raise _fail(p, "file not found", "Check the path.")
    if p.is_dir():
        raise _fail(p, "it is a folder, not an image file", "Pass the image files, or use list_images(folder).")
    if p.stat().st_size == 0:
        raise _fail(p, "the file is empty (0 bytes)", "Re-export or re-download it.")
    try:
        with _strict_pillow(max_pixels), Image.open(p) as im:
            if im.format not in READABLE_FORMATS:
                raise _fail(p, f"{im.format} files are not supported",
                            "Convert it to PNG (or JPEG, WebP, TIFF, BMP).")
            w, h = im.size
            if w * h > max_pixels:
                raise _too_large(p, f"{w}x{h} pixels ({w * h / 1e6:.1f} MP)", max_pixels)
            if min(w, h) < min_side:
                raise _fail(p, f"{w}x{h} pixels is too small",
                            f"The minimum is {min_side} pixels on each side.")
            return _decode(p, im)
    except ImageError:
        raise
    except Image.DecompressionBombError:
        raise _too_large(p, "its pixel count (far larger than Pillow's safety limit)", max_pixels) from None
    except UnidentifiedImageError:
        raise _fail(p, "the file is not an image (its content matches no supported format)",
                    "Check that it really is a PNG/JPEG/WebP/TIFF/BMP file.") from None
    except MemoryError:
        raise _fail(p, "out of memory while decoding it", "Downscale it or lower max_pixels.") from None
    except PermissionError:
        raise _fail(p, "permission denied", "Check the file's permissions.") from None
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, struct.error, zlib.error) as e:
        raise _fail(p, f"the file is truncated or damaged ({e})", "Re-export or re-download it.") from None


@contextlib.contextmanager
def _strict_pillow(max_pixels: int):
    """Refuse truncated data even if a host enabled LOAD_TRUNCATED_IMAGES; let our own size limit speak first."""
    with _PIL_LOCK, _warnings.catch_warnings():
        _warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        old_px, old_trunc = Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES
        if old_px is not None and max_pixels > old_px:
            Image.MAX_IMAGE_PIXELS = max_pixels
        ImageFile.LOAD_TRUNCATED_IMAGES = False
        try:
            yield
        finally:
            Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES = old_px, old_trunc


def _decode(p: Path, im: Image.Image) -> LoadedImage:
    notes: list[str] = []
    icc, dpi, mode = im.info.get("icc_profile"), im.info.get("dpi"), im.mode
    png16 = None
    if im.format == "PNG":
        with open(p, "rb") as f:
            head = f.read(29)
        if head[24] == 16:  # IHDR bit depth
            png16 = _read_png16(p.read_bytes())
            if png16 is None and head[25] != 0:
                notes.append("interlaced 16-bit colour PNG read at 8-bit precision (Pillow limitation)")
    if png16 is not None:
        arr, chunks = png16
        orientation = _exif_orientation(chunks.get(b"eXIf"))  # ICC and DPI come before IDAT: Pillow has them
        alpha = arr[..., -1].copy() if arr.shape[-1] in (2, 4) else None
        arr = arr[..., :3] if arr.shape[-1] >= 3 else arr[..., :1]
    else:
        im.load()  # force the full decode now: truncation surfaces here as OSError
        if getattr(im, "n_frames", 1) > 1 and im.format != "MPO":
            notes.append(f"has {im.n_frames} frames/pages; only the first is used")
        orientation = im.getexif().get(0x0112, 1)
        arr, alpha, icc = _pixels(p, im, icc, notes)
        bps = im.tag_v2.get(258) if im.format == "TIFF" else None
        if arr.dtype == np.uint8 and bps is not None and max(np.atleast_1d(bps)) > 8:
            notes.append(f"{max(np.atleast_1d(bps))}-bit colour TIFF read at 8-bit precision (Pillow "
                         "limitation); export a 16-bit PNG to keep full precision")
    arr, alpha = _orient(arr, orientation), (None if alpha is None else _orient(alpha, orientation))
    bits = 16 if arr.dtype == np.uint16 else 8
    rgb = torch.from_numpy(arr.astype(np.float32) / (65535.0 if bits == 16 else 255.0)).permute(2, 0, 1)
    is_grey = rgb.shape[0] == 1
    rgb = rgb.expand(3, -1, -1).contiguous() if is_grey else rgb.contiguous()
    for n in notes:
        log.warning("%s: %s", p, n)
    return LoadedImage(rgb=rgb, alpha=alpha, path=p, mode=mode, bits=bits, is_grey=is_grey, icc_profile=icc,
                       warnings=notes, format=im.format, dpi=tuple(dpi) if dpi else None)


def _pixels(p: Path, im: Image.Image, icc, notes: list[str]):
    """(H, W, 1 or 3) uint8/uint16 pixels, alpha (H, W) or None, and the ICC profile that still applies."""
    mode = im.mode
    if mode.startswith("I;16") or mode == "I":
        a = np.asarray(im)
        if a.min() < 0 or a.max() > 65535:
            raise _fail(p, f"integer greyscale with values {a.min()}..{a.max()} (outside 0..65535) is not "
                        "supported", "Export it as 16-bit PNG or TIFF.")
        return a.astype(np.uint16)[..., None], None, icc
    if mode == "CMYK":
        im, icc = _cmyk_to_rgb(im, icc, notes), None
    elif mode == "1":
        im = im.convert("L")
    elif mode in ("P", "PA"):
        im = im.convert("RGBA" if mode == "PA" or "transparency" in im.info else "RGB")
    elif mode in ("L", "RGB") and "transparency" in im.info:
        im = im.convert(mode + "A")
    elif mode in ("La", "RGBa", "RGBX"):
        im = im.convert({"La": "LA", "RGBa": "RGBA", "RGBX": "RGB"}[mode])
    elif mode in ("YCbCr", "LAB", "HSV"):
        notes.append(f"{mode} converted to RGB")
        im, icc = im.convert("RGB"), None
    elif mode not in ("L", "LA", "RGB", "RGBA"):
        raise _fail(p, f"pixel mode {mode} is not supported", "Export it as an 8- or 16-bit RGB or greyscale PNG.")
    a = np.asarray(im)
    a = a[..., None] if a.ndim == 2 else a
    if im.mode in ("LA", "RGBA"):
        return np.ascontiguousarray(a[..., :-1]), a[..., -1].copy(), icc
    return a, None, icc


def _cmyk_to_rgb(im: Image.Image, icc, notes: list[str]) -> Image.Image:
    if icc:
        try:
            from PIL import ImageCms

            src = ImageCms.ImageCmsProfile(io.BytesIO(icc))
            out = ImageCms.profileToProfile(im, src, ImageCms.createProfile("sRGB"), outputMode="RGB")
            notes.append("CMYK converted to RGB (sRGB) through its embedded ICC profile")
            return out
        except Exception:  # a broken or unsupported profile: fall back to the plain formula below
            pass
    notes.append("CMYK converted to RGB with a simple formula (no usable colour profile); colours may shift")
    return im.convert("RGB")


def _exif_orientation(raw: bytes | None) -> int:
    if not raw:
        return 1
    exif = Image.Exif()
    exif.load(raw if raw.startswith(b"Exif") else b"Exif\0\0" + raw)
    return exif.get(0x0112, 1)


def _orient(a: np.ndarray, orientation: int) -> np.ndarray:
    """Apply an EXIF orientation (1-8) to an (H, W[, C]) array, as Pillow's ImageOps.exif_transpose does."""
    t = {2: lambda x: x[:, ::-1], 3: lambda x: x[::-1, ::-1], 4: lambda x: x[::-1],
         5: lambda x: x.swapaxes(0, 1), 6: lambda x: np.rot90(x, -1), 7: lambda x: x.swapaxes(0, 1)[::-1, ::-1],
         8: lambda x: np.rot90(x, 1)}.get(orientation)
    return a if t is None else np.ascontiguousarray(t(a))



# ------------------------------------------------------------------------------------------------------ saving
def save_image(path, rgb01: torch.Tensor, like: LoadedImage | None = None, quality: int | None = None, *,
               overwrite_input: bool = False) -> list[str]:
    """Write ``rgb01`` ((3, H, W) or (1, 3, H, W) in [0, 1]) atomically; format from the suffix.

    With ``like`` (the LoadedImage it came from) the alpha, greyscale, 16-bit depth, ICC profile and DPI come
    back. Returns the warnings (also logged): lossy format, alpha dropped, precision reduced, profile dropped.
    """
    p = Path(path)
    fmt = IMAGE_SUFFIXES.get(p.suffix.lower())
    if fmt is None:
        raise ImageError(f"cannot save '{p}': unknown image suffix '{p.suffix}'; use one of "
                         f"{', '.join(IMAGE_SUFFIXES)} (.png keeps the cloak intact)")
    x = validate_tensor(rgb01, f"image to save as '{p.name}'")
    if x.dim() == 4:
        if x.shape[0] != 1:
            raise ValueError(f"image to save as '{p.name}': got a batch of {x.shape[0]}; save one image per file")
        x = x[0]
    x = x.detach().float().cpu().clamp(0, 1)
    if like is not None and like.path is not None and not overwrite_input and _same_file(p, like.path):
        raise ImageError(f"refusing to overwrite the input image '{p}'; choose another output path")
    notes: list[str] = []
    grey, bits = bool(like and like.is_grey), 16 if like is not None and like.bits == 16 else 8
    alpha = like.alpha if like is not None else None
    icc, dpi = (like.icc_profile, like.dpi) if like is not None else (None, None)
    h, w = x.shape[-2:]
    if alpha is not None and alpha.shape != (h, w):
        raise ImageError(f"cannot save '{p}': the original alpha is {alpha.shape[1]}x{alpha.shape[0]} but the image "
                         f"is {w}x{h}; unpad the image back to its original size first")
    if fmt == "JPEG" and alpha is not None:
        notes.append("JPEG cannot store transparency: the alpha channel was dropped; save as .png to keep it")
        alpha = None
    if bits == 16 and not (fmt == "PNG" or (fmt == "TIFF" and grey and alpha is None)):
        notes.append(f"16-bit precision reduced to 8 bits: {fmt} output here holds 8 bits; save as .png to keep 16")
        bits = 8
    webp_lossless = fmt == "WEBP" and quality is not None and quality >= 100
    if fmt in LOSSY_FORMATS and not webp_lossless:
        notes.append(f"{fmt} is lossy: its compression weakens the cloak; save as .png for full protection")
    pixels = _pixel_array(x, grey, bits)
    if grey and fmt == "WEBP":  # WebP has no greyscale mode: the grey value goes into all three channels
        pixels, grey = np.repeat(pixels, 3, -1), False
    if alpha is not None:
        pixels = np.concatenate([pixels, _convert_alpha(alpha, bits)[..., None]], -1)
    if icc and (fmt == "BMP" or icc[16:20] != (b"GRAY" if grey else b"RGB ")):
        notes.append("the ICC colour profile was not written (it does not fit this format or colour space)")
        icc = None
    try:
        with _atomic_open(p) as fp:
            if bits == 16 and fmt == "PNG":
                _write_png16(fp, pixels, icc, dpi)
            else:
                _pil_save(fp, pixels, fmt, icc, dpi, quality, webp_lossless)
    except OSError as e:
        raise OutputError(f"cannot save image '{p}': {e.strerror or e}; check that the folder can be "
                          "written to and has free space") from e
    for n in notes:
        log.warning("%s: %s", p, n)
    return notes


def _pixel_array(x: torch.Tensor, grey: bool, bits: int) -> np.ndarray:
    src = x.mean(0, keepdim=True) if grey else x
    q = to_uint16(src).numpy().astype(np.uint16) if bits == 16 else to_uint8(src).numpy()
    return np.ascontiguousarray(q.transpose(1, 2, 0))


def _convert_alpha(alpha: np.ndarray, bits: int) -> np.ndarray:
    if bits == 16:
        return alpha.astype(np.uint16) * (257 if alpha.dtype == np.uint8 else 1)
    return alpha if alpha.dtype == np.uint8 else np.round(alpha / 257.0).astype(np.uint8)


def _pil_save(fp, pixels: np.ndarray, fmt: str, icc, dpi, quality, webp_lossless: bool) -> None:
    c = pixels.shape[-1]
    im = Image.fromarray(pixels[..., 0] if c == 1 else pixels)
    if fmt == "BMP" and c == 2:
        im = im.convert("RGBA")
    opts: dict = {}
    if icc:
        opts["icc_profile"] = icc
    if dpi and fmt != "WEBP":
        opts["dpi"] = tuple(float(d) for d in dpi[:2])
    if fmt == "JPEG":
        opts.update(quality=quality or 95, subsampling=0)
    elif fmt == "WEBP":
        opts.update(lossless=True) if webp_lossless else opts.update(quality=quality or 95, method=4)
    elif fmt == "TIFF" and features.check("libtiff"):
        opts.update(compression="tiff_deflate")
    im.save(fp, format=fmt, **opts)


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.exists() and Path(b).exists() and os.path.samefile(a, b)
    except OSError:
        return a.resolve() == Path(b).resolve()



# ---------------------------------------------------------------------------------------- listing and batching
def list_images(paths, recursive: bool = False) -> list[Path]:
    """Image files named by ``paths`` (files and/or folders; hidden files skipped), de-duplicated and sorted."""
    return sorted(src for src, _ in list_image_keys(paths, recursive))


def list_image_keys(paths, recursive: bool = False) -> list[tuple[Path, str]]:
    """Like :func:`list_images`, each file with its identity: its path relative to the folder it was found in
    (POSIX form), or its name for a file given directly. Ordered by folder argument, then path."""
    items = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    if not items:
        raise ImageError("no input images given; pass image files or folders")
    found: dict[Path, tuple[Path, str]] = {}
    for item in items:
        p = Path(item)
        if not p.exists():
            raise ImageError(f"input '{p}' does not exist; check the path")
        if p.is_dir():
            for f in sorted(p.rglob("*") if recursive else p.iterdir()):
                rel = f.relative_to(p).parts
                if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES and not any(s.startswith(".") for s in rel):
                    found.setdefault(f.resolve(), (f, "/".join(rel)))
        elif p.suffix.lower() in IMAGE_SUFFIXES:
            found.setdefault(p.resolve(), (p, p.name))
        else:
            raise ImageError(f"input '{p}' is not an image file (suffix '{p.suffix}'); "
                             f"supported: {', '.join(IMAGE_SUFFIXES)}")
    if not found:
        hint = "" if recursive else " (subfolders are not searched; pass --recursive to include them)"
        raise ImageError(f"no images found in {', '.join(str(i) for i in items)}: looked for "
                         f"{', '.join(IMAGE_SUFFIXES)}{hint}")
    return list(found.values())
