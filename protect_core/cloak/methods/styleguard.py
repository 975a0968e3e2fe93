"""StyleGuard-style purifier-aware cloak (after Li et al., "StyleGuard: Preventing Text-to-Image-Model-based Style
Mimicry Attacks by Style Perturbations", NeurIPS 2025): a style loss on the VAE latent plus the fine-tuning loss,
both taken AFTER a differentiable stand-in of an attacker's purifier, so the perturbation is trained to survive
purification.

Each image step draws one stand-in from option ``purifiers`` (seeded, uniform;
:mod:`protect_core.cloak.purifier_ensemble`: identity, JPEG, resize, blur, noise, one-step DiffPure, noisy x2
upscaling) and takes the scaled latent ``z`` an attacker would fine-tune on after it. The loss (minimised) is

    -( semantic_weight * tuning_loss(z) + style_weight * [ mse(s(z), s_clean) - mse(s(z), s_target) ] )

where ``s`` = per-channel mean and variance of the latent over batch and space (StyleGuard's style statistics),
``s_clean`` those of the clean images' latents, ``s_target`` those of a target pattern's latent
(:func:`~protect_core.cloak.surrogate.target_pattern`): the latent's style statistics are pushed away from the art
and toward the target, and the tuning (denoising) loss is ascended, as in AdvDM. Latents are drawn from the VAE
posterior (option ``posterior``: "sample", as StyleGuard's code, or "mean").

How this differs from StyleGuard's public code, on purpose: that code averages the loss over an ensemble of
diffusion MODELS (SD and the x4 upscaler's UNet) and alternates an ASPL-style surrogate fine-tune, and applies no
purifier inside the attack; here the gradient goes through the purifiers themselves (the issue's "purifier-aware
training"), on the host's model only, with no surrogate training (so the method runs image by image and tiles).

Defaults from StyleGuard's script, converted from [-1, 1]: eps 0.05 -> 0.025 (6.4/255), step 5e-3 -> 2.5e-3;
ours: 100 steps; options ``style_weight`` 0.1 (the script's), ``semantic_weight`` 1, ``purifiers``
"identity,jpeg,resize,blur,noise,diffpure,noisy_upscale", ``posterior`` "sample", ``pattern_seed`` 0,
``samples``, ``objective_samples``, ``t_range``. ``objective`` is the loss with the identity stand-in under the
host's model. Cost: per step the drawn stand-in (see the ensemble's doc) plus one UNet forward+backward.
"""
from __future__ import annotations

import torch

from ...diffusion import denoising_loss
from ..base import register
from ..purifier_ensemble import parse_purifiers, purified_latents
from ..surrogate import SurrogateAttack, latents_of, posterior_option, repeat_draws, target_pattern

def style_stats(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and variance over batch and space of latents (B, C, h, w)."""
    return z.mean(dim=(0, 2, 3)), z.var(dim=(0, 2, 3), unbiased=False)


def style_term(z: torch.Tensor, clean: tuple, target: tuple) -> torch.Tensor:
    """mse(s(z), s_clean) - mse(s(z), s_target), summed over mean and variance: large = away from the art's
    statistics and toward the target's."""
    mean, var = style_stats(z)
    away = (mean - clean[0]).pow(2).mean() + (var - clean[1]).pow(2).mean()
    toward = (mean - target[0]).pow(2).mean() + (var - target[1]).pow(2).mean()
    return away - toward


@register
class StyleGuard(SurrogateAttack):
    name = "styleguard"
    summary = "style-statistics + tuning loss taken through differentiable purifiers (StyleGuard-style, robust)"
    source = "after Li et al., StyleGuard, NeurIPS 2025 (purifier-aware: gradients through the purifiers)"
    defaults = {"eps": 0.025, "steps": 100, "step_size": 2.5e-3, "optimizer": "pgd",
                "options": {"style_weight": 0.1, "semantic_weight": 1.0,
                            "purifiers": "identity,jpeg,resize,blur,noise,diffpure,noisy_upscale",
                            "posterior": "sample", "pattern_seed": 0, "t_range": None}}

    def check_settings(self, settings):
        parse_purifiers(settings.options.get("purifiers"), self.name)
        posterior_option(settings.options, "sample")
        for key in ("style_weight", "semantic_weight"):
            v = settings.options.get(key)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v < float("inf"):
                raise ValueError(f"styleguard: {key} must be a finite number >= 0, got {v!r}")

    def setup(self, host, images, settings, generator):
        self.check_settings(settings)
        self.purifiers = parse_purifiers(self.opts["purifiers"], self.name)
        self.w_style, self.w_sem = float(self.opts["style_weight"]), float(self.opts["semantic_weight"])
        pattern = target_pattern(*images.shape[-2:], seed=int(self.opts["pattern_seed"])).to(images.device)
        with torch.no_grad():
            self.clean_stats = tuple(s.detach() for s in style_stats(latents_of(host, images)))
            self.target_stats = tuple(s.detach() for s in style_stats(latents_of(host, pattern)))
        self.info.update(purifiers=list(self.purifiers), style_weight=self.w_style, semantic_weight=self.w_sem,
                         drawn={})

    def _loss_of(self, host, z, generator, samples):
        loss = 0.0
        if self.w_sem:
            loss = loss - self.w_sem * denoising_loss(host, repeat_draws(z, samples), self.cond, generator,
                                                      self.t_range)
        if self.w_style:
            loss = loss - self.w_style * style_term(z, self.clean_stats, self.target_stats)
        return loss

    def attack_loss(self, host, x, generator, overrides, samples=1):
        """The loss with no purifier (the reported objective; ``overrides`` are unused: no surrogate)."""
        return self._loss_of(host, purified_latents(host, x, "identity", generator, self.posterior_sample), generator,
                             samples)

    def loss(self, host, x, step, generator):
        name = self.purifiers[int(torch.randint(len(self.purifiers), (), generator=generator))]
        self.info["drawn"][name] = self.info["drawn"].get(name, 0) + 1
        z = purified_latents(host, x, name, generator, self.posterior_sample)
        return self._loss_of(host, z, generator, self.samples)
