"""Differentiable stand-ins for what happens to art after it is posted: JPEG, resizing, blur and noise.

The cloak optimiser's ``robust`` option (expectation over transforms, as MetaCloak and Mist's robust mode do) passes
the cloaked image through one random transform from here before the method's loss, so the perturbation that comes
out keeps working after those transforms. Every transform maps ``(B, 3, H, W)`` in ``[0, 1]`` to the same shape and
range, is differentiable in its input, and draws its randomness only from the ``torch.Generator`` it is given.

* ``jpeg``: real Pillow JPEG at quality 60..90, made differentiable by the straight-through estimator
  ``x + (jpeg(x) - x).detach()`` (forward = true JPEG, backward = identity);
* ``resize``: bilinear (antialiased) downscale to 50..90 % and back up;
* ``blur``: Gaussian blur, sigma 0.5..1.5 px;
* ``noise``: additive Gaussian noise, sigma 1/255..10/255.
"""
from __future__ import annotations

import io
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image


def uniform(generator: torch.Generator, lo: float, hi: float) -> float:
    """A seeded uniform draw in [lo, hi) (the transforms' and the purifier stand-ins' parameters)."""
    return lo + (hi - lo) * float(torch.rand((), generator=generator))


def jpeg_roundtrip(x: torch.Tensor, quality: int) -> torch.Tensor:
    """Exact Pillow JPEG compression of each image at ``quality`` (not differentiable; see :func:`jpeg`)."""
    out = []
    for img in x.detach().float().clamp(0, 1).cpu():
        arr = (img.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, format="JPEG", quality=int(quality))
        buf.seek(0)
        dec = np.asarray(Image.open(buf).convert("RGB"), dtype=np.float32) / 255.0
        out.append(torch.from_numpy(dec.copy()).permute(2, 0, 1))
    return torch.stack(out).to(x.device, x.dtype)


def jpeg(x: torch.Tensor, generator: torch.Generator, quality: tuple[int, int] = (60, 90)) -> torch.Tensor:
    q = int(round(uniform(generator, *quality)))
    return x + (jpeg_roundtrip(x, q) - x).detach()


def resize(x: torch.Tensor, generator: torch.Generator, scale: tuple[float, float] = (0.5, 0.9)) -> torch.Tensor:
    h, w = x.shape[-2:]
    s = uniform(generator, *scale)
    small = F.interpolate(x, size=(max(1, round(h * s)), max(1, round(w * s))), mode="bilinear",
                          align_corners=False, antialias=True)
    return F.interpolate(small, size=(h, w), mode="bilinear", align_corners=False).clamp(0, 1)


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    radius = max(1, int(round(3 * sigma)))
    ax = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    g = torch.exp(-(ax ** 2) / (2 * sigma ** 2))
    g = g / g.sum()
    c = x.shape[1]
    pad_mode = "reflect" if min(x.shape[-2:]) > radius else "replicate"
    y = F.pad(x, (radius, radius, 0, 0), mode=pad_mode)
    y = F.conv2d(y, g.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    y = F.pad(y, (0, 0, radius, radius), mode=pad_mode)
    return F.conv2d(y, g.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def blur(x: torch.Tensor, generator: torch.Generator, sigma: tuple[float, float] = (0.5, 1.5)) -> torch.Tensor:
    return gaussian_blur(x, uniform(generator, *sigma))


def noise(x: torch.Tensor, generator: torch.Generator, sigma: tuple[float, float] = (1 / 255, 10 / 255)):
    s = uniform(generator, *sigma)
    n = torch.randn(x.shape, generator=generator, device="cpu").to(x.device, x.dtype)
    return (x + s * n).clamp(0, 1)


TRANSFORMS: dict[str, Callable[[torch.Tensor, torch.Generator], torch.Tensor]] = {
    "jpeg": jpeg, "resize": resize, "blur": blur, "noise": noise,
}


def random_transform(x: torch.Tensor, generator: torch.Generator,
                     names: tuple[str, ...] | list[str] | None = None) -> torch.Tensor:
    """Apply one transform chosen uniformly (seeded) from ``names`` (default: all of :data:`TRANSFORMS`)."""
    names = list(names or TRANSFORMS)
    unknown = [n for n in names if n not in TRANSFORMS]
    if unknown:
        raise ValueError(f"unknown robust transform(s) {unknown}; choose from {', '.join(TRANSFORMS)}")
    pick = names[int(torch.randint(len(names), (), generator=generator))]
    return TRANSFORMS[pick](x, generator)
