"""Style embeddings for the mimicry test: a pluggable :class:`StyleEmbedder` and two implementations.

* :class:`DescriptorEmbedder` (offline default, no download): a hand-built style descriptor, the concatenation of
  five groups, each computed per image on the [0, 1] RGB image:

  1. ``texture`` -- Gram matrices (channel correlations, upper triangle) of a fixed, seeded random two-layer conv
     network at two scales (random-feature texture statistics in the spirit of Gatys et al.; random filters capture
     texture well enough to tell procedural and painterly styles apart);
  2. ``latent`` -- channel means, standard deviations and Gram matrix of the host's VAE-encoder latent (the
     posterior mean), i.e. how the model itself "sees" the image;
  3. ``colour`` -- a joint RGB histogram (4x4x4 bins) plus mean and std per channel (palette);
  4. ``frequency`` -- the radially averaged log power spectrum of the luminance in 8 bands;
  5. ``orientation`` -- a magnitude-weighted histogram of gradient orientations (8 bins, mod pi).

  Raw features have wildly different scales, so the embedder is *fitted* once per test on the pooled reference sets
  (the artist's clean images plus the "other" sets): each feature is standardised by the pool's mean and std (std
  floored at 10% of its group's mean std) and soft-clipped to +-3 (3 tanh(z/3)), each group is divided by
  sqrt(group size) so the five groups weigh equally, and the result is L2-normalised. Cosine
  similarities of these embeddings are then comparable across all conditions of one test (never across tests).
* :class:`ClipVisionEmbedder`: the image embedding of a CLIP vision model the user already has on disk (a
  transformers folder); nothing is downloaded. Cosine of CLIP embeddings is the peers' usual style similarity.
  (The ComfyUI node passes the graph's CLIP_VISION through an adapter of the same name, ``clip_vision``.)

Any object with ``name``, ``fit(images01)`` and ``embed(images01) -> (B, D)`` (L2-normalised) can be passed instead;
an optional ``source`` attribute (a short text: where the embedding comes from) goes into the report.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Protocol, runtime_checkable

import torch
import torch.nn.functional as F


@runtime_checkable
class StyleEmbedder(Protocol):
    name: str

    def fit(self, images01: torch.Tensor) -> None:
        """See the reference pool once before embedding (may do nothing)."""

    def embed(self, images01: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [0, 1] -> (B, D) L2-normalised embeddings."""


def square_resize(images01: torch.Tensor, size: int) -> torch.Tensor:
    """Centre-crop to a square and resize (antialiased) to ``size`` x ``size``."""
    x = images01.float()
    if x.ndim == 3:
        x = x.unsqueeze(0)
    h, w = x.shape[-2:]
    s = min(h, w)
    top, left = (h - s) // 2, (w - s) // 2
    x = x[..., top:top + s, left:left + s]
    if s != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=s > size)
    return x.clamp(0, 1)


def stack_images(images, size: int) -> torch.Tensor:
    """A batch (B, 3, size, size) in [0, 1] from a tensor batch or a list of (3, H, W) / (1, 3, H, W) tensors."""
    if isinstance(images, torch.Tensor):
        items = [images] if images.ndim == 4 else [images.unsqueeze(0)]
    else:
        items = [getattr(im, "rgb", im) for im in images]
    if not items:
        raise ValueError("an image set is empty")
    out = []
    for t in items:
        t = t if t.ndim == 4 else t.unsqueeze(0)
        if t.shape[1] == 4:
            t = t[:, :3]
        if t.shape[1] != 3:
            raise ValueError(f"images must have 3 (RGB) channels, got shape {tuple(t.shape)}")
        out.append(square_resize(t, size))
    return torch.cat(out)


def _gram(f: torch.Tensor) -> torch.Tensor:
    b, c = f.shape[:2]
    f = f.reshape(b, c, -1)
    g = f @ f.transpose(1, 2) / f.shape[-1]
    iu = torch.triu_indices(c, c)
    return g[:, iu[0], iu[1]]


def _colour(x: torch.Tensor) -> torch.Tensor:
    q = (x.clamp(0, 1 - 1e-6) * 4).long()
    idx = (q[:, 0] * 16 + q[:, 1] * 4 + q[:, 2]).flatten(1)
    hist = torch.zeros(x.shape[0], 64).scatter_add_(1, idx, torch.ones_like(idx, dtype=torch.float))
    hist = hist / idx.shape[1]
    return torch.cat([hist.sqrt(), x.mean((2, 3)), x.std((2, 3))], 1)


