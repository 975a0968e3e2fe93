"""SDS(+/-) from Diff-Protect (Xue et al., "Toward Effective Protection Against Diffusion-Based Mimicry through
Score Distillation", ICLR 2024).

The denoising loss ``L(z) = E_t,eps ||eps_hat(z_t, t) - eps||^2`` of the latent ``z = E(x + d)`` is what fine-tuning
minimises. Score distillation approximates its gradient by dropping the UNet Jacobian:
``dL/dz ~ w(t) (eps_hat - eps)``. So ``eps_hat`` is computed under ``no_grad`` and only the VAE encoder is
back-propagated, through the surrogate loss ``sum(sg(eps_hat - eps) * z)`` (mean here; the scale does not matter
to sign-PGD). No UNet backward: about half the memory and twice the speed of a full denoising-loss attack.

* mode "+" (SDS+): *ascend* the denoising loss (minimise ``-surrogate``);
* mode "-" (SDS-, the paper's recommendation, our default): *descend* it (minimise ``+surrogate``), which the
  paper found to protect better.

Defaults from the paper: eps 16/255, step 1/255, 100 steps, PGD, mode "-". Options: ``mode``, ``t_range``
(timestep range, default the whole schedule). Conditioning: ``settings.prompt`` (the attacker's prompt).
The reported objective is the signed denoising loss itself (fixed t and noise), which SDS approximately optimises.
``uses_unet`` is True (the UNet runs forward), but nothing is back-propagated through it, so the runner's default
tile is the encoder-only one (1024 px).
"""
from __future__ import annotations

import torch

from ...diffusion import add_noise, training_target
from ..base import CloakMethod, register


@register
class SDS(CloakMethod):
    name = "sds"
    summary = "score distillation through the VAE encoder only (no UNet backward); mode '-' or '+'"
    source = "Xue et al., Diff-Protect (SDS+/SDS-), ICLR 2024"
    defaults = {"eps": 16 / 255, "steps": 100, "step_size": 1 / 255, "optimizer": "pgd",
                "options": {"mode": "-", "t_range": None}}
    uses_unet = True
    default_tile = 1024

    def prepare(self, host, images, settings, generator):
        mode = settings.options["mode"]
        if mode not in ("+", "-"):
            raise ValueError(f"sds: mode must be '+' or '-', got {mode!r}")
        self.sign = 1.0 if mode == "-" else -1.0
        self.cond = host.encode_text([settings.prompt])
        self.t_range = tuple(settings.options.get("t_range") or (0, host.num_train_timesteps))

    def _noise(self, host, z, generator):
        lo, hi = self.t_range
        t = torch.randint(lo, hi, (z.shape[0],), generator=generator).to(z.device)
        noise = torch.randn(z.shape, generator=generator).to(z.device)
        return t, noise

    def _residual(self, host, z, t, noise):
        """Model output minus its training target, at fixed (t, noise); (eps_hat - eps) for eps-models."""
        with torch.no_grad():
            z_t = add_noise(z.detach(), noise, t, host.alphas_cumprod)
            out = host.model_output(z_t, t, self.cond)
            return out - training_target(z.detach(), noise, t, host.alphas_cumprod, host.prediction_type)

    def loss(self, host, x, step, generator):
        z = host.encode(x * 2 - 1)
        t, noise = self._noise(host, z, generator)
        return self.sign * (self._residual(host, z, t, noise) * z).mean()

    def objective(self, host, x, step, generator):
        z = host.encode(x * 2 - 1)
        t, noise = self._noise(host, z, generator)
        return self.sign * self._residual(host, z, t, noise).pow(2).mean()
