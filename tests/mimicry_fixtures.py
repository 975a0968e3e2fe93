"""Small Mimicry Test settings and training sets for the tiny-model tests (shared by the mimicry test files)."""
from __future__ import annotations

import torch

from protect_core.mimicry import MimicrySettings


def small(**kw) -> MimicrySettings:
    """Mimicry settings that take a second or two on the tiny model; ``kw`` overrides."""
    base = dict(resolution=32, steps=2, lr=1e-3, batch_size=2, samples=2, sample_steps=2, sample_batch=2,
                reference_samples=2, prior_images=2)
    base.update(kw)
    return MimicrySettings(**base)


def make_art(rng_images, purified: bool = False):
    """(clean images, {"cloaked": ..., ["purified": ...]}): 3 smooth 32 px images and a sign-noise "cloak"."""
    clean = rng_images(3, 32, 32, seed=1)
    cloaked = (clean + 0.03 * torch.sign(torch.randn(clean.shape, generator=torch.Generator().manual_seed(2))))
    sets = {"cloaked": cloaked.clamp(0, 1)}
    if purified:
        sets["purified"] = clean * 0.9 + 0.05
    return clean, sets
