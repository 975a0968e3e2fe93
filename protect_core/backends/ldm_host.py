"""The shared base of :class:`~protect_core.host.HostModel` adapters for ldm-layout Stable Diffusion models.

The original Stable Diffusion code (``ldm``, and ``sgm`` for SDXL) and every host built on it (Automatic1111, Forge,
ComfyUI) lay a model out the same way, whatever the classes are called:

* the UNet has ``input_blocks`` (``input_blocks.0`` is the input convolution, each level ends with a downsampler),
  ``middle_block`` and ``output_blocks``, cross-attention modules ``...attn2`` with ``to_q/to_k/to_v/to_out.0``, and
  ``forward(x, timesteps=, context=, y=)`` where ``y`` is the SDXL "ADM" vector (pooled text + size embeddings);
* the first-stage model (VAE) has ``encoder``, ``decoder`` and optional ``quant_conv`` / ``post_quant_conv``; the
  hosts' own ``encode_first_stage`` helpers are wrapped in ``no_grad`` / ``inference_mode`` or tile, so the adapter
  calls these sub-modules directly (through :meth:`HostModel.call`, i.e. on non-inference views).

:class:`LdmHost` implements everything the engine needs from such a model; a host adapter (``sdwebui.a1111_host``,
``sdwebui.forge_host``) only reads its host's objects, supplies text conditioning (``_encode_text``) and, where the
host needs it, extra UNet keyword arguments and an autocast context. For SDXL-type UNets (``label_emb`` present)
``Conditioning.pooled`` holds the whole ``y`` vector the UNet takes, exactly as the host's conditioner built it.
"""
from __future__ import annotations

import contextlib
from typing import Callable, Iterator, Mapping

import torch

from ..errors import ModelError
from ..host import Conditioning, HostModel
from ..layers.naming import canonical_name

_PREDICTION = {"eps": "epsilon", "epsilon": "epsilon", "v": "v_prediction", "v_prediction": "v_prediction"}


def prediction_type_of(value) -> str:
    """``"eps"``/``"epsilon"`` -> ``"epsilon"``, ``"v"``/``"v_prediction"`` -> ``"v_prediction"``; else ModelError."""
    found = _PREDICTION.get(str(value).lower())
    if found is None:
        raise ModelError(f"unsupported model parameterisation {value!r}: StyleCloak works with eps- or "
                         "v-prediction models on a discrete 1000-step schedule (SD 1.x / 2.x / XL)")
    return found


def check_ldm_unet(unet, latent_channels: int = 4) -> None:
    """Raise ModelError unless ``unet`` is an ldm-layout SD UNet over ``latent_channels`` latents."""
    missing = [a for a in ("input_blocks", "middle_block", "output_blocks") if not hasattr(unet, a)]
    if not isinstance(unet, torch.nn.Module) or missing:
        raise ModelError(f"StyleCloak works with SD 1.x / 2.x / XL UNets; this model's UNet "
                         f"({type(unet).__name__}) has no {', '.join(missing) or 'torch module'}")
    in_ch = getattr(unet, "in_channels", None)
    if in_ch is not None and int(in_ch) != latent_channels:
        raise ModelError(f"this UNet takes {in_ch} input channels (an inpainting or instruct model); StyleCloak "
                         f"needs a plain text-to-image checkpoint with {latent_channels}-channel latents")


def check_first_stage(fsm) -> None:
    if fsm is None or not all(hasattr(fsm, a) for a in ("encoder", "decoder")):
        raise ModelError("StyleCloak needs a KL autoencoder (VAE) with an encoder and a decoder; this model's "
                         f"first stage is {type(fsm).__name__}")


def layers_per_block(unet) -> list[int]:
    """Res/attention layers per level of an ldm UNet (``num_res_blocks``, one entry per ``channel_mult`` level)."""
    nrb = getattr(unet, "num_res_blocks", None)
    mult = getattr(unet, "channel_mult", None)
    if isinstance(nrb, (list, tuple)):
        return [int(n) for n in nrb]
    if nrb is None or mult is None:
        raise ModelError(f"cannot read the block layout of {type(unet).__name__} (no num_res_blocks/channel_mult)")
    return [int(nrb)] * len(mult)


def first_param(module: torch.nn.Module) -> torch.Tensor:
    for p in module.parameters():
        return p
    raise ModelError(f"{type(module).__name__} has no parameters")


