"""The UNet-loss cloak methods (styleprotect, caat, mist, mist2, aspl, fsmg, metacloak, styleguard) through the
shared optimiser.

The hosts here are the tiny models with their VAE scaling factor calibrated to unit latent spread (SD's own recipe:
scaling = 1 / std of the latents). With the raw random tiny VAE the latents have std ~0.04, so the UNet barely sees
the image and no image perturbation can move a denoising loss measurably; calibrated, a few steps do.
Each test checks behaviour: the attack objective moves the right way on a fixed evaluation, the L-inf budget holds,
same seed -> same bytes, private weights change while the host stays bit-identical (also on error and cancel),
StyleProtect touches exactly the requested layers.
"""
from __future__ import annotations

import dataclasses

import pytest
import torch

from protect_core.cloak.base import get_method
from protect_core.cloak.optimize import optimize
from protect_core.cloak.presets import settings_for
from protect_core.cloak.surrogate import STYLEPROTECT_SD15_LAYERS, choose_style_layers, latents_of, target_pattern
from protect_core.errors import Cancelled
from protect_core.progress import CancelToken, Progress

METHODS = ["styleprotect", "caat", "mist", "mist2", "aspl", "fsmg", "metacloak", "styleguard"]
TRAINED = ["styleprotect", "caat", "mist2", "aspl", "fsmg", "metacloak"]
# test-sized options: larger learning rates than the papers' so a handful of steps visibly moves the surrogates,
# short rounds so several surrogate rounds happen within 4 image steps, 4 draws per step for a steadier gradient
FAST = {
    "styleprotect": {"lr": 1e-3},
    "caat": {"lr": 1e-3},
    "mist": {},
    "mist2": {"lora_steps": 2, "pgd_steps": 2, "lora_lr": 1e-2},
    "aspl": {"lr": 1e-3, "train_steps": 1, "pgd_steps": 2},
    "fsmg": {"lr": 1e-3, "surrogate_steps": 3},
    "metacloak": {"lr": 1e-3, "pool": 2, "stagger": 2, "max_age": 100},
    "styleguard": {"purifiers": "identity", "posterior": "mean"},   # its ensemble: tests of its own below
}


def calibrated_host(flavour: str, seed: int = 0):
    from protect_core.backends.diffusers_host import DiffusersHost
    from protect_core.tiny_models import build_tiny_pipeline

    pipe = build_tiny_pipeline(flavour, seed)
    x = torch.rand(8, 3, 32, 32, generator=torch.Generator().manual_seed(123)) * 2 - 1
    with torch.no_grad():
        spread = pipe.vae.encode(x).latent_dist.mean.std()
    pipe.vae.register_to_config(scaling_factor=float(1 / spread))
    return DiffusersHost.from_pipeline(pipe, family=flavour)


@pytest.fixture(scope="module")
def host():
    return calibrated_host("tiny")


def _settings(name, **kw):
    kw.setdefault("steps", 4)
    kw.setdefault("seed", 3)
    opts = {"samples": 4, "objective_samples": 16, **FAST[name], **kw.pop("options", {})}
    s = settings_for(get_method(name), "default", options=opts, **kw)
    return dataclasses.replace(s, step_size=s.eps / 2)   # reach the budget within the few test steps


def _attack_measure(host, method, x, draws=16):
    """What the method pushes UP: minus its own attack loss under its final surrogate, with fixed t and noise
    (denoising loss for the AdvDM-type methods, minus the target loss for mist2, minus the fused loss for mist)."""
    with host.borrowed(), torch.no_grad():
        over = method.surrogate_overrides()
        return -float(method.attack_loss(host, x, torch.Generator().manual_seed(77), over, draws))


