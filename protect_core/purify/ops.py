"""Pure image operations behind the filter purifiers: JPEG round trip, Gaussian blur and noise, down/up resize,
bilateral filter and guided filter. All take and return float tensors ``(B, C, H, W)`` in ``[0, 1]``.

Written in torch (JPEG through Pillow); no OpenCV. Conventions follow the tools they stand in for: the bilateral
filter uses an L1 colour distance and a disc-shaped window of diameter ``d`` (as OpenCV's ``bilateralFilter``),
the guided filter is He et al.'s (box windows of radius ``r``, regulariser ``eps``), applied channel by channel.
"""
from __future__ import annotations

import io

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "area")
JPEG_SUBSAMPLING = ("4:4:4", "4:2:2", "4:2:0")


def _pad(x: torch.Tensor, ph: int, pw: int) -> torch.Tensor:
    """Reflect-pad by (ph, pw) on each side (replicate when the image is too small to reflect)."""
    if not (ph or pw):
        return x
    mode = "reflect" if ph < x.shape[-2] and pw < x.shape[-1] else "replicate"
    return F.pad(x, (pw, pw, ph, ph), mode=mode)


def to_uint8_array(img01: torch.Tensor) -> np.ndarray:
    """(3, H, W) in [0, 1] -> (H, W, 3) uint8, rounding like every 8-bit output of StyleCloak."""
    from ..images import to_uint8

    return np.ascontiguousarray(to_uint8(img01).cpu().numpy().transpose(1, 2, 0))


def jpeg_roundtrip(x: torch.Tensor, quality: int = 75, subsampling: str = "4:2:0") -> torch.Tensor:
    """Encode each image as an 8-bit JPEG with Pillow at ``quality`` and decode it again."""
    out = []
    for img in x:
        buf = io.BytesIO()
        Image.fromarray(to_uint8_array(img)).save(buf, format="JPEG", quality=int(quality),
                                                  subsampling=subsampling)
        buf.seek(0)
        with Image.open(buf) as im:
            arr = np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0
        out.append(torch.from_numpy(arr.copy()).permute(2, 0, 1))
    return torch.stack(out).to(x.device, x.dtype)


def gaussian_kernel1d(kernel: int, sigma: float) -> torch.Tensor:
    """Normalised 1-D Gaussian of odd length ``kernel`` (float64)."""
    ax = torch.arange(kernel, dtype=torch.float64) - (kernel - 1) / 2
    g = torch.exp(-(ax ** 2) / (2 * sigma ** 2))
    return g / g.sum()


def default_blur_sigma(kernel: int) -> float:
    """The usual sigma for a kernel size when none is given: 0.3 * ((k - 1) / 2 - 1) + 0.8 (0.8 for 3x3)."""
    return 0.3 * ((kernel - 1) * 0.5 - 1) + 0.8


def gaussian_blur(x: torch.Tensor, kernel: int = 3, sigma: float | None = None) -> torch.Tensor:
    """Separable Gaussian blur with reflected borders."""
    sigma = default_blur_sigma(kernel) if sigma is None else float(sigma)
    c = x.shape[1]
    g = gaussian_kernel1d(kernel, sigma).to(x.device, x.dtype)
    r = kernel // 2
    y = _pad(x, r, r)
    y = F.conv2d(y, g.view(1, 1, 1, -1).expand(c, 1, 1, kernel), groups=c)
    y = F.conv2d(y, g.view(1, 1, -1, 1).expand(c, 1, kernel, 1), groups=c)
    return y


def add_gaussian_noise(x: torch.Tensor, sigma: float, generator: torch.Generator) -> torch.Tensor:
    """``x + sigma * N(0, 1)`` with noise drawn on the CPU from ``generator`` (same seed, same noise), clamped."""
    noise = torch.randn(x.shape, generator=generator, dtype=torch.float32).to(x.device, x.dtype)
    return (x + sigma * noise).clamp(0, 1)


def _box_weights(n_in: int, n_out: int) -> torch.Tensor:
    """(n_out, n_in) weights of a box-filter resample (Pillow's BOX): each output pixel averages the input pixels
    whose centres fall inside its footprint (one input pixel when upscaling)."""
    scale = n_in / n_out
    fs = max(scale, 1.0)
    support = 0.5 * fs
    w = torch.zeros(n_out, n_in, dtype=torch.float64)
    for i in range(n_out):
        center = (i + 0.5) * scale
        lo, hi = max(int(center - support + 0.5), 0), min(int(center + support + 0.5), n_in)
        for j in range(lo, hi):
            u = (j + 0.5 - center) / fs
            if -0.5 < u <= 0.5:
                w[i, j] = 1.0
        if w[i].sum() == 0:
            w[i, min(max(lo, 0), n_in - 1)] = 1.0
    return w / w.sum(1, keepdim=True)


def _nearest_index(n_in: int, n_out: int) -> torch.Tensor:
    """Source index of each output pixel: the input pixel under the output pixel's centre (Pillow's NEAREST)."""
    idx = torch.floor((torch.arange(n_out, dtype=torch.float64) + 0.5) * (n_in / n_out)).long()
    return idx.clamp(0, n_in - 1)


