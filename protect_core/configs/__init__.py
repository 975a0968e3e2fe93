"""The shipped offline model configs, and empty (meta-device) models built from them.

Each folder (``sd15``, ``sd2``, ``sd2-v``, ``sdxl``) is a diffusers pipeline layout without weights:
``model_index.json``, ``unet/config.json``, ``vae/config.json``, ``text_encoder[_2]/config.json``,
``scheduler/scheduler_config.json`` and ``tokenizer[_2]/tokenizer_config.json``. The CLIP BPE vocabulary itself is not
shipped (it cannot be downloaded here); :mod:`protect_core.backends.loading` pairs these configs with a real tokenizer
folder when one is available and with the tiny tokenizer otherwise.

A *config bundle* is a plain dict ``{"family", "pipeline", "unet", "vae", "text_encoder", ["text_encoder_2"],
"scheduler", "tokenizer", ["tokenizer_2"]}`` of JSON-able dicts: read from a folder here, or taken from a live
pipeline (:func:`bundle_from_pipeline`) so it can travel inside a single-file checkpoint's metadata.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

CONFIG_ROOT = Path(__file__).resolve().parent
KINDS = ("sd15", "sd2", "sd2-v", "sdxl")
_FILES = {"unet": "unet/config.json", "vae": "vae/config.json", "text_encoder": "text_encoder/config.json",
          "text_encoder_2": "text_encoder_2/config.json", "scheduler": "scheduler/scheduler_config.json",
          "tokenizer": "tokenizer/tokenizer_config.json", "tokenizer_2": "tokenizer_2/tokenizer_config.json"}


def config_dir(kind: str) -> Path:
    if kind not in KINDS:
        raise ValueError(f"unknown config kind {kind!r}; choose from {', '.join(KINDS)}")
    return CONFIG_ROOT / kind


def read_bundle(kind: str | Path) -> dict:
    """The config bundle of a shipped kind (``sd15`` ...) or of any diffusers pipeline folder (weights not read)."""
    folder = config_dir(kind) if str(kind) in KINDS else Path(kind)
    if not (folder / "model_index.json").is_file():
        raise ValueError(f"{folder}: not a config folder (no model_index.json); use a diffusers pipeline folder "
                         f"or one of {', '.join(KINDS)}")
    index = json.loads((folder / "model_index.json").read_text())
    bundle = {"pipeline": index["_class_name"]}
    for part, rel in _FILES.items():
        if (folder / rel).exists():
            bundle[part] = json.loads((folder / rel).read_text())
    for part in ("tokenizer", "tokenizer_2"):
        if part in bundle:
            pad = bundle[part].get("pad_token")
            bundle[part]["pad_token"] = pad.get("content") if isinstance(pad, dict) else pad
            if (folder / part / "vocab.json").is_file() and (folder / part / "merges.txt").is_file():
                bundle[part]["vocab_dir"] = str(folder / part)
    if str(kind) in KINDS:
        bundle["family"] = "sd2" if kind == "sd2-v" else str(kind)
    elif bundle["pipeline"] == "StableDiffusionXLPipeline":
        bundle["family"] = "sdxl"
    else:
        bundle["family"] = {768: "sd15", 1024: "sd2"}.get(bundle["unet"].get("cross_attention_dim"), "custom")
    return bundle


def _plain(cfg) -> dict:
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dict(cfg).items()
            if not k.startswith("_") or k == "_class_name"}


def bundle_from_pipeline(pipe, family: str) -> dict:
    """The config bundle describing a live diffusers pipeline (no weights)."""
    bundle = {"family": family, "pipeline": type(pipe).__name__}
    for part in ("unet", "vae"):
        bundle[part] = _plain(getattr(pipe, part).config)
    for part in ("text_encoder", "text_encoder_2"):
        te = getattr(pipe, part, None)
        if te is not None:
            cfg = te.config.to_dict()
            cfg["architectures"] = [type(te).__name__]
            bundle[part] = {k: v for k, v in cfg.items() if not k.startswith("_") and k != "transformers_version"}
    bundle["scheduler"] = {**_plain(pipe.scheduler.config), "_class_name": type(pipe.scheduler).__name__}
    for part in ("tokenizer", "tokenizer_2"):
        tok = getattr(pipe, part, None)
        if tok is not None:
            bundle[part] = {"model_max_length": int(tok.model_max_length), "pad_token": str(tok.pad_token)}
    return bundle


# ---- empty models --------------------------------------------------------------------------------------------
def _text_class(cfg: dict):
    import transformers

    name = (cfg.get("architectures") or ["CLIPTextModel"])[0]
    if name not in ("CLIPTextModel", "CLIPTextModelWithProjection"):
        raise ValueError(f"unsupported text encoder class {name!r}")
    return getattr(transformers, name)


def empty_modules(bundle: dict) -> dict[str, torch.nn.Module]:
    """UNet, VAE and text encoder(s) of ``bundle`` on the meta device: structure only, no memory, no init cost."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig

    mods = {}
    with torch.device("meta"):
        mods["unet"] = UNet2DConditionModel.from_config(bundle["unet"])
        mods["vae"] = AutoencoderKL.from_config(bundle["vae"])
        for part in ("text_encoder", "text_encoder_2"):
            if part in bundle:
                cfg = {k: v for k, v in bundle[part].items() if k != "architectures"}
                mods[part] = _text_class(bundle[part])(CLIPTextConfig(**cfg))
    return mods


def fix_buffers(module: torch.nn.Module) -> None:
    """Recompute the non-persistent buffers a checkpoint does not carry (CLIP's ``position_ids``), on the device of
    the module's parameters."""
    device = next((p.device for p in module.parameters() if p.device.type != "meta"), torch.device("cpu"))
    for name, buf in list(module.named_buffers()):
        owner_name, _, attr = name.rpartition(".")
        owner = module.get_submodule(owner_name) if owner_name else module
        if attr == "position_ids":
            owner.register_buffer(attr, torch.arange(buf.shape[-1], device=device).expand(1, -1),
                                  persistent=False)
        else:
            raise ValueError(f"do not know how to initialise buffer {name!r}")


def build_scheduler(cfg: dict):
    import diffusers

    cfg = dict(cfg)
    cls = getattr(diffusers, cfg.pop("_class_name", "DDIMScheduler"))
    return cls.from_config(cfg)


def assemble_pipeline(bundle: dict, modules: dict, tokenizers: dict):
    """A diffusers pipeline object from ready modules (``unet``, ``vae``, ``text_encoder[_2]``) and tokenizers."""
    import diffusers

    parts = dict(modules, scheduler=build_scheduler(bundle["scheduler"]), **tokenizers)
    if bundle["pipeline"] == "StableDiffusionXLPipeline":
        return diffusers.StableDiffusionXLPipeline(**parts)
    return diffusers.StableDiffusionPipeline(**parts, safety_checker=None, feature_extractor=None,
                                             requires_safety_checker=False)
