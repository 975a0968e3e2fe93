"""Image I/O: round trips per format, alpha / greyscale / 16-bit / ICC fidelity, EXIF, padding, bad inputs,
atomic and interrupted saves, tensor validation, listing. Fixtures are generated in tmp_path with Pillow or with
the small reference PNG encoder below (independent of the module's own writer: plain rows, any filter type)."""
from __future__ import annotations

import io
import logging
import os
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image, ImageCms, ImageOps

from protect_core import images as I
from protect_core import png16
from protect_core.errors import ImageError


def noisy_rgb(h=40, w=56, seed=0, c=3):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (h, w, c), dtype=np.uint8)


def as_hwc8(rgb):
    return I.to_uint8(rgb).permute(1, 2, 0).numpy()


def as_hwc16(rgb):
    return torch.round(rgb * 65535).to(torch.int32).permute(1, 2, 0).numpy().astype(np.uint16)


def _chunk(typ, data):
    return struct.pack(">I", len(data)) + typ + data + struct.pack(">I", zlib.crc32(typ + data))


def ref_png16(arr, filters, extra=b""):
    """Reference 16-bit PNG encoder (row filter per row: 0 None, 1 Sub, 2 Up, 3 Average, 4 Paeth)."""
    h, w, c = arr.shape
    bpp = 2 * c
    raw = arr.astype(">u2").view(np.uint8).reshape(h, w * bpp).astype(np.int32)
    rows = []
    for y in range(h):
        cur, prev = raw[y], (raw[y - 1] if y else np.zeros_like(raw[0]))
        left = np.concatenate([np.zeros(bpp, np.int32), cur[:-bpp]])
        upleft = np.concatenate([np.zeros(bpp, np.int32), prev[:-bpp]])
        p = left + prev - upleft
        pa, pb, pc = abs(p - left), abs(p - prev), abs(p - upleft)
        paeth = np.where((pa <= pb) & (pa <= pc), left, np.where(pb <= pc, prev, upleft))
        pred = [0, left, prev, (left + prev) // 2, paeth][int(filters[y])]
        rows.append(bytes([int(filters[y])]) + ((cur - pred) % 256).astype(np.uint8).tobytes())
    ihdr = struct.pack(">IIBBBBB", w, h, 16, {1: 0, 2: 4, 3: 2, 4: 6}[c], 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + extra + _chunk(b"IDAT", zlib.compress(b"".join(rows)))
            + _chunk(b"IEND", b""))


def png_header_only(path, w, h):
    """A PNG that claims w x h pixels but holds almost no data: decoding it would fail, so rejecting it proves
    the size check ran on the header alone."""
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + _chunk(b"IEND", b""))


# ------------------------------------------------------------------------------------------------ round trips
@pytest.mark.parametrize("suffix", [".png", ".tif", ".bmp"])
def test_lossless_round_trip_is_exact(tmp_path, suffix):
    src = noisy_rgb()
    Image.fromarray(src).save(tmp_path / f"in{suffix}")
    img = I.load_image(tmp_path / f"in{suffix}")
    assert img.rgb.shape == (3, 40, 56) and img.rgb.dtype == torch.float32 and img.size == (56, 40)
    assert (as_hwc8(img.rgb) == src).all() and img.bits == 8 and not img.is_grey and img.alpha is None
    cloaked = (img.rgb + 0.02 * torch.randn(img.rgb.shape, generator=torch.Generator().manual_seed(0))).clamp(0, 1)
    assert I.save_image(tmp_path / f"out{suffix}", cloaked, like=img) == []
    assert (np.asarray(Image.open(tmp_path / f"out{suffix}").convert("RGB")) == as_hwc8(cloaked)).all()


@pytest.mark.parametrize("suffix", [".jpg", ".jpeg", ".webp"])
def test_lossy_round_trip_warns_and_stays_close(tmp_path, suffix, caplog):
    smooth = np.kron(noisy_rgb(5, 7), np.ones((8, 8, 1), np.uint8))
    Image.fromarray(smooth).save(tmp_path / "in.png")
    img = I.load_image(tmp_path / "in.png")
    with caplog.at_level(logging.WARNING):
        notes = I.save_image(tmp_path / f"out{suffix}", img.rgb, like=img)
    assert len(notes) == 1 and "lossy" in notes[0] and "cloak" in notes[0]
    assert "lossy" in caplog.text
    back = I.load_image(tmp_path / f"out{suffix}")
    assert back.size == img.size
    assert (back.rgb - img.rgb).abs().mean() < 0.03


