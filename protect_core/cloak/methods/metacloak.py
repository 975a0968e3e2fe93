"""MetaCloak (Liu et al., "MetaCloak: Preventing Unauthorized Subject-driven Text-to-image Diffusion-based Synthesis
via Meta-learning", CVPR 2024): ascend the fine-tuning loss over a POOL of surrogate models at different stages of
an attacker's fine-tune, each image step through a random transform, while the surrogates keep training.

Our reading, per image step ``i``:

1. a surrogate ``k`` is drawn (seeded, uniform) from the pool of ``pool`` private float32 copies of a UNet subset
   (option ``subset``, as ASPL: "attention" default, "cross", "kv", "unet");
2. the cloaked images pass through one transform drawn from ``transforms`` (the robust option's JPEG, resize,
   blur, noise from :mod:`protect_core.cloak.robust`, plus ``identity`` and ``flip``): MetaCloak's expectation over
   transformations, built in (``--robust`` adds the optimiser's own on top);
3. the image takes a PGD step ascending the denoising loss of the transformed cloak under surrogate ``k``;
4. surrogate ``k`` takes ``unroll`` fine-tuning steps on the current cloaked images (the attacker's training,
   unrolled); once it has taken ``max_age`` of them it is reset to the host's weights, so the pool always spans
   early and late stages of a fine-tune.

The pool starts staggered: copy ``k`` is fine-tuned ``k * stagger`` steps on the CLEAN images in ``prepare`` (copy 0
is the host's model itself, as FSMG's start), ages ``k * stagger``. ``objective`` is measured under the host's
own weights without a transform.

Defaults: eps 11/255 and step 1.1/255 (MetaCloak's radius 11 and step r/10), 100 steps; options ``pool`` 3,
``stagger`` 4, ``unroll`` 1, ``max_age`` 12, ``lr`` 5e-6, ``train_batch`` 4, ``subset`` "attention",
``transforms`` "identity,flip,blur,resize,jpeg,noise", ``posterior`` "sample" (MetaCloak builds on Anti-DreamBooth's
code, which draws latents from the VAE posterior), ``t_range``. Cost per step: one UNet forward+backward for
the image, ``unroll`` for the surrogate; memory: ``pool`` private copies of the subset plus one Adam state each.
"""
from __future__ import annotations

import torch

from ..base import register
from ..robust import TRANSFORMS
from ..surrogate import SurrogateAttack, Trainer, attention_subset, latents_of, option_int, weight_copies

EXTRA = ("identity", "flip")


def transform(x: torch.Tensor, name: str, generator: torch.Generator) -> torch.Tensor:
    """One of MetaCloak's transforms by name (see the module doc); differentiable in ``x``."""
    if name == "identity":
        return x
    if name == "flip":
        return torch.flip(x, dims=(-1,))
    return TRANSFORMS[name](x, generator)


def parse_transforms(value) -> list[str]:
    names = [n.strip() for n in value.split(",")] if isinstance(value, str) else list(value or [])
    known = (*EXTRA, *TRANSFORMS)
    bad = [n for n in names if n not in known]
    if not names or bad:
        raise ValueError(f"metacloak: transforms must be a comma-separated list of {', '.join(known)}, got {value!r}")
    return names


@register
class MetaCloak(SurrogateAttack):
    name = "metacloak"
    summary = "ascend the tuning loss over a pool of surrogates at different fine-tune stages, through random transforms"
    source = "Liu et al., MetaCloak, CVPR 2024"
    defaults = {"eps": 11 / 255, "steps": 100, "step_size": 1.1 / 255, "optimizer": "pgd",
                "options": {"pool": 3, "stagger": 4, "unroll": 1, "max_age": 12, "lr": 5e-6, "train_batch": 4,
                            "subset": "attention", "transforms": "identity,flip,blur,resize,jpeg,noise",
                            "t_range": None, "posterior": "sample"}}
    joint = True

    def check_settings(self, settings):
        parse_transforms(settings.options.get("transforms"))
        option_int(settings.options, "pool", 1)
        option_int(settings.options, "max_age", 1)

    def prepare_steps(self, settings) -> int:
        """The staggered start: copy k fine-tunes k * stagger steps on the clean images."""
        pool, stagger = option_int(settings.options, "pool", 1), option_int(settings.options, "stagger")
        return stagger * pool * (pool - 1) // 2

    def inner_steps(self, settings) -> int:
        return int(settings.steps) * option_int(settings.options, "unroll")

    def setup(self, host, images, settings, generator):
        pool = option_int(self.opts, "pool", 1)
        stagger = option_int(self.opts, "stagger")
        self.unroll = option_int(self.opts, "unroll")
        self.max_age = option_int(self.opts, "max_age", 1)
        self.train_batch = option_int(self.opts, "train_batch", 1)
        self.lr = float(self.opts["lr"])
        self.transforms = parse_transforms(self.opts["transforms"])
        self.targets = attention_subset(host, self.opts["subset"])
        with torch.no_grad():
            clean = latents_of(host, images).detach()
        self.pool = [Trainer(weight_copies(host, self.targets), self.lr) for _ in range(pool)]
        self.ages = [0] * pool
        for k, trainer in enumerate(self.pool):
            for _ in range(k * stagger):
                self._check()
                loss = trainer.step(host, clean, self.cond, generator, self.train_batch, self.t_range)
                self.work_step(phase="surrogate", loss=loss)
            self.ages[k] = k * stagger
        self.pick, self.pick_step, self.resets = 0, -1, 0
        self.info.update(subset=self.opts["subset"], pool=pool, stagger=stagger, unroll=self.unroll,
                         max_age=self.max_age, transforms=list(self.transforms), trained_weights=len(self.targets),
                         trained_parameters=self.pool[0].adapter.num_parameters() * pool)

    def attack_overrides(self):
        return self.pool[self.pick].overrides()

    def loss(self, host, x, step, generator):
        if step != self.pick_step:   # one surrogate per image step, whatever the robust option's sample count
            self.pick_step = step
            self.pick = int(torch.randint(len(self.pool), (), generator=generator))
        name = self.transforms[int(torch.randint(len(self.transforms), (), generator=generator))]
        return super().loss(host, transform(x, name, generator), step, generator)

    def after_step(self, host, x, step, generator):
        if not self.unroll:
            return
        with torch.no_grad():
            z = latents_of(host, x)
        k = self.pick
        for _ in range(self.unroll):
            loss = self.pool[k].step(host, z, self.cond, generator, self.train_batch, self.t_range)
            self.work_step(phase="surrogate", loss=loss)
        self.ages[k] += self.unroll
        if self.ages[k] >= self.max_age:
            self.pool[k] = Trainer(weight_copies(host, self.targets), self.lr)   # the host's weights, a fresh Adam
            self.ages[k] = 0
            self.resets += 1
        self.info["resets"] = self.resets
