"""What the UNet-loss cloak methods share: layer choice, private surrogate weights, their training, the attack
losses, a seeded target pattern, and a base class that wires these into the optimiser's prepare/loss/after_step.

Methods built on this module: ``styleprotect``, ``caat``, ``mist``, ``mist2``, ``aspl``, ``fsmg``
(``protect_core/cloak/methods``). Nothing here writes the host's tensors: surrogates are
:class:`protect_core.lora.WeightCopies` (float32 copies of only the chosen UNet weights) or
:class:`protect_core.lora.LoRA` adapters, passed to the UNet per call as ``weight_overrides``.

Layer choice (:func:`choose_style_layers`, pure, on canonical cross-attention names):

* ``preset``: StyleProtect's four SD1.5 layers (:data:`STYLEPROTECT_SD15_LAYERS`) when all exist (SD1.x, SD2.x);
* ``preset-partial``: the preset names that exist, when at least two do (SDXL has three of them);
* ``positional``: otherwise (e.g. the tiny test models, where only one preset index exists by coincidence) the same
  *positions* as the paper's choice: the last four up-block layers plus the deepest down-block layer.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch

from ..diffusion import add_noise, denoising_loss, eps_from_output
from ..lora import LoRA, WeightCopies, attention_targets
from .base import CloakMethod
from .optimize import OBJECTIVE_SAMPLES

STYLEPROTECT_SD15_LAYERS = tuple(f"{b}.transformer_blocks.0.attn2" for b in (
    "up_blocks.1.attentions.0", "up_blocks.1.attentions.2", "up_blocks.2.attentions.2",
    "down_blocks.2.attentions.1"))


# ---- layers -------------------------------------------------------------------------------------------------------
def choose_style_layers(names: Sequence[str], preset: Sequence[str] = STYLEPROTECT_SD15_LAYERS,
                        n_up: int = 4) -> tuple[list[str], str]:
    """(chosen canonical names in model order, how) from all cross-attention layer names (see module doc)."""
    names = list(names)
    if not names:
        raise ValueError("the model has no cross-attention layers")
    present = [n for n in names if n in set(preset)]
    if len(present) == len(preset):
        return present, "preset"
    if len(present) >= 2:
        return present, "preset-partial"
    up = [n for n in names if n.startswith("up_blocks.")]
    down = [n for n in names if n.startswith("down_blocks.")]
    chosen = set(up[-n_up:]) | set(down[-1:])
    if not chosen:
        chosen = set(names[-n_up:])
    return [n for n in names if n in chosen], "positional"


def default_layers(host) -> list[str]:
    """StyleProtect's default layers for ``host`` (canonical names); see :func:`choose_style_layers`."""
    return choose_style_layers([l.name for l in host.cross_attention_layers()])[0]


def resolve_layers(host, requested: Sequence[str] | None) -> tuple[list[str], str]:
    """(canonical names, how): the user's selection validated against the model, or the default choice."""
    all_names = [l.name for l in host.cross_attention_layers()]
    if requested is None:
        return choose_style_layers(all_names)
    if isinstance(requested, str):
        requested = [requested]
    requested = list(dict.fromkeys(requested))
    if not requested:
        raise ValueError("empty layer selection; leave `layers` unset for the default style-sensitive layers")
    unknown = [n for n in requested if n not in all_names]
    if unknown:
        raise ValueError(f"unknown cross-attention layer(s) {unknown[:3]}; this model has: {', '.join(all_names)}")
    return [n for n in all_names if n in requested], "requested"


def kv_targets(host, layers: Sequence[str] | None) -> list[str]:
    """UNet weight names of to_k and to_v of ``layers`` (None = every cross-attention layer)."""
    return attention_targets(host, layers, which=("to_k", "to_v"))


def attention_subset(host, which: str) -> list[str]:
    """Surrogate subsets for ASPL/FSMG/MetaCloak: ``attention`` (q/k/v/out of attn1 and attn2), ``cross`` (attn2
    only), ``kv`` (attn2 to_k/to_v only), ``unet`` (every UNet weight, as Anti-DreamBooth's code trains)."""
    if which == "attention":
        return attention_targets(host, None, self_attention=True)
    if which == "cross":
        return attention_targets(host, None)
    if which == "kv":
        return kv_targets(host, None)
    if which == "unet":
        return list(host.unet_parameter_names())
    raise ValueError(f"surrogate subset must be 'attention', 'cross', 'kv' or 'unet', got {which!r}")


# ---- losses -------------------------------------------------------------------------------------------------------
def latents_of(host, x01: torch.Tensor) -> torch.Tensor:
    """Scaled VAE latents (posterior mean) of images in [0, 1]; differentiable."""
    return host.encode(x01 * 2 - 1)


