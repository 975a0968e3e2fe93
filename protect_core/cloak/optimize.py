"""The cloak optimiser: one projected-gradient loop shared by every cloak method.

A method (``protect_core.cloak.methods``) only says *what* to minimise; this module owns *how*: the perturbation
``delta``, the L-inf budget ``eps`` and the [0, 1] box, the optional perceptual budget (a hinge penalty during the
run, enforced exactly at the end), the robust option (expectation over JPEG/resize/blur/noise), seeding,
progress/cancellation and the final 8-bit quantisation.

Guarantees of :func:`optimize` for its output ``cloaked``:

* ``cloaked`` lies on 8-bit levels (``round(x*255)/255``) and in [0, 1] (except for the rare pixel where no 8-bit
  level is within ``eps`` of the clean value; that pixel keeps its clean value);
* ``max |cloaked - clean| <= eps`` (+1e-6) *after* quantisation: a pixel whose rounding would leave the budget is
  rounded one level toward the clean image instead;
* with ``settings.perceptual_budget = p``: ``perceptual_distance(cloaked, clean) <= p`` for every image (the delta
  is scaled down per image by bisection, on quantised candidates, until it holds);
* with ``channel_tied=True`` (greyscale art) one delta is shared by the three channels;
* same seed and inputs -> the same bytes on CPU (only ``torch.Generator`` objects are used, never the global RNG);
* the host's model is borrowed (``with host.borrowed():``) and comes back unchanged, also on error or cancellation.

Optimisers: ``pgd`` (projected sign gradient, ``delta -= step_size * sign(grad)``) and ``adam`` (Adam on ``delta``
with learning rate ``step_size``, projected after each step). A method's :meth:`~.base.CloakMethod.shared_parameters`
(CAAT's K/V copies) get their gradient from the same backward pass as ``delta`` (one model pass per step).

The reported objective (``objective_before``/``objective_after``) costs two evaluations outside the image steps;
option ``objective_samples`` sets the (t, noise) draws of the UNet-loss methods (default
:data:`OBJECTIVE_SAMPLES`) and ``objective_samples=0`` skips both evaluations for any method (reported as None).
"""
from __future__ import annotations

import time

import torch

from ..memory import memory_session, resolve_memory
from ..metrics import perceptual_distance
from ..progress import Progress
from .base import CloakMethod, CloakSettings
from .robust import random_transform
from .shaping import check_shaping, eps_map

OPTIMIZERS = ("pgd", "adam")
#: default draws of the reported objective (UNet-loss methods; paired: before and after share the draws)
OBJECTIVE_SAMPLES = 2
#: options the optimiser itself reads, valid for every method
OPTIMIZER_OPTIONS = ("objective_samples", "perceptual_weight", "random_start", "robust_transforms", "shaping",
                     "shaping_floor")
_TOL = 5e-7  # float32 slack when comparing |cloaked - clean| with eps (the promise is eps + 1e-6)


def validate_settings(s: CloakSettings) -> None:
    """Raise ValueError naming the problem when resolved settings cannot be used."""
    if s.eps is None or not 0 < float(s.eps) <= 1:
        raise ValueError(f"eps must be in (0, 1] in [0, 1] pixel units (8/255 = 0.0314), got {s.eps!r}")
    if s.steps is None or int(s.steps) != s.steps or s.steps < 0:
        raise ValueError(f"steps must be a whole number >= 0, got {s.steps!r}")
    if s.step_size is None or not float(s.step_size) > 0:
        raise ValueError(f"step_size must be > 0, got {s.step_size!r}")
    if s.optimizer not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {s.optimizer!r}")
    if s.perceptual_budget is not None and not float(s.perceptual_budget) > 0:
        raise ValueError(f"perceptual_budget must be > 0 (e.g. 0.05) or None, got {s.perceptual_budget!r}")
    if int(s.robust_samples) < 1:
        raise ValueError(f"robust_samples must be >= 1, got {s.robust_samples!r}")
    check_shaping(s.options)


def box_bounds(clean: torch.Tensor, eps, channel_tied: bool = False):
    """Per-pixel (lo, hi) for delta: |delta| <= eps and clean + delta in [0, 1] (shared bounds when tied); ``eps``
    is a number or a per-pixel map broadcastable to ``clean`` (option shaping)."""
    lo = torch.clamp(-clean, min=-eps)
    hi = torch.clamp(1 - clean, max=eps)
    if channel_tied:
        lo, hi = lo.amax(1, keepdim=True), hi.amin(1, keepdim=True)
    return lo, hi


