"""PAG: "learned target perturbations" (Tan, Wang, Yang, Huang, "PAG: Protecting Artworks from Personalizing Image
Generative Models", ICONIP 2023, LNCS 14450).

Only the abstract is public: PAG protects art "by injecting learned target perturbations into the original artistic
images" to "disrupt the tuning process". Our reading, in two stages, each matching one phrase of the abstract:

1. *learned target* (``prepare``, once per set): learn one latent pattern ``P`` (shape of one latent, shared by
   every image of the set, ``|P| <= pattern_bound``) that MAXIMISES the fine-tuning (denoising) loss of the set
   when added to the images' latents: ``P = argmax_P E_{i,t,eps} L_denoise(z_i + P)`` (sign-gradient ascent,
   ``pattern_steps`` steps of size ``pattern_step``, prompt = ``settings.prompt``, the attacker's prompt). It is
   "learned" (optimised against the model) and "target" (what the cloak then aims for), not a fixed texture as in
   Mist;
2. *injection* (``loss``): a perturbation-budgeted image attack that pulls the image's latent toward
   ``z_i + P``:  minimise ``||E(x_i + d) - (z_i + P)||^2``. A model fine-tuned on the protected set therefore
   trains on latents carrying a pattern chosen to make its tuning loss large, which disrupts the tuning.

This is a faithful reading, not PAG's unpublished code. Our defaults (PAG published none): eps 8/255, 100 steps,
step 1/255, PGD; options ``pattern_steps`` 30, ``pattern_step`` 0.05 and ``pattern_bound`` 1.0 (scaled-latent
units, where SD latents have about unit spread), ``pattern_draws`` 4 (random (t, noise) draws per image and step,
to steady the ascent), ``t_range`` (default the whole schedule). ``joint``: the pattern is
learned on the whole set at once. The pattern learning back-propagates through the UNet (to ``P`` only, never to
weights); the image steps are encoder-only.
"""
from __future__ import annotations

import torch

from ...diffusion import denoising_loss
from ..base import CloakMethod, register


@register
class PAG(CloakMethod):
    name = "pag"
    summary = "learn a shared latent target pattern that maximises the tuning loss, then pull the latents onto it"
    source = "Tan et al., PAG, ICONIP 2023 (abstract only; our documented reading)"
    defaults = {"eps": 8 / 255, "steps": 100, "step_size": 1 / 255, "optimizer": "pgd",
                "options": {"pattern_steps": 30, "pattern_step": 0.05, "pattern_bound": 1.0, "pattern_draws": 4,
                             "t_range": None}}
    joint = True
    uses_unet = True

    def prepare_steps(self, settings) -> int:
        """The learned pattern's steps (done in prepare, reported to the progress bar)."""
        return int(settings.options["pattern_steps"])

    def prepare(self, host, images, settings, generator):
        opts = settings.options
        bound, step = float(opts["pattern_bound"]), float(opts["pattern_step"])
        draws = max(1, int(opts.get("pattern_draws", 4)))
        t_range = tuple(opts["t_range"]) if opts.get("t_range") else None
        cond = host.encode_text([settings.prompt])
        with torch.no_grad():
            self.clean_latents = host.encode(images * 2 - 1).detach()
        pattern = torch.zeros((1, *self.clean_latents.shape[1:]), device=self.clean_latents.device)
        self.pattern_losses = []
        check = getattr(self, "cancel_check", None) or (lambda: None)
        for _ in range(int(opts["pattern_steps"])):
            check()
            pattern.requires_grad_(True)
            z = (self.clean_latents + pattern).repeat(draws, 1, 1, 1)  # several (t, noise) draws per image
            loss = denoising_loss(host, z, cond, generator, t_range)
            (grad,) = torch.autograd.grad(loss, pattern)
            with torch.no_grad():
                pattern = (pattern + step * grad.sign()).clamp(-bound, bound)
            self.pattern_losses.append(float(loss.detach()))
            self.work_step(phase="pattern", loss=self.pattern_losses[-1])
        self.pattern = pattern.detach()
        self.target = self.clean_latents + self.pattern

    def loss(self, host, x, step, generator):
        return (host.encode(x * 2 - 1) - self.target).pow(2).mean()
