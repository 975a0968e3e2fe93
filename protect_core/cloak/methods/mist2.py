"""Mist v2 / ACE (Zheng, Liang, Wu, Liu, "Understanding and Improving Adversarial Attacks on Latent Diffusion
Model", 2023; psyker-team Mist v2).

Target loss: minimise ``||eps_hat(z_t, t) - E(P)||^2`` over the cloaked latent ``z = E(x + d)``: the predicted noise
is pushed toward the latent of a target pattern ``P``, so a model fine-tuned on the cloaked art learns to predict a
noise biased by the pattern and its denoised samples x0 = (z_t - sqrt(1-a) eps_hat) / sqrt(a) drift toward it
(``eps_hat`` is the predicted noise, converted from v on v-prediction models; ``P`` is the seeded
:func:`~protect_core.cloak.surrogate.target_pattern`). The attacked model is a LoRA surrogate
(:class:`protect_core.lora.LoRA` on every attention projection, attn1 and attn2) trained like the attacker's LoRA:
``lora_steps`` descent steps of the ordinary fine-tuning loss on the current cloaked images before every block of
``pgd_steps`` image steps (the first block in ``prepare``, on the clean images; Mist v2 also clips the LoRA gradient
norm at 1.0, as here, and adds class-prior images, which we leave out).

Defaults: 5 x (10 LoRA + 30 PGD) = 150 steps, step 5e-3 in [-1, 1] -> 2.5e-3 in [0, 1], eps 0.04 in [-1, 1] (Mist
v2's SD1.5 script; REFERENCE.md notes 8/255 in its UI) -> 0.02 in [0, 1] (5.1/255); options ``lora_rank`` 4,
``lora_lr`` 1e-4, ``lora_steps`` 10, ``pgd_steps`` 30, ``train_batch`` 4, ``pattern_seed`` 0, ``t_range``.
``objective`` is the target loss under the host's own weights. Cost: per image step one UNet forward+backward with
LoRA; per LoRA step one more; LoRA memory is small (rank 4).
"""
from __future__ import annotations

import torch

from ..base import register
from ..surrogate import (SurrogateAttack, Trainer, attention_subset, latents_of, lora_adapter, option_int, repeat_draws,
                         round_starts, target_noise_loss, target_pattern)


@register
class Mist2(SurrogateAttack):
    name = "mist2"
    summary = "push predicted noise toward a target pattern latent, alternating with LoRA surrogate training"
    source = "Zheng et al., ACE / Mist v2, 2023"
    defaults = {"eps": 0.02, "steps": 150, "step_size": 2.5e-3, "optimizer": "pgd",
                "options": {"lora_rank": 4, "lora_lr": 1e-4, "lora_steps": 10, "pgd_steps": 30, "train_batch": 4,
                            "pattern_seed": 0, "t_range": None}}
    joint = True

    def prepare_steps(self, settings) -> int:
        """The LoRA surrogate's first round (trained in prepare, reported to the progress bar)."""
        return option_int(settings.options, "lora_steps")

    def inner_steps(self, settings) -> int:
        """The later LoRA rounds (between image steps), one unit per LoRA step."""
        pgd = option_int(settings.options, "pgd_steps", 1)
        return round_starts(settings.steps, pgd) * option_int(settings.options, "lora_steps")

    def setup(self, host, images, settings, generator):
        self.lora_steps = option_int(self.opts, "lora_steps")
        self.pgd_steps = option_int(self.opts, "pgd_steps", 1)
        self.train_batch = option_int(self.opts, "train_batch", 1)
        self.total_steps = int(settings.steps)
        pattern = target_pattern(*images.shape[-2:], seed=int(self.opts["pattern_seed"])).to(images.device)
        with torch.no_grad():
            self.target = latents_of(host, pattern).detach()
        rank = option_int(self.opts, "lora_rank", 1)
        adapter = lora_adapter(host, attention_subset(host, "attention"), rank, seed=int(settings.seed))
        self.trainer = Trainer(adapter, self.opts["lora_lr"], clip=1.0)
        self.info.update(lora_rank=rank, lora_targets=len(adapter.targets),
                         lora_parameters=adapter.num_parameters(), rounds=0)
        self._train(host, images, generator)

    def _train(self, host, x, generator):
        with torch.no_grad():
            z = latents_of(host, x)
        for _ in range(self.lora_steps):
            self._check()
            loss = self.trainer.step(host, z, self.cond, generator, self.train_batch, self.t_range)
            self.work_step(phase="surrogate", loss=loss)   # every round, the first (in prepare) included
        self.info["rounds"] += 1

    def attack_overrides(self):
        return self.trainer.overrides()

    def attack_loss(self, host, x, generator, overrides, samples=1):
        return target_noise_loss(host, repeat_draws(latents_of(host, x), samples), self.cond, self.target, generator, overrides,
                                 self.t_range)

    def after_step(self, host, x, step, generator):
        done = step + 1
        if done % self.pgd_steps == 0 and done < self.total_steps:
            self._train(host, x, generator)
