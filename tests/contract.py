"""The HostModel contract: checks every adapter (diffusers, ComfyUI, A1111/Forge) must pass.

Each ``check_*`` takes a ready host and raises AssertionError on a violation; adapter test files call them with
their own hosts, so one suite judges every backend.
"""
from __future__ import annotations

import pytest
import torch

from protect_core.errors import Cancelled
from protect_core.integrity import diff_fingerprints, fingerprint
from protect_core.progress import CancelToken, Progress


def _images(host, b=2, size=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(b, 3, size, size, generator=g) * 2 - 1).to(host.device)


def check_shapes(host):
    f = host.vae_scale_factor
    with host.borrowed():
        x = _images(host)
        z = host.encode(x)
        assert z.shape == (2, host.latent_channels, 64 // f, 64 // f)
        assert z.dtype == torch.float32
        mean, logvar = host.posterior(x)
        assert mean.shape == logvar.shape == z.shape
        assert torch.allclose(z, (mean - host.latent_shift) * host.latent_scale, atol=1e-5)
        y = host.decode(z)
        assert y.shape == x.shape and torch.isfinite(y).all()
        cond = host.encode_text(["a painting in sks style", "a photo"])
        assert cond.context.ndim == 3 and cond.context.shape[0] == 2
        eps = host.predict_noise(z, torch.tensor([10, 900]), cond)
        assert eps.shape == z.shape and torch.isfinite(eps).all()
        out = host.model_output(z, 500, host.encode_text("one prompt broadcast"))
        assert out.shape == z.shape
        ac = host.alphas_cumprod
        assert ac.ndim == 1 and ac.shape[0] == host.num_train_timesteps and bool((ac[1:] <= ac[:-1]).all())
        assert host.prediction_type in ("epsilon", "v_prediction")


def check_gradients(host):
    """Gradients reach the image and weight overrides, never the host's parameters."""
    layers = host.cross_attention_layers()
    assert layers, "a Stable Diffusion UNet has cross-attention layers"
    names = [l.name for l in layers]
    assert len(set(names)) == len(names)
    for layer in layers:
        assert set(layer.params) == {"to_q", "to_k", "to_v", "to_out"}
        assert layer.context_dim > 0 and layer.query_dim > 0
    with host.borrowed():
        x = _images(host).requires_grad_(True)
        key = layers[0].params["to_k"]
        w = host.unet_weight(key).requires_grad_(True)
        cond = host.encode_text("a painting")
        eps = host.predict_noise(host.encode(x), 500, cond, weight_overrides={key: w})
        (eps.pow(2).mean() + host.decode(host.encode(x)).pow(2).mean()).backward()
        assert x.grad is not None and x.grad.abs().sum() > 0
        assert w.grad is not None and w.grad.abs().sum() > 0
    for mod in host.host_modules().values():
        for p in mod.parameters():
            assert p.grad is None, "a host parameter received a gradient"


def check_overrides_take_effect(host):
    with host.borrowed():
        z = host.encode(_images(host, b=1))
        cond = host.encode_text("a painting")
        base = host.predict_noise(z, 300, cond)
        layer = host.cross_attention_layers()[-1]
        same = host.predict_noise(z, 300, cond, {layer.params["to_v"]: host.unet_weight(layer.params["to_v"])})
        zero = host.predict_noise(z, 300, cond, {layer.params["to_v"]: torch.zeros_like(
            host.unet_weight(layer.params["to_v"]))})
        assert torch.allclose(base, same, atol=1e-5)
        assert not torch.allclose(base, zero, atol=1e-5)
        with pytest.raises(Exception):
            host.predict_noise(z, 300, cond, {"no.such.weight": torch.zeros(1)})


def _misbehave(host):
    """What a buggy block might do to a borrowed model: flip flags, leave hooks, switch to train mode."""
    modules = host.host_modules()
    unet = modules["unet"]
    p = next(unet.parameters())
    if not p.is_inference():  # torch forbids setting requires_grad on inference tensors anyway
        p.requires_grad_(not p.requires_grad)
    unet.train()
    layer = host.cross_attention_layers()[0]
    layer.module.register_forward_hook(lambda *a: None)
    layer.module.register_forward_pre_hook(lambda *a: None)


def check_restored_after(host, ending: str):
    """After success, exception or cancel inside ``borrowed``, the host fingerprint is unchanged."""
    before = fingerprint(host.host_modules())
    token = CancelToken()
    progress = Progress(total=3, cancel=token)
    try:
        with host.borrowed():
            x = _images(host, b=1).requires_grad_(True)
            host.predict_noise(host.encode(x), 100, host.encode_text("a")).sum().backward()
            _misbehave(host)
            if ending == "exception":
                raise RuntimeError("boom")
            if ending == "cancel":
                progress.step()
                token.cancel()
                progress.step()
    except RuntimeError as e:
        assert ending == "exception" and "boom" in str(e)
    except Cancelled:
        assert ending == "cancel"
    else:
        assert ending == "success"
    problems = diff_fingerprints(before, fingerprint(host.host_modules()))
    assert not problems, problems


CHECKS = [check_shapes, check_gradients, check_overrides_take_effect]
ENDINGS = ["success", "exception", "cancel"]
