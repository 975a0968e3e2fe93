"""Each cloak method of this block (glaze, pag, photoguard, pid, sds) on the tiny model: the objective improves, the
budget holds after 8-bit quantisation, same seed gives the same bytes, and the model comes back unchanged after
success, after an exception inside the method, and after a cancel."""
from __future__ import annotations

import pytest
import torch

from protect_core.cloak.base import get_method
from protect_core.cloak.optimize import optimize
from protect_core.cloak.presets import settings_for
from protect_core.errors import Cancelled
from protect_core.progress import CancelToken, Progress

METHODS = ["glaze", "pag", "photoguard", "pid", "sds"]
FAST = {"target_steps": 3, "pattern_steps": 3}  # glaze's img2img target, pag's pattern learning


@pytest.fixture(scope="module")
def host():
    from protect_core.tiny_models import build_tiny_host

    return build_tiny_host("tiny", seed=0)


def _settings(name, options=None, **kw):
    kw.setdefault("steps", 4)
    return settings_for(get_method(name), "default", options={**FAST, **(options or {})}, **kw)


@pytest.mark.parametrize("name", METHODS)
def test_method_improves_within_budget_and_is_deterministic(name, host, rng_images, integrity):
    chk = integrity(host)
    x = rng_images(2, 32, 32, seed=1)
    s = _settings(name, seed=3)
    out, info = optimize(host, get_method(name), x, s)
    chk.assert_unchanged()
    assert info["objective_after"] < info["objective_before"], info
    assert len(info["losses"]) == s.steps
    assert (out - x).abs().max() <= s.eps + 1e-6
    assert torch.equal(torch.round(out * 255) / 255, out), "not on 8-bit levels"
    assert out.min() >= 0 and out.max() <= 1
    assert (out - x).abs().max() > 1 / 255, "nothing was changed"
    again, _ = optimize(host, get_method(name), x, s)
    assert torch.equal(out, again)
    if s.perceptual_budget is not None:
        assert max(info["perceptual"]) <= s.perceptual_budget


@pytest.mark.parametrize("name", METHODS)
def test_model_untouched_after_exception_and_cancel(name, host, rng_images, integrity, monkeypatch):
    x = rng_images(1, 32, 32, seed=2)
    s = _settings(name)
    chk = integrity(host)
    method = get_method(name)
    real_loss = method.loss

    def failing_loss(h, xx, step, g):
        if step == 1:
            raise RuntimeError("boom inside the method")
        return real_loss(h, xx, step, g)

    monkeypatch.setattr(method, "loss", failing_loss)
    with pytest.raises(RuntimeError, match="boom"):
        optimize(host, method, x, s)
    chk.assert_unchanged()

    token, seen = CancelToken(), []

    def on_step(done, total, info):
        seen.append(done)
        if done == 2:
            token.cancel()

    with pytest.raises(Cancelled):
        optimize(host, get_method(name), x, s, Progress(s.steps, on_step=on_step, cancel=token))
    assert seen == [1, 2], "cancel must stop at the next step"
    chk.assert_unchanged()


def test_sds_modes_move_the_image_in_opposite_directions(host, rng_images):
    x = rng_images(1, 32, 32, seed=4)
    minus, _ = optimize(host, get_method("sds"), x, _settings("sds", options={"mode": "-"}))
    plus, _ = optimize(host, get_method("sds"), x, _settings("sds", options={"mode": "+"}))
    agree = ((minus - x).sign() * (plus - x).sign()).mean()
    assert agree < 0, "SDS+ and SDS- should push the image mostly in opposite directions"


def test_pag_learns_a_pattern_that_raises_the_tuning_loss(host, rng_images):
    from protect_core.diffusion import denoising_loss

    method = get_method("pag")
    s = _settings("pag", steps=1, options={"pattern_steps": 8})
    optimize(host, method, rng_images(2, 32, 32, seed=5), s)
    assert 0 < method.pattern.abs().max() <= s.options["pattern_bound"]
    with host.borrowed():  # same (t, noise) draws for both: does the learned pattern raise the tuning loss?
        cond = host.encode_text([s.prompt])
        z = method.clean_latents.repeat(16, 1, 1, 1)
        clean = sum(float(denoising_loss(host, z, cond, torch.Generator().manual_seed(k))) for k in range(3))
        patterned = sum(float(denoising_loss(host, z + method.pattern, cond, torch.Generator().manual_seed(k)))
                        for k in range(3))
    assert patterned > clean


def test_method_options_are_validated(host, rng_images):
    x = rng_images(1, 32, 32)
    with pytest.raises(ValueError, match="mode"):
        optimize(host, get_method("sds"), x, _settings("sds", options={"mode": "x"}))
    with pytest.raises(ValueError, match="mode"):
        optimize(host, get_method("pid"), x, _settings("pid", options={"mode": "x"}))
