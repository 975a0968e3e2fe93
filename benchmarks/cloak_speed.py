"""Seconds per optimisation step and peak memory of every registered cloak method; prints a markdown table.

    PYTHONPATH=. python benchmarks/cloak_speed.py                       # tiny model, 64 and 256 px, CPU
    PYTHONPATH=. python benchmarks/cloak_speed.py --model sd15-random --device cuda --sizes 512

Per step = mean time between consecutive optimisation steps (what ``--steps`` multiplies); "setup" = the rest of
the call (the method's prepare, e.g. Glaze's img2img target or PAG's pattern learning, plus the objective
evaluations and final quantisation). Peak memory: on CUDA ``torch.cuda.max_memory_allocated`` (reset per row); on
CPU the process's peak RSS (VmHWM, reset per row through /proc/self/clear_refs when the kernel allows; otherwise
the lifetime peak, marked "*"). Timings on a shared machine vary (1.6-1.8x seen); compare rows of one run only.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from protect_core.cloak.base import available_methods, get_method  # noqa: E402
from protect_core.cloak.optimize import optimize  # noqa: E402
from protect_core.cloak.presets import settings_for  # noqa: E402
from peak_memory import peak_mib, reset_peak  # noqa: E402
from protect_core.progress import Progress  # noqa: E402


def build_host(model: str, device: str, dtype: str):
    dt = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[dtype]
    if model == "sd15-random":
        try:
            from protect_core.random_models import build_random_host
        except ImportError as e:
            sys.exit(f"--model sd15-random needs protect_core.random_models.build_random_host ({e}); "
                     "use --model tiny")
        return build_random_host("sd15", dtype=dt, device=device)
    from protect_core.backends.loading import load_host

    return load_host(model, device=device, dtype=dt)


def bench(host, name: str, size: int, steps: int, batch: int, device: str) -> dict:
    method = get_method(name)
    settings = settings_for(method, "default", steps=steps)
    images = torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(0))
    stamps = []
    # image steps only: inner work (surrogate training between steps) carries a "phase" and counts in the gap
    progress = Progress(steps, on_step=lambda done, total, info: None if (info or {}).get("phase")
                        else stamps.append(time.perf_counter()))
    exact = reset_peak(device)
    t0 = time.perf_counter()
    optimize(host, method, images, settings, progress)
    total = time.perf_counter() - t0
    per_step = (stamps[-1] - stamps[0]) / (len(stamps) - 1) if len(stamps) > 1 else float("nan")
    return {"per_step": per_step, "setup": total - per_step * steps, "peak": peak_mib(device), "exact": exact}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="tiny", help="tiny, tiny-v, tiny-xl or sd15-random")
    p.add_argument("--methods", default=None, help="comma-separated (default: every registered method)")
    p.add_argument("--sizes", default="64,256", help="comma-separated square sizes in px")
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="fp32", choices=["fp32", "fp16", "bf16"])
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    names = args.methods.split(",") if args.methods else list(available_methods())
    sizes = [int(s) for s in args.sizes.split(",")]
    host = build_host(args.model, args.device, args.dtype)
    print(f"model {args.model} ({args.dtype}), device {args.device}, batch {args.batch}, {args.steps} steps, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads\n")
    print("| method | size | s / step | setup s | peak MiB |")
    print("|---|---|---|---|---|")
    for name in names:
        for size in sizes:
            try:
                r = bench(host, name, size, args.steps, args.batch, args.device)
                mark = "" if r["exact"] else "*"
                print(f"| {name} | {size} | {r['per_step']:.3f} | {r['setup']:.2f} | {r['peak']:.0f}{mark} |",
                      flush=True)
            except Exception as e:  # a method that fails is reported, not fatal
                print(f"| {name} | {size} | error: {type(e).__name__}: {str(e)[:80]} | | |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
