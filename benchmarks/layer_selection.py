"""Benchmark: do the layers `stylecloak layers` selects matter more for style than random layers? (toy model)

    PYTHONPATH=. .venv/bin/python benchmarks/layer_selection.py [--toy DIR] [--styles all] [--dev stripes,dots,rings]
        [--scores activation,causal,combined] [--k 2] [--images 6] [--samples 16] [--sigma 2.0] [--draws 2] [--threads 1]
        [--plot layers_toy.png --selection layers_toy.json] [--out results.md]

For each style (the toy world's "artist"; ``all`` = every style of the toy world, the held-out one included):
render ``--images`` images of it and run the layer analysis on them once per score in ``--scores`` (style prompt
= the toy caption "a painting in {style} style", content prompt "a painting"; timesteps 200,500,800, 2 seeds, the
offline VAE-Gram descriptor) and take each score's top-k layers. Then, for EVERY k-subset of the model's
cross-attention layers, perturb the to_k and to_v weights of just those layers with relative Gaussian noise
(sigma x the weight's RMS; the noise of a given layer and draw is the same in every subset, so subsets differ only
in which layers are hit; weight overrides, the host is untouched), generate ``--samples`` images from the style's
prompt (fixed seeds, DDIM 20 steps, CFG 4) and read the toy style classifier's mean probability of the style.
Movement ("drop") = p(unperturbed) - p(perturbed), averaged over ``--draws`` noise draws. The movements do not
depend on the score, so every score is judged on the same numbers.

Per style and score the table gives the selected subset's drop, the mean and sd over all subsets, the bottom-k
subset's drop, the selected subset's **percentile** among all subsets (mid-rank: the share of subsets that move the
classifier less, ties counted half, so a random pick averages 50 and a style where no subset moves the classifier
gives 50, not 100) and **rho**, the Spearman correlation over all subsets between the subset's summed layer score
and its drop (how well the whole ranking, not just its top, predicts the drop). Summary lines give, per score, the
mean percentile and the number of styles at or above the 50th percentile, separately for the ``--dev`` styles
(those used to choose the default score; marked "dev") and for the others (the evaluation).

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


def relative_noise(host, layers, sigma: float, draw: int) -> dict[str, torch.Tensor]:
    """Per-layer weight overrides {param: W + sigma * rms(W) * noise} for to_k and to_v (noise seeded per layer)."""
    out = {}
    for li, layer in enumerate(layers):
        for key in ("to_k", "to_v"):
            name = layer.params[key]
            w = host.unet_weight(name)
            g = torch.Generator().manual_seed(10_000 * draw + 10 * li + (key == "to_v"))
            out[name] = w + sigma * w.pow(2).mean().sqrt() * torch.randn(w.shape, generator=g).to(w)
    return out


def style_prob(host, clf, style: str, samples: int, size: int, overrides=None, seed: int = 0) -> float:
    from protect_core.sampling import txt2img
    from protect_core.toy.styles import prompt_for

    imgs = txt2img(host, [prompt_for(style)] * samples, height=size, width=size, steps=20, guidance=4.0, seed=seed,
                   weight_overrides=overrides)
    return float(clf.probs(imgs)[:, clf.styles.index(style)].mean())


def subset_moves(host, clf, style: str, args, size: int) -> tuple[float, dict[frozenset, float]]:
    """p(style) unperturbed, and the mean drop for every k-subset of the cross-attention layers."""
    layers = {l.name: l for l in host.cross_attention_layers()}
    names = sorted(layers)
    with host.borrowed(), torch.no_grad():
        clean = style_prob(host, clf, style, args.samples, size)
        noise = [relative_noise(host, [layers[n] for n in names], args.sigma, d) for d in range(args.draws)]
        moves = {}
        for subset in itertools.combinations(names, args.k):
            params = {layers[n].params[key] for n in subset for key in ("to_k", "to_v")}
            drops = [clean - style_prob(host, clf, style, args.samples, size, {p: nz[p] for p in params})
                     for nz in noise]
            moves[frozenset(subset)] = sum(drops) / len(drops)
    return clean, moves


def midrank_percentile(value: float, values: torch.Tensor) -> float:
    """100 x (share of ``values`` below ``value`` + half the share equal to it)."""
    return 100.0 * float(((values < value).float() + 0.5 * (values == value).float()).mean())


def judge(analysis, moves: dict[frozenset, float], k: int) -> dict:
    """The selected subset of one analysis against every subset's drop."""
    from protect_core.layers.analysis import spearman

    score = {r.name: r.score for r in analysis.layers}
    selected, bottom = analysis.top(k), [r.name for r in analysis.layers[-k:]]
    subsets = list(moves)
    values = torch.tensor([moves[s] for s in subsets], dtype=torch.float64)
    sums = torch.tensor([sum(score[n] for n in s) for s in subsets], dtype=torch.float64)
    sel_move = moves[frozenset(selected)]
    return {"selected": selected, "selected_move": sel_move, "bottom_move": moves[frozenset(bottom)],
            "percentile": midrank_percentile(sel_move, values), "rho": spearman(sums, values)}


def run_style(host, clf, style: str, args, size: int) -> dict:
    from protect_core.layers import AnalysisSettings, analyse_layers
    from protect_core.toy.styles import prompt_for, render

    images = render(style, args.images, size=size, seed=123)
    analyses = {sc: analyse_layers(host, images, AnalysisSettings(style_prompt=prompt_for(style), score=sc,
                                                                  content_prompt="a painting", size=size, seeds=2))
                for sc in args.scores}
    clean, moves = subset_moves(host, clf, style, args, size)
    values = torch.tensor(list(moves.values()))
    return {"style": style, "clean": clean, "random_mean": float(values.mean()), "random_sd": float(values.std()),
            "subsets": len(moves), "analyses": analyses,
            "by_score": {sc: judge(an, moves, args.k) for sc, an in analyses.items()}}


