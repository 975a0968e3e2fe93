"""Prompts, fast analysis settings and smooth test images for the layer-analysis tests on the tiny model (shared by
test_layers.py, test_layers_causal.py and test_layer_probes.py)."""
from __future__ import annotations

import torch

from protect_core.layers import AnalysisSettings

SP, CP = "a painting in sks style", "a painting"


def fast(**kw) -> AnalysisSettings:
    """Analysis settings that take a second on the tiny model; ``kw`` overrides."""
    base = dict(style_prompt=SP, content_prompt=CP, size=32, timesteps=(200, 800), seeds=1, batch_size=4)
    return AnalysisSettings(**{**base, **kw})


def smooth_images() -> torch.Tensor:
    """Three seeded, smooth 32 px images in [0, 1] (bilinear upsampling of 5 x 5 noise)."""
    g = torch.Generator().manual_seed(1)
    return torch.nn.functional.interpolate(torch.rand(3, 3, 5, 5, generator=g), size=(32, 32), mode="bilinear")
