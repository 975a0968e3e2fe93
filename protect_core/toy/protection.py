"""Does protection hold, also after purification? Every cloak method against every attack, in a measurement world,
with the random-noise control, both judges and several seeds (``benchmarks/protection.py`` runs it).

One seed's run, for one unseen artist:

1. render ``images`` pieces of the artist (seeded); training sets: ``clean``, then for each budget B (one or a
   list: the points of the frontier chart, :mod:`protect_core.toy.frontier`) ``noise@B`` (uniform +-B/255, the
   control) and each method at budget B (its default settings, the step size scaled with the budget, as in
   :func:`protect_core.toy.budget.swept_settings`), or at its own default intensity when no budget is given (then
   the control uses the largest default budget among the methods); ``robust`` cloaks with the optimiser's
   expectation over transforms; a method may carry expert options (``aspl:posterior=sample:subset=unet``,
   :func:`parse_method`), so variants of one method run side by side;
2. every set through every purifier (``jpeg75``, ``noisy_upscale``, ``diffpure``, ...: the efficacy benchmark's
   list, :data:`protect_core.toy.efficacy.PURIFIERS`), 8-bit like what an attacker saves;
3. the world's attacker (LoRA; its settings from the world's config) fine-tunes on every set, purified ones
   included, with the same seed, prompt, steps and sampling noise; ``full`` fine-tuning only on the un-purified
   sets (the expensive attacker); both judges score the samples.

Protection success = share of samples a judge does NOT attribute to the artist (peers' definition). Seeds are
merged cell by cell: mean and standard error across seeds. Nothing here is tuned per method.
"""
from __future__ import annotations

import dataclasses
import json
import time
from typing import Callable

import torch

from .efficacy_seeds import mean_se_over_seeds

NOISE = "noise"


def parse_method(spec: str) -> tuple[str, dict]:
    """``"aspl:posterior=sample:subset=unet"`` -> ``("aspl", {"posterior": "sample", "subset": "unet"})``: a
    method with expert options (values read as JSON where they parse), so variants can sit side by side."""
    name, *pairs = spec.split(":")
    opts = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"method {spec!r}: options are KEY=VALUE after ':', got {pair!r}")
        try:
            opts[key] = json.loads(value)
        except json.JSONDecodeError:
            opts[key] = value
    return name, opts


def check_methods(specs: list[str]) -> None:
    """One-line ValueError for an unknown method or a malformed option in any spec (before any model work)."""
    from ..cloak.base import available_methods

    known = available_methods()
    for spec in specs:
        name, _ = parse_method(spec)
        if name not in known:
            raise ValueError(f"unknown method {name!r} in {spec!r}; choose from {', '.join(known)}")


def protection_settings(spec: str, budget_255: float | None, intensity: str, robust: bool, seed: int,
                        steps: int | None):
    """The cloak settings of method ``spec`` (see :func:`parse_method`) in this benchmark (module doc)."""
    from ..cloak.base import CloakSettings, get_method
    from ..cloak.presets import settings_for
    from .budget import swept_settings

    method, opts = parse_method(spec)
    if budget_255 is None:
        s = settings_for(get_method(method), intensity, CloakSettings(method=method, seed=seed, robust=robust),
                         steps=steps)
    else:
        s = dataclasses.replace(swept_settings(method, budget_255, seed, steps), robust=robust)
    return dataclasses.replace(s, options={**s.options, **opts}) if opts else s


def set_name(method: str, budget_255: float | None, robust: bool) -> str:
    return f"{method}{'' if budget_255 is None else f'@{budget_255:g}'}{'+robust' if robust else ''}"


def budget_list(budget_255) -> list[float | None]:
    """``16.0`` / ``None`` / ``[8, 16, 32]`` -> a list of budgets (``[None]``: each method's default intensity)."""
    if budget_255 is None or isinstance(budget_255, (int, float)):
        return [None if budget_255 is None else float(budget_255)]
    return [float(b) for b in budget_255]


