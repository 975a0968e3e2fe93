"""Diffusers <-> original latent-diffusion ("ldm", single-file checkpoint) parameter naming.

One direction is written down, as small pure functions of the model config: each diffusers parameter name maps to
``(ldm_name, op)``; the other direction is the same plan read backwards, so the two can never disagree. Block indices
come from the config (``down_block_types``, ``layers_per_block``), so SD 1.x, SD 2.x, SDXL and the tiny test models
all convert. Layouts (``LAYOUTS``):

* ``sd1``: ``model.diffusion_model.*``, ``first_stage_model.*``, ``cond_stage_model.transformer.text_model.*``;
* ``sd2``: as sd1 but the text encoder is OpenCLIP (``cond_stage_model.model.*``, fused ``in_proj`` q/k/v). SD 2.x
  uses the penultimate text layer; diffusers drops the last layer, so writing adds one all-zero (unused) resblock
  and reading ignores resblocks past the configured depth;
* ``sdxl``: ``conditioner.embedders.0.transformer.text_model.*`` (CLIP-L) and ``conditioner.embedders.1.model.*``
  (OpenCLIP-bigG, with ``text_projection`` stored transposed).

Ops: ``qkv0/1/2`` (a third of a fused in_proj), ``T`` (transpose), ``conv`` (VAE attention: linear <-> 1x1 conv).
"""
from __future__ import annotations

import functools
import json
import re
from pathlib import Path
from typing import Callable

import torch

UNET = "model.diffusion_model."
VAE = "first_stage_model."
LAYOUTS = {
    "sd1": {"unet": (UNET, "unet"), "vae": (VAE, "vae"), "text_encoder": ("cond_stage_model.transformer.", "clip")},
    "sd2": {"unet": (UNET, "unet"), "vae": (VAE, "vae"), "text_encoder": ("cond_stage_model.model.", "openclip")},
    "sdxl": {"unet": (UNET, "unet"), "vae": (VAE, "vae"),
             "text_encoder": ("conditioner.embedders.0.transformer.", "clip"),
             "text_encoder_2": ("conditioner.embedders.1.model.", "openclip")},
}
_UNET_RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1",
                "norm2": "out_layers.0", "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}
_VAE_RESNET = {"conv_shortcut": "nin_shortcut"}
_VAE_ATTN = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


# ---- module maps (diffusers module path -> ldm module path) ----------------------------------------------------
def _per_block(value, n: int) -> list[int]:
    return [int(v) for v in value] if isinstance(value, (list, tuple)) else [int(value)] * n


def _freeze(cfg, keys) -> str:
    return json.dumps({k: (list(cfg[k]) if isinstance(cfg.get(k), tuple) else cfg.get(k)) for k in keys})


def unet_module_map(cfg) -> dict[str, str]:
    """Diffusers UNet module paths -> ldm ``openaimodel`` paths (resnets, attentions, samplers, embeddings)."""
    return dict(_unet_map(_freeze(cfg, ("down_block_types", "up_block_types", "layers_per_block"))))


@functools.lru_cache(maxsize=32)
def _unet_map(frozen: str) -> tuple:
    cfg = json.loads(frozen)
    down, up = cfg["down_block_types"], cfg["up_block_types"]
    n = len(down)
    lpb = _per_block(cfg["layers_per_block"], n)
    m = {"time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
         "add_embedding.linear_1": "label_emb.0.0", "add_embedding.linear_2": "label_emb.0.2",
         "conv_in": "input_blocks.0.0", "conv_norm_out": "out.0", "conv_out": "out.2",
         "mid_block.resnets.0": "middle_block.0", "mid_block.attentions.0": "middle_block.1",
         "mid_block.resnets.1": "middle_block.2"}
    idx = 1
    for i, kind in enumerate(down):
        for j in range(lpb[i]):
            m[f"down_blocks.{i}.resnets.{j}"] = f"input_blocks.{idx}.0"
            if "CrossAttn" in kind:
                m[f"down_blocks.{i}.attentions.{j}"] = f"input_blocks.{idx}.1"
            idx += 1
        if i < n - 1:
            m[f"down_blocks.{i}.downsamplers.0.conv"] = f"input_blocks.{idx}.0.op"
            idx += 1
    up_lpb, idx = list(reversed(lpb)), 0
    for i, kind in enumerate(up):
        attn = "CrossAttn" in kind
        for j in range(up_lpb[i] + 1):
            m[f"up_blocks.{i}.resnets.{j}"] = f"output_blocks.{idx}.0"
            if attn:
                m[f"up_blocks.{i}.attentions.{j}"] = f"output_blocks.{idx}.1"
            if j == up_lpb[i] and i < n - 1:
                m[f"up_blocks.{i}.upsamplers.0.conv"] = f"output_blocks.{idx}.{2 if attn else 1}.conv"
            idx += 1
    return tuple(m.items())


