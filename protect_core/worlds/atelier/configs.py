"""Architecture of the atelier world's model: Stable Diffusion 1.5's topology at reduced width.

* VAE: ``AutoencoderKL`` with SD's block types (DownEncoderBlock2D / UpDecoderBlock2D, 2 resnets per block, a mid
  block with attention), 4 latent channels, x4 (three blocks) at 64 px, so the latent is 16 x 16 x 4. An x8 VAE at
  128 px (SD's four blocks) gives the same latent but cost 1.7-5x more per training step on the 2-core machine
  (``benchmarks/world_cost.py``), which the 2.5-hour training budget could not pay.
* UNet: SD 1.5's blocks (3 CrossAttnDownBlock2D + DownBlock2D, UNetMidBlock2DCrossAttn, UpBlock2D + 3
  CrossAttnUpBlock2D, 2 layers per block) at widths (32, 32, 64, 64): the 16 cross-attention layers exist under SD
  1.5's names (``down_blocks.0.attentions.0.transformer_blocks.0.attn2`` ... ``up_blocks.3.attentions.2...``).
* Text encoder: ``CLIPTextModel`` (hidden 64, 3 layers) with the offline tiny CLIP BPE tokenizer.
* Scheduler: SD's scaled-linear schedule (0.00085-0.012, 1000 steps), epsilon prediction.
"""
from __future__ import annotations

from pathlib import Path

ASSET_DIR = Path(__file__).resolve().parents[2] / "assets" / "atelier"
SIZE = 64
LATENT = 16
TEXT_DIM = 64
CONFIG_FILE = "config.json"
LOG_FILE = "train_log.json"
CLASSIFIER_FILE = "classifier.safetensors"
UNET_WIDTHS = (32, 32, 64, 64)
VAE_WIDTHS = (32, 64, 64)


def vae_config(scaling_factor: float = 1.0) -> dict:
    n = len(VAE_WIDTHS)
    return dict(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, sample_size=SIZE,
                block_out_channels=VAE_WIDTHS, norm_num_groups=16, down_block_types=("DownEncoderBlock2D",) * n,
                up_block_types=("UpDecoderBlock2D",) * n, scaling_factor=float(scaling_factor))


def unet_config() -> dict:
    return dict(sample_size=LATENT, in_channels=4, out_channels=4, layers_per_block=2,
                block_out_channels=UNET_WIDTHS,
                down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
                mid_block_type="UNetMidBlock2DCrossAttn", cross_attention_dim=TEXT_DIM, attention_head_dim=8,
                norm_num_groups=16)


def text_config(vocab_size: int) -> dict:
    return dict(vocab_size=vocab_size, hidden_size=TEXT_DIM, intermediate_size=4 * TEXT_DIM, num_attention_heads=4,
                num_hidden_layers=3, max_position_embeddings=77, projection_dim=TEXT_DIM,
                bos_token_id=vocab_size - 2, eos_token_id=vocab_size - 1, pad_token_id=vocab_size - 1)


def scheduler_config() -> dict:
    return dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                clip_sample=False, set_alpha_to_one=False, steps_offset=1, prediction_type="epsilon")