def _luma(x: torch.Tensor) -> torch.Tensor:
    return 0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]


def _frequency(x: torch.Tensor, bands: int = 8) -> torch.Tensor:
    y = _luma(x)
    y = y - y.mean((1, 2), keepdim=True)
    p = torch.fft.fftshift(torch.fft.fft2(y).abs() ** 2, dim=(-2, -1))
    h, w = y.shape[-2:]
    yy, xx = torch.meshgrid(torch.arange(h) - h // 2, torch.arange(w) - w // 2, indexing="ij")
    r = (yy.float() ** 2 + xx.float() ** 2).sqrt() / (min(h, w) / 2)
    band = (r * bands).long().clamp(max=bands - 1)
    flat, bidx = p.flatten(1), band.flatten().expand(p.shape[0], -1)
    power = torch.zeros(p.shape[0], bands).scatter_add_(1, bidx, flat)
    count = torch.zeros(bands).scatter_add_(0, band.flatten(), torch.ones(h * w))
    return torch.log1p(power / count.clamp(min=1) / (h * w))


def _orientation(x: torch.Tensor, bins: int = 8) -> torch.Tensor:
    y = _luma(x).unsqueeze(1)
    gx = F.pad(y[..., :, 1:] - y[..., :, :-1], (0, 1, 0, 0))
    gy = F.pad(y[..., 1:, :] - y[..., :-1, :], (0, 0, 0, 1))
    mag = (gx ** 2 + gy ** 2).sqrt().flatten(1)
    ang = torch.atan2(gy, gx).flatten(1) % math.pi
    idx = (ang / math.pi * bins).long().clamp(max=bins - 1)
    hist = torch.zeros(x.shape[0], bins).scatter_add_(1, idx, mag)
    return torch.cat([hist / mag.sum(1, keepdim=True).clamp(min=1e-8), mag.mean(1, keepdim=True)], 1)


class _RandomTexture(torch.nn.Module):
    """A fixed seeded random conv net (never trained): texture statistics without downloaded weights."""

    def __init__(self, seed: int = 0, width: int = 16):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.w1 = torch.randn(width, 3, 3, 3, generator=g) / math.sqrt(27)
        self.w2 = torch.randn(width, width, 3, 3, generator=g) / math.sqrt(9 * width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = (x - 0.5) * 2
        f1 = F.relu(F.conv2d(x, self.w1, padding=1))
        f2 = F.relu(F.conv2d(F.avg_pool2d(f1, 2), self.w2, padding=1))
        return torch.cat([_gram(f1), _gram(f2)], 1)


class DescriptorEmbedder:
    """Offline style descriptor (see module doc). ``host`` adds the VAE-latent group; ``None`` leaves it out."""

    name = "descriptor"
    source = "built in, offline"

    def __init__(self, host=None, seed: int = 0):
        self.host = host
        self.texture = _RandomTexture(seed)
        self.mean: torch.Tensor | None = None
        self.std: torch.Tensor | None = None
        self.groups: list[tuple[str, int]] = []

    def _latent(self, x: torch.Tensor) -> torch.Tensor:
        f = self.host.vae_scale_factor
        if x.shape[-1] % f or x.shape[-2] % f:
            x = square_resize(x, max(f, x.shape[-1] // f * f))
        with self.host.borrowed():
            z, _ = self.host.posterior(x.to(self.host.device) * 2 - 1)
        z = z.float().cpu()
        return torch.cat([z.mean((2, 3)), z.std((2, 3)), _gram(z - z.mean((2, 3), keepdim=True))], 1)

    @torch.no_grad()
    def features(self, images01: torch.Tensor) -> torch.Tensor:
        """Raw (unnormalised) descriptor groups concatenated, (B, D)."""
        x = images01.float().cpu().clamp(0, 1)
        groups = [("texture", self.texture(x)), ("colour", _colour(x)), ("frequency", _frequency(x)),
                  ("orientation", _orientation(x))]
        if self.host is not None:
            groups.insert(1, ("latent", self._latent(x)))
        self.groups = [(n, g.shape[1]) for n, g in groups]
        return torch.cat([g for _, g in groups], 1)

    def fit(self, images01: torch.Tensor) -> None:
        """Standardisation from the reference pool; each std is floored at 10% of its group's mean std."""
        f = self.features(images01)
        self.mean = f.mean(0)
        std = f.std(0, unbiased=False)
        floor, i = torch.empty_like(std), 0
        for _, n in self.groups:
            floor[i:i + n] = 0.1 * std[i:i + n].mean() + 1e-6
            i += n
        self.std = (std ** 2 + floor ** 2).sqrt()

    @torch.no_grad()
    def embed(self, images01: torch.Tensor) -> torch.Tensor:
        f = self.features(images01)
        if self.mean is None:
            raise RuntimeError("call fit(reference_images) before embed()")
        z = 3 * torch.tanh((f - self.mean) / self.std / 3)  # soft-clip: no single feature can dominate
        parts, i = [], 0
        for _, n in self.groups:
            parts.append(z[:, i:i + n] / math.sqrt(n))
            i += n
        return F.normalize(torch.cat(parts, 1), dim=1)


class ClipVisionEmbedder:
    """Image embeddings of a local CLIP vision model (a transformers folder or model object); never downloads.

    A folder must hold a ``CLIPVisionModelWithProjection`` (or a whole ``CLIPModel``, whose vision half is used);
    anything else -- no such folder, no ``config.json``, another model type, no weights or weights that do not fit --
    raises one :class:`~protect_core.errors.ModelError` line naming the folder.
    """

    name = "clip_vision"

    def __init__(self, model, batch: int = 16, device: str | torch.device = "cpu"):
        if isinstance(model, (str, bytes)) or hasattr(model, "__fspath__"):
            self.source = os.fsdecode(model)
            model = _load_clip_vision(Path(self.source).expanduser())
        else:
            self.source = f"model object {type(model).__name__}"
        self.model = model.to(device).eval()
        self.model.requires_grad_(False)
        self.device, self.batch = torch.device(device), batch
        self.size = int(model.config.image_size)
        self.pixel_mean = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(1, 3, 1, 1)
        self.pixel_std = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(1, 3, 1, 1)

    def fit(self, images01: torch.Tensor) -> None:
        return None

    @torch.no_grad()
    def embed(self, images01: torch.Tensor) -> torch.Tensor:
        out = []
        for i in range(0, images01.shape[0], self.batch):
            x = square_resize(images01[i:i + self.batch].float().cpu(), self.size)
            x = ((x - self.pixel_mean) / self.pixel_std).to(self.device)
            res = self.model(pixel_values=x)
            emb = getattr(res, "image_embeds", None)
            out.append((emb if emb is not None else res.pooler_output).float().cpu())
        return F.normalize(torch.cat(out), dim=1)


def _load_clip_vision(folder: Path):
    """``CLIPVisionModelWithProjection`` from a local folder (``local_files_only``), or one ModelError line."""
    from ..errors import ModelError

    where = f"CLIP vision folder {folder}"
    if not folder.is_dir():
        raise ModelError(f"{where}: no such folder (give a local transformers CLIP vision model folder, or leave "
                         "it empty for the offline descriptor; nothing is downloaded)")
    if not (folder / "config.json").is_file():
        raise ModelError(f"{where}: no config.json, so not a transformers model folder")
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
        kind = config.get("model_type")
    except (OSError, ValueError, AttributeError) as e:
        raise ModelError(f"{where}: unreadable config.json ({e})") from None
    if kind not in ("clip_vision_model", "clip"):
        raise ModelError(f"{where}: its config.json is for model_type {kind}, not a CLIP vision model; use a "
                         "CLIPVisionModelWithProjection or CLIPModel folder")
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection
    from transformers.utils import logging as hf_logging

    extra = {}
    if kind == "clip":  # a whole CLIPModel: its vision half, with the projection width of the whole model
        vision = dict(config.get("vision_config") or {})
        vision["projection_dim"] = config.get("projection_dim", vision.get("projection_dim", 512))
        extra["config"] = CLIPVisionConfig.from_dict(vision)
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # what is wrong is reported below, in one line, not as warnings
    try:
        model, info = CLIPVisionModelWithProjection.from_pretrained(str(folder), local_files_only=True,
                                                                    output_loading_info=True, **extra)
    except Exception as e:  # transformers raises many types; the user needs the folder and the reason, in one line
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
        if "mismatched" in reason:  # its table of sizes went to the log, not into the message
            reason = "its weights do not fit its config.json: tensor sizes differ"
        raise ModelError(f"{where}: cannot load a CLIP vision model ({reason})") from None
    finally:
        hf_logging.set_verbosity(verbosity)
    missing = list(info.get("missing_keys") or [])
    if missing:
        raise ModelError(f"{where}: not a CLIP vision model ({len(missing)} of its weights are missing, e.g. "
                         f"{missing[0]}); use a CLIPVisionModelWithProjection or CLIPModel folder")
    return model