def protection_sets(host, clean: torch.Tensor, methods: list[str], budget_255, intensity: str,
                    robust: bool, seed: int, steps: int | None = None, log: Callable = print) -> dict[str, dict]:
    """``{name: {"images", "meta"}}``: clean, then per budget (``budget_255`` may be a list, see
    :func:`budget_list`) the noise control and every method's cloak (8-bit)."""
    from ..metrics import dssim_pyramid
    from .efficacy import _quality

    def quality(x):
        with torch.no_grad():
            q = _quality(clean, x)
            q["dssim"] = round(float(dssim_pyramid(clean, x).mean()), 5)
        return q

    sets = {"clean": {"images": clean, "meta": {"method": "clean", "psnr": None}}}
    for budget in budget_list(budget_255):
        sets.update(_budget_sets(host, clean, methods, budget, intensity, robust, seed, steps, quality, log))
    return sets


def _budget_sets(host, clean, methods, budget_255, intensity, robust, seed, steps, quality, log) -> dict[str, dict]:
    """The noise control and every method's cloak at one budget (``None``: default intensity)."""
    from ..cloak.runner import cloak_images
    from .budget import latent_shift
    from .efficacy import placebo

    cloaks = {}
    for m in methods:
        s = protection_settings(m, budget_255, intensity, robust, seed, steps)
        method, opts = parse_method(m)
        t0 = time.perf_counter()
        x = torch.stack([r.image for r in cloak_images(host, list(clean), s, batch_size=len(clean))])
        x = (x.clamp(0, 1) * 255).round() / 255
        seconds = round(time.perf_counter() - t0, 2)
        cloaks[set_name(m, budget_255, robust)] = {"images": x, "meta": {
            "method": method, "options": opts, "eps_255": round(s.eps * 255, 3), "steps": s.steps, "robust": robust,
            "seconds": seconds, **quality(x), "latent_shift": latent_shift(host, clean, x)}}
        log(f"cloak {set_name(m, budget_255, robust)}: {seconds:.0f} s")
    noise_255 = budget_255 if budget_255 is not None else max(e["meta"]["eps_255"] for e in cloaks.values())
    x = placebo(clean, seed, eps=noise_255 / 255)
    sets = {f"{NOISE}@{noise_255:g}": {"images": x, "meta": {"method": NOISE, "eps_255": noise_255, **quality(x),
                                                             "latent_shift": latent_shift(host, clean, x)}}}
    sets.update(cloaks)
    return sets


def run_protection(host, judges, world, artist: str, methods: list[str], budget_255=16.0,
                   intensity: str = "default", robust: bool = False, purifiers=("jpeg75", "noisy_upscale"),
                   finetunes=("lora",), images: int = 8, samples: int = 24, seed: int = 0,
                   steps: dict | None = None, log: Callable = print) -> dict:
    """One seed's run (module doc). Returns JSON-able ``{"sets": metas, "scores": {kind: {name: scores}}}``."""
    from ..worlds.fidelity import attacker_config
    from .efficacy import mimic_all, purify_sets

    check_methods(methods)
    cfg = attacker_config(world, sorted({parse_method(m)[0] for m in methods}), finetunes, images, samples, seed,
                          steps, purifiers)
    size = int(world.config()["size"])
    clean = world.styles().render(artist, images, size, seed=seed)
    t0 = time.perf_counter()
    sets = protection_sets(host, clean, list(methods), budget_255, intensity, robust, seed, cfg.steps.get("cloak"),
                           log)
    pur = purify_sets(host, sets, cfg, log) if purifiers else {}
    k = judges.styles.index(artist)
    budgets = budget_list(budget_255)
    res = {"artist": artist, "seed": seed, "budget_255": budgets[0], "budgets_255": budgets, "intensity": intensity,
           "robust": robust,
           "purifiers": list(purifiers), "sets": {n: e["meta"] for n, e in {**sets, **pur}.items()}, "scores": {}}
    for kind in finetunes:
        chosen = {**sets, **pur} if kind == "lora" else sets
        base, sc = mimic_all(host, judges, chosen, kind, cfg, k, log)
        res["scores"][kind] = {"__base__": base, **sc}
    res["seconds"] = round(time.perf_counter() - t0, 1)
    return res


