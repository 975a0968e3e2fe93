"""Perceptual shaping of the L-inf budget: spend it where the eye does not look (texture, edges), not uniformly.

The optimiser's option ``shaping`` = "texture" replaces the uniform box ``|delta| <= eps`` by a per-pixel box
``|delta| <= eps * m`` with the map ``m`` of :func:`texture_map` (1 in the most textured tenth of the image, down to
``shaping_floor`` in flat areas, where noise is most visible: the contrast-masking idea behind JND models and
Impasto's perceptual map). The PGD step is scaled by the same map, so every pixel crosses its own box in the same
number of steps. The map is computed once from the clean image; ``max |delta| <= eps`` still holds everywhere, and
the quantisation and perceptual-budget guarantees of :mod:`protect_core.cloak.optimize` hold per pixel.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

SHAPINGS = ("none", "texture")
#: luminance weights (BT.601)
_LUMA = (0.299, 0.587, 0.114)


def local_std(y: torch.Tensor, radius: int = 3) -> torch.Tensor:
    """Standard deviation of ``y`` (B, 1, H, W) in a (2r+1)^2 box around each pixel (reflect/replicate padding)."""
    k = 2 * radius + 1
    mode = "reflect" if min(y.shape[-2:]) > radius else "replicate"
    p = F.pad(y, (radius,) * 4, mode=mode)
    mean = F.avg_pool2d(p, k, stride=1)
    sq = F.avg_pool2d(p * p, k, stride=1)
    return (sq - mean * mean).clamp(min=0).sqrt()


@torch.no_grad()
def texture_map(clean: torch.Tensor, floor: float = 0.25, radius: int = 3, quantile: float = 0.9) -> torch.Tensor:
    """(B, 1, H, W) in [floor, 1]: local luminance contrast relative to the image's own ``quantile`` of it."""
    if not 0 < float(floor) <= 1:
        raise ValueError(f"option shaping_floor must be in (0, 1], got {floor!r}")
    w = torch.tensor(_LUMA, device=clean.device, dtype=clean.dtype).view(1, 3, 1, 1)
    s = local_std((clean * w).sum(1, keepdim=True), radius)
    ref = torch.quantile(s.flatten(1), quantile, dim=1).clamp(min=1e-4).view(-1, 1, 1, 1)
    return float(floor) + (1 - float(floor)) * (s / ref).clamp(0, 1)


def check_shaping(options: dict) -> None:
    """Raise a one-line ValueError for a bad ``shaping`` / ``shaping_floor`` option (before any model work)."""
    kind = options.get("shaping", "none")
    if kind not in SHAPINGS:
        raise ValueError(f"option shaping must be one of {', '.join(SHAPINGS)}, got {kind!r}")
    floor = options.get("shaping_floor", 0.25)
    if isinstance(floor, bool) or not isinstance(floor, (int, float)) or not 0 < float(floor) <= 1:
        raise ValueError(f"option shaping_floor must be a number in (0, 1], got {floor!r}")


def eps_map(clean: torch.Tensor, eps: float, options: dict) -> torch.Tensor | float:
    """The per-pixel budget for option ``shaping`` (``eps`` itself when "none", the default)."""
    check_shaping(options)
    if options.get("shaping", "none") == "none":
        return eps
    return eps * texture_map(clean, float(options.get("shaping_floor", 0.25)))