def quantize_within(x: torch.Tensor, clean: torch.Tensor, eps: float) -> torch.Tensor:
    """Round to 8-bit levels, stepping one level toward ``clean`` wherever rounding would leave the eps budget."""
    levels = torch.round(x.clamp(0, 1) * 255)
    over = (levels / 255 - clean).abs() > eps + _TOL
    levels = torch.where(over, levels - torch.sign(levels / 255 - clean), levels).clamp(0, 255)
    q = levels / 255  # exactly what round(q * 255) / 255 gives back
    still = (q - clean).abs() > eps + _TOL       # only when eps < 1/255: keep the clean value there
    return torch.where(still, clean, q)


@torch.no_grad()
def finalize(clean: torch.Tensor, delta: torch.Tensor, eps: float, budget: float | None = None,
             kind: str = "auto", iters: int = 10, tol: float = 0.005):
    """Quantised ``clean + s*delta`` with per-image ``s`` in [0, 1]: s = 1 unless the perceptual budget is exceeded,
    then the largest s found whose *quantised* result meets it. Returns (cloaked, distances or None).

    The search keeps a bracket ``lo`` (meets the budget) / ``hi`` (exceeds it) like a bisection, but proposes each
    next ``s`` where the square root of the distance, close to linear in ``s`` for small perturbations (DSSIM and
    LPIPS both grow about quadratically), crosses the budget's, safeguarded to stay inside the bracket; an image is
    done once a success lies within ``tol`` (relative) below the budget or the bracket is narrower than a 10-step
    bisection's. At most ``iters`` evaluations after the first, as before; usually two or three."""
    x = quantize_within(clean + delta, clean, eps)
    if budget is None:
        return x, None
    dist = perceptual_distance(x, clean, kind)
    bad = dist > budget
    if not bool(bad.any()):
        return x, dist
    shape = (-1,) + (1,) * (clean.ndim - 1)
    best = quantize_within(clean, clean, eps)
    d0 = perceptual_distance(best, clean, kind)
    best = torch.where((d0 > budget).view(shape), clean, best)
    n, dev = len(clean), clean.device
    lo, hi = torch.zeros(n, device=dev), torch.ones(n, device=dev)
    r_lo, r_hi = d0.clamp(max=budget).sqrt(), dist.sqrt()          # sqrt-distance at the bracket ends
    r_target = torch.tensor(float(budget), device=dev).sqrt()
    best_d = torch.where(d0 > budget, torch.zeros_like(d0), d0)
    active = bad.clone()
    for _ in range(iters):
        if not bool(active.any()):
            break
        width = hi - lo
        guess = lo + width * (r_target - r_lo) / (r_hi - r_lo).clamp(min=1e-12)
        mid = torch.minimum(torch.maximum(guess, lo + 0.05 * width), hi - 0.05 * width)
        mid = torch.where(torch.isfinite(mid), mid, (lo + hi) / 2)
        cand = quantize_within(clean + mid.view(shape) * delta, clean, eps)
        d = perceptual_distance(cand, clean, kind)
        ok = (d <= budget) & active
        miss = (d > budget) & active
        best = torch.where(ok.view(shape), cand, best)   # lo only rises on success: the last success is largest
        best_d = torch.where(ok, d, best_d)
        lo, r_lo = torch.where(ok, mid, lo), torch.where(ok, d.sqrt(), r_lo)
        hi, r_hi = torch.where(miss, mid, hi), torch.where(miss, d.sqrt(), r_hi)
        close = ok & (d >= budget * (1 - tol))
        active = active & ~close & ((hi - lo) > 2.0 ** -iters)
    x = torch.where(bad.view(shape), best, x)
    return x, torch.where(bad, best_d, dist)


def objective_samples(settings: CloakSettings) -> int:
    """The ``objective_samples`` option (whole number >= 0; 0 = no reported objective)."""
    v = settings.options.get("objective_samples", OBJECTIVE_SAMPLES)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or int(v) != v or int(v) < 0:
        raise ValueError(f"option objective_samples must be a whole number >= 0 (0 = skip), got {v!r}")
    return int(v)


def _objective(method: CloakMethod, host, x: torch.Tensor, seed: int, settings: CloakSettings) -> float | None:
    """The method's reported objective at ``x`` with fixed randomness, so before/after are comparable; None when
    ``objective_samples`` is 0."""
    if not objective_samples(settings):
        return None
    fn = getattr(method, "objective", None) or method.loss
    with torch.no_grad():
        return float(fn(host, x, 0, torch.Generator().manual_seed(seed + 104729)))


def image_step_units(settings: CloakSettings) -> int:
    """Progress updates one image step makes: one, or one per robust sample (each its own forward+backward)."""
    return int(settings.robust_samples) if settings.robust else 1