def test_webp_quality_100_is_lossless_and_silent(tmp_path):
    img = I.LoadedImage(rgb=torch.from_numpy(noisy_rgb()).permute(2, 0, 1).float() / 255)
    assert I.save_image(tmp_path / "o.webp", img.rgb, quality=100) == []
    assert (as_hwc8(I.load_image(tmp_path / "o.webp").rgb) == as_hwc8(img.rgb)).all()


def test_saved_values_are_exactly_to_uint8(tmp_path):
    x = torch.rand(3, 20, 24, generator=torch.Generator().manual_seed(1))
    x[0, 0, :4] = torch.tensor([0.5 / 255, 1.5 / 255, 254.5 / 255, 1.0])
    I.save_image(tmp_path / "o.png", x)
    assert (np.asarray(Image.open(tmp_path / "o.png")) == as_hwc8(x)).all()
    assert torch.equal(I.quantize(x) * 255, I.to_uint8(x).float())


# ---------------------------------------------------------------------------------------- alpha, grey, 16-bit
@pytest.mark.parametrize("suffix", [".png", ".tif", ".webp"])
def test_rgba_alpha_is_restored_bit_exactly(tmp_path, suffix):
    src = noisy_rgb(c=4, seed=2)
    Image.fromarray(src, "RGBA").save(tmp_path / "in.png")
    img = I.load_image(tmp_path / "in.png")
    assert img.alpha.dtype == np.uint8 and (img.alpha == src[..., 3]).all()
    assert (as_hwc8(img.rgb) == src[..., :3]).all()  # RGB is not premultiplied or altered
    I.save_image(tmp_path / f"out{suffix}", 1 - img.rgb, like=img, quality=100)
    out = np.asarray(Image.open(tmp_path / f"out{suffix}"))
    assert out.shape[-1] == 4 and (out[..., 3] == src[..., 3]).all()


def test_palette_transparency_and_la_keep_alpha(tmp_path):
    pal = Image.fromarray(np.arange(16 * 20, dtype=np.uint8).reshape(16, 20) % 7, "L").convert("P")
    pal.info["transparency"] = 3
    pal.save(tmp_path / "p.png", transparency=3)
    img = I.load_image(tmp_path / "p.png")
    expect = np.where(np.asarray(pal) == 3, 0, 255)
    assert (img.alpha == expect).all()
    I.save_image(tmp_path / "p_out.png", img.rgb, like=img)
    assert (np.asarray(Image.open(tmp_path / "p_out.png"))[..., 3] == expect).all()
    la = noisy_rgb(c=2, seed=3)
    Image.fromarray(la, "LA").save(tmp_path / "la.png")
    img = I.load_image(tmp_path / "la.png")
    assert img.is_grey and (img.alpha == la[..., 1]).all()
    I.save_image(tmp_path / "la_out.png", img.rgb, like=img)
    out = Image.open(tmp_path / "la_out.png")
    assert out.mode == "LA" and (np.asarray(out) == la).all()


def test_jpeg_output_drops_alpha_with_warning(tmp_path):
    Image.fromarray(noisy_rgb(c=4), "RGBA").save(tmp_path / "in.png")
    img = I.load_image(tmp_path / "in.png")
    notes = I.save_image(tmp_path / "o.jpg", img.rgb, like=img)
    assert any("alpha" in n for n in notes) and Image.open(tmp_path / "o.jpg").mode == "RGB"


def test_alpha_size_mismatch_is_refused(tmp_path):
    Image.fromarray(noisy_rgb(c=4), "RGBA").save(tmp_path / "in.png")
    img = I.load_image(tmp_path / "in.png")
    with pytest.raises(ImageError, match="unpad"):
        I.save_image(tmp_path / "o.png", img.rgb[:, :32, :32], like=img)


@pytest.mark.parametrize("suffix", [".png", ".jpg", ".tif"])
def test_greyscale_stays_greyscale(tmp_path, suffix):
    grey = noisy_rgb(c=1, seed=4)[..., 0]
    Image.fromarray(grey, "L").save(tmp_path / "g.png")
    img = I.load_image(tmp_path / "g.png")
    assert img.is_grey and img.mode == "L" and img.rgb.shape[0] == 3
    assert torch.equal(img.rgb[0], img.rgb[1]) and torch.equal(img.rgb[1], img.rgb[2])
    I.save_image(tmp_path / f"o{suffix}", img.rgb, like=img)
    out = Image.open(tmp_path / f"o{suffix}")
    assert out.mode == "L"
    if suffix != ".jpg":
        assert (np.asarray(out) == grey).all()


