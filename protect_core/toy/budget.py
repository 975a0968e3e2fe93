"""The budget sweep on the toy world: how protection grows with the cloak's L-inf budget, against a noise control.

The efficacy benchmark (:mod:`.efficacy`) answers "does a method protect at its documented budget?". This module
answers the question that follows a "no": *at what budget would it, and is that more than random noise of the same
size does?* For every method and every budget ``eps`` (in /255), one cloak of the held-out style's art is made with
the method's default settings except

* ``eps`` = the swept budget, and
* ``step_size`` = the method's default step size x (eps / the method's default eps), so that the optimiser can
  cross the larger box in the same number of steps (a method whose default has no step size keeps ``eps / 10``).
  Everything else (steps, optimiser, options, Glaze's perceptual budget) stays the method's default.

Each budget also gets a *noise* row: uniform random noise of +-eps on 8-bit levels (the efficacy benchmark's
placebo at that budget). Then the Mimicry Test's attacker of the efficacy benchmark (same fine-tunes, seeds,
prompts, samples: :func:`.efficacy.mimic_all`) trains on every set and the toy classifier judges the samples;
success rate, style score and PSNR as defined in :mod:`.efficacy`.

Context: ``vae_roundtrip_psnr`` = PSNR of the clean art after the toy VAE's encode + decode (how lossy the codec the
attacker trains through is; a budget far below it reaches the fine-tune only through what the encoder makes of it).
Diagnostic, per set: ``latent_shift`` = mean over images of ||mu(x') - mu(x)|| / ||mu(x)||, with mu the VAE
posterior mean (what the attacker's fine-tune actually trains on). Nothing here is tuned to any result: the budgets
and methods are the command line's, the attacker is the efficacy benchmark's.
"""
from __future__ import annotations

import time
from typing import Callable

import torch

from ..metrics import psnr
from .efficacy import EfficacyConfig, _quality, mimic_all, placebo, sanity

NOISE = "noise"


def parse_budgets(text: str) -> list[float]:
    """``"8,16,32"`` -> ``[8.0, 16.0, 32.0]`` (budgets in /255; each in (0, 255])."""
    out = []
    for part in (text or "").split(","):
        if not part.strip():
            continue
        try:
            v = float(part)
        except ValueError:
            raise ValueError(f"budgets are numbers in /255, e.g. 8,16,32; got {part!r}") from None
        if not 0 < v <= 255:
            raise ValueError(f"a budget must be in (0, 255] (/255 units), got {v}")
        out.append(v)
    if not out:
        raise ValueError("give at least one budget, e.g. 8,16,32")
    return sorted(set(out))


def swept_settings(method_name: str, eps_255: float, seed: int, steps: int | None = None):
    """The method's default-intensity settings with the budget ``eps_255`` and the step size scaled with it."""
    from ..cloak.base import CloakSettings, get_method
    from ..cloak.presets import settings_for

    method = get_method(method_name)
    eps = eps_255 / 255
    default_eps = method.defaults.get("eps")
    default_step = method.defaults.get("step_size")
    step = None if default_step is None or not default_eps else float(default_step) * eps / float(default_eps)
    base = CloakSettings(method=method_name, seed=seed)
    return settings_for(method, "default", base, eps=eps, step_size=step, steps=steps)


def latent_shift(host, clean: torch.Tensor, other: torch.Tensor) -> float:
    """Mean relative change of the VAE posterior mean (module doc)."""
    with host.borrowed(), torch.no_grad():
        a = host.posterior(clean * 2 - 1)[0]
        b = host.posterior(other * 2 - 1)[0]
    num = (b - a).flatten(1).norm(dim=1)
    den = a.flatten(1).norm(dim=1).clamp_min(1e-12)
    return round(float((num / den).mean()), 5)


def budget_sets(host, clean: torch.Tensor, methods: list[str], budgets: list[float], seed: int,
                steps: int | None = None, log: Callable = print) -> dict[str, dict]:
    """``{name: {"images", "meta"}}``: clean, ``noise@E`` and ``method@E`` for every budget E."""
    from ..cloak.runner import cloak_images

    sets = {"clean": {"images": clean, "meta": {"method": "clean", "eps_255": 0.0, "psnr": None, "ssim": None,
                                               "latent_shift": 0.0}}}
    for e in budgets:
        x = placebo(clean, seed, eps=e / 255)
        sets[f"{NOISE}@{e:g}"] = {"images": x, "meta": {"method": NOISE, "eps_255": e, **_quality(clean, x),
                                                        "latent_shift": latent_shift(host, clean, x)}}
        for m in methods:
            s = swept_settings(m, e, seed, steps)
            t0 = time.perf_counter()
            x = torch.stack([r.image for r in cloak_images(host, list(clean), s, batch_size=len(clean))])
            x = (x.clamp(0, 1) * 255).round() / 255  # what the artist publishes is 8-bit
            meta = {"method": m, "eps_255": e, "steps": s.steps, "step_size_255": round(s.step_size * 255, 4),
                    "seconds": round(time.perf_counter() - t0, 2), **_quality(clean, x),
                    "latent_shift": latent_shift(host, clean, x)}
            sets[f"{m}@{e:g}"] = {"images": x, "meta": meta}
            log(f"cloak {m}@{e:g}: {meta['seconds']:.0f} s, PSNR {meta['psnr']:.2f} dB, "
                f"latent shift {meta['latent_shift']:.3f}")
    return sets


