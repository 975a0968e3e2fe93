"""Causal style effect of cross-attention layers: how much the UNet's prediction depends on one layer's reading of
the style text (the ``causal`` part of the layer score; :mod:`.analysis` combines it with the activation part).

Why: the activation score (relative change of a layer's attn2 output between the style and the content prompt)
says how differently a layer *responds* to the style text, not how much that response *matters* downstream -- the
residual stream around the layer may dwarf it, or later layers may undo it. This module measures the effect on the
output directly, by a leave-one-layer-out swap of the text each layer reads.

Notation as in :mod:`.analysis`: ``x_its`` noisy latents, ``c_S`` / ``c_C`` the style / content prompt's text
context. ``e(x; c)`` is the UNet's output (eps or v) with every cross-attention layer reading ``c``;
``e(x; c_S, l <- c_C)`` is the same call in which layer l's key and value projections (``to_k``, ``to_v``) read
``c_C`` instead, all other layers still reading ``c_S``. Then::

    k_l(i,t,s) = || e(x_its; c_S) - e(x_its; c_S, l <- c_C) ||_2 / ( || e(x_its; c_S) - e(x_its; c_C) ||_2 + 1e-12 )
    K_l(t)     = mean over i, s of k_l(i,t,s);      K_l = mean over t of K_l(t)

``k_l`` is the share of the whole style-vs-content change of the prediction that goes away when layer l alone
stops reading the style text (about 1 / L when all L layers contribute alike, more for a layer the prediction
hinges on). The ratio is the same in eps, v or predicted-x0 space (at a fixed t and x_t they are affine in one
another with the same slope), so it does not depend on the model's parameterisation.

Cost: one extra UNet call per layer, per (timestep, seed, batch) of the analysis (L calls of ``batch`` rows, next
to the analysis' one call of 2 x ``batch`` rows). Mechanism: forward pre-hooks on the layer's ``to_k`` and ``to_v``
sub-modules replace their input (the text context, ``(B, tokens, context_dim)``) for one call; no weight is read
differently or written, the hooks are removed in ``finally``, and a hook that does not fire (a host that fuses or
bypasses the projections) is an error, never a silent zero.
"""
from __future__ import annotations

import contextlib

import torch

from ..errors import ModelError

PROJECTIONS = ("to_k", "to_v")


@contextlib.contextmanager
def text_swapped(layer, context: torch.Tensor):
    """Inside the block, ``layer``'s key and value projections read ``context`` (B, tokens, dim) instead of the
    text context the UNet passes them. Yields ``fired`` ({projection: number of calls seen}); always unhooks."""
    fired = {key: 0 for key in PROJECTIONS}
    handles = []

    def make(key):
        def pre(module, args):
            x = args[0] if args else None
            if not isinstance(x, torch.Tensor) or x.ndim != 3 or x.shape[0] != context.shape[0] \
                    or x.shape[-1] != context.shape[-1]:
                got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
                raise ModelError(f"{layer.name}.{key} was called with {got}, not the text context "
                                 f"(batch {context.shape[0]}, *, {context.shape[-1]}): this host feeds its "
                                 "cross-attention projections something else; use the activation score")
            fired[key] += 1
            return (context.to(x.device, x.dtype), *args[1:])
        return pre

    try:
        for key in PROJECTIONS:
            try:
                sub = layer.module.get_submodule(key)
            except AttributeError:
                raise ModelError(f"cross-attention layer {layer.name} has no {key} sub-module to swap its text "
                                 "for; use the activation score") from None
            handles.append(sub.register_forward_pre_hook(make(key)))
        yield fired
    finally:
        for h in handles:
            h.remove()


def ablation_effects(host, layers, x_t: torch.Tensor, t: int, cond_style, cond_content,
                     out_style: torch.Tensor, out_content: torch.Tensor, step=None) -> torch.Tensor:
    """``k_l`` (see the module doc) for every layer and every row of ``x_t``: a (L, B) float64 tensor.

    ``out_style`` / ``out_content`` are the model outputs for ``x_t`` with every layer reading the style / content
    prompt (the analysis' own call computes them). ``step()``, if given, runs after each layer's call (progress and
    cancellation)."""
    b = x_t.shape[0]
    cond = cond_style.repeat_to(b)
    swap = cond_content.repeat_to(b).context
    total = (out_style - out_content).flatten(1).norm(dim=1).double()
    effects = torch.zeros(len(layers), b, dtype=torch.float64)
    for li, layer in enumerate(layers):
        with text_swapped(layer, swap) as fired:
            out = host.model_output(x_t, t, cond)
        if not all(fired.values()):
            raise ModelError(f"the text swap on {layer.name} did not take effect ({fired}): this host runs its "
                             "cross-attention without the to_k/to_v modules it lists; use the activation score")
        effects[li] = (out_style - out).flatten(1).norm(dim=1).double().cpu() / (total.cpu() + 1e-12)
        if step is not None:
            step()
    return effects


def score_base(kind: str, sensitivity: list[float], causal: list[float] | None) -> list[float]:
    """B_l of the final score: S_l ("activation"), K_l ("causal") or sqrt(S^_l K^_l) ("combined"), with
    S^ = S / max S and K^ = K / max K."""
    if kind == "activation":
        return list(sensitivity)
    if causal is None:
        raise ValueError(f"score {kind!r} needs the causal effects K_l")
    if kind == "causal":
        return list(causal)
    if kind == "combined":
        s_top, k_top = max(sensitivity), max(causal)
        return [((s / s_top if s_top > 0 else 0.0) * (k / k_top if k_top > 0 else 0.0)) ** 0.5
                for s, k in zip(sensitivity, causal)]
    raise ValueError(f"unknown score {kind!r}")