def summary_rows(rows: list[dict], scores: list[str], dev: set[str]) -> list[str]:
    out = []
    for sc in scores:
        for label, group in (("evaluation", [r for r in rows if r["style"] not in dev]),
                             ("dev", [r for r in rows if r["style"] in dev]), ("all", rows)):
            if not group:
                continue
            pct = [r["by_score"][sc]["percentile"] for r in group]
            rho = [r["by_score"][sc]["rho"] for r in group if r["by_score"][sc]["rho"] is not None]
            mean_rho = f"{sum(rho) / len(rho):+.2f}" if rho else "n/a"
            out.append(f"| {sc} | {label} ({len(group)}) | {sum(pct) / len(pct):.0f} | "
                       f"{sum(p >= 50 for p in pct)} of {len(group)} | {mean_rho} |")
    return out


def markdown(rows: list[dict], args, seconds: float) -> str:
    dev = set(args.dev)
    lines = [f"### Perturbing selected vs random cross-attention layers (toy model, k={args.k}, sigma={args.sigma}, "
             f"{args.samples} samples x {args.draws} draws, {seconds:.0f} s)", "",
             "| style | set | p(style) clean | drop: all k-subsets mean (sd) | score | selected layers "
             "| drop: selected | drop: bottom-k | selected percentile | rho |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        for sc in args.scores:
            j = r["by_score"][sc]
            short = ", ".join(n.replace(".transformer_blocks.0.attn2", "") for n in j["selected"])
            rho = "n/a" if j["rho"] is None else f"{j['rho']:+.2f}"
            lines.append(f"| {r['style']} | {'dev' if r['style'] in dev else 'eval'} | {r['clean']:.3f} | "
                         f"{r['random_mean']:.3f} ({r['random_sd']:.3f}, n={r['subsets']}) | {sc} | {short} | "
                         f"{j['selected_move']:.3f} | {j['bottom_move']:.3f} | {j['percentile']:.0f} | {rho} |")
    lines += ["", "| score | styles | mean percentile (chance: 50) | styles >= 50th percentile | mean rho |",
              "|---|---|---|---|---|", *summary_rows(rows, args.scores, dev)]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--toy", default=None, help="toy model folder (default: protect_core/assets/toy)")
    ap.add_argument("--styles", default="all", help="comma-separated toy styles, or 'all' (default)")
    ap.add_argument("--dev", default="stripes,dots,rings",
                    help="styles used to choose the default score (reported apart from the evaluation)")
    ap.add_argument("--scores", default="activation,causal,combined",
                    help="analysis scores to compare (comma-separated)")
    ap.add_argument("--k", type=int, default=2)
    ap.add_argument("--images", type=int, default=6)
    ap.add_argument("--samples", type=int, default=16)
    ap.add_argument("--sigma", type=float, default=2.0)
    ap.add_argument("--draws", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1: a shared machine)")
    ap.add_argument("--plot", default=None, help="heat map of the first style's analysis (default score) (PNG)")
    ap.add_argument("--selection", default=None, help="selection JSON of the first style's analysis (default score)")
    ap.add_argument("--out", default=None, help="also write the markdown tables here")
    args = ap.parse_args(argv)
    from protect_core.layers import LayerSelection
    from protect_core.layers.analysis import DEFAULT_SCORE, SCORES
    from protect_core.toy.model import build_toy_host, load_style_classifier, toy_available, toy_world

    if not toy_available(args.toy):
        print("no trained toy model found (protect_core/assets/toy or --toy DIR); train it with "
              "`python -m protect_core.toy.train --out protect_core/assets/toy` first")
        return 1
    world = toy_world(args.toy)
    args.scores = [s.strip() for s in args.scores.split(",") if s.strip()]
    args.dev = [s.strip() for s in args.dev.split(",") if s.strip()]
    styles = list(world["styles"]) if args.styles == "all" else [s.strip() for s in args.styles.split(",")
                                                                 if s.strip()]
    bad = [s for s in args.scores if s not in SCORES] + [s for s in styles if s not in world["styles"]]
    if bad or not args.scores or not styles:
        print(f"unknown or missing score/style: {bad}; scores: {', '.join(SCORES)}; styles: "
              f"{', '.join(world['styles'])}")
        return 2
    torch.set_num_threads(max(1, args.threads))
    host, clf = build_toy_host(path=args.toy), load_style_classifier(args.toy)
    size = int(world["size"])
    rows, t0 = [], time.time()
    for i, style in enumerate(styles):
        res = run_style(host, clf, style, args, size)
        rows.append(res)
        print(f"{style}: " + ", ".join(f"{sc} {j['percentile']:.0f}" for sc, j in res["by_score"].items()),
              file=sys.stderr, flush=True)
        if i == 0 and (args.selection or args.plot):
            shown = DEFAULT_SCORE if DEFAULT_SCORE in args.scores else args.scores[0]
            sel = LayerSelection.from_analysis(res["analyses"][shown], args.k)
            if args.selection:
                sel.save(args.selection)
            if args.plot:
                from protect_core.layers.heatmap import save_heatmap

                save_heatmap(sel, args.plot)
    text = markdown(rows, args, time.time() - t0)
    print("\n" + text)
    if args.out:
        Path(args.out).write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