def vae_module_map(cfg) -> dict[str, str]:
    """Diffusers AutoencoderKL module paths -> ldm ``encoder.down.i.block.j`` / ``decoder.up.(n-1-i)...`` paths."""
    n, lpb = len(cfg["block_out_channels"]), int(cfg["layers_per_block"])
    m = {"quant_conv": "quant_conv", "post_quant_conv": "post_quant_conv"}
    for part in ("encoder", "decoder"):
        m.update({f"{part}.conv_in": f"{part}.conv_in", f"{part}.conv_out": f"{part}.conv_out",
                  f"{part}.conv_norm_out": f"{part}.norm_out", f"{part}.mid_block.resnets.0": f"{part}.mid.block_1",
                  f"{part}.mid_block.resnets.1": f"{part}.mid.block_2",
                  f"{part}.mid_block.attentions.0": f"{part}.mid.attn_1"})
    for i in range(n):
        for j in range(lpb):
            m[f"encoder.down_blocks.{i}.resnets.{j}"] = f"encoder.down.{i}.block.{j}"
        for j in range(lpb + 1):
            m[f"decoder.up_blocks.{i}.resnets.{j}"] = f"decoder.up.{n - 1 - i}.block.{j}"
        if i < n - 1:
            m[f"encoder.down_blocks.{i}.downsamplers.0.conv"] = f"encoder.down.{i}.downsample.conv"
            m[f"decoder.up_blocks.{i}.upsamplers.0.conv"] = f"decoder.up.{n - 1 - i}.upsample.conv"
    return m


def _split(name: str, module_map: dict[str, str]) -> tuple[str, str]:
    """Longest module path of ``module_map`` that prefixes ``name``, and the remainder."""
    parts = name.split(".")
    for k in range(len(parts), 0, -1):
        head = ".".join(parts[:k])
        if head in module_map:
            return head, ".".join(parts[k:])
    raise ValueError(f"no ldm counterpart for {name!r}")


def _join(a: str, b: str) -> str:
    return f"{a}.{b}" if b else a


# ---- per-parameter name mapping --------------------------------------------------------------------------------
def unet_name(name: str, cfg) -> str:
    """ldm name (without ``model.diffusion_model.``) of a diffusers UNet parameter or module path."""
    head, rest = _split(name, unet_module_map(cfg))
    if ".resnets." in head and rest:
        first, _, tail = rest.partition(".")
        rest = _join(_UNET_RESNET.get(first, first), tail)
    return _join(unet_module_map(cfg)[head], rest)


def vae_name(name: str, cfg) -> tuple[str, str | None]:
    head, rest = _split(name, vae_module_map(cfg))
    op = None
    if ".resnets." in head:
        first, _, tail = rest.partition(".")
        rest = _join(_VAE_RESNET.get(first, first), tail)
    elif ".attentions." in head:
        sub, _, tail = rest.rpartition(".")
        rest, op = _join(_VAE_ATTN[sub], tail), "conv"
    return _join(vae_module_map(cfg)[head], rest), op


def clip_name(name: str) -> tuple[str, str | None]:
    inner = name.removeprefix("text_model.")
    return (inner, None) if inner == "text_projection.weight" else ("text_model." + inner, None)


_OPENCLIP_FIXED = {"embeddings.token_embedding.weight": ("token_embedding.weight", None),
                   "embeddings.position_embedding.weight": ("positional_embedding", None),
                   "final_layer_norm.weight": ("ln_final.weight", None),
                   "final_layer_norm.bias": ("ln_final.bias", None),
                   "text_projection.weight": ("text_projection", "T")}
_OPENCLIP_LAYER = {"layer_norm1": "ln_1", "layer_norm2": "ln_2", "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj",
                   "self_attn.out_proj": "attn.out_proj"}
_LAYER_RE = re.compile(r"encoder\.layers\.(\d+)\.(.+)\.(weight|bias)$")


def openclip_name(name: str) -> tuple[str, str | None]:
    inner = name.removeprefix("text_model.")
    if inner in _OPENCLIP_FIXED:
        return _OPENCLIP_FIXED[inner]
    m = _LAYER_RE.fullmatch(inner)
    if not m:
        raise ValueError(f"no OpenCLIP counterpart for {name!r}")
    i, sub, wb = m.groups()
    if sub in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"):
        return f"transformer.resblocks.{i}.attn.in_proj_{wb}", f"qkv{'qkv'.index(sub[10])}"
    if sub not in _OPENCLIP_LAYER:
        raise ValueError(f"no OpenCLIP counterpart for {name!r}")
    return f"transformer.resblocks.{i}.{_OPENCLIP_LAYER[sub]}.{wb}", None


