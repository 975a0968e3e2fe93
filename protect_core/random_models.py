"""Full-size SD 1.5 / SD 2.x / SDXL architectures with seeded random weights, for performance work.

Built from the shipped configs (:mod:`protect_core.configs`) on the meta device, then materialised once on the
target device and filled with a cheap seeded init: biases 0, 1-D (norm) weights 1, embeddings N(0, 0.02), other
weights N(0, 1/fan_in). No per-layer initialisers run, so SD 1.5 builds in seconds on CPU. ``device="meta"`` gives
the structure only (parameter counts, shapes) without allocating memory. The outputs are numerically sane but mean
nothing: never use these models to judge protection quality. Prompts go through the tiny tokenizer.
"""
from __future__ import annotations

import torch

from .configs import KINDS, assemble_pipeline, empty_modules, fix_buffers, read_bundle


def init_random_(module: torch.nn.Module, generator: torch.Generator) -> None:
    """Fill every parameter of ``module`` in place (name order) with the cheap init described above."""
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.endswith("bias"):
                p.zero_()
            elif p.ndim == 1:
                p.fill_(1.0)
            elif "embedding" in name and p.ndim == 2:
                p.normal_(0.0, 0.02, generator=generator)
            else:
                fan_in = p[0].numel()
                p.normal_(0.0, fan_in ** -0.5, generator=generator)


def build_random_modules(kind: str = "sd15", dtype: torch.dtype = torch.float32, device="cpu",
                         seed: int = 0) -> tuple[dict, dict]:
    """``(bundle, {"unet", "vae", "text_encoder"[, "text_encoder_2"]})`` with random weights on ``device``."""
    if kind not in KINDS:
        raise ValueError(f"unknown model kind {kind!r}; choose from {', '.join(KINDS)}")
    from .backends.loading import quiet_libraries

    bundle = read_bundle(kind)
    modules = empty_modules(bundle)
    device = torch.device(device)
    for i, (name, m) in enumerate(modules.items()):
        with quiet_libraries():
            m.to(dtype)
        if device.type != "meta":
            m.to_empty(device=device)
            gen = torch.Generator(device=device).manual_seed(seed * 1000 + i)
            init_random_(m, gen)
            fix_buffers(m)
        m.eval().requires_grad_(False)
    return bundle, modules


def build_random_pipeline(kind: str = "sd15", dtype: torch.dtype = torch.float32, device="cpu", seed: int = 0):
    """A diffusers pipeline of the full ``kind`` architecture (``sd15``, ``sd2``, ``sd2-v``, ``sdxl``)."""
    from .tiny_models import load_tiny_tokenizer

    bundle, modules = build_random_modules(kind, dtype, device, seed)
    tokenizers = {}
    for part in ("tokenizer", "tokenizer_2"):
        if part in bundle:
            tok = load_tiny_tokenizer()
            tok.pad_token = bundle[part].get("pad_token", tok.pad_token)
            tokenizers[part] = tok
    pipe = assemble_pipeline(bundle, modules, tokenizers)
    if torch.device(device).type != "meta":
        pipe.scheduler.alphas_cumprod = pipe.scheduler.alphas_cumprod.float()
    return pipe


def build_random_host(kind: str = "sd15", dtype: torch.dtype = torch.float32, device="cpu", seed: int = 0):
    """:func:`build_random_pipeline` wrapped as a :class:`~protect_core.host.HostModel` (family ``<kind>-random``)."""
    from .backends.diffusers_host import DiffusersHost

    pipe = build_random_pipeline(kind, dtype, device, seed)
    return DiffusersHost.from_pipeline(pipe, family=f"{kind}-random")
