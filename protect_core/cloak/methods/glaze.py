"""Glaze-style style cloak (Shan et al., "Glaze: Protecting Artists from Style Mimicry by Text-to-Image Models",
USENIX Security 2023).

Idea (from the paper): restyle the art into a distant *target style* with the diffusion model itself (img2img,
``target = Omega(x, T)``), then move the image's VAE-encoder features toward the target's while a perceptual budget
keeps the change barely visible:

    minimise  ||E(x + d) - E(target)||^2  +  alpha * max(LPIPS(x + d, x) - p, 0)

Here ``E`` is ``host.encode`` (the scaled VAE posterior mean), the perceptual distance is
``protect_core.metrics.perceptual_distance`` (offline DSSIM pyramid, LPIPS when it is local) and the hinge and the
exact final enforcement of ``p`` live in the shared optimiser. Glaze's own optimiser, step count and target-style
choice are unpublished (the tool is closed source); ours are documented choices:

* defaults: p = 0.07 (Glaze's "default" level; presets give 0.05 / 0.07 / 0.1), eps = 16/255 as an outer L-inf cap,
  Adam (penalty formulations are usually solved with Adam), 100 steps, learning rate eps/10;
* target: img2img of the image toward ``settings.target_prompt`` (default a distant style:
  "a painting in the style of stripes, bright pop art"), strength 0.5, 25 DDIM steps, guidance 7.5, seeded by
  ``settings.seed``. Options: ``strength``, ``target_steps``, ``guidance``.
"""
from __future__ import annotations

import torch

from ...sampling import img2img
from ..base import CloakMethod, register

DEFAULT_TARGET = "a painting in the style of stripes, bright pop art"


@register
class Glaze(CloakMethod):
    name = "glaze"
    summary = "pull VAE-encoder features toward an img2img restyle in a distant style, under a perceptual budget"
    source = "Shan et al., Glaze, USENIX Security 2023 (optimiser unpublished; see module docstring)"
    defaults = {"eps": 16 / 255, "steps": 100, "optimizer": "adam", "perceptual_budget": 0.07,
                "options": {"strength": 0.5, "target_steps": 25, "guidance": 7.5}}
    uses_unet = True  # only to make the target (img2img); the optimisation itself is encoder-only
    default_tile = 1024

    def prepare_steps(self, settings) -> int:
        """The img2img target's DDIM steps (as protect_core.diffusion.ddim_timesteps keeps them for ``strength``)."""
        n, strength = int(settings.options["target_steps"]), float(settings.options["strength"])
        return max(1, min(n, int(round(n * strength))))

    def prepare(self, host, images, settings, generator):
        opts = settings.options
        prompt = settings.target_prompt or DEFAULT_TARGET
        progress = getattr(self, "work_progress", None)
        # the last DDIM step's update waits for the target's VAE decode and encode (they are inside the bar)
        view = None if progress is None else progress.holding_last(self.prepare_steps(settings), phase="target")
        with torch.no_grad():
            self.target_image = img2img(host, images, prompt, strength=float(opts["strength"]),
                                        steps=int(opts["target_steps"]), guidance=float(opts["guidance"]),
                                        seed=int(settings.seed), progress=view)
            self.target = host.encode(self.target_image * 2 - 1).detach()
        if view is not None:
            view.release()

    def loss(self, host, x, step, generator):
        return (host.encode(x * 2 - 1) - self.target).pow(2).mean()
