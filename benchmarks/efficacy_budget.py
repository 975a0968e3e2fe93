"""Benchmark: protection success against the cloak's budget on the toy world, next to random noise of that size.

    PYTHONPATH=. .venv/bin/python benchmarks/efficacy_budget.py [--methods mist,pid,sds,aspl,photoguard,caat]
        [--budgets 8,16,32,64] [--finetune lora,full] [--images 8] [--samples 64] [--steps cloak=N,lora=N,...]
        [--quick] [--out DIR]

What it measures and why: :mod:`protect_core.toy.budget` (same attacker and judge as benchmarks/efficacy.py; each
method at its default settings with the swept L-inf budget and a proportionally scaled step size). Prints a
markdown table and writes ``efficacy_budget.{md,json,png}`` to benchmarks/results (``--out`` to change).
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

DEFAULT_METHODS = "mist,pid,sds,aspl,photoguard,caat"


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--methods", default=DEFAULT_METHODS)
    ap.add_argument("--budgets", default="8,16,32,64", help="L-inf budgets in /255, comma-separated")
    ap.add_argument("--finetune", default="lora,full")
    ap.add_argument("--images", type=int, default=8)
    ap.add_argument("--samples", type=int, default=64)
    ap.add_argument("--steps", default=None, help="overrides, e.g. cloak=20,lora=100,full=100,sample=10")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="tiny smoke run (seconds): 2 images, few steps")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--world", default="toy", help="measurement world: toy or atelier (both judges reported)")
    ap.add_argument("--artist", default=None, help="the artist to protect (default: the world's first held-out)")
    ap.add_argument("--toy", default=None, help="the world's model folder (default: the shipped assets)")
    ap.add_argument("--out", default=None)
    return ap.parse_args(argv)


def main(argv=None) -> int:
    a = parse_args(argv)
    torch.set_num_threads(max(1, a.threads))
    from protect_core.toy.budget import draw_chart, markdown_report, parse_budgets, run_budget_sweep
    from protect_core.toy.efficacy import EfficacyConfig, parse_steps
    from protect_core.worlds import get_world
    from protect_core.worlds.judges import world_judges

    w = get_world(a.world).at(a.toy)
    if not w.available():
        print(f"no trained {a.world} model found (see README, Measurement worlds)", file=sys.stderr)
        return 2
    methods = [m.strip() for m in a.methods.split(",") if m.strip()]
    steps = parse_steps(a.steps)
    if a.quick:
        steps = {"cloak": 2, "lora": 3, "full": 3, "sample": 2, **steps}
    cfg = EfficacyConfig(methods=methods, purifiers=[], finetunes=[k.strip() for k in a.finetune.split(",")],
                         images=2 if a.quick else a.images, samples=4 if a.quick else a.samples, seed=a.seed,
                         steps=steps)
    world = w.config()
    for kind, v in world.get("attacker", {}).items():  # the world's attacker (chosen on its dev artist)
        if "lr" in v:
            cfg.lr.setdefault(kind, float(v["lr"]))
        if "steps" in v:
            cfg.steps.setdefault(kind, int(v["steps"]))
    held = world["held_out"] if isinstance(world["held_out"], list) else [world["held_out"]]
    host = w.build_host()
    clf = w.load_judge() if a.world == "toy" else world_judges(w, host)
    t0 = time.perf_counter()

    def log(msg):
        print(f"[{time.perf_counter() - t0:7.0f} s] {msg}", file=sys.stderr, flush=True)

    results = run_budget_sweep(host, clf, methods, parse_budgets(a.budgets), a.artist or held[0],
                               int(world["size"]), cfg, log, render=w.styles().render)
    results["world"] = a.world
    given = sys.argv[1:] if argv is None else list(argv)
    results["command"] = " ".join(["PYTHONPATH=. .venv/bin/python benchmarks/efficacy_budget.py",
                                   *map(shlex.quote, given)])
    out = Path(a.out) if a.out else Path(__file__).resolve().parent / "results"
    out.mkdir(parents=True, exist_ok=True)
    stem = "efficacy_budget_quick" if a.quick else "efficacy_budget"
    if a.world != "toy":
        stem += f"_{a.world}_{a.artist or held[0]}"
    report = (f"Command: `{results['command']}`\n\n" + markdown_report(results) + f"\n![budget chart]({stem}.png)\n")
    (out / f"{stem}.md").write_text(report)
    (out / f"{stem}.json").write_text(json.dumps(results, indent=1))
    draw_chart(results, out / f"{stem}.png")
    print(report)
    print(f"wrote {out / stem}.md / .json / .png", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
