"""Progress through every phase of the Cloak Image block: methods whose prepare() does real work (glaze's img2img
target, PAG's learned pattern, FSMG's surrogate fine-tune, Mist v2's first LoRA round) report each step of it, so
the host's bar moves from the start and reaches its total exactly. Runs on the tiny test model (no ComfyUI)."""
from __future__ import annotations

import pytest
import torch

from protect_core.cloak.base import get_method
from protect_core.cloak.optimize import optimize
from protect_core.cloak.presets import settings_for
from protect_core.progress import Progress


@pytest.fixture(scope="module")
def host():
    from protect_core.backends.diffusers_host import DiffusersHost
    from protect_core.tiny_models import build_tiny_pipeline

    return DiffusersHost.from_pipeline(build_tiny_pipeline("tiny", 0), family="tiny")


PREPARE = {"glaze": {"target_steps": 6, "strength": 0.5}, "pag": {"pattern_steps": 3},
           "fsmg": {"surrogate_steps": 3}, "mist2": {"lora_steps": 3}}


@pytest.mark.parametrize("name", sorted(PREPARE))
def test_prepare_phase_moves_the_bar_and_totals_add_up(host, name):
    method = get_method(name)
    settings = settings_for(method, "default", seed=0, steps=2, options=PREPARE[name])
    seen = []
    progress = Progress(2, on_step=lambda done, total, info: seen.append((done, total, dict(info))))
    images = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    optimize(host, method, images, settings, progress)
    prepare = method.prepare_steps(settings)
    assert prepare == 3   # glaze: round(6 * 0.5) DDIM steps of the img2img target
    assert len(seen) == prepare + 2, [s[:2] for s in seen]
    assert [d for d, _, _ in seen] == list(range(1, prepare + 3))
    assert all(t == prepare + 2 for _, t, _ in seen), "the total is known from the first step"


def test_a_method_without_prepare_work_adds_no_steps(host):
    method = get_method("photoguard")
    settings = settings_for(method, "default", seed=0, steps=3)
    seen = []
    optimize(host, method, torch.rand(1, 3, 32, 32), settings,
             Progress(3, on_step=lambda d, t, i: seen.append((d, t))))
    assert seen == [(1, 3), (2, 3), (3, 3)]
