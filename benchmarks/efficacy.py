"""Benchmark: does cloaking stop mimicry, end to end, on the toy world? (cloak -> purify -> fine-tune -> judge)

    PYTHONPATH=. .venv/bin/python benchmarks/efficacy.py [--quick | --full] [--methods a,b] [--intensities
        low,default,high] [--robust a,b|all|none] [--purifiers jpeg75,impress,...] [--finetune lora,full]
        [--images N] [--samples N] [--steps cloak=N,lora=N,full=N,impress=N,sample=N] [--lr lora=X,full=X]
        [--seed S | --seeds 0,1,2] [--no-placebo]
        [--threads 2] [--toy DIR] [--out benchmarks/results] [--stem NAME]

For each cloak method at each intensity (and in robust mode where asked): cloak ``--images`` renders of the toy
world's held-out style at the model's native size, pass every training set (the clean art included) through each
purifier, fine-tune the toy model on every set (LoRA and/or full UNet; same seed, prompt, steps and sampling noise
for every set), generate ``--samples`` images and let the toy style classifier judge them. Definitions (protection
success, style-score drop, sanity check) are in :mod:`protect_core.toy.efficacy`. Prints the markdown table and
writes ``efficacy.md``, ``efficacy.json`` and ``efficacy.png`` into ``--out`` (``--quick`` writes
``efficacy_quick.*``).

Modes: default = every method at the default intensity, robust mode for every method, purifiers jpeg75 and
impress (100 iterations; ``--steps impress=3000`` for the paper's), LoRA and full fine-tune, 8 images, 64 samples
(about 40 min on 2 CPU cores); ``--quick`` = the CI version (2 cheap methods, jpeg75, LoRA, tiny step counts, ~1 min); ``--full`` =
all intensities, robust mode, and every purifier (several hours). Flags given explicitly win over a mode.
Needs the trained toy model (protect_core/assets/toy or --toy DIR).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shlex
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

QUICK = dict(methods=["pag", "sds"], intensities=["default"], robust=[], purifiers=["jpeg75"], finetunes=["lora"],
             images=4, samples=16, steps={"cloak": 10, "lora": 40, "sample": 10}, lr={"lora": 1e-2})
FULL = dict(intensities=["low", "default", "high"], robust="all",
            purifiers=["jpeg75", "impress", "diffpure", "noisy_upscale", "blur", "bilateral"])


def _list(text: str | None):
    return None if text is None else [t.strip() for t in text.split(",") if t.strip()]


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="reduced CI run (about a minute)")
    mode.add_argument("--full", action="store_true", help="all intensities and purifiers (hours)")
    ap.add_argument("--methods", help="cloak methods, comma-separated (default: all)")
    ap.add_argument("--intensities", help="low,default,high (default: default)")
    ap.add_argument("--robust", help="methods also run in robust mode: a,b | all | none (default: all)")
    ap.add_argument("--purifiers", help="jpeg75,impress,diffpure,noisy_upscale,blur,bilateral "
                                        "(default: jpeg75,impress)")
    ap.add_argument("--finetune", help="lora,full (default: both)")
    ap.add_argument("--images", type=int, help="training images of the held-out style (default 8)")
    ap.add_argument("--samples", type=int, help="generated images per condition (default 64)")
    ap.add_argument("--steps", default=None, help="overrides, e.g. cloak=20,lora=100,full=100,impress=300,sample=10")
    ap.add_argument("--lr", default=None, help="fine-tune learning-rate overrides, e.g. lora=1e-2,full=1e-3")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--seeds", default=None, help="several seeds, e.g. 0,1,2: one run each, merged (means and the "
                                                  "standard error across seeds); overrides --seed")
    ap.add_argument("--no-placebo", action="store_true", help="leave out the random-noise control")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    ap.add_argument("--world", default="toy", help="measurement world: toy (32 px, fast) or atelier (64 px, "
                                                   "SD 1.5 topology; both judges reported)")
    ap.add_argument("--artist", default=None, help="the artist to protect (default: the world's first held-out)")
    ap.add_argument("--toy", default=None, help="the world's model folder (default: the shipped assets)")
    ap.add_argument("--out", default=None, help="output folder (default benchmarks/results)")
    ap.add_argument("--stem", default=None, help="output file name without extension (default efficacy, "
                                                 "efficacy_quick or efficacy_full)")
    ap.add_argument("--from-json", default=None, metavar="efficacy.json",
                    help="only re-write the table and chart of an earlier run (no model needed)")
    return ap.parse_args(argv)


def build_config(a):
    from protect_core.cloak.base import available_methods
    from protect_core.toy.efficacy import EfficacyConfig, parse_steps

    everything = list(available_methods())
    mode = QUICK if a.quick else FULL if a.full else {}
    methods = _list(a.methods) or mode.get("methods") or everything
    robust_arg = a.robust if a.robust is not None else mode.get("robust", "all")
    if isinstance(robust_arg, list):
        robust = robust_arg
    elif robust_arg == "all":
        robust = list(methods)
    elif robust_arg == "none":
        robust = []
    else:
        robust = _list(robust_arg)
    steps = dict(mode.get("steps", {}))
    steps.update(parse_steps(a.steps))
    lr = dict(mode.get("lr", {}))
    for part in _list(a.lr) or []:
        key, _, value = part.partition("=")
        try:
            lr[key.strip()] = float(value)
        except ValueError:
            raise SystemExit(f"--lr expects KIND=NUMBER (e.g. lora=1e-2), got {part!r}") from None
    return EfficacyConfig(
        methods=methods, intensities=_list(a.intensities) or mode.get("intensities", ["default"]), robust=robust,
        purifiers=_list(a.purifiers) or mode.get("purifiers", ["jpeg75", "impress"]),
        finetunes=_list(a.finetune) or mode.get("finetunes", ["lora", "full"]),
        images=a.images or mode.get("images", 8), samples=a.samples or mode.get("samples", 64), seed=a.seed,
        placebo=not a.no_placebo, steps=steps, lr=lr).validate()


def write_outputs(results: dict, out: Path, stem: str) -> str:
    from protect_core.toy.efficacy_report import draw_chart, markdown_report

    out.mkdir(parents=True, exist_ok=True)
    report = markdown_report(results, results.get("command", "")) + f"\n![efficacy chart]({stem}.png)\n"
    (out / f"{stem}.md").write_text(report)
    (out / f"{stem}.json").write_text(json.dumps(results, indent=1))
    draw_chart(results, out / f"{stem}.png")
    return report


def main(argv=None) -> int:
    a = parse_args(argv)
    if a.from_json:
        src = Path(a.from_json)
        results = json.loads(src.read_text())
        print(write_outputs(results, Path(a.out) if a.out else src.parent, src.stem))
        return 0
    torch.set_num_threads(max(1, a.threads))
    from protect_core.toy.efficacy import run_efficacy
    from protect_core.toy.efficacy_seeds import merge_seed_runs
    from protect_core.worlds import get_world
    from protect_core.worlds.judges import world_judges

    w = get_world(a.world).at(a.toy)
    if not w.available():
        print(f"no trained {a.world} model found (see README, Measurement worlds)", file=sys.stderr)
        return 2
    cfg = build_config(a)
    world = w.config()
    for kind, v in world.get("attacker", {}).items():  # the world's attacker (chosen on its dev artist)
        if "lr" in v:
            cfg.lr.setdefault(kind, float(v["lr"]))
        if "steps" in v and kind in ("lora", "full"):
            cfg.steps.setdefault(kind, int(v["steps"]))
    held = world["held_out"] if isinstance(world["held_out"], list) else [world["held_out"]]
    artist = a.artist or held[0]
    host = w.build_host()
    clf = w.load_judge() if a.world == "toy" else world_judges(w, host)
    t0 = time.perf_counter()

    def log(msg):
        print(f"[{time.perf_counter() - t0:7.0f} s] {msg}", file=sys.stderr, flush=True)

    seeds = [int(x) for x in _list(a.seeds)] if a.seeds else [cfg.seed]
    runs = []
    for seed in seeds:
        log(f"seed {seed}")
        runs.append(run_efficacy(host, clf, dataclasses.replace(cfg, seed=seed), artist, int(world["size"]), log,
                                 render=w.styles().render))
    results = merge_seed_runs(runs)
    given = sys.argv[1:] if argv is None else list(argv)
    command = " ".join(["PYTHONPATH=. .venv/bin/python benchmarks/efficacy.py", *map(shlex.quote, given)])
    results["command"] = command
    results["world"] = a.world
    out = Path(a.out) if a.out else Path(__file__).resolve().parent / "results"
    stem = a.stem or ("efficacy_quick" if a.quick else "efficacy_full" if a.full else "efficacy")
    if a.world != "toy" and not a.stem:
        stem = f"{stem}_{a.world}_{artist}"
    print(write_outputs(results, out, stem))
    print(f"wrote {out / stem}.md / .json / .png", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
