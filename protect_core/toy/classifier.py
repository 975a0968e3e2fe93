"""The toy world's judge: a small CNN that tells the procedural styles apart.

Trained on fresh renders of *every* style (the held-out one included: it is the judge, not the model), with
augmentations that mimic what generated images look like (blur, noise, small colour and contrast shifts), never
on model outputs. Inputs of any size are area-resized to the training size first.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .styles import STYLES, render_mixed


class StyleNet(nn.Module):
    """Three conv stages and a linear head on globally pooled features (about 60k parameters)."""

    def __init__(self, n_styles: int = len(STYLES), width: int = 32):
        super().__init__()
        w = width

        def stage(cin, cout):
            return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.GroupNorm(8, cout), nn.SiLU(),
                                 nn.Conv2d(cout, cout, 3, padding=1), nn.GroupNorm(8, cout), nn.SiLU())

        self.stages = nn.ModuleList([stage(3, w), stage(w, 2 * w), stage(2 * w, 2 * w)])
        self.head = nn.Linear(2 * w + 6, n_styles)

    def forward(self, x01: torch.Tensor) -> torch.Tensor:
        colour = torch.cat([x01.mean((2, 3)), x01.std((2, 3))], 1)  # palette statistics, explicitly
        h = x01 * 2 - 1
        for i, s in enumerate(self.stages):
            h = s(h)
            if i < len(self.stages) - 1:
                h = F.avg_pool2d(h, 2)
        return self.head(torch.cat([h.mean((2, 3)), colour], 1))


class StyleClassifier:
    """Inference wrapper: ``probs(images01)`` -> (B, n_styles) over ``styles``; no gradients, eval mode."""

    def __init__(self, net: StyleNet, styles=STYLES, size: int = 32, held_out: str | None = None):
        self.net = net.eval().requires_grad_(False)
        self.styles = list(styles)
        self.size = int(size)
        self.held_out = held_out

    def _prep(self, images01: torch.Tensor) -> torch.Tensor:
        if images01.ndim != 4 or images01.shape[1] != 3:
            raise ValueError(f"expected images (B, 3, H, W) in [0, 1], got {tuple(images01.shape)}")
        x = images01.detach().float().cpu().clamp(0, 1)
        if x.shape[-2:] != (self.size, self.size):
            x = F.interpolate(x, size=(self.size, self.size), mode="area")
        return x

    @torch.no_grad()
    def logits(self, images01: torch.Tensor) -> torch.Tensor:
        return self.net(self._prep(images01))

    def probs(self, images01: torch.Tensor) -> torch.Tensor:
        return self.logits(images01).softmax(-1)

    def predict(self, images01: torch.Tensor) -> list[str]:
        return [self.styles[i] for i in self.logits(images01).argmax(-1).tolist()]

    def share(self, images01: torch.Tensor, style: str) -> float:
        """Fraction of ``images01`` classified as ``style``."""
        k = self.styles.index(style)
        return float((self.logits(images01).argmax(-1) == k).float().mean())


def augment(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Random blur (as a VAE decoder blurs), pixel noise, and small brightness/contrast/colour shifts."""
    b = x.shape[0]
    x = blur(x, torch.rand(b, generator=g) * 1.2)
    x = x * (1 + 0.15 * (torch.rand(b, 1, 1, 1, generator=g) - 0.5) * 2)
    x = x + 0.05 * torch.randn(b, 3, 1, 1, generator=g)
    x = x + torch.rand(b, 1, 1, 1, generator=g) * 0.06 * torch.randn(x.shape, generator=g)
    return x.clamp(0, 1)


def blur(x: torch.Tensor, sigma: torch.Tensor, radius: int = 2) -> torch.Tensor:
    """Separable Gaussian blur of each image of ``x`` (B, C, H, W) with its own ``sigma`` (B,) in pixels."""
    b, c, h, w = x.shape
    r = torch.arange(-radius, radius + 1, dtype=torch.float32)
    k = torch.exp(-r[None] ** 2 / (2 * sigma.clamp(min=1e-3)[:, None] ** 2))
    k = (k / k.sum(1, keepdim=True)).repeat_interleave(c, 0)  # (B*C, 2r+1)
    p = F.pad(x.reshape(1, b * c, h, w), (radius,) * 4, mode="replicate")
    p = F.conv2d(p, k.view(b * c, 1, 1, -1), groups=b * c)
    p = F.conv2d(p, k.view(b * c, 1, -1, 1), groups=b * c)
    return p.view(b, c, h, w)


def train_classifier(steps: int, size: int = 32, per_style: int = 8, lr: float = 2e-3, seed: int = 0,
                     device="cpu", log=None) -> tuple[StyleNet, list[dict]]:
    """Train a :class:`StyleNet` on fresh augmented renders (a new batch every step, seeds disjoint from eval)."""
    torch.manual_seed(seed)
    net = StyleNet(len(STYLES)).to(device)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=max(1, steps), pct_start=0.1)
    g = torch.Generator().manual_seed(seed + 17)
    history = []
    for step in range(steps):
        x, y = render_mixed(STYLES, per_style, size, seed=10_000 + seed * 100_003 + step)
        loss = F.cross_entropy(net(augment(x, g).to(device)), y.to(device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % 50 == 0 or step == steps - 1:
            history.append({"step": step, "loss": round(float(loss.detach()), 5)})
            if log:
                log(f"classifier step {step}/{steps} loss {float(loss.detach()):.4f}")
    return net.cpu().eval(), history


@torch.no_grad()
def classifier_accuracy(clf: StyleClassifier, n_per_style: int = 32, size: int = 32, seed: int = 999,
                        augmented: bool = False) -> dict:
    """Per-style accuracy on fresh renders (seeds never used in training)."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for s in clf.styles:
        x, _ = render_mixed([s], n_per_style, size, seed=-(seed + 1))
        if augmented:
            x = augment(x, g)
        out[s] = clf.share(x, s)
    out["mean"] = sum(out.values()) / len(clf.styles)
    return out
