"""Per-step training cost of candidate sizes for the faithful measurement world (issue "toy world v2"), so the
size is chosen by measurement: SD 1.5-topology VAEs (x8 at 128 px, x4 at 64 px, both a 16 x 16 x 4 latent) and
UNets (3 CrossAttnDown + Down, mid with attention, Up + 3 CrossAttnUp, 2 layers per block: SD 1.5's 16
cross-attention layers) at several widths, with random data, AdamW, 1 torch thread (as the background training
runs). Prints JSON: seconds per step (mean of 3 after a warm-up step) and parameter count.

    python benchmarks/world_cost.py [vae] [unet]
"""
from __future__ import annotations

import json
import sys
import time

import torch
import torch.nn.functional as F


def vae(blocks, lpb: int = 2):
    from diffusers import AutoencoderKL

    return AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=lpb,
                         block_out_channels=blocks, norm_num_groups=16,
                         down_block_types=("DownEncoderBlock2D",) * len(blocks),
                         up_block_types=("UpDecoderBlock2D",) * len(blocks))


def unet(blocks, heads: int = 8):
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(sample_size=16, in_channels=4, out_channels=4, layers_per_block=2,
                                block_out_channels=blocks,
                                down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                                up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
                                mid_block_type="UNetMidBlock2DCrossAttn", cross_attention_dim=64,
                                attention_head_dim=heads, norm_num_groups=16)


def seconds_per_step(model, make, loss_fn, n: int = 3) -> float:
    opt = torch.optim.AdamW(model.parameters(), 1e-4)
    ts = []
    for _ in range(n + 1):
        t = time.perf_counter()
        loss = loss_fn(model, *make())
        opt.zero_grad()
        loss.backward()
        opt.step()
        ts.append(time.perf_counter() - t)
    return sum(ts[1:]) / n


def _params(m) -> float:
    return round(sum(p.numel() for p in m.parameters()) / 1e6, 2)


def main() -> None:
    torch.set_num_threads(1)
    which = sys.argv[1:] or ["vae", "unet"]
    res = {}
    if "vae" in which:
        for name, blocks, size in [("x8@128 (32,64,64,64)", (32, 64, 64, 64), 128),
                                   ("x8@128 (16,32,64,64)", (16, 32, 64, 64), 128),
                                   ("x4@64 (32,64,64)", (32, 64, 64), 64),
                                   ("x4@64 (32,32,64)", (32, 32, 64), 64)]:
            m = vae(blocks).train()

            def lf(m, x):
                return F.mse_loss(m.decode(m.encode(x).latent_dist.sample()).sample, x)
            s = seconds_per_step(m, lambda: (torch.rand(8, 3, size, size) * 2 - 1,), lf)
            res[f"vae {name} batch 8"] = {"s_per_step": round(s, 2), "params_M": _params(m)}
    if "unet" in which:
        for blocks in [(32, 32, 64, 64), (32, 64, 64, 64), (32, 64, 128, 128)]:
            m = unet(blocks).train()

            def lf(m, z, t, c):
                return F.mse_loss(m(z, t, c).sample, z)
            s = seconds_per_step(m, lambda: (torch.randn(32, 4, 16, 16), torch.randint(0, 1000, (32,)),
                                             torch.randn(32, 77, 64)), lf)
            res[f"unet {blocks} batch 32 16x16"] = {"s_per_step": round(s, 2), "params_M": _params(m)}
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