def test_grey_to_webp_is_grey_rgb(tmp_path):
    Image.fromarray(noisy_rgb(c=1)[..., 0], "L").save(tmp_path / "g.png")
    img = I.load_image(tmp_path / "g.png")
    cloaked = (img.rgb + 0.1 * torch.rand(img.rgb.shape, generator=torch.Generator().manual_seed(0))).clamp(0, 1)
    I.save_image(tmp_path / "o.webp", cloaked, like=img, quality=100)
    out = np.asarray(Image.open(tmp_path / "o.webp").convert("RGB"))
    assert (out[..., 0] == out[..., 1]).all() and (out[..., 1] == out[..., 2]).all()
    assert (out[..., 0] == as_hwc8(cloaked.mean(0, keepdim=True))[..., 0]).all()


def test_grey16_pillow_written_round_trips_exactly(tmp_path):
    vals = np.random.default_rng(5).integers(0, 65536, (24, 33), dtype=np.uint16)
    Image.fromarray(vals).save(tmp_path / "g16.png")  # Pillow's encoder: adaptive row filters
    img = I.load_image(tmp_path / "g16.png")
    assert img.bits == 16 and img.is_grey and (as_hwc16(img.rgb)[..., 0] == vals).all()
    for suffix in (".png", ".tif"):
        assert I.save_image(tmp_path / f"o{suffix}", img.rgb, like=img) == []
        out = Image.open(tmp_path / f"o{suffix}")
        assert out.mode.startswith("I;16") and (np.asarray(out).astype(np.uint16) == vals).all()


@pytest.mark.parametrize("channels", [3, 4, 2])
def test_png16_colour_round_trip_keeps_16_bit_values(tmp_path, channels):
    rng = np.random.default_rng(channels)
    arr = rng.integers(0, 65536, (21, 29, channels), dtype=np.uint16)
    (tmp_path / "in.png").write_bytes(ref_png16(arr, rng.integers(0, 5, 21)))  # every filter type, mixed
    img = I.load_image(tmp_path / "in.png")
    colour = arr[..., :-1] if channels in (2, 4) else arr
    assert img.bits == 16 and img.is_grey == (channels == 2)
    assert (as_hwc16(img.rgb)[..., :colour.shape[-1]] == colour).all()
    if channels in (2, 4):
        assert img.alpha.dtype == np.uint16 and (img.alpha == arr[..., -1]).all()
    I.save_image(tmp_path / "out.png", img.rgb, like=img)
    data = (tmp_path / "out.png").read_bytes()
    assert data[24] == 16 and data[25] == {2: 4, 3: 2, 4: 6}[channels]  # IHDR: 16-bit, same colour type
    back = I.load_image(tmp_path / "out.png")
    assert torch.equal(back.rgb, img.rgb) and (back.alpha is None or (back.alpha == img.alpha).all())
    if channels == 3:  # Pillow reads 16-bit colour as the high byte: an independent check of the file
        assert (np.asarray(Image.open(tmp_path / "out.png")) == (arr >> 8)).all()


