"""Gradient checkpointing of a borrowed host model, for the memory modes of :mod:`protect_core.memory`.

Two kinds of model, told apart by their structure (never by the host's name):

* ldm / ComfyUI / A1111 / Forge layouts -- a UNet with ``input_blocks``, ``middle_block`` and ``output_blocks`` of
  TimestepEmbedSequential-like blocks, a first-stage VAE whose ``encoder`` / ``decoder`` hold ``down`` / ``up``
  levels (``block``, ``attn``) and a ``mid`` (``block_1``, ``attn_1``, ``block_2``). Each layer of those blocks
  (ResBlock, spatial transformer, resampler; VAE resnet and attention blocks) gets, for this borrow only, an
  instance-level ``forward`` (:func:`checkpointed_forward`) that runs the layer's own forward under
  ``torch.utils.checkpoint`` (non-reentrant). The layers themselves are wrapped rather than the blocks because
  ComfyUI iterates a block's layers itself (``forward_timestep_embed``) instead of calling the block.
* diffusers modules -- those with diffusers' boolean ``gradient_checkpointing`` attribute get the flag and
  :func:`_checkpoint_fn` as their ``_gradient_checkpointing_func``.

Both recompute during backward with the very tensors of the forward pass: the engine runs modules through
``torch.func.functional_call`` on parameter views and weight overrides (LoRA, K/V copies), which are swapped out
again before backward, so the parameters a layer holds at forward time are captured and swapped back in (again with
``functional_call``) for the recomputation; dict arguments (ComfyUI's ``transformer_options``, which layers write
into) are recomputed from a copy taken at forward time. Every change goes through ``host.set_borrowed_attr`` and is
undone when the session or the borrow ends, however it ends.
"""
from __future__ import annotations

import threading

import torch
from torch import nn

#: marks the instance-level forwards made here (tests and :func:`is_checkpointed` read it)
MARK = "__stylecloak_checkpoint__"


def _current_tensors(module: nn.Module) -> dict[str, torch.Tensor]:
    """The parameters and buffers ``module`` holds right now (inside ``functional_call``: this pass's views)."""
    state = dict(module.named_parameters(remove_duplicate=False))
    state.update(module.named_buffers(remove_duplicate=False))
    return state


def _checkpoint_fn(module, *args):
    """diffusers' ``_gradient_checkpointing_func``: checkpoint one block, recomputing with the tensors of THIS
    forward pass (the engine's ``functional_call`` views and weight overrides are undone before backward)."""
    from torch.utils.checkpoint import checkpoint

    if not isinstance(module, nn.Module):
        return checkpoint(module, *args, use_reentrant=False)
    state = _current_tensors(module)

    def run(*a):
        return torch.func.functional_call(module, state, a, strict=False, tie_weights=False)

    return checkpoint(run, *args, use_reentrant=False)


def _dict_snapshots(args: tuple, kwargs: dict) -> tuple[dict, dict]:
    """Copies of the plain-dict arguments as they are now (layers may write into them during the forward)."""
    return ({i: dict(v) for i, v in enumerate(args) if type(v) is dict},
            {k: dict(v) for k, v in kwargs.items() if type(v) is dict})


def checkpointed_forward(module: nn.Module):
    """An instance-level ``forward`` for ``module`` that checkpoints its current forward (the class's, or an
    instance forward already there). Outside gradient mode it simply calls that forward."""
    from torch.utils.checkpoint import checkpoint

    original = module.forward
    recomputing = threading.local()   # this layer's own forward, reached again through functional_call

    def forward(*args, **kwargs):
        if getattr(recomputing, "depth", 0) or not torch.is_grad_enabled():
            return original(*args, **kwargs)
        state = _current_tensors(module)
        arg_dicts, kwarg_dicts = _dict_snapshots(args, kwargs)
        first = [True]

        def run(*a):
            if first[0]:                 # the forward pass: the layer already holds this pass's tensors
                first[0] = False
                return original(*a, **kwargs)
            a = tuple(dict(arg_dicts[i]) if i in arg_dicts else v for i, v in enumerate(a))
            kw = {k: dict(kwarg_dicts[k]) if k in kwarg_dicts else v for k, v in kwargs.items()}
            recomputing.depth = getattr(recomputing, "depth", 0) + 1
            try:                         # recomputation in backward: swap this pass's tensors back in
                return torch.func.functional_call(module, state, a, kw, strict=False, tie_weights=False)
            finally:
                recomputing.depth -= 1

        return checkpoint(run, *args, use_reentrant=False)

    setattr(forward, MARK, True)
    return forward


