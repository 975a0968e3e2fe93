"""CAAT / StyleProtect's one-pass loop (issue 22): one forward and one backward per image step give the gradient
w.r.t. the image AND the private K/V copies, as in CAAT's public code; the image takes the signed-gradient ascent
step and the copies one Adam descent step on that same gradient. Checked against a hand computation with plain
autograd (one forward, one backward, at a pinned timestep and the seeded noise), on two images with
``train_batch=1`` (the shared update uses the whole batch). Also: the host stays bit-identical, the two-pass option
still differs where it should, the low-memory path (no UNet backward in the image step) still trains the copies,
and the reported objective can be skipped (None, through the runner's stats too).
"""
from __future__ import annotations

import pytest
import torch

from protect_core.cloak.base import CloakSettings, get_method
from protect_core.cloak.optimize import optimize, progress_steps
from protect_core.cloak.runner import cloak_images
from protect_core.memory import memory_mode
from protect_core.progress import Progress

T0, SEED, LR, STEP, EPS = 400, 5, 1e-3, 0.01, 0.05


@pytest.fixture(scope="module")
def host():
    from protect_core.tiny_models import build_tiny_host

    return build_tiny_host("tiny")


def _clean(n=2, size=32):
    # inside [STEP, 1 - STEP]: one signed step never meets the [0, 1] box, so the step is exactly STEP * sign
    return 0.25 + 0.5 * torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(11))


def _settings(name, steps=1, **options):
    opts = {"lr": LR, "train_steps": 1, "train_batch": 1, "t_range": [T0, T0 + 1], "objective_samples": 0,
            **options}
    return CloakSettings(method=name, steps=steps, eps=EPS, step_size=STEP, optimizer="pgd", seed=SEED,
                         options=opts).resolved(get_method(name))


def _by_hand(host, clean, targets, prompt):
    """The peer's step with plain autograd: denoising loss L at t = T0 and the optimiser's seeded noise (its
    generator draws t first, then the noise), one backward w.r.t. the image delta and the K/V tensors."""
    with host.borrowed():
        cond = host.encode_text([prompt])
        kv = {n: host.unet_weight(n).requires_grad_(True) for n in targets}
        delta = torch.zeros_like(clean, requires_grad=True)
        z = host.encode((clean + delta) * 2 - 1)
        g = torch.Generator().manual_seed(SEED)
        t = torch.randint(T0, T0 + 1, (len(clean),), generator=g)
        noise = torch.randn(z.shape, generator=g)
        a = host.alphas_cumprod[t].float().view(-1, 1, 1, 1)
        out = host.model_output(a.sqrt() * z + (1 - a).sqrt() * noise, t, cond, kv)
        loss = ((out - noise) ** 2).mean()      # eps prediction: the target is the noise
        grads = torch.autograd.grad(loss, [delta, *kv.values()])
        start = {n: w.detach().clone() for n, w in kv.items()}
    return float(loss.detach()), grads[0], dict(zip(kv, grads[1:])), start


def _adam_step(start: dict, grads: dict) -> dict:
    """One torch Adam step (lr LR) on copies of ``start`` with ``grads``: what the copies must become."""
    params = {n: w.clone().requires_grad_(True) for n, w in start.items()}
    opt = torch.optim.Adam(params.values(), lr=LR)
    for n, p in params.items():
        p.grad = grads[n].clone()
    opt.step()
    return {n: p.detach() for n, p in params.items()}


def _run(host, name, clean, **options):
    method, seen = get_method(name), {}
    real_after, real_shared = method.after_step, method.shared_gradients

    def after_step(h, x, step, g):
        seen.setdefault("x", x.clone())          # the stepped image, before the final quantisation
        real_after(h, x, step, g)

    def shared_gradients(grads, loss):
        seen["grads"], seen["loss"] = grads, loss
        real_shared(grads, loss)

    method.after_step, method.shared_gradients = after_step, shared_gradients
    _, info = optimize(host, method, clean, _settings(name, **options))
    return method, seen, info


