"""Small pure functions of the diffusion process (in the spirit of k-diffusion), shared by every block.

Everything here works on plain tensors and an ``alphas_cumprod`` schedule; nothing knows about hosts.
Timesteps are integer indices into the schedule.
"""
from __future__ import annotations

import torch


def sd_alphas_cumprod(num_steps: int = 1000, beta_start: float = 0.00085, beta_end: float = 0.012) -> torch.Tensor:
    """The "scaled_linear" schedule used by Stable Diffusion 1.x, 2.x and XL."""
    betas = torch.linspace(beta_start ** 0.5, beta_end ** 0.5, num_steps, dtype=torch.float64) ** 2
    return torch.cumprod(1.0 - betas, 0).float()


def _coeffs(t, alphas_cumprod: torch.Tensor, like: torch.Tensor):
    t = torch.as_tensor(t, device=alphas_cumprod.device).long().reshape(-1)
    a = alphas_cumprod[t].to(like.device, like.dtype)
    shape = (-1,) + (1,) * (like.ndim - 1)
    return a.sqrt().reshape(shape), (1 - a).sqrt().reshape(shape)


def add_noise(x0: torch.Tensor, noise: torch.Tensor, t, alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """Forward process: x_t = sqrt(a_t) x0 + sqrt(1 - a_t) noise."""
    sa, so = _coeffs(t, alphas_cumprod, x0)
    return sa * x0 + so * noise


def eps_from_output(out: torch.Tensor, x_t: torch.Tensor, t, alphas_cumprod: torch.Tensor,
                    prediction_type: str) -> torch.Tensor:
    """Convert a model output (eps or v) to predicted noise."""
    if prediction_type == "epsilon":
        return out
    if prediction_type == "v_prediction":
        sa, so = _coeffs(t, alphas_cumprod, x_t)
        return sa * out + so * x_t
    raise ValueError(f"unknown prediction type {prediction_type!r}")


def x0_from_eps(eps: torch.Tensor, x_t: torch.Tensor, t, alphas_cumprod: torch.Tensor) -> torch.Tensor:
    sa, so = _coeffs(t, alphas_cumprod, x_t)
    return (x_t - so * eps) / sa


def training_target(x0: torch.Tensor, noise: torch.Tensor, t, alphas_cumprod: torch.Tensor,
                    prediction_type: str) -> torch.Tensor:
    """What the UNet is trained to output: the noise (eps) or the velocity v = sqrt(a) eps - sqrt(1-a) x0."""
    if prediction_type == "epsilon":
        return noise
    if prediction_type == "v_prediction":
        sa, so = _coeffs(t, alphas_cumprod, x0)
        return sa * noise - so * x0
    raise ValueError(f"unknown prediction type {prediction_type!r}")


def denoising_loss(host, latents: torch.Tensor, cond, generator: torch.Generator | None = None,
                   t_range: tuple[int, int] | None = None, weight_overrides=None,
                   reduction: str = "mean") -> torch.Tensor:
    """The standard fine-tuning loss ||model(x_t, t) - target||^2 at random t and noise (seeded by ``generator``).

    Used by the cloak methods (to ascend it) and the mimicry test (to descend it); differentiable in ``latents``
    and in ``weight_overrides``.
    """
    b = latents.shape[0]
    lo, hi = t_range or (0, host.num_train_timesteps)
    dev = latents.device
    t = torch.randint(lo, hi, (b,), generator=generator, device="cpu").to(dev)
    noise = torch.randn(latents.shape, generator=generator, device="cpu").to(dev)
    x_t = add_noise(latents, noise, t, host.alphas_cumprod)
    out = host.model_output(x_t, t, cond, weight_overrides)
    target = training_target(latents, noise, t, host.alphas_cumprod, host.prediction_type)
    err = (out - target.to(out.dtype)) ** 2
    if reduction == "none":
        return err.flatten(1).mean(1)
    return err.mean()


def ddim_timesteps(num_steps: int, num_train: int = 1000, strength: float = 1.0) -> list[int]:
    """Descending timesteps for a DDIM run of ``num_steps`` (``strength`` < 1 starts part-way, for img2img)."""
    if num_steps < 1:
        raise ValueError("num_steps must be >= 1")
    stride = num_train // num_steps
    ts = list(range(0, num_train, stride))[:num_steps]
    ts = [t + 1 for t in ts]  # "leading"+offset spacing as in SD's DDIM config (steps_offset=1)
    ts = [min(t, num_train - 1) for t in ts][::-1]
    keep = max(1, min(num_steps, int(round(num_steps * strength))))
    return ts[num_steps - keep:]


def ddim_step(eps: torch.Tensor, x_t: torch.Tensor, t: int, t_prev: int, alphas_cumprod: torch.Tensor,
              eta: float = 0.0, generator: torch.Generator | None = None) -> torch.Tensor:
    """One deterministic (eta=0) DDIM step from t to t_prev (t_prev < 0 means the final clean sample)."""
    a_t = alphas_cumprod[t].to(x_t)
    a_prev = alphas_cumprod[t_prev].to(x_t) if t_prev >= 0 else torch.ones((), device=x_t.device, dtype=x_t.dtype)
    x0 = (x_t - (1 - a_t).sqrt() * eps) / a_t.sqrt()
    sigma = eta * ((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)).clamp(min=0).sqrt()
    dir_xt = (1 - a_prev - sigma ** 2).clamp(min=0).sqrt() * eps
    x_prev = a_prev.sqrt() * x0 + dir_xt
    if eta > 0:
        noise = torch.randn(x_t.shape, generator=generator, device="cpu").to(x_t)
        x_prev = x_prev + sigma * noise
    return x_prev