@pytest.mark.parametrize("name", METHODS)
def test_attack_moves_objective_within_budget_and_trains_privately(name, host, rng_images, integrity):
    chk = integrity(host)
    x = rng_images(1, 32, 32, seed=1)
    s = _settings(name)
    method = get_method(name)
    out, info = optimize(host, method, x, s)
    chk.assert_unchanged()
    assert (out - x).abs().max() <= s.eps + 1e-6
    assert (out - x).abs().max() > 1 / 255, "nothing was changed"
    assert torch.equal(torch.round(out * 255) / 255, out)
    assert _attack_measure(host, method, out) > _attack_measure(host, method, x)
    assert info["objective_after"] < info["objective_before"], info
    assert method.info["method"] == name
    chk.assert_unchanged()
    if name in TRAINED:
        _assert_private_weights_trained(host, method, name)


def _assert_private_weights_trained(host, method, name):
    with host.borrowed():
        surrogate = method.surrogate_overrides()
        assert surrogate, "the method attacks no private weights"
        moved = [n for n, w in surrogate.items() if not torch.equal(w, host.unet_weight(n))]
        if name == "aspl":  # the persistent surrogate f was trained on the cloaked images between rounds
            base = method.base.overrides()
            assert any(not torch.equal(w, host.unet_weight(n)) for n, w in base.items())
            assert method.info["rounds"] >= 2
    assert len(moved) > len(surrogate) // 2, f"only {len(moved)} of {len(surrogate)} private weights changed"
    assert all(w.dtype == torch.float32 for w in surrogate.values())
    if name == "mist2":
        assert method.info["rounds"] >= 2 and len(method.trainer.losses) == 2 * method.info["rounds"]


@pytest.mark.parametrize("name", METHODS)
def test_same_seed_same_bytes(name, host, rng_images):
    x = rng_images(1, 32, 32, seed=2)
    s = _settings(name, steps=2, options={"samples": 1, "objective_samples": 1})
    first, _ = optimize(host, get_method(name), x, s)
    again, _ = optimize(host, get_method(name), x, s)
    assert torch.equal(first, again), "same seed must give the same bytes"


def test_styleprotect_updates_every_kv_copy_in_after_step(host, rng_images):
    method = get_method("styleprotect")
    seen = []
    real = method.after_step

    def spy(h, x, step, g):
        before = {k: v.clone() for k, v in method.surrogate_overrides().items()}
        real(h, x, step, g)
        after = method.surrogate_overrides()
        seen.append(sum(not torch.equal(before[k], after[k]) for k in before))

    method.after_step = spy
    optimize(host, method, rng_images(1, 32, 32, seed=3), _settings("styleprotect", steps=2))
    n = len(method.surrogate_overrides())
    assert seen == [n] * 2, "every after_step must update every private K/V copy"


@pytest.mark.parametrize("name", TRAINED + ["mist", "styleguard"])
def test_host_untouched_after_exception_and_cancel(name, host, rng_images, integrity):
    x = rng_images(1, 32, 32, seed=4)
    s = _settings(name, options={"samples": 1, "objective_samples": 1})
    chk = integrity(host)
    method = get_method(name)
    real_after = method.after_step

    def failing_after(h, xx, step, g):
        real_after(h, xx, step, g)
        if step == 0:
            raise RuntimeError("boom in the surrogate update")

    method.after_step = failing_after
    with pytest.raises(RuntimeError, match="boom"):
        optimize(host, method, x, s)
    chk.assert_unchanged()

    token, seen = CancelToken(), []

    def on_step(done, total, info):
        seen.append(done)
        if done == 1:
            token.cancel()

    with pytest.raises(Cancelled):
        optimize(host, get_method(name), x, s, Progress(s.steps, on_step=on_step, cancel=token))
    assert seen == [1], "cancel must stop at the next step"
    chk.assert_unchanged()


