"""Training a one-pass cloak network against a cloak method's own objective (host-agnostic, seeded, resumable).

The default objective is photoguard's (see :mod:`protect_core.generator`). The pool of training art
(``(N, 3, H, W)`` in [0, 1], one size) is cut into fixed batches; the objective method is prepared once per batch
(glaze's img2img target is made once per image, not once per step), then each step draws one batch (a seeded
permutation per epoch), perturbs it with ``eps * net(x)`` (clipped to the [0, 1] box), passes it through a random
robust transform when ``robust`` is set, and takes one Adam step on the network's weights to minimise the method's
loss (plus the optimiser's perceptual hinge when ``perceptual_budget`` is set). Only the network learns: the model is borrowed
(``host.borrowed()``) and comes back unchanged.

Resuming: with ``checkpoint`` set, the weights, Adam's state and the step count are written there (atomically,
safetensors) every ``checkpoint_every`` steps; a rerun with the same settings continues from it, and since every
step's randomness comes from (seed, step) alone, it ends with the bytes an uninterrupted run would have written.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from ..cloak.base import CloakSettings, get_method
from ..cloak.optimize import _hinge
from ..cloak.robust import random_transform
from ..errors import StyleCloakError
from ..progress import Progress
from .network import CloakNet


@dataclass
class TrainSettings:
    objective: str = "photoguard"
    eps: float = 16 / 255
    perceptual_budget: float | None = None   # a perceptual hinge during training (None: L-inf only, the default)
    steps: int = 2000
    batch_size: int = 8
    lr: float = 5e-4
    width: int = 24
    depth: int = 3
    robust: bool = False
    seed: int = 0
    prompt: str = "a painting in sks style"
    target_prompt: str | None = None

    def check(self) -> None:
        method = get_method(self.objective)
        if method.joint or method.name == "instant":
            raise StyleCloakError(f"--objective {self.objective}: needs a per-image cloak method (not instant, not "
                                  "one trained on the whole set such as aspl)")
        if not 0 < self.eps <= 1 or self.steps < 1 or self.batch_size < 1 or not self.lr > 0:
            raise StyleCloakError("train-generator: eps in (0, 255], steps >= 1, batch size >= 1, lr > 0")


def _objectives(host, pool: torch.Tensor, ts: TrainSettings, progress: Progress) -> list:
    """One prepared objective method per fixed batch of the pool."""
    out = []
    for k in range(0, len(pool), ts.batch_size):
        method = get_method(ts.objective)
        s = CloakSettings(method=ts.objective, eps=ts.eps, perceptual_budget=ts.perceptual_budget, seed=ts.seed + k,
                          prompt=ts.prompt, target_prompt=ts.target_prompt).resolved(method)
        method.cancel_check = progress.check
        method.prepare(host, pool[k:k + ts.batch_size], s, torch.Generator().manual_seed(ts.seed + k))
        out.append((k, method, s))
        progress.step(phase="prepare", batch=k // ts.batch_size + 1)
    return out


def _order(n: int, seed: int, step: int) -> int:
    """The batch of ``step``: a seeded permutation per epoch of the ``n`` batches."""
    epoch, i = divmod(step, n)
    return int(torch.randperm(n, generator=torch.Generator().manual_seed(seed * 7919 + epoch))[i])


def _save_checkpoint(path: Path, net, adam, step: int, key: str, history: list, window: list) -> None:
    from safetensors.torch import save

    from ..atomic import atomic_write_bytes

    tensors = {f"net.{k}": v.detach().clone() for k, v in net.state_dict().items()}
    for i, p in enumerate(net.parameters()):
        st = adam.state.get(p, {})
        for name in ("exp_avg", "exp_avg_sq"):
            if name in st:
                tensors[f"adam.{i}.{name}"] = st[name].detach().clone()
        if "step" in st:
            tensors[f"adam.{i}.step"] = torch.as_tensor(st["step"], dtype=torch.float64).reshape(1).clone()
    meta = {"step": str(step), "key": key, "history": json.dumps([history, window])}
    atomic_write_bytes(path, save(tensors, metadata=meta))


def _load_checkpoint(path: Path, net, adam, key: str) -> tuple[int, list, list]:
    """(the step to resume from, the loss history, the unfinished log window) of the checkpoint into ``net`` and
    ``adam``; (0, [], []) when there is no usable checkpoint for these settings."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    if not path.is_file():
        return 0, [], []
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        if meta.get("key") != key:
            return 0, [], []
        history, window = json.loads(meta["history"])
        tensors = load_file(str(path))
    except Exception:  # noqa: BLE001 - a damaged checkpoint is started over, never half-used
        return 0, [], []
    net.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("net.")})
    for i, p in enumerate(net.parameters()):
        if f"adam.{i}.step" in tensors:
            adam.state[p] = {"step": tensors[f"adam.{i}.step"].reshape(()).float(),
                             "exp_avg": tensors[f"adam.{i}.exp_avg"], "exp_avg_sq": tensors[f"adam.{i}.exp_avg_sq"]}
    return int(meta["step"]), list(history), list(window)


