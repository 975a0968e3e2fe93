"""SDEdit with the host's model, as the diffusion purifiers use it: encode, noise part-way, denoise (DDIM through
:func:`protect_core.sampling.sample_latents`), decode. Any image size: odd sizes are padded (reflect) for the VAE
and cropped back. No gradients; call inside ``host.borrowed()``. Progress: one update per DDIM step, the last one
after the VAE decode (at a noisy upscale's size the VAE passes are big: the decode must not run past the bar's end).
"""
from __future__ import annotations

import torch

from ..diffusion import ddim_timesteps
from ..images import pad_to_multiple, unpad
from ..sampling import sample_latents


def sdedit_timesteps(host, strength: float, steps: int) -> list[int]:
    """The DDIM timesteps an SDEdit run of ``strength`` over a ``steps``-step schedule visits (first = noise level)."""
    return ddim_timesteps(int(steps), host.num_train_timesteps, float(strength))


def schedule_for_timestep(host, t: int, denoise_steps: int) -> tuple[float, int]:
    """(strength, steps) such that SDEdit starts at about timestep ``t`` and takes ``denoise_steps`` DDIM steps."""
    total = host.num_train_timesteps
    t = max(1, min(int(t), total - 1))
    n = max(1, min(int(denoise_steps), t))
    steps = max(n, round(n * total / t))
    return n / steps, steps


@torch.no_grad()
def sdedit(host, images01: torch.Tensor, *, strength: float, steps: int, prompt: str = "", negative: str = "",
           guidance: float = 1.0, generator: torch.Generator, progress=None) -> torch.Tensor:
    """Noise the images' latents to ``strength`` of the schedule (seeded by ``generator``) and denoise toward
    ``prompt`` with ``guidance`` (1 = no classifier-free guidance). Returns [0, 1] images of the input size."""
    xp, size = pad_to_multiple(images01.float(), host.vae_scale_factor)
    b = xp.shape[0]
    z0 = host.encode(xp.to(host.device) * 2 - 1)
    n = len(sdedit_timesteps(host, strength, steps))
    view = None if progress is None else progress.holding_last(n)
    cond = host.encode_text([prompt] * b)
    uncond = host.encode_text([negative] * b) if guidance != 1.0 else None
    z = sample_latents(host, cond, z0, steps=int(steps), guidance=float(guidance), uncond=uncond,
                       strength=float(strength), generator=generator, progress=view)
    out = ((host.decode(z) + 1) / 2).clamp(0, 1)
    if view is not None:
        view.release()
    return unpad(out, size).to(images01.device)


def check_diffusion_params(name: str, params: dict) -> None:
    """Shared validation of prompt / negative / guidance / steps."""
    for key in ("prompt", "negative"):
        if key in params and not isinstance(params[key], str):
            raise ValueError(f"{name}: {key} must be a string, got {params[key]!r}")
    g = params.get("guidance", 1.0)
    if not isinstance(g, (int, float)) or g < 0:
        raise ValueError(f"{name}: guidance must be a number >= 0, got {g!r}")
    s = params.get("steps", 1)
    if not isinstance(s, int) or s < 1:
        raise ValueError(f"{name}: steps must be an int >= 1, got {s!r}")