class LdmHost(HostModel):
    """An ldm-layout model (UNet + first-stage VAE + text encoder) seen through the engine's interface.

    ``autocast``: a callable returning the context the host runs its model in (A1111's ``devices.autocast``);
    ``device``/``dtype``/``vae_device``/``vae_dtype`` default to the modules' first parameters.
    """

    def __init__(self, unet: torch.nn.Module, first_stage: torch.nn.Module, text_encoder: torch.nn.Module | None,
                 *, alphas_cumprod: torch.Tensor, prediction_type: str, latent_scale: float,
                 latent_shift: float = 0.0, family: str = "sd", latent_channels: int = 4,
                 device: torch.device | None = None, dtype: torch.dtype | None = None,
                 vae_device: torch.device | None = None, vae_dtype: torch.dtype | None = None,
                 autocast: Callable[[], contextlib.AbstractContextManager] | None = None):
        check_ldm_unet(unet, latent_channels)
        check_first_stage(first_stage)
        self.unet, self.fsm, self.text_module = unet, first_stage, text_encoder
        self.prediction_type = prediction_type_of(prediction_type)
        self.family = family
        self.latent_channels = latent_channels
        self.per_block = layers_per_block(unet)
        self.is_xl = getattr(unet, "label_emb", None) is not None
        self._device = torch.device(device) if device is not None else first_param(unet).device
        self._dtype = dtype or first_param(unet).dtype
        self._vae_device = torch.device(vae_device) if vae_device is not None else first_param(first_stage).device
        self._vae_dtype = vae_dtype or first_param(first_stage).dtype
        self._scale, self._shift = float(latent_scale), float(latent_shift or 0.0)
        self._autocast = autocast or contextlib.nullcontext
        ac = torch.as_tensor(alphas_cumprod).detach()
        with torch.inference_mode(False):  # a normal tensor even when the host made its schedule in inference mode
            ac = ac.float().clone()
        if ac.ndim != 1 or ac.numel() < 2 or not bool(((ac > 0) & (ac <= 1)).all()):
            raise ModelError(f"the model's alphas_cumprod is not a noise schedule (shape {tuple(ac.shape)})")
        self._alphas = ac.to(self._device)
        self.vae_scale_factor = 2 ** (self._vae_levels() - 1) if self._vae_levels() else 8

    def _vae_levels(self) -> int:
        enc = self.fsm.encoder
        for attr in ("down", "down_blocks"):
            if hasattr(enc, attr):
                return len(getattr(enc, attr))
        return 0

    # --- placement and schedule
    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def dtype(self) -> torch.dtype:
        return self._dtype

    @property
    def vae_device(self) -> torch.device:
        return self._vae_device

    @property
    def vae_dtype(self) -> torch.dtype:
        return self._vae_dtype

    @property
    def alphas_cumprod(self) -> torch.Tensor:
        return self._alphas

    @property
    def latent_scale(self) -> float:
        return self._scale

    @property
    def latent_shift(self) -> float:
        return self._shift

    def host_modules(self) -> dict[str, torch.nn.Module]:
        return {"unet": self.unet, "vae": self.fsm, "text_encoder": self.text_module}

    # --- VAE: the first-stage sub-modules, called directly (differentiable, never a tiled or no_grad helper)
    def _vae_posterior(self, images):
        with self._autocast():
            h = self.call(self.fsm.encoder, images)
            quant = getattr(self.fsm, "quant_conv", None)
            if quant is not None:
                h = self.call(quant, h)
        mean, logvar = torch.chunk(h, 2, dim=1)
        return mean, logvar.clamp(-30.0, 20.0)

    def _vae_decode(self, latents):
        with self._autocast():
            post = getattr(self.fsm, "post_quant_conv", None)
            z = self.call(post, latents) if post is not None else latents
            return self.call(self.fsm.decoder, z)

    # --- text helpers for subclasses
    @staticmethod
    def plain(t: torch.Tensor) -> torch.Tensor:
        """A normal (non-inference) copy of ``t``: hosts encode text under inference mode, and autograd cannot save
        inference tensors for the backward pass of a weight override."""
        with torch.inference_mode(False):
            return t.detach().clone()

    def conditioning_from(self, out) -> Conditioning:
        """Conditioning from a host conditioner's output: a context tensor, or an SDXL dict with ``crossattn``
        (context) and ``vector`` (the UNet's ``y``)."""
        if isinstance(out, dict):
            if "crossattn" not in out:
                raise ModelError(f"the model's text conditioning has no 'crossattn' entry (keys {sorted(out)})")
            vec = out.get("vector")
            return Conditioning(self.plain(out["crossattn"]).to(self.device, self.dtype),
                                None if vec is None else self.plain(vec).to(self.device, self.dtype))
        if isinstance(out, (tuple, list)):  # (context, pooled) pairs some conditioners return
            out = out[0]
        if not isinstance(out, torch.Tensor) or out.ndim != 3:
            raise ModelError(f"the model's text conditioning is a {type(out).__name__}, not a (B, tokens, dim) "
                             "tensor or an SDXL dict")
        return Conditioning(self.plain(out).to(self.device, self.dtype))

    # --- UNet
    def unet_parameters(self) -> Mapping[str, torch.Tensor]:
        return dict(self.unet.named_parameters())

    def _unet_kwargs(self) -> dict:
        """Extra keyword arguments the host's UNet forward needs (e.g. Forge's ``transformer_options``)."""
        return {}

    def _adm(self, latents: torch.Tensor, cond: Conditioning) -> torch.Tensor | None:
        if not self.is_xl:
            return None
        if cond.pooled is None:
            raise ModelError("this SDXL-type model needs the conditioner's 'vector' (y); the text encoder gave none")
        return cond.pooled.to(self.device, self.dtype)

    def _unet(self, latents, t, cond, weights):
        kwargs = {"timesteps": t.float(), "context": cond.context.to(self.device, self.dtype), **self._unet_kwargs()}
        y = self._adm(latents, cond)
        if y is not None:
            kwargs["y"] = y
        with self._autocast():
            return torch.func.functional_call(self.unet, weights, (latents,), kwargs, strict=False)

    def _cross_attention_modules(self) -> Iterator[tuple[str, str, torch.nn.Module]]:
        for name, module in self.unet.named_modules():
            if name.endswith("attn2") and hasattr(module, "to_k"):
                yield canonical_name(name, self.per_block), name, module
