"""Where the time of the default CLI cloak goes, and what a bf16 run saves: side by side, alternating.

    PYTHONPATH=. python benchmarks/default_cloak_profile.py                     # 512 x 512, default model, 2 rounds
    PYTHONPATH=. python benchmarks/default_cloak_profile.py --size 256 --rounds 3 --configs default

Each configuration is ``stylecloak cloak IMAGE -o OUT`` with the README's defaults (glaze, default intensity, the
default model) plus the configuration's flags, run as a fresh process (start-up included, as a user pays it):

* ``default``: nothing added;
* ``bf16``: ``--dtype bf16`` (the model and the optimisation in bfloat16; fast on CPUs with AVX512-BF16 or AMX);
* ``nchw``: the encoder fed plain NCHW tensors, as before channels-last input was adopted (benchmark only: the
  child swaps :meth:`HostModel._posterior_whole` for the old three lines), to keep that gain measured side by side.

Rounds alternate the configurations (AB, BA, ...). In the child, the engine's phases are timed by wrapping a few of
its functions (benchmark only; nothing in the package is changed); each second goes to the innermost phase running:

* ``start-up``: interpreter, imports, argument checks (the process's wall time minus the time inside ``main``);
* ``load model``; ``img2img target`` (glaze's restyle, its DDIM steps); ``objective before/after``;
* ``steps: encoder forward`` / ``steps: backward`` / ``steps: rest of the loss`` (the perceptual hinge);
* ``steps: update`` (Adam, projection, progress) and ``write + metrics`` (PNG, PSNR/SSIM, summary).

Medians over the rounds; "vs default" is the median of per-round ratios. The protection proxy printed beside each
run is the objective's drop (after / before, lower = the encoder features moved further toward the target) and
PSNR: a faster configuration that moves the objective less is not a free win.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = {"default": [], "bf16": ["--dtype", "bf16"], "nchw": ["--profile-nchw"]}
PHASES = ["start-up", "load model", "img2img target", "objective before/after", "steps: encoder forward",
          "steps: backward", "steps: rest of the loss", "steps: update", "write + metrics"]


def _child(argv: list[str]) -> None:
    """Run the CLI in this process with phase timers; print one JSON line of seconds per phase."""
    t_main = time.perf_counter()
    from protect_core import cli
    from protect_core.backends import loading
    from protect_core.cloak import optimize as opt
    from protect_core.cloak.methods import glaze
    from protect_core import host as host_mod
    import torch  # noqa: F401

    spent: dict[str, float] = {}
    stack: list[list] = []   # [label, start of its current exclusive stretch]

    def wrap(owner, name, label, only_under=None):
        inner = getattr(owner, name)

        def timed(*a, **k):
            if only_under and not (stack and stack[-1][0] == only_under):
                return inner(*a, **k)
            now = time.perf_counter()
            if stack:
                spent[stack[-1][0]] = spent.get(stack[-1][0], 0.0) + now - stack[-1][1]
            stack.append([label, now])
            try:
                return inner(*a, **k)
            finally:
                end = time.perf_counter()
                lab, start = stack.pop()
                spent[lab] = spent.get(lab, 0.0) + end - start
                if stack:
                    stack[-1][1] = end
        setattr(owner, name, timed)

    wrap(cli, "_main", "write + metrics")
    wrap(loading, "load_host", "load model")
    wrap(glaze.Glaze, "prepare", "img2img target")
    wrap(opt, "_objective", "objective before/after")
    import protect_core.cloak.runner as runner
    wrap(runner, "optimize", "steps: update")
    wrap(opt, "_step_grad", "steps: rest of the loss")
    wrap(host_mod.HostModel, "encode", "steps: encoder forward", only_under="steps: rest of the loss")
    wrap(opt, "_grads", "steps: backward", only_under="steps: rest of the loss")
    if "--profile-nchw" in argv:
        argv = [a for a in argv if a != "--profile-nchw"]

        def nchw_posterior(self, images):
            with self._compute(self.vae_device):
                mean, logvar = self._vae_posterior(images.to(self.vae_device, self.vae_dtype))
            return mean.float().to(self.device), logvar.float().to(self.device)
        host_mod.HostModel._posterior_whole = nchw_posterior
    t0 = time.perf_counter()
    rc = cli.main(argv)
    spent["main"] = time.perf_counter() - t0
    spent["imports before main"] = t0 - t_main
    print("PROFILE " + json.dumps({"rc": rc, "spent": spent}), flush=True)


def _run(image: Path, out: Path, flags: list[str], threads: int) -> dict:
    summary = out / "summary.json"
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS=str(threads))
    cmd = [sys.executable, __file__, "--child", "cloak", str(image), "-o", str(out / "img"), "--overwrite",
           "--quiet", "--summary", str(summary), *flags]
    t = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t
    line = [x for x in proc.stdout.splitlines() if x.startswith("PROFILE ")]
    if proc.returncode or not line:
        raise SystemExit(f"run failed ({proc.returncode}): {proc.stderr.strip().splitlines()[-1:]}")
    spent = json.loads(line[-1][8:])["spent"]
    stats = json.loads(summary.read_text())["images"][0]["stats"]
    phases = {p: spent.get(p, 0.0) for p in PHASES[1:]}
    phases["start-up"] = wall - spent["main"]
    return {"wall": wall, "phases": phases, "psnr": stats["psnr"],
            "drop": stats["objective_after"] / stats["objective_before"]}


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        _child(sys.argv[2:])
        return
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--configs", default="default,bf16")
    args = p.parse_args()
    names = [c for c in args.configs.split(",") if c]
    from PIL import Image

    work = Path(tempfile.mkdtemp(prefix="stylecloak-profile-"))
    image = work / f"art_{args.size}.png"
    Image.open(ROOT / "examples" / "artwork.png").convert("RGB").resize((args.size, args.size)).save(image)
    runs: dict[str, list] = {n: [] for n in names}
    for r in range(args.rounds):
        order = names if r % 2 == 0 else names[::-1]
        for n in order:
            runs[n].append(_run(image, work / f"{n}_{r}", CONFIGS[n], args.threads))
            print(f"round {r + 1} {n}: {runs[n][-1]['wall']:.1f} s", file=sys.stderr, flush=True)
    med = {n: {p: statistics.median(x["phases"][p] for x in runs[n]) for p in PHASES} for n in names}
    print(f"Default CLI cloak of a {args.size} x {args.size} image, {args.threads} threads, "
          f"{args.rounds} rounds (medians, seconds)\n")
    print("| phase | " + " | ".join(names) + " |")
    print("|---|" + "---|" * len(names))
    for ph in PHASES:
        print(f"| {ph} | " + " | ".join(f"{med[n][ph]:.1f}" for n in names) + " |")
    print("| **total (wall)** | " + " | ".join(f"**{statistics.median(x['wall'] for x in runs[n]):.1f}**"
                                             for n in names) + " |")
    base = names[0]
    print(f"| total vs {base} | " + " | ".join(
        f"{statistics.median(a['wall'] / b['wall'] for a, b in zip(runs[n], runs[base])):.2f}" for n in names) + " |")
    print("| objective after / before | " + " | ".join(
        f"{statistics.median(x['drop'] for x in runs[n]):.3f}" for n in names) + " |")
    print("| PSNR dB | " + " | ".join(f"{statistics.median(x['psnr'] for x in runs[n]):.2f}" for n in names) + " |")


if __name__ == "__main__":
    main()
