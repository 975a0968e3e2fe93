"""Mist v1 (Liang et al., "Adversarial Example Does Good: Preventing Painting Imitation from Diffusion Models via
Adversarial Examples", ICML 2023; "Mist: Towards Improved Adversarial Examples for Diffusion Models", 2023).

Two terms on the cloaked latent ``z = E(x + d)``:

* textural: ``||z - E(P)||^2`` pulls the VAE-encoder latent toward the latent of a target pattern ``P`` (Mist ships
  a fixed high-contrast image; ours is :func:`~protect_core.cloak.surrogate.target_pattern`, a seeded black/white
  grating mix generated at the image size, so no asset is needed);
* semantic: the fine-tuning (denoising) loss of ``z`` under ``settings.prompt``, ASCENDED (AdvDM).

Minimised loss by option ``mode``: "fused" (default) ``w_tex * textural - w_sem * semantic``; "textural";
"semantic" (``-semantic``, i.e. AdvDM). Mist sums the textural squared error and multiplies the (mean) semantic
loss by ``rate`` = 1e4; at its 512 px size (16384 latent values) that equals per-value means weighted 1 : 0.61,
hence our defaults ``textural_weight`` 1.0, ``semantic_weight`` 0.6 (means, so the balance does not depend on size).

Defaults from Mist's code: eps 16/255, step 1/255, 100 steps, PGD; options ``pattern_seed`` 0 (the same target for
every image of a set), ``samples``, ``objective_samples``, ``t_range``, ``posterior`` "mean" (Mist's code draws from
the posterior: "sample") (see
:class:`~protect_core.cloak.surrogate.SurrogateAttack`). No surrogate is trained, so the method is not joint. Cost: one VAE-encoder and
one UNet forward+backward per step (the semantic term); "textural" mode is encoder-only.
"""
from __future__ import annotations

import torch

from ...diffusion import denoising_loss
from ..base import register
from ..surrogate import SurrogateAttack, latent_draws, latents_of, repeat_draws, target_pattern

MODES = ("fused", "textural", "semantic")


@register
class Mist(SurrogateAttack):
    name = "mist"
    summary = "textural loss toward a target pattern's latent plus ascent of the tuning loss (Mist v1)"
    source = "Liang et al., Mist / AdvDM, ICML 2023"
    defaults = {"eps": 16 / 255, "steps": 100, "step_size": 1 / 255, "optimizer": "pgd",
                "options": {"mode": "fused", "textural_weight": 1.0, "semantic_weight": 0.6, "pattern_seed": 0,
                            "t_range": None, "posterior": "mean"}}

    def setup(self, host, images, settings, generator):
        self.mode = self.opts["mode"]
        if self.mode not in MODES:
            raise ValueError(f"mist: mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        self.w_tex, self.w_sem = float(self.opts["textural_weight"]), float(self.opts["semantic_weight"])
        pattern = target_pattern(*images.shape[-2:], seed=int(self.opts["pattern_seed"])).to(images.device)
        with torch.no_grad():
            self.target = latents_of(host, pattern).detach()
        self.info.update(mode=self.mode, textural_weight=self.w_tex, semantic_weight=self.w_sem)

    def attack_loss(self, host, x, generator, overrides, samples=1):
        z = latent_draws(host, x, 1, self.posterior_sample, generator)
        loss = 0.0
        if self.mode in ("fused", "textural"):
            loss = loss + (1.0 if self.mode == "textural" else self.w_tex) * (z - self.target).pow(2).mean()
        if self.mode in ("fused", "semantic"):
            sem = denoising_loss(host, repeat_draws(z, samples), self.cond, generator, self.t_range)
            loss = loss - (1.0 if self.mode == "semantic" else self.w_sem) * sem
        return loss
