"""Speed and peak memory of the mimicry test: fine-tune steps/s, sampling s/image, a whole run.

    PYTHONPATH=. .venv/bin/python benchmarks/mimicry_speed.py                      # tiny model, 32 px, CPU
    PYTHONPATH=. .venv/bin/python benchmarks/mimicry_speed.py --model sd15-random --resolution 512 --device cuda

Prints a markdown table. ``sd15-random`` / ``sd2-random`` / ``sdxl-random`` are full-size architectures with
random weights (protect_core.random_models): timings only, their images mean nothing. Peak memory is the process's
peak RSS so far (CPU) or ``torch.cuda.max_memory_allocated`` since the phase began (CUDA).

``--memory`` (auto, fast, balanced, low; default ``fast``) is the memory mode of every phase. The default is
``fast`` (the host as it is) because the README's figures were made before the mimicry test had memory modes, i.e.
with nothing changed; ``auto`` may pick ``balanced`` or ``low`` on a GPU, which would not reproduce them. The
header says the mode asked for and, where a phase ran in another one (``auto``'s choice, or an out-of-memory
fallback), which.
"""
from __future__ import annotations

import argparse
import os
import platform
import resource
import sys
import time

import torch

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..")))
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def build_host(model: str, device: str, dtype: torch.dtype):
    if model.endswith("-random"):
        try:
            from protect_core.random_models import build_random_host
        except ImportError as e:
            raise SystemExit(f"--model {model} needs protect_core.random_models ({e})")
        host = build_random_host(model[: -len("-random")], dtype=dtype, device=device)
        return host
    from protect_core.backends.loading import load_host

    return load_host(model, device=device, dtype=dtype)


def _sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def _peak_reset(device):
    if torch.device(device).type == "cuda":
        torch.cuda.reset_peak_memory_stats()


def _peak_mib(device) -> float:
    if torch.device(device).type == "cuda":
        return torch.cuda.max_memory_allocated() / 2 ** 20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def timed(label, device, fn):
    _peak_reset(device)
    _sync(device)
    t0 = time.perf_counter()
    out = fn()
    _sync(device)
    return out, time.perf_counter() - t0, _peak_mib(device)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="tiny", help="tiny, tiny-v, tiny-xl, sd15-random, sd2-random, sdxl-random")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="fp32", choices=["fp32", "fp16", "bf16"])
    p.add_argument("--resolution", type=int, default=32)
    p.add_argument("--method", default="lora", choices=["lora", "dreambooth"])
    p.add_argument("--rank", type=int, default=4)
    p.add_argument("--steps", type=int, default=20, help="fine-tune steps per condition")
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--samples", type=int, default=4)
    p.add_argument("--sample-steps", type=int, default=10)
    p.add_argument("--images", type=int, default=4, help="training images per set")
    p.add_argument("--threads", type=int, default=1, help="CPU threads (1 is steadiest on a shared machine)")
    p.add_argument("--memory", default="fast", choices=["auto", "fast", "balanced", "low"],
                   help="memory mode of every phase (default fast: how the README's figures were made)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[args.dtype]

    from protect_core.mimicry import MimicrySettings, generate, run_mimicry_test
    from protect_core.mimicry.finetune import finetune

    host, t_build, _ = timed("build", args.device, lambda: build_host(args.model, args.device, dtype))
    s = MimicrySettings(method=args.method, rank=args.rank, lr=1e-4, steps=args.steps, batch_size=args.batch_size,
                        resolution=args.resolution, samples=args.samples, sample_steps=args.sample_steps,
                        sample_batch=min(4, args.samples), reference_samples=args.samples)
    g = torch.Generator().manual_seed(0)
    clean = torch.rand(args.images, 3, args.resolution, args.resolution, generator=g)
    cloaked = (clean + 0.03 * torch.randn(clean.shape, generator=g)).clamp(0, 1)
    rows = []
    with host.borrowed():
        warm = MimicrySettings(**{**s.__dict__, "steps": 1, "samples": 1, "sample_steps": 1, "sample_batch": 1})
        # first-call overheads (allocator, kernels) out of the timings
        finetune(host, clean[:1], warm, memory=args.memory)
        res, t_ft, m_ft = timed("finetune", args.device, lambda: finetune(host, clean, s, memory=args.memory))
        rows.append(("fine-tune", f"{args.steps} steps x batch {min(args.batch_size, args.images)}", t_ft,
                     f"{args.steps / t_ft:.2f} steps/s", m_ft, res.trainable_parameters))
        _, t_gen, m_gen = timed("sample", args.device,
                                lambda: generate(host, s, res.overrides, memory=args.memory))
        rows.append(("sampling", f"{args.samples} images x {args.sample_steps} DDIM steps, CFG", t_gen,
                     f"{t_gen / args.samples:.3f} s/image", m_gen, None))
    rep, t_all, m_all = timed("run", args.device,
                              lambda: run_mimicry_test(host, clean, {"cloaked": cloaked}, s, memory=args.memory))
    rows.append(("whole test", "base + clean + cloaked, scoring", t_all, rep.verdict[:40], m_all, None))
    ran = {"fine-tune": (res.memory or {}).get("name"), "whole test": (rep.memory or {}).get("name")}
    other = ", ".join(f"{phase} ran {name}" for phase, name in ran.items() if name not in (None, args.memory))

    print(f"\nmimicry speed: model {args.model}, {args.method} rank {args.rank}, {args.resolution} px, "
          f"{args.device} {args.dtype}, {args.threads} thread(s), torch {torch.__version__}, "
          f"{platform.processor() or platform.machine()}; host built in {t_build:.2f} s; "
          f"memory {args.memory}{f' ({other})' if other else ''}\n")
    print("| phase | work | seconds | rate | peak memory (MiB) | trainable params |")
    print("|---|---|---|---|---|---|")
    for phase, work, secs, rate, mem, n in rows:
        print(f"| {phase} | {work} | {secs:.2f} | {rate} | {mem:.0f} | {'' if n is None else n} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