def is_checkpointed(module: nn.Module) -> bool:
    return getattr(module.__dict__.get("forward"), MARK, False)


def _worth_checkpointing(m: nn.Module) -> bool:
    """A layer with its own sub-layers and weights (a bare conv or linear saves nothing when checkpointed)."""
    return next(m.children(), None) is not None and next(m.parameters(), None) is not None


def _layers_of(block: nn.Module) -> list[nn.Module]:
    if isinstance(block, (nn.Sequential, nn.ModuleList)):
        return [m for m in block if _worth_checkpointing(m)]
    return [block] if _worth_checkpointing(block) else []


def ldm_unet_layers(root: nn.Module | None) -> list[nn.Module]:
    """The layers of every ldm-layout UNet in ``root`` (``input_blocks`` / ``middle_block`` / ``output_blocks``)."""
    out = []
    for m in ([] if root is None else root.modules()):
        ins, mid, outs = (getattr(m, k, None) for k in ("input_blocks", "middle_block", "output_blocks"))
        if not (isinstance(ins, nn.ModuleList) and isinstance(outs, nn.ModuleList)):
            continue
        for block in [*ins, *([mid] if isinstance(mid, nn.Module) else []), *outs]:   # ComfyUI: middle may be None
            out += _layers_of(block)
    return out


def ldm_vae_layers(root: nn.Module | None) -> list[nn.Module]:
    """The resnet and attention blocks of every ldm-layout VAE encoder / decoder in ``root`` (``down`` / ``up``
    levels with ``block`` and ``attn`` lists, a ``mid`` with ``block_1``, ``attn_1``, ``block_2``)."""
    out = []
    for m in ([] if root is None else root.modules()):
        levels = next((v for v in (getattr(m, "down", None), getattr(m, "up", None))
                       if isinstance(v, nn.ModuleList)), None)
        mid = getattr(m, "mid", None)
        if not isinstance(levels, nn.ModuleList) or not isinstance(mid, nn.Module) \
                or not all(isinstance(getattr(lv, "block", None), nn.ModuleList) for lv in levels):
            continue
        for level in levels:
            out += [b for b in level.block if _worth_checkpointing(b)]
            attn = getattr(level, "attn", None)
            out += [a for a in (attn if isinstance(attn, nn.ModuleList) else []) if _worth_checkpointing(a)]
        out += [c for c in mid.children() if _worth_checkpointing(c)]
    return out


def _unique(modules: list[nn.Module]) -> list[nn.Module]:
    seen, out = set(), []
    for m in modules:
        if id(m) not in seen:
            seen.add(id(m))
            out.append(m)
    return out


def enable_checkpointing(host, root: nn.Module | None) -> int:
    """Turn on gradient checkpointing in ``root`` for this borrow (ldm layers by structure, else diffusers'
    flags); returns how many modules will be checkpointed (0: the module offers neither)."""
    layers = _unique(ldm_unet_layers(root) + ldm_vae_layers(root))
    if layers:
        for m in layers:
            host.set_borrowed_attr(m, "forward", checkpointed_forward(m))
        return len(layers)
    n = 0
    for m in ([] if root is None else root.modules()):
        if isinstance(getattr(m, "gradient_checkpointing", None), bool):
            host.set_borrowed_attr(m, "_gradient_checkpointing_func", _checkpoint_fn)
            host.set_borrowed_attr(m, "gradient_checkpointing", True)
            n += 1
    return n
