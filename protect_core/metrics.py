"""Image-similarity measures used as budgets, stats and scores: PSNR, SSIM and a perceptual distance.

All take float tensors ``(B, C, H, W)`` in ``[0, 1]`` and return one value per image (shape ``(B,)``); all are
differentiable, so they serve both as reported numbers and as losses (Glaze's perceptual budget, IMPRESS's hinge).

``perceptual_distance`` needs no downloaded weights: it is DSSIM (1 - SSIM)/2 averaged over a 3-level image pyramid,
on a scale where about 0.01 is invisible and 0.1 is clearly visible. When the ``lpips`` package and its weights are
already on the machine, ``perceptual_distance(..., kind="lpips")`` uses LPIPS instead; nothing is ever downloaded.
"""
from __future__ import annotations

import functools
import os

import torch
import torch.nn.functional as F


def psnr(x: torch.Tensor, y: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    mse = (x.float() - y.float()).pow(2).flatten(1).mean(1)
    return 10 * torch.log10(data_range ** 2 / mse.clamp(min=1e-12))


@functools.lru_cache(maxsize=8)
def _gauss(size: int, sigma: float, channels: int, device: str, dtype: torch.dtype) -> torch.Tensor:
    ax = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(ax ** 2) / (2 * sigma ** 2))
    g = (g / g.sum()).to(dtype)
    k = torch.outer(g, g)
    return k.expand(channels, 1, size, size).contiguous().to(device)


def ssim_map(x: torch.Tensor, y: torch.Tensor, data_range: float = 1.0, size: int = 11,
             sigma: float = 1.5) -> torch.Tensor:
    """Per-pixel SSIM (Wang et al. 2004, Gaussian window 11 / 1.5, K1 .01, K2 .03), valid region only."""
    c = x.shape[1]
    size = min(size, x.shape[-1], x.shape[-2])
    k = _gauss(size, sigma, c, str(x.device), x.dtype)
    mu_x, mu_y = F.conv2d(x, k, groups=c), F.conv2d(y, k, groups=c)
    sxx = F.conv2d(x * x, k, groups=c) - mu_x ** 2
    syy = F.conv2d(y * y, k, groups=c) - mu_y ** 2
    sxy = F.conv2d(x * y, k, groups=c) - mu_x * mu_y
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    return ((2 * mu_x * mu_y + c1) * (2 * sxy + c2)) / ((mu_x ** 2 + mu_y ** 2 + c1) * (sxx + syy + c2))


def ssim(x: torch.Tensor, y: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    return ssim_map(x.float(), y.float(), data_range).flatten(1).mean(1)


def dssim_pyramid(x: torch.Tensor, y: torch.Tensor, levels: int = 3) -> torch.Tensor:
    """Weight-free perceptual distance: mean of (1 - SSIM)/2 over ``levels`` of a 2x average-pool pyramid."""
    x, y = x.float(), y.float()
    total, n = 0.0, 0
    for level in range(levels):
        if level:
            if min(x.shape[-2:]) < 22:
                break
            x, y = F.avg_pool2d(x, 2), F.avg_pool2d(y, 2)
        total = total + (1 - ssim(x, y)) / 2
        n += 1
    return total / n


def _lpips_model(device):
    """LPIPS only when the package and its backbone weights are already local; else None (never downloads)."""
    try:
        import lpips  # noqa: F401
    except ImportError:
        return None
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        import torch.hub

        cached = os.path.join(torch.hub.get_dir(), "checkpoints", "alexnet-owt-7be5be79.pth")
        if not os.path.exists(cached):
            return None
        model = lpips.LPIPS(net="alex", verbose=False).to(device).eval()
        model.requires_grad_(False)
        return model
    except Exception:
        return None


_LPIPS = {}


def lpips_available(device="cpu") -> bool:
    key = str(device)
    if key not in _LPIPS:
        _LPIPS[key] = _lpips_model(device)
    return _LPIPS[key] is not None


def perceptual_distance(x: torch.Tensor, y: torch.Tensor, kind: str = "auto") -> torch.Tensor:
    """Perceptual distance per image. ``kind``: "dssim" (offline default), "lpips", or "auto" (LPIPS if local)."""
    if kind not in ("auto", "dssim", "lpips"):
        raise ValueError(f"unknown perceptual distance {kind!r}")
    if kind in ("auto", "lpips") and lpips_available(x.device):
        return _LPIPS[str(x.device)](x * 2 - 1, y * 2 - 1, normalize=False).flatten(1).mean(1)
    if kind == "lpips":
        raise RuntimeError("LPIPS was asked for, but the lpips package or its AlexNet weights are not on this "
                           "machine; use kind='dssim' (offline)")
    return dssim_pyramid(x, y)


def image_stats(clean: torch.Tensor, cloaked: torch.Tensor) -> list[dict]:
    """Per-image L-inf (in /255 units), PSNR and SSIM between two [0, 1] batches, as plain numbers."""
    with torch.no_grad():
        linf = (cloaked.float() - clean.float()).abs().flatten(1).amax(1) * 255
        p, s = psnr(clean, cloaked), ssim(clean, cloaked)
    return [{"linf_255": round(float(a), 3), "psnr": round(float(b), 3), "ssim": round(float(c), 5)}
            for a, b, c in zip(linf, p, s)]
