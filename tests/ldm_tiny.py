"""Tiny ldm-shaped Stable Diffusion models and stand-ins for A1111's and Forge's model objects (tests only).

:class:`TinyLdmUNet` re-arranges the very modules of a tiny diffusers UNet (``protect_core.tiny_models``) into the
original Stable Diffusion layout -- ``input_blocks`` (``.0`` = conv_in, a downsampler closing each level),
``middle_block``, ``output_blocks``, ``time_embed``, ``label_emb`` (SDXL) and ``forward(x, timesteps, context, y)``
-- so module names read ``input_blocks.1.1.transformer_blocks.0.attn2.to_k`` while computing exactly what the
diffusers UNet computes. Tests can therefore check an ldm adapter against the diffusers adapter number for number,
and its canonical layer names against the diffusers names tensor for tensor.

:func:`a1111_model` builds an object shaped like A1111's ``shared.sd_model`` (LatentDiffusion for SD1/SD2, the
SDXL DiffusionEngine with a dict conditioning); :func:`forge_model` one shaped like Forge's (``forge_objects`` with
ModelPatcher-like unet/vae/clip, every weight created under ``torch.inference_mode()``, and transformer blocks that
update their residual stream in place, ``x += n``, as Forge's do, while its UNet runs).
"""
from __future__ import annotations

import threading

import pytest
import torch
from diffusers.models.attention import BasicTransformerBlock
from torch import nn

from protect_core.tiny_models import build_tiny_pipeline


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One torch thread per test module: on a shared, loaded 2-core machine two OpenMP threads run these tiny models
    up to 20x slower. Import it into a test module to use it (autouse)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


class LdmSequential(nn.ModuleList):
    """One entry of ``input_blocks``/``output_blocks``: a ResBlock, then a spatial transformer, then a resampler."""

    def forward(self, x, emb, context, output_shape=None):
        from diffusers.models.resnet import ResnetBlock2D
        from diffusers.models.transformers.transformer_2d import Transformer2DModel
        from diffusers.models.upsampling import Upsample2D

        for layer in self:
            if isinstance(layer, ResnetBlock2D):
                x = layer(x, emb)
            elif isinstance(layer, Transformer2DModel):
                x = layer(x, encoder_hidden_states=context, return_dict=False)[0]
            elif isinstance(layer, Upsample2D):
                x = layer(x, output_size=output_shape)
            else:
                x = layer(x)
        return x


_FORGE_STYLE = threading.local()


class ForgeStyleBlock(BasicTransformerBlock):
    """A diffusers transformer block that, inside a Forge-style :class:`TinyLdmUNet`, adds attention and
    feed-forward outputs to its residual stream in place after LayerNorm saved it, as Forge's BasicTransformerBlock
    does (same numbers; a gradient through it fails unless the adapter copes). Elsewhere: the diffusers forward."""

    def forward(self, hidden_states, attention_mask=None, encoder_hidden_states=None, **kwargs):
        if not getattr(_FORGE_STYLE, "on", False):
            return super().forward(hidden_states, attention_mask, encoder_hidden_states, **kwargs)
        x = hidden_states
        x += self.attn1(self.norm1(x))
        x += self.attn2(self.norm2(x), encoder_hidden_states=encoder_hidden_states)
        x += self.ff(self.norm3(x))
        return x


