"""Differentiable stand-ins for the attacker's purifiers, for methods that train their perturbation THROUGH them
(``styleguard``): each maps cloaked images in [0, 1] to the scaled latents an attacker would fine-tune on after
that purifier, differentiably in the images, with the host's own VAE and UNet.

* ``identity``: the latents of the image itself;
* ``jpeg``, ``resize``, ``blur``, ``noise``: the robust option's transforms (:mod:`protect_core.cloak.robust`; JPEG
  is the real codec with a straight-through gradient), then the encoder;
* ``diffpure``: DiffPure / SDEdit in one step: the latents noised to a seeded timestep in ``DIFFPURE_T`` (DiffPure's
  t of about 0.1 of the schedule), then the UNet's one-step estimate of the clean latents (unconditional). The full
  purifier runs several DDIM steps and a decode/encode round trip; one step keeps the gradient affordable;
* ``noisy_upscale``: Hönig et al.'s recipe as the project's ``noisy_upscale`` purifier runs it: Gaussian noise of a
  seeded sigma in ``NOISY_SIGMA``, bicubic x2, the one-step denoise above at the larger size at the timestep of
  the purifier's default strength (0.2), decode, bicubic back to the input size, encode.

Randomness (which purifier, noise, timesteps) comes only from the ``torch.Generator`` given. Cost, per call:
pixel stand-ins one encoder pass; ``diffpure`` one encoder and one UNet pass; ``noisy_upscale`` an encoder, a UNet
and a decoder pass at twice the size plus an encoder pass (about 13x the encoder alone): the expensive one.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from ..diffusion import add_noise, eps_from_output, x0_from_eps
from .robust import TRANSFORMS, uniform

DIFFPURE_T = (60, 140)          # of a 1000-step schedule
NOISY_SIGMA = (0.05, 0.1)       # Hönig et al.: sigma 0.05-0.1
NOISY_T = 200                   # the noisy_upscale purifier's default strength 0.2


def encode(host, x01: torch.Tensor, generator: torch.Generator, sample: bool) -> torch.Tensor:
    return host.encode(x01 * 2 - 1, sample=sample, generator=generator)


def one_step_denoise(host, z: torch.Tensor, t: int, generator: torch.Generator) -> torch.Tensor:
    """Noise scaled latents to timestep ``t`` (seeded) and return the UNet's unconditional clean estimate."""
    t = max(1, min(int(t), host.num_train_timesteps - 1))
    noise = torch.randn(z.shape, generator=generator).to(z.device, z.dtype)
    tt = torch.full((z.shape[0],), t, dtype=torch.long, device=z.device)
    z_t = add_noise(z, noise, tt, host.alphas_cumprod)
    uncond = host.encode_text([""])
    out = host.model_output(z_t, tt, uncond)
    eps = eps_from_output(out, z_t, tt, host.alphas_cumprod, host.prediction_type)
    return x0_from_eps(eps, z_t, tt, host.alphas_cumprod)


def _pixel(name: str):
    def run(host, x, generator, sample):
        return encode(host, TRANSFORMS[name](x, generator), generator, sample)
    return run


def _identity(host, x, generator, sample):
    return encode(host, x, generator, sample)


def _diffpure(host, x, generator, sample):
    t = int(round(uniform(generator, *DIFFPURE_T)))
    return one_step_denoise(host, encode(host, x, generator, sample), t, generator)


def _noisy_upscale(host, x, generator, sample):
    h, w = x.shape[-2:]
    sigma = uniform(generator, *NOISY_SIGMA)
    noisy = x + sigma * torch.randn(x.shape, generator=generator).to(x.device, x.dtype)
    up = F.interpolate(noisy, size=(2 * h, 2 * w), mode="bicubic", align_corners=False).clamp(0, 1)
    z = one_step_denoise(host, encode(host, up, generator, sample), NOISY_T, generator)
    big = ((host.decode(z) + 1) / 2).clamp(0, 1)
    small = F.interpolate(big, size=(h, w), mode="bicubic", align_corners=False, antialias=True).clamp(0, 1)
    return encode(host, small, generator, sample)


PURIFIERS: dict[str, Callable] = {"identity": _identity, **{n: _pixel(n) for n in TRANSFORMS},
                                  "diffpure": _diffpure, "noisy_upscale": _noisy_upscale}


def parse_purifiers(value, owner: str) -> list[str]:
    """A list of stand-in names from a comma-separated string or a list, checked (one-line error naming ``owner``)."""
    names = [n.strip() for n in value.split(",")] if isinstance(value, str) else list(value or [])
    bad = [n for n in names if n not in PURIFIERS]
    if not names or bad:
        raise ValueError(f"{owner}: purifiers must be a comma-separated list of {', '.join(PURIFIERS)}, "
                         f"got {value!r}")
    return names


def purified_latents(host, x01: torch.Tensor, name: str, generator: torch.Generator,
                     sample: bool = True) -> torch.Tensor:
    """Scaled latents of ``x01`` after the stand-in ``name`` (see the module doc); differentiable in ``x01``."""
    return PURIFIERS[name](host, x01, generator, sample)
