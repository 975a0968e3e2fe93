"""Prompt control of a toy model: generate from each style's prompt and ask the classifier what came out.

    python -m protect_core.toy.evaluate [--path DIR] [--n 32] [--seed 0] [--steps 25] [--guidance 4]

Prints a markdown table: per style, the share of samples classified as the prompted style and the mean
classifier probability of it (chance is 1 / number of styles).
"""
from __future__ import annotations

import argparse

import torch

from .styles import prompt_for


@torch.no_grad()
def evaluate_toy(host, classifier, n_per_style: int = 16, seed: int = 0, styles=None, steps: int = 25,
                 guidance: float = 4.0, size: int | None = None, batch: int = 128, keep_images: bool = False) -> dict:
    """``{"styles": {style: {"share", "prob", "top"}}, "mean_share", "chance", ...}`` for ``styles``.

    ``styles`` defaults to the classifier's styles minus its held-out one (include it to check that the
    pre-trained model does *not* produce it). ``size`` defaults to the UNet's native ``sample_size`` x 8.
    """
    from ..sampling import txt2img

    if n_per_style < 1:
        raise ValueError("n_per_style must be >= 1")
    if styles is None:
        styles = [s for s in classifier.styles if s != classifier.held_out]
    if size is None:
        unet = getattr(host, "unet", None)
        if unet is None:
            raise ValueError("pass size= for hosts without a diffusers UNet")
        size = int(unet.config.sample_size) * host.vae_scale_factor
    prompts = [prompt_for(s) for s in styles for _ in range(n_per_style)]
    with host.borrowed():
        imgs = [txt2img(host, prompts[i:i + batch], height=size, width=size, steps=steps, guidance=guidance,
                        seed=seed * 1_000 + i) for i in range(0, len(prompts), batch)]
    imgs = torch.cat(imgs)
    probs = classifier.probs(imgs).view(len(styles), n_per_style, -1)
    per_style = {}
    for s, p in zip(styles, probs):
        j = classifier.styles.index(s)
        pred = p.argmax(-1)
        top = int(torch.bincount(pred, minlength=len(classifier.styles)).argmax())
        per_style[s] = {"share": round(float((pred == j).float().mean()), 4),
                        "prob": round(float(p[:, j].mean()), 4), "top": classifier.styles[top]}
    shares = [v["share"] for v in per_style.values()]
    extra = {"images": imgs.view(len(styles), n_per_style, *imgs.shape[1:])} if keep_images else {}
    return {**extra, "styles": per_style, "mean_share": round(sum(shares) / len(shares), 4),
            "chance": round(1 / len(classifier.styles), 4), "n_per_style": n_per_style, "seed": seed,
            "steps": steps, "guidance": guidance, "size": size}


def save_sheet(rows: torch.Tensor, path, max_cols: int = 12, scale: int = 2) -> None:
    """Save ``rows`` (R, C, 3, H, W) in [0, 1] as one PNG grid (one row per style), upscaled ``scale`` times."""
    from PIL import Image

    rows = rows[:, :max_cols]
    grid = torch.cat([torch.cat(list(r), 2) for r in rows], 1)
    arr = (grid.permute(1, 2, 0).clamp(0, 1) * 255).round().byte().cpu().numpy()
    im = Image.fromarray(arr)
    im.resize((im.width * scale, im.height * scale), Image.NEAREST).save(path)


def format_table(res: dict) -> str:
    rows = ["| prompted style | share classified as it | mean probability | most common verdict |",
            "|---|---|---|---|"]
    for s, v in res["styles"].items():
        rows.append(f"| {s} | {v['share']:.2f} | {v['prob']:.2f} | {v['top']} |")
    rows.append(f"| **mean** | **{res['mean_share']:.2f}** | | chance {res['chance']:.2f} |")
    return "\n".join(rows) + (f"\n\n{res['n_per_style']} samples per style, {res['steps']} DDIM steps, guidance "
                              f"{res['guidance']}, {res['size']} px, seed {res['seed']}.")


def main(argv=None) -> int:
    from .classifier import classifier_accuracy
    from .model import build_toy_host, load_style_classifier, toy_world

    ap = argparse.ArgumentParser(prog="python -m protect_core.toy.evaluate", description=__doc__.split("\n")[0])
    ap.add_argument("--path", default=None, help="toy model folder (default: the shipped one)")
    ap.add_argument("--n", type=int, default=32, help="samples per style")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=25)
    ap.add_argument("--guidance", type=float, default=4.0)
    ap.add_argument("--all", action="store_true", help="include the held-out style (expect about 0)")
    ap.add_argument("--classifier-n", type=int, default=64, help="renders per style for classifier accuracy")
    ap.add_argument("--sheet", help="also save a PNG grid of the samples here (one row per style)")
    ap.add_argument("--device", default="cpu")
    a = ap.parse_args(argv)
    clf = load_style_classifier(a.path)
    world = toy_world(a.path)
    styles = clf.styles if a.all else [s for s in clf.styles if s != world["held_out"]]
    res = evaluate_toy(build_toy_host(a.device, path=a.path), clf, a.n, a.seed, styles, a.steps, a.guidance,
                       keep_images=bool(a.sheet))
    if a.sheet:
        save_sheet(res.pop("images"), a.sheet)
    print(format_table(res))
    if a.classifier_n:
        acc = classifier_accuracy(clf, a.classifier_n, size=world["size"])
        print("\nclassifier accuracy on fresh renders: "
              + ", ".join(f"{k} {v:.2f}" for k, v in acc.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
