"""Speed and memory at real scale: seconds per optimisation step and peak memory of the cloak methods, the purifiers
and the mimicry fine-tune on SD1.5- and SDXL-size random-weight models (cost depends on the architecture, not on
trained weights), against a plain-diffusers reference PGD loop (benchmarks/perf_reference.py) run in the same
process, so the engine's overhead comes out as a ratio. Markdown table to stdout and benchmarks/results/perf_<tag>.md,
rows as JSON (perf_<tag>.json) and a PNG chart of time and memory against pixel count (perf_<tag>.png, PIL only).

    PYTHONPATH=. .venv/bin/python benchmarks/perf.py --kinds sd15 --sizes 256 --batches 1 --steps 3   # CPU subset
    python benchmarks/perf.py --device cuda --kinds sd15,sdxl --sizes 256,512,1024 --batches 1,4 --modes fast,low
    python benchmarks/perf.py --merge a.json b.json --tag h100                      # one table from several runs

s/step: median time between consecutive progress steps (the first step, with its warm-up, is excluded; setup such
as Glaze's img2img target is not in it). Peak memory is absolute, model weights included: CUDA
``max_memory_allocated``/``max_memory_reserved`` (reset per row); CPU peak RSS (VmHWM, reset per row when the
kernel allows, otherwise the process's lifetime peak, marked *). "ref x" = engine s/step over the reference's for
the same model, size, batch and mode "fast" (1.00 = no overhead). Rows are measured in priority order and written
as they finish; ``--budget-s`` stops starting new rows after that many seconds.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import perf_reference as ref  # noqa: E402
from perf_report import add_ratios, fmt_row, report  # noqa: E402
from peak_memory import reset_peak  # noqa: E402

from protect_core.cloak.base import get_method  # noqa: E402
from protect_core.cloak.optimize import optimize  # noqa: E402
from protect_core.cloak.presets import settings_for  # noqa: E402
from protect_core.memory import memory_mode, memory_session  # noqa: E402
from protect_core.progress import Progress  # noqa: E402

#: per-method options that shorten setup only (not the per-step work): Glaze's img2img target in 2 DDIM steps
SHORT_SETUP = {"glaze": {"target_steps": 2}, "mist": {"objective_samples": 1}, "styleprotect": {"objective_samples": 1}}
PURIFY = {"impress": {"perceptual": "dssim"}, "diffpure": {"strength": 1.0}, "jpeg": {}}
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


# ---- memory --------------------------------------------------------------------------------------------------------
def peak_mib(device) -> tuple[float, float | None]:
    """(peak allocated or RSS, peak reserved or None) in MiB."""
    if device.type == "cuda":
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() / 2**20, torch.cuda.max_memory_reserved() / 2**20
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024, None
    return float("nan"), None


def resident_mib(device) -> float:
    if device.type == "cuda":
        return torch.cuda.memory_allocated() / 2**20
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


# ---- one row ---------------------------------------------------------------------------------------------------------
class Stamps:
    def __init__(self, device):
        self.device, self.t = device, []

    def __call__(self, *a, **_k):
        info = a[2] if len(a) > 2 and isinstance(a[2], dict) else {}
        if info.get("phase"):  # inner work (surrogate/LoRA training, targets) between image steps: not a step
            return
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        self.t.append(time.perf_counter())

    def per_step(self) -> float:
        d = [b - a for a, b in zip(self.t, self.t[1:])]
        return statistics.median(d) if d else float("nan")


def measure(row: dict, device, fn) -> dict:
    """Run ``fn(stamps)`` once, filling s/step and peak memory into ``row``; errors become a note."""
    stamps = Stamps(device)
    exact = reset_peak(device)
    t0 = time.perf_counter()
    try:
        note = fn(stamps) or ""
        alloc, reserved = peak_mib(device)
        row.update(s_per_step=stamps.per_step(), seconds=time.perf_counter() - t0, peak_mib=alloc,
                   reserved_mib=reserved, exact_peak=exact, note=note)
    except Exception as e:  # a row that fails (e.g. out of memory) is reported, not fatal
        row.update(s_per_step=float("nan"), seconds=time.perf_counter() - t0, peak_mib=float("nan"),
                   reserved_mib=None, exact_peak=exact, note=f"{type(e).__name__}: {str(e).splitlines()[0][:90]}")
    finally:
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return row


def images_for(batch, size, device):
    g = torch.Generator().manual_seed(0)
    base = torch.rand(batch, 3, size // 16, size // 16, generator=g)
    x = torch.nn.functional.interpolate(base, size=(size, size), mode="bilinear", align_corners=False)
    return (x + 0.05 * torch.rand(batch, 3, size, size, generator=g)).clamp(0, 1).to(device)


def cloak_row(host, name, x, steps, mode, options=None):
    def run(stamps):
        method = get_method(name)
        opts = {**SHORT_SETUP.get(name, {}), **(options or {})}
        s = settings_for(method, "default", steps=steps, options=opts)
        _, info = optimize(host, method, x, s, Progress(on_step=stamps), memory=mode)
        mem = info["memory"]
        run.losses = info["losses"]
        return ("sds " if mem.get("score_distillation") else "") + (f"autocast {mem['autocast']}"
                                                                    if mem.get("autocast") else "")
    return run


def reference_row(host, which, x, steps):
    def run(stamps):
        vae, unet = host.vae, host.unet
        if which == "encoder":
            s = settings_for(get_method("photoguard"), "default", steps=steps)
            with torch.no_grad():
                target = ref.vae_latents(vae, torch.full_like(x, 0.5))
            _, run.losses = ref.encoder_pgd(vae, x, target, s.eps, s.step_size, steps, stamps)
        else:
            s = settings_for(get_method("mist"), "default", steps=steps)
            cond = host.encode_text([s.prompt])
            _, run.losses = ref.unet_pgd(vae, unet, host.alphas_cumprod, x, cond.context, cond.pooled, s.eps,
                                         s.step_size, steps, seed=int(s.seed), on_step=stamps)
        return ""
    return run


def purify_row(host, name, x, steps, mode):
    from protect_core.purify import purify

    params = dict(PURIFY[name])
    params.update({"impress": {"iterations": steps}, "diffpure": {"steps": steps}}.get(name, {}))

    def run(stamps):
        with host.borrowed(), memory_session(host, mode):
            reps = steps if name == "jpeg" else 1   # a filter is one pass: time several
            for _ in range(reps):
                purify(host, x, [(name, params)], progress=Progress(on_step=stamps))
        return ""
    return run


def mimicry_row(host, x, steps, mode):
    from protect_core.mimicry import MimicrySettings
    from protect_core.mimicry.finetune import finetune

    def run(stamps):
        s = MimicrySettings(method="lora", rank=4, steps=steps, batch_size=x.shape[0], resolution=x.shape[-1])
        with host.borrowed(), memory_session(host, mode):
            res = finetune(host, x, s, progress=Progress(on_step=stamps))
        return f"{res.trainable_parameters} LoRA params"
    return run


def runner_row(host, x, steps, memory, name="glaze"):
    """The user's path: ``cloak_images`` with the default method (tiling, memory choice, out-of-memory fallback)."""
    from protect_core.cloak.base import CloakSettings
    from protect_core.cloak.runner import cloak_images

    def run(stamps):
        s = CloakSettings(method=name, steps=steps, options=dict(SHORT_SETUP.get(name, {})))
        res = cloak_images(host, list(x), s, Progress(on_step=stamps), memory=memory)
        st = res[0].stats
        falls = len(st["memory"].get("fallbacks") or [])
        return (f"{name}; chose memory={st['memory']['name']}{f' after {falls} OOM fallback(s)' if falls else ''}; "
                f"{st['tiles']} tile(s); {sum(r.stats['seconds'] for r in res):.1f} s in optimize")
    return run