def test_cancel_during_surrogate_fine_tune_in_prepare(host, rng_images, integrity):
    chk = integrity(host)
    method = get_method("fsmg")
    calls = []
    token = CancelToken()
    real = method.setup

    def counting_setup(*a, **k):
        real_check = method.cancel_check

        def check():
            calls.append(1)
            if len(calls) == 2:
                token.cancel()
            real_check()

        method.cancel_check = check
        return real(*a, **k)

    method.setup = counting_setup
    s = _settings("fsmg", options={"surrogate_steps": 50})
    with pytest.raises(Cancelled):
        optimize(host, method, rng_images(1, 32, 32), s, Progress(s.steps, cancel=token))
    assert len(calls) == 2, "the surrogate fine-tune must stop at the first check after the cancel"
    chk.assert_unchanged()


def test_styleprotect_overrides_exactly_the_requested_layers(host, rng_images, monkeypatch):
    layers = host.cross_attention_layers()
    pick = [layers[1].name, layers[4].name]
    expected = {layers[i].params[k] for i in (1, 4) for k in ("to_k", "to_v")}
    seen = []
    real = type(host).model_output

    def recording(self, latents, t, cond, weight_overrides=None):
        seen.append(frozenset(weight_overrides or ()))
        return real(self, latents, t, cond, weight_overrides)

    monkeypatch.setattr(type(host), "model_output", recording)
    method = get_method("styleprotect")
    optimize(host, method, rng_images(1, 32, 32, seed=5), _settings("styleprotect", steps=2, layers=pick))
    monkeypatch.undo()
    assert method.info["layers"] == pick and method.info["layer_choice"] == "requested"
    with_overrides = [keys for keys in seen if keys]
    assert with_overrides and all(keys == expected for keys in with_overrides)
    assert set(method.surrogate_overrides()) == expected


def test_layer_selection_errors(host, rng_images):
    x = rng_images(1, 32, 32)
    with pytest.raises(ValueError, match="unknown cross-attention layer"):
        optimize(host, get_method("styleprotect"), x, _settings("styleprotect", layers=["up_blocks.9.nothing"]))
    with pytest.raises(ValueError, match="styleprotect"):
        optimize(host, get_method("caat"), x, _settings("caat", layers=[host.cross_attention_layers()[0].name]))


SD15_LAYERS = [f"{b}.transformer_blocks.0.attn2" for b in (
    "down_blocks.0.attentions.0", "down_blocks.0.attentions.1", "down_blocks.1.attentions.0",
    "down_blocks.1.attentions.1", "down_blocks.2.attentions.0", "down_blocks.2.attentions.1",
    "up_blocks.1.attentions.0", "up_blocks.1.attentions.1", "up_blocks.1.attentions.2", "up_blocks.2.attentions.0",
    "up_blocks.2.attentions.1", "up_blocks.2.attentions.2", "up_blocks.3.attentions.0", "up_blocks.3.attentions.1",
    "up_blocks.3.attentions.2", "mid_block.attentions.0")]


def test_default_layer_choice_preset_partial_and_positional(tiny_host):
    from protect_core.cloak.methods.styleprotect import default_layers

    chosen, how = choose_style_layers(SD15_LAYERS)
    assert how == "preset" and set(chosen) == set(STYLEPROTECT_SD15_LAYERS)
    sdxl = [n for n in SD15_LAYERS if not n.startswith(("up_blocks.2", "down_blocks.0"))]   # 3 of 4 preset names
    chosen, how = choose_style_layers(sdxl)
    assert how == "preset-partial" and len(chosen) == 3
    tiny = [l.name for l in tiny_host.cross_attention_layers()]
    chosen, how = choose_style_layers(tiny)
    up = [n for n in tiny if n.startswith("up_blocks.")]
    down = [n for n in tiny if n.startswith("down_blocks.")]
    assert how == "positional" and set(chosen) == set(up[-4:]) | {down[-1]}
    assert default_layers(tiny_host) == chosen


