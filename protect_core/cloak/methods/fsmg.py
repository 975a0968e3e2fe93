"""Anti-DreamBooth FSMG (Van Le et al., "Anti-DreamBooth", ICCV 2023): Fully-trained Surrogate Model Guidance.

``prepare`` fine-tunes private float32 copies of a UNet subset (option ``subset``: "attention" default, "cross",
"kv", "unet") on the CLEAN images for ``surrogate_steps`` steps (Adam, ``lr``, the DreamBooth loss with
``settings.prompt``); the surrogate then stays fixed and every image step PGD-ascends the fine-tuning loss of the
cloaked images under it. ``objective`` is measured under that fixed surrogate.

Defaults: eps 0.05 in [-1, 1] -> 0.025 (6.4/255), step 5e-3 -> 2.5e-3 (Anti-DreamBooth's); ours: 100 PGD steps,
``surrogate_steps`` 100 (the paper fine-tunes to convergence), ``lr`` 5e-6, ``train_batch`` 4, ``t_range``.
Cost: a one-off fine-tune, then one UNet forward+backward per step; one private copy of the subset (+ Adam state
while it is trained).
"""
from __future__ import annotations

import torch

from ..base import register
from ..surrogate import SurrogateAttack, Trainer, attention_subset, latents_of, option_int, weight_copies


@register
class FSMG(SurrogateAttack):
    name = "fsmg"
    summary = "ascend the tuning loss on a surrogate fine-tuned once on the clean images (Anti-DreamBooth)"
    source = "Van Le et al., Anti-DreamBooth (FSMG), ICCV 2023"
    defaults = {"eps": 0.025, "steps": 100, "step_size": 2.5e-3, "optimizer": "pgd",
                "options": {"lr": 5e-6, "surrogate_steps": 100, "train_batch": 4, "subset": "attention",
                            "t_range": None, "posterior": "mean"}}
    joint = True

    def prepare_steps(self, settings) -> int:
        """The surrogate fine-tune's steps (done in prepare, reported to the progress bar)."""
        return option_int(settings.options, "surrogate_steps")

    def setup(self, host, images, settings, generator):
        steps = option_int(self.opts, "surrogate_steps")
        batch = option_int(self.opts, "train_batch", 1)
        targets = attention_subset(host, self.opts["subset"])
        self.surrogate = weight_copies(host, targets)
        with torch.no_grad():
            z = latents_of(host, images).detach()
        trainer = Trainer(self.surrogate, self.opts["lr"])
        for _ in range(steps):
            self._check()
            loss = trainer.step(host, z, self.cond, generator, batch, self.t_range)
            self.work_step(phase="surrogate", loss=loss)
        for w in self.surrogate.parameters():
            w.requires_grad_(False)
        self.info.update(subset=self.opts["subset"], trained_weights=len(targets),
                         trained_parameters=self.surrogate.num_parameters(), surrogate_steps=steps,
                         surrogate_loss_first=trainer.losses[0] if steps else None,
                         surrogate_loss_last=trainer.losses[-1] if steps else None)

    def attack_overrides(self):
        return self.surrogate.overrides()

    def reference_overrides(self):
        return self.surrogate.overrides()