@pytest.mark.parametrize("name", ["caat", "styleprotect"])
def test_one_pass_step_uses_the_peers_gradients(name, host, integrity):
    chk = integrity(host)
    clean = _clean()
    method, seen, info = _run(host, name, clean)
    chk.assert_unchanged()                                  # the host's weights: bit-identical
    targets = method.info["trained_weights"]
    loss, g_img, g_kv, start = _by_hand(host, clean, targets, method.settings.prompt)

    # the gradients handed over are those of the one backward (the optimiser minimises -L), bit for bit: the hand
    # computation does the same float operations in the same order
    assert seen["loss"] == pytest.approx(-loss, rel=1e-6)
    assert len(seen["grads"]) == len(targets)
    for n, got in zip(targets, seen["grads"]):
        assert torch.equal(-got, g_kv[n]), n
    # the image: one signed-gradient ASCENT step on L
    assert (g_img != 0).float().mean() > 0.99
    assert torch.equal(seen["x"], clean + STEP * g_img.sign())
    # the copies: one Adam DESCENT step on the same gradient (first Adam step ~ -LR * sign(g))
    want = _adam_step(start, g_kv)
    with host.borrowed():
        got = method.trainer.adapter.state_dict()
    for n in targets:
        assert torch.equal(got[n], want[n]), n
        assert not torch.equal(got[n], start[n])
    assert method.trainer.losses == [pytest.approx(loss, rel=1e-6)]
    assert info["objective_before"] is None and info["objective_after"] is None


def test_two_pass_option_keeps_the_old_scheme(host, integrity):
    """``shared_pass=False``: same image step (same copies, same draws at step 0), but the copies are trained in a
    pass of their own on the stepped image with fresh noise and ``train_batch`` images: a different update."""
    chk = integrity(host)
    clean = _clean()
    method, seen, _ = _run(host, "caat", clean, shared_pass=False)
    chk.assert_unchanged()
    assert "grads" not in seen, "the two-pass scheme takes no gradient from the image step"
    loss, g_img, g_kv, start = _by_hand(host, clean, method.info["trained_weights"], method.settings.prompt)
    assert torch.equal(seen["x"], clean + STEP * g_img.sign())
    want = _adam_step(start, g_kv)
    with host.borrowed():
        got = method.trainer.adapter.state_dict()
    assert any(not torch.allclose(got[n], want[n], rtol=0, atol=1e-7) for n in got)
    assert len(method.trainer.losses) == 1 and method.info["shared_pass"] is False


@pytest.mark.parametrize("shared", [True, False])
def test_announced_units_and_updates_per_scheme(host, shared):
    """train_steps=3: the shared scheme makes 2 extra passes per step (units), the two-pass one 3; the copies get
    3 updates per step either way and the bar ends exactly on its total."""
    s = _settings("styleprotect", steps=3, train_steps=3, shared_pass=shared)
    method, updates = get_method("styleprotect"), []
    assert method.inner_steps(s) == 3 * (2 if shared else 3)
    optimize(host, method, _clean(1), s, Progress(s.steps, on_step=lambda d, t, i: updates.append((d, t))))
    total = progress_steps(method, s)
    assert updates == [(k, total) for k in range(1, total + 1)]
    assert len(method.trainer.losses) == 3 * 3


def test_low_memory_has_no_shared_backward_and_still_trains(host, integrity):
    """Score distillation (memory 'low'): no UNet backward in the image step, so no shared gradients; the first
    update is a pass of its own, counted with the image step (the announced total stays exact)."""
    chk = integrity(host)
    s = _settings("caat", steps=2, train_steps=2)
    method, updates, seen = get_method("caat"), [], []
    method.shared_gradients = lambda grads, loss: seen.append(grads)
    _, info = optimize(host, method, _clean(1), s, Progress(s.steps, on_step=lambda d, t, i: updates.append(d)),
                       memory=memory_mode("low", precision="fp32"))
    chk.assert_unchanged()
    assert info["memory"]["score_distillation"] is True and seen == []
    assert updates == list(range(1, progress_steps(method, s) + 1)) and len(updates) == 2 + 2 * 1
    assert len(method.trainer.losses) == 2 * 2


def test_objective_is_optional_and_its_cost_reported(host):
    s = _settings("caat", objective_samples=2)
    _, info = optimize(host, get_method("caat"), _clean(1), s)
    assert isinstance(info["objective_before"], float) and info["objective_seconds"] > 0
    results = cloak_images(host, [_clean(1)[0]], _settings("caat"), memory="fast")
    stats = results[0].stats
    assert stats["objective_before"] is None and stats["objective_after"] is None
    assert stats["objective_seconds"] < 0.05   # nothing evaluated
    with pytest.raises(ValueError, match="objective_samples"):
        optimize(host, get_method("caat"), _clean(1), _settings("caat", objective_samples=-1))


def test_cli_takes_the_optimiser_options_for_every_method():
    from protect_core.cloak.cli import _options
    from protect_core.errors import StyleCloakError

    assert _options(["objective_samples=0"], get_method("photoguard")) == {"objective_samples": 0}
    assert _options(["shared_pass=false"], get_method("caat")) == {"shared_pass": False}
    with pytest.raises(StyleCloakError, match="has no option 'shared_pass'"):
        _options(["shared_pass=false"], get_method("mist"))
