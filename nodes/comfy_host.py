"""The ComfyUI adapter of :class:`protect_core.host.HostModel`: the graph's MODEL, CLIP and VAE, borrowed.

Facts of ComfyUI it respects:

* nodes run under ``torch.inference_mode()`` and loaded weights are inference tensors: the engine's ``borrowed()``
  leaves inference mode and runs every module through non-inference views (``HostModel.call``), never editing the
  host's tensors;
* the ModelPatcher passed in is never mutated: it is loaded through ``comfy.model_management.load_models_gpu`` like
  any sampler would (so memory is managed with the rest of the graph and the graph's LoRA patches apply);
* ``VAE.encode`` may fall back to a non-differentiable tiled path, so the first-stage model's encoder / decoder are
  called directly; latents are scaled with the model's own ``latent_format``;
* the raw UNet output (eps or v, from the model's sampling type) comes from ``diffusion_model`` itself, at integer
  timesteps of the model's discrete schedule.
"""
from __future__ import annotations

from typing import Iterator, Mapping

import torch

from protect_core.errors import ModelError
from protect_core.host import Conditioning, HostModel


def _comfy():
    import comfy.model_management as mm
    import comfy.model_sampling as ms

    return mm, ms


class ComfyHost(HostModel):
    def __init__(self, model, clip, vae, load: bool = True):
        mm, ms = _comfy()
        if model is None or not hasattr(model, "model") or not hasattr(model.model, "diffusion_model"):
            raise ModelError("StyleCloak needs a MODEL input (a loaded Stable Diffusion checkpoint)")
        base = model.model
        unet = base.diffusion_model
        if type(unet).__name__ != "UNetModel" or not hasattr(unet, "input_blocks"):
            raise ModelError(f"StyleCloak works with SD 1.x / 2.x / XL UNet models; this MODEL is "
                             f"{type(base).__name__} ({type(unet).__name__})")
        sampling = base.model_sampling
        if isinstance(sampling, ms.V_PREDICTION):
            self.prediction_type = "v_prediction"
        elif isinstance(sampling, ms.EPS) and hasattr(sampling, "sigmas"):
            self.prediction_type = "epsilon"
        else:
            raise ModelError(f"unsupported model sampling {type(sampling).__name__}: StyleCloak needs a discrete "
                             "eps- or v-prediction schedule")
        if vae is None or not hasattr(vae, "first_stage_model") or not hasattr(vae.first_stage_model, "encoder"):
            raise ModelError("StyleCloak needs a VAE input with an encoder and decoder (KL autoencoder)")
        if clip is None or not hasattr(clip, "encode_from_tokens"):
            raise ModelError("StyleCloak needs a CLIP input (the checkpoint's text encoder)")
        self.patcher, self.clip, self.vae_obj = model, clip, vae
        self.unet, self.base = unet, base
        self.fsm = vae.first_stage_model
        self.is_xl = getattr(base, "adm_channels", 0) > 0 and type(base).__name__.startswith("SDXL")
        self.family = {"SDXL": "sdxl", "SDXLRefiner": "sdxl-refiner"}.get(type(base).__name__, "sd")
        self.vae_scale_factor = int(vae.downscale_ratio) if isinstance(vae.downscale_ratio, int) else 8
        self.latent_channels = int(getattr(vae, "latent_channels", 4))
        sig = sampling.sigmas.detach().float()
        self._alphas = (1.0 / (sig * sig + 1.0))
        if load:
            mm.load_models_gpu([model])
            if getattr(vae, "patcher", None) is not None:
                mm.load_models_gpu([vae.patcher])
        self._alphas = self._alphas.to(self.device).clone()

    # --- placement and schedule
    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return getattr(self.base, "manual_cast_dtype", None) or next(self.unet.parameters()).dtype

    @property
    def vae_device(self) -> torch.device:
        return next(self.fsm.parameters()).device

    @property
    def vae_dtype(self) -> torch.dtype:
        return getattr(self.vae_obj, "vae_dtype", None) or next(self.fsm.parameters()).dtype

    @property
    def alphas_cumprod(self) -> torch.Tensor:
        return self._alphas

    @property
    def latent_scale(self) -> float:
        return float(self.base.latent_format.scale_factor)

    @property
    def latent_shift(self) -> float:
        return float(getattr(self.base.latent_format, "shift_factor", 0.0) or 0.0)

    def host_modules(self) -> dict[str, torch.nn.Module]:
        return {"unet": self.unet, "vae": self.fsm, "text_encoder": self.clip.cond_stage_model}

    # --- VAE (first-stage model called directly: differentiable, never the tiled fallback)
    def _vae_posterior(self, images):
        h = self.call(self.fsm.encoder, images)
        quant = getattr(self.fsm, "quant_conv", None)
        if quant is not None:
            h = self.call(quant, h)
        mean, logvar = torch.chunk(h, 2, dim=1)
        return mean, logvar.clamp(-30.0, 20.0)

    def _vae_decode(self, latents):
        post = getattr(self.fsm, "post_quant_conv", None)
        z = self.call(post, latents) if post is not None else latents
        return self.call(self.fsm.decoder, z)

    # --- text
    def _encode_text(self, prompts):
        ctxs, pools = [], []
        for p in prompts:
            cond, pooled = self.clip.encode_from_tokens(self.clip.tokenize(p), return_pooled=True)
            ctxs.append(cond.to(self.device))
            pools.append(None if pooled is None else pooled.to(self.device))
        n = max(c.shape[1] for c in ctxs)  # long prompts come back as several 77-token chunks
        ctxs = [torch.cat([c, c[:, -1:].expand(-1, n - c.shape[1], -1)], 1) for c in ctxs]
        pooled = torch.cat(pools) if all(p is not None for p in pools) else None
        return Conditioning(torch.cat(ctxs).to(self.dtype), pooled)

    # --- UNet
    def unet_parameters(self) -> Mapping[str, torch.Tensor]:
        return dict(self.unet.named_parameters())

    def _adm(self, latents, cond: Conditioning):
        if not getattr(self.base, "adm_channels", 0):
            return None
        if cond.pooled is None:
            raise ModelError("this model needs pooled text conditioning (SDXL); the CLIP gave none")
        h, w = latents.shape[-2] * self.vae_scale_factor, latents.shape[-1] * self.vae_scale_factor
        oh, ow = cond.extras.get("original_size", (h, w))
        rows = [self.base.encode_adm(pooled_output=cond.pooled[i:i + 1], width=ow, height=oh, crop_w=0,
                                     crop_h=0, target_width=w, target_height=h)
                for i in range(cond.pooled.shape[0])]
        return torch.cat(rows).to(self.device, self.dtype)

    def _unet(self, latents, t, cond, weights):
        kwargs = {"timesteps": t.float(), "context": cond.context.to(self.device, self.dtype),
                  "transformer_options": {}}
        y = self._adm(latents, cond)
        if y is not None:
            kwargs["y"] = y
        return torch.func.functional_call(self.unet, weights, (latents,), kwargs, strict=False)

    def _cross_attention_modules(self) -> Iterator[tuple[str, str, torch.nn.Module]]:
        from protect_core.layers.naming import canonical_name

        per_block = layers_per_block(self.unet)
        for name, module in self.unet.named_modules():
            if name.endswith("attn2") and hasattr(module, "to_k"):
                yield canonical_name(name, per_block), name, module


def layers_per_block(unet) -> list[int]:
    """Res/attention layers per down block of an ldm UNetModel (``num_res_blocks``, one entry per level)."""
    nrb = getattr(unet, "num_res_blocks", 2)
    levels = len(getattr(unet, "channel_mult", (1, 2, 4, 4)))
    return [int(nrb)] * levels if isinstance(nrb, int) else [int(n) for n in nrb]