def progress_steps(method: CloakMethod, settings: CloakSettings) -> int:
    """Every progress update one :func:`optimize` call of ``method`` with resolved ``settings`` makes: the image
    steps (times the robust samples) plus the method's own ``prepare_steps`` and ``inner_steps``."""
    return (int(settings.steps) * image_step_units(settings) + max(0, int(method.prepare_steps(settings)))
            + max(0, int(method.inner_steps(settings))))


def _hinge(x, clean, loss_value: float, weight: float, budget, kind) -> torch.Tensor:
    """Scale-free hinge: weight * |current loss| per unit of relative excess over the perceptual budget."""
    over = torch.relu(perceptual_distance(x, clean, kind) - float(budget)) / float(budget)
    return weight * max(abs(loss_value), 1e-8) * over.sum()


def _grads(loss: torch.Tensor, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
    """d(loss)/d(inputs) from one backward pass; zeros for an input the loss does not use."""
    out = torch.autograd.grad(loss, inputs, allow_unused=len(inputs) > 1)
    return [torch.zeros_like(i) if g is None else g for i, g in zip(inputs, out)]


def _step_grad(method, host, clean, delta, step, gen, settings, robust_gen, weight, mem, progress, shared=()):
    """(scaled gradients of the step's objective w.r.t. ``delta`` and each of ``shared``, the method's loss), all
    from one backward pass. Robust: each sample is back-propagated on its own (the gradient of the mean is the
    mean of the gradients; one graph at a time) and reported, but the last, as a progress update of its own (the
    step's update follows). The hinge depends on ``delta`` only."""
    budget, kind = settings.perceptual_budget, settings.perceptual_kind
    inputs = [delta, *shared]
    if not settings.robust:
        x = clean + delta
        loss = method.loss(host, x, step, gen)
        total = loss
        if weight:
            total = total + _hinge(x, clean, float(loss.detach()), weight, budget, kind)
        grads = _grads(total * mem.loss_scale, inputs)  # scale 1.0 is exact: no-op
        return grads[0], grads[1:], float(loss.detach())
    names, n = settings.options.get("robust_transforms"), int(settings.robust_samples)
    grads, value = [torch.zeros_like(i) for i in inputs], 0.0
    for k in range(n):
        loss = method.loss(host, random_transform(clean + delta, robust_gen, names), step, gen)
        for acc, g in zip(grads, _grads(loss * (mem.loss_scale / n), inputs)):
            acc += g
        value += float(loss.detach()) / n
        if k + 1 < n:
            progress.step(phase="robust", sample=k + 1)
    if weight:
        grads[0] += torch.autograd.grad(_hinge(clean + delta, clean, value, weight, budget, kind) * mem.loss_scale,
                                        delta)[0]
    return grads[0], grads[1:], value


def _unscale_all(mem, grads: list[torch.Tensor]) -> list[torch.Tensor] | None:
    """Every gradient unscaled, or None as soon as one overflowed (the scale is lowered once)."""
    out = []
    for g in grads:
        g = mem.unscale(g)
        if g is None:
            return None
        out.append(g)
    return out


def optimize(host, method: CloakMethod, images01: torch.Tensor, settings: CloakSettings,
             progress: Progress | None = None, channel_tied: bool = False, memory=None, announced: bool = False):
    """Cloak a batch ``images01`` (B, 3, H, W) in [0, 1] with ``method`` under resolved ``settings``.

    Returns ``(cloaked01, info)``; ``info`` has objective_before/after (the method's objective on the clean and the
    final image, same randomness; None with ``objective_samples=0``), objective_seconds (their cost), steps,
    seconds, losses (per step), perceptual (per image, or None).
    Progress: :func:`progress_steps` updates in all, one ``progress.step(loss=...)`` per image step plus the
    method's own (prepare work, training between steps, robust samples: each with a ``phase``); the caller has
    counted ``settings.steps`` of them in the total and this adds the rest before the first step, or
    ``announced=True``: the caller counted them all (the runner, up front for every batch). A cancelled progress
    raises ``Cancelled`` within one unit of work.
    Options read from ``settings.options``: ``perceptual_weight`` (hinge weight, default 10, in units of the current
    loss's magnitude per relative excess over the budget), ``random_start`` (uniform start in the budget, default False),
    ``robust_transforms`` (subset of robust.TRANSFORMS), ``objective_samples`` (see the module doc), ``shaping``
    ("none" or "texture": a per-pixel budget <= eps, :mod:`protect_core.cloak.shaping`) and ``shaping_floor``.
    ``memory``: a memory mode (:mod:`protect_core.memory`: "auto", "fast", "balanced", "low" or a MemoryMode);
    None = "fast" (the host as it is). ``info["memory"]`` says what took effect. Out-of-memory errors propagate
    (the runner falls back to a lower mode).
    """
    validate_settings(settings)
    objective_samples(settings)
    if images01.ndim != 4 or images01.shape[1] != 3:
        raise ValueError(f"expected images of shape (B, 3, H, W), got {tuple(images01.shape)}")
    progress = progress or Progress()
    t0 = time.perf_counter()
    eps, steps, lr = float(settings.eps), int(settings.steps), float(settings.step_size)
    budget, kind = settings.perceptual_budget, settings.perceptual_kind
    opts = settings.options
    mode = None if memory is None else resolve_memory(memory, host, method, images01[:, 0].numel())
    with host.borrowed(), memory_session(host, mode, method) as mem:
        clean = images01.detach().to(host.device, torch.float32).clamp(0, 1)
        gen = torch.Generator().manual_seed(int(settings.seed))
        robust_gen = torch.Generator().manual_seed(int(settings.seed) + 7919)
        progress.check()
        start, units = progress.done, progress_steps(method, settings)
        if not announced:
            progress.add_total(units - steps)
        method.cancel_check = progress.check  # long prepare() loops may call it (raises Cancelled)
        # a method whose prepare() or after_step() does model work of its own (an img2img target, a surrogate
        # fine-tune, training between image steps) reports each unit through method.work_step()
        method.work_progress = progress
        try:
            method.prepare(host, clean, settings, gen)
            progress.check()
            t_obj = time.perf_counter()
            before = _objective(method, host, clean, int(settings.seed), settings)
            objective_seconds = time.perf_counter() - t_obj
            box = eps_map(clean, eps, opts)     # eps, or a per-pixel map <= eps (option shaping)
            lo, hi = box_bounds(clean, box, channel_tied)
            pace = None if isinstance(box, float) else box / eps   # PGD steps scaled with the pixel's box
            delta = torch.zeros(lo.shape, device=clean.device)
            init = method.initial_delta(host, clean, settings)
            if init is not None:
                init = init.detach().to(clean.device, torch.float32)
                if init.shape[1] != lo.shape[1]:   # channel-tied (greyscale) art: one delta for the channels
                    init = init.mean(1, keepdim=True)
                delta = init.expand(lo.shape).clone()
            elif opts.get("random_start"):
                delta = (torch.rand(lo.shape, generator=gen) * 2 - 1).to(clean.device) * box
            delta = torch.maximum(torch.minimum(delta, hi), lo).requires_grad_(True)
            adam = torch.optim.Adam([delta], lr=lr) if settings.optimizer == "adam" else None
            weight = float(opts.get("perceptual_weight", 10.0)) if budget is not None else 0.0
            losses = []
            for step in range(steps):
                # no shared gradients without a model backward in the image step (score distillation)
                shared = [] if mem.score_distillation else list(method.shared_parameters())
                grad, extra, loss = _step_grad(method, host, clean, delta, step, gen, settings, robust_gen,
                                               weight, mem, progress, shared)
                grad = mem.unscale(grad)   # fp16: loss scaling; None = overflow, this step is skipped
                if shared:
                    method.shared_gradients(None if grad is None else _unscale_all(mem, extra), loss)
                grad = torch.zeros_like(delta) if grad is None else grad
                with torch.no_grad():
                    if adam is not None:
                        delta.grad = grad
                        adam.step()
                        delta.grad = None
                    else:
                        delta -= lr * grad.sign() if pace is None else lr * grad.sign() * pace
                    delta.copy_(torch.maximum(torch.minimum(delta, hi), lo))
                losses.append(loss)
                progress.step(loss=losses[-1])
                method.after_step(host, (clean + delta).detach(), step, gen)
        finally:
            method.work_progress = None
        progress.catch_up(start + units)   # a method that reported fewer units than it announced
        cloaked, dist = finalize(clean, delta.detach().expand_as(clean), box, budget, kind)
        t_obj = time.perf_counter()
        after = _objective(method, host, cloaked, int(settings.seed), settings)
        objective_seconds += time.perf_counter() - t_obj
    info = {"objective_before": before, "objective_after": after, "objective_seconds": objective_seconds,
            "steps": steps, "seconds": time.perf_counter() - t0, "losses": losses,
            "perceptual": None if dist is None else [float(d) for d in dist], "memory": mem.describe()}
    if getattr(method, "info", None):  # what the method chose (layers, LoRA rank, rounds...), JSON-able
        info["method_info"] = dict(method.info)
    return cloaked.to(images01.device), info