# ---- the plan --------------------------------------------------------------------------------------------------------
def plan(args) -> list[dict]:
    """Rows in priority order: batch 1 before 4, small before large, references next to their engine rows."""
    rows = []
    for batch in args.batches:
        for size in args.sizes:
            for mode in args.modes:
                for name in (args.methods if "cloak" in args.blocks else []):
                    rows.append(dict(block="cloak", method=name, size=size, batch=batch, mode=mode))
                if mode == "fast" and "reference" in args.blocks:
                    rows.append(dict(block="cloak", method="mist-semantic", size=size, batch=batch, mode=mode))
                    rows.append(dict(block="reference", method="unet-pgd", size=size, batch=batch, mode=mode))
                    rows.append(dict(block="cloak", method="photoguard", size=size, batch=batch, mode=mode))
                    rows.append(dict(block="reference", method="encoder-pgd", size=size, batch=batch, mode=mode))
                if "purify" in args.blocks:
                    rows += [dict(block="purify", method=p, size=size, batch=batch, mode=mode) for p in args.purifiers]
                if "mimicry" in args.blocks:
                    rows.append(dict(block="mimicry", method="lora", size=size, batch=batch, mode=mode))
    if "runner" in args.blocks:
        rows += [dict(block="runner", method=f"cloak_images:{m}", runner_method=m, size=size, batch=1, mode=mode)
                 for m in args.runner_methods for size in args.runner_sizes for mode in args.runner_modes]
    seen, out = set(), []
    for r in rows:  # photoguard may be both a listed method and the encoder reference's partner: measure once
        key = (r["block"], r["method"], r["size"], r["batch"], r["mode"])
        if key not in seen:
            seen.add(key)
            out.append(r)
    return out


