"""Shared fixtures: tiny seeded models and a model-integrity checker used by every block's tests."""
from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# One thread: the models in tests are tiny, so threading costs more than it gains, and results stay steady.
torch.set_num_threads(1)


@pytest.fixture
def tiny_host():
    """A fresh SD1.x-like tiny host (eps prediction), seed 0."""
    from protect_core.tiny_models import build_tiny_host

    return build_tiny_host("tiny", seed=0)


@pytest.fixture(params=["tiny", "tiny-v", "tiny-xl"])
def any_tiny_host(request):
    """Each tiny flavour in turn: SD1.x-like, SD2.x-like (v-prediction), SDXL-like."""
    from protect_core.tiny_models import build_tiny_host

    return build_tiny_host(request.param, seed=0)


class IntegrityChecker:
    """Fingerprint a host's modules now; ``assert_unchanged()`` later proves they came back bit-identical."""

    def __init__(self, host):
        from protect_core.integrity import fingerprint

        self.host = host
        self.before = fingerprint(host.host_modules())

    def assert_unchanged(self):
        from protect_core.integrity import diff_fingerprints, fingerprint

        problems = diff_fingerprints(self.before, fingerprint(self.host.host_modules()))
        assert not problems, "host model changed: " + "; ".join(problems)


@pytest.fixture
def integrity():
    """Factory: ``check = integrity(host)`` ... ``check.assert_unchanged()``."""
    return IntegrityChecker


@pytest.fixture
def rng_images():
    """Factory for deterministic test images in [0, 1]: ``rng_images(b, h, w, seed=0)``."""

    def make(b=1, h=64, w=64, seed=0):
        g = torch.Generator().manual_seed(seed)
        base = torch.rand(b, 3, h // 8 + 1, w // 8 + 1, generator=g)
        smooth = torch.nn.functional.interpolate(base, size=(h, w), mode="bilinear", align_corners=False)
        return (smooth + 0.05 * torch.rand(b, 3, h, w, generator=g)).clamp(0, 1)

    return make
