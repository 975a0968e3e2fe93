"""LoRA and private weight copies: exact identity at start, training lowers the loss, gradients stay private."""
from __future__ import annotations

import pytest
import torch

from protect_core.diffusion import denoising_loss
from protect_core.errors import ModelError
from protect_core.lora import LoRA, WeightCopies, attention_targets

PROMPT = "an artwork in sks style"



def _fixed_loss(host, latents, cond, overrides, seed=123):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        return float(denoising_loss(host, latents.repeat(4, 1, 1, 1), cond, generator=g,
                                    weight_overrides=overrides))


def test_attention_targets_all_and_selection(tiny_host):
    layers = tiny_host.cross_attention_layers()
    with tiny_host.borrowed():
        everything = attention_targets(tiny_host)
        assert len(everything) == 4 * len(layers)
        assert all(".attn2." in n for n in everything)
        pick = [layers[0].name, layers[-1].name]
        sel = attention_targets(tiny_host, pick, which=("to_k", "to_v"))
        assert sel == [layers[0].params["to_k"], layers[0].params["to_v"],
                       layers[-1].params["to_k"], layers[-1].params["to_v"]]
        both = attention_targets(tiny_host, pick, which=("to_k",), self_attention=True)
        assert len(both) == 4 and sum(".attn1." in n for n in both) == 2
        assert set(both) <= set(tiny_host.unet_parameter_names())
        with pytest.raises(ValueError, match="unknown cross-attention layer"):
            attention_targets(tiny_host, ["up_blocks.9.nothing"])
        with pytest.raises(ValueError, match="projection"):
            attention_targets(tiny_host, which=("to_x",))


def test_zero_b_gives_base_weights_exactly(any_tiny_host):
    host = any_tiny_host
    with host.borrowed():
        targets = attention_targets(host)
        lora = LoRA(host, targets, rank=4, alpha=8, seed=1)
        over = lora.overrides()
        assert set(over) == set(targets)
        for name, w in over.items():
            assert torch.equal(w, host.unet_weight(name))
        assert any(a.abs().sum() > 0 for a in lora.A.values())  # A is random, only B is zero


def test_conv1x1_supported_and_other_shapes_rejected(tiny_host):
    names = tiny_host.unet_parameter_names()
    params = tiny_host.unet_parameters()
    conv1 = next(n for n in names if params[n].ndim == 4 and params[n].shape[-1] == 1)
    conv3 = next(n for n in names if params[n].ndim == 4 and params[n].shape[-1] == 3)
    bias = next(n for n in names if params[n].ndim == 1)
    with tiny_host.borrowed():
        lora = LoRA(tiny_host, [conv1], rank=2, seed=0)
        with torch.no_grad():
            lora.B[conv1].fill_(0.1)
        w = lora.overrides()[conv1]
        assert w.shape == params[conv1].shape
        assert not torch.equal(w, tiny_host.unet_weight(conv1))
        for bad in (conv3, bias):
            with pytest.raises(ValueError, match="Linear"):
                LoRA(tiny_host, [bad])
        with pytest.raises(ModelError):
            LoRA(tiny_host, ["no.such.weight"])
        with pytest.raises(ValueError, match="rank"):
            LoRA(tiny_host, [conv1], rank=0)


def test_training_lowers_loss_and_only_lora_gets_gradients(tiny_host, rng_images, integrity):
    chk = integrity(tiny_host)
    with tiny_host.borrowed():
        lat = tiny_host.encode(rng_images(2, 32, 32, seed=3) * 2 - 1).detach()
        cond = tiny_host.encode_text([PROMPT])
        lora = LoRA(tiny_host, attention_targets(tiny_host), rank=4, seed=0)
        before = _fixed_loss(tiny_host, lat, cond, lora.overrides())
        opt = torch.optim.Adam(lora.parameters(), lr=1e-2)
        g = torch.Generator().manual_seed(0)
        for _ in range(15):
            opt.zero_grad()
            denoising_loss(tiny_host, lat, cond, generator=g, weight_overrides=lora.overrides()).backward()
            assert all(p.grad is not None for p in lora.B.values())
            assert all(p.grad is None for p in tiny_host.unet_parameters().values())
            opt.step()
        after = _fixed_loss(tiny_host, lat, cond, lora.overrides())
    assert after < before * 0.97, (before, after)
    chk.assert_unchanged()


def test_state_dict_round_trip_and_safetensors(tiny_host, tmp_path):
    with tiny_host.borrowed():
        targets = attention_targets(tiny_host, which=("to_k", "to_v"))
        lora = LoRA(tiny_host, targets, rank=3, alpha=6, seed=0)
        with torch.no_grad():
            for b in lora.B.values():
                b.normal_()
        other = LoRA(tiny_host, targets, rank=3, alpha=6, seed=99)
        other.load_state_dict(lora.state_dict())
        for n, w in lora.overrides().items():
            assert torch.equal(w, other.overrides()[n])
        lora.save(tmp_path / "a.safetensors")
        loaded = LoRA.load(tiny_host, tmp_path / "a.safetensors")
        assert loaded.rank == 3 and loaded.alpha == 6 and loaded.targets == lora.targets
        for n, w in lora.overrides().items():
            assert torch.equal(w, loaded.overrides()[n])
        bad = dict(lora.state_dict())
        bad.pop(next(iter(bad)))
        with pytest.raises(ValueError, match="missing"):
            other.load_state_dict(bad)


def test_weight_copies_are_private(tiny_host, integrity):
    chk = integrity(tiny_host)
    with tiny_host.borrowed():
        name = attention_targets(tiny_host, which=("to_v",))[0]
        copies = WeightCopies(tiny_host, [name])
        assert torch.equal(copies.overrides()[name], tiny_host.unet_weight(name))
        with torch.no_grad():
            copies.weights[name].add_(1.0)
        assert not torch.equal(copies.overrides()[name], tiny_host.unet_weight(name))
        state = copies.state_dict()
        fresh = WeightCopies(tiny_host, [name])
        fresh.load_state_dict(state)
        assert torch.equal(fresh.overrides()[name], copies.overrides()[name])
    chk.assert_unchanged()


def test_overrides_need_a_borrow(tiny_host):
    with tiny_host.borrowed():
        lora = LoRA(tiny_host, attention_targets(tiny_host, which=("to_k",)))
    with pytest.raises(RuntimeError, match="borrowed"):
        lora.overrides()
