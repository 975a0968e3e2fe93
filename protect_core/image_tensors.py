"""Image tensors: validation, the one 8/16-bit quantiser, padding to a multiple and back, batching by size.

Pure tensor functions shared by every block and host (file input/output lives in :mod:`protect_core.images`, which
re-exports these names). ``to_uint8`` (``torch.round(x * 255)``, round half to even) is the exact rounding used
for every 8-bit output, so perturbation budgets measured on ``quantize(x)`` hold for the saved file; ``unpad``
restores exactly what ``pad_to_multiple`` padded.
"""
from __future__ import annotations

from typing import NamedTuple, Sequence

import torch
import torch.nn.functional as F


def validate_tensor(x, name: str = "image", *, channels: int | None = 3, channel_dim: int = -3,
                    value_range: tuple[float, float] | None = (0.0, 1.0), tol: float = 1e-3) -> torch.Tensor:
    """Check an image tensor: (C, H, W) or (B, C, H, W) float (``channel_dim=-1`` for (B, H, W, C) layouts),
    finite, values inside ``value_range`` up to ``tol``. Returns ``x`` unchanged; raises ValueError otherwise."""
    layout = "(B, H, W, C)" if channel_dim == -1 else "(C, H, W) or (B, C, H, W)"
    if not torch.is_tensor(x):
        raise ValueError(f"{name}: expected a torch tensor {layout}, got {type(x).__name__}")
    if x.dim() not in (3, 4) or (channel_dim == -1 and x.dim() != 4):
        raise ValueError(f"{name}: expected shape {layout}, got {tuple(x.shape)}")
    if channels is not None and x.shape[channel_dim] != channels:
        raise ValueError(f"{name}: expected {channels} channels in layout {layout}, got shape {tuple(x.shape)}")
    if x.numel() == 0:
        raise ValueError(f"{name}: the tensor is empty, shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise ValueError(f"{name}: expected a float tensor in [0, 1], got {x.dtype} (divide 8-bit values by 255)")
    bad = int((~torch.isfinite(x)).sum())
    if bad:
        raise ValueError(f"{name}: contains {bad} NaN/inf values; the computation that produced it diverged "
                         "(try a smaller step size, fewer steps or float32)")
    if value_range is not None:
        lo, hi = float(x.min()), float(x.max())
        if lo < value_range[0] - tol or hi > value_range[1] + tol:
            raise ValueError(f"{name}: values span [{lo:.4g}, {hi:.4g}] but must lie in {list(value_range)} "
                             "(a [-1, 1] or 0-255 image passed where a [0, 1] image was expected?)")
    return x


def to_uint8(rgb01: torch.Tensor) -> torch.Tensor:
    """The one 8-bit quantiser: ``round(clamp(x, 0, 1) * 255)`` (round half to even), any shape, same device."""
    return torch.round(rgb01.detach().float().clamp(0, 1) * 255).to(torch.uint8)


def to_uint16(rgb01: torch.Tensor) -> torch.Tensor:
    """16-bit counterpart of ``to_uint8`` (int32 tensor holding 0..65535; torch has no general uint16 math)."""
    return torch.round(rgb01.detach().float().clamp(0, 1) * 65535).to(torch.int32)


def quantize(rgb01: torch.Tensor, bits: int = 8) -> torch.Tensor:
    """Float values on the grid the saved file will hold (what budgets should be measured on)."""
    return to_uint8(rgb01).float() / 255 if bits == 8 else to_uint16(rgb01).float() / 65535


def pad_to_multiple(x: torch.Tensor, m: int, mode: str = "reflect") -> tuple[torch.Tensor, tuple[int, int]]:
    """Pad (B, C, H, W) or (C, H, W) at the bottom/right up to multiples of ``m``; returns (padded, (h, w)).

    ``mode``: "reflect" (falls back to "replicate" when the image is too small to reflect), "replicate",
    or "constant" (zeros). ``unpad(padded, (h, w))`` restores the exact original size.
    """
    if int(m) < 1:
        raise ValueError(f"pad_to_multiple: the multiple must be >= 1, got {m}")
    if x.dim() not in (3, 4):
        raise ValueError(f"pad_to_multiple: expected (B, C, H, W) or (C, H, W), got shape {tuple(x.shape)}")
    if mode not in ("reflect", "replicate", "constant"):
        raise ValueError(f"pad_to_multiple: mode must be reflect, replicate or constant, got {mode!r}")
    h, w = int(x.shape[-2]), int(x.shape[-1])
    ph, pw = (-h) % m, (-w) % m
    if not (ph or pw):
        return x, (h, w)
    if mode == "reflect" and (ph >= h or pw >= w):
        mode = "replicate"
    y = x[None] if x.dim() == 3 else x
    y = F.pad(y, (0, pw, 0, ph), mode=mode)
    return (y[0] if x.dim() == 3 else y), (h, w)


def unpad(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Crop the bottom/right padding added by ``pad_to_multiple`` back to ``size`` = (h, w)."""
    h, w = size
    if x.shape[-2] < h or x.shape[-1] < w:
        raise ValueError(f"unpad: tensor {tuple(x.shape)} is smaller than the target size (h={h}, w={w})")
    return x[..., :h, :w]


class SizeGroup(NamedTuple):
    indices: list[int]   # positions in the input list
    batch: torch.Tensor  # (len(indices), 3, H, W)


def stack_same_size(images: Sequence, max_batch: int | None = None) -> list[SizeGroup]:
    """Group LoadedImages (or (3, H, W) tensors) of equal size into batches, in order of first appearance."""
    groups: dict[tuple, list[int]] = {}
    tensors = [im if torch.is_tensor(im) else im.rgb for im in images]
    for i, t in enumerate(tensors):
        groups.setdefault(tuple(t.shape), []).append(i)
    out = []
    for idx in groups.values():
        step = max_batch or len(idx)
        for s in range(0, len(idx), step):
            part = idx[s:s + step]
            out.append(SizeGroup(part, torch.stack([tensors[i] for i in part])))
    return out
