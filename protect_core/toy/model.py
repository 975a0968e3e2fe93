"""Loading the shipped (or a freshly trained) toy model and its style classifier, safetensors only, offline.

The folder (``protect_core/assets/toy`` by default) is a diffusers Stable Diffusion pipeline folder, so any code
that loads diffusers folders (``stylecloak --model protect_core/assets/toy``) can use it too, plus
``classifier.safetensors``, ``config.json`` (the toy world: native size, styles, held-out style) and
``train_log.json``.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from ..errors import ModelError
from . import configs
from .classifier import StyleClassifier, StyleNet

os.environ.setdefault("HF_HUB_OFFLINE", "1")

_NEEDED = ("model_index.json", "unet/config.json", "vae/config.json", "text_encoder/config.json",
           "tokenizer/tokenizer_config.json", "scheduler/scheduler_config.json", configs.CONFIG_FILE)


def _folder(path) -> Path:
    return Path(path).expanduser() if path is not None else configs.ASSET_DIR


def toy_available(path=None) -> bool:
    """True when ``path`` (default: the shipped assets) holds a complete toy model and classifier."""
    p = _folder(path)
    return all((p / f).is_file() for f in (*_NEEDED, configs.WEIGHT_FILES["classifier"]))


def toy_world(path=None) -> dict:
    """The toy world's description: ``size`` (native px), ``styles``, ``held_out``, ``trained``, prompt template."""
    p = _folder(path)
    f = p / configs.CONFIG_FILE
    if not f.is_file():
        raise ModelError(f"{p}: no toy model here (missing {configs.CONFIG_FILE}); train one with "
                         f"`python -m protect_core.toy.train --out {p}`")
    return json.loads(f.read_text())


def build_toy_host(device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32, path=None,
                   family: str = "toy"):
    """The toy model as a :class:`~protect_core.backends.diffusers_host.DiffusersHost` (family ``toy``).

    Native size is ``toy_world()["size"]`` (32 px for the shipped model; ``unet.config.sample_size * 8``).
    """
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    from ..backends.diffusers_host import DiffusersHost
    from ..backends.loading import quiet_libraries

    p = _folder(path)
    missing = [f for f in _NEEDED if not (p / f).is_file()]
    if missing:
        raise ModelError(f"{p}: incomplete toy model folder, missing {', '.join(missing)}")
    kw = dict(local_files_only=True, use_safetensors=True)
    try:
        with quiet_libraries():
            unet = UNet2DConditionModel.from_pretrained(str(p / "unet"), torch_dtype=dtype, **kw)
            vae = AutoencoderKL.from_pretrained(str(p / "vae"), torch_dtype=dtype, **kw)
            te = CLIPTextModel.from_pretrained(str(p / "text_encoder"), dtype=dtype, **kw)
            tok = CLIPTokenizer.from_pretrained(str(p / "tokenizer"), local_files_only=True)
            sched = DDIMScheduler.from_pretrained(str(p / "scheduler"), local_files_only=True)
    except Exception as e:  # diffusers/transformers raise many types; the user needs the path and the reason
        raise ModelError(f"{p}: could not load the toy model: {e}") from e
    for m in (unet, vae, te):
        m.to(device).eval().requires_grad_(False)
    host = DiffusersHost(unet, vae, te, tok, sched.alphas_cumprod, sched.config.get("prediction_type", "epsilon"),
                         family=family)
    host._alphas = host._alphas.to(host.device)
    return host


def load_style_classifier(path=None) -> StyleClassifier:
    """The toy world's judge: ``.probs(images01) -> (B, len(.styles))``; accepts any image size."""
    from safetensors.torch import load_file

    p = _folder(path)
    world = toy_world(p)
    f = p / configs.WEIGHT_FILES["classifier"]
    if not f.is_file():
        raise ModelError(f"{p}: missing {f.name}")
    net = StyleNet(len(world["styles"]), width=int(world["classifier"]["width"]))
    try:
        net.load_state_dict(load_file(str(f)))
    except RuntimeError as e:
        raise ModelError(f"{f}: classifier weights do not match its config: {e}") from e
    return StyleClassifier(net, world["styles"], int(world["classifier"]["size"]), world.get("held_out"))
