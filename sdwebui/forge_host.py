"""The Forge adapter of :class:`protect_core.host.HostModel`: ``sd_model.forge_objects`` (unet, clip, vae), borrowed.

Facts of Forge it respects (the current ``backend`` and the older ``ldm_patched`` Forge):

* weights are created under ``torch.inference_mode()`` (as in ComfyUI): the engine's ``borrowed()`` leaves inference
  mode and runs every module through non-inference views; the host's tensors are never written;
* the UNet patcher is never mutated: it and the VAE's patcher are loaded through Forge's own memory manager
  (``load_models_gpu``) like any generation would, so the active LoRA patches apply and memory is shared; the UNet
  may keep fp8 storage with a ``computation_dtype``: inputs and overrides use the computation dtype;
* ``unet.model.diffusion_model`` is ldm-layout (``IntegratedUNet2DConditionModel`` or ``UNetModel``) and needs a
  fresh ``transformer_options`` dict per call (it writes into it);
* the schedule and parameterisation come from ``unet.model.predictor`` (``prediction_type``, ``alphas_cumprod``)
  or, in older Forge, ``unet.model.model_sampling`` (EPS / V_PREDICTION class, ``sigmas``);
* text goes through ``sd_model.get_learned_conditioning`` when given (what txt2img uses; SDXL returns
  ``{"crossattn", "vector"}``), else through an old-style CLIP's ``tokenize`` / ``encode_from_tokens``;
* the VAE's ``first_stage_model`` sub-modules are called directly (Forge's ``VAE.encode`` is inference-mode and
  may tile); latents are scaled with the model's ``latent_format`` or the VAE's ``scaling_factor``/``shift_factor``;
* Forge's transformer blocks (both backends) add attention and feed-forward outputs to their residual stream in
  place (``x += n``) after a LayerNorm has saved that stream for backward, so a gradient through them fails
  ("modified by an inplace operation") and, under gradient checkpointing, would be recomputed from changed values.
  For a borrow only, each block gets an instance-level ``forward`` (:func:`out_of_place_forward`) that runs its own
  forward with such updates made out of place, only when autograd records them; the result is the same.
"""
from __future__ import annotations

import torch
from torch.overrides import TorchFunctionMode

from protect_core.backends.ldm_host import LdmHost, prediction_type_of
from protect_core.errors import ModelError
from protect_core.host import Conditioning

from .a1111_host import SizedPrompts, model_family

_UNSUPPORTED = {"EDM", "CONST", "X0", "IMG_TO_IMG", "V_PREDICTION_EDM", "COSMOS_RFLOW", "ModelSamplingDiscreteFlow",
                "ModelSamplingFlux"}


def read_sampling(base) -> tuple[str, torch.Tensor]:
    """(prediction type, alphas_cumprod) from a Forge model's ``predictor`` or ``model_sampling``."""
    s = getattr(base, "predictor", None)
    if s is None:
        s = getattr(base, "model_sampling", None)
    if s is None:
        raise ModelError("the model has no predictor/model_sampling; StyleCloak needs an SD 1.x / 2.x / XL model")
    names = {c.__name__ for c in type(s).__mro__}
    kind = getattr(s, "prediction_type", None)
    if kind is None and not names & _UNSUPPORTED:
        kind = "v" if "V_PREDICTION" in names else "eps" if "EPS" in names else None
    if kind is None or names & _UNSUPPORTED:
        raise ModelError(f"unsupported model sampling {type(s).__name__}: StyleCloak needs a discrete eps- or "
                         "v-prediction schedule (SD 1.x / 2.x / XL)")
    ac = getattr(s, "alphas_cumprod", None)
    if ac is None:
        sig = getattr(s, "sigmas", None)
        if sig is None:
            raise ModelError(f"{type(s).__name__} has neither alphas_cumprod nor sigmas")
        with torch.inference_mode(False):
            ac = 1.0 / (sig.detach().float().clone() ** 2 + 1.0)
    return prediction_type_of(kind), ac


def latent_scaling(base, fsm) -> tuple[float, float]:
    lf = getattr(base, "latent_format", None)
    if lf is not None and hasattr(lf, "scale_factor"):
        return float(lf.scale_factor), float(getattr(lf, "shift_factor", 0.0) or 0.0)
    if hasattr(fsm, "scaling_factor"):
        return float(fsm.scaling_factor), float(getattr(fsm, "shift_factor", 0.0) or 0.0)
    raise ModelError("cannot find the VAE's latent scaling factor (no latent_format or scaling_factor)")


#: in-place tensor updates and their out-of-place twins (``x += n`` calls ``Tensor.add_``)
_OUT_OF_PLACE = {torch.Tensor.add_: torch.add, torch.Tensor.sub_: torch.sub, torch.Tensor.mul_: torch.mul,
                 torch.Tensor.div_: torch.div}
#: marks the block forwards made here
MARK = "__stylecloak_out_of_place__"


class OutOfPlaceUpdates(TorchFunctionMode):
    """``a.add_(b)`` (and sub_/mul_/div_) become ``torch.add(a, b)`` when autograd records them (grad mode on and an
    operand requires grad). Only for code that rebinds the result, as augmented assignment (``x += n``) does."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        twin = _OUT_OF_PLACE.get(func)
        if twin is not None and torch.is_grad_enabled() and any(
                isinstance(a, torch.Tensor) and a.requires_grad for a in args[:2]):
            return twin(*args, **kwargs)
        return func(*args, **kwargs)


def transformer_blocks(unet) -> list:
    """Forge's BasicTransformerBlocks, by structure (self- and cross-attention, three norms, a feed-forward)."""
    return [m for m in unet.modules() if all(hasattr(m, a) for a in ("attn1", "attn2", "norm2", "norm3", "ff"))]


