"""IMPRESS (Cao et al. 2023): purify by making the image consistent under the model's own VAE.

A cloak makes ``D(E(x))`` visibly differ from ``x`` (the autoencoder cannot reproduce the perturbation). IMPRESS
searches, starting from the protected image, for an image the VAE reproduces well while staying perceptually
close to the protected one::

    minimise  ||D(E(x)) - x||^2  +  alpha * max(perceptual(x, x_protected) - eps, 0)

(mean squared error in the VAE's [-1, 1] space, per image) with Adam, a cosine-decayed learning rate and a clamp to
[0, 1] after every step. Gradients go through ``host.encode``/``host.decode`` inside ``host.borrowed()`` (in half
precision under a memory mode, with the session's loss scaling; an overflowed step is skipped). The
perceptual distance is :func:`protect_core.metrics.perceptual_distance` (offline DSSIM pyramid by default, LPIPS
when its weights are already on the machine).
"""
from __future__ import annotations

import math

import torch

from ...images import pad_to_multiple, unpad
from ...metrics import perceptual_distance
from ..base import Purifier, register
from ...memory_job import active_memory, unscale_grads


def consistency_loss(host, x01: torch.Tensor) -> torch.Tensor:
    """Per-image mean of (D(E(x)) - x)^2 in [-1, 1] units; differentiable in ``x01``. Odd sizes are padded
    (reflect) for the VAE and the reconstruction is cropped back."""
    xp, size = pad_to_multiple(x01, host.vae_scale_factor)
    xm = xp.to(host.device) * 2 - 1
    rec = host.decode(host.encode(xm))
    return (unpad(rec, size) - unpad(xm, size)).pow(2).flatten(1).mean(1)


def impress_objective(host, x01, protected01, alpha: float, eps: float, kind: str = "auto"):
    """(total, consistency, perceptual) per image, as minimised by IMPRESS."""
    cons = consistency_loss(host, x01)
    perc = perceptual_distance(x01, protected01, kind=kind).to(cons.device)
    return cons + alpha * (perc - eps).clamp(min=0), cons, perc


class Adam:
    """Plain Adam (Kingma & Ba) on one tensor; small enough to keep here, and it avoids importing torch.optim
    (which pulls in torch._dynamo, seconds of start-up on a small CPU)."""

    def __init__(self, shape_like: torch.Tensor, betas=(0.9, 0.999), eps: float = 1e-8):
        self.m = torch.zeros_like(shape_like)
        self.v = torch.zeros_like(shape_like)
        self.b1, self.b2, self.eps, self.t = betas[0], betas[1], eps, 0

    @torch.no_grad()
    def step(self, x: torch.Tensor, grad: torch.Tensor, lr: float) -> None:
        self.t += 1
        self.m.mul_(self.b1).add_(grad, alpha=1 - self.b1)
        self.v.mul_(self.b2).addcmul_(grad, grad, value=1 - self.b2)
        m_hat = self.m / (1 - self.b1 ** self.t)
        v_hat = self.v / (1 - self.b2 ** self.t)
        x.sub_(lr * m_hat / (v_hat.sqrt() + self.eps))


def cosine_lr(lr: float, step: int, total: int) -> float:
    """Cosine decay from ``lr`` (step 0) to 0 (after the last step)."""
    return lr * 0.5 * (1 + math.cos(math.pi * step / max(1, total)))


@register
class Impress(Purifier):
    name = "impress"
    summary = "optimise the image until the VAE reproduces it, within a perceptual hinge of the protected image"
    source = "Cao et al. 2023, IMPRESS (Glaze-run defaults: eps 0.1, lr 0.01, 3000 it, alpha 0.1)"
    needs_host = True
    defaults = {"iterations": 3000, "lr": 0.01, "alpha": 0.1, "eps": 0.1, "start_noise": 0.0,
                "perceptual": "auto"}
    param_doc = {"iterations": "Adam steps (the paper's 3000; fewer still helps)",
                 "lr": "Adam learning rate at step 0, cosine-decayed to 0",
                 "alpha": "weight of the perceptual hinge",
                 "eps": "perceptual distance allowed for free (hinge threshold)",
                 "start_noise": "std of Gaussian noise added to the start image ([0, 1] units; paper's Glaze run 0.1)",
                 "perceptual": "perceptual distance: auto (LPIPS if local, else DSSIM pyramid), dssim, lpips"}

    def validate(self, params, images):
        it = params["iterations"]
        if not isinstance(it, int) or it < 0:
            raise ValueError(f"impress: iterations must be an int >= 0, got {it!r}")
        for key in ("lr", "alpha", "eps", "start_noise"):
            v = params[key]
            if not isinstance(v, (int, float)) or v < 0:
                raise ValueError(f"impress: {key} must be a number >= 0, got {v!r}")
        if params["perceptual"] not in ("auto", "dssim", "lpips"):
            raise ValueError(f"impress: perceptual must be auto, dssim or lpips, got {params['perceptual']!r}")

    def count_steps(self, params, images, host):
        return params["iterations"]

    def run(self, host, images, params, generator, progress):
        alpha, eps, kind = float(params["alpha"]), float(params["eps"]), params["perceptual"]
        total = int(params["iterations"])
        protected = images.detach().float().to(host.device)
        with torch.no_grad():
            start, cons0, _ = impress_objective(host, protected, protected, alpha, eps, kind)
        x = protected.clone()
        if params["start_noise"] > 0:
            noise = torch.randn(x.shape, generator=generator).to(x)
            x = (x + float(params["start_noise"]) * noise).clamp(0, 1)
        opt = Adam(x)
        active = active_memory(host)   # half precision (memory mode): loss scaling, overflowed steps skipped
        for step in range(total):
            xg = x.detach().requires_grad_(True)
            obj, _, _ = impress_objective(host, xg, protected, alpha, eps, kind)
            scale = 1.0 if active is None else active.loss_scale
            (grad,) = torch.autograd.grad(obj.sum() * scale, xg)   # scale 1.0 is exact: a no-op
            if unscale_grads(active, [grad]):
                opt.step(x, grad, cosine_lr(float(params["lr"]), step, total))
                x.clamp_(0, 1)
            progress.step(loss=float(obj.detach().mean()))
        x = x.detach()
        with torch.no_grad():
            end, cons1, perc1 = impress_objective(host, x, protected, alpha, eps, kind)
        info = {"objective_start": [round(float(v), 6) for v in start],
                "objective_end": [round(float(v), 6) for v in end],
                "consistency_start": [round(float(v), 6) for v in cons0],
                "consistency_end": [round(float(v), 6) for v in cons1],
                "perceptual_end": [round(float(v), 6) for v in perc1]}
        return x, info