def _interpolate(x: torch.Tensor, size: tuple[int, int], mode: str) -> torch.Tensor:
    (h, w), (oh, ow) = x.shape[-2:], size
    if mode == "nearest":
        return x[..., _nearest_index(h, oh).to(x.device), :][..., _nearest_index(w, ow).to(x.device)]
    if mode == "area":
        wh, ww = _box_weights(h, oh).to(x.device, x.dtype), _box_weights(w, ow).to(x.device, x.dtype)
        return torch.einsum("oh,bchw,pw->bcop", wh, x, ww)
    return F.interpolate(x, size=size, mode=mode, align_corners=False, antialias=True)


def resize_to(x: torch.Tensor, size: tuple[int, int], mode: str = "bilinear") -> torch.Tensor:
    """Resize to ``size`` = (h, w) like ``PIL.Image.resize`` (float images): ``bilinear``/``bicubic`` antialias
    when downscaling (torch's antialiased kernels), ``area`` is Pillow's BOX, ``nearest`` its NEAREST."""
    if mode not in INTERPOLATIONS:
        raise ValueError(f"unknown interpolation {mode!r}; choose from {', '.join(INTERPOLATIONS)}")
    if tuple(size) == tuple(x.shape[-2:]):
        return x
    return _interpolate(x, tuple(int(s) for s in size), mode)


def resize_roundtrip(x: torch.Tensor, factor: float = 0.5, mode: str = "bilinear") -> torch.Tensor:
    """Resize by ``factor`` (each side rounded, at least 1 px) and back to the original size."""
    h, w = x.shape[-2:]
    small = (max(1, round(h * factor)), max(1, round(w * factor)))
    return resize_to(resize_to(x, small, mode), (h, w), mode).clamp(0, 1)


def _disc_offsets(diameter: int) -> list[tuple[int, int]]:
    r = diameter // 2
    return [(dy, dx) for dy in range(-r, r + 1) for dx in range(-r, r + 1) if dy * dy + dx * dx <= r * r]


def bilateral_filter(x: torch.Tensor, diameter: int = 5, sigma_color: float = 8 / 255,
                     sigma_space: float = 8.0) -> torch.Tensor:
    """One bilateral pass: each pixel becomes a weighted mean of its disc neighbours, weight
    ``exp(-d^2 / 2 sigma_space^2) * exp(-c^2 / 2 sigma_color^2)`` with ``c`` the L1 colour distance."""
    r = diameter // 2
    if r < 1:
        return x
    h, w = x.shape[-2:]
    xp = _pad(x, r, r)
    num = torch.zeros_like(x)
    den = torch.zeros_like(x[:, :1])
    cc, cs = -0.5 / sigma_color ** 2, -0.5 / sigma_space ** 2
    for dy, dx in _disc_offsets(diameter):
        nb = xp[..., r + dy:r + dy + h, r + dx:r + dx + w]
        dist = (nb - x).abs().sum(1, keepdim=True)
        wgt = torch.exp(dist.square() * cc + (dy * dy + dx * dx) * cs)
        num.addcmul_(nb, wgt)
        den.add_(wgt)
    return num / den


def box_mean(x: torch.Tensor, r: int) -> torch.Tensor:
    """Mean over the (2r+1)^2 window around each pixel (any leading dims), counting only pixels inside the image."""
    if r < 1:
        return x
    flat = x.reshape(-1, 1, *x.shape[-2:]) if x.dim() != 4 else x
    out = F.avg_pool2d(flat, 2 * r + 1, stride=1, padding=r, count_include_pad=False)
    return out.reshape(x.shape)


def guided_filter(guide: torch.Tensor, src: torch.Tensor, radius: int = 4, eps: float = 16 / 255 ** 2) -> torch.Tensor:
    """He et al.'s guided filter: output = mean(a) * guide + mean(b), locally linear in the guide and following
    ``src`` where the guide is flat (regulariser ``eps`` in squared [0, 1] units). A 3-channel guide uses the colour
    version (3x3 guide covariance per pixel); a 1-channel guide, or ``guide.shape[1] != 3``, is applied channel by
    channel."""
    if guide.shape[1] != 3:
        mi, mp = box_mean(guide, radius), box_mean(src, radius)
        a = (box_mean(guide * src, radius) - mi * mp) / (box_mean(guide * guide, radius) - mi * mi + eps)
        b = mp - a * mi
        return box_mean(a, radius) * guide + box_mean(b, radius)
    g, p = guide.double(), src.double()
    mi, mp = box_mean(g, radius), box_mean(p, radius)                           # (B,3,H,W), (B,C,H,W)
    cov_ip = box_mean(p[:, :, None] * g[:, None], radius) - mp[:, :, None] * mi[:, None]   # (B,C,3,H,W)
    sigma = box_mean(g[:, :, None] * g[:, None], radius) - mi[:, :, None] * mi[:, None]    # (B,3,3,H,W)
    sigma = sigma + eps * torch.eye(3, dtype=g.dtype, device=g.device)[None, :, :, None, None]
    a = torch.linalg.solve(sigma.permute(0, 3, 4, 1, 2)[:, None],               # (B,1,H,W,3,3)
                           cov_ip.permute(0, 1, 3, 4, 2)[..., None])[..., 0]    # -> (B,C,H,W,3)
    a = a.permute(0, 1, 4, 2, 3)                                                # (B,C,3,H,W)
    b = mp - (a * mi[:, None]).sum(2)
    mean_a = box_mean(a, radius)
    out = (mean_a * g[:, None]).sum(2) + box_mean(b, radius)
    return out.to(src.dtype)
