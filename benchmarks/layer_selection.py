"""Benchmark: do the layers `stylecloak layers` selects matter more for style than random layers? (toy model)

    PYTHONPATH=. .venv/bin/python benchmarks/layer_selection.py [--toy DIR] [--styles all] [--dev stripes,dots,rings]
        [--scores activation,causal,combined] [--probes swap,noise] [--k 2 | 1,2,3] [--images 6] [--samples 16]
        [--sigma 2.0] [--draws 2] [--threads 1] [--plot layers_toy.png --selection layers_toy.json] [--out results.md]

For each style (the toy world's "artist"; ``all`` = every style of the toy world, the held-out one included):
render ``--images`` images of it and run the layer analysis on them once per score in ``--scores`` (style prompt
= the toy caption "a painting in {style} style", content prompt "a painting"; timesteps 200,500,800, 2 seeds, the
offline VAE-Gram descriptor) and take each score's top-k layers. Then, for EVERY k-subset of the model's
cross-attention layers and for each probe in ``--probes`` (benchmarks/layer_probes.py: ``swap`` silences the style
words in just those layers' to_k/to_v, ``noise`` adds relative Gaussian noise to those weights), generate
``--samples`` images from the style's prompt (fixed seeds, DDIM 20 steps, CFG 4; the host is untouched) and read
the toy style classifier: mean p(style) and mean log-odds of the style. Movement ("drop") = read-out unperturbed
minus perturbed (noise: averaged over ``--draws``). The movements do not depend on the score, so every score is
judged on the same numbers.

Per style, probe and score the table gives the selected subset's drop and its **percentile** among all subsets
(mid-rank: the share of subsets that move the classifier less, ties counted half, so a random pick averages 50 and
a style where no subset moves the classifier gives 50, not 100), the mean and sd over all subsets, the bottom-k
subset's drop, and **rho**, the Spearman correlation over all subsets between the subset's summed layer score and
its log-odds drop (how well the whole ranking, not just its top, predicts the drop). Summary lines give, per probe,
read-out and score, the mean percentile, a one-sided **p-value against picking a random k-subset per style** (Monte
Carlo over the styles' own subset percentiles) and the number of styles at or above the 50th percentile,
separately for the evaluation styles, the ``--dev`` styles (those used to choose the default score) and the toy
world's held-out style (one the model never learnt, so nothing can drop).

Needs the trained toy model (protect_core/assets/toy, or --toy DIR); exits with a message otherwise.
"""
from __future__ import annotations

import argparse
import itertools
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))


METRICS = ("p", "log-odds")


def midrank_percentile(value: float, values: torch.Tensor) -> float:
    """100 x (share of ``values`` below ``value`` + half the share equal to it)."""
    return 100.0 * float(((values < value).float() + 0.5 * (values == value).float()).mean())


def judge(analysis, moves: dict[frozenset, tuple], k: int) -> dict:
    """The selected subset of one analysis against every subset's drop, for each read-out in METRICS."""
    from protect_core.layers.analysis import spearman

    score = {r.name: r.score for r in analysis.layers}
    selected, bottom = analysis.top(k), [r.name for r in analysis.layers[-k:]]
    subsets = list(moves)
    sums = torch.tensor([sum(score[n] for n in s) for s in subsets], dtype=torch.float64)
    out = {"selected": selected}
    for m, metric in enumerate(METRICS):
        values = torch.tensor([moves[s][m] for s in subsets], dtype=torch.float64)
        sel_move = moves[frozenset(selected)][m]
        out[metric] = {"selected_move": sel_move, "bottom_move": moves[frozenset(bottom)][m],
                       "percentile": midrank_percentile(sel_move, values), "rho": spearman(sums, values),
                       "all_percentiles": [midrank_percentile(float(v), values) for v in values]}
    return out


def random_pick_pvalue(judged: list[dict], observed_mean: float, draws: int = 200_000, seed: int = 0) -> float:
    """One-sided p-value: the chance that picking one k-subset per style uniformly at random gives a mean
    percentile >= ``observed_mean`` (Monte Carlo over the styles' own subset percentiles)."""
    g = torch.Generator().manual_seed(seed)
    total = torch.zeros(draws, dtype=torch.float64)
    for j in judged:
        pct = torch.tensor(j["all_percentiles"], dtype=torch.float64)
        total += pct[torch.randint(len(pct), (draws,), generator=g)]
    return float((total / len(judged) >= observed_mean - 1e-9).double().mean())