def test_mist_textural_mode_pulls_the_latent_to_the_pattern(host, rng_images):
    x = rng_images(1, 32, 32, seed=7)
    method = get_method("mist")
    out, _ = optimize(host, method, x, _settings("mist", options={"mode": "textural"}))

    def distance(img):
        with host.borrowed(), torch.no_grad():
            return float((latents_of(host, img) - method.target).pow(2).mean())

    assert distance(out) < 0.99 * distance(x)


def test_target_pattern_is_seeded_high_contrast():
    a, b, c = target_pattern(32, 48, 0), target_pattern(32, 48, 0), target_pattern(32, 48, 1)
    assert a.shape == (1, 3, 32, 48) and torch.equal(a, b) and not torch.equal(a, c)
    assert set(a.unique().tolist()) == {0.0, 1.0} and 0.2 < float(a.mean()) < 0.8


@pytest.mark.parametrize("name,options,match", [
    ("mist", {"mode": "x"}, "mode"),
    ("aspl", {"subset": "everything"}, "subset"),
    ("styleprotect", {"train_steps": -1}, "train_steps"),
    ("mist2", {"pgd_steps": 0}, "pgd_steps"),
    ("caat", {"lr": 0}, "learning rate"),
    ("fsmg", {"t_range": (10, 5)}, "t_range"),
    ("styleprotect", {"samples": 0}, "samples"),
    ("metacloak", {"transforms": "identity,sharpen"}, "transforms"),
    ("metacloak", {"pool": 0}, "pool"),
    ("styleguard", {"purifiers": "jpeg,gridpure"}, "purifiers"),
    ("styleguard", {"posterior": "mode"}, "posterior"),
    ("aspl", {"posterior": "median"}, "posterior"),
    ("styleguard", {"style_weight": float("nan")}, "style_weight"),
])
def test_options_are_validated(name, options, match, host, rng_images, integrity):
    chk = integrity(host)
    with pytest.raises(ValueError, match=match):
        optimize(host, get_method(name), rng_images(1, 32, 32), _settings(name, steps=1, options=options))
    chk.assert_unchanged()


@pytest.mark.slow
@pytest.mark.parametrize("flavour", ["tiny-v", "tiny-xl"])
@pytest.mark.parametrize("name", METHODS)
def test_works_on_v_prediction_and_xl(name, flavour, rng_images, integrity):
    host = _FLAVOURS.setdefault(flavour, calibrated_host(flavour))
    chk = integrity(host)
    x = rng_images(1, 32, 32, seed=6)
    method = get_method(name)
    # the tiny-xl UNet's loss depends more weakly on the image: 16 draws per step keep the 4-step ascent reliable
    out, info = optimize(host, method, x, _settings(name, steps=4, options={"samples": 16}))
    chk.assert_unchanged()
    assert (out - x).abs().max() <= _settings(name).eps + 1e-6
    assert _attack_measure(host, method, out) > _attack_measure(host, method, x)


_FLAVOURS: dict = {}


# ---- metacloak and styleguard specifics ---------------------------------------------------------------------------
def test_metacloak_pool_is_staggered_and_surrogates_reset(host, rng_images, integrity):
    chk = integrity(host)
    method = get_method("metacloak")
    s = _settings("metacloak", steps=6, options={"pool": 3, "stagger": 2, "max_age": 5, "samples": 1,
                                                  "objective_samples": 1})
    seen = []
    real = method.setup

    def spy(h, images, settings, g):
        real(h, images, settings, g)
        seen.append([dict(t.adapter.state_dict()) for t in method.pool])

    method.setup = spy
    optimize(host, method, rng_images(1, 32, 32, seed=8), s)
    chk.assert_unchanged()
    start = seen[0]
    with host.borrowed():
        host_w = {n: host.unet_weight(n) for n in start[0]}
    assert all(torch.equal(start[0][n], host_w[n]) for n in host_w), "copy 0 starts as the host's model"
    assert all(any(not torch.equal(start[k][n], host_w[n]) for n in host_w) for k in (1, 2)), "copies 1, 2 trained"
    # ages start at 0, 2, 4 with max_age 5: 6 unrolled steps must reset at least one copy to the host's weights
    assert method.info["resets"] >= 1 and method.info["pool"] == 3
    assert max(method.ages) < 5


