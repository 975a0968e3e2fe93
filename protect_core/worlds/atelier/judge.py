"""The atelier world's first judge: a small CNN style classifier over all sixteen artists.

Trained on augmented clean renders of every artist (held-out and dev included: it is the judge, not the model),
never on model outputs; augmentations imitate what generated images look like (blur, noise, colour shifts; from
:func:`protect_core.toy.classifier.augment`). The second, independent judge is the Mimicry Test's nearest-centroid
attribution in its own style embedding (:mod:`protect_core.mimicry.scoring`).
"""
from __future__ import annotations

import time

import torch
import torch.nn.functional as F

from . import configs
from .styles import ARTISTS, HELD_OUT, render_mixed


def train_judge(steps: int, per_artist: int = 8, lr: float = 2e-3, seed: int = 0, device="cpu", pool_per: int = 160,
                log=print):
    from ...toy.classifier import StyleNet, augment

    t0 = time.time()
    pool, labels = render_mixed(ARTISTS, max(pool_per, per_artist), configs.SIZE, seed=20_000 + seed)
    log(f"judge: pool of {pool.shape[0]} renders ({time.time() - t0:.0f} s)")
    torch.manual_seed(seed + 11)
    net = StyleNet(len(ARTISTS)).to(device)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=max(1, steps), pct_start=0.1)
    g = torch.Generator().manual_seed(seed + 17)
    hist = []
    for step in range(steps):
        idx = torch.randint(0, pool.shape[0], (per_artist * len(ARTISTS),), generator=g)
        x = pool[idx]
        if torch.rand((), generator=g) < 0.5:
            x = x.flip(3)
        loss = F.cross_entropy(net(augment(x, g).to(device)), labels[idx].to(device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % 50 == 0 or step == steps - 1:
            hist.append({"step": step, "loss": round(float(loss.detach()), 5), "seconds": round(time.time() - t0, 1)})
            log(f"judge {step}/{steps} loss {float(loss.detach()):.4f} ({time.time() - t0:.0f} s)")
    return net.cpu().eval(), hist


def load_judge(path=None):
    """The classifier of an atelier folder as a :class:`~protect_core.toy.classifier.StyleClassifier`."""
    import json
    from pathlib import Path

    from safetensors.torch import load_file

    from ...errors import ModelError
    from ...toy.classifier import StyleClassifier, StyleNet

    p = Path(path) if path is not None else configs.ASSET_DIR
    f, c = p / configs.CLASSIFIER_FILE, p / configs.CONFIG_FILE
    if not (f.is_file() and c.is_file()):
        raise ModelError(f"{p}: no atelier judge here (need {configs.CLASSIFIER_FILE} and {configs.CONFIG_FILE})")
    world = json.loads(c.read_text())
    net = StyleNet(len(world["styles"]), width=int(world["classifier"]["width"]))
    net.load_state_dict(load_file(str(f)))
    return StyleClassifier(net, world["styles"], int(world["classifier"]["size"]), world.get("held_out", HELD_OUT))
