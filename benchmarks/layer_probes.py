"""Probes for benchmarks/layer_selection.py: ways to perturb a subset of cross-attention layers during generation,
and what the toy style classifier says about the images generated under each.

Two probes, both acting only on the layers' key/value projections (``to_k``, ``to_v``: the parameters StyleProtect
and CAAT update), both leaving the host untouched (weight overrides or forward pre-hooks, removed in ``finally``):

- ``noise``: the projections' weights get relative Gaussian noise, ``W + sigma * rms(W) * n`` (noise seeded per
  layer and draw, so the noise of a layer is the same in every subset that contains it). Generic, but it *adds*
  junk rather than *removing* style: a layer may carry style and still be robust to it.
- ``swap``: the projections read the content prompt's text wherever the UNet hands them the style prompt's text
  (row by row, so the unconditional half of classifier-free guidance is left alone): the style words are silenced
  in just those layers for the whole sampling run. Deterministic (no draws).

Classifier read-outs per generation: mean ``p(style)`` and mean log-odds of the style,
``logit_style - logsumexp(other logits)``, which keeps ordering subsets when ``p`` saturates near 1.
"""
from __future__ import annotations

import contextlib

import torch

from protect_core.toy.styles import PROMPT_TEMPLATE  # shared by every world: "a painting in {style} style"

PROBES = ("noise", "swap")
PROJECTIONS = ("to_k", "to_v")


def relative_noise(host, layers, sigma: float, draw: int) -> dict[str, torch.Tensor]:
    """Per-layer weight overrides {param: W + sigma * rms(W) * noise} for to_k and to_v (noise seeded per layer)."""
    out = {}
    for li, layer in enumerate(layers):
        for key in PROJECTIONS:
            name = layer.params[key]
            w = host.unet_weight(name)
            g = torch.Generator().manual_seed(10_000 * draw + 10 * li + (key == "to_v"))
            out[name] = w + sigma * w.pow(2).mean().sqrt() * torch.randn(w.shape, generator=g).to(w)
    return out


@contextlib.contextmanager
def style_text_silenced(layers, style_context: torch.Tensor, content_context: torch.Tensor):
    """Inside the block, ``layers``' to_k/to_v read ``content_context`` (tokens, dim) in every batch row that holds
    ``style_context``. Yields a one-item list counting the calls that swapped at least one row; always unhooks."""
    swapped = [0]

    def pre(module, args):
        x = args[0] if args else None
        if not isinstance(x, torch.Tensor) or x.ndim != 3 or x.shape[1:] != style_context.shape:
            return None
        rows = (x == style_context.to(x)).flatten(1).all(1)
        if not bool(rows.any()):
            return None
        swapped[0] += 1
        return (torch.where(rows[:, None, None], content_context.to(x), x), *args[1:])

    handles = []
    try:
        for layer in layers:
            for key in PROJECTIONS:
                handles.append(layer.module.get_submodule(key).register_forward_pre_hook(pre))
        yield swapped
    finally:
        for h in handles:
            h.remove()


def classifier_readout(clf, images01: torch.Tensor, style: str) -> tuple[float, float]:
    """(mean p(style), mean log-odds of the style) over ``images01``."""
    logits = clf.logits(images01).double()
    j = clf.styles.index(style)
    others = torch.cat([logits[:, :j], logits[:, j + 1:]], dim=1)
    return float(logits.softmax(-1)[:, j].mean()), float((logits[:, j] - others.logsumexp(-1)).mean())


def generate_readout(host, clf, style: str, samples: int, size: int, overrides=None, seed: int = 0):
    from protect_core.sampling import txt2img

    imgs = txt2img(host, [PROMPT_TEMPLATE.format(style=style)] * samples, height=size, width=size, steps=20, guidance=4.0, seed=seed,
                   weight_overrides=overrides)
    return classifier_readout(clf, imgs, style)


def subset_moves(host, clf, style: str, subsets, layers: dict, probe: str, *, samples: int, size: int,
                 sigma: float = 2.0, draws: int = 2, content_prompt: str = "a painting"):
    """Clean read-out and, for every subset of layer names, the mean movement of both read-outs under ``probe``:
    (clean_p, clean_logodds), {frozenset(subset): (drop_p, drop_logodds)}. Drops are clean minus perturbed."""

    if probe not in PROBES:
        raise ValueError(f"unknown probe {probe!r}; choose from {', '.join(PROBES)}")
    names = sorted(layers)
    with host.borrowed(), torch.no_grad():
        clean = generate_readout(host, clf, style, samples, size)
        moves = {}
        if probe == "noise":
            noise = [relative_noise(host, [layers[n] for n in names], sigma, d) for d in range(draws)]
            for subset in subsets:
                params = {layers[n].params[key] for n in subset for key in PROJECTIONS}
                reads = [generate_readout(host, clf, style, samples, size, {p: nz[p] for p in params})
                         for nz in noise]
                moves[frozenset(subset)] = tuple(c - sum(r[i] for r in reads) / len(reads)
                                                 for i, c in enumerate(clean))
        else:
            style_ctx = host.encode_text([PROMPT_TEMPLATE.format(style=style)]).context[0]
            content_ctx = host.encode_text([content_prompt]).context[0]
            for subset in subsets:
                with style_text_silenced([layers[n] for n in subset], style_ctx, content_ctx) as swapped:
                    read = generate_readout(host, clf, style, samples, size)
                if not swapped[0]:
                    raise RuntimeError(f"the text swap on {sorted(subset)} never fired: this host does not hand "
                                       "its to_k/to_v the text context")
                moves[frozenset(subset)] = tuple(c - r for c, r in zip(clean, read))
    return clean, moves
