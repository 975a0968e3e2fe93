"""Private trainable adapter weights over a borrowed host: LoRA and plain weight copies.

Nothing here writes the host's tensors. An adapter owns its own float32 tensors and hands the UNet replacement
weights for one call through ``host.model_output(..., weight_overrides=adapter.overrides())``; gradients flow to the
adapter's tensors only.

* :class:`LoRA` -- low-rank update ``W' = W + (alpha / rank) * B @ A`` of Linear weights (2-D) and 1x1 conv weights
  (4-D ``(out, in, 1, 1)``, updated through a reshape). ``A`` starts small and random (seeded), ``B`` at zero, so a
  fresh LoRA reproduces the base model exactly. Any other weight shape is rejected with a clear error.
* :class:`WeightCopies` -- private float32 copies of a chosen subset of UNet weights (DreamBooth-style fine-tuning of
  that subset); the copies themselves are the overrides.
* :func:`attention_targets` -- the UNet weight names of attention projections (``to_q/to_k/to_v/to_out``) of all or
  a selection of cross-attention layers (canonical names), optionally with their self-attention siblings.

Both adapters expose ``parameters()``, ``overrides()``, ``state_dict()``, ``load_state_dict()`` and must be used
inside ``with host.borrowed():`` (they read the host's weights through its borrowed views).
"""
from __future__ import annotations

import json
import math
from typing import Iterable, Sequence

import torch

from .errors import ModelError

ATTENTION_PROJECTIONS = ("to_q", "to_k", "to_v", "to_out")


def attention_targets(host, layers: Sequence[str] | None = None, which: Iterable[str] = ATTENTION_PROJECTIONS,
                      self_attention: bool = False) -> list[str]:
    """UNet weight names of the attention projections ``which`` of the cross-attention ``layers``.

    ``layers`` are canonical cross-attention names (``host.cross_attention_layers()[i].name``, e.g. a selection from
    the Select Style-Sensitive Layers block); ``None`` means every cross-attention layer. With ``self_attention``,
    the matching self-attention (``attn1``) projection next to each chosen ``attn2`` is added where the UNet has it.
    """
    which = tuple(which)
    bad = [w for w in which if w not in ATTENTION_PROJECTIONS]
    if bad or not which:
        raise ValueError(f"unknown attention projection(s) {bad or which}; choose from {ATTENTION_PROJECTIONS}")
    all_layers = host.cross_attention_layers()
    by_name = {l.name: l for l in all_layers}
    if layers is None:
        chosen = all_layers
    else:
        layers = list(layers)
        if not layers:
            raise ValueError("empty layer selection; pass None for all cross-attention layers")
        unknown = [n for n in layers if n not in by_name]
        if unknown:
            raise ValueError(f"unknown cross-attention layer(s) {unknown[:3]}; this model has: "
                             f"{', '.join(sorted(by_name))}")
        chosen = [by_name[n] for n in dict.fromkeys(layers)]
    params = set(host.unet_parameter_names()) if self_attention else set()
    targets: list[str] = []
    for layer in chosen:
        for key in which:
            name = layer.params[key]
            targets.append(name)
            if self_attention:
                head, sep, tail = name.rpartition(".attn2.")
                sibling = f"{head}.attn1.{tail}" if sep else None
                if sibling in params:
                    targets.append(sibling)
    return targets


def _base_view(host, name: str) -> torch.Tensor:
    """The host's weight ``name`` as a gradient-free float32 tensor (no copy when the host runs in float32)."""
    try:
        w = host.parameter_views()[name]
    except KeyError:
        raise ModelError(f"UNet has no parameter {name!r}") from None
    return w.detach().float()


def _check_names(host, names: Sequence[str]) -> list[str]:
    names = list(dict.fromkeys(names))
    if not names:
        raise ValueError("no target weights given")
    known = set(host.unet_parameter_names())
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ModelError(f"UNet has no parameter(s) {unknown[:3]}")
    return names


