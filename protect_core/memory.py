"""Memory modes: how much memory a gradient job on the host's model may use, and what to do when it runs out.

One small settings object, :class:`MemoryMode`, picked by name (``memory="auto" | "fast" | "balanced" | "low"``)
with optional field overrides:

==========  ==========================================================================================================
fast        nothing changed: the host's dtype, no checkpointing, the host's attention, the method's tile size
balanced    half-precision autocast (bf16 where the GPU has it, else fp16; fp32 on CPU) with the perturbation kept
            in fp32 (the "master" copy: only the model's forward runs in half precision), gradient checkpointing in
            the UNet, PyTorch SDPA attention
low         balanced + checkpointing in the VAE + cloak tiles of at most 512 px + VAE tiling (the VAE encodes and
            decodes at most 512 px at once, :mod:`protect_core.vae_tiling`) + score distillation (no UNet
            backward: the UNet's Jacobian is replaced by the identity) for the methods whose image step ascends a
            denoising loss (the SurrogateAttack family: mist, mist2, aspl, fsmg, caat, styleprotect)
auto        the first of fast / balanced / low whose estimated need fits in the free memory of the device
==========  ==========================================================================================================

:func:`memory_session` applies a mode inside ``host.borrowed()``: every flag it sets on the host's modules goes
through ``host.set_borrowed_attr`` and comes back when the session (or the borrow) ends, however it ends, so the
borrowed model returns with identical flags and attributes. Checkpointing (:mod:`protect_core.memory_checkpoint`:
diffusers modules, and ldm / ComfyUI / A1111 / Forge UNets and VAEs recognised by their layout) recomputes blocks
during backward with the exact tensors (views, weight overrides) of the forward pass, so LoRA/K-V overrides keep
their gradients.

Out of memory (``torch.cuda.OutOfMemoryError``, ``RuntimeError('... out of memory ...')``, ``MemoryError``):
:func:`run_with_fallback` retries with the next lower mode and says so (log + returned messages); below ``low`` it
raises :class:`MemoryLimitError`, a :class:`~protect_core.errors.StyleCloakError` naming the settings to change.
Those helpers live in :mod:`protect_core.memory_fallback` and are re-exported here.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass

import torch

from .errors import StyleCloakError
from .integrity import SESSION_ATTRS
from .memory_checkpoint import _checkpoint_fn, enable_checkpointing  # noqa: F401 (public names)
from .memory_fallback import (MemoryLimitError, free_memory, is_oom, limit_message,  # noqa: F401 (public names)
                              run_with_fallback)

MODES = ("fast", "balanced", "low")
CHOICES = ("auto",) + MODES
PRECISIONS = ("host", "half", "fp16", "bf16", "fp32")
ATTENTION = ("keep", "sdpa", "sliced")
_HALF = {"fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass(frozen=True)
class MemoryMode:
    """What a memory mode changes. ``precision``: "host" (the host's own dtype), "half" (bf16 if the device has
    it, else fp16; fp32 on CPU), "fp16", "bf16", "fp32" (no autocast). ``attention``: "keep", "sdpa", "sliced".
    ``tile``: cap on the side (px) the cloak runner optimises in one piece (None: the method's default).
    ``vae_tile``: side (px) of the tiles in which the host's VAE encodes and decodes a larger image (None: whole
    images; :mod:`protect_core.vae_tiling`)."""

    name: str = "fast"
    precision: str = "host"
    checkpoint_unet: bool = False
    checkpoint_vae: bool = False
    attention: str = "keep"
    tile: int | None = None
    score_distillation: bool = False
    vae_tile: int | None = None
    reason: str = ""

    def __post_init__(self):
        if self.precision not in PRECISIONS:
            raise ValueError(f"memory precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.attention not in ATTENTION:
            raise ValueError(f"memory attention must be one of {', '.join(ATTENTION)}, got {self.attention!r}")
        if self.tile is not None and int(self.tile) < 16:
            raise ValueError(f"memory tile must be >= 16 px or None, got {self.tile!r}")
        if self.vae_tile is not None and int(self.vae_tile) < 16:
            raise ValueError(f"memory vae_tile must be >= 16 px or None, got {self.vae_tile!r}")

    def lower(self) -> "MemoryMode | None":
        """The next mode down (fast -> balanced -> low), or None below ``low``."""
        if self.name not in MODES or self.name == "low":
            return None
        return PRESETS[MODES[MODES.index(self.name) + 1]]

    def describe(self, host=None) -> dict:
        """The mode's fields (unset ones left out); with ``host``, ``precision`` says what runs on that host
        (:func:`precision_label`: e.g. "full (half precision needs a GPU)" for "half" on the CPU)."""
        out = {k: v for k, v in dataclasses.asdict(self).items() if v not in ("", None)}
        if host is not None:
            out["precision"] = precision_label(self.precision, autocast_dtype(self, host), host.dtype)
        return out


PRESETS: dict[str, MemoryMode] = {
    "fast": MemoryMode("fast"),
    "balanced": MemoryMode("balanced", precision="half", checkpoint_unet=True, attention="sdpa"),
    "low": MemoryMode("low", precision="half", checkpoint_unet=True, checkpoint_vae=True, attention="sdpa",
                      tile=512, score_distillation=True, vae_tile=512),
}


def memory_mode(spec: "str | MemoryMode | dict | None" = "auto", **overrides) -> MemoryMode:
    """A mode from a name (``auto``/``fast``/``balanced``/``low``), a dict of fields or a MemoryMode; ``overrides``
    replace fields (e.g. ``memory_mode("low", precision="fp16")``). ``auto`` stays unresolved (name "auto") until
    :func:`resolve_memory` sees the job."""
    if spec is None:
        spec = "auto"
    if isinstance(spec, MemoryMode):
        mode = spec
    elif isinstance(spec, dict):
        fields = dict(spec)
        base = memory_mode(fields.pop("name", "fast"))
        mode = dataclasses.replace(base, **fields)
    elif isinstance(spec, str):
        if spec not in CHOICES:
            raise ValueError(f"unknown memory mode {spec!r}; choose from {', '.join(CHOICES)}")
        mode = PRESETS.get(spec, MemoryMode("auto"))
    else:
        raise ValueError(f"memory mode must be a name ({', '.join(CHOICES)}), a dict or a MemoryMode, got {spec!r}")
    return dataclasses.replace(mode, **overrides) if overrides else mode


def precision_label(precision: str, autocast: torch.dtype | None, host_dtype) -> str:
    """What ``precision`` amounts to where it runs: the name itself where it applies; for "half" without autocast
    (on the CPU, or on a model already in half precision: :func:`autocast_dtype`) what runs instead."""
    if precision != "half" or autocast is not None:
        return precision
    if host_dtype in (torch.float16, torch.bfloat16):
        return f"host ({str(host_dtype).replace('torch.', '')} model, already half precision)"
    return "full (half precision needs a GPU)"


# ---- choosing a mode by free memory --------------------------------------------------------------------------
#: activation bytes per image pixel of one fp32 forward+backward, measured on an H100 with benchmarks/perf.py
#: (peak minus resident weights, SD1.5/SDXL-size, 256-1024 px, batch 1-4): the VAE encoder (~12 KB/px), plus the
#: UNet's share for methods that back-propagate through it (~6 KB/px SD1.5, ~10 KB/px SDXL)
ACT_BYTES_PER_PIXEL = {"vae": 12000.0, "unet": 6000.0, "unet_xl": 10000.0}
#: measured multipliers: half precision (bf16 autocast or an fp16 model; GroupNorm stays fp32), checkpointing,
#: score distillation (the UNet's share all but vanishes)
SAVING = {"half": 0.8, "half_model": 0.55, "checkpoint_vae": 0.7, "checkpoint_unet": 0.2, "score_distillation": 0.05}
SAFETY = 1.3


def available_bytes(device) -> int:
    """Free memory on ``device``: CUDA free + this process's cached-but-unused blocks (within a per-process memory
    fraction, when one is set); CPU MemAvailable."""
    device = torch.device(device)
    if device.type == "cuda":
        free, total = torch.cuda.mem_get_info(device)
        allocated = torch.cuda.memory_allocated(device)
        avail = free + torch.cuda.memory_reserved(device) - allocated
        get_fraction = getattr(torch.cuda, "get_per_process_memory_fraction", None)
        if get_fraction is not None:
            try:
                avail = min(avail, int(get_fraction(device.index or 0) * total) - allocated)
            except (RuntimeError, TypeError, ValueError):
                pass
        return int(max(0, avail))
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES"))


def unet_backward(method) -> bool:
    """Whether a cloak method's image step back-propagates through the UNet (encoder-only methods set a larger
    ``default_tile`` or ``uses_unet = False``)."""
    if method is None:
        return True
    flag = getattr(method, "unet_backward", None)
    if flag is not None:
        return bool(flag)
    return bool(getattr(method, "uses_unet", True)) and getattr(method, "default_tile", None) is None


def estimate_bytes(pixels: int, through_unet: bool, mode: MemoryMode, half_possible: bool = True,
                   half_model: bool = False, xl: bool = False, image_pixels: int | None = None) -> int:
    """Rough activation memory of one image step on ``pixels`` image pixels (all images of the batch) in ``mode``
    (weights are already resident and not counted); constants from benchmarks/perf.py runs. ``image_pixels`` (one
    image's, when known): with VAE tiling an image larger than ``mode.vae_tile`` squared goes through the VAE one
    tile of one image at a time, so the VAE's share is that of one tile."""
    vae_pixels = pixels
    if mode.vae_tile and image_pixels and image_pixels > mode.vae_tile ** 2:
        vae_pixels = min(pixels, mode.vae_tile ** 2)
    vae = ACT_BYTES_PER_PIXEL["vae"] * (SAVING["checkpoint_vae"] if mode.checkpoint_vae else 1.0)
    unet = 0.0
    if through_unet:
        unet = ACT_BYTES_PER_PIXEL["unet_xl" if xl else "unet"]
        unet *= SAVING["score_distillation"] if mode.score_distillation else 1.0
        unet *= SAVING["checkpoint_unet"] if mode.checkpoint_unet else 1.0
    if half_model:
        half = SAVING["half_model"]
    elif mode.precision in ("half", "fp16", "bf16") and half_possible:
        half = SAVING["half"]
    else:
        half = 1.0
    return int((vae_pixels * vae + pixels * unet) * half * SAFETY)


def resolve_memory(spec, host, method=None, pixels: int = 512 * 512, available: int | None = None,
                   image_pixels: int | None = None) -> MemoryMode:
    """A concrete mode: ``spec`` itself, or for ``auto`` the first of fast/balanced/low whose estimate fits in
    ``available`` bytes (default: :func:`available_bytes` of the host's device); ``reason`` says why.
    ``image_pixels`` (default: ``method.image_pixels`` if it has one) see :func:`estimate_bytes`."""
    mode = memory_mode(spec)
    if mode.name != "auto":
        return mode
    free = available_bytes(host.device) if available is None else int(available)
    through_unet = unet_backward(method)
    half_possible = torch.device(host.device).type != "cpu"
    half_model = host.dtype in (torch.float16, torch.bfloat16)
    xl = "xl" in str(getattr(host, "family", ""))
    image_pixels = image_pixels or getattr(method, "image_pixels", None)
    for name in MODES:
        need = estimate_bytes(pixels, through_unet, PRESETS[name], half_possible, half_model, xl, image_pixels)
        if need <= free or name == "low":
            fits = "fits" if need <= free else "does not fit either; trying"
            why = (f"auto: ~{need / 2**30:.1f} GiB needed for {pixels / 1e6:.2f} Mpx, {free / 2**30:.1f} GiB free; "
                   f"{name} {fits}")
            return dataclasses.replace(PRESETS[name], reason=why)
    raise AssertionError("unreachable")


# ---- applying a mode ------------------------------------------------------------------------------------------
@dataclass
class ActiveMemory:
    """A mode as applied to one host in one session: what the host's forward passes read (``autocast_dtype``,
    ``score_distillation``) and what was changed (counts, notes)."""

    mode: MemoryMode
    autocast_dtype: torch.dtype | None = None
    score_distillation: bool = False
    loss_scale: float = 1.0
    checkpointed_modules: int = 0
    attention_modules: int = 0
    notes: list = dataclasses.field(default_factory=list)
    precision: str = ""   # what runs (precision_label); "" = the mode's own precision

    def unscale(self, grad: torch.Tensor) -> torch.Tensor | None:
        """The true gradient from a loss multiplied by ``loss_scale``; None when it overflowed (the step is
        skipped and the scale lowered, as in dynamic loss scaling)."""
        if self.autocast_dtype is None and self.loss_scale == 1.0:
            return grad   # full precision: unchanged behaviour
        if not bool(torch.isfinite(grad).all()):
            if self.loss_scale <= 1.0:
                raise StyleCloakError("non-finite gradient in half precision; use memory precision 'fp32' "
                                      "(memory='fast') or load the model in fp32 (--dtype fp32)")
            self.loss_scale = max(1.0, self.loss_scale / 8)
            self.notes.append(f"fp16 gradient overflow: loss scale lowered to {self.loss_scale:g}")
            return None
        return grad / self.loss_scale

    def describe(self) -> dict:
        out = self.mode.describe()
        if self.precision:
            out["precision"] = self.precision
        out.update(autocast=None if self.autocast_dtype is None else str(self.autocast_dtype).replace("torch.", ""),
                   score_distillation=self.score_distillation, checkpointed_modules=self.checkpointed_modules)
        if self.notes:
            out["notes"] = list(self.notes)
        return out


def autocast_dtype(mode: MemoryMode, host) -> torch.dtype | None:
    """The autocast dtype ``mode`` asks for on ``host`` (None: run in the host's own dtype)."""
    device = torch.device(host.device)
    if mode.precision in ("host", "fp32"):
        return None
    if mode.precision in _HALF:
        return _HALF[mode.precision]
    # "half": only where it pays, and not on a host that already runs in half precision
    if device.type == "cpu" or host.dtype in (torch.float16, torch.bfloat16):
        return None
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float16


def allows_score_distillation(method) -> bool:
    """Methods whose image step ascends or descends a denoising loss through the UNet (a method can say so
    itself with ``allows_score_distillation = True/False``)."""
    if method is None:
        return False
    flag = getattr(method, "allows_score_distillation", None)
    if flag is not None:
        return bool(flag)
    from .cloak.surrogate import SurrogateAttack

    return isinstance(method, SurrogateAttack)


def attention_processor(kind: str):
    from diffusers.models.attention_processor import AttnProcessor2_0, SlicedAttnProcessor

    return AttnProcessor2_0() if kind == "sdpa" else SlicedAttnProcessor(2)


def set_attention(host, roots, kind: str) -> int:
    """Use SDPA or sliced attention in every diffusers ``Attention`` module of ``roots`` for this borrow."""
    modules = [m for r in roots if r is not None for m in r.modules()
               if hasattr(m, "set_processor") and hasattr(m, "processor")]
    if not modules:
        return 0
    proc = attention_processor(kind)
    for m in modules:
        host.set_borrowed_attr(m, "processor", proc)
    return len(modules)


class memory_session:
    """``with memory_session(host, mode, method) as active:`` apply ``mode`` inside ``host.borrowed()``; everything
    is put back on exit. ``active`` (:class:`ActiveMemory`) says what took effect."""

    def __init__(self, host, mode: MemoryMode | None, method=None):
        self.host, self.mode, self.method = host, mode, method

    def __enter__(self) -> ActiveMemory:
        host, mode = self.host, self.mode or PRESETS["fast"]
        if mode.name == "auto":
            raise ValueError("resolve an 'auto' memory mode first (protect_core.memory.resolve_memory)")
        self.mark = host.borrowed_attr_mark()
        try:
            dt = autocast_dtype(mode, host)
            half_host = host.dtype == torch.float16
            active = ActiveMemory(mode, dt, mode.score_distillation and allows_score_distillation(self.method),
                                  loss_scale=1024.0 if (dt == torch.float16 or half_host) else 1.0,
                                  precision=precision_label(mode.precision, dt, host.dtype))
            mods = host.host_modules()
            if mode.checkpoint_unet:
                active.checkpointed_modules += enable_checkpointing(host, mods.get("unet"))
            if mode.checkpoint_vae:
                active.checkpointed_modules += enable_checkpointing(host, mods.get("vae"))
            if (mode.checkpoint_unet or mode.checkpoint_vae) and not active.checkpointed_modules:
                active.notes.append("this host's modules do not support gradient checkpointing")
            if mode.attention != "keep":   # the VAE's one-head attention (its kwargs) stays SDPA
                active.attention_modules = (set_attention(host, [mods.get("unet")], mode.attention)
                                            + set_attention(host, [mods.get("vae")], "sdpa"))
            host.set_borrowed_attr(host, "_memory", active)
        except BaseException:
            host.restore_borrowed_attrs(self.mark)
            raise
        return active

    def __exit__(self, *exc) -> None:
        self.host.restore_borrowed_attrs(self.mark)


def module_flags(host) -> dict:
    """Everything a memory session may change on the host's modules (checkpointing flags and functions, attention
    processors, instance-level ``forward`` overrides, the host's active mode), for tests and integrity checks."""
    out = {"host._memory": host.__dict__.get("_memory")}
    for key, root in host.host_modules().items():
        if root is None:
            continue
        for name, m in root.named_modules():
            for attr in SESSION_ATTRS:
                if attr in m.__dict__:
                    out[f"{key}.{name}.{attr}"] = m.__dict__[attr]
    return out
