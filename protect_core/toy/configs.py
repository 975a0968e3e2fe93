"""Architecture and file layout of the toy model, derived from :mod:`protect_core.tiny_models`.

The toy model *is* the ``tiny`` SD-1.x-shaped model (UNet blocks (32, 64) with cross-attention, x8 VAE, 2-layer
CLIP text encoder, the offline tiny tokenizer, the SD "scaled_linear" schedule, eps prediction); only the native
image size changes (``sample_size``). The VAE ``scaling_factor`` is measured after VAE training (1 / std of the
latents), as Stable Diffusion did.
"""
from __future__ import annotations

from pathlib import Path

from ..tiny_models import scheduler_config, text_config, unet_config, vae_config

ASSET_DIR = Path(__file__).resolve().parent.parent / "assets" / "toy"
CONFIG_FILE = "config.json"
LOG_FILE = "train_log.json"
WEIGHT_FILES = {"unet": "unet.safetensors", "vae": "vae.safetensors", "text_encoder": "text_encoder.safetensors",
                "classifier": "classifier.safetensors"}
DEFAULT_SIZE = 32


def check_size(size: int) -> int:
    if size < 16 or size % 8:
        raise ValueError(f"toy image size must be a multiple of 8 and >= 16, got {size}")
    return int(size)


def toy_unet_config(size: int = DEFAULT_SIZE) -> dict:
    return {**unet_config("tiny"), "sample_size": check_size(size) // 8}


def toy_vae_config(size: int = DEFAULT_SIZE, scaling_factor: float = 1.0) -> dict:
    return {**vae_config(), "sample_size": check_size(size), "scaling_factor": float(scaling_factor)}


def toy_text_config(vocab_size: int) -> dict:
    return text_config(vocab_size)


def toy_scheduler_config() -> dict:
    return scheduler_config("tiny")
