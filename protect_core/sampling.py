"""Generation over the engine's interface: a plain DDIM sampler with classifier-free guidance.

Used by the blocks that need the model to *make* images: Glaze's style target (img2img), the diffusion purifiers
(SDEdit-style denoising) and the mimicry test (text-to-image from a fine-tuned model via ``weight_overrides``).
Runs without gradients; call it inside ``host.borrowed()``.
"""
from __future__ import annotations

import torch

from .diffusion import add_noise, ddim_step, ddim_timesteps
from .host import Conditioning
from .progress import Progress


def _guided_eps(host, x, t, cond: Conditioning, uncond: Conditioning | None, guidance: float, overrides):
    if uncond is None or guidance == 1.0:
        return host.predict_noise(x, t, cond, overrides)
    b = x.shape[0]
    both = uncond.repeat_to(b).cat(cond.repeat_to(b))
    eps_u, eps_c = host.predict_noise(torch.cat([x, x]), t, both, overrides).chunk(2)
    return eps_u + guidance * (eps_c - eps_u)


@torch.no_grad()
def sample_latents(host, cond: Conditioning, latents: torch.Tensor, *, steps: int = 25, guidance: float = 5.0,
                   uncond: Conditioning | None = None, strength: float = 1.0,
                   generator: torch.Generator | None = None, weight_overrides=None,
                   progress: Progress | None = None) -> torch.Tensor:
    """DDIM (eta 0) from ``latents``.

    With ``strength`` = 1, ``latents`` is the starting noise (unit variance). With ``strength`` < 1 (img2img /
    SDEdit), ``latents`` are clean latents that are first noised to the starting timestep with seeded noise.
    """
    if not 0.0 < strength <= 1.0:
        raise ValueError(f"strength must be in (0, 1], got {strength}")
    ts = ddim_timesteps(steps, host.num_train_timesteps, strength)
    ac = host.alphas_cumprod
    if strength < 1.0:
        noise = torch.randn(latents.shape, generator=generator, device="cpu").to(latents)
        x = add_noise(latents.float(), noise, ts[0], ac)
    else:
        x = latents.float()
    for i, t in enumerate(ts):
        t_prev = ts[i + 1] if i + 1 < len(ts) else -1
        eps = _guided_eps(host, x, t, cond, uncond, guidance, weight_overrides)
        x = ddim_step(eps, x, t, t_prev, ac)
        if progress is not None:
            progress.step()
    return x


@torch.no_grad()
def txt2img(host, prompts: list[str], *, height: int, width: int, steps: int = 25, guidance: float = 5.0,
            negative: str = "", seed: int = 0, weight_overrides=None, progress: Progress | None = None):
    """Images in [0, 1] (B, 3, H, W), one per prompt, from seeded noise."""
    g = torch.Generator().manual_seed(seed)
    f = host.vae_scale_factor
    shape = (len(prompts), host.latent_channels, height // f, width // f)
    noise = torch.randn(shape, generator=g).to(host.device)
    cond = host.encode_text(prompts)
    uncond = host.encode_text([negative] * len(prompts))
    z = sample_latents(host, cond, noise, steps=steps, guidance=guidance, uncond=uncond, generator=g,
                       weight_overrides=weight_overrides, progress=progress)
    return ((host.decode(z) + 1) / 2).clamp(0, 1)


@torch.no_grad()
def img2img(host, images01: torch.Tensor, prompt: str | list[str], *, strength: float = 0.5, steps: int = 25,
            guidance: float = 5.0, negative: str = "", seed: int = 0, weight_overrides=None,
            progress: Progress | None = None) -> torch.Tensor:
    """SDEdit: noise the images' latents to ``strength`` of the schedule and denoise toward ``prompt``."""
    g = torch.Generator().manual_seed(seed)
    b = images01.shape[0]
    prompts = [prompt] * b if isinstance(prompt, str) else list(prompt)
    z0 = host.encode(images01.to(host.device) * 2 - 1)
    cond, uncond = host.encode_text(prompts), host.encode_text([negative] * b)
    z = sample_latents(host, cond, z0, steps=steps, guidance=guidance, uncond=uncond, strength=strength,
                       generator=g, weight_overrides=weight_overrides, progress=progress)
    return ((host.decode(z) + 1) / 2).clamp(0, 1)
