"""External style models for the layer analysis: pairwise style distances between the user's images.

A descriptor is anything with ``name`` and ``distances(images01) -> (N, N)`` (symmetric, zero diagonal) for a batch
``(N, 3, S, S)`` in [0, 1]. Two ship here, and :func:`as_descriptor` adapts the mimicry block's embedders (any object
with ``embed(images01) -> (N, D)``):

* :class:`VaeGramDescriptor` (offline default, no download): Gram statistics of the host model's own VAE-encoder
  features, i.e. the posterior mean ``z`` (4 channels at 1/8 resolution) of each image. Features, per image: the
  channel means of ``z`` (palette), the channel Gram matrix of ``z`` (centred per channel), and the Gram matrices
  of its 3x3 neighbourhoods (each latent pixel's 3x3x4 = 36-vector, centred) at the latent's resolution and at
  half of it; upper triangles concatenated. Gram matrices drop *where* things are and keep texture, colour and
  stroke statistics (Gatys et al.), which is what a style descriptor needs. Every feature is standardised over the
  N images (std floored at 10% of the mean std, so constant features cannot blow up) and the distance is the
  Euclidean distance divided by sqrt(D).
* :class:`ClipDescriptor`: the image embedding of a CLIP vision model the user already has (a transformers folder
  or model object, or a ComfyUI ``CLIP_VISION`` object with ``encode_image``); nothing is downloaded. Distance:
  1 - cosine similarity.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import ModelError

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def gram_upper(f: torch.Tensor) -> torch.Tensor:
    """(N, C, L) features -> (N, C*(C+1)/2) upper triangle of the Gram matrix f f^T / L of centred features."""
    f = f - f.mean(-1, keepdim=True)
    g = f @ f.transpose(1, 2) / f.shape[-1]
    iu = torch.triu_indices(f.shape[1], f.shape[1])
    return g[:, iu[0], iu[1]]


def latent_gram_features(z: torch.Tensor) -> torch.Tensor:
    """The VAE-Gram feature vector (see module doc) of latents ``z`` (N, C, h, w)."""
    z = z.float()
    parts = [z.mean((2, 3)), gram_upper(z.flatten(2))]
    for level in (z, F.avg_pool2d(z, 2) if min(z.shape[-2:]) >= 6 else None):
        if level is None:
            continue
        patches = F.unfold(level, kernel_size=3, padding=1)  # (N, C*9, h*w)
        parts.append(gram_upper(patches))
    return torch.cat(parts, 1)


def standardised_distances(features: torch.Tensor) -> torch.Tensor:
    """Pairwise Euclidean distances / sqrt(D) after standardising every feature over the batch."""
    x = features.double()
    std = x.std(0, unbiased=False)
    std = torch.sqrt(std ** 2 + (0.1 * std.mean() + 1e-12) ** 2)
    z = (x - x.mean(0)) / std
    return (torch.cdist(z, z) / z.shape[1] ** 0.5).float()


def cosine_distances(embeddings: torch.Tensor) -> torch.Tensor:
    e = F.normalize(embeddings.double(), dim=1)
    d = (1 - e @ e.T).clamp(min=0)
    d.fill_diagonal_(0)
    return d.float()


class VaeGramDescriptor:
    """Offline style descriptor from the host's own VAE encoder (see module doc)."""

    name = "vae-gram"

    def __init__(self, host, batch_size: int = 4):
        self.host, self.batch_size = host, max(1, int(batch_size))

    @torch.no_grad()
    def features(self, images01: torch.Tensor) -> torch.Tensor:
        out = []
        with self.host.borrowed():
            for i in range(0, images01.shape[0], self.batch_size):
                chunk = images01[i:i + self.batch_size].to(self.host.device)
                mean, _ = self.host.posterior(chunk * 2 - 1)
                out.append(latent_gram_features(mean).cpu())
        return torch.cat(out)

    def distances(self, images01: torch.Tensor) -> torch.Tensor:
        return standardised_distances(self.features(images01))

    def distances_from_posterior(self, mean: torch.Tensor) -> torch.Tensor:
        """The same distances from posterior means the caller already has (saves a VAE pass)."""
        return standardised_distances(latent_gram_features(mean.cpu()))


class ClipDescriptor:
    """Style distances from a local CLIP vision model; never downloads."""

    name = "clip"

    def __init__(self, model, device: str | torch.device = "cpu", batch_size: int = 16):
        if isinstance(model, (str, bytes)) or hasattr(model, "__fspath__"):
            model = load_clip_vision(model)
        self.model, self.device, self.batch_size = model, torch.device(device), max(1, int(batch_size))

    @torch.no_grad()
    def embed(self, images01: torch.Tensor) -> torch.Tensor:
        out = []
        for i in range(0, images01.shape[0], self.batch_size):
            x = images01[i:i + self.batch_size].float().cpu().clamp(0, 1)
            if hasattr(self.model, "encode_image"):  # ComfyUI CLIP_VISION: (B, H, W, C) in [0, 1]
                res = self.model.encode_image(x.permute(0, 2, 3, 1))
            else:
                size = int(self.model.config.image_size)
                x = F.interpolate(x, size=(size, size), mode="bicubic", align_corners=False,
                                  antialias=x.shape[-1] > size).clamp(0, 1)
                mean = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)
                std = torch.tensor(CLIP_STD).view(1, 3, 1, 1)
                p = next(self.model.parameters())
                res = self.model(pixel_values=((x - mean) / std).to(p.device, p.dtype))
            emb = getattr(res, "image_embeds", None)
            if emb is None:
                emb = res.pooler_output if hasattr(res, "pooler_output") else res[0]
            out.append(emb.float().cpu().reshape(emb.shape[0], -1))
        return torch.cat(out)

    def distances(self, images01: torch.Tensor) -> torch.Tensor:
        return cosine_distances(self.embed(images01))


def load_clip_vision(path):
    """A CLIP vision model (with projection when the folder has one) from a local transformers folder."""
    from transformers import CLIPVisionModel, CLIPVisionModelWithProjection

    errors = []
    for cls in (CLIPVisionModelWithProjection, CLIPVisionModel):
        try:
            return cls.from_pretrained(str(path), local_files_only=True).eval().requires_grad_(False)
        except Exception as e:  # transformers raises OSError/ValueError/KeyError...; report them together
            errors.append(f"{cls.__name__}: {e}")
    raise ModelError(f"{path}: no CLIP vision model could be loaded from this folder ({'; '.join(errors)[:400]})")


class _EmbedderAdapter:
    """Wraps an object with ``embed(images01)`` (and optional ``fit``) as a descriptor (cosine distances)."""

    def __init__(self, embedder):
        self.embedder = embedder
        self.name = str(getattr(embedder, "name", type(embedder).__name__))

    def distances(self, images01: torch.Tensor) -> torch.Tensor:
        fit = getattr(self.embedder, "fit", None)
        if callable(fit):
            fit(images01)
        return cosine_distances(self.embedder.embed(images01))


def as_descriptor(obj, host=None):
    """A descriptor from ``None`` (the VAE-Gram default for ``host``), a descriptor, or an embedder."""
    if obj is None:
        if host is None:
            raise ValueError("the default style descriptor needs the host (its VAE encoder)")
        return VaeGramDescriptor(host)
    if callable(getattr(obj, "distances", None)):
        return obj
    if callable(getattr(obj, "embed", None)):
        return _EmbedderAdapter(obj)
    raise TypeError(f"{type(obj).__name__} is not a style descriptor (needs distances() or embed())")