POSTERIORS = ("mean", "sample")


def latent_draws(host, x01: torch.Tensor, samples: int = 1, sample: bool = False,
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """``samples`` copies of the batch's scaled latents: the posterior mean (``sample`` False), or each copy its own
    seeded draw from the VAE posterior (as most peers' code, ``latent_dist.sample()``); differentiable."""
    if not sample:
        return repeat_draws(latents_of(host, x01), samples)
    mean, logvar = host.posterior(x01 * 2 - 1)
    mean, logvar = repeat_draws(mean, samples), repeat_draws(logvar, samples)
    noise = torch.randn(mean.shape, generator=generator).to(mean.device, mean.dtype)
    return (mean + torch.exp(0.5 * logvar) * noise - host.latent_shift) * host.latent_scale


def posterior_option(opts: dict, default: str = "mean") -> bool:
    """The shared ``posterior`` option ("mean" or "sample"), validated; True = draw from the posterior."""
    v = opts.get("posterior", default)
    if v not in POSTERIORS:
        raise ValueError(f"option posterior must be one of {', '.join(POSTERIORS)}, got {v!r}")
    return v == "sample"


def detached(overrides: dict | None) -> dict | None:
    return None if overrides is None else {k: v.detach() for k, v in overrides.items()}


def target_noise_loss(host, latents, cond, target, generator, overrides=None, t_range=None) -> torch.Tensor:
    """Mist v2 / ACE: mean ||eps_hat(z_t, t) - target||^2 at seeded random t and noise (eps_hat = predicted noise,
    converted from v for v-prediction models)."""
    b = latents.shape[0]
    lo, hi = t_range or (0, host.num_train_timesteps)
    t = torch.randint(lo, hi, (b,), generator=generator).to(latents.device)
    noise = torch.randn(latents.shape, generator=generator).to(latents.device)
    z_t = add_noise(latents, noise, t, host.alphas_cumprod)
    out = host.model_output(z_t, t, cond, overrides)
    eps = eps_from_output(out, z_t, t, host.alphas_cumprod, host.prediction_type)
    return (eps - target.expand_as(eps)).pow(2).mean()


def target_pattern(height: int, width: int, seed: int = 0) -> torch.Tensor:
    """A seeded high-contrast black/white pattern (1, 3, H, W) in [0, 1]: the sign of a sum of four oriented
    gratings at mid frequencies (Mist's textural target is a fixed high-contrast image; ours is generated, so no
    asset is needed and any size works)."""
    g = torch.Generator().manual_seed(int(seed))
    yy, xx = torch.meshgrid(torch.arange(height, dtype=torch.float32), torch.arange(width, dtype=torch.float32),
                            indexing="ij")
    field = torch.zeros(height, width)
    for _ in range(4):
        angle = float(torch.rand((), generator=g)) * math.pi
        period = 4.0 + float(torch.rand((), generator=g)) * 12.0   # 4-16 px
        phase = float(torch.rand((), generator=g)) * 2 * math.pi
        field += torch.sin(2 * math.pi * (xx * math.cos(angle) + yy * math.sin(angle)) / period + phase)
    return (field > 0).float().expand(3, height, width).unsqueeze(0).clone()


# ---- private surrogate training -----------------------------------------------------------------------------------
class Trainer:
    """An adapter (WeightCopies or LoRA) plus its Adam optimiser: descends the fine-tuning loss on given latents."""

    def __init__(self, adapter, lr: float, clip: float | None = None):
        if not float(lr) > 0:
            raise ValueError(f"surrogate learning rate must be > 0, got {lr!r}")
        self.adapter, self.clip = adapter, clip
        self.opt = torch.optim.Adam(adapter.parameters(), lr=float(lr))
        self.losses: list[float] = []

    def overrides(self) -> dict:
        return self.adapter.overrides()

    def step(self, host, latents: torch.Tensor, cond, generator, batch: int | None = None, t_range=None) -> float:
        """One descent step on the denoising loss of ``latents`` (detached), a seeded random subset of ``batch``."""
        latents = latents.detach()
        if batch and latents.shape[0] > batch:
            idx = torch.randperm(latents.shape[0], generator=generator)[:batch].to(latents.device)
            latents = latents[idx]
        loss = denoising_loss(host, latents, cond, generator, t_range, self.adapter.overrides())
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        if self.clip:
            torch.nn.utils.clip_grad_norm_(self.adapter.parameters(), self.clip)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        self.losses.append(float(loss.detach()))
        return self.losses[-1]

    def apply(self, grads: Sequence[torch.Tensor], loss: float) -> float:
        """One descent step with gradients computed elsewhere (one per ``adapter.parameters()``, of the loss
        ``loss`` to descend), e.g. by the image step's own backward pass; same clipping and Adam as :meth:`step`."""
        params = self.adapter.parameters()
        if len(grads) != len(params):
            raise ValueError(f"{len(grads)} gradients for {len(params)} surrogate tensors")
        for p, g in zip(params, grads):
            p.grad = g.detach().to(p.dtype)
        if self.clip:
            torch.nn.utils.clip_grad_norm_(params, self.clip)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        self.losses.append(float(loss))
        return self.losses[-1]


def weight_copies(host, targets: Sequence[str], start: dict | None = None) -> WeightCopies:
    """Private float32 copies of ``targets`` (from the host, or from another surrogate's ``start`` tensors)."""
    copies = WeightCopies(host, targets)
    if start is not None:
        copies.load_state_dict({n: start[n].detach() for n in copies.targets})
    return copies


def lora_adapter(host, targets: Sequence[str], rank: int, seed: int) -> LoRA:
    return LoRA(host, targets, rank=rank, seed=seed)


# ---- the shared method skeleton ------------------------------------------------------------------------------------
class SurrogateAttack(CloakMethod):
    """Base of the UNet-loss methods: conditioning, attack loss, objective on a fixed reference model, info.

    Subclasses implement ``setup`` (build surrogates), ``attack_overrides`` (weights the image step attacks) and
    optionally ``after_step``. The default attack loss is AdvDM's: the negative denoising loss of the cloaked
    latents under ``attack_overrides()`` (the optimiser minimises, so the tuning loss is ascended).
    ``objective`` evaluates the same attack loss under ``reference_overrides()`` (by default the host's own weights,
    the model an attacker starts fine-tuning from), so objective_before/after compare one fixed model even though the
    surrogate moves during the run.

    Options shared by every such method: ``samples`` (Monte-Carlo draws of (t, noise) per image per image step,
    default 1 as in the papers; more draws give a less noisy gradient at proportional cost), ``objective_samples``
    (draws for the reported objective, default :data:`~.optimize.OBJECTIVE_SAMPLES`; 0 = not reported),
    ``t_range`` (timestep range, default the whole schedule), ``posterior`` ("mean": the attack sees the VAE
    posterior mean; "sample": a seeded draw per row, as most peers' code; see :func:`latent_draws`).
    ``info`` (a dict on the method) records what was used: layers, trained weights, rounds ...
    """

    uses_unet = True
    info: dict

    def prepare(self, host, images, settings, generator):
        self.settings = settings
        self.opts = settings.options
        self.cond = host.encode_text([settings.prompt])
        t_range = self.opts.get("t_range")
        self.t_range = tuple(int(t) for t in t_range) if t_range else None
        if self.t_range and not 0 <= self.t_range[0] < self.t_range[1] <= host.num_train_timesteps:
            raise ValueError(f"t_range must satisfy 0 <= lo < hi <= {host.num_train_timesteps}, got {t_range!r}")
        self.samples = option_int(self.opts, "samples", 1, default=1)
        self.objective_samples = option_int(self.opts, "objective_samples", 0, default=OBJECTIVE_SAMPLES)
        self.posterior_sample = posterior_option(self.opts)
        self.info = {"method": self.name, "posterior": "sample" if self.posterior_sample else "mean"}
        self.setup(host, images, settings, generator)

    def setup(self, host, images, settings, generator) -> None:
        raise NotImplementedError

    def attack_overrides(self) -> dict | None:
        return None

    def reference_overrides(self) -> dict | None:
        return None

    def surrogate_overrides(self) -> dict | None:
        """Detached weights of the current surrogate (for inspection and tests)."""
        return detached(self.attack_overrides())

    def attack_loss(self, host, x, generator, overrides, samples: int = 1) -> torch.Tensor:
        z = latent_draws(host, x, samples, self.posterior_sample, generator)
        return -denoising_loss(host, z, self.cond, generator, self.t_range, overrides)

    def loss(self, host, x, step, generator):
        with torch.no_grad():   # the image step needs no gradient to the surrogate's weights
            over = detached(self.attack_overrides())
        return self.attack_loss(host, x, generator, over, self.samples)

    def objective(self, host, x, step, generator):
        with torch.no_grad():
            over = detached(self.reference_overrides())
        return self.attack_loss(host, x, generator, over, self.objective_samples)

    def _check(self) -> None:
        check = getattr(self, "cancel_check", None)
        if check is not None:
            check()


def repeat_draws(z: torch.Tensor, samples: int) -> torch.Tensor:
    """``samples`` copies of the batch, so each row gets its own (t, noise) draw."""
    return z.repeat(samples, *([1] * (z.ndim - 1))) if samples > 1 else z


def round_starts(steps: int, every: int) -> int:
    """How many surrogate rounds start *between* image steps: after each ``every``-th step but the last."""
    return max(0, int(steps) - 1) // int(every)


def option_int(opts: dict, key: str, minimum: int = 0, default: int | None = None) -> int:
    """A whole-number option, validated with a message naming it."""
    v = opts.get(key, default)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or int(v) != v or int(v) < minimum:
        raise ValueError(f"option {key} must be a whole number >= {minimum}, got {v!r}")
    return int(v)


def option_bool(opts: dict, key: str, default: bool) -> bool:
    v = opts.get(key, default)
    if not isinstance(v, bool):
        raise ValueError(f"option {key} must be true or false, got {v!r}")
    return v


class KVAlternation(SurrogateAttack):
    """CAAT / StyleProtect: the image ascends the tuning loss under private to_k/to_v copies of chosen
    cross-attention layers while those copies descend it (Adam, ``lr``). Subclasses pick the layers in
    :meth:`choose_layers`.

    ``shared_pass`` (default True, CAAT's public code): ONE UNet forward+backward per image step gives the gradient
    w.r.t. the image and the copies; the image takes its signed step and the copies one Adam step on the same
    gradient (of the pre-step image, the step's own (t, noise) draws, every image of the batch: ``train_batch``
    does not apply to this update). ``train_steps`` = copy updates per image step: the first is the shared one,
    each further one a pass of its own on the stepped image (a seeded subset of ``train_batch`` images, fresh
    draws); 0 = the copies never move. ``shared_pass=False``: the older two-pass scheme, all ``train_steps``
    updates in passes of their own after the image step. Memory mode ``low`` (no UNet backward in the image step)
    also uses a pass of its own for the first update, counted with the image step.
    """

    joint = True

    def choose_layers(self, host, settings) -> tuple[list[str], str]:
        raise NotImplementedError

    def setup(self, host, images, settings, generator):
        layers, how = self.choose_layers(host, settings)
        targets = kv_targets(host, layers)
        self.train_steps = option_int(self.opts, "train_steps")
        self.train_batch = option_int(self.opts, "train_batch", 1)
        self.shared_pass = option_bool(self.opts, "shared_pass", True)
        self.trainer = Trainer(weight_copies(host, targets), self.opts["lr"])
        self._wanted, self._shared = False, None
        self.info.update(layers=list(layers), layer_choice=how, trained_weights=list(targets),
                         trained_parameters=self.trainer.adapter.num_parameters(), lr=float(self.opts["lr"]),
                         shared_pass=self.shared_pass)

    def inner_steps(self, settings) -> int:
        """Copy updates in passes of their own, one progress unit each: ``train_steps`` per image step, less the
        shared one (see the class doc)."""
        n = option_int(settings.options, "train_steps")
        if n and option_bool(settings.options, "shared_pass", True):
            n -= 1
        return int(settings.steps) * n

    def attack_overrides(self):
        return self.trainer.overrides()

    def shared_parameters(self):
        if not (self.shared_pass and self.train_steps):
            return []
        self._wanted = True   # this step's loss keeps the copies in its graph
        return self.trainer.adapter.parameters()

    def loss(self, host, x, step, generator):
        if self._wanted:
            return self.attack_loss(host, x, generator, self.trainer.overrides(), self.samples)
        return super().loss(host, x, step, generator)

    def shared_gradients(self, grads, loss):
        self._shared = (grads, loss)

    def after_step(self, host, x, step, generator):
        shared, self._shared, self._wanted = self._shared, None, False
        if not self.train_steps:
            return
        own = self.train_steps
        if shared is not None:
            grads, loss = shared
            if grads is not None:   # None: a half-precision overflow skipped this step
                # the image step minimised -(tuning loss); the copies descend the tuning loss itself
                self.trainer.apply([-g for g in grads], -loss)
            own -= 1
        with torch.no_grad():
            z = latents_of(host, x) if own else None
        if shared is None and self.shared_pass:   # no shared gradients (score distillation): counted with the step
            self.trainer.step(host, z, self.cond, generator, self.train_batch, self.t_range)
            self._check()
            own -= 1
        for _ in range(own):
            loss = self.trainer.step(host, z, self.cond, generator, self.train_batch, self.t_range)
            self.work_step(phase="surrogate", loss=loss)