def run_style(host, clf, style: str, args, size: int) -> dict:
    from layer_probes import subset_moves
    from protect_core.layers import AnalysisSettings, analyse_layers
    from protect_core.worlds import get_world

    st = get_world(args.world).styles()
    prompt_for, render = st.prompt_for, st.render
    images = render(style, args.images, size=size, seed=123)
    analyses = {sc: analyse_layers(host, images, AnalysisSettings(style_prompt=prompt_for(style), score=sc,
                                                                  content_prompt="a painting", size=size, seeds=2))
                for sc in args.scores}
    layers = {l.name: l for l in host.cross_attention_layers()}
    row = {"style": style, "analyses": analyses, "probes": {}}
    for probe, k in probe_runs(args):
        subsets = list(itertools.combinations(sorted(layers), k))
        clean, moves = subset_moves(host, clf, style, subsets, layers, probe, samples=args.samples, size=size,
                                    sigma=args.sigma, draws=args.draws)
        drops = torch.tensor([m[0] for m in moves.values()])
        row["clean"] = clean
        row["probes"][(probe, k)] = {"random_mean": float(drops.mean()), "random_sd": float(drops.std()),
                                     "subsets": len(moves), "max": float(drops.max()),
                                     "by_score": {sc: judge(an, moves, k) for sc, an in analyses.items()}}
    return row


def probe_runs(args) -> list[tuple[str, int]]:
    """(probe, k) pairs, in report order."""
    return [(probe, k) for probe in args.probes for k in args.k]


def summary_groups(rows: list[dict]) -> list[tuple[str, list[dict]]]:
    """(label, rows) per model and set, then the sets pooled over models when there are several."""
    sets = (("evaluation", "eval"), ("dev", "dev"), ("held-out (never learnt)", "held-out"))
    models = list(dict.fromkeys(r["model"] for r in rows))
    out = [(f"{m}: {label}" if len(models) > 1 else label, [r for r in rows if r["model"] == m and r["set"] == key])
           for m in models for label, key in sets]
    if len(models) > 1:
        out += [(f"all {len(models)} models: {label}", [r for r in rows if r["set"] == key])
                for label, key in sets[:2]]
    return [(label, group) for label, group in out if group]


def summary_rows(rows: list[dict], args) -> list[str]:
    out = []
    for probe, k in probe_runs(args):
        for metric in METRICS:
            for sc in args.scores:
                for label, group in summary_groups(rows):
                    judged = [r["probes"][(probe, k)]["by_score"][sc][metric] for r in group]
                    pct = [j["percentile"] for j in judged]
                    rho = [j["rho"] for j in judged if j["rho"] is not None]
                    mean_pct = sum(pct) / len(pct)
                    mean_rho = f"{sum(rho) / len(rho):+.2f}" if rho else "n/a"
                    out.append(f"| {probe} | {k} | {metric} | {sc} | {label} ({len(group)}) | {mean_pct:.0f} | "
                               f"{random_pick_pvalue(judged, mean_pct):.3f} | "
                               f"{sum(p >= 50 for p in pct)} of {len(group)} | {mean_rho} |")
    return out


