"""Write a CLIP vision model with random weights, shaped like OpenAI's ViT-L/14, for tests without downloads.

    python tools/make_random_clip_vision.py OUT.safetensors            # one file, for ComfyUI's models/clip_vision/
    python tools/make_random_clip_vision.py OUT_DIR --folder           # a transformers folder (CLI --clip, A1111 tab)

ComfyUI's *Load CLIP Vision* recognises the file by its keys and shapes (24 layers of width 1024, 257 positions:
ViT-L/14 at 224 px), so the shape is the real one (~304 M parameters; 0.6 GB in fp16). The embeddings it gives mean
nothing; it exists so that the Mimicry Test's ``clip_vision`` judge can be run end to end in a real host offline.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

VIT_L14 = dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
               patch_size=14, image_size=224, projection_dim=768, hidden_act="quick_gelu")


def build(seed: int = 0):
    import torch
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(seed)
    return CLIPVisionModelWithProjection(CLIPVisionConfig(**VIT_L14)).eval()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", help="a .safetensors file, or a folder with --folder")
    p.add_argument("--folder", action="store_true", help="write a transformers folder (config.json + weights)")
    p.add_argument("--dtype", choices=("fp16", "fp32"), default="fp16")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    out = Path(args.out)
    if not args.folder and out.suffix != ".safetensors":
        p.error("OUT must end in .safetensors (or pass --folder)")
    import torch
    from safetensors.torch import save_file

    model = build(args.seed).to({"fp16": torch.float16, "fp32": torch.float32}[args.dtype])
    if args.folder:
        model.save_pretrained(out, safe_serialization=True)
    else:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(out.name + ".part")
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp))
        tmp.replace(out)
    print(f"wrote {out} ({sum(p.numel() for p in model.parameters()) / 1e6:.0f} M parameters, {args.dtype})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
