"""Guarantees that the host's model is borrowed, never changed.

:func:`borrow_modules` wraps every gradient session (see ``HostModel.borrowed``). On the way out, however the block
ended, it restores each parameter's ``requires_grad`` flag and each module's ``training`` flag, and removes any hook
(and any new plain attribute) that appeared on the host's modules during the session. :func:`fingerprint` gives tests
a digest of everything that must come back bit-identical: weights and buffers, flags, hooks, device and dtype
placement, and the attributes a memory session sets for a borrow (:data:`SESSION_ATTRS`: checkpointing flags and
functions, attention processors, instance-level ``forward`` overrides), compared by value or object identity.
"""
from __future__ import annotations

import contextlib
import hashlib
import logging
from typing import Iterator, Mapping

import torch

log = logging.getLogger(__name__)

_HOOK_TABLES = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks",
                "_state_dict_hooks", "_load_state_dict_pre_hooks", "_forward_hooks_with_kwargs",
                "_forward_pre_hooks_with_kwargs")

#: attributes a memory session (protect_core.memory) may set on a host module for the length of a borrow
SESSION_ATTRS = ("forward", "gradient_checkpointing", "_gradient_checkpointing_func", "processor")


def _hook_keys(module: torch.nn.Module) -> dict[str, set]:
    return {t: set(getattr(module, t).keys()) for t in _HOOK_TABLES if hasattr(module, t)}


@contextlib.contextmanager
def borrow_modules(modules: Mapping[str, torch.nn.Module]) -> Iterator[None]:
    """Record flags and hooks of ``modules``; restore them on exit, whatever happens inside."""
    flags, training, hooks, attrs = [], [], [], []
    for root in modules.values():
        if root is None:
            continue
        for p in root.parameters():
            flags.append((p, p.requires_grad))
        for m in root.modules():
            training.append((m, m.training))
            hooks.append((m, _hook_keys(m)))
            attrs.append((m, set(m.__dict__)))
    try:
        yield
    finally:
        for p, flag in flags:
            if p.requires_grad != flag:
                p.requires_grad_(flag)
        for m, was in training:
            m.training = was
        leaked = 0
        for m, before in hooks:
            for table, keys in before.items():
                d = getattr(m, table)
                for k in list(d.keys()):
                    if k not in keys:
                        del d[k]
                        leaked += 1
        # Libraries initialise lazily on a module's first use (transformers installs output-capturing hooks and
        # sets a flag on first `output_hidden_states=True`): drop such new attributes with the hooks, so the module
        # is exactly as it was and the library re-initialises itself when the host next needs it.
        for m, before in attrs:
            for k in [k for k in m.__dict__ if k not in before]:
                del m.__dict__[k]
        if leaked:
            log.debug("removed %d hook(s) added to the host's model during the session", leaked)


def _tensor_digest(t: torch.Tensor) -> str:
    t = t.detach()
    if t.is_inference():
        with torch.inference_mode():
            t = t.clone()
        t = t.cpu()
    t = t.cpu().contiguous()
    if t.dtype in (torch.bfloat16, torch.float16):
        t = t.view(torch.int16)
    return hashlib.sha256(t.numpy().tobytes()).hexdigest()


def _attr_token(value) -> object:
    """A comparable stand-in for an attribute value: plain values as they are, other objects by type and identity
    (the very object must come back, not an equal copy)."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return f"{type(value).__module__}.{type(value).__qualname__}@{id(value):#x}"


def session_attrs(root: torch.nn.Module) -> dict[str, object]:
    """``{"<module>.<attr>": token}`` for each :data:`SESSION_ATTRS` entry set on a module instance of ``root``."""
    return {f"{name}.{attr}" if name else attr: _attr_token(m.__dict__[attr])
            for name, m in root.named_modules() for attr in SESSION_ATTRS if attr in m.__dict__}


def fingerprint(modules: Mapping[str, torch.nn.Module]) -> dict:
    """Everything about ``modules`` that a borrow must leave unchanged, as a comparable dict."""
    out = {}
    for key, root in modules.items():
        if root is None:
            continue
        tensors = {f"p:{n}": p for n, p in root.named_parameters()}
        tensors.update({f"b:{n}": b for n, b in root.named_buffers()})
        out[key] = {
            "tensors": {n: _tensor_digest(t) for n, t in tensors.items()},
            "placement": {n: (str(t.device), str(t.dtype)) for n, t in tensors.items()},
            "requires_grad": {n: p.requires_grad for n, p in root.named_parameters()},
            "training": {n: m.training for n, m in root.named_modules()},
            "hooks": {n: sum(len(v) for v in _hook_keys(m).values()) for n, m in root.named_modules()},
            "session_attrs": session_attrs(root),
            "class": type(root).__name__,
        }
    return out


def diff_fingerprints(a: dict, b: dict) -> list[str]:
    """Human-readable differences between two fingerprints (empty when identical)."""
    problems = []
    for key in sorted(set(a) | set(b)):
        if key not in a or key not in b:
            problems.append(f"{key}: module appeared or vanished")
            continue
        for part in a[key]:
            if a[key][part] != b[key][part]:
                if isinstance(a[key][part], dict):
                    pa, pb = a[key][part], b[key][part]
                    names = sorted(n for n in set(pa) | set(pb) if n not in pa or n not in pb or pa[n] != pb[n])
                    problems.append(f"{key}.{part} changed: {names[:5]}")
                else:
                    problems.append(f"{key}.{part} changed")
    return problems
