"""ComfyUI's CLIP_VISION (the output of "Load CLIP Vision") as the Mimicry Test's style embedding.

Thin glue for :class:`protect_core.mimicry.style.StyleEmbedder`: images go to the model's own
``encode_image(image)`` in ComfyUI's IMAGE layout (B, H, W, C in [0, 1]; ComfyUI resizes, crops and normalises them
as it does for every CLIP vision user, and loads / offloads the model under its own memory management), and the
``image_embeds`` of its output are the style embedding, L2-normalised as the protocol asks. The call runs under
``torch.inference_mode()``, as ComfyUI runs its own nodes; the rows come back as ordinary CPU tensors.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from protect_core.errors import ModelError


class ComfyClipVisionEmbedder:
    """A ComfyUI CLIP_VISION object behind the StyleEmbedder protocol (``name``, ``fit``, ``embed``)."""

    name = "clip_vision"

    def __init__(self, clip_vision, batch: int = 16):
        if not callable(getattr(clip_vision, "encode_image", None)):
            raise ModelError(f"clip_vision: expected ComfyUI's CLIP_VISION (the output of Load CLIP Vision), got "
                             f"{type(clip_vision).__name__}")
        self.clip_vision, self.batch = clip_vision, max(1, int(batch))
        self.source = f"ComfyUI CLIP_VISION input: {type(clip_vision).__name__}"

    def fit(self, images01: torch.Tensor) -> None:
        return None  # a CLIP embedding needs no fitting

    def embed(self, images01: torch.Tensor) -> torch.Tensor:
        out = []
        for i in range(0, images01.shape[0], self.batch):
            image = images01[i:i + self.batch, :3].float().clamp(0, 1).movedim(1, -1).contiguous()
            with torch.inference_mode():
                result = self.clip_vision.encode_image(image)
            out.append(_image_embeds(result).float().cpu().clone())  # clone outside: an ordinary tensor
        return F.normalize(torch.cat(out), dim=1)


def _image_embeds(result) -> torch.Tensor:
    embeds = getattr(result, "image_embeds", None)
    if embeds is None and isinstance(result, dict):
        embeds = result.get("image_embeds")
    if not isinstance(embeds, torch.Tensor) or embeds.ndim != 2:
        shape = tuple(embeds.shape) if isinstance(embeds, torch.Tensor) else type(embeds).__name__
        raise ModelError(f"clip_vision: encode_image gave no (B, D) image_embeds (got {shape}); connect a CLIP "
                         "vision model from Load CLIP Vision")
    return embeds