def test_unfilter_matches_pillow_on_adaptively_filtered_png(tmp_path):
    grad = np.add.outer(np.arange(48), np.arange(64))[..., None] * np.array([1, 2, 3])
    src = ((grad + noisy_rgb(48, 64, seed=6) // 8) % 256).astype(np.uint8)
    Image.fromarray(src).save(tmp_path / "a.png")
    data = (tmp_path / "a.png").read_bytes()
    raw = zlib.decompress(b"".join(p for t, p in png16._png_chunks(data) if t == b"IDAT"))
    rows = np.frombuffer(raw, np.uint8).reshape(48, 1 + 64 * 3)
    assert len(set(rows[:, 0].tolist())) > 1  # Pillow chose several filter types
    assert (png16._unfilter(rows, 64, 3) == src).all()


def test_16_bit_into_8_bit_format_warns(tmp_path):
    arr = np.random.default_rng(7).integers(0, 65536, (20, 20, 3), dtype=np.uint16)
    (tmp_path / "in.png").write_bytes(ref_png16(arr, [1] * 20))
    img = I.load_image(tmp_path / "in.png")
    notes = I.save_image(tmp_path / "o.tif", img.rgb, like=img)
    assert any("16-bit" in n for n in notes)
    assert (np.asarray(Image.open(tmp_path / "o.tif")) == as_hwc8(img.rgb)).all()


def test_icc_profile_and_dpi_are_kept(tmp_path):
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    Image.fromarray(noisy_rgb()).save(tmp_path / "in.png", icc_profile=icc, dpi=(300, 300))
    img = I.load_image(tmp_path / "in.png")
    assert img.icc_profile == icc and round(img.dpi[0]) == 300
    I.save_image(tmp_path / "o.jpg", img.rgb, like=img)
    out = Image.open(tmp_path / "o.jpg")
    assert out.info.get("icc_profile") == icc and round(out.info["dpi"][0]) == 300
    img16 = I.LoadedImage(rgb=img.rgb, bits=16, icc_profile=icc, dpi=(300, 300))
    I.save_image(tmp_path / "o16.png", img.rgb, like=img16)
    out = Image.open(tmp_path / "o16.png")
    assert out.info.get("icc_profile") == icc and round(out.info["dpi"][0]) == 300


# ---------------------------------------------------------------------------------------------- EXIF, padding
@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_matches_pillow(tmp_path, orientation):
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(noisy_rgb(20, 30)).save(tmp_path / "o.png", exif=exif.tobytes())
    img = I.load_image(tmp_path / "o.png")
    ref = np.asarray(ImageOps.exif_transpose(Image.open(tmp_path / "o.png")))
    assert (as_hwc8(img.rgb) == ref).all()


def test_exif_rotated_jpeg_loads_upright(tmp_path):
    upright = np.zeros((48, 32, 3), np.uint8)
    upright[:16] = 255  # white band on top of a portrait image
    exif = Image.Exif()
    exif[0x0112] = 6  # stored rotated: the viewer must turn it 90 degrees clockwise
    Image.fromarray(upright).transpose(Image.Transpose.ROTATE_90).save(tmp_path / "r.jpg", exif=exif.tobytes(),
                                                                      quality=95)
    img = I.load_image(tmp_path / "r.jpg")
    assert img.size == (32, 48)
    assert img.rgb[:, :12].mean() > 0.9 and img.rgb[:, 20:].mean() < 0.1


def test_exif_orientation_in_16_bit_png(tmp_path):
    arr = np.random.default_rng(8).integers(0, 65536, (18, 26, 3), dtype=np.uint16)
    exif = Image.Exif()
    exif[0x0112] = 8
    (tmp_path / "o.png").write_bytes(ref_png16(arr, [4] * 18, _chunk(b"eXIf", exif.tobytes()[6:])))
    img = I.load_image(tmp_path / "o.png")
    assert (as_hwc16(img.rgb) == np.rot90(arr, 1)).all()


@pytest.mark.parametrize("h,w,m", [(17, 31, 8), (64, 64, 8), (5, 3, 8), (33, 20, 64), (1, 1, 4)])
def test_pad_to_multiple_and_unpad_restore_exact_size(h, w, m):
    x = torch.rand(2, 3, h, w, generator=torch.Generator().manual_seed(0))
    padded, size = I.pad_to_multiple(x, m)
    assert size == (h, w) and padded.shape[-2] % m == 0 and padded.shape[-1] % m == 0
    assert padded.shape[-2] - h < m and padded.shape[-1] - w < m
    assert torch.equal(I.unpad(padded, size), x)
    p3, s3 = I.pad_to_multiple(x[0], m, mode="replicate")
    assert p3.dim() == 3 and torch.equal(I.unpad(p3, s3), x[0])
    with pytest.raises(ValueError):
        I.pad_to_multiple(x, 0)


# ------------------------------------------------------------------------------------------------ bad inputs
def _make_bad(tmp_path, kind):
    p = tmp_path / {"text": "notes.png", "trunc_png": "cut.png", "trunc_jpg": "cut.jpg", "tiny": "dot.png",
                    "empty": "empty.png", "huge": "huge.png", "bomb": "bomb.png", "missing": "nowhere.png",
                    "folder": "adir.png", "gif": "anim.gif"}[kind]
    if kind == "text":
        p.write_text("this is not an image\n")
    elif kind in ("trunc_png", "trunc_jpg"):
        buf = io.BytesIO()
        Image.fromarray(noisy_rgb(64, 64)).save(buf, "PNG" if kind == "trunc_png" else "JPEG")
        p.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    elif kind == "tiny":
        Image.new("RGB", (1, 1)).save(p)
    elif kind == "empty":
        p.write_bytes(b"")
    elif kind == "huge":
        png_header_only(p, 10000, 10000)
    elif kind == "bomb":
        png_header_only(p, 20000, 20000)
    elif kind == "folder":
        p.mkdir()
    elif kind == "gif":
        Image.new("P", (32, 32)).save(p)
    return p


@pytest.mark.parametrize("kind,words", [("text", "not an image"), ("trunc_png", "truncated"),
                                        ("trunc_jpg", "truncated"), ("tiny", "minimum is 16"),
                                        ("empty", "0 bytes"), ("huge", "10000x10000"), ("bomb", "max_pixels"),
                                        ("missing", "not found"), ("folder", "folder"), ("gif", "GIF")])
def test_bad_input_gives_one_clear_image_error(tmp_path, kind, words, monkeypatch):
    p = _make_bad(tmp_path, kind)
    if kind in ("huge", "bomb"):  # must be refused from the header, before any pixel is decoded
        monkeypatch.setattr(Image.Image, "load", lambda self: pytest.fail("pixels were decoded"))
    with pytest.raises(ImageError) as e:
        I.load_image(p)
    msg = str(e.value)
    assert p.name in msg and words in msg and "\n" not in msg
    if kind in ("huge", "bomb"):
        assert "max_pixels" in msg and str(I.DEFAULT_MAX_PIXELS) in msg and "tiles" in msg


def test_max_pixels_and_min_side_can_be_changed(tmp_path):
    Image.fromarray(noisy_rgb(40, 56)).save(tmp_path / "a.png")
    with pytest.raises(ImageError, match="40x56|56x40"):
        I.load_image(tmp_path / "a.png", max_pixels=1000)
    Image.new("RGB", (8, 8)).save(tmp_path / "small.png")
    assert I.load_image(tmp_path / "small.png", min_side=4).size == (8, 8)


def test_cmyk_jpeg_is_converted_with_warning(tmp_path):
    Image.new("CMYK", (32, 24), (0, 255, 255, 0)).save(tmp_path / "print.jpg")
    img = I.load_image(tmp_path / "print.jpg")
    assert img.mode == "CMYK" and any("CMYK converted to RGB" in n for n in img.warnings)
    r, g, b = img.rgb.mean((1, 2)).tolist()
    assert r > 0.9 and g < 0.1 and b < 0.1  # CMY(0,1,1) is red


def test_multi_page_tiff_uses_first_page_with_warning(tmp_path):
    pages = [Image.fromarray(noisy_rgb(seed=s)) for s in range(2)]
    pages[0].save(tmp_path / "m.tif", save_all=True, append_images=pages[1:])
    img = I.load_image(tmp_path / "m.tif")
    assert (as_hwc8(img.rgb) == np.asarray(pages[0])).all() and any("frames" in n for n in img.warnings)


# ------------------------------------------------------------------------------------------ atomic writes
def _fake_encoder(self, fp, *args, **kwargs):
    fp.write(b"\x89PNG partial data")
    raise KeyboardInterrupt


@pytest.mark.parametrize("bits", [8, 16])
def test_interrupted_save_leaves_no_file_and_no_temp(tmp_path, monkeypatch, bits):
    monkeypatch.setattr(Image.Image, "save", _fake_encoder)
    monkeypatch.setattr(I, "_write_png16", lambda fp, *a, **k: _fake_encoder(None, fp))
    like = I.LoadedImage(rgb=torch.zeros(3, 16, 16), bits=bits)
    with pytest.raises(KeyboardInterrupt):
        I.save_image(tmp_path / "out.png", torch.rand(3, 16, 16), like=like)
    assert os.listdir(tmp_path) == []
    (tmp_path / "keep.png").write_bytes(b"old")
    with pytest.raises(KeyboardInterrupt):
        I.save_image(tmp_path / "keep.png", torch.rand(3, 16, 16), like=like)
    assert os.listdir(tmp_path) == ["keep.png"] and (tmp_path / "keep.png").read_bytes() == b"old"


def test_save_refuses_to_overwrite_its_input(tmp_path):
    Image.fromarray(noisy_rgb()).save(tmp_path / "art.png")
    img = I.load_image(tmp_path / "art.png")
    with pytest.raises(ImageError, match="overwrite"):
        I.save_image(tmp_path / "art.png", 1 - img.rgb, like=img)
    assert (np.asarray(Image.open(tmp_path / "art.png")) == noisy_rgb()).all()
    I.save_image(tmp_path / "art.png", 1 - img.rgb, like=img, overwrite_input=True)
    assert (np.asarray(Image.open(tmp_path / "art.png")) == 255 - noisy_rgb()).all()


def test_save_rejects_bad_tensors_and_suffixes(tmp_path):
    with pytest.raises(ImageError, match=".gif"):
        I.save_image(tmp_path / "o.gif", torch.rand(3, 16, 16))
    with pytest.raises(ValueError, match="NaN"):
        I.save_image(tmp_path / "o.png", torch.full((1, 3, 16, 16), float("nan")))
    with pytest.raises(ValueError, match="batch of 2"):
        I.save_image(tmp_path / "o.png", torch.rand(2, 3, 16, 16))
    assert os.listdir(tmp_path) == []


def test_unwritable_output_gives_output_error(tmp_path):
    from protect_core.errors import OutputError

    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputError, match="cannot save image"):
        I.save_image(tmp_path / "file" / "o.png", torch.rand(3, 16, 16))


def test_atomic_write_text_and_bytes(tmp_path):
    target = tmp_path / "sub" / "summary.json"
    I.atomic_write_text(target, '{"a": 1}\n')
    assert target.read_text() == '{"a": 1}\n' and os.listdir(target.parent) == ["summary.json"]
    os.chmod(target, 0o640)
    I.atomic_write_bytes(target, b"xy")
    assert target.read_bytes() == b"xy" and (target.stat().st_mode & 0o777) == 0o640


# ------------------------------------------------------------------------------------ validation and listing
@pytest.mark.parametrize("bad,words", [(torch.full((3, 8, 8), float("nan")), "NaN"),
                                       (torch.full((1, 3, 8, 8), float("inf")), "NaN/inf"),
                                       (torch.rand(8, 8), "shape"), (torch.rand(4, 8, 8), "3 channels"),
                                       (torch.rand(3, 8, 8) * 2 - 1, "[-1, 1]"),
                                       (torch.zeros(3, 8, 8, dtype=torch.uint8), "float"), ("x", "tensor")])
def test_validate_tensor_rejects(bad, words):
    with pytest.raises(ValueError) as e:
        I.validate_tensor(bad, "input")
    assert words in str(e.value) and str(e.value).startswith("input")


def test_validate_tensor_accepts_good_layouts():
    x = torch.rand(2, 3, 8, 8)
    assert I.validate_tensor(x) is x
    assert I.validate_tensor(torch.rand(1, 8, 8, 3), channel_dim=-1) is not None
    assert I.validate_tensor(x * 2 - 1, value_range=(-1, 1)) is not None


def test_list_images(tmp_path):
    for name in ["b.png", "a.JPG", "c.webp", "notes.txt", ".hidden.png", ".b.png.x1.part", "sub/d.tif"]:
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    assert [p.name for p in I.list_images(tmp_path)] == ["a.JPG", "b.png", "c.webp"]
    got = I.list_images([tmp_path, tmp_path / "b.png"], recursive=True)
    assert [p.name for p in got] == ["a.JPG", "b.png", "c.webp", "d.tif"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(ImageError, match="no images found.*recursive"):
        I.list_images(tmp_path / "empty")
    with pytest.raises(ImageError, match="missing.png"):
        I.list_images([tmp_path / "missing.png"])
    with pytest.raises(ImageError, match="notes.txt"):
        I.list_images([tmp_path / "notes.txt"])


def test_stack_same_size_groups_in_order():
    imgs = [torch.rand(3, 8, 8), torch.rand(3, 8, 12), torch.rand(3, 8, 8),
            I.LoadedImage(rgb=torch.rand(3, 8, 8))]
    groups = I.stack_same_size(imgs, max_batch=2)
    assert [g.indices for g in groups] == [[0, 2], [3], [1]]
    assert torch.equal(groups[0].batch[1], imgs[2]) and groups[2].batch.shape == (1, 3, 8, 12)
