"""Benchmark: is a measurement world faithful enough to judge protection? (checks a-e, both judges)

    PYTHONPATH=. python benchmarks/world_fidelity.py [--world atelier] [--path DIR] [--parts codec,judges,prompt,
        mimicry] [--artists pastel,cubist,batik] [--finetune lora,full] [--methods mist,aspl,sds,photoguard]
        [--purifiers noisy_upscale,diffpure] [--images 8] [--samples 32] [--prompt-samples 16]
        [--steps cloak=N,lora=N,full=N,sample=N] [--seed 0] [--threads 2] [--merge a.json,b.json] [--out DIR]

What each check means and its threshold: :mod:`protect_core.worlds.fidelity`. The mimicry part (b-e) costs most;
run it per artist (``--artists pastel``) and merge the JSON files with ``--merge``. Prints a markdown table and
writes ``world_fidelity_<world>.md`` / ``.json`` (``--stem`` to rename) into ``--out`` (default
benchmarks/results).
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
    ap.add_argument("--world", default="atelier")
    ap.add_argument("--path", default=None, help="world folder (default: the shipped one)")
    ap.add_argument("--parts", default="codec,judges,prompt,mimicry")
    ap.add_argument("--artists", default=None, help="unseen artists for b-e (default: the world's held-out ones)")
    ap.add_argument("--finetune", default="lora,full")
    ap.add_argument("--methods", default="mist,aspl,sds,photoguard")
    ap.add_argument("--purifiers", default="noisy_upscale,diffpure")
    ap.add_argument("--budget", type=float, default=16.0, help="L-inf budget /255 of checks c-e")
    ap.add_argument("--images", type=int, default=8)
    ap.add_argument("--samples", type=int, default=32)
    ap.add_argument("--prompt-samples", type=int, default=16)
    ap.add_argument("--steps", default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--merge", default=None, help="comma-separated JSON files of earlier parts to merge first")
    ap.add_argument("--out", default=None)
    ap.add_argument("--stem", default=None)
    ap.add_argument("--sheet", default=None, help="also save the prompt-control samples as a PNG grid")
    return ap.parse_args(argv)


def markdown(res: dict) -> str:
    from protect_core.worlds.fidelity import THRESH, verdicts

    lines = [f"World `{res['world']}`; unseen artists {', '.join(res.get('unseen', []))}.", ""]
    if "codec" in res:
        lines += ["| artist | role | VAE round trip PSNR (dB) | classifier accuracy | centroid accuracy | "
                  "classifier on round trips | centroid on round trips |", "|---|---|---|---|---|---|---|"]
        nan = float("nan")
        for a, db in res["codec"].items():
            acc = res.get("judges", {}).get(a, {})
            role = "held out" if a in res["held_out"] else "dev" if a == res.get("dev") else "trained"
            lines.append(f"| {a} | {role} | {db:.2f} | " + " | ".join(
                f"{acc.get(k, nan):.2f}" for k in ("classifier", "centroid", "classifier_rt", "centroid_rt")) + " |")
        lines.append("")
    if "prompt" in res:
        lines += ["| prompted artist | classifier share | centroid share |", "|---|---|---|"]
        lines += [f"| {a} | {v['classifier']:.2f} | {v['centroid']:.2f} |" for a, v in res["prompt"].items()]
        lines.append("")
    for run in res.get("mimicry", []):
        lines += [f"Mimicry of **{run['artist']}** at {run['budget_255']:g}/255 ({run['seconds']:.0f} s); protection "
                  "success by classifier / centroid judge (share of samples NOT attributed to the artist):", "",
                  "| training set | PSNR | " + " | ".join(run["scores"]) + " |",
                  "|---|---|" + "---|" * len(run["scores"])]
        names = list(run["scores"].get("lora", next(iter(run["scores"].values()))))
        for n in names:
            if n == "__base__":
                continue
            meta = run["sets"].get(n, {})
            q = meta.get("after_purifier", {}).get("psnr", meta.get("psnr"))
            cells = []
            for kind, sc in run["scores"].items():
                v = sc.get(n)
                cells.append("" if v is None else f"{v['success']['rate']:.2f} / {v['second']['success']['rate']:.2f}")
            lines.append(f"| {n} | {'' if q is None else f'{q:.1f}'} | " + " | ".join(cells) + " |")
        base = {k: v["__base__"] for k, v in run["scores"].items()}
        lines.append("| base model (no fine-tune) | | " + " | ".join(
            f"{b['success']['rate']:.2f} / {b['second']['success']['rate']:.2f}" for b in base.values()) + " |")
        lines.append("")
    v = verdicts(res)
    names = {"codec": f"codec >= {THRESH['codec_db']:g} dB on every unseen artist",
             "a": "a. prompt control >= 90%", "b": "b. clean mimicry >= 90% (LoRA, full)",
             "c": "c. noise +-16/255 within 5 points of the floor",
             "d": "d. a standard method >= 80% protection success with LoRA at 16/255",
             "e": "e. noisy upscaling or DiffPure brings it below 50% (-20 points)"}
    lines += ["| check | classifier judge | centroid judge | measured (classifier / centroid) |", "|---|---|---|---|"]
    for k, title in names.items():
        if k in v:
            r = v[k]
            def word(ok):
                return "not measured" if ok is None else "holds" if ok else "FAILS"
            lines.append(f"| {title} | {word(r['classifier'])} | {word(r['centroid'])} | {r['detail']} |")
        else:
            lines.append(f"| {title} | not measured | not measured | |")
    return "\n".join(lines)


def main(argv=None) -> int:
    a = parse_args(argv)
    torch.set_num_threads(max(1, a.threads))
    from protect_core.toy.efficacy import parse_steps
    from protect_core.worlds import get_world
    from protect_core.worlds.fidelity import codec, judge_accuracy, mimicry_checks, prompt_control
    from protect_core.worlds.judges import world_judges

    world = get_world(a.world).at(a.path)
    if not world.available():
        print(f"the {a.world} world is not trained here; see README (Measurement worlds)", file=sys.stderr)
        return 2
    cfgw = world.config()
    res = {"world": a.world, "held_out": list(cfgw["held_out"]) if isinstance(cfgw["held_out"], list)
           else [cfgw["held_out"]], "dev": cfgw.get("dev")}
    res["unseen"] = res["held_out"] + ([res["dev"]] if res["dev"] else [])
    for f in (a.merge or "").split(","):
        if f.strip():
            old = json.loads(Path(f.strip()).read_text())
            res["mimicry"] = res.get("mimicry", []) + old.pop("mimicry", [])
            res.update({k: v for k, v in old.items() if k not in ("command", "mimicry")})
    parts = {p.strip() for p in a.parts.split(",") if p.strip()}
    t0 = time.perf_counter()

    def log(msg):
        print(f"[{time.perf_counter() - t0:7.0f} s] {msg}", file=sys.stderr, flush=True)

    host = world.build_host()
    judges = world_judges(world, host)
    if "codec" in parts:
        res["codec"] = codec(host, world)
        log("codec done")
    if "judges" in parts:
        res["judges"] = judge_accuracy(judges, world, host=host)
        log("judges done")
    if "prompt" in parts:
        pc = prompt_control(host, judges, world, n=a.prompt_samples, seed=a.seed)
        if a.sheet:
            from protect_core.toy.evaluate import save_sheet

            save_sheet(pc["images"], a.sheet)
        res["prompt"] = pc["artists"]
        log("prompt control done")
    if "mimicry" in parts:
        artists = [s.strip() for s in (a.artists or ",".join(res["held_out"])).split(",") if s.strip()]
        for art in artists:
            run = mimicry_checks(host, judges, world, art, [m for m in a.methods.split(",") if m],
                                 [k for k in a.finetune.split(",") if k], a.budget,
                                 [p for p in a.purifiers.split(",") if p], a.images, a.samples, a.seed,
                                 parse_steps(a.steps), log)
            res.setdefault("mimicry", []).append(run)
    given = sys.argv[1:] if argv is None else list(argv)
    res["command"] = " ".join(["PYTHONPATH=. python benchmarks/world_fidelity.py", *map(shlex.quote, given)])
    res["seconds"] = round(time.perf_counter() - t0, 1)
    out = Path(a.out) if a.out else Path(__file__).resolve().parent / "results"
    out.mkdir(parents=True, exist_ok=True)
    stem = a.stem or f"world_fidelity_{a.world}"
    (out / f"{stem}.json").write_text(json.dumps(res, indent=1))  # first: the numbers survive any report bug
    report = f"Command: `{res['command']}`\n\n" + markdown(res) + "\n"
    (out / f"{stem}.md").write_text(report)
    print(report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
