"""GrIDPure (Zhao et al. 2024): DiffPure on overlapping tiles, repeated with a small blend of the input.

Each iteration cuts the image into overlapping tiles (``tile`` px, ``stride`` px apart, the last tile flush with
the border), adds a "corner mosaic" tile made of the four corners (they are covered by fewer tiles than the
middle), runs SDEdit from timestep ``t`` on every tile, averages the overlapping results and blends
``(1 - gamma) * purified + gamma * x``. Tiles never exceed the image: when the image is smaller than ``tile``, the
tile shrinks to the image (rounded to the VAE's multiple) and the stride shrinks in proportion.
"""
from __future__ import annotations

import torch

from ...images import pad_to_multiple, unpad
from ..base import Purifier, register
from ..sdedit import check_diffusion_params, schedule_for_timestep, sdedit, sdedit_timesteps


def tile_starts(length: int, tile: int, stride: int) -> list[int]:
    """Start offsets of tiles of size ``tile`` every ``stride`` px covering ``length``; the last ends at the border."""
    if tile >= length:
        return [0]
    starts = list(range(0, length - tile + 1, stride))
    if starts[-1] != length - tile:
        starts.append(length - tile)
    return starts


def fit_tiling(h: int, w: int, tile: int, stride: int, multiple: int) -> tuple[int, int, int, int]:
    """(tile_h, tile_w, stride_h, stride_w): tiles no larger than the image, multiples of ``multiple``, and the
    stride scaled with the tile when the tile had to shrink."""
    out = []
    for length in (h, w):
        t = max(multiple, min(tile, length) // multiple * multiple)
        s = stride if t == tile else max(multiple, round(stride * t / tile / multiple) * multiple)
        out.append((t, max(1, min(s, t))))
    return out[0][0], out[1][0], out[0][1], out[1][1]


def cut_tiles(x: torch.Tensor, th: int, tw: int, sh: int, sw: int, mosaic: bool):
    """Tiles (N*B, C, th, tw) and their placements: list of (kind, y, x) per tile, kind "grid" or "mosaic"."""
    h, w = x.shape[-2:]
    places = [("grid", y, x0) for y in tile_starts(h, th, sh) for x0 in tile_starts(w, tw, sw)]
    tiles = [x[..., y:y + th, x0:x0 + tw] for _, y, x0 in places]
    if mosaic and len(places) > 1:
        tiles.append(corner_mosaic(x, th, tw))
        places.append(("mosaic", 0, 0))
    return torch.cat(tiles), places


def _corner_boxes(h: int, w: int, th: int, tw: int):
    """(src_y, src_x, dst_y, dst_x, height, width) of the four corners within the image and within the mosaic."""
    a, b = th // 2, tw // 2
    return [(0, 0, 0, 0, a, b), (0, w - (tw - b), 0, b, a, tw - b),
            (h - (th - a), 0, a, 0, th - a, b), (h - (th - a), w - (tw - b), a, b, th - a, tw - b)]


def corner_mosaic(x: torch.Tensor, th: int, tw: int) -> torch.Tensor:
    """One th x tw tile holding the image's four corners, each in its own quadrant."""
    h, w = x.shape[-2:]
    out = x.new_empty(*x.shape[:-2], th, tw)
    for sy, sx, dy, dx, hh, ww in _corner_boxes(h, w, th, tw):
        out[..., dy:dy + hh, dx:dx + ww] = x[..., sy:sy + hh, sx:sx + ww]
    return out


def merge_tiles(tiles: torch.Tensor, places, shape) -> torch.Tensor:
    """Average purified tiles back into an image of ``shape`` (B, C, H, W), overlaps weighted equally."""
    b, _, h, w = shape
    acc = tiles.new_zeros(shape)
    cnt = tiles.new_zeros((1, 1, h, w))
    for k, (kind, y, x0) in enumerate(places):
        t = tiles[k * b:(k + 1) * b]
        th, tw = t.shape[-2:]
        if kind == "grid":
            acc[..., y:y + th, x0:x0 + tw] += t
            cnt[..., y:y + th, x0:x0 + tw] += 1
        else:
            for sy, sx, dy, dx, hh, ww in _corner_boxes(h, w, th, tw):
                acc[..., sy:sy + hh, sx:sx + ww] += t[..., dy:dy + hh, dx:dx + ww]
                cnt[..., sy:sy + hh, sx:sx + ww] += 1
    return acc / cnt


@register
class GrIDPure(Purifier):
    name = "gridpure"
    summary = "DiffPure on overlapping tiles plus a corner mosaic, averaged and blended with the input, repeated"
    source = "Zhao et al. 2024, GrIDPure (256 tiles, stride 128, t 10, 20 iterations, gamma 0.1)"
    needs_host = True
    defaults = {"t": 10, "denoise_steps": 10, "iterations": 20, "gamma": 0.1, "tile": 256, "stride": 128,
                "mosaic": True, "tile_batch": 4, "prompt": "", "negative": "", "guidance": 1.0}
    param_doc = {"t": "timestep (of the 1000-step schedule) each tile is noised to",
                 "denoise_steps": "DDIM steps from t back to 0",
                 "iterations": "purify-and-blend rounds",
                 "gamma": "share of the previous image kept each round: (1-gamma)*purified + gamma*x",
                 "tile": "tile size in px (shrunk to the image when larger)",
                 "stride": "tile spacing in px (scaled with the tile when it shrinks)",
                 "mosaic": "also purify a tile made of the four corners",
                 "tile_batch": "tiles sent through the model at once (memory vs speed)",
                 "prompt": "text prompt for denoising (empty = unconditional, as in the paper)",
                 "negative": "negative prompt (used when guidance != 1)",
                 "guidance": "classifier-free guidance scale (1 = none)"}

    def validate(self, params, images):
        for key in ("t", "denoise_steps", "iterations", "tile", "stride", "tile_batch"):
            v = params[key]
            if not isinstance(v, int) or v < (0 if key == "iterations" else 1):
                raise ValueError(f"gridpure: {key} must be a positive int, got {v!r}")
        g = params["gamma"]
        if not isinstance(g, (int, float)) or not 0 <= g <= 1:
            raise ValueError(f"gridpure: gamma must be in [0, 1], got {g!r}")
        if not isinstance(params["mosaic"], bool):
            raise ValueError(f"gridpure: mosaic must be true or false, got {params['mosaic']!r}")
        check_diffusion_params(self.name, params)

    def _plan(self, params, images, host):
        m = host.vae_scale_factor
        h, w = (-(-s // m) * m for s in images.shape[-2:])
        th, tw, sh, sw = fit_tiling(h, w, params["tile"], params["stride"], m)
        n_tiles = len(tile_starts(h, th, sh)) * len(tile_starts(w, tw, sw))
        n_tiles += 1 if params["mosaic"] and n_tiles > 1 else 0
        strength, steps = schedule_for_timestep(host, params["t"], params["denoise_steps"])
        return (th, tw, sh, sw), n_tiles, strength, steps

    def count_steps(self, params, images, host):
        _, n_tiles, strength, steps = self._plan(params, images, host)
        chunks = -(-n_tiles * images.shape[0] // params["tile_batch"])
        return params["iterations"] * chunks * len(sdedit_timesteps(host, strength, steps))

    def memory_pixels(self, params, images, host):
        (th, tw, _, _), n_tiles, _, _ = self._plan(params, images, host)
        return min(params["tile_batch"], n_tiles * images.shape[0]) * th * tw

    def run(self, host, images, params, generator, progress):
        (th, tw, sh, sw), n_tiles, strength, steps = self._plan(params, images, host)
        xp, size = pad_to_multiple(images.float(), host.vae_scale_factor)
        gamma, bs = float(params["gamma"]), params["tile_batch"]
        x = xp
        for _ in range(params["iterations"]):
            tiles, places = cut_tiles(x, th, tw, sh, sw, params["mosaic"])
            pure = torch.cat([sdedit(host, tiles[i:i + bs], strength=strength, steps=steps,
                                     prompt=params["prompt"], negative=params["negative"],
                                     guidance=params["guidance"], generator=generator, progress=progress)
                              for i in range(0, tiles.shape[0], bs)])
            x = (1 - gamma) * merge_tiles(pure.to(x.device), places, x.shape) + gamma * x
        ts = sdedit_timesteps(host, strength, steps)
        info = {"tile": [th, tw], "stride": [sh, sw], "tiles_per_iteration": n_tiles, "t_start": ts[0],
                "denoise_steps": len(ts)}
        return unpad(x, size).clamp(0, 1), info
