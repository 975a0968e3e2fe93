"""Per-step time and fixed cost (seconds outside the image steps) of every cloak method, before and after issue 22's
loop changes, measured side by side in one run, alternating; prints a markdown table.

    PYTHONPATH=. python benchmarks/fixed_costs.py                      # tiny model, 64 px, CPU, 1 thread, 3 rounds
    PYTHONPATH=. python benchmarks/fixed_costs.py --model toy --methods caat,styleprotect --rounds 5

Configurations, all in today's code (the old behaviour is still reachable through options):

* ``before``: the previous defaults: ``objective_samples=8`` (draws of the reported objective of the UNet-loss
  methods; encoder methods draw nothing, so theirs is unchanged) and, for caat/styleprotect, ``shared_pass=False``
  (the two-pass loop: a second UNet forward+backward for the K/V copies after every image step);
* ``after``: today's defaults (``objective_samples`` = ``OBJECTIVE_SAMPLES``, ``shared_pass=True``);
* ``skip``: today's defaults with ``objective_samples=0`` (no reported objective: the floor of the fixed cost).

Each round runs every configuration once in a rotating order (ABC, BCA, CAB, ...), so slow drift on a shared machine
hits all of them alike; every number is the median over the rounds, ratios the median of per-round ratios.
s / step = the mean gap between consecutive image-step progress updates (what ``--steps`` multiplies; the K/V
passes of the two-pass loop fall inside the gaps); fixed s = the call's total - steps x s / step (prepare, the two
objective evaluations, the final quantisation); objective s = what the two objective evaluations took (reported by
the optimiser); "= steps" = fixed s / s per step. One untimed warm-up call per method first.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from protect_core.cloak.base import available_methods, get_method  # noqa: E402
from protect_core.cloak.optimize import OBJECTIVE_SAMPLES, optimize  # noqa: E402
from protect_core.cloak.presets import settings_for  # noqa: E402
from protect_core.progress import Progress  # noqa: E402

KV_METHODS = ("caat", "styleprotect")
CONFIGS = ("before", "after", "skip")


def options_for(name: str, config: str) -> dict:
    if config == "before":
        return {"objective_samples": 8, **({"shared_pass": False} if name in KV_METHODS else {})}
    if config == "skip":
        return {"objective_samples": 0}
    return {}


def one_call(host, name: str, images: torch.Tensor, steps: int, config: str) -> dict:
    method = get_method(name)
    settings = settings_for(method, "default", steps=steps, options=options_for(name, config))
    stamps = []
    progress = Progress(steps, on_step=lambda done, total, info: None if (info or {}).get("phase")
                        else stamps.append(time.perf_counter()))
    t0 = time.perf_counter()
    _, info = optimize(host, method, images, settings, progress)
    total = time.perf_counter() - t0
    per_step = (stamps[-1] - stamps[0]) / (len(stamps) - 1)
    fixed = total - per_step * steps
    return {"per_step": per_step, "fixed": fixed, "objective": info["objective_seconds"], "total": total}


def bench_method(host, name: str, images: torch.Tensor, steps: int, rounds: int) -> dict:
    one_call(host, name, images, steps, "after")   # warm-up (allocator, first-call costs)
    runs = {c: [] for c in CONFIGS}
    for r in range(rounds):
        order = CONFIGS[r % len(CONFIGS):] + CONFIGS[:r % len(CONFIGS)]
        for config in order:
            runs[config].append(one_call(host, name, images, steps, config))
    med = {c: {k: statistics.median(run[k] for run in runs[c]) for k in runs[c][0]} for c in CONFIGS}
    ratio = {k: statistics.median(a[k] / b[k] for a, b in zip(runs["after"], runs["before"]))
             for k in ("per_step", "fixed")}
    return {"median": med, "ratio": ratio}


def build_host(model: str):
    from protect_core.backends.loading import load_host

    return load_host(model, device="cpu", dtype=torch.float32)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="tiny", help="tiny, tiny-v, tiny-xl, toy ...")
    p.add_argument("--methods", default=None, help="comma-separated (default: every registered method)")
    p.add_argument("--size", type=int, default=64, help="square image side in px")
    p.add_argument("--steps", type=int, default=6, help="image steps per call (>= 2)")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--rounds", type=int, default=3, help="rounds of alternating calls (>= 3 for medians)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = p.parse_args(argv)
    if args.steps < 2:
        p.error("--steps must be >= 2 (s / step is measured between image steps)")
    torch.set_num_threads(args.threads)
    names = args.methods.split(",") if args.methods else list(available_methods())
    host = build_host(args.model)
    images = torch.rand(args.batch, 3, args.size, args.size, generator=torch.Generator().manual_seed(0))
    print(f"model {args.model} (fp32), cpu, {torch.get_num_threads()} thread(s), batch {args.batch}, "
          f"{args.size} px, {args.steps} steps, {args.rounds} rounds; torch {torch.__version__}; "
          f"before = objective_samples 8 (+ shared_pass False for {', '.join(KV_METHODS)}), after = defaults "
          f"(objective_samples {OBJECTIVE_SAMPLES}, shared_pass True), skip = objective_samples 0\n")
    print("| method | s / step before | s / step after | step after/before | fixed s before | fixed s after "
          "| fixed s skip | objective s before / after | fixed = steps before | fixed = steps after |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name in names:
        try:
            r = bench_method(host, name, images, args.steps, args.rounds)
        except Exception as e:  # a method that fails is reported, not fatal
            print(f"| {name} | error: {type(e).__name__}: {str(e)[:80]} |||||||||", flush=True)
            continue
        b, a, s = (r["median"][c] for c in CONFIGS)
        print(f"| {name} | {b['per_step']:.4f} | {a['per_step']:.4f} | {r['ratio']['per_step']:.2f} "
              f"| {b['fixed']:.3f} | {a['fixed']:.3f} | {s['fixed']:.3f} "
              f"| {b['objective']:.3f} / {a['objective']:.3f} "
              f"| {b['fixed'] / b['per_step']:.1f} | {a['fixed'] / a['per_step']:.1f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