def run_budget_sweep(host, classifier, methods: list[str], budgets: list[float], held_out: str, size: int,
                     cfg: EfficacyConfig | None = None, log: Callable = print,
                     render: Callable | None = None) -> dict:
    """The whole sweep (module doc); returns a JSON-able dict. ``cfg`` supplies the attacker (fine-tunes, images,
    samples, seed, step/lr overrides; its methods/purifiers are ignored). The host comes back unchanged."""
    from ..cloak.base import available_methods

    if render is None:
        from .styles import render
    unknown = [m for m in methods if m not in available_methods()]
    if unknown:
        raise ValueError(f"unknown cloak method(s) {unknown}; choose from {', '.join(available_methods())}")
    cfg = (cfg or EfficacyConfig(methods=list(methods))).validate()
    if held_out not in classifier.styles:
        raise ValueError(f"the classifier does not know the held-out style {held_out!r}")
    t0 = time.perf_counter()
    clean = render(held_out, cfg.images, size, seed=cfg.seed)
    with host.borrowed(), torch.no_grad():  # how lossy the attacker's codec is on this art (context for the budgets)
        roundtrip = ((host.decode(host.encode(clean * 2 - 1)) + 1) / 2).clamp(0, 1)
    vae_psnr = round(float(psnr(clean, roundtrip).mean()), 2)
    sets = budget_sets(host, clean, methods, budgets, cfg.seed, cfg.steps.get("cloak"), log)
    t_cloak = time.perf_counter()
    artist = classifier.styles.index(held_out)
    finetunes, scores = {}, {}
    for kind in cfg.finetunes:
        base, sc = mimic_all(host, classifier, sets, kind, cfg, artist, log)
        finetunes[kind] = {"base": base, "sanity": sanity(base["p_style"], sc["clean"]["p_style"])}
        scores[kind] = sc
    rows = []
    for name, entry in sets.items():
        meta = entry["meta"]
        row = {"set": name, **{k: meta.get(k) for k in ("method", "eps_255", "psnr", "ssim", "latent_shift",
                                                         "steps", "step_size_255")}}
        for kind in cfg.finetunes:
            sc, ref = scores[kind][name], scores[kind]["clean"]
            row[kind] = {"success": sc["success"]["rate"], "success_se": sc["success"]["se"],
                         "success_2": sc.get("second", {}).get("success", {}).get("rate"),
                         "p_style": sc["p_style"]["mean"],
                         "style_drop": round(ref["p_style"]["mean"] - sc["p_style"]["mean"], 6)}
        rows.append(row)
    return {"config": {**cfg.to_dict(), "methods": list(methods), "budgets_255": list(budgets)},
            "held_out": held_out, "size": size, "model": host.describe(), "vae_roundtrip_psnr": vae_psnr,
            "finetunes": finetunes, "rows": rows,
            "seconds": {"cloak": round(t_cloak - t0, 1), "mimicry": round(time.perf_counter() - t_cloak, 1),
                        "total": round(time.perf_counter() - t0, 1)}}


def _first_protecting(rows: list[dict], method: str, kind: str, level: float) -> str:
    hit = [r for r in rows if r["method"] == method and r[kind]["success"] >= level]
    if not hit:
        return "never"
    r = min(hit, key=lambda r: r["eps_255"])
    return f"{r['eps_255']:g}/255 ({r['psnr']:.1f} dB)"


def markdown_report(results: dict) -> str:
    """Success per method (rows) and budget (columns), per fine-tune; then where each first reaches 90%."""
    budgets = results["config"]["budgets_255"]
    kinds = results["config"]["finetunes"]
    rows = results["rows"]
    by = {(r["method"], r["eps_255"]): r for r in rows}
    methods = [NOISE] + results["config"]["methods"]
    clean = by[("clean", 0.0)]
    lines = [f"Held-out style `{results['held_out']}` at {results['size']} px, {results['config']['images']} "
             f"training images, {results['config']['samples']} samples per condition, seed "
             f"{results['config']['seed']}. Cell: protection success LoRA / full fine-tune, then PSNR of the cloak "
             f"and the VAE latent shift. The toy VAE's own round trip (encode, decode) of the clean art: "
             f"{results['vae_roundtrip_psnr']:.1f} dB PSNR. No-protection floor (clean art): "
             + ", ".join(f"{k} {100 * clean[k]['success']:.0f}%" for k in kinds)
             + ". Sanity (the clean-trained mimic learned the style: p(style) gain >= 0.2 over the base model): "
             + ", ".join(f"{k} {'passed' if results['finetunes'][k]['sanity']['passed'] else 'FAILED (inconclusive)'}"
                         for k in kinds)
             + f". Run time {results['seconds']['total'] / 60:.1f} min.", "",
             "| method | " + " | ".join(f"eps {b:g}/255" for b in budgets) + " |",
             "|---|" + "---|" * len(budgets)]
    for m in methods:
        cells = []
        for b in budgets:
            r = by.get((m, b))
            if r is None:
                cells.append("")
                continue
            rates = " / ".join(f"{100 * r[k]['success']:.0f}%" for k in kinds)
            cells.append(f"{rates} ({r['psnr']:.1f} dB, {r['latent_shift']:.2f})")
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    lines += ["", "Smallest swept budget with >= 90% protection success (PSNR there):", ""]
    for k in kinds:
        lines.append(f"- **{k}**: " + "; ".join(f"{m} {_first_protecting(rows, m, k, 0.9)}" for m in methods))
    return "\n".join(lines) + "\n"