def train_generator(host, pool: torch.Tensor, ts: TrainSettings, progress: Progress | None = None,
                    checkpoint=None, checkpoint_every: int = 100, log_every: int = 25):
    """Train a :class:`CloakNet` on ``pool`` against ``ts.objective``. Returns (net, history, seconds): ``history``
    holds the mean objective loss of each ``log_every`` steps. Progress: one unit per pool batch prepared, one per
    step (announced up front)."""
    ts.check()
    if pool.ndim != 4 or pool.shape[1] != 3 or len(pool) < 1:
        raise StyleCloakError(f"training pool must be (N, 3, H, W) images, got {tuple(pool.shape)}")
    progress = progress or Progress()
    t0 = time.perf_counter()
    with torch.random.fork_rng(devices=[]):   # seeded initial weights; the caller's global RNG is left as it was
        torch.manual_seed(ts.seed)
        net = CloakNet(ts.width, ts.depth).to(host.device)
    adam = torch.optim.Adam(net.parameters(), lr=ts.lr)
    key = json.dumps({**asdict(ts), "pool": [int(len(pool)), float(pool.double().sum())]}, sort_keys=True)
    ckpt = None if checkpoint is None else Path(checkpoint)
    start, history, window = (0, [], []) if ckpt is None else _load_checkpoint(ckpt, net, adam, key)
    n_batches = (len(pool) + ts.batch_size - 1) // ts.batch_size
    progress.add_total(n_batches + ts.steps - start)
    params = list(net.parameters())
    pool = pool.to(host.device, torch.float32).clamp(0, 1)
    with host.borrowed():
        objectives = _objectives(host, pool, ts, progress)
        for step in range(start, ts.steps):
            k, method, s = objectives[_order(n_batches, ts.seed, step)]
            x = pool[k:k + ts.batch_size]
            gen = torch.Generator().manual_seed(ts.seed * 1_000_003 + step)
            delta = net(x) * ts.eps
            xa = x + torch.maximum(torch.minimum(delta, 1 - x), -x)
            seen = random_transform(xa, gen) if ts.robust else xa
            loss = method.loss(host, seen, step, gen)
            total = loss
            if ts.perceptual_budget is not None:
                total = total + _hinge(xa, x, float(loss.detach()), 10.0, ts.perceptual_budget, "auto")
            # gradients for the network only (never .backward(): nothing may accumulate on the host's tensors)
            for p, g in zip(params, torch.autograd.grad(total, params)):
                p.grad = g
            adam.step()
            window.append(float(loss.detach()))
            if len(window) == log_every or step + 1 == ts.steps:
                history.append({"step": step + 1, "loss": sum(window) / len(window)})
                window = []
            progress.step(loss=window[-1] if window else history[-1]["loss"])
            if ckpt is not None and ((step + 1) % checkpoint_every == 0 or step + 1 == ts.steps):
                _save_checkpoint(ckpt, net, adam, step + 1, key, history, window)
    net.eval().requires_grad_(False)
    return net, history, time.perf_counter() - t0
