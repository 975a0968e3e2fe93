"""Benchmark: does protection hold, also after purification? (every method x every attack, noise control, both
judges, several seeds; :mod:`protect_core.toy.protection` says exactly what runs)

    PYTHONPATH=. python benchmarks/protection.py [--world toy|atelier] [--path DIR] [--artist NAME]
        [--methods mist,metacloak,styleguard] [--budget 16 | --budget default [--intensity default]] [--robust]
        [--purifiers jpeg75,noisy_upscale,diffpure] [--finetune lora[,full]] [--images 8] [--samples 24]
        [--steps cloak=N,lora=N,full=N,sample=N] [--seeds 0,1,2] [--threads 2] [--merge a.json,b.json]
        [--out DIR] [--stem NAME]

Defaults: the world's dev artist (choose settings there; pass a held-out ``--artist`` to report), budget 16/255.
``--budget 4,8,16`` cloaks at each budget. Prints a markdown table and writes ``STEM.md`` / ``STEM.json`` and the
frontier chart ``STEM.png`` (success against PSNR, :mod:`protect_core.toy.frontier`; default stem
``protection_<world>_<artist>``) into
``--out`` (default benchmarks/results). ``--merge`` adds the seeds of earlier runs (same settings) to the table.
After each seed the finished seeds are kept in ``STEM.partial.json`` (removed when the run completes), so a long run
that is stopped loses only the seed it was in; ``--merge`` takes that file.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--world", default="toy")
    ap.add_argument("--path", default=None, help="world folder (default: the shipped one)")
    ap.add_argument("--artist", default=None, help="artist to protect (default: the world's dev artist)")
    ap.add_argument("--methods", default="mist,metacloak,styleguard")
    ap.add_argument("--budget", default="16", help="L-inf budget /255 for every method, a comma-separated list "
                                                  "(the points of the frontier chart), or 'default' (each "
                                                  "method's own at --intensity)")
    ap.add_argument("--intensity", default="default")
    ap.add_argument("--robust", action="store_true", help="cloak with the expectation over transforms")
    ap.add_argument("--purifiers", default="jpeg75,noisy_upscale,diffpure")
    ap.add_argument("--finetune", default="lora")
    ap.add_argument("--images", type=int, default=8)
    ap.add_argument("--samples", type=int, default=24)
    ap.add_argument("--steps", default=None)
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--merge", default=None, help="comma-separated JSON files of earlier runs to merge")
    ap.add_argument("--out", default=None)
    ap.add_argument("--stem", default=None)
    return ap.parse_args(argv)


def _names(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def _write_atomic(path: Path, obj: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1))
    os.replace(tmp, path)


def main(argv=None) -> int:
    a = parse_args(argv)
    torch.set_num_threads(max(1, a.threads))
    from protect_core.toy.efficacy import parse_steps
    from protect_core.toy.frontier import draw_frontier
    from protect_core.toy.protection import check_methods, markdown, run_protection
    from protect_core.worlds import get_world
    from protect_core.worlds.judges import world_judges

    try:
        check_methods(_names(a.methods))
    except ValueError as e:
        print(f"protection: {e}", file=sys.stderr)
        return 2
    world = get_world(a.world).at(a.path)
    if not world.available():
        print(f"no trained {a.world} model found (see README, Measurement worlds)", file=sys.stderr)
        return 2
    cfgw = world.config()
    held = cfgw["held_out"] if isinstance(cfgw["held_out"], list) else [cfgw["held_out"]]
    artist = a.artist or cfgw.get("dev") or held[0]
    try:
        budget = None if a.budget == "default" else [float(b) for b in _names(a.budget)]
        if budget is not None and not (budget and all(0 < b < 256 for b in budget)):   # also nan, inf
            raise ValueError
    except ValueError:
        print(f"protection: --budget: expected 'default' or positive numbers like 8,16,32, got {a.budget!r}",
              file=sys.stderr)
        return 2
    t0 = time.perf_counter()

    def log(msg):
        print(f"[{time.perf_counter() - t0:7.0f} s] {msg}", file=sys.stderr, flush=True)

    host = world.build_host()
    judges = world_judges(world, host)
    runs = []
    for f in _names(a.merge or ""):
        runs += json.loads(Path(f).read_text())["runs"]
    given = sys.argv[1:] if argv is None else list(argv)
    command = " ".join(["PYTHONPATH=. python benchmarks/protection.py", *map(shlex.quote, given)])
    out = Path(a.out) if a.out else Path(__file__).resolve().parent / "results"
    stem = a.stem or f"protection_{a.world}_{artist}"
    partial = out / f"{stem}.partial.json"
    out.mkdir(parents=True, exist_ok=True)
    for seed in [int(s) for s in _names(a.seeds)]:
        runs.append(run_protection(host, judges, world, artist, _names(a.methods), budget, a.intensity, a.robust,
                                   _names(a.purifiers), _names(a.finetune), a.images, a.samples, seed,
                                   parse_steps(a.steps), log))
        log(f"seed {seed} done")
        # a long run stopped later keeps its finished seeds: STEM.partial.json, which --merge takes
        _write_atomic(partial, {"world": a.world, "command": command, "partial": True, "runs": runs})
    res = {"world": a.world, "command": command, "seconds": round(time.perf_counter() - t0, 1), "runs": runs}
    _write_atomic(out / f"{stem}.json", res)   # first: the numbers survive any report bug
    partial.unlink(missing_ok=True)
    report = (f"Command: `{res['command']}` ({res['seconds']:.0f} s)\n\nWorld `{a.world}`.\n\n"
              + markdown(runs) + "\n")
    (out / f"{stem}.md").write_text(report)
    draw_frontier(runs, out / f"{stem}.png", f"Protection success against PSNR: {a.world} world, {artist}")
    print(report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
