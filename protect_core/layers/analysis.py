"""Rank a model's cross-attention (attn2) layers by how style-sensitive they are on the user's images.

The score (StyleProtect's idea: activation strength under style vs content prompts, checked against an external
style model; plus a causal term: how much the UNet's prediction depends on the layer's reading of the style text),
exactly as computed here. Notation: images i = 1..N (centre-cropped, resized to ``size``), timesteps
t in ``timesteps``, noise seeds s = 1..``seeds``; ``z_i`` = VAE posterior mean, ``x_its`` = sqrt(a_t) z_i +
sqrt(1 - a_t) eps_is (eps drawn once per seed from ``seed``, shared by all t); ``A_l^P(x)`` = output of layer l's
attn2 module, shape (HW, C), for prompt P (one UNet call per (t, s, batch) runs the style and content prompts on
the same noisy latents).

1. Style sensitivity, per timestep and overall::

       r_l(i,t,s) = ||A_l^style(x_its) - A_l^content(x_its)||_F / (||A_l^content(x_its)||_F + 1e-12)
       S_l(t)     = mean over i, s of r_l(i,t,s)          (the heat map's cells)
       S_l        = mean over t of S_l(t);      S^_l = S_l / max_k S_k   (relative, in [0, 1])

   The ratio is invariant to the scale of a layer's output, so loud layers do not win by loudness alone.
2. Style correlation (representational similarity with the external style model): each image gets a layer
   response vector ``phi_l(i)`` = channel means and channel standard deviations (over the HW tokens) of
   ``A_l^style``, averaged over t and s (AdaIN-style feature statistics). Over all pairs i < j::

       C_l = Spearman( [||phi_l(i) - phi_l(j)||_2]_{i<j} ,  [D_style(i, j)]_{i<j} )

   with ``D_style`` the descriptor's distance (see :mod:`protect_core.layers.descriptor`: CLIP cosine distance when
   a CLIP vision model is given, else the offline VAE-Gram distance). A layer whose responses separate the images
   the way the style model does carries style. Needs N >= 3 images (3 pairs); otherwise, or when either side is
   constant, C_l is undefined (reported as null) and counts as 0.
3. Causal effect (score "causal" or "combined"; :mod:`protect_core.layers.causal` does it): ``e(x; c)`` = the
   UNet's output (eps or v) with every cross-attention layer reading text context c, ``e(x; c_S, l <- c_C)`` = the
   same call in which layer l alone (its to_k and to_v) reads the content prompt's context c_C::

       k_l(i,t,s) = ||e(x_its; c_S) - e(x_its; c_S, l <- c_C)||_2 / (||e(x_its; c_S) - e(x_its; c_C)||_2 + 1e-12)
       K_l(t)     = mean over i, s of k_l(i,t,s)          (the heat map's second block)
       K_l        = mean over t of K_l(t)

   the share of the style-vs-content change of the prediction that goes away when layer l alone stops reading the
   style text (leave-one-layer-out: one extra UNet call per layer, per (t, s, batch)). S_l says how differently a
   layer responds to the style text; K_l how much that matters downstream, where the residual stream and later
   layers may dwarf or undo a large relative change (on the toy model the mid-block layer ranks 1st to 4th of 7 by
   S_l, and last by K_l, in each of the 5 styles checked).
4. Base of the score, by ``score`` (default "causal")::

       B_l = K_l                     ("causal", the default)
       B_l = S_l                     ("activation": the score before the causal term)
       B_l = sqrt(S^_l * K^_l)       ("combined"; K^_l = K_l / max_k K_k)
       B^_l = B_l / max_k B_k

5. Final score, with lambda = ``correlation_weight`` in [0, 1] (default 0.5) shrunk by the evidence, P = N(N-1)/2
   image pairs (a Spearman coefficient over 3 pairs is nearly noise, over 45 it means something)::

       lambda_eff = lambda * P / (P + 10)
       score_l    = B^_l * (1 + lambda_eff * C_l) / (1 + lambda_eff)

   The base decides; the correlation scales it by a factor between (1 - lambda_eff) / (1 + lambda_eff)
   (responses anti-correlated with style) and 1 (perfectly correlated). lambda = 0 ranks by the base alone.

Also reported: ``strength`` = mean RMS of ``A_l^style`` (activation strength, informational). Everything runs inside
``host.borrowed()`` under ``torch.no_grad()``; forward hooks are registered on the attn2 modules listed by
``host.cross_attention_layers()`` (and, for the causal term, forward pre-hooks on their ``to_k`` / ``to_v``) and
removed in ``finally`` (success, error or cancel). With a fixed ``seed`` the result is deterministic.
"""
from __future__ import annotations