def key_plan(names, style: str, prefix: str, cfg=None) -> dict[str, tuple[str, str | None]]:
    """``{diffusers_name: (full ldm name, op)}`` for one component's parameter names."""
    plan = {}
    for n in names:
        if style == "unet":
            ldm, op = unet_name(n, cfg), None
        elif style == "vae":
            ldm, op = vae_name(n, cfg)
        elif style == "clip":
            ldm, op = clip_name(n)
        else:
            ldm, op = openclip_name(n)
        plan[n] = (prefix + ldm, op)
    return plan


# ---- tensors ----------------------------------------------------------------------------------------------------
def to_ldm_tensor(t: torch.Tensor, op: str | None) -> torch.Tensor:
    if op == "conv" and t.ndim == 2:
        return t[:, :, None, None]
    return t.T if op == "T" else t


def from_ldm_tensor(t: torch.Tensor, op: str | None) -> torch.Tensor:
    if op == "conv" and t.ndim == 4:
        return t[:, :, 0, 0]
    if op == "T":
        return t.T
    if op and op.startswith("qkv"):
        return t.chunk(3, dim=0)[int(op[3])]
    return t


_HINTS = (
    (("lora_unet_", "lora_te", ".lora_down.", ".lora_A.", "lora_up"), "it looks like a LoRA, which is applied on top "
     "of a checkpoint, not loaded as one"),
    (("down_blocks.", "conv_in.weight"), "it looks like diffusers-format weights of one component; pass the whole "
     "diffusers pipeline folder instead"),
    (("encoder.down.", "decoder.up.", "first_stage_model."), "it looks like a standalone VAE"),
)


def detect_layout(keys) -> str:
    """``sd1`` / ``sd2`` / ``sdxl`` from a checkpoint's tensor names; ``ValueError`` saying what is wrong otherwise."""
    keys = set(keys)
    if not any(k.startswith(UNET) for k in keys):
        hint = next((h for marks, h in _HINTS if any(m in k for k in keys for m in marks)), None)
        raise ValueError(f"it has no '{UNET}*' (UNet) tensors; "
                         + (hint or "expected an SD 1.x, SD 2.x or SDXL single-file checkpoint"))
    if UNET + "input_blocks.0.0.weight" not in keys:
        raise ValueError(f"its '{UNET}*' tensors are not an SD 1.x/2.x/XL UNet (SD3, Flux and other "
                         f"architectures are not supported)")
    if not any(k.startswith(VAE) for k in keys):
        raise ValueError(f"it has no VAE ('{VAE}*' tensors); StyleCloak needs a complete checkpoint")
    if any(k.startswith("conditioner.embedders.1.model.") for k in keys):
        return "sdxl"
    if any(k.startswith("conditioner.embedders.0.model.") for k in keys):
        raise ValueError("it is an SDXL refiner, which is not supported (use the SDXL base model)")
    if "cond_stage_model.model.token_embedding.weight" in keys:
        return "sd2"
    if "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight" in keys:
        return "sd1"
    raise ValueError("it has no text encoder ('cond_stage_model.*' or 'conditioner.embedders.*' tensors)")


def infer_layout(pipe) -> str:
    """``sdxl`` for a text-time UNet, ``sd2`` for an OpenCLIP-type (gelu) text encoder, else ``sd1``."""
    if pipe.unet.config.get("addition_embed_type") == "text_time":
        return "sdxl"
    return "sd2" if pipe.text_encoder.config.hidden_act == "gelu" else "sd1"