def row_fn(host, r, x, steps):
    mode = memory_mode(r["mode"]) if r["block"] != "runner" else None
    if r["block"] == "reference":
        return reference_row(host, "encoder" if r["method"] == "encoder-pgd" else "unet", x, steps)
    if r["block"] == "purify":
        return purify_row(host, r["method"], x, steps, mode)
    if r["block"] == "mimicry":
        return mimicry_row(host, x, steps, mode)
    if r["block"] == "runner":
        return runner_row(host, x, steps, r["mode"], r.get("runner_method", "glaze"))
    if r["method"] == "mist-semantic":
        return cloak_row(host, "mist", x, steps, mode, {"mode": "semantic"})
    return cloak_row(host, r["method"], x, steps, mode)


def run_kind(args, kind, device, sink) -> list[dict]:
    from protect_core.random_models import build_random_host

    t0 = time.perf_counter()
    if kind.startswith("tiny"):   # smoke tests of this script (CPU)
        from protect_core.tiny_models import build_tiny_host
        host = build_tiny_host(kind, dtype=DTYPES[args.dtype])
    else:
        host = build_random_host(kind, dtype=DTYPES[args.dtype], device=device)
    built = time.perf_counter() - t0
    model_mib = resident_mib(device)
    print(f"# {kind}: built in {built:.1f} s, {model_mib:.0f} MiB resident", file=sys.stderr, flush=True)
    done = []
    for r in plan(args):
        if time.perf_counter() - args.start > args.budget_s:
            print(f"# budget reached: skipping {r}", file=sys.stderr, flush=True)
            continue
        row = dict(r, model=kind, dtype=args.dtype, device=args.device_name, model_mib=model_mib, steps=args.steps)
        # the runner gets images on the CPU, as the CLI loads them (only the pieces being cloaked go to the device)
        x = images_for(r["batch"], r["size"], device if r["block"] != "runner" else torch.device("cpu"))
        fn = row_fn(host, r, x, args.steps)
        measure(row, device, fn)
        row["losses"] = getattr(fn, "losses", None)
        done.append(row)
        sink(row)
        print(f"# {fmt_row(row)}", file=sys.stderr, flush=True)
    add_ratios(done)
    del host
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return done


