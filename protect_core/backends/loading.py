"""Turning a user's ``--model`` into a :class:`~protect_core.host.HostModel`, fully offline.

Accepted: nothing (the embedded default model), a tiny flavour name (``tiny``, ``tiny-v``, ``tiny-xl``), or a
diffusers pipeline folder (``model_index.json`` inside). Nothing is ever fetched from a hub.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

from ..errors import ModelError

DEFAULT_MODEL = "tiny"

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _dtype(name: str | torch.dtype | None) -> torch.dtype:
    if isinstance(name, torch.dtype):
        return name
    table = {None: torch.float32, "fp32": torch.float32, "float32": torch.float32, "fp16": torch.float16,
             "float16": torch.float16, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16}
    if name not in table:
        raise ValueError(f"unknown dtype {name!r}; use fp32, fp16 or bf16")
    return table[name]


def load_host(model: str | None = None, device: str = "cpu", dtype: str | torch.dtype | None = None, **kw):
    """Load ``model`` (see module doc) onto ``device`` and wrap it for the engine."""
    from ..tiny_models import FLAVOURS, build_tiny_host
    from .diffusers_host import DiffusersHost

    dt = _dtype(dtype)
    spec = model or DEFAULT_MODEL
    if spec in FLAVOURS:
        host = build_tiny_host(spec, seed=kw.get("seed", 0), dtype=dt)
        _to(host, device)
        return host
    path = Path(spec).expanduser()
    if not path.exists():
        raise ModelError(f"{spec}: no such model file or folder (expected a diffusers folder, a .safetensors "
                         f"checkpoint, or one of {', '.join(FLAVOURS)})")
    if path.is_dir():
        return _to(load_diffusers_folder(path, dt), device)
    raise ModelError(f"{path}: unsupported model file type {path.suffix!r}")


def load_diffusers_folder(path: Path, dtype: torch.dtype):
    from diffusers import DiffusionPipeline

    from .diffusers_host import DiffusersHost

    if not (path / "model_index.json").exists():
        raise ModelError(f"{path}: not a diffusers pipeline folder (no model_index.json)")
    try:
        pipe = DiffusionPipeline.from_pretrained(str(path), torch_dtype=dtype, local_files_only=True,
                                                 use_safetensors=True, safety_checker=None)
    except Exception as e:  # diffusers raises many types; the user needs the path and the reason
        raise ModelError(f"{path}: could not load diffusers pipeline: {e}") from e
    for name in ("unet", "vae", "text_encoder", "text_encoder_2"):
        m = getattr(pipe, name, None)
        if m is not None:
            m.eval().requires_grad_(False)
    return DiffusersHost.from_pipeline(pipe)


def _to(host, device):
    for m in host.host_modules().values():
        m.to(device)
    host._alphas = host._alphas.to(device)
    return host
