"""PhotoGuard encoder attack (Salman et al., "Raising the Cost of Malicious AI-Powered Image Editing", ICML 2023).

Drive the VAE latent of the image to the latent of a flat grey image, so that the model "sees" grey wherever it
looks at the protected image:  minimise ``||E(x + d) - E(grey)||^2`` with PGD.

Defaults from the paper's code (converted from [-1, 1] to [0, 1] units, i.e. halved): eps 0.06 -> 0.03
(7.65/255), step 0.02 -> 0.01, 1000 iterations (the ``low`` preset halves them). Option ``target_value``: the grey
level of the target image in [0, 1] (default 0.5).
"""
from __future__ import annotations

import torch

from ..base import CloakMethod, register


@register
class PhotoGuard(CloakMethod):
    name = "photoguard"
    summary = "encoder attack: push the image's VAE latent to the latent of a grey image"
    source = "Salman et al., PhotoGuard (encoder attack), ICML 2023"
    defaults = {"eps": 0.03, "steps": 1000, "step_size": 0.01, "optimizer": "pgd",
                "options": {"target_value": 0.5}}
    uses_unet = False

    def prepare(self, host, images, settings, generator):
        grey = torch.full_like(images, float(settings.options["target_value"]))
        with torch.no_grad():
            self.target = host.encode(grey * 2 - 1).detach()

    def loss(self, host, x, step, generator):
        return (host.encode(x * 2 - 1) - self.target).pow(2).mean()