class LoRA:
    """Low-rank adapters on ``targets`` (UNet weight names). ``alpha`` defaults to ``rank`` (scale 1)."""

    def __init__(self, host, targets: Sequence[str], rank: int = 4, alpha: float | None = None, seed: int = 0):
        if int(rank) != rank or rank < 1:
            raise ValueError(f"LoRA rank must be a positive integer, got {rank!r}")
        self.host, self.rank = host, int(rank)
        self.alpha = float(self.rank if alpha is None else alpha)
        self.scale = self.alpha / self.rank
        self.targets = _check_names(host, targets)
        g = torch.Generator().manual_seed(int(seed))
        shapes = host.unet_parameters()
        self.A: dict[str, torch.Tensor] = {}
        self.B: dict[str, torch.Tensor] = {}
        for name in self.targets:
            shape = tuple(shapes[name].shape)
            out_f, in_f = self._matrix_shape(name, shape)
            a = torch.randn(self.rank, in_f, generator=g) / math.sqrt(in_f)
            self.A[name] = a.to(host.device).requires_grad_(True)
            self.B[name] = torch.zeros(out_f, self.rank, device=host.device).requires_grad_(True)
        self._shapes = {n: tuple(shapes[n].shape) for n in self.targets}

    @staticmethod
    def _matrix_shape(name: str, shape: tuple) -> tuple[int, int]:
        if len(shape) == 2:
            return shape[0], shape[1]
        if len(shape) == 4 and shape[2:] == (1, 1):
            return shape[0], shape[1]
        raise ValueError(f"LoRA supports Linear (2-D) and 1x1 conv weights only; {name} has shape {shape}")

    def parameters(self) -> list[torch.Tensor]:
        """The trainable tensors (A and B of every target), in a fixed order."""
        return [t for n in self.targets for t in (self.A[n], self.B[n])]

    def num_parameters(self) -> int:
        return sum(t.numel() for t in self.parameters())

    def delta(self, name: str) -> torch.Tensor:
        """``scale * B @ A`` shaped like the weight ``name``."""
        return (self.scale * (self.B[name] @ self.A[name])).reshape(self._shapes[name])

    def overrides(self) -> dict[str, torch.Tensor]:
        """``{name: W + scale * B @ A}`` for every target; differentiable in A and B."""
        return {n: _base_view(self.host, n) + self.delta(n) for n in self.targets}

    def config(self) -> dict:
        return {"kind": "lora", "rank": self.rank, "alpha": self.alpha, "targets": list(self.targets)}

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Detached CPU copies: ``{"<target>.lora_A": A, "<target>.lora_B": B}``."""
        out = {}
        for n in self.targets:
            out[f"{n}.lora_A"] = self.A[n].detach().cpu().clone()
            out[f"{n}.lora_B"] = self.B[n].detach().cpu().clone()
        return out

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Copy A and B from ``state`` (as made by :meth:`state_dict`); names and shapes must match exactly."""
        expected = {f"{n}.lora_{k}" for n in self.targets for k in "AB"}
        if set(state) != expected:
            missing, extra = sorted(expected - set(state)), sorted(set(state) - expected)
            raise ValueError(f"LoRA state does not match its targets: missing {missing[:3]}, extra {extra[:3]}")
        with torch.no_grad():
            for n in self.targets:
                for key, dst in (("A", self.A[n]), ("B", self.B[n])):
                    src = state[f"{n}.lora_{key}"]
                    if tuple(src.shape) != tuple(dst.shape):
                        raise ValueError(f"LoRA {n}.lora_{key}: shape {tuple(src.shape)} != {tuple(dst.shape)}")
                    dst.copy_(src.to(dst.device, dst.dtype))

    def save(self, path) -> None:
        """Write the adapter as safetensors (rank and alpha in the metadata); never a pickle."""
        from safetensors.torch import save_file

        meta = {"kind": "lora", "rank": str(self.rank), "alpha": repr(self.alpha),
                "targets": json.dumps(self.targets)}
        save_file(self.state_dict(), str(path), metadata=meta)

    @classmethod
    def load(cls, host, path) -> "LoRA":
        """Read an adapter written by :meth:`save`; its targets must exist in ``host``'s UNet."""
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            state = {k: f.get_tensor(k) for k in f.keys()}
        if meta.get("kind") != "lora":
            raise ModelError(f"{path}: not a StyleCloak LoRA file")
        targets = json.loads(meta.get("targets", "[]")) or sorted({k.rsplit(".lora_", 1)[0] for k in state})
        lora = cls(host, targets, rank=int(meta["rank"]), alpha=float(meta["alpha"]))
        lora.load_state_dict(state)
        return lora


class WeightCopies:
    """Private float32 copies of UNet weights ``targets``, trained directly (DreamBooth on a subset)."""

    def __init__(self, host, targets: Sequence[str]):
        self.host = host
        self.targets = _check_names(host, targets)
        self.weights = {n: host.unet_weight(n).to(host.device).requires_grad_(True) for n in self.targets}

    def parameters(self) -> list[torch.Tensor]:
        return [self.weights[n] for n in self.targets]

    def num_parameters(self) -> int:
        return sum(t.numel() for t in self.parameters())

    def overrides(self) -> dict[str, torch.Tensor]:
        return dict(self.weights)

    def config(self) -> dict:
        return {"kind": "weights", "targets": list(self.targets)}

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {n: w.detach().cpu().clone() for n, w in self.weights.items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        if set(state) != set(self.targets):
            raise ValueError("weight state does not name the same UNet weights as this adapter")
        with torch.no_grad():
            for n, w in self.weights.items():
                if tuple(state[n].shape) != tuple(w.shape):
                    raise ValueError(f"{n}: shape {tuple(state[n].shape)} != {tuple(w.shape)}")
                w.copy_(state[n].to(w.device, w.dtype))
