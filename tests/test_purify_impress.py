"""IMPRESS: lowers its own objective, respects its perceptual hinge, removes a cloak the VAE cannot represent.

The "moves back toward clean" check needs a VAE that cannot reproduce high-frequency perturbations, as a trained
VAE cannot; the random-weight tiny model's VAE reproduces nothing, so that check runs on ``LowpassHost``: a
HostModel whose VAE encodes by 4x4 average pooling and decodes by repeating each latent pixel 4x4 (through a 1x1
convolution that must stay untouched). It reproduces flat-block art exactly and cannot represent any pattern that
averages out within a block, which is the situation IMPRESS exploits. IMPRESS sees it only through the HostModel
interface.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from protect_core.diffusion import sd_alphas_cumprod
from protect_core.host import Conditioning, HostModel
from protect_core.metrics import perceptual_distance, psnr
from protect_core.purify import purify
from protect_core.purify.methods.impress import consistency_loss, cosine_lr, impress_objective


class LowpassHost(HostModel):
    family = "lowpass-test"
    vae_scale_factor = 4
    latent_channels = 3

    def __init__(self):
        self.vae = torch.nn.Conv2d(3, 3, 1)
        with torch.no_grad():
            self.vae.weight.copy_(torch.eye(3)[:, :, None, None])
            self.vae.bias.zero_()
        self.vae.requires_grad_(False)
        self.unet, self.text_encoder = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
        self._alphas = sd_alphas_cumprod()

    device = property(lambda self: torch.device("cpu"))
    dtype = property(lambda self: torch.float32)
    alphas_cumprod = property(lambda self: self._alphas)
    latent_scale = property(lambda self: 1.0)

    def host_modules(self):
        return {"unet": self.unet, "vae": self.vae, "text_encoder": self.text_encoder}

    def _vae_posterior(self, images):
        mean = F.avg_pool2d(images, 4)
        return mean, torch.zeros_like(mean)

    def _vae_decode(self, latents):
        return self.call(self.vae, F.interpolate(latents, scale_factor=4, mode="nearest"))

    def _encode_text(self, prompts):
        return Conditioning(torch.zeros(len(prompts), 1, 2))

    def _unet(self, latents, t, cond, weights):
        raise NotImplementedError("no UNet in this test host")

    def unet_parameters(self):
        return dict(self.unet.named_parameters())

    def _cross_attention_modules(self):
        return iter(())


def block_art(n=32, seed=0):
    """Flat 4x4 blocks of colour: exactly what LowpassHost's VAE reproduces."""
    g = torch.Generator().manual_seed(seed)
    return F.interpolate(0.1 + 0.8 * torch.rand(1, 3, n // 4, n // 4, generator=g), scale_factor=4, mode="nearest")


def checkerboard(n=32, amp=8 / 255):
    yy, xx = torch.meshgrid(torch.arange(n), torch.arange(n), indexing="ij")
    return (((yy + xx) % 2) * 2 - 1).float() * amp


def test_impress_removes_what_the_vae_cannot_represent(integrity):
    host = LowpassHost()
    chk = integrity(host)
    clean = block_art()
    cloaked = (clean + checkerboard()).clamp(0, 1)
    out, info = purify(host, cloaked, [("impress", {"iterations": 20, "perceptual": "dssim"})])
    stage = info["chain"][0]
    assert stage["objective_end"][0] < 0.2 * stage["objective_start"][0]
    assert float(psnr(out, clean)) > float(psnr(cloaked, clean)) + 5
    chk.assert_unchanged()


def test_impress_hinge_limits_the_perceptual_change():
    host = LowpassHost()
    cloaked = (block_art(seed=1) + checkerboard()).clamp(0, 1)
    eps = 0.002
    common = {"iterations": 25, "eps": eps, "perceptual": "dssim"}
    free, _ = purify(host, cloaked, [("impress", {**common, "alpha": 0.0})])
    held, info = purify(host, cloaked, [("impress", {**common, "alpha": 10.0})])
    d_free = float(perceptual_distance(free, cloaked, kind="dssim"))
    d_held = float(perceptual_distance(held, cloaked, kind="dssim"))
    assert d_free > 2 * eps             # without the hinge the image drifts well past eps
    assert d_held < 1.15 * eps          # with the hinge it stays about within eps
    assert info["chain"][0]["perceptual_end"][0] == pytest.approx(d_held, abs=1e-5)


def test_hinge_is_free_below_eps():
    host = LowpassHost()
    x = block_art()
    y = (x + 0.002).clamp(0, 1)
    with host.borrowed():
        total, cons, perc = impress_objective(host, y, x, alpha=10.0, eps=0.5, kind="dssim")
        assert float(perc) < 0.5 and torch.equal(total, cons)
        total2, cons2, perc2 = impress_objective(host, y, x, alpha=10.0, eps=0.0, kind="dssim")
        assert torch.allclose(total2, cons2 + 10 * perc2)
        odd = consistency_loss(host, torch.rand(1, 3, 30, 34))  # odd sizes are padded for the VAE
        assert odd.shape == (1,) and float(odd) > 0
    assert cosine_lr(0.01, 0, 100) == pytest.approx(0.01) and cosine_lr(0.01, 50, 100) == pytest.approx(0.005)


def test_impress_lowers_its_objective_on_the_tiny_model(tiny_host, integrity, rng_images):
    chk = integrity(tiny_host)
    x = rng_images(1, 32, 32, seed=3)
    out, info = purify(tiny_host, x, [("impress", {"iterations": 4, "lr": 0.01, "perceptual": "dssim"})], seed=1)
    stage = info["chain"][0]
    assert stage["objective_end"][0] < stage["objective_start"][0]
    assert out.shape == x.shape and 0 <= float(out.min()) and float(out.max()) <= 1
    chk.assert_unchanged()


def test_impress_start_noise_is_seeded():
    host = LowpassHost()
    x = block_art()
    p = [("impress", {"iterations": 2, "start_noise": 0.05, "perceptual": "dssim"})]
    a, _ = purify(host, x, p, seed=3)
    b, _ = purify(host, x, p, seed=3)
    c, _ = purify(host, x, p, seed=4)
    assert torch.equal(a, b) and not torch.equal(a, c)