def merge_runs(runs: list[dict]) -> dict:
    """Cell by cell over seeds: ``{kind: {set: {"classifier": (mean, se), "centroid": (mean, se), "n": seeds}}}``
    plus the mean quality of each set (``quality``)."""
    cells: dict = {}
    for run in runs:
        for kind, per in run["scores"].items():
            for name, sc in per.items():
                c = cells.setdefault(kind, {}).setdefault(name, {"classifier": [], "centroid": []})
                c["classifier"].append(sc["success"]["rate"])
                if "second" in sc:
                    c["centroid"].append(sc["second"]["success"]["rate"])
    merged = {kind: {name: {"classifier": mean_se_over_seeds(c["classifier"]),
                            "centroid": mean_se_over_seeds(c["centroid"]) if c["centroid"] else None,
                            "n": len(c["classifier"])} for name, c in per.items()} for kind, per in cells.items()}
    quality: dict = {}
    for run in runs:
        for name, meta in run["sets"].items():
            q = meta.get("after_purifier", meta)
            for key in ("psnr", "ssim", "dssim"):
                if q.get(key) is not None:
                    quality.setdefault(name, {}).setdefault(key, []).append(q[key])
    return {"scores": merged, "quality": {n: {k: sum(v) / len(v) for k, v in q.items()} for n, q in quality.items()}}


def _cell(c: dict | None) -> str:
    if c is None:
        return ""
    fmt = (lambda m, se, n: f"{m:.0%}" + (f" ±{se:.0%}" if n > 1 else ""))
    out = fmt(*c["classifier"], c["n"])
    if c["centroid"] is not None:
        out += " / " + fmt(*c["centroid"], c["n"])
    return out


def markdown(runs: list[dict]) -> str:
    """One table: a row per training set, a column per attack (LoRA after each purifier, then full fine-tuning)."""
    merged = merge_runs(runs)
    first = runs[0]
    lora = merged["scores"].get("lora", {})
    sets = [n for n in first["sets"] if "|" not in n]
    attacks = [("LoRA", "")] + [(f"LoRA after {p}", f"|{p}") for p in first["purifiers"]]
    attacks += [(k, "") for k in merged["scores"] if k != "lora"]
    seeds = sorted({r["seed"] for r in runs})
    budgets = first.get("budgets_255", [first["budget_255"]])
    where = ("budget " + ", ".join(format(b, "g") for b in budgets) + "/255" if budgets[0] is not None
             else first["intensity"] + " intensity")
    lines = [f"Artist **{first['artist']}**, {where}"
             f"{', robust cloaks' if first['robust'] else ''}; seeds {', '.join(map(str, seeds))}. Cell: protection "
             "success by the classifier / the centroid judge" + (" (mean ± standard error across seeds)"
                                                                 if len(seeds) > 1 else "") + ".", "",
             "| training set | PSNR | SSIM | DSSIM | " + " | ".join(a for a, _ in attacks) + " |",
             "|---|---|---|---|" + "---|" * len(attacks)]
    for n in sets:
        q = merged["quality"].get(n, {})
        qual = " | ".join("" if key not in q else f"{q[key]:.{d}f}" for key, d in (("psnr", 1), ("ssim", 3),
                                                                                   ("dssim", 4)))
        row = []
        for label, suffix in attacks:
            per = lora if label.startswith("LoRA") else merged["scores"][label]
            row.append(_cell(per.get(n + suffix)))
        lines.append(f"| {n} | {qual} | " + " | ".join(row) + " |")
    base = [_cell(lora.get("__base__"))] + [""] * (len(attacks) - 1)
    lines.append("| base model (no fine-tune) | | | | " + " | ".join(base) + " |")
    return "\n".join(lines)