def device_tag(device) -> str:
    if device.type != "cuda":
        return "cpu"
    name = torch.cuda.get_device_name(device).lower()
    m = re.search(r"\b([a-z]\d{2,4}[a-z]?)\b", name.replace("nvidia", ""))
    return f"cuda-{m.group(1) if m else re.sub(r'[^a-z0-9]+', '-', name).strip('-')}"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--kinds", default="sd15,sdxl", help="random-weight architectures: sd15, sd2, sd2-v, sdxl")
    p.add_argument("--sizes", default="256,512,1024")
    p.add_argument("--batches", default="1,4")
    p.add_argument("--methods", default="glaze,photoguard,mist,styleprotect")
    p.add_argument("--purifiers", default="impress,diffpure,jpeg")
    p.add_argument("--blocks", default="cloak,reference,purify,mimicry", help="... and runner")
    p.add_argument("--modes", default="fast", help="memory modes: fast, balanced, low")
    p.add_argument("--runner-sizes", default="512", help="block runner: image sizes (e.g. 4096 for tiling)")
    p.add_argument("--runner-modes", default="auto", help="block runner: memory settings (auto, fast, ...)")
    p.add_argument("--runner-methods", default="glaze", help="block runner: cloak methods")
    p.add_argument("--steps", type=int, default=4, help="measured steps per row (the first is warm-up)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default="fp32", choices=list(DTYPES), help="the model's weights")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--budget-s", type=float, default=float("inf"))
    p.add_argument("--memory-cap-gib", type=float, default=None, help="CUDA: cap this process's memory")
    p.add_argument("--tag", default=None, help="results file suffix (default: cpu / cuda-<gpu>)")
    p.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results"))
    p.add_argument("--merge", nargs="*", default=None, help="JSON/JSONL files of earlier runs: re-render only")
    p.add_argument("--title", default=None, help="with --merge: the title line")
    args = p.parse_args(argv)
    args.start = time.perf_counter()
    split = lambda s: [v for v in s.split(",") if v]  # noqa: E731
    if args.merge:
        rows = [r for f in args.merge for r in load_rows(f)]
        add_ratios(rows)
        return write_outputs(args, rows, args.tag or "merged", args.title or "merged runs")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    args.sizes, args.batches = [int(v) for v in split(args.sizes)], [int(v) for v in split(args.batches)]
    args.methods, args.purifiers = split(args.methods), split(args.purifiers)
    args.blocks, args.modes = split(args.blocks), split(args.modes)
    args.runner_sizes, args.runner_modes = [int(v) for v in split(args.runner_sizes)], split(args.runner_modes)
    args.runner_methods = split(args.runner_methods)
    if device.type == "cuda" and args.memory_cap_gib:
        total = torch.cuda.get_device_properties(device).total_memory
        index = device.index if device.index is not None else torch.cuda.current_device()
        torch.cuda.set_per_process_memory_fraction(min(1.0, args.memory_cap_gib * 2**30 / total), index)
    args.device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    tag = args.tag or device_tag(device)
    os.makedirs(args.out, exist_ok=True)
    partial = open(os.path.join(args.out, f"perf_{tag}.jsonl"), "a")
    sink = lambda row: (partial.write(json.dumps(row) + "\n"), partial.flush())  # noqa: E731
    rows = []
    for kind in split(args.kinds):
        rows += run_kind(args, kind, device, sink)
    title = (f"{args.device_name}, torch {torch.__version__}, {torch.get_num_threads()} CPU threads, "
             f"{args.steps} steps per row" + (f", memory cap {args.memory_cap_gib} GiB" if args.memory_cap_gib else ""))
    return write_outputs(args, rows, tag, title)


def load_rows(path: str) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()] if path.endswith(".jsonl") else json.load(f)


def write_outputs(args, rows, tag, title) -> int:
    from perf_chart import draw_chart

    text = report(rows, title)
    print(text)
    os.makedirs(args.out, exist_ok=True)
    base = os.path.join(args.out, f"perf_{tag}")
    with open(base + ".md", "w") as f:
        f.write(text)
    with open(base + ".json", "w") as f:
        json.dump(rows, f, indent=1)
    draw_chart(rows, base + ".png", title)
    return 0


if __name__ == "__main__":
    sys.exit(main())
