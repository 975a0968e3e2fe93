"""PID: prompt-independent data protection (Li et al., "PID: Prompt-Independent Data Protection Against Latent
Diffusion Models", ICML 2024).

Attack only the VAE encoder, so the protection does not depend on any prompt the attacker may use: push the
posterior (mean, log-variance) of the cloaked image away from that of the clean image,

    minimise  -( ||mu(x + d) - mu(x)||^2 * w_mean + ||logvar(x + d) - logvar(x)||^2 * w_logvar )   (means)

Defaults from the paper: eps 12.75/255 (0.05), step 1/255, 1000 steps, PGD. Option ``mode``: "both" (default),
"mean" or "logvar" (which moments to push). The optimiser's ``random_start`` is on by default: at the clean image
this loss is at a stationary point (zero gradient), so a zero start would never move.
"""
from __future__ import annotations

import torch

from ..base import CloakMethod, register

MODES = {"both": (1.0, 1.0), "mean": (1.0, 0.0), "logvar": (0.0, 1.0)}


@register
class PID(CloakMethod):
    name = "pid"
    summary = "VAE only: push the posterior mean and log-variance away from the clean image's (prompt-independent)"
    source = "Li et al., PID, ICML 2024"
    defaults = {"eps": 12.75 / 255, "steps": 1000, "step_size": 1 / 255, "optimizer": "pgd",
                "options": {"mode": "both", "random_start": True}}
    uses_unet = False

    def prepare(self, host, images, settings, generator):
        mode = settings.options["mode"]
        if mode not in MODES:
            raise ValueError(f"pid: unknown mode {mode!r}; choose from {', '.join(MODES)}")
        self.weights = MODES[mode]
        with torch.no_grad():
            mean, logvar = host.posterior(images * 2 - 1)
        self.mean, self.logvar = mean.detach(), logvar.detach()

    def loss(self, host, x, step, generator):
        mean, logvar = host.posterior(x * 2 - 1)
        w_mean, w_logvar = self.weights
        return -(w_mean * (mean - self.mean).pow(2).mean() + w_logvar * (logvar - self.logvar).pow(2).mean())
