"""Write a random-weight Stable Diffusion checkpoint as one ldm-layout ``.safetensors`` file.

The file has exactly the tensor names and shapes of a real SD 1.5 (or SD 2.x / SDXL) single-file checkpoint, so real
ComfyUI / A1111 can load it on CPU in tests without downloading anything; the weights are seeded noise and the images
it makes mean nothing. ``--tiny`` writes the ~1M-parameter tiny model instead (StyleCloak reads it back exactly via
the configs stored in the file's metadata; other tools will not recognise its architecture).

Usage:
    python tools/make_random_checkpoint.py OUT.safetensors [--kind sd15|sd2|sd2-v|sdxl] [--tiny] [--dtype fp16|fp32]
                                           [--seed 0] [--plain]
SD 1.5 in fp16 is about 2.1 GB on disk and needs about as much memory to build.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from protect_core.backends.loading import quiet_libraries  # noqa: E402
from protect_core.configs import KINDS  # noqa: E402
from protect_core.ldm_convert import save_single_file  # noqa: E402
from protect_core.tiny_models import FLAVOURS  # noqa: E402

DTYPES = {"fp16": torch.float16, "fp32": torch.float32, "bf16": torch.bfloat16}


def build(kind: str, dtype: torch.dtype, seed: int):
    if kind in FLAVOURS:
        from protect_core.tiny_models import build_tiny_pipeline

        return build_tiny_pipeline(kind, seed=seed, dtype=dtype)
    from protect_core.random_models import build_random_pipeline

    return build_random_pipeline(kind, dtype=dtype, device="cpu", seed=seed)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out", type=Path, help="output .safetensors path")
    p.add_argument("--kind", default="sd15", choices=KINDS + FLAVOURS, help="architecture (default sd15)")
    p.add_argument("--tiny", action="store_true", help="same as --kind tiny")
    p.add_argument("--dtype", default="fp16", choices=sorted(DTYPES), help="stored precision (default fp16)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--plain", action="store_true", help="omit StyleCloak's config metadata (the file then looks "
                   "exactly like a third-party checkpoint)")
    args = p.parse_args(argv)
    kind = "tiny" if args.tiny else args.kind
    if args.out.suffix != ".safetensors":
        p.error("the output file must end in .safetensors")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    with quiet_libraries():
        pipe = build(kind, DTYPES[args.dtype], args.seed)
    layout = {"sd2": "sd2", "sd2-v": "sd2", "sdxl": "sdxl", "tiny-xl": "sdxl"}.get(kind, "sd1")
    family = kind if kind in FLAVOURS else None
    save_single_file(pipe, args.out, layout=layout, family=family, embed_configs=not args.plain)
    size = args.out.stat().st_size / 2**20
    print(f"wrote {args.out} ({kind}, {args.dtype}, {size:.1f} MiB) in {time.time() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
