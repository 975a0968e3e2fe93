"""Seconds and peak memory of every registered purifier per image size; prints a markdown table.

    PYTHONPATH=. python benchmarks/purify_speed.py                       # tiny model, 64 and 256 px, CPU
    PYTHONPATH=. python benchmarks/purify_speed.py --model sd15-random --device cuda --sizes 512

Each purifier runs with shortened settings (``BENCH``: fewer IMPRESS/GrIDPure iterations) so a row takes seconds;
"s / step" is seconds per progress step (one IMPRESS iteration, one DDIM step, one filter pass) and "est. s at
defaults" scales it to the purifier's documented defaults (e.g. IMPRESS's 3000 iterations). A warm-up run per size
comes first and is not reported. Peak memory: on CUDA ``torch.cuda.max_memory_allocated`` (reset per row); on CPU
the process's peak RSS (VmHWM, reset per row through /proc/self/clear_refs when the kernel allows; otherwise the
lifetime peak, marked "*"). Timings on a shared machine vary a lot; compare rows of one run only.

``--memory`` (auto, fast, balanced, low; default ``fast``) is the memory mode of the purifiers that use the model.
The default is ``fast`` (the host as it is) because the README's figures were made before purify had memory modes,
i.e. with nothing changed; ``auto`` may pick ``balanced`` or ``low`` on a GPU, which would not reproduce them. The
header says the mode asked for; a row whose purifier ran in another mode (``auto``'s choice, or an out-of-memory
fallback) says so in its settings column.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from peak_memory import peak_mib, reset_peak  # noqa: E402
from protect_core.progress import Progress  # noqa: E402
from protect_core.purify import available_purifiers, get_purifier, purify  # noqa: E402
from protect_core.purify.base import resolve_params  # noqa: E402

#: shortened settings per purifier for the benchmark (the rest are the documented defaults)
BENCH = {"impress": {"iterations": 5, "perceptual": "dssim"}, "gridpure": {"iterations": 2},
         "bilateral_guided": {"passes": 8}}


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


def bench(host, name: str, size: int, device: str, memory: str = "fast") -> dict:
    p = get_purifier(name)
    params = resolve_params(p, BENCH.get(name))
    images = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(0)).to(device)
    progress = Progress()
    exact = reset_peak(device)
    t0 = time.perf_counter()
    _, info = purify(host, images, [(name, params)], progress=progress, memory=memory)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    per_step = seconds / max(1, progress.done)
    full = p.count_steps(resolve_params(p, {}), images, host)
    changed = {k: v for k, v in params.items() if v != p.defaults[k]}
    ran = (info["memory"] or {}).get("name")
    if ran is not None and ran != memory:   # auto's choice or an out-of-memory fallback
        changed["memory"] = ran
    return {"seconds": seconds, "steps": progress.done, "per_step": per_step, "at_defaults": per_step * full,
            "settings": ", ".join(f"{k}={v}" for k, v in changed.items()) or "defaults",
            "peak": peak_mib(device), "exact": exact}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="tiny", help="tiny, tiny-v, tiny-xl, a diffusers folder, or sd15-random")
    ap.add_argument("--purifiers", default=None, help="comma-separated (default: every registered purifier)")
    ap.add_argument("--sizes", default="64,256", help="comma-separated square sizes in px")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="fp32", choices=["fp32", "fp16", "bf16"])
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--memory", default="fast", choices=["auto", "fast", "balanced", "low"],
                    help="memory mode of the model-using purifiers (default fast: how the README's figures were made)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    names = args.purifiers.split(",") if args.purifiers else list(available_purifiers())
    sizes = [int(s) for s in args.sizes.split(",")]
    host = build_host(args.model, args.device, args.dtype)
    print(f"model {args.model} ({args.dtype}), device {args.device}, batch 1, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, memory {args.memory}\n")
    print("| purifier | size | run settings | steps | seconds | s / step | est. s at defaults | peak MiB |")
    print("|---|---|---|---|---|---|---|---|")
    for size in sizes:
        warm = torch.rand(1, 3, size, size).to(args.device)
        purify(host, warm, [("diffpure", {"steps": 10}), ("impress", {"iterations": 1, "perceptual": "dssim"})],
               memory=args.memory)
        for name in names:
            try:
                r = bench(host, name, size, args.device, args.memory)
                mark = "" if r["exact"] else "*"
                print(f"| {name} | {size} | {r['settings']} | {r['steps']} | {r['seconds']:.2f} | "
                      f"{r['per_step']:.3f} | {r['at_defaults']:.1f} | {r['peak']:.0f}{mark} |", flush=True)
            except Exception as e:  # a purifier that fails is reported, not fatal
                print(f"| {name} | {size} | error: {type(e).__name__}: {str(e)[:80]} | | | | | |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
