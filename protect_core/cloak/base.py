"""The contract every cloak method implements, and the method registry.

A method is one small module in ``protect_core/cloak/methods/`` holding one subclass of :class:`CloakMethod`
decorated with :func:`register`; the optimiser (``protect_core.cloak.optimize``) owns everything else: the
perturbation, the L-inf and perceptual budgets, the robust (expectation-over-transforms) option, seeding, progress
and cancellation. Methods see images as float tensors ``(B, 3, H, W)`` in ``[0, 1]`` and return a loss to MINIMISE.

Lifecycle for one batch (or one joint set): ``prepare`` once, then ``initial_delta`` (where the perturbation starts:
zero unless the method says otherwise, e.g. the one-pass network's output), then for each step ``loss`` (the
optimiser steps the image on its gradient), then ``after_step`` (surrogate updates: ASPL, CAAT, StyleProtect,
Mist-v2's LoRA). A method with ``steps = 0`` is its ``initial_delta`` alone, finalised like any other cloak.

Shared backward (CAAT's scheme): a method that also trains private weights on the image step's own loss lists
them in :meth:`CloakMethod.shared_parameters`; the optimiser then takes the gradient w.r.t. the perturbation AND
those tensors from the one backward pass of the step and hands the latter to :meth:`CloakMethod.shared_gradients`
before ``after_step``, so no second model pass is needed for the weights.

Progress: the optimiser reports each image step. A method whose ``prepare`` or ``after_step`` runs model work of its
own (an img2img target, a surrogate fine-tune, training steps between image steps) says how many units it takes in
``prepare_steps`` / ``inner_steps`` (from the settings alone, so the runner can announce the whole run up front)
and calls :meth:`CloakMethod.work_step` once per unit, exactly that many times.
"""
from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch


@dataclass
class CloakSettings:
    """Everything a user can set for one cloak run. Budgets are in [0, 1] pixel units (eps 8/255 = 0.0314)."""

    method: str = "glaze"
    eps: float | None = None            # L-inf budget; None = the method's documented default
    steps: int | None = None
    step_size: float | None = None
    optimizer: str | None = None        # "pgd" (projected sign gradient) or "adam"
    perceptual_budget: float | None = None  # e.g. 0.05 (Glaze's p); None = L-inf only
    perceptual_kind: str = "auto"       # "auto" (LPIPS if local, else DSSIM), "dssim", "lpips"
    robust: bool = False                # expectation over JPEG/resize/blur/noise transforms
    robust_samples: int = 1
    seed: int = 0
    target_prompt: str | None = None    # glaze: the distant target style; mist2 etc.: target text
    prompt: str = "a painting in sks style"  # the prompt an attacker would fine-tune with
    layers: list[str] | None = None     # styleprotect / caat / mimicry: canonical cross-attention names
    options: dict[str, Any] = field(default_factory=dict)  # method-specific expert settings

    def resolved(self, method: "CloakMethod") -> "CloakSettings":
        """A copy with every None filled from the method's defaults."""
        d = dict(self.__dict__)
        for key, value in method.defaults.items():
            if key in d and d[key] is None:
                d[key] = value
        opts = dict(method.defaults.get("options", {}))
        opts.update(self.options)
        d["options"] = opts
        if d["step_size"] is None:
            d["step_size"] = d["eps"] / 10
        if d["optimizer"] is None:
            d["optimizer"] = "pgd"
        return CloakSettings(**d)


class CloakMethod:
    """Base class of a cloak method; subclasses set the class attributes and implement ``loss``."""

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""            # one line for --help and the node tooltip
    source: ClassVar[str] = ""             # paper / code it follows
    defaults: ClassVar[dict] = {}          # eps, steps, step_size, optimizer, options ...
    joint: ClassVar[bool] = False          # needs the whole image set at once (surrogate trained on the set)
    uses_unet: ClassVar[bool] = True       # False for encoder-only methods (cheaper; enables big tiles)

    def check_settings(self, settings: CloakSettings) -> None:
        """Raise (ValueError or StyleCloakError, one line) for resolved settings this method cannot use, before any
        model work: e.g. a file named in an option that is missing. Default: nothing to check."""

    def prepare(self, host, images: torch.Tensor, settings: CloakSettings, generator: torch.Generator) -> None:
        """Build targets, private weights etc. ``images`` are the clean inputs in [0, 1]."""

    def initial_delta(self, host, images: torch.Tensor, settings: CloakSettings) -> torch.Tensor | None:
        """Where the perturbation starts, same shape as ``images`` (the optimiser clips it into the budget), or None:
        zero (or the ``random_start`` option's uniform draw)."""
        return None

    def loss(self, host, x: torch.Tensor, step: int, generator: torch.Generator) -> torch.Tensor:
        """Scalar loss to minimise for the current cloaked images ``x`` in [0, 1] (differentiable in x)."""
        raise NotImplementedError

    def after_step(self, host, x: torch.Tensor, step: int, generator: torch.Generator) -> None:
        """Optional surrogate update after each image step (``x`` is detached)."""

    def shared_parameters(self) -> list[torch.Tensor]:
        """Tensors besides the image whose gradient the method wants from the image step's own backward pass
        (default: none). The optimiser asks once per image step, before ``loss``; a non-empty answer is a request:
        that step's ``loss`` must keep these tensors in its graph. The optimiser does not ask when the image step
        has no model backward (memory mode ``low``'s score distillation), so ``after_step`` must cope without."""
        return []

    def shared_gradients(self, grads: list[torch.Tensor] | None, loss: float) -> None:
        """d(loss)/d(shared_parameters()) of this image step (mean over robust samples; the perceptual hinge does not
        depend on them), called before ``after_step``; ``grads`` is None when a half-precision step overflowed
        (the image step is skipped too). ``loss`` is the step's reported loss."""

    def prepare_steps(self, settings: CloakSettings) -> int:
        """Progress units ``prepare`` reports through :meth:`work_step` (0: it does no long work)."""
        return 0

    def inner_steps(self, settings: CloakSettings) -> int:
        """Progress units all ``after_step`` calls of one run report through :meth:`work_step` together."""
        return 0

    def work_step(self, **info) -> None:
        """One announced unit of the method's own work done: moves the bar (raises Cancelled when stopped)."""
        progress = getattr(self, "work_progress", None)
        if progress is not None:
            progress.step(**info)
        else:
            check = getattr(self, "cancel_check", None)
            if check is not None:
                check()


METHODS: dict[str, type[CloakMethod]] = {}


def register(cls: type[CloakMethod]) -> type[CloakMethod]:
    if not cls.name or cls.name in METHODS:
        raise ValueError(f"cloak method needs a unique name, got {cls.name!r}")
    METHODS[cls.name] = cls
    return cls


_DISCOVERED = False


def _discover() -> None:
    global _DISCOVERED
    from . import methods

    _DISCOVERED = True
    for info in pkgutil.iter_modules(methods.__path__):
        importlib.import_module(f"{methods.__name__}.{info.name}")


def available_methods() -> dict[str, type[CloakMethod]]:
    if not _DISCOVERED:  # not "if not METHODS": a direct import of one method module must not hide the others
        _discover()
    return dict(sorted(METHODS.items()))


def get_method(name: str) -> CloakMethod:
    methods = available_methods()
    if name not in methods:
        raise ValueError(f"unknown cloak method {name!r}; choose from {', '.join(methods)}")
    return methods[name]()