import contextlib
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F

from ..diffusion import add_noise
from ..errors import ModelError
from ..progress import Progress
from .causal import ablation_effects, score_base
from .descriptor import as_descriptor
from .naming import infer_layers_per_block, order_key, to_ldm
from .settings import (DEFAULT_CONTENT_PROMPT, DEFAULT_SCORE, DEFAULT_STYLE_PROMPT, SCORES,  # noqa: F401
                       AnalysisSettings)  # re-exported

@dataclass
class LayerScore:
    name: str                       # canonical (diffusers) name
    ldm_name: str                   # ldm / ComfyUI / A1111 spelling
    score: float
    sensitivity: float              # S_l
    relative_sensitivity: float     # S^_l
    correlation: float | None       # C_l (None: undefined)
    strength: float                 # mean RMS of the attn2 output under the style prompt
    per_timestep: list[float]       # S_l(t) in the order of ``timesteps``
    rank: int = 0
    causal: float | None = None     # K_l (None: not computed, score="activation")
    causal_per_timestep: list[float] | None = None  # K_l(t) in the order of ``timesteps``


@dataclass
class LayerAnalysis:
    layers: list[LayerScore]        # best first
    timesteps: list[int]
    settings: dict
    descriptor: str
    model_family: str
    n_images: int
    notes: list[str] = field(default_factory=list)

    def top(self, k: int) -> list[str]:
        if k < 1:
            raise ValueError(f"top-k must be >= 1, got {k}")
        return [s.name for s in self.layers[:k]]


# ---- small pure pieces ------------------------------------------------------------------------------------------
def relative_change(a_style: torch.Tensor, a_content: torch.Tensor) -> torch.Tensor:
    """Per row: ||a_style - a_content||_F / ||a_content||_F for (B, ...) tensors."""
    num = (a_style - a_content).flatten(1).norm(dim=1)
    return num / (a_content.flatten(1).norm(dim=1) + 1e-12)


def channel_stats(a: torch.Tensor) -> torch.Tensor:
    """(B, tokens, C) -> (B, 2C): channel means and standard deviations over tokens."""
    return torch.cat([a.mean(1), a.std(1, unbiased=False)], 1)


def condensed(d: torch.Tensor) -> torch.Tensor:
    """Upper-triangle (i < j) entries of a square distance matrix."""
    iu = torch.triu_indices(d.shape[0], d.shape[0], offset=1)
    return d[iu[0], iu[1]]


def average_ranks(x: torch.Tensor) -> torch.Tensor:
    """Ranks 1..n with ties sharing their average rank."""
    x = x.double()
    order = torch.argsort(x, stable=True)
    ranks = torch.empty_like(x)
    ranks[order] = torch.arange(1, len(x) + 1, dtype=x.dtype)
    for v in torch.unique(x):
        tie = x == v
        if tie.sum() > 1:
            ranks[tie] = ranks[tie].mean()
    return ranks


def spearman(a: torch.Tensor, b: torch.Tensor) -> float | None:
    """Spearman rank correlation; None with fewer than 3 points or a constant side."""
    if a.numel() < 3:
        return None
    ra, rb = average_ranks(a.flatten()), average_ranks(b.flatten())
    ra, rb = ra - ra.mean(), rb - rb.mean()
    den = float(ra.norm() * rb.norm())
    if den < 1e-12:
        return None
    return float((ra * rb).sum() / den)


def effective_weight(weight: float, n_images: int) -> float:
    """lambda_eff = lambda * P / (P + 10) with P = n(n-1)/2 image pairs."""
    pairs = n_images * (n_images - 1) / 2
    return float(weight) * pairs / (pairs + 10.0)


