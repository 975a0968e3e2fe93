"""The diffusers adapter of :class:`protect_core.host.HostModel`.

Wraps the UNet, VAE and text encoder(s) of an SD 1.x / 2.x / XL diffusers pipeline (or of the tiny models from
:mod:`protect_core.tiny_models`). The UNet runs through ``torch.func.functional_call`` with the parameter mapping the
engine hands over, so weight overrides and inference-mode weights work without touching the modules' tensors.
Loading from disk lives in :mod:`protect_core.backends.loading`.
"""
from __future__ import annotations

from typing import Iterator, Mapping

import torch

from ..errors import ModelError
from ..host import Conditioning, HostModel


class DiffusersHost(HostModel):
    def __init__(self, unet, vae, text_encoder, tokenizer, alphas_cumprod: torch.Tensor,
                 prediction_type: str = "epsilon", text_encoder_2=None, tokenizer_2=None,
                 family: str | None = None):
        for name, obj, cls in (("unet", unet, "UNet2DConditionModel"), ("vae", vae, "AutoencoderKL")):
            if type(obj).__name__ != cls:
                raise ModelError(f"{name} must be a diffusers {cls}, got {type(obj).__name__}")
        self.unet, self.vae = unet, vae
        self.text_encoder, self.tokenizer = text_encoder, tokenizer
        self.text_encoder_2, self.tokenizer_2 = text_encoder_2, tokenizer_2
        self.prediction_type = prediction_type
        self.is_xl = unet.config.get("addition_embed_type") == "text_time"
        if self.is_xl and text_encoder_2 is None:
            raise ModelError("SDXL-type UNet needs a second text encoder (text_encoder_2)")
        self.family = family or ("sdxl" if self.is_xl else "sd")
        self.vae_scale_factor = 2 ** (len(vae.config.block_out_channels) - 1)
        self.latent_channels = int(vae.config.latent_channels)
        self._alphas = alphas_cumprod.float().to(self.device)

    @classmethod
    def from_pipeline(cls, pipe, family: str | None = None) -> "DiffusersHost":
        sched = pipe.scheduler
        return cls(pipe.unet, pipe.vae, pipe.text_encoder, pipe.tokenizer, sched.alphas_cumprod,
                   sched.config.get("prediction_type", "epsilon"), getattr(pipe, "text_encoder_2", None),
                   getattr(pipe, "tokenizer_2", None), family)

    # --- placement and schedule
    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.unet.parameters()).dtype

    @property
    def vae_device(self) -> torch.device:
        return next(self.vae.parameters()).device

    @property
    def vae_dtype(self) -> torch.dtype:
        return next(self.vae.parameters()).dtype

    @property
    def alphas_cumprod(self) -> torch.Tensor:
        return self._alphas

    @property
    def latent_scale(self) -> float:
        return float(self.vae.config.scaling_factor)

    @property
    def latent_shift(self) -> float:
        return float(self.vae.config.get("shift_factor") or 0.0)

    def host_modules(self) -> dict[str, torch.nn.Module]:
        mods = {"unet": self.unet, "vae": self.vae, "text_encoder": self.text_encoder}
        if self.text_encoder_2 is not None:
            mods["text_encoder_2"] = self.text_encoder_2
        return mods

    # --- VAE
    def _vae_posterior(self, images):
        vae = self.vae
        h = self.call(vae.encoder, images)
        if vae.quant_conv is not None:
            h = self.call(vae.quant_conv, h)
        mean, logvar = torch.chunk(h, 2, dim=1)
        return mean, logvar.clamp(-30.0, 20.0)

    def _vae_decode(self, latents):
        vae = self.vae
        z = self.call(vae.post_quant_conv, latents) if vae.post_quant_conv is not None else latents
        return self.call(vae.decoder, z)

    # --- text
    def _tokens(self, tokenizer, prompts):
        ids = tokenizer(prompts, padding="max_length", max_length=tokenizer.model_max_length,
                        truncation=True, return_tensors="pt").input_ids
        return ids.to(self.text_encoder.device)

    def _encode_text(self, prompts):
        if not self.is_xl:
            out = self.text_encoder(self._tokens(self.tokenizer, prompts))
            return Conditioning(out[0].to(self.dtype))
        o1 = self.text_encoder(self._tokens(self.tokenizer, prompts), output_hidden_states=True)
        o2 = self.text_encoder_2(self._tokens(self.tokenizer_2, prompts), output_hidden_states=True)
        ctx = torch.cat([o1.hidden_states[-2], o2.hidden_states[-2]], dim=-1)
        return Conditioning(ctx.to(self.dtype), o2[0].to(self.dtype))

    # --- UNet
    def unet_parameters(self) -> Mapping[str, torch.Tensor]:
        return dict(self.unet.named_parameters())

    def _unet(self, latents, t, cond, weights):
        kwargs = {"encoder_hidden_states": cond.context.to(self.device, self.dtype), "return_dict": False}
        if self.is_xl:
            h, w = latents.shape[-2] * self.vae_scale_factor, latents.shape[-1] * self.vae_scale_factor
            oh, ow = cond.extras.get("original_size", (h, w))
            ids = torch.tensor([oh, ow, 0, 0, h, w], device=self.device, dtype=self.dtype)
            kwargs["added_cond_kwargs"] = {"text_embeds": cond.pooled.to(self.device, self.dtype),
                                           "time_ids": ids.expand(latents.shape[0], 6)}
        return torch.func.functional_call(self.unet, weights, (latents, t), kwargs, strict=False)[0]

    def _cross_attention_modules(self) -> Iterator[tuple[str, str, torch.nn.Module]]:
        for name, module in self.unet.named_modules():
            if name.endswith("attn2") and hasattr(module, "to_k"):
                yield name, name, module
