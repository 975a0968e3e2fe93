"""How many (t, noise) draws the reported objective needs: the paired noise of objective_after - objective_before.

    PYTHONPATH=. python benchmarks/objective_draws.py --model toy --methods caat,styleprotect,aspl --steps 50

The UNet-loss methods report ``objective`` = -(denoising loss under the host's weights), before and after, with the
SAME seeded draws (paired). This cloaks the toy world's held-out style with each method's default preset (``--steps``
image steps, each count in ``--steps``), then evaluates the per-draw paired change d = loss(cloaked) - loss(clean)
on ``--draws`` draws per image and prints, per method and step count: mean d, its spread (sd over rows), the share
of rows with d < 0, and for k = 1, 2, 4, 8 draws per image what the reported change (the mean of k x images rows)
would be worth: its relative standard error sd / sqrt(k * images) / mean, and the share of the disjoint groups of
k x images rows whose mean has the wrong sign (the objective would report no improvement). One run, CPU.
"""
from __future__ import annotations

import argparse
import math
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from protect_core.cloak.base import get_method  # noqa: E402
from protect_core.cloak.optimize import optimize  # noqa: E402
from protect_core.cloak.presets import settings_for  # noqa: E402
from protect_core.diffusion import denoising_loss  # noqa: E402


def paired_rows(host, method, clean, cloaked, draws: int, seed: int = 1) -> torch.Tensor:
    """Per-row denoising loss change (cloaked - clean) under the host's weights, same draws for both."""
    out = []
    with host.borrowed(), torch.no_grad():
        cond = host.encode_text([method.settings.prompt])
        for x in (clean, cloaked):
            z = host.encode(x * 2 - 1)
            z = z.repeat(draws, *([1] * (z.ndim - 1)))
            out.append(denoising_loss(host, z, cond, torch.Generator().manual_seed(seed), None, None, "none"))
    return out[1] - out[0]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="toy")
    p.add_argument("--methods", default="caat,styleprotect,aspl")
    p.add_argument("--steps", default="5,50", help="comma-separated image step counts")
    p.add_argument("--images", type=int, default=4)
    p.add_argument("--draws", type=int, default=256, help="draws per image for the paired statistics")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    from protect_core.backends.loading import load_host

    host = load_host(args.model)
    if args.model == "toy":
        from protect_core.toy.model import toy_world
        from protect_core.toy.styles import render

        world = toy_world()
        clean = render(world["held_out"], args.images, size=int(world["size"]), seed=0)
    else:
        clean = torch.rand(args.images, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    n = args.images
    print(f"model {args.model}, {n} images of {clean.shape[-1]} px, {args.draws} draws per image, "
          f"torch {torch.__version__}\n")
    print("| method | steps | mean d | sd d | rows d < 0 | rel. SE k=1 / 2 / 4 / 8 "
          "| wrong-sign groups k=1 / 2 / 4 / 8 |")
    print("|---|---|---|---|---|---|---|")
    for steps in (int(v) for v in args.steps.split(",")):
        for name in args.methods.split(","):
            method = get_method(name)
            s = settings_for(method, "default", steps=steps, options={"objective_samples": 0})
            cloaked, _ = optimize(host, method, clean, s)
            d = paired_rows(host, method, clean, cloaked, args.draws)   # draw-major: rows r*n .. r*n+n-1
            mean, sd = float(d.mean()), float(d.std())
            ks = (1, 2, 4, 8)
            rse = [sd / math.sqrt(k * n) / abs(mean) for k in ks]
            wrong = [float((d[: len(d) // (k * n) * k * n].view(-1, k * n).mean(1) < 0).float().mean()) for k in ks]
            print(f"| {name} | {steps} | {mean:.4g} | {sd:.3g} | {float((d < 0).float().mean()):.3f} | "
                  + " / ".join(f"{v:.2f}" for v in rse) + " | " + " / ".join(f"{w:.3f}" for w in wrong) + " |",
                  flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
