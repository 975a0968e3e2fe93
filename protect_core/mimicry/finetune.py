"""The attacker's fine-tune: LoRA or DreamBooth-on-a-subset over private adapter weights, with prior preservation.

The host's weights are never touched: the adapter (:mod:`protect_core.lora`) owns float32 tensors and the UNet sees
them through ``weight_overrides``. One fine-tune = the standard denoising loss on the training images with the
rare-token instance prompt (plus, optionally, the same loss on base-model images of the class prompt, weighted by
``prior_weight``), minimised with AdamW. Everything random (batches, noise, timesteps, adapter init) comes from the
settings' seed, so every training set of one test sees the same randomness.

Memory (``memory=``, see :mod:`protect_core.memory_job`): the fine-tune back-propagates through the UNet, so
``auto`` sizes it as UNet-backward work on ``batch x resolution^2`` pixels (twice that with prior preservation);
half precision uses the session's loss scaling (an overflowed step is skipped); out of memory restarts the
fine-tune from its seed in the next lower mode.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..diffusion import denoising_loss
from ..lora import LoRA, WeightCopies, attention_targets
from ..progress import Progress
from ..memory_job import MemoryJob, active_memory, run_in_memory_mode, unscale_grads
from ..sampling import txt2img as _txt2img
from .settings import MimicrySettings


@dataclass
class FinetuneResult:
    overrides: dict[str, torch.Tensor]     # detached weight overrides of the fine-tuned model
    losses: list[float]                    # training loss per step
    trainable_parameters: int
    adapter: dict                          # adapter config (kind, rank, targets ...)
    memory: dict | None = None             # the memory mode it ran in and any out-of-memory fallbacks


#: what to change when the mimicry test runs out of memory even in the lowest mode
LIMIT_ADVICE = ("Lower the fine-tune batch size (--batch-size), the generation batch (--sample-batch) or the "
                "resolution (--resolution), drop --prior-preservation, load the model in half precision "
                "(--dtype fp16), or run on the CPU (--device cpu).")


def finetune_job(settings: MimicrySettings, images01: torch.Tensor) -> MemoryJob:
    """The fine-tune's memory need: UNet backward on one batch (plus a prior batch) of training latents; the VAE
    encodes images of their own size (``resolution`` squared in the mimicry test)."""
    image = images01.shape[-2] * images01.shape[-1]
    pixels = min(settings.batch_size, images01.shape[0]) * image
    return MemoryJob(True, pixels * (2 if settings.prior_preservation else 1), image_pixels=image)


def select_targets(host, settings: MimicrySettings) -> list[str]:
    """UNet weight names the fine-tune adapts (LoRA targets, or the DreamBooth subset)."""
    if settings.method == "dreambooth" and settings.dreambooth_params:
        names = host.unet_parameter_names()
        picked = [n for n in names if any(n == p or n.startswith(p.rstrip(".") + ".") or p in ("*", "unet")
                                          for p in settings.dreambooth_params)]
        if not picked:
            raise ValueError(f"dreambooth_params {settings.dreambooth_params[:3]} match no UNet weight")
        return [n for n in picked if host.unet_parameters()[n].is_floating_point()]
    return attention_targets(host, settings.layers, self_attention=settings.self_attention)


def make_adapter(host, settings: MimicrySettings):
    targets = select_targets(host, settings)
    if settings.method == "lora":
        return LoRA(host, targets, rank=settings.rank, alpha=settings.alpha, seed=settings.seed)
    return WeightCopies(host, targets)


def _batches(n: int, batch: int) -> int:
    return -(-int(n) // int(batch))


def sampling_steps(settings: MimicrySettings, n: int) -> int:
    """Progress updates of generating ``n`` images: each DDIM step of each sample batch (see :func:`txt2img`)."""
    return _batches(n, settings.sample_batch) * settings.sample_steps


def txt2img(host, prompts, *, steps: int, progress: Progress | None = None, **kw) -> torch.Tensor:
    """:func:`protect_core.sampling.txt2img` whose last DDIM step's update comes after the VAE decode (so the
    decode runs inside the bar, not past its end)."""
    view = None if progress is None else progress.holding_last(steps)
    images = _txt2img(host, prompts, steps=steps, progress=view, **kw)
    if view is not None:
        view.release()
    return images


def finetune_steps(settings: MimicrySettings, n_images: int) -> int:
    """Progress updates of one :func:`finetune` on ``n_images``: one per VAE-encoded batch of the training (and,
    with prior preservation, class) images, then one per training step."""
    prior = _batches(settings.prior_images, settings.batch_size) if settings.prior_preservation else 0
    return _batches(n_images, settings.batch_size) + prior + settings.steps


def prior_images(host, settings: MimicrySettings, progress: Progress | None = None) -> torch.Tensor:
    """Class images from the *base* model for prior preservation, in [0, 1] (fixed seeds); reports
    :func:`sampling_steps` of ``prior_images`` updates."""
    out = []
    n, size = settings.prior_images, settings.resolution
    for i in range(0, n, settings.sample_batch):
        k = min(settings.sample_batch, n - i)
        out.append(txt2img(host, [settings.class_prompt] * k, height=size, width=size,
                           steps=settings.sample_steps, guidance=settings.guidance,
                           negative=settings.negative_prompt, seed=settings.seed + 50_000 + i, progress=progress))
    return torch.cat(out)


def _posterior(host, images01: torch.Tensor, batch: int, progress: Progress | None = None):
    means, stds = [], []
    with torch.no_grad():
        for i in range(0, images01.shape[0], batch):
            m, logvar = host.posterior(images01[i:i + batch].to(host.device) * 2 - 1)
            means.append(m)
            stds.append(torch.exp(0.5 * logvar))
            if progress is not None:
                progress.step(phase="encode")
    return torch.cat(means), torch.cat(stds)


def _latents(host, mean, std, idx, g):
    """Sampled scaled latents of the images ``idx`` (DreamBooth samples the VAE posterior each step)."""
    noise = torch.randn(mean[idx].shape, generator=g).to(mean)
    return (mean[idx] + std[idx] * noise - host.latent_shift) * host.latent_scale


def finetune(host, images01: torch.Tensor, settings: MimicrySettings, progress: Progress | None = None,
             class_images01: torch.Tensor | None = None, memory="auto") -> FinetuneResult:
    """Fine-tune a private adapter on ``images01`` (B, 3, S, S) in [0, 1] (borrows the host itself).

    ``memory``: "auto" (default), "fast", "balanced", "low" or a MemoryMode; "auto" or None inside a memory
    session the caller holds: that session. ``result.memory`` says which mode ran and any fallbacks.
    ``progress``: :func:`finetune_steps` updates (the caller announces them).
    """
    if settings.prior_preservation and class_images01 is None:
        raise ValueError("prior preservation needs class images")
    work = f"fine-tuning ({settings.method}) on {images01.shape[0]} image(s) of {images01.shape[-1]} px"
    result, record = run_in_memory_mode(
        host, memory, lambda: _finetune(host, images01, settings, progress, class_images01),
        [finetune_job(settings, images01)], work=work, advice=LIMIT_ADVICE, progress=progress)
    result.memory = record
    return result


def _finetune(host, images01, settings: MimicrySettings, progress, class_images01) -> FinetuneResult:
    """One fine-tune from the settings' seed, in whatever memory session is active."""
    adapter = make_adapter(host, settings)
    g = torch.Generator().manual_seed(settings.seed + 1)
    mean, std = _posterior(host, images01, settings.batch_size, progress)
    cond = host.encode_text([settings.instance_prompt])
    prior = None
    if settings.prior_preservation:
        prior = (*_posterior(host, class_images01, settings.batch_size, progress),
                 host.encode_text([settings.class_prompt]))
    params = adapter.parameters()
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.AdamW(params, lr=settings.resolved_lr(), weight_decay=0.0)
    n, bs = mean.shape[0], min(settings.batch_size, mean.shape[0])
    losses: list[float] = []
    active = active_memory(host)   # half precision (memory mode): loss scaling, overflowed steps skipped
    for _ in range(settings.steps):
        idx = torch.randperm(n, generator=g)[:bs]
        loss = denoising_loss(host, _latents(host, mean, std, idx, g), cond, generator=g,
                              weight_overrides=adapter.overrides())
        if prior is not None:
            pm, ps, pcond = prior
            pidx = torch.randperm(pm.shape[0], generator=g)[:bs]
            loss = loss + settings.prior_weight * denoising_loss(
                host, _latents(host, pm, ps, pidx, g), pcond, generator=g, weight_overrides=adapter.overrides())
        opt.zero_grad(set_to_none=True)
        (loss * (1.0 if active is None else active.loss_scale)).backward()   # scale 1.0 is exact: a no-op
        if unscale_grads(active, [p.grad for p in params]):
            opt.step()
        losses.append(float(loss.detach()))
        if progress is not None:
            progress.step(loss=losses[-1])
    with torch.no_grad():
        overrides = {k: v.detach().clone() for k, v in adapter.overrides().items()}
    return FinetuneResult(overrides, losses, adapter.num_parameters(), adapter.config())
