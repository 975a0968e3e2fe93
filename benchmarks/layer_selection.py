"""Benchmark: do the layers `stylecloak layers` selects matter more for style than random layers? (toy model)

    PYTHONPATH=. .venv/bin/python benchmarks/layer_selection.py [--toy DIR] [--styles stripes,dots,rings] [--k 2]
        [--images 6] [--samples 16] [--sigma 0.5] [--draws 2] [--plot layers_toy.png --selection layers_toy.json]

For each style (the toy world's "artist"): render ``--images`` images of it and run the layer analysis on them
(style prompt = the toy caption "a painting in {style} style", content prompt "a painting"; timesteps 200,500,800,
2 seeds, the offline VAE-Gram descriptor) and take its top-k layers. Then, for EVERY k-subset of the model's
cross-attention layers, perturb the to_k and to_v weights of just those layers with relative Gaussian noise
(sigma x the weight's RMS; the noise of a given layer and draw is the same in every subset, so subsets differ only
in which layers are hit; weight overrides, the host is untouched), generate ``--samples`` images from the style's
prompt (fixed seeds, DDIM 20 steps, CFG 4) and read the toy style classifier's mean probability of the style.
Movement = p(unperturbed) - p(perturbed), averaged over ``--draws`` noise draws. The markdown table compares the
selected subset with the mean and sd over all subsets, with the bottom-k subset of the ranking, and gives the
selected subset's percentile among all subsets (100 = moves the classifier most).

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


def run_style(host, clf, style: str, args, size: int) -> dict:
    from protect_core.layers import AnalysisSettings, LayerSelection, analyse_layers
    from protect_core.toy.styles import prompt_for, render

    images = render(style, args.images, size=size, seed=123)
    analysis = analyse_layers(host, images, AnalysisSettings(style_prompt=prompt_for(style),
                                                             content_prompt="a painting", size=size, seeds=2))
    selected = analysis.top(args.k)
    bottom = [r.name for r in analysis.layers[-args.k:]]
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
    values = torch.tensor(list(moves.values()))
    sel_move, bottom_move = moves[frozenset(selected)], moves[frozenset(bottom)]
    percentile = 100.0 * float((values <= sel_move).float().mean())
    return {"style": style, "clean": clean, "selected": selected, "selected_move": sel_move,
            "random_mean": float(values.mean()), "random_sd": float(values.std()), "bottom_move": bottom_move,
            "percentile": percentile, "subsets": len(moves), "analysis": analysis,
            "selection": LayerSelection.from_analysis(analysis, args.k)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--toy", default=None, help="toy model folder (default: protect_core/assets/toy)")
    ap.add_argument("--styles", default="stripes,dots,rings")
    ap.add_argument("--k", type=int, default=2)
    ap.add_argument("--images", type=int, default=6)
    ap.add_argument("--samples", type=int, default=16)
    ap.add_argument("--sigma", type=float, default=0.5)
    ap.add_argument("--draws", type=int, default=2)
    ap.add_argument("--plot", default=None, help="heat map of the first style's analysis (PNG)")
    ap.add_argument("--selection", default=None, help="selection JSON of the first style's analysis")
    args = ap.parse_args(argv)
    from protect_core.toy.model import build_toy_host, load_style_classifier, toy_available, toy_world

    if not toy_available(args.toy):
        print("no trained toy model found (protect_core/assets/toy or --toy DIR); train it with "
              "`python -m protect_core.toy.train --out protect_core/assets/toy` first")
        return 1
    torch.set_num_threads(max(1, min(4, torch.get_num_threads())))
    host, clf = build_toy_host(path=args.toy), load_style_classifier(args.toy)
    size = int(toy_world(args.toy)["size"])
    rows, t0 = [], time.time()
    for i, style in enumerate(s.strip() for s in args.styles.split(",") if s.strip()):
        res = run_style(host, clf, style, args, size)
        rows.append(res)
        if i == 0 and args.selection:
            res["selection"].save(args.selection)
        if i == 0 and args.plot:
            from protect_core.layers.heatmap import save_heatmap

            save_heatmap(res["selection"], args.plot)
    print(f"\n### Perturbing selected vs random cross-attention layers (toy model, k={args.k}, "
          f"sigma={args.sigma}, {args.samples} samples x {args.draws} draws, {time.time() - t0:.0f} s)\n")
    print("| style | p(style) clean | selected layers | drop: selected | drop: all k-subsets mean (sd) "
          "| drop: bottom-k | selected percentile |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        short = ", ".join(n.replace(".transformer_blocks.0.attn2", "") for n in r["selected"])
        print(f"| {r['style']} | {r['clean']:.3f} | {short} | {r['selected_move']:.3f} | {r['random_mean']:.3f} "
              f"({r['random_sd']:.3f}, n={r['subsets']}) | {r['bottom_move']:.3f} | {r['percentile']:.0f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
