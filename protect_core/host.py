"""The one seam between StyleCloak and a diffusion host.

Every block (cloak, layer selection, purify, mimicry test) talks to a Stable Diffusion model only through
:class:`HostModel`. Adapters (diffusers here; ComfyUI and A1111/Forge in their packages) implement the handful of
abstract methods below; nothing else in ``protect_core`` knows which host it runs in.

Conventions shared by every adapter:

* images are float tensors ``(B, 3, H, W)`` in ``[-1, 1]``; H and W are multiples of ``vae_scale_factor``;
* latents are *scaled* (multiplied by the VAE scaling factor, shift removed), as the UNet expects them;
* timesteps are integer indices into ``alphas_cumprod`` (``0 .. num_train_timesteps - 1``);
* ``weight_overrides`` maps UNet parameter names (as listed by :meth:`HostModel.unet_parameter_names`) to tensors
  that replace those weights for one call. This is how private adapter weights (LoRA, StyleProtect's to_k/to_v
  copies, a DreamBooth subset) take part in a forward pass without the host's tensors ever being written.

All gradient work happens inside :meth:`HostModel.borrowed`; see :mod:`protect_core.integrity` for what it
guarantees about the host's model afterwards.
"""
from __future__ import annotations

import abc
import contextlib
import math
from dataclasses import dataclass, field
from typing import Iterator, Mapping

import torch

from .errors import ModelError
from .integrity import borrow_modules
from .vae_tiling import run_tiled, tile_cells

_MISSING = object()