def out_of_place_forward(block):
    """``block``'s current forward, run under :class:`OutOfPlaceUpdates` (installed for one borrow only)."""
    inner = block.forward

    def forward(*args, **kwargs):
        with OutOfPlaceUpdates():
            return inner(*args, **kwargs)

    setattr(forward, MARK, True)
    return forward


def forge_loader():
    """Forge's ``load_models_gpu`` (current ``backend`` or older ``ldm_patched``), or None outside Forge."""
    for name in ("backend.memory_management", "ldm_patched.modules.model_management"):
        try:
            module = __import__(name, fromlist=["load_models_gpu"])
        except ImportError:
            continue
        return module.load_models_gpu
    return None


class ForgeHost(LdmHost):
    def __init__(self, unet, clip, vae, text_fn=None, load=None, family: str = "sd", sdxl_size: int = 1024):
        base = getattr(unet, "model", None)
        diffusion = getattr(base, "diffusion_model", None)
        if diffusion is None:
            raise ModelError("Forge has no UNet loaded (forge_objects.unet.model.diffusion_model); load an SD 1.x "
                             "/ 2.x / XL checkpoint")
        fsm = getattr(vae, "first_stage_model", None)
        if text_fn is None and not hasattr(clip, "encode_from_tokens"):
            raise ModelError("no way to encode text: give the model's get_learned_conditioning or an old-style CLIP")
        prediction, alphas = read_sampling(base)
        scale, shift = latent_scaling(base, fsm)
        self.patcher, self.clip, self.vae_obj, self.base = unet, clip, vae, base
        self.text_fn, self.load, self.sdxl_size = text_fn, load, int(sdxl_size)
        self._blocks = None
        self._ensure_loaded()
        dtype = getattr(base, "computation_dtype", None) or getattr(base, "manual_cast_dtype", None)
        super().__init__(diffusion, fsm, getattr(clip, "cond_stage_model", None), alphas_cumprod=alphas,
                         prediction_type=prediction, latent_scale=scale, latent_shift=shift, family=family,
                         device=getattr(unet, "load_device", None), dtype=dtype,
                         vae_device=getattr(vae, "device", None), vae_dtype=getattr(vae, "vae_dtype", None))

    @classmethod
    def from_sd_model(cls, sd_model, load=None, sdxl_size: int = 1024) -> "ForgeHost":
        fo = getattr(sd_model, "forge_objects", None)
        if fo is None:
            raise ModelError("the loaded model has no forge_objects; load an SD 1.x / 2.x / XL checkpoint")
        return cls(fo.unet, fo.clip, fo.vae, text_fn=getattr(sd_model, "get_learned_conditioning", None),
                   load=load if load is not None else forge_loader(), family=model_family(sd_model),
                   sdxl_size=sdxl_size)

    def _ensure_loaded(self) -> None:
        """Ask Forge's memory manager for UNet and VAE together (a text-encoder load may have evicted them)."""
        if self.load is not None:
            patchers = [self.patcher] + [p for p in [getattr(self.vae_obj, "patcher", None)] if p is not None]
            self.load(patchers)

    def _unet_kwargs(self) -> dict:
        return {"transformer_options": {}}

    def _unet(self, latents, t, cond, weights):
        if self._blocks is None:
            self._blocks = transformer_blocks(self.unet)
        for block in self._blocks:  # again each call: a memory session may have restored an earlier mark
            if not getattr(block.__dict__.get("forward"), MARK, False):
                self.set_borrowed_attr(block, "forward", out_of_place_forward(block))
        return super()._unet(latents, t, cond, weights)

    def _encode_text(self, prompts):
        try:
            if self.text_fn is not None:
                return self.conditioning_from(self.text_fn(SizedPrompts(prompts, self.sdxl_size, self.sdxl_size)))
            return self._encode_with_clip(prompts)
        finally:
            self._ensure_loaded()

    def _encode_with_clip(self, prompts) -> Conditioning:
        ctxs, pools = [], []
        for p in prompts:
            ctx, pooled = self.clip.encode_from_tokens(self.clip.tokenize(p), return_pooled=True)
            ctxs.append(self.plain(ctx).to(self.device))
            pools.append(None if pooled is None else self.plain(pooled).to(self.device))
        n = max(c.shape[1] for c in ctxs)  # long prompts come back as several 77-token chunks
        ctxs = [torch.cat([c, c[:, -1:].expand(-1, n - c.shape[1], -1)], 1) for c in ctxs]
        vector = None
        if self.is_xl:
            if any(p is None for p in pools) or not hasattr(self.base, "encode_adm"):
                raise ModelError("this SDXL model needs its conditioner's vector; pass get_learned_conditioning")
            s = self.sdxl_size
            vector = torch.cat([self.plain(self.base.encode_adm(pooled_output=p, width=s, height=s, crop_w=0,
                                                                crop_h=0, target_width=s, target_height=s))
                                for p in pools]).to(self.device, self.dtype)
        return Conditioning(torch.cat(ctxs).to(self.dtype), vector)

    def describe(self) -> dict:
        return {**super().describe(), "host": "forge"}
