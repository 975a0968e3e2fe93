"""Seeded builders of tiny Stable-Diffusion-architecture models, built offline in about a second.

Three flavours share one shape of code: ``tiny`` (SD 1.x-like, eps-prediction), ``tiny-v`` (SD 2.x-like,
v-prediction) and ``tiny-xl`` (SDXL-like: two text encoders, pooled text and time-id conditioning). They have the
real architecture (UNet with cross-attention in down, mid and up blocks; x8 VAE; CLIP text encoder; a CLIP BPE
tokenizer whose small vocabulary ships in ``assets/tiny_tokenizer``) at about 1M parameters per network, so the
whole engine can be exercised in tests and CI. ``tiny`` is the embedded default model of the command line until a
trained model ships.
"""
from __future__ import annotations

from pathlib import Path

import torch

ASSETS = Path(__file__).resolve().parent / "assets"
TOKENIZER_DIR = ASSETS / "tiny_tokenizer"
FLAVOURS = ("tiny", "tiny-v", "tiny-xl")

TEXT_DIM = 32


def unet_config(flavour: str = "tiny") -> dict:
    cfg = dict(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1,
        block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        mid_block_type="UNetMidBlock2DCrossAttn",
        cross_attention_dim=TEXT_DIM, attention_head_dim=2, norm_num_groups=16,
    )
    if flavour == "tiny-xl":
        cfg.update(cross_attention_dim=2 * TEXT_DIM, addition_embed_type="text_time",
                   addition_time_embed_dim=8, projection_class_embeddings_input_dim=TEXT_DIM + 6 * 8)
    return cfg


def vae_config() -> dict:
    return dict(
        in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1, sample_size=64,
        block_out_channels=(32, 32, 64, 64), norm_num_groups=16,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        scaling_factor=0.18215,
    )


def text_config(vocab_size: int) -> dict:
    return dict(vocab_size=vocab_size, hidden_size=TEXT_DIM, intermediate_size=64, num_attention_heads=4,
                num_hidden_layers=2, max_position_embeddings=77, projection_dim=TEXT_DIM,
                bos_token_id=vocab_size - 2, eos_token_id=vocab_size - 1, pad_token_id=vocab_size - 1)


def scheduler_config(flavour: str = "tiny") -> dict:
    return dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                clip_sample=False, set_alpha_to_one=False, steps_offset=1,
                prediction_type="v_prediction" if flavour == "tiny-v" else "epsilon")


def load_tiny_tokenizer():
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(str(TOKENIZER_DIR), local_files_only=True, model_max_length=77)


def build_tiny_pipeline(flavour: str = "tiny", seed: int = 0, dtype: torch.dtype = torch.float32):
    """A diffusers pipeline object (SD or SDXL class) with seeded random weights."""
    if flavour not in FLAVOURS:
        raise ValueError(f"unknown tiny flavour {flavour!r}; choose from {FLAVOURS}")
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    tok = load_tiny_tokenizer()
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**unet_config(flavour))
    vae = AutoencoderKL(**vae_config())
    te = CLIPTextModel(CLIPTextConfig(**text_config(len(tok))))
    sched = DDIMScheduler(**scheduler_config(flavour))
    parts = dict(unet=unet, vae=vae, text_encoder=te, tokenizer=tok, scheduler=sched)
    if flavour == "tiny-xl":
        from diffusers import StableDiffusionXLPipeline as Pipe

        te2 = CLIPTextModelWithProjection(CLIPTextConfig(**text_config(len(tok))))
        parts.update(text_encoder_2=te2, tokenizer_2=load_tiny_tokenizer())
    else:
        from diffusers import StableDiffusionPipeline as Pipe

        parts.update(safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe = Pipe(**parts)
    for m in (unet, vae, te, parts.get("text_encoder_2")):
        if m is not None:
            m.to(dtype).eval().requires_grad_(False)
    return pipe


def build_tiny_host(flavour: str = "tiny", seed: int = 0, dtype: torch.dtype = torch.float32):
    """The tiny model wrapped as a :class:`~protect_core.host.HostModel`."""
    from .backends.diffusers_host import DiffusersHost

    return DiffusersHost.from_pipeline(build_tiny_pipeline(flavour, seed, dtype), family=flavour)
