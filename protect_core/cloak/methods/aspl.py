"""Anti-DreamBooth ASPL (Van Le et al., "Anti-DreamBooth: Protecting Users from Personalized Text-to-image
Synthesis", ICCV 2023): Alternating Surrogate and Perturbation Learning.

Round structure (one round = ``pgd_steps`` image steps), with private float32 copies of a UNet subset:

1. ``f_sur`` = copy of the surrogate ``f``, fine-tuned ``train_steps`` steps on the CLEAN images (Adam, ``lr``);
2. ``pgd_steps`` PGD steps ascending the fine-tuning (denoising) loss of the cloaked images under ``f_sur``;
3. ``f`` fine-tuned ``train_steps`` steps on the current cloaked images (as the attacker's DreamBooth would).

``f`` starts as the host's weights; steps 1 happens in ``prepare`` for the first round and in ``after_step`` for the
next ones (after step 3). Anti-DreamBooth fine-tunes the whole UNet (and text encoder); we fine-tune option
``subset``: "attention" (default: q/k/v/out of every attn1 and attn2, ~10% of an SD1.5 UNet), "cross", "kv" or
"unet" (every UNet weight, as their code; the text encoder is the host's and is never trained here).
A fresh Adam per fine-tune call, as in their code.

Defaults (paper/code, converted from [-1, 1] to [0, 1]): eps 0.05 -> 0.025 (6.4/255), step 5e-3 -> 2.5e-3,
50 rounds x (3 train + 6 PGD) = 300 steps; options ``lr`` 5e-6, ``train_steps`` 3, ``pgd_steps`` 6,
``train_batch`` 4, ``subset``, ``t_range``, ``posterior`` "mean" (their code attacks posterior draws: "sample";
``benchmarks/protection.py`` compares both). ``objective`` is measured under the host's own weights (``f``'s start).
Cost: the heaviest here: per round 6 image steps + 6 fine-tune steps, two private copies of the subset plus Adam
state (for "attention" on SD1.5 about 5 x 0.36 GB in float32).
"""
from __future__ import annotations

import torch

from ..base import register
from ..surrogate import (SurrogateAttack, Trainer, attention_subset, latents_of, option_int, round_starts,
                         weight_copies)


@register
class ASPL(SurrogateAttack):
    name = "aspl"
    summary = "ascend the tuning loss on a surrogate re-fine-tuned on clean images each round (Anti-DreamBooth)"
    source = "Van Le et al., Anti-DreamBooth (ASPL), ICCV 2023"
    defaults = {"eps": 0.025, "steps": 300, "step_size": 2.5e-3, "optimizer": "pgd",
                "options": {"lr": 5e-6, "train_steps": 3, "pgd_steps": 6, "train_batch": 4, "subset": "attention",
                            "t_range": None, "posterior": "mean"}}
    joint = True

    def prepare_steps(self, settings) -> int:
        """The first round's fine-tune of ``f_sur`` on the clean images (in prepare), one unit per step."""
        return option_int(settings.options, "train_steps")

    def inner_steps(self, settings) -> int:
        """Every later round: ``f`` on the cloaked images, then ``f_sur`` on the clean ones, one unit per step."""
        pgd = option_int(settings.options, "pgd_steps", 1)
        return round_starts(settings.steps, pgd) * 2 * option_int(settings.options, "train_steps")

    def setup(self, host, images, settings, generator):
        self.train_steps = option_int(self.opts, "train_steps")
        self.pgd_steps = option_int(self.opts, "pgd_steps", 1)
        self.train_batch = option_int(self.opts, "train_batch", 1)
        self.lr = float(self.opts["lr"])
        self.total_steps = int(settings.steps)
        self.targets = attention_subset(host, self.opts["subset"])
        with torch.no_grad():
            self.clean_latents = latents_of(host, images).detach()
        self.base = weight_copies(host, self.targets)
        self.info.update(subset=self.opts["subset"], trained_weights=len(self.targets),
                         trained_parameters=self.base.num_parameters(), rounds=0)
        self._refresh_surrogate(host, generator)

    def _finetune(self, host, adapter, latents, generator, phase: str) -> None:
        trainer = Trainer(adapter, self.lr)
        for _ in range(self.train_steps):
            self._check()
            loss = trainer.step(host, latents, self.cond, generator, self.train_batch, self.t_range)
            self.work_step(phase=phase, loss=loss)

    def _refresh_surrogate(self, host, generator) -> None:
        self.surrogate = weight_copies(host, self.targets, start=self.base.weights)
        self._finetune(host, self.surrogate, self.clean_latents, generator, "surrogate")
        self.info["rounds"] += 1

    def attack_overrides(self):
        return self.surrogate.overrides()

    def after_step(self, host, x, step, generator):
        done = step + 1
        if done % self.pgd_steps or done >= self.total_steps:
            return
        with torch.no_grad():
            z = latents_of(host, x)
        self._finetune(host, self.base, z, generator, "model")
        self._refresh_surrogate(host, generator)
