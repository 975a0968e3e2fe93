"""Reference loops for benchmarks/perf.py: the plainest correct PGD, written directly against the diffusers modules
(``AutoencoderKL``, ``UNet2DConditionModel``) with no StyleCloak engine in between, to measure the engine's overhead.

* :func:`encoder_pgd`: PhotoGuard's encoder attack (also the inner loss of Glaze without its perceptual term):
  ``min ||E(x + d) - target||^2`` with ``d -= a * sign(grad)``, ``|d| <= eps``, ``x + d`` in [0, 1];
* :func:`unet_pgd`: AdvDM (Mist's "semantic" mode): ascend the denoising loss ``||eps_hat(z_t, t) - eps||^2`` of
  ``z = E(x + d)`` at random (t, eps) drawn from a CPU generator in the engine's order (t, then eps), so with the same
  seed it follows the same path as ``optimize(host, mist(mode=semantic), ...)``.

Text conditioning is computed once outside the loop and handed in (it is not part of a step). Each step ends with
``float(loss)`` (a device sync), as any loop that reports its loss does; ``on_step()`` is called after every step.
The modules are only read: nothing is written, no flag is changed.
"""
from __future__ import annotations

from typing import Callable

import torch


def _project(delta: torch.Tensor, clean: torch.Tensor, eps: float) -> torch.Tensor:
    return torch.maximum(torch.minimum(delta, (1 - clean).clamp(max=eps)), (-clean).clamp(min=-eps))


def vae_latents(vae, images01: torch.Tensor) -> torch.Tensor:
    """Scaled posterior-mean latents, differentiable (``AutoencoderKL.encode``)."""
    x = (images01 * 2 - 1).to(vae.dtype)
    mean = vae.encode(x).latent_dist.mean
    shift = float(vae.config.get("shift_factor") or 0.0)
    return ((mean.float() - shift) * float(vae.config.scaling_factor))


def encoder_pgd(vae, clean01: torch.Tensor, target: torch.Tensor, eps: float, step_size: float, steps: int,
                on_step: Callable[[], None] | None = None) -> tuple[torch.Tensor, list[float]]:
    """PhotoGuard-style encoder PGD; returns (clean + delta, losses)."""
    delta = torch.zeros_like(clean01, requires_grad=True)
    losses = []
    for _ in range(steps):
        loss = (vae_latents(vae, clean01 + delta) - target).pow(2).mean()
        (grad,) = torch.autograd.grad(loss, delta)
        with torch.no_grad():
            delta -= step_size * grad.sign()
            delta.copy_(_project(delta, clean01, eps))
        losses.append(float(loss.detach()))
        if on_step:
            on_step()
    return (clean01 + delta).detach(), losses


def unet_kwargs(unet, context: torch.Tensor, pooled: torch.Tensor | None, height: int, width: int, batch: int):
    """UNet call arguments for SD (context only) and SDXL (pooled text + size/crop time ids)."""
    kw = {"encoder_hidden_states": context.to(unet.dtype).expand(batch, -1, -1)}
    if unet.config.get("addition_embed_type") == "text_time":
        ids = torch.tensor([height, width, 0, 0, height, width], device=context.device, dtype=unet.dtype)
        kw["added_cond_kwargs"] = {"text_embeds": pooled.to(unet.dtype).expand(batch, -1),
                                   "time_ids": ids.expand(batch, 6)}
    return kw


def unet_pgd(vae, unet, alphas_cumprod: torch.Tensor, clean01: torch.Tensor, context: torch.Tensor,
             pooled: torch.Tensor | None, eps: float, step_size: float, steps: int, seed: int = 0,
             on_step: Callable[[], None] | None = None) -> tuple[torch.Tensor, list[float]]:
    """AdvDM PGD (ascend the denoising loss through the UNet); returns (clean + delta, losses)."""
    g = torch.Generator().manual_seed(seed)
    b, _, h, w = clean01.shape
    kw = unet_kwargs(unet, context, pooled, h, w, b)
    acp = alphas_cumprod.to(clean01.device).float()
    delta = torch.zeros_like(clean01, requires_grad=True)
    losses = []
    for _ in range(steps):
        z = vae_latents(vae, clean01 + delta)
        t = torch.randint(0, acp.shape[0], (b,), generator=g).to(z.device)
        noise = torch.randn(z.shape, generator=g).to(z.device)
        a = acp[t].view(-1, 1, 1, 1)
        z_t = a.sqrt() * z + (1 - a).sqrt() * noise
        out = unet(z_t.to(unet.dtype), t, return_dict=False, **kw)[0].float()
        loss = -(out - noise).pow(2).mean()
        (grad,) = torch.autograd.grad(loss, delta)
        with torch.no_grad():
            delta -= step_size * grad.sign()
            delta.copy_(_project(delta, clean01, eps))
        losses.append(float(loss.detach()))
        if on_step:
            on_step()
    return (clean01 + delta).detach(), losses