@pytest.mark.parametrize("name", ["identity", "jpeg", "resize", "blur", "noise", "diffpure", "noisy_upscale"])
def test_purifier_stand_ins_are_differentiable_and_seeded(name, host, rng_images):
    from protect_core.cloak.purifier_ensemble import purified_latents

    x = rng_images(2, 32, 32, seed=9).requires_grad_(True)
    with host.borrowed():
        z = purified_latents(host, x, name, torch.Generator().manual_seed(1))
        again = purified_latents(host, x.detach(), name, torch.Generator().manual_seed(1))
        clean = latents_of(host, x.detach())
        z.pow(2).sum().backward()
    assert z.shape == clean.shape and torch.equal(z.detach(), again)
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0, "no gradient reaches the image"


def test_styleguard_lowers_its_loss_measured_after_the_purifier_it_trains_through(host, rng_images, integrity):
    from protect_core.cloak.methods.styleguard import style_term
    from protect_core.cloak.purifier_ensemble import purified_latents

    chk = integrity(host)
    x = rng_images(1, 32, 32, seed=10)
    method = get_method("styleguard")
    s = _settings("styleguard", steps=6, options={"purifiers": "diffpure", "style_weight": 1.0,
                                                  "semantic_weight": 0.0, "posterior": "mean"})
    out, info = optimize(host, method, x, s)
    chk.assert_unchanged()
    assert method.info["drawn"] == {"diffpure": 6}

    def measured(img):   # the style term after the one-step DiffPure stand-in, fixed draws
        with host.borrowed(), torch.no_grad():
            z = purified_latents(host, img, "diffpure", torch.Generator().manual_seed(5), sample=False)
            return float(style_term(z, method.clean_stats, method.target_stats))

    assert measured(out) > measured(x)
    assert (out - x).abs().max() <= s.eps + 1e-6


@pytest.mark.parametrize("name", ["aspl", "mist", "caat"])
def test_posterior_draws_option(name, host, rng_images, integrity):
    """``posterior=sample`` attacks seeded posterior draws: a run differs from the mean's, repeats byte for byte,
    still ascends within budget; with ``subset=unet`` ASPL's surrogate covers every UNet weight."""
    chk = integrity(host)
    x = rng_images(1, 32, 32, seed=11)
    extra = {"subset": "unet"} if name == "aspl" else {}
    mean, _ = optimize(host, get_method(name), x, _settings(name, steps=3))
    s = _settings(name, steps=3, options={"posterior": "sample", **extra})
    method = get_method(name)
    drawn, info = optimize(host, method, x, s)
    again, _ = optimize(host, get_method(name), x, s)
    chk.assert_unchanged()
    assert torch.equal(drawn, again) and not torch.equal(drawn, mean)
    assert method.info["posterior"] == "sample" and (drawn - x).abs().max() <= s.eps + 1e-6
    if name == "aspl":
        with host.borrowed():
            assert set(method.surrogate_overrides()) == set(host.unet_parameter_names())


def test_latent_draws_sample_each_copy(host, rng_images):
    from protect_core.cloak.surrogate import latent_draws

    x = rng_images(2, 32, 32, seed=12)
    with host.borrowed(), torch.no_grad():
        mean = latent_draws(host, x, 3)
        draws = latent_draws(host, x, 3, True, torch.Generator().manual_seed(0))
    assert mean.shape == draws.shape == (6, *latents_of_shape(host, x))
    assert torch.equal(mean[:2], mean[2:4]) and not torch.equal(draws[:2], draws[2:4])


def latents_of_shape(host, x):
    with host.borrowed(), torch.no_grad():
        return tuple(latents_of(host, x).shape[1:])
