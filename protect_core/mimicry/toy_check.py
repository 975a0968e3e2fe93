"""The real check of the mimicry test, in the toy world: does fine-tuning on the held-out style teach it?

    PYTHONPATH=. python -m protect_core.mimicry.toy_check [--path DIR] [--steps 150] [--lr 1e-3] [--rank 8]
        [--samples 16] [--method lora|dreambooth] [--placebo] [-o report/]

The toy model (:mod:`protect_core.toy`) never saw its held-out style. The artist's clean art = renders of that
style; "other" reference sets = renders of the trained styles; the toy world's style classifier is the judge
(``probs``), next to the offline descriptor. Expected: the ``clean`` condition's style similarity and classifier
share of the held-out style rise clearly above ``base`` (sanity check passes). ``--placebo`` adds a training set
with random +-8/255 noise (a "cloak" that should not protect), as a control. Prints a markdown table.
"""
from __future__ import annotations

import argparse
import os

import torch

from .runner import run_mimicry_test
from .settings import MimicrySettings


def toy_settings(size: int, **kw) -> MimicrySettings:
    base = dict(method="lora", rank=8, lr=1e-3, steps=150, batch_size=4, resolution=size, samples=16,
                sample_steps=25, guidance=4.0, sample_batch=16, instance_prompt="a painting in sks style",
                prompts=["a painting in sks style"], reference_samples=16, seed=0)
    base.update({k: v for k, v in kw.items() if v is not None})
    return MimicrySettings(**base)


def run_toy_check(path=None, n_train: int = 8, refs_per_style: int = 4, placebo: bool = False, progress=None,
                  **settings_kw):
    """Run the mimicry test on the toy model's held-out style; returns the report."""
    from ..toy.model import build_toy_host, load_style_classifier, toy_world
    from ..toy.styles import render

    world = toy_world(path)
    host = build_toy_host(path=path)
    clf = load_style_classifier(path)
    size, held = int(world["size"]), world["held_out"]
    clean = render(held, n_train, size, seed=0)
    refs = {s: render(s, refs_per_style, size, seed=1) for s in world["trained"]}
    sets = {}
    if placebo:
        g = torch.Generator().manual_seed(0)
        sets["noise8"] = (clean + (torch.rand(clean.shape, generator=g) * 2 - 1) * 8 / 255).clamp(0, 1)
    settings = toy_settings(size, **settings_kw)
    return run_mimicry_test(host, clean, sets, settings, progress, references=refs, classifier=clf.probs,
                            classifier_artist_index=clf.styles.index(held))


def format_table(report) -> str:
    lines = ["| condition | style similarity | NC protection success | classifier share of artist style | "
             "classifier p(artist) | final loss | verdict |", "|---|---|---|---|---|---|---|"]
    for name, r in report.conditions.items():
        c = r.get("classifier", {})
        sim = r["style_similarity"]
        lines.append(f"| {name} | {sim['mean']:.3f} +- {sim['stderr']:.3f} | "
                     f"{r['nearest_centroid']['protection_success_rate']:.2f} | "
                     f"{c.get('artist_share', float('nan')):.2f} | "
                     f"{c.get('artist_probability', {}).get('mean', float('nan')):.3f} | "
                     f"{r.get('final_loss')} | {r['verdict']} |")
    ce = report.ceiling
    if ce:
        c = ce.get("classifier", {})
        lines.append(f"| ceiling: clean via VAE | {ce['style_similarity']['mean']:.3f} | "
                     f"{ce['nearest_centroid']['protection_success_rate']:.2f} | "
                     f"{c.get('artist_share', float('nan')):.2f} | "
                     f"{c.get('artist_probability', {}).get('mean', float('nan')):.3f} |  | upper bound |")
    s = report.sanity
    lines.append(f"\nsanity: gain {s['gain']:.3f} (margin {s['margin']}, 2 x stderr {2 * s['stderr']:.3f}) -> "
                 f"{'passed' if s['passed'] else 'FAILED'}; {s.get('diagnosis', '')}; {report.seconds:.0f} s")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m protect_core.mimicry.toy_check", description=__doc__.split("\n")[0])
    ap.add_argument("--path", default=None, help="toy model folder (default: the shipped assets)")
    ap.add_argument("--method", default=None, choices=["lora", "dreambooth"])
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--lr", type=float, default=None)
    ap.add_argument("--rank", type=int, default=None)
    ap.add_argument("--samples", type=int, default=None)
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--placebo", action="store_true", help="add a random-noise (+-8/255) training set")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("-o", "--out", default=None, help="also write report.json / report.png here")
    a = ap.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    report = run_toy_check(a.path, placebo=a.placebo, method=a.method, steps=a.steps, lr=a.lr, rank=a.rank,
                           samples=a.samples, reference_samples=a.samples, seed=a.seed)
    print(format_table(report))
    if a.out:
        print(report.save(a.out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