@dataclass
class Conditioning:
    """Text conditioning for the UNet. ``pooled`` and ``extras`` are used by SDXL-style models only."""

    context: torch.Tensor                      # (B, tokens, dim)
    pooled: torch.Tensor | None = None         # (B, dim) pooled text embedding (SDXL)
    extras: dict = field(default_factory=dict)  # host-specific, e.g. {"original_size": (h, w)}

    def __len__(self) -> int:
        return self.context.shape[0]

    def repeat_to(self, batch: int) -> "Conditioning":
        """Broadcast a single-prompt conditioning to ``batch`` rows (no copy when already that size)."""
        n = self.context.shape[0]
        if n == batch:
            return self
        if batch % n:
            raise ValueError(f"cannot broadcast conditioning of batch {n} to {batch}")
        k = batch // n
        pooled = None if self.pooled is None else self.pooled.repeat_interleave(k, 0)
        return Conditioning(self.context.repeat_interleave(k, 0), pooled, dict(self.extras))

    def cat(self, other: "Conditioning") -> "Conditioning":
        """Stack two conditionings batch-wise. Token lengths may differ (long prompts come in 77-token chunks): each
        context is then repeated along the tokens to the least common multiple, which leaves cross-attention's
        output unchanged (every key appears the same number of times)."""
        a, b = self.context, other.context
        if a.shape[1] != b.shape[1]:
            n = math.lcm(a.shape[1], b.shape[1])
            a, b = a.repeat(1, n // a.shape[1], 1), b.repeat(1, n // b.shape[1], 1)
        pooled = None if self.pooled is None else torch.cat([self.pooled, other.pooled])
        return Conditioning(torch.cat([a, b]), pooled, dict(self.extras))


@dataclass(frozen=True)
class CrossAttentionLayer:
    """One cross-attention (``attn2``) layer of the UNet.

    ``name`` is the canonical, host-independent name (diffusers naming, e.g.
    ``up_blocks.1.attentions.0.transformer_blocks.0.attn2``); ``host_name`` is the module's path in the host's own
    UNet. ``params`` maps ``to_q``/``to_k``/``to_v``/``to_out`` to UNet parameter names usable as weight overrides.
    """

    name: str
    host_name: str
    module: torch.nn.Module
    params: Mapping[str, str]
    query_dim: int
    context_dim: int

    @property
    def block(self) -> str:
        """Coarse position: ``down``, ``mid`` or ``up``."""
        return self.name.split("_", 1)[0]


class HostModel(abc.ABC):
    """A borrowed Stable Diffusion model (UNet + VAE + text encoder) seen through one small interface."""

    #: e.g. "sd15", "sd2", "sdxl", "tiny"
    family: str = "unknown"
    #: "epsilon" or "v_prediction"
    prediction_type: str = "epsilon"
    vae_scale_factor: int = 8
    latent_channels: int = 4

    # ---- what an adapter must provide -------------------------------------------------------------------------
    @property
    @abc.abstractmethod
    def device(self) -> torch.device: ...

    @property
    @abc.abstractmethod
    def dtype(self) -> torch.dtype:
        """The dtype in which the host runs its UNet and VAE."""

    @property
    def vae_device(self) -> torch.device:
        """Where the host keeps its VAE (defaults to ``device``)."""
        return self.device

    @property
    def vae_dtype(self) -> torch.dtype:
        """The dtype the host runs its VAE in (hosts often keep it in fp32/bf16 while the UNet is fp16)."""
        return self.dtype

    @property
    @abc.abstractmethod
    def alphas_cumprod(self) -> torch.Tensor:
        """Cumulative product of alphas of the training schedule, float32 on ``device``, shape (T,)."""

    @abc.abstractmethod
    def host_modules(self) -> dict[str, torch.nn.Module]:
        """The host's modules that must come back unchanged: at least ``unet``, ``vae``, ``text_encoder``."""

    @abc.abstractmethod
    def _vae_posterior(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Unscaled posterior (mean, logvar) of ``images`` in [-1, 1]; differentiable."""

    @abc.abstractmethod
    def _vae_decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Decode *unscaled* latents to images in roughly [-1, 1]; differentiable."""

    @property
    @abc.abstractmethod
    def latent_scale(self) -> float: ...

    @property
    def latent_shift(self) -> float:
        return 0.0

    @abc.abstractmethod
    def _encode_text(self, prompts: list[str]) -> Conditioning:
        """Conditioning for ``prompts`` (no gradient needed)."""

    @abc.abstractmethod
    def _unet(self, latents: torch.Tensor, t: torch.Tensor, cond: Conditioning,
              weights: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Raw UNet output (eps or v) computed with the complete parameter mapping ``weights``."""

    @abc.abstractmethod
    def unet_parameters(self) -> Mapping[str, torch.Tensor]:
        """The host UNet's own parameters by name (may be inference tensors; never to be written)."""

    @abc.abstractmethod
    def _cross_attention_modules(self) -> Iterator[tuple[str, str, torch.nn.Module]]:
        """Yield ``(canonical_name, host_name, attn2_module)`` for each cross-attention layer, in UNet order."""

    # ---- the shared machinery ---------------------------------------------------------------------------------
    _views: dict | None = None
    _borrow_depth: int = 0
    _restores: list | None = None   # (object, attribute, old value) set for this borrow only, see set_borrowed_attr
    _memory = None                  # the active memory mode (protect_core.memory.ActiveMemory) or None

    @contextlib.contextmanager
    def borrowed(self, cancel=None) -> Iterator["HostModel"]:
        """Enter a gradient-capable session on the host's model.

        Inside, gradients flow to inputs and to weight overrides, even when the host created its weights under
        ``torch.inference_mode()``; the host's own tensors are never written. On exit (normal, exception or
        cancellation) ``requires_grad`` flags, ``training`` flags and hook tables are restored, and the cached
        parameter views are dropped.
        """
        if self._borrow_depth:
            self._borrow_depth += 1
            try:
                yield self
            finally:
                self._borrow_depth -= 1
            return
        self._borrow_depth = 1
        self._restores = []
        try:
            with torch.inference_mode(False), torch.enable_grad(), borrow_modules(self.host_modules()):
                try:
                    yield self
                finally:
                    self.restore_borrowed_attrs(0)
        finally:
            self._views = None
            self._borrow_depth = 0
            self._restores = None

    def set_borrowed_attr(self, obj, name: str, value) -> None:
        """Set ``obj.<name> = value`` for this borrow only (memory modes: checkpointing flags, attention
        processors). The old value, or the attribute's absence, comes back at :meth:`restore_borrowed_attrs` or,
        at the latest, when the outermost borrow ends, however it ends."""
        self._require_borrowed()
        d = getattr(obj, "__dict__", {})
        if name in d:
            old = d[name]
        elif isinstance(obj, torch.nn.Module) and name in obj._modules:
            old = obj._modules[name]
        else:
            old = _MISSING
        self._restores.append((obj, name, old))
        setattr(obj, name, value)

    def borrowed_attr_mark(self) -> int:
        """A mark for :meth:`restore_borrowed_attrs`: the number of attribute changes made so far."""
        self._require_borrowed()
        return len(self._restores)

    def restore_borrowed_attrs(self, mark: int = 0) -> None:
        """Undo, newest first, the attribute changes made since ``mark``."""
        restores = self._restores or []
        while len(restores) > mark:
            obj, name, old = restores.pop()
            if isinstance(obj, torch.nn.Module) and name in obj._modules and not isinstance(old, torch.nn.Module):
                del obj._modules[name]
            if old is _MISSING:
                getattr(obj, "__dict__", {}).pop(name, None)
            else:
                setattr(obj, name, old)

    def _compute(self, device: torch.device):
        """Autocast for model forward passes when the active memory mode asks for it (forward only: backward
        passes run outside, as autocast requires)."""
        dt = getattr(self._memory, "autocast_dtype", None)
        if dt is None:
            return contextlib.nullcontext()
        return torch.autocast(torch.device(device).type, dtype=dt)

    def _require_borrowed(self) -> None:
        if not self._borrow_depth:
            raise RuntimeError("use the model inside `with host.borrowed():`")

    def module_views(self, module: torch.nn.Module) -> dict[str, torch.Tensor]:
        """Non-inference, gradient-free views of a host module's parameters and buffers, built once per borrow.

        Ordinary tensors are shared (``detach()``, no copy); inference tensors (weights a host created under
        ``torch.inference_mode()``) are detached and cloned, because autograd cannot save them for backward (and a
        plain clone of a ``requires_grad`` parameter would route gradients back into the host's ``.grad``).
        """
        self._require_borrowed()
        if self._views is None:
            self._views = {}
        key = id(module)
        if key not in self._views:
            views = {}
            for name, t in [*module.named_parameters(), *module.named_buffers()]:
                views[name] = t.detach().clone() if t.is_inference() else t.detach()
            self._views[key] = views
        return self._views[key]

    def call(self, module: torch.nn.Module, *args, **kwargs):
        """Run a host (sub)module on its non-inference views: the way adapters run the VAE and UNet."""
        return torch.func.functional_call(module, self.module_views(module), args, kwargs, strict=False)

    def parameter_views(self) -> dict[str, torch.Tensor]:
        """Views (see :meth:`module_views`) of every UNet parameter, keyed like :meth:`unet_parameters`."""
        self._require_borrowed()
        if self._views is None:
            self._views = {}
        if "unet" not in self._views:
            self._views["unet"] = {n: (p.detach().clone() if p.is_inference() else p.detach())
                                   for n, p in self.unet_parameters().items()}
        return self._views["unet"]

    def unet_parameter_names(self) -> list[str]:
        return list(self.unet_parameters().keys())

    def unet_weight(self, name: str) -> torch.Tensor:
        """A detached, writable *copy* of one UNet weight: a starting point for private adapter weights."""
        self._require_borrowed()
        try:
            return self.parameter_views()[name].detach().clone().float()
        except KeyError:
            raise ModelError(f"UNet has no parameter {name!r}") from None

    # images <-> latents
    def encode(self, images: torch.Tensor, sample: bool = False,
               generator: torch.Generator | None = None) -> torch.Tensor:
        """Scaled latents of ``images`` in [-1, 1] (posterior mean, or a sample); differentiable, float32."""
        mean, logvar = self.posterior(images)
        if sample:
            noise = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
            mean = mean + torch.exp(0.5 * logvar) * noise
        return (mean - self.latent_shift) * self.latent_scale

    def posterior(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Unscaled VAE posterior (mean, logvar), float32; differentiable. Tile by tile when the memory mode asks
        (``vae_tile``, :mod:`protect_core.vae_tiling`), as is :meth:`decode`."""
        self._check_images(images)
        return run_tiled(self._posterior_whole, images, tile_cells(self), self.vae_scale_factor, 1)

    def _posterior_whole(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = images.to(self.vae_device, self.vae_dtype)
        if x.device.type == "cpu" and x.dim() == 4:
            # oneDNN's convolutions run faster on channels-last input (1.4x for the encoder's forward and backward
            # at 512 px, benchmarks/default_cloak_profile.py); the host's weights keep their layout
            x = x.contiguous(memory_format=torch.channels_last)
        with self._compute(self.vae_device):
            mean, logvar = self._vae_posterior(x)
        return mean.float().to(self.device).contiguous(), logvar.float().to(self.device).contiguous()

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1] (not clamped) from scaled latents; differentiable, float32."""
        z = latents / self.latent_scale + self.latent_shift
        return run_tiled(self._decode_whole, z, tile_cells(self), 1, self.vae_scale_factor)

    def _decode_whole(self, z: torch.Tensor) -> torch.Tensor:
        with self._compute(self.vae_device):
            out = self._vae_decode(z.to(self.vae_device, self.vae_dtype))
        return out.float().to(self.device)

    # text
    def encode_text(self, prompts: str | list[str]) -> Conditioning:
        if isinstance(prompts, str):
            prompts = [prompts]
        with torch.no_grad():
            cond = self._encode_text(list(prompts))
        pooled = None if cond.pooled is None else cond.pooled.detach()
        return Conditioning(cond.context.detach(), pooled, cond.extras)

    # UNet
    def model_output(self, latents: torch.Tensor, timesteps: torch.Tensor | int, cond: Conditioning,
                     weight_overrides: Mapping[str, torch.Tensor] | None = None) -> torch.Tensor:
        """Raw UNet output (eps or v, see ``prediction_type``) for scaled latents at integer timesteps."""
        self._require_borrowed()
        b = latents.shape[0]
        t = torch.as_tensor(timesteps, device=self.device).long().reshape(-1)
        if t.numel() == 1:
            t = t.expand(b)
        weights = self.parameter_views()
        if weight_overrides:
            unknown = set(weight_overrides) - set(weights)
            if unknown:
                raise ModelError(f"weight overrides name unknown UNet parameters: {sorted(unknown)[:3]}")
            weights = {**weights, **{k: v.to(self.dtype) for k, v in weight_overrides.items()}}
        x = latents.to(self.device, self.dtype)
        if (getattr(self._memory, "score_distillation", False) and latents.requires_grad
                and not any(v.requires_grad for v in (weight_overrides or {}).values())):
            # score distillation (memory mode): no UNet backward; the UNet's Jacobian is replaced by the identity
            # (straight-through), so d(loss)/d(latents) = d(loss)/d(output), as in SDS (Poole et al. 2022)
            with torch.no_grad(), self._compute(self.device):
                out = self._unet(x.detach(), t, cond.repeat_to(b), weights)
            return out.float() + (latents - latents.detach()).float()
        with self._compute(self.device):
            out = self._unet(x, t, cond.repeat_to(b), weights)
        return out.float()

    def predict_noise(self, latents: torch.Tensor, timesteps: torch.Tensor | int, cond: Conditioning,
                      weight_overrides: Mapping[str, torch.Tensor] | None = None) -> torch.Tensor:
        """Predicted noise (eps) whatever the model's parameterisation."""
        from .diffusion import eps_from_output

        out = self.model_output(latents, timesteps, cond, weight_overrides)
        return eps_from_output(out, latents.float(), timesteps, self.alphas_cumprod, self.prediction_type)

    @property
    def num_train_timesteps(self) -> int:
        return int(self.alphas_cumprod.shape[0])

    # cross-attention
    def cross_attention_layers(self) -> list[CrossAttentionLayer]:
        params = self.unet_parameters()
        layers = []
        for name, host_name, module in self._cross_attention_modules():
            found = {}
            for key in ("to_q", "to_k", "to_v", "to_out"):
                suffix = f"{host_name}.{key}.weight" if key != "to_out" else f"{host_name}.to_out.0.weight"
                if suffix not in params:
                    raise ModelError(f"cross-attention layer {host_name} has no {suffix}")
                found[key] = suffix
            k = params[found["to_k"]]
            q = params[found["to_q"]]
            layers.append(CrossAttentionLayer(name, host_name, module, found, int(q.shape[1]), int(k.shape[1])))
        return layers

    def _check_images(self, images: torch.Tensor) -> None:
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected images of shape (B, 3, H, W), got {tuple(images.shape)}")
        if images.shape[0] == 0:
            raise ValueError("empty batch of images")
        h, w = images.shape[-2:]
        f = self.vae_scale_factor
        if h % f or w % f:
            raise ValueError(f"image size {w}x{h} is not a multiple of {f}; pad it first (protect_core.images)")

    def describe(self) -> dict:
        """Facts about the model for summaries and reports."""
        n_unet = sum(p.numel() for p in self.unet_parameters().values())
        return {"family": self.family, "prediction_type": self.prediction_type,
                "device": str(self.device), "dtype": str(self.dtype).replace("torch.", ""),
                "unet_parameters": n_unet, "cross_attention_layers": len(list(self._cross_attention_modules()))}