def markdown(rows: list[dict], args, seconds: float) -> str:
    lines = []
    for probe, k in probe_runs(args):
        how = (f"relative weight noise on to_k/to_v, sigma={args.sigma}, {args.draws} draws" if probe == "noise"
               else "style text silenced in the layers' to_k/to_v (content prompt 'a painting')")
        lines += [f"### Probe `{probe}`: {how} (toy model, k={k}, {args.samples} samples)", "",
                  "| style | set | clean p / log-odds | drop p: all k-subsets mean (sd) | score | selected layers "
                  "| drop p: selected (percentile) | drop log-odds: selected (percentile) | drop p: bottom-k "
                  "| rho (log-odds) |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for r in rows:
            pr = r["probes"][(probe, k)]
            for sc in args.scores:
                j = pr["by_score"][sc]
                short = ", ".join(n.replace(".transformer_blocks.0.attn2", "") for n in j["selected"])
                jp, jl = j["p"], j["log-odds"]
                rho = "n/a" if jl["rho"] is None else f"{jl['rho']:+.2f}"
                lines.append(f"| {r['label']} | {r['set']} | "
                             f"{r['clean'][0]:.3f} / {r['clean'][1]:.1f} | {pr['random_mean']:.3f} "
                             f"({pr['random_sd']:.3f}, n={pr['subsets']}) | {sc} | {short} | "
                             f"{jp['selected_move']:.3f} ({jp['percentile']:.0f}) | "
                             f"{jl['selected_move']:.2f} ({jl['percentile']:.0f}) | {jp['bottom_move']:.3f} | {rho} |")
        lines.append("")
    runs = probe_runs(args)
    lines += ["### How far k layers can move the classifier (drop of p(style): mean over all k-subsets / largest)", "",
              "| style | set | " + " | ".join(f"{pb}, k={k}" for pb, k in runs) + " |",
              "|---|---|" + "---|" * len(runs)]
    for r in rows:
        lines.append(f"| {r['label']} | {r['set']} | " + " | ".join(
            f"{r['probes'][run]['random_mean']:.3f} / {r['probes'][run]['max']:.3f}" for run in runs) + " |")
    lines += ["", f"### Summary ({seconds:.0f} s)", "",
              "| probe | k | read-out | score | styles | mean percentile (chance: 50) | p vs random pick "
              "| styles >= 50th percentile | mean rho |",
              "|---|---|---|---|---|---|---|---|---|", *summary_rows(rows, args)]
    return "\n".join(lines) + "\n"


def run_model(toy, label: str, args, first: bool) -> "list[dict] | int":
    """Every style of one toy model (``label`` prefixes the table rows when several models run)."""
    from protect_core.layers import LayerSelection
    from protect_core.layers.analysis import DEFAULT_SCORE
    from protect_core.worlds import get_world

    w = get_world(args.world).at(toy)
    world = w.config()
    styles = list(world["styles"]) if args.styles == "all" else [s.strip() for s in args.styles.split(",")
                                                                 if s.strip()]
    host, clf = w.build_host(), w.load_judge()
    held = world.get("held_out")
    held = held if isinstance(held, list) else [held]
    n_layers = len(host.cross_attention_layers())
    if not args.k or not all(1 <= k < n_layers for k in args.k):
        print(f"--k must lie in 1..{n_layers - 1} (the model has {n_layers} cross-attention layers), got {args.k}")
        return 2
    size, rows = int(world["size"]), []
    for i, style in enumerate(styles):
        res = run_style(host, clf, style, args, size)
        res["set"] = ("held-out" if style in held else "dev" if style in args.dev else "eval")
        res["model"], res["label"] = label or "shipped", f"{label}: {style}" if label else style
        rows.append(res)
        print(f"{res['label']}: " + "; ".join(f"{pb} k={k} " + ", ".join(f"{sc} {j['log-odds']['percentile']:.0f}"
                                                                       for sc, j in pr["by_score"].items())
                                                 for (pb, k), pr in res["probes"].items()),
              file=sys.stderr, flush=True)
        if first and i == 0 and (args.selection or args.plot):
            shown = DEFAULT_SCORE if DEFAULT_SCORE in args.scores else args.scores[0]
            sel = LayerSelection.from_analysis(res["analyses"][shown], args.k[0])
            if args.selection:
                sel.save(args.selection)
            if args.plot:
                from protect_core.layers.heatmap import save_heatmap

                save_heatmap(sel, args.plot)
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--world", default="toy", help="measurement world (toy or atelier)")
    ap.add_argument("--toy", default=None,
                    help="toy model folder(s), comma-separated; several are reported apart and pooled (default: "
                         "protect_core/assets/toy; an empty item also means it)")
    ap.add_argument("--styles", default="all", help="comma-separated toy styles, or 'all' (default)")
    ap.add_argument("--dev", default="stripes,dots,rings",
                    help="styles used to choose the default score (reported apart from the evaluation)")
    ap.add_argument("--scores", default="activation,causal,combined",
                    help="analysis scores to compare (comma-separated)")
    ap.add_argument("--k", default="2", help="layers per subset; a comma list runs each (e.g. 1,2,3)")
    ap.add_argument("--images", type=int, default=6)
    ap.add_argument("--samples", type=int, default=16)
    ap.add_argument("--probes", default="swap,noise",
                    help="how the layers are perturbed: swap (style text silenced), noise (weight noise); see "
                         "benchmarks/layer_probes.py")
    ap.add_argument("--sigma", type=float, default=2.0, help="noise probe: relative weight noise")
    ap.add_argument("--draws", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1: a shared machine)")
    ap.add_argument("--plot", default=None, help="heat map of the first style's analysis (default score) (PNG)")
    ap.add_argument("--selection", default=None, help="selection JSON of the first style's analysis (default score)")
    ap.add_argument("--out", default=None, help="also write the markdown tables here")
    args = ap.parse_args(argv)
    from layer_probes import PROBES
    from protect_core.layers.analysis import SCORES
    from protect_core.worlds import get_world

    toys = [t.strip() or None for t in (args.toy or "").split(",")] if args.toy else [None]
    missing = [str(t or get_world(args.world).asset_dir) for t in toys if not get_world(args.world).at(t).available()]
    if missing:
        print(f"no trained {args.world} model found in {', '.join(missing)}; train it first (README, Measurement "
              "worlds)")
        return 1
    args.scores = [s.strip() for s in args.scores.split(",") if s.strip()]
    args.k = sorted({int(v) for v in str(args.k).split(",") if v.strip()})
    args.probes = [s.strip() for s in args.probes.split(",") if s.strip()]
    args.dev = [s.strip() for s in args.dev.split(",") if s.strip()]
    for toy in toys:
        world = get_world(args.world).at(toy).config()
        styles = list(world["styles"]) if args.styles == "all" else [s.strip() for s in args.styles.split(",")
                                                                     if s.strip()]
        bad = [s for s in args.probes if s not in PROBES] + [s for s in args.scores if s not in SCORES] \
            + [s for s in styles if s not in world["styles"]]
        if bad or not args.scores or not styles or not args.probes:
            print(f"unknown or missing probe/score/style: {bad}; probes: {', '.join(PROBES)}; "
                  f"scores: {', '.join(SCORES)}; styles: {', '.join(world['styles'])}")
            return 2
    torch.set_num_threads(max(1, args.threads))
    rows, t0 = [], time.time()
    for m, toy in enumerate(toys):
        label = Path(toy).name if toy else "shipped"
        got = run_model(toy, label if len(toys) > 1 else "", args, first=m == 0)
        if isinstance(got, int):
            return got
        rows += got
    text = markdown(rows, args, time.time() - t0)
    print("\n" + text)
    if args.out:
        Path(args.out).write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