class TinyLdmUNet(nn.Module):
    """An ldm-layout UNet made of the modules of a diffusers ``UNet2DConditionModel`` (shared, not copied)."""

    def __init__(self, unet, forge_style: bool = False):
        super().__init__()
        cfg = unet.config
        self.model_channels = cfg.block_out_channels[0]
        self.channel_mult = tuple(c // self.model_channels for c in cfg.block_out_channels)
        self.num_res_blocks = cfg.layers_per_block
        self.in_channels = cfg.in_channels
        self.flip, self.shift = cfg.flip_sin_to_cos, cfg.freq_shift
        self.forge_style = forge_style
        te = unet.time_embedding
        self.time_embed = nn.Sequential(te.linear_1, nn.SiLU(), te.linear_2)
        self.num_classes = None
        if cfg.addition_embed_type == "text_time":
            ae = unet.add_embedding
            self.label_emb = nn.Sequential(nn.Sequential(ae.linear_1, nn.SiLU(), ae.linear_2))
            self.num_classes = "sequential"
        blocks = [LdmSequential([unet.conv_in])]
        for down in unet.down_blocks:
            for res, attn in zip(down.resnets, down.attentions):
                blocks.append(LdmSequential([res, attn]))
            if down.downsamplers is not None:
                blocks.append(LdmSequential([down.downsamplers[0]]))
        self.input_blocks = nn.ModuleList(blocks)
        mid = unet.mid_block
        self.middle_block = LdmSequential([mid.resnets[0], mid.attentions[0], mid.resnets[1]])
        outs = []
        for up in unet.up_blocks:
            pairs = list(zip(up.resnets, up.attentions))
            for i, (res, attn) in enumerate(pairs):
                mods = [res, attn]
                if i == len(pairs) - 1 and up.upsamplers is not None:
                    mods.append(up.upsamplers[0])
                outs.append(LdmSequential(mods))
        self.output_blocks = nn.ModuleList(outs)
        self.out = nn.Sequential(unet.conv_norm_out, nn.SiLU(), unet.conv_out)

    def forward(self, x, timesteps=None, context=None, y=None, control=None, transformer_options=None, **kwargs):
        if self.forge_style:  # Forge's UNet writes into the dict it is given: each call needs its own
            assert isinstance(transformer_options, dict), "Forge's UNet needs transformer_options"
            transformer_options["original_shape"] = list(x.shape)
        was, _FORGE_STYLE.on = getattr(_FORGE_STYLE, "on", False), self.forge_style
        try:
            return self._forward(x, timesteps, context, y)
        finally:
            _FORGE_STYLE.on = was

    def _forward(self, x, timesteps, context, y):
        from diffusers.models.embeddings import get_timestep_embedding

        assert (y is not None) == (self.num_classes is not None), "y must be given exactly for SDXL-type UNets"
        t = get_timestep_embedding(timesteps, self.model_channels, flip_sin_to_cos=self.flip,
                                   downscale_freq_shift=self.shift)
        emb = self.time_embed(t.to(x.dtype))
        if y is not None:
            emb = emb + self.label_emb(y.to(x.dtype))
        hs, h = [], x
        for block in self.input_blocks:
            h = block(h, emb, context)
            hs.append(h)
        h = self.middle_block(h, emb, context)
        for block in self.output_blocks:
            h = torch.cat([h, hs.pop()], dim=1)
            h = block(h, emb, context, hs[-1].shape[-2:] if hs else None)
        return self.out(h)


# ---------------------------------------------------------------------------------------------------- text
def _tokens(tokenizer, prompts):
    return tokenizer(list(prompts), padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                     return_tensors="pt").input_ids


def encode_prompts(pipe, prompts):
    """(context, pooled-or-None) exactly as the diffusers adapter computes them."""
    if getattr(pipe, "text_encoder_2", None) is None:
        return pipe.text_encoder(_tokens(pipe.tokenizer, prompts))[0], None
    o1 = pipe.text_encoder(_tokens(pipe.tokenizer, prompts), output_hidden_states=True)
    o2 = pipe.text_encoder_2(_tokens(pipe.tokenizer_2, prompts), output_hidden_states=True)
    return torch.cat([o1.hidden_states[-2], o2.hidden_states[-2]], dim=-1), o2[0]


def size_vector(pipe, pooled, height, width, crop=(0, 0)):
    """SDXL's y: pooled text + sinusoidal embeddings of (original size, crop, target size)."""
    ids = torch.tensor([height, width, crop[0], crop[1], height, width], dtype=torch.float32)
    emb = pipe.unet.add_time_proj(ids).reshape(1, -1).to(pooled.dtype)
    return torch.cat([pooled, emb.expand(pooled.shape[0], -1)], dim=1)


# ---------------------------------------------------------------------------------------------------- A1111
class _Wrapper(nn.Module):
    def __init__(self, unet):
        super().__init__()
        self.diffusion_model = unet


class A1111Model(nn.Module):
    """The parts of A1111's ``shared.sd_model`` the adapter reads (LatentDiffusion / SDXL DiffusionEngine)."""

    def __init__(self, pipe, flavour):
        super().__init__()
        self.pipe = pipe
        self.model = _Wrapper(TinyLdmUNet(pipe.unet))
        self.first_stage_model = pipe.vae
        self.is_sdxl = flavour == "tiny-xl"
        self.is_sd2, self.is_sd1 = flavour == "tiny-v", flavour == "tiny"
        text = nn.ModuleDict({"clip_l": pipe.text_encoder})
        if self.is_sdxl:
            text["clip_g"] = pipe.text_encoder_2
            self.conditioner = text
        self.cond_stage_model = text
        self.parameterization = "v" if flavour == "tiny-v" else "eps"
        self.register_buffer("alphas_cumprod", pipe.scheduler.alphas_cumprod.float().clone())
        self.scale_factor = float(pipe.vae.config.scaling_factor)
        self.calls = []

    def get_learned_conditioning(self, prompts):
        self.calls.append(prompts)
        ctx, pooled = encode_prompts(self.pipe, prompts)
        if not self.is_sdxl:
            return ctx
        h = getattr(prompts, "height", 1024) or 1024
        w = getattr(prompts, "width", 1024) or 1024
        return {"crossattn": ctx, "vector": size_vector(self.pipe, pooled, h, w)}


def a1111_model(flavour: str = "tiny", seed: int = 0):
    """(A1111-shaped model, the diffusers pipeline whose modules it shares)."""
    pipe = build_tiny_pipeline(flavour, seed)
    return A1111Model(pipe, flavour), pipe


# ---------------------------------------------------------------------------------------------------- Forge
class Patcher:
    """ModelPatcher-like: ``model``, ``load_device``, ``offload_device``."""

    def __init__(self, model, device="cpu"):
        self.model = model
        self.load_device = self.offload_device = self.current_device = torch.device(device)


class EPS:
    pass


class V_PREDICTION(EPS):
    pass


class Predictor(nn.Module):
    """New Forge's ``predictor``: ``prediction_type``, ``sigmas`` and ``alphas_cumprod`` buffers."""

    def __init__(self, alphas_cumprod, prediction_type):
        super().__init__()
        self.prediction_type = prediction_type
        self.register_buffer("alphas_cumprod", alphas_cumprod.float().clone())
        self.register_buffer("sigmas", ((1 - self.alphas_cumprod) / self.alphas_cumprod).sqrt())


def _old_style_sampling(alphas_cumprod, v: bool):
    """Old Forge / ComfyUI ``model_sampling``: its class says the parameterisation; only ``sigmas`` stored."""
    cls = type("ModelSamplingAdvanced", (V_PREDICTION if v else EPS, nn.Module), {})
    ms = cls()
    nn.Module.__init__(ms)
    ms.register_buffer("sigmas", ((1 - alphas_cumprod) / alphas_cumprod).sqrt().float())
    return ms


class KModel(nn.Module):
    def __init__(self, pipe, flavour, style):
        super().__init__()
        self.diffusion_model = TinyLdmUNet(pipe.unet, forge_style=True)
        self.pipe = pipe
        ac = pipe.scheduler.alphas_cumprod
        if style == "new":
            self.predictor = Predictor(ac, "v_prediction" if flavour == "tiny-v" else "epsilon")
            self.computation_dtype = torch.float32
        else:
            self.model_sampling = _old_style_sampling(ac, flavour == "tiny-v")
            self.adm_channels = 1 if flavour == "tiny-xl" else 0

    def encode_adm(self, pooled_output, width, height, crop_w, crop_h, target_width, target_height):
        return size_vector(self.pipe, pooled_output, height, width, (crop_h, crop_w))


class ForgeVAE:
    def __init__(self, vae):
        self.first_stage_model = vae
        self.patcher = Patcher(vae)
        self.device, self.vae_dtype = torch.device("cpu"), next(vae.parameters()).dtype
        self.downscale_ratio, self.latent_channels = 8, int(vae.config.latent_channels)
        vae.scaling_factor, vae.shift_factor = float(vae.config.scaling_factor), 0.0


class ForgeClip:
    """Old Forge's CLIP (``tokenize`` / ``encode_from_tokens``); new Forge's has only ``cond_stage_model``."""

    def __init__(self, pipe, with_tokens: bool):
        mods = nn.ModuleDict({"clip_l": pipe.text_encoder})
        if getattr(pipe, "text_encoder_2", None) is not None:
            mods["clip_g"] = pipe.text_encoder_2
        self.cond_stage_model, self.patcher, self.pipe = mods, Patcher(mods), pipe
        if with_tokens:
            self.tokenize = lambda text: {"text": text}
            self.encode_from_tokens = self._encode_from_tokens

    def _encode_from_tokens(self, tokens, return_pooled=False):
        ctx, pooled = encode_prompts(self.pipe, [tokens["text"]])
        return (ctx, pooled) if return_pooled else ctx


class ForgeObjects:
    def __init__(self, unet, clip, vae):
        self.unet, self.clip, self.vae, self.clipvision = unet, clip, vae, None


class ForgeModel:
    """Forge's ``shared.sd_model``: ``forge_objects`` and an inference-mode ``get_learned_conditioning``."""

    def __init__(self, pipe, flavour, style):
        self.pipe = pipe
        self.is_sdxl, self.is_sd2, self.is_sd1 = flavour == "tiny-xl", flavour == "tiny-v", flavour == "tiny"
        unet = Patcher(KModel(pipe, flavour, style))
        self.forge_objects = ForgeObjects(unet, ForgeClip(pipe, with_tokens=style == "old"), ForgeVAE(pipe.vae))
        self.first_stage_model = self.cond_stage_model = None  # as in new Forge

    @torch.inference_mode()
    def get_learned_conditioning(self, prompts):
        ctx, pooled = encode_prompts(self.pipe, prompts)
        if not self.is_sdxl:
            return ctx
        h = getattr(prompts, "height", 1024) or 1024
        w = getattr(prompts, "width", 1024) or 1024
        return {"crossattn": ctx, "vector": size_vector(self.pipe, pooled, h, w)}


def forge_model(flavour: str = "tiny", seed: int = 0, style: str = "new", inplace: bool | None = None):
    """(Forge-shaped model with every weight an inference tensor, requires_grad left True, its pipeline).

    ``inplace``: transformer blocks update their residual stream in place as both Forge backends do (default: for
    ``style="new"``; the old style also stands in for ComfyUI, whose blocks add out of place)."""
    with torch.inference_mode():
        pipe = build_tiny_pipeline(flavour, seed)
        if style == "new" if inplace is None else inplace:
            for m in pipe.unet.modules():
                if type(m) is BasicTransformerBlock:
                    m.__class__ = ForgeStyleBlock
        model = ForgeModel(pipe, flavour, style)
        for m in (pipe.unet, pipe.vae, pipe.text_encoder, getattr(pipe, "text_encoder_2", None)):
            if m is not None:
                m.requires_grad_(True)
    assert next(pipe.unet.parameters()).is_inference()
    return model, pipe


def sigmas_to_alphas(sigmas: torch.Tensor) -> torch.Tensor:
    return 1.0 / (sigmas.float() ** 2 + 1.0)