def final_scores(base: list[float], correlation: list[float | None], weight: float) -> list[float]:
    """score_l = B^_l (1 + weight C_l) / (1 + weight), B^ = B / max B, undefined C counting as 0
    (``weight`` is lambda_eff; ``base`` is B_l, see :func:`.causal.score_base`)."""
    top = max(base) if base else 0.0
    out = []
    for s, c in zip(base, correlation):
        rel = s / top if top > 0 else 0.0
        out.append(rel * (1 + weight * (c or 0.0)) / (1 + weight))
    return out


def prepare_images(images, size: int) -> torch.Tensor:
    """(N, 3, size, size) float in [0, 1] from a batch or a list of (3, H, W) / (1, 3, H, W) tensors (RGBA: RGB)."""
    items = list(images) if not isinstance(images, torch.Tensor) or images.ndim == 4 else [images]
    if not items:
        raise ValueError("no images to analyse")
    out = []
    for k, t in enumerate(items):
        t = getattr(t, "rgb", t)
        t = t if t.ndim == 4 else t.unsqueeze(0)
        if t.ndim != 4 or t.shape[1] not in (3, 4):
            raise ValueError(f"image {k}: expected (3, H, W) RGB, got shape {tuple(t.shape)}")
        t = t[:, :3].float()
        if not torch.isfinite(t).all():
            raise ValueError(f"image {k} holds NaN or infinite values")
        h, w = t.shape[-2:]
        s = min(h, w)
        t = t[..., (h - s) // 2:(h - s) // 2 + s, (w - s) // 2:(w - s) // 2 + s]
        if s != size:
            t = F.interpolate(t, size=(size, size), mode="bilinear", align_corners=False, antialias=s > size)
        out.append(t.clamp(0, 1))
    return torch.cat(out)


# ---- recording ---------------------------------------------------------------------------------------------------
class _Recorder:
    """Per-call reductions of every layer's attn2 output; ``split`` = rows of the style half of the batch."""

    def __init__(self, names: list[str]):
        self.names, self.split, self.out, self.active = names, 0, {}, True

    def hook(self, name: str):
        def fn(module, args, kwargs, output):
            if not self.active:  # the causal part's extra calls are not recorded
                return
            a = output[0] if isinstance(output, (tuple, list)) else output
            a = a.detach().float()
            a = a.reshape(a.shape[0], -1, a.shape[-1])
            a_s, a_c = a[:self.split], a[self.split:]
            rms = a_s.flatten(1).pow(2).mean(1).sqrt()
            self.out[name] = (relative_change(a_s, a_c).cpu(), channel_stats(a_s).cpu(), rms.cpu())
        return fn


@contextlib.contextmanager
def record_attn2(layers):
    """Forward hooks on the layers' attn2 modules for the duration of the block; always removed afterwards."""
    rec = _Recorder([l.name for l in layers])
    handles = []
    try:
        for layer in layers:
            handles.append(layer.module.register_forward_hook(rec.hook(layer.name), with_kwargs=True))
        yield rec
    finally:
        for h in handles:
            h.remove()


# ---- the analysis ------------------------------------------------------------------------------------------------
def analyse_layers(host, images, settings: AnalysisSettings | None = None, descriptor=None,
                   progress: Progress | None = None) -> LayerAnalysis:
    """Score every cross-attention layer of ``host`` on ``images`` ([0, 1]); see the module doc for the score."""
    settings = (settings or AnalysisSettings()).check(host)
    x = prepare_images(images, int(settings.size))
    layers = sorted(host.cross_attention_layers(), key=lambda l: order_key(l.name))
    if not layers:
        raise ModelError("this model has no cross-attention layers to analyse")
    n, ts, n_seeds, bs = x.shape[0], list(settings.timesteps), int(settings.seeds), int(settings.batch_size)
    chunks = [(i, min(i + bs, n)) for i in range(0, n, bs)]
    use_causal = settings.score != "activation"
    progress = progress or Progress()
    progress.add_total(n_seeds * len(ts) * len(chunks) * (1 + len(layers) * use_causal) + 1)
    desc = as_descriptor(descriptor, host)
    names = [l.name for l in layers]
    ratio = torch.zeros(len(layers), len(ts), n_seeds, n, dtype=torch.float64)
    effect = torch.zeros_like(ratio) if use_causal else None
    stats: list[torch.Tensor | None] = [None] * len(layers)
    strength = torch.zeros(len(layers), dtype=torch.float64)
    notes = []
    with host.borrowed(), torch.no_grad():
        mean = torch.cat([host.posterior(x[a:b].to(host.device) * 2 - 1)[0] for a, b in chunks])
        latents = (mean - host.latent_shift) * host.latent_scale  # = host.encode(images), posterior mean
        cond_s, cond_c = host.encode_text(settings.style_prompt), host.encode_text(settings.content_prompt)
        gen = torch.Generator().manual_seed(int(settings.seed))
        noises = [torch.randn(latents.shape, generator=gen).to(latents) for _ in range(n_seeds)]
        with record_attn2(layers) as rec:
            for s in range(n_seeds):
                for ti, t in enumerate(ts):
                    for a, b in chunks:
                        x_t = add_noise(latents[a:b], noises[s][a:b], t, host.alphas_cumprod)
                        rec.split, rec.out, rec.active = b - a, {}, True
                        cond = cond_s.repeat_to(b - a).cat(cond_c.repeat_to(b - a))
                        out = host.model_output(torch.cat([x_t, x_t]), t, cond)
                        missing = [nm for nm in names if nm not in rec.out]
                        if missing:
                            raise ModelError(
                                f"forward hooks on {len(missing)} cross-attention module(s) (e.g. {missing[0]}) did "
                                "not fire: this host runs its UNet without the modules listed by "
                                "cross_attention_layers(); the layer analysis cannot observe it")
                        for li, nm in enumerate(names):
                            r, st, rms = rec.out[nm]
                            ratio[li, ti, s, a:b] = r.double()
                            if stats[li] is None:
                                stats[li] = torch.zeros(n, st.shape[1], dtype=torch.float64)
                            stats[li][a:b] += st.double()
                            strength[li] += rms.double().sum()
                        progress.step(stage="layers", seed=s, timestep=t)
                        if use_causal:
                            rec.active = False
                            effect[:, ti, s, a:b] = ablation_effects(
                                host, layers, x_t, t, cond_s, cond_c, out[:b - a], out[b - a:],
                                step=lambda: progress.step(stage="causal", seed=s, timestep=t))
        from_posterior = getattr(desc, "distances_from_posterior", None)
        d_style = (from_posterior(mean) if callable(from_posterior) and getattr(desc, "host", None) is host
                   else desc.distances(x)).double()
        progress.step(stage="descriptor")
    pairs = condensed(d_style)
    if n < 3:
        notes.append(f"correlation needs >= 3 images, got {n}: ranked by the {settings.score} base alone")
    per_t = ratio.mean(dim=(2, 3))  # (L, T)
    sens = per_t.mean(1).tolist()
    causal_t = effect.mean(dim=(2, 3)) if use_causal else None  # (L, T)
    causal = causal_t.mean(1).tolist() if use_causal else None
    corr = [spearman(condensed(torch.cdist(st / (len(ts) * n_seeds), st / (len(ts) * n_seeds))), pairs)
            for st in stats]
    weight = effective_weight(settings.correlation_weight, n)
    scores = final_scores(score_base(settings.score, sens, causal), corr, weight)
    top = max(sens) if max(sens) > 0 else 1.0
    try:
        lpb = infer_layers_per_block(names)
    except ValueError:
        lpb = 1
    rows = [LayerScore(nm, _safe_ldm(nm, lpb), scores[i], sens[i], sens[i] / top, corr[i],
                       float(strength[i]) / (n * len(ts) * n_seeds), per_t[i].tolist(), 0,
                       causal[i] if use_causal else None, causal_t[i].tolist() if use_causal else None)
            for i, nm in enumerate(names)]
    rows.sort(key=lambda r: (-round(r.score, 12), order_key(r.name)))
    for k, r in enumerate(rows):
        r.rank = k + 1
    meta = {**asdict(settings), "timesteps": ts, "effective_correlation_weight": round(weight, 6)}
    return LayerAnalysis(rows, ts, meta, getattr(desc, "name", type(desc).__name__),
                         getattr(host, "family", "unknown"), n, notes)


def _safe_ldm(name: str, lpb: int) -> str:
    try:
        return to_ldm(name, lpb)
    except ValueError:
        return ""