COLOURS = [(0, 0, 0), (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
           (140, 86, 75), (227, 119, 194), (23, 190, 207), (188, 189, 34), (127, 127, 127)]


def chart_fonts():
    """Pillow's default font at title and label size (one size where Pillow lacks FreeType sizes)."""
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=14), ImageFont.load_default(size=12)
    except TypeError:  # Pillow without FreeType sizes
        font = ImageFont.load_default()
        return font, font


def percent_panel(d, x0, y0, pw, ph, label: str, font) -> None:
    """One chart panel: its frame, its label above it and the y axis in percent (grid lines every 20%)."""
    d.rectangle((x0, y0, x0 + pw, y0 + ph), outline="black")
    d.text((x0, y0 - 18), label, fill="black", font=font)
    for tick in range(0, 101, 20):
        yt = y0 + ph * (1 - tick / 100)
        d.line((x0, yt, x0 + pw, yt), fill=(230, 230, 230))
        d.text((x0 - 28, yt - 7), f"{tick}", fill="black", font=font)


def draw_chart(results: dict, path, title: str = "Protection vs budget on the toy world") -> None:
    """A PNG, one panel per fine-tune: x = budget (log2 scale, /255), y = protection success (%), one line per
    method, the noise control in black; the dashed line is the 90% goal, the dotted one the no-protection floor."""
    import math

    from PIL import Image, ImageDraw

    font, small = chart_fonts()
    budgets = results["config"]["budgets_255"]
    kinds = results["config"]["finetunes"]
    methods = [NOISE] + results["config"]["methods"]
    by = {(r["method"], r["eps_255"]): r for r in results["rows"]}
    clean = by[("clean", 0.0)]
    pw, ph, left, top, margin = 360, 260, 60, 70, 50
    width = left + len(kinds) * (pw + margin) + 150
    im = Image.new("RGB", (width, top + ph + 60), "white")
    d = ImageDraw.Draw(im)
    d.text((14, 8), title, fill="black", font=font)
    d.text((14, 30), "dashed: 90% goal; dotted: no-protection floor (clean art)", fill=(110, 110, 110), font=small)
    lo, hi = math.log2(min(budgets)), math.log2(max(budgets))
    span = max(hi - lo, 1e-9)

    def xy(x0, eps, rate):
        return x0 + pw * (math.log2(eps) - lo) / span, top + ph * (1 - rate)

    for p, kind in enumerate(kinds):
        x0 = left + p * (pw + margin)
        percent_panel(d, x0, top, pw, ph, f"fine-tune: {kind}", small)
        for b in budgets:
            xb = xy(x0, b, 0)[0]
            d.text((xb - 8, top + ph + 4), f"{b:g}", fill="black", font=small)
        for xx in range(int(x0), int(x0 + pw), 8):
            yg, yf = top + ph * 0.1, top + ph * (1 - clean[kind]["success"])
            d.line((xx, yg, xx + 4, yg), fill=(120, 120, 120))
            d.point((xx, yf), fill=(90, 90, 90))
        d.text((x0 + pw / 2 - 70, top + ph + 22), "budget eps (/255, log scale)", fill="black", font=small)
        for k, m in enumerate(methods):
            pts = [xy(x0, b, by[(m, b)][kind]["success"]) for b in budgets if (m, b) in by]
            colour = COLOURS[k % len(COLOURS)]
            if len(pts) > 1:
                d.line(pts, fill=colour, width=2)
            for x, y in pts:
                d.ellipse((x - 3, y - 3, x + 3, y + 3), fill=colour)
    lx = left + len(kinds) * (pw + margin) - 20
    for k, m in enumerate(methods):
        d.rectangle((lx, top + 18 * k + 3, lx + 10, top + 18 * k + 13), fill=COLOURS[k % len(COLOURS)])
        d.text((lx + 16, top + 18 * k), m, fill="black", font=small)
    im.save(str(path), format="PNG")
