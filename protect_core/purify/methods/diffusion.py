"""Diffusion purifiers over the host's own model: DiffPure/SDEdit and noisy upscaling (Hönig et al.)."""
from __future__ import annotations

from .. import ops
from ..base import Purifier, register
from ..sdedit import check_diffusion_params, sdedit, sdedit_timesteps

_PROMPT_DOC = {"prompt": "text prompt for denoising (e.g. a caption of the image; empty = unconditional)",
               "negative": "negative prompt (used when guidance != 1)",
               "guidance": "classifier-free guidance scale (1 = none, cheapest)"}


def _check_strength(name: str, s, allow_zero: bool = True) -> None:
    lo_ok = s >= 0 if allow_zero else s > 0
    if not isinstance(s, (int, float)) or not lo_ok or s > 1:
        raise ValueError(f"{name}: strength must be in {'[0' if allow_zero else '(0'}, 1], got {s!r}")


@register
class DiffPure(Purifier):
    name = "diffpure"
    summary = "noise to a small part of the schedule and denoise with the host's model (DiffPure / SDEdit)"
    source = "Nie et al. 2022 (DiffPure), Meng et al. 2021 (SDEdit); t about 0.1 of the schedule"
    needs_host = True
    defaults = {"strength": 0.1, "steps": 50, "prompt": "", "negative": "", "guidance": 1.0}
    param_doc = {"strength": "share of the schedule to noise to (0.1 = t about 100 of 1000; 0 = unchanged)",
                 "steps": "DDIM steps of the full schedule; round(steps * strength) of them are run",
                 **_PROMPT_DOC}

    def validate(self, params, images):
        _check_strength(self.name, params["strength"])
        check_diffusion_params(self.name, params)

    def count_steps(self, params, images, host):
        return len(sdedit_timesteps(host, params["strength"], params["steps"])) if params["strength"] > 0 else 0

    def run(self, host, images, params, generator, progress):
        if params["strength"] == 0:
            return images, {"t_start": 0}
        ts = sdedit_timesteps(host, params["strength"], params["steps"])
        out = sdedit(host, images, strength=params["strength"], steps=params["steps"], prompt=params["prompt"],
                     negative=params["negative"], guidance=params["guidance"], generator=generator,
                     progress=progress)
        return out, {"t_start": ts[0], "denoise_steps": len(ts)}


@register
class NoisyUpscale(Purifier):
    name = "noisy_upscale"
    summary = "add Gaussian noise, upscale and denoise with the host's model at the larger size, resize back"
    source = "Hönig et al. 2024 (noise sigma 0.05-0.1 then a diffusion upscaler); here img2img at scale x"
    needs_host = True
    defaults = {"sigma": 0.05, "scale": 2.0, "strength": 0.2, "steps": 25, "resize_back": True,
                "interpolation": "bicubic", "prompt": "", "negative": "", "guidance": 1.0}
    param_doc = {"sigma": "std of the Gaussian noise added first ([0, 1] units)",
                 "scale": "upscale factor (>= 1) at which the model denoises",
                 "strength": "img2img strength at the larger size (low: keeps the content)",
                 "steps": "DDIM steps of the full schedule; round(steps * strength) of them are run",
                 "resize_back": "return the input size (True) or the upscaled size (False)",
                 "interpolation": f"resampling for up/down sizing: {', '.join(ops.INTERPOLATIONS)}",
                 **_PROMPT_DOC}

    def validate(self, params, images):
        s, k = params["sigma"], params["scale"]
        if not isinstance(s, (int, float)) or not 0 <= s <= 1:
            raise ValueError(f"noisy_upscale: sigma must be in [0, 1], got {s!r}")
        if not isinstance(k, (int, float)) or not 1 <= k <= 8:
            raise ValueError(f"noisy_upscale: scale must be in [1, 8], got {k!r}")
        if params["interpolation"] not in ops.INTERPOLATIONS:
            raise ValueError(f"noisy_upscale: interpolation must be one of {', '.join(ops.INTERPOLATIONS)}")
        if not isinstance(params["resize_back"], bool):
            raise ValueError(f"noisy_upscale: resize_back must be true or false, got {params['resize_back']!r}")
        _check_strength(self.name, params["strength"], allow_zero=False)
        check_diffusion_params(self.name, params)

    def count_steps(self, params, images, host):
        return len(sdedit_timesteps(host, params["strength"], params["steps"]))

    def memory_pixels(self, params, images, host):
        h, w = images.shape[-2:]
        return images.shape[0] * round(h * params["scale"]) * round(w * params["scale"])

    def run(self, host, images, params, generator, progress):
        h, w = images.shape[-2:]
        big = (round(h * params["scale"]), round(w * params["scale"]))
        noisy = ops.add_gaussian_noise(images, float(params["sigma"]), generator)
        up = ops.resize_to(noisy, big, params["interpolation"]).clamp(0, 1)
        ts = sdedit_timesteps(host, params["strength"], params["steps"])
        out = sdedit(host, up, strength=params["strength"], steps=params["steps"], prompt=params["prompt"],
                     negative=params["negative"], guidance=params["guidance"], generator=generator,
                     progress=progress)
        if params["resize_back"]:
            out = ops.resize_to(out, (h, w), params["interpolation"]).clamp(0, 1)
        return out, {"t_start": ts[0], "denoise_steps": len(ts), "denoised_size": list(big)}