def diffusers_to_ldm(pipe, layout: str | None = None, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """All UNet, VAE and text-encoder weights of ``pipe`` under their ldm single-file names.

    Tensors may share memory with the pipeline's weights (no copy unless a layout change needs one)."""
    layout = layout or infer_layout(pipe)
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; choose from {', '.join(LAYOUTS)}")
    out: dict[str, torch.Tensor] = {}
    for comp, (prefix, style) in LAYOUTS[layout].items():
        module = getattr(pipe, comp)
        sd = module.state_dict()
        fused: dict[str, list] = {}
        for name, (ldm, op) in key_plan(sd, style, prefix, getattr(module, "config", None)).items():
            t = sd[name].detach().to(dtype or sd[name].dtype)
            if op and op.startswith("qkv"):
                fused.setdefault(ldm, [None] * 3)[int(op[3])] = t
            else:
                out[ldm] = to_ldm_tensor(t, op).contiguous()
        for ldm, parts in fused.items():
            out[ldm] = torch.cat(parts, dim=0).contiguous()
        if layout == "sd2" and comp == "text_encoder":
            n = module.config.num_hidden_layers
            for k in [k for k in out if k.startswith(f"{prefix}transformer.resblocks.{n - 1}.")]:
                out[k.replace(f".resblocks.{n - 1}.", f".resblocks.{n}.")] = torch.zeros_like(out[k])
    return out


def ldm_to_modules(read: Callable[[str], torch.Tensor], bundle: dict, layout: str,
                   dtype: torch.dtype = torch.float32) -> dict[str, torch.nn.Module]:
    """UNet, VAE and text encoder(s) of ``bundle`` filled from ldm-named tensors (``read(name)``), on CPU.

    Raises ``KeyError`` naming a missing ldm tensor, ``ValueError`` on a shape that does not fit the config.
    """
    from .configs import empty_modules, fix_buffers

    modules = empty_modules(bundle)
    if set(modules) != set(LAYOUTS[layout]):
        raise ValueError(f"the configs describe {', '.join(sorted(modules))} but a {layout} checkpoint holds "
                         f"{', '.join(sorted(LAYOUTS[layout]))}")
    for comp, (prefix, style) in LAYOUTS[layout].items():
        module = modules[comp]
        meta = module.state_dict()
        sd, cache = {}, {}
        for name, (ldm, op) in key_plan(meta, style, prefix, getattr(module, "config", None)).items():
            if ldm not in cache:
                cache = {ldm: read(ldm)}
            t = from_ldm_tensor(cache[ldm], op)
            if tuple(t.shape) != tuple(meta[name].shape):
                raise ValueError(f"{ldm} has shape {tuple(cache[ldm].shape)}, which does not fit {comp}.{name} "
                                 f"{tuple(meta[name].shape)} of the expected architecture")
            # a fresh, aligned copy: tensors read from a file can sit at odd addresses, which changes the
            # float summation order of some CPU kernels
            sd[name] = t.to(dtype, copy=True, memory_format=torch.contiguous_format)
        module.load_state_dict(sd, strict=True, assign=True)
        fix_buffers(module)
        module.eval().requires_grad_(False)
    return modules


def save_single_file(pipe, path, layout: str | None = None, dtype: torch.dtype | None = None,
                     family: str | None = None, embed_configs: bool = True) -> Path:
    """Write ``pipe`` as one ldm-layout ``.safetensors`` file (readable by ComfyUI, A1111 and diffusers).

    The diffusers configs go into the file's metadata (``stylecloak.configs``), so StyleCloak reloads non-standard
    architectures (the tiny models) exactly; other tools ignore it. ``family`` names the model in host summaries
    (default: ``sd15``/``sd2``/``sdxl`` for standard text widths, else ``custom``). ``embed_configs=False`` writes a
    file exactly like a third-party one (StyleCloak then reads it with the shipped configs).
    """
    from safetensors.torch import save_file

    from .configs import bundle_from_pipeline

    layout = layout or infer_layout(pipe)
    tensors = diffusers_to_ldm(pipe, layout, dtype)
    standard = {"sd1": 768, "sd2": 1024, "sdxl": 2048}[layout] == pipe.unet.config.cross_attention_dim
    bundle = bundle_from_pipeline(pipe, family or ({"sd1": "sd15"}.get(layout, layout) if standard else "custom"))
    bundle["layout"] = layout
    path = Path(path)
    tmp = path.with_name(path.name + ".part")
    metadata = {"format": "pt"}
    if embed_configs:
        metadata["stylecloak.configs"] = json.dumps(bundle)
    save_file(tensors, str(tmp), metadata=metadata)
    tmp.replace(path)
    return path


# ---- cross-attention names for host adapters ---------------------------------------------------------------------
def canonical_to_ldm_attn(name: str, unet_config) -> str:
    """``down_blocks.1.attentions.0.transformer_blocks.0.attn2`` -> ``input_blocks.4.1.transformer_blocks.0.attn2``
    (SD 1.5 numbering; indices follow ``unet_config``)."""
    return unet_name(name, unet_config)


def ldm_to_canonical_attn(name: str, unet_config) -> str:
    """Inverse of :func:`canonical_to_ldm_attn`; a ``diffusion_model.`` / ``model.diffusion_model.`` prefix is
    accepted."""
    name = name.removeprefix("model.").removeprefix("diffusion_model.")
    inverse = {v: k for k, v in unet_module_map(unet_config).items()}
    head, rest = _split(name, inverse)
    if ".resnets." in inverse[head] and rest:
        first, _, tail = rest.partition(".")
        back = {v: k for k, v in _UNET_RESNET.items()}
        for ldm_sub, sub in back.items():
            if rest == ldm_sub or rest.startswith(ldm_sub + "."):
                first, tail = sub, rest[len(ldm_sub) + 1:]
                break
        rest = _join(first, tail)
    return _join(inverse[head], rest)
