"""The efficacy benchmark's logic: cloak the toy world's held-out style, let an attacker mimic it, count failures.

Pipeline (one call of :func:`run_efficacy`; ``benchmarks/efficacy.py`` is its command line):

1. The artist's clean art: ``images`` renders of the held-out style at the toy model's native size.
2. Training sets: ``clean``; a *placebo* (uniform random noise of +-8/255 on 8-bit levels: a "cloak" that should
   not protect, the control); and one set per cloak method x intensity (``method@intensity``), plus the robust
   mode (``+robust``: expectation over JPEG/resize/blur/noise while optimising) where asked. Each cloak is made by
   :func:`protect_core.cloak.runner.cloak_images` with the preset's settings (``--steps cloak=N`` overrides steps).
3. Each set is also passed through every purifier (``set|purifier``), the clean art included: an attacker who
   purifies everything they scrape.
4. The Mimicry Test's attacker (:func:`protect_core.mimicry.finetune.finetune` then
   :func:`protect_core.mimicry.runner.generate`) fine-tunes on every set -- LoRA and/or a full UNet fine-tune,
   every set with the same seed, prompt, steps and noise -- and generates ``samples`` images from the fixed seeds.
5. The judge: the toy style classifier (trained on renders of all styles, never on model outputs).

Definitions (fixed before any result was seen; never tuned per method):

* **protection success** (per generated sample): the style classifier does NOT assign the sample to the held-out
  style (argmax over all toy styles). The *protection success rate* of a condition is the share of its
  ``samples`` images that are successes, with a binomial standard error. This is the peers' definition (Glaze
  reports the share of generated images not judged to be the artist's) and needs no threshold. Because it also
  counts samples that fail to show the style for reasons that have nothing to do with the cloak, every table prints
  the *no-protection floor* next to it: the same rate for the model fine-tuned on the clean art (and for the clean
  art after the same purifier).
* **style score** = the classifier's mean probability of the held-out style over the samples. **style-score drop**
  = score(reference) - score(condition), where the reference is the clean-trained model of the same fine-tune and
  the same purifier (``clean`` or ``clean|purifier``). **protection effect** = drop / (score(reference) -
  score(base model)): 0 = the cloak changed nothing, 1 = the fine-tune learned no more of the style than the base
  model knew.
* **sanity check**: the clean-trained model's style score must beat the base model's by at least 0.2 and by more
  than two standard errors; otherwise that fine-tune's results are marked inconclusive (a mimic that learns
  nothing makes every cloak look perfect).
* imperceptibility: PSNR and SSIM of each cloaked set against the clean art (before any purifier).
"""
from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field
from typing import Callable

import torch

from ..metrics import psnr, ssim

#: The attacker's fine-tunes (toy scale), batch 4, prompt "a painting in sks style". LoRA: rank 8 on every
#: attention projection (43k parameters); full: every UNet weight (1.06M). Learning rate and steps were picked, on
#: CLEAN art only and before any cloak was scored, as the cheapest setting where the clean-trained model makes the
#: held-out style in most samples (measured: LoRA 0.95 of 64 samples, full 0.86), i.e. a strong mimic.
FINETUNES = {
    "lora": dict(method="lora", rank=8, lr=3e-3, steps=100),
    "full": dict(method="dreambooth", dreambooth_params=["unet"], lr=1e-3, steps=100),
}
#: Purifier names of this benchmark -> a purify chain (protect_core.purify); documented defaults unless noted.
#: IMPRESS: 100 iterations instead of the paper's 3000 (3000 take about 40 min per 8 images at 32 px on 2 CPU
#: cores); its cosine-decayed lr 0.01 still lets each pixel move far beyond any cloak budget. ``--steps impress=N``.
PURIFIERS = {
    "jpeg75": [("jpeg", {"quality": 75})],
    "impress": [("impress", {"iterations": 100})],
    "diffpure": [("diffpure", {})],
    "noisy_upscale": [("noisy_upscale", {})],
    "blur": [("gaussian_blur", {})],
    "bilateral": [("bilateral_guided", {})],
}
STEP_KEYS = ("cloak", "lora", "full", "impress", "sample")
PLACEBO = "placebo"
PLACEBO_EPS = 8 / 255
SANITY_MARGIN = 0.2
INTENSITY_ORDER = ("low", "default", "high")


@dataclass
class EfficacyConfig:
    """What one benchmark run covers. ``steps``: overrides by key (see :data:`STEP_KEYS`)."""

    methods: list[str]
    intensities: list[str] = field(default_factory=lambda: ["default"])
    robust: list[str] = field(default_factory=list)      # methods also run in robust mode (at every intensity)
    purifiers: list[str] = field(default_factory=lambda: ["jpeg75", "impress"])
    finetunes: list[str] = field(default_factory=lambda: ["lora", "full"])
    images: int = 8
    samples: int = 64
    seed: int = 0
    placebo: bool = True
    steps: dict = field(default_factory=dict)
    lr: dict = field(default_factory=dict)                # fine-tune learning-rate overrides, e.g. {"lora": 1e-2}
    sample_steps: int = 25
    guidance: float = 4.0

    def validate(self) -> "EfficacyConfig":
        from ..cloak.base import available_methods
        from ..cloak.presets import PRESETS

        known = available_methods()
        for name, values, allowed in (("method", self.methods + self.robust, known),
                                      ("intensity", self.intensities, PRESETS),
                                      ("purifier", self.purifiers, PURIFIERS),
                                      ("fine-tune", self.finetunes, FINETUNES)):
            bad = [v for v in values if v not in allowed]
            if bad:
                raise ValueError(f"unknown {name}(s) {bad}; choose from {', '.join(allowed)}")
        if not self.finetunes:
            raise ValueError("name at least one fine-tune (lora, full)")
        if self.images < 1 or self.samples < 1 or self.sample_steps < 1:
            raise ValueError("images, samples and sample steps must be >= 1")
        for k, v in self.steps.items():
            if k not in STEP_KEYS or not isinstance(v, int) or v < 1:
                raise ValueError(f"bad steps override {k}={v!r}; keys {', '.join(STEP_KEYS)}, values >= 1")
        for k, v in self.lr.items():
            if k not in FINETUNES or not isinstance(v, (int, float)) or v <= 0:
                raise ValueError(f"bad learning-rate override {k}={v!r}; keys {', '.join(FINETUNES)}, values > 0")
        return self

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def parse_steps(text: str | None) -> dict:
    """``"cloak=20,lora=60"`` -> ``{"cloak": 20, "lora": 60}`` (keys from :data:`STEP_KEYS`)."""
    out = {}
    for part in (text or "").split(","):
        if not part.strip():
            continue
        key, sep, value = part.partition("=")
        key = key.strip()
        if not sep or key not in STEP_KEYS or not value.strip().isdigit() or int(value) < 1:
            raise ValueError(f"--steps expects KEY=N with KEY in {', '.join(STEP_KEYS)} and N >= 1, got {part!r}")
        out[key] = int(value)
    return out


# --- pure scoring ---------------------------------------------------------------------------------------------
def protection_success(probs: torch.Tensor, artist_index: int) -> torch.Tensor:
    """Per sample: True when the classifier's top style is NOT the artist's (see module doc)."""
    if probs.ndim != 2 or not 0 <= artist_index < probs.shape[1]:
        raise ValueError(f"probs must be (B, K) with the artist's index < K, got {tuple(probs.shape)}")
    return probs.argmax(1) != artist_index


def rate(flags: torch.Tensor) -> dict:
    """Share of True with its binomial standard error."""
    n = int(flags.numel())
    if n == 0:
        raise ValueError("no samples to rate")
    p = float(flags.float().mean())
    return {"rate": round(p, 6), "se": round(math.sqrt(p * (1 - p) / n), 6), "n": n}


def mean_se(values: torch.Tensor) -> dict:
    v = values.double().flatten()
    n = v.numel()
    sd = float(v.std(unbiased=True)) if n > 1 else 0.0
    return {"mean": round(float(v.mean()), 6), "se": round(sd / math.sqrt(n), 6), "n": n}


def protection_effect(p_cond: float, p_ref: float, p_base: float) -> float | None:
    """(p_ref - p_cond) / (p_ref - p_base); None when the reference learned nothing over the base model."""
    gain = p_ref - p_base
    return None if gain <= 0 else round((p_ref - p_cond) / gain, 6)


def sanity(p_base: dict, p_clean: dict, margin: float = SANITY_MARGIN) -> dict:
    gain = p_clean["mean"] - p_base["mean"]
    se = math.sqrt(p_base["se"] ** 2 + p_clean["se"] ** 2)
    ok = gain >= margin and gain > 2 * se
    return {"passed": bool(ok), "gain": round(gain, 6), "stderr": round(se, 6), "margin": margin,
            "rule": f"p_style(clean-trained) - p_style(base) >= {margin} and > 2 stderr"}


def set_name(method: str, intensity: str, robust: bool) -> str:
    return f"{method}@{intensity}" + ("+robust" if robust else "")


def split_name(name: str) -> tuple[str, str]:
    """``"glaze@default|jpeg75"`` -> ``("glaze@default", "jpeg75")``; no purifier -> ``"none"``."""
    base, _, pur = name.partition("|")
    return base, pur or "none"


# --- the stages -----------------------------------------------------------------------------------------------
def _quality(clean: torch.Tensor, other: torch.Tensor) -> dict:
    with torch.no_grad():
        return {"psnr": round(float(psnr(clean, other).mean()), 4), "ssim": round(float(ssim(clean, other).mean()), 5),
                "linf_255": round(float((other - clean).abs().amax()) * 255, 3)}


def placebo(clean: torch.Tensor, seed: int, eps: float = PLACEBO_EPS) -> torch.Tensor:
    """Uniform random noise of +-eps, on 8-bit levels (the control "cloak")."""
    g = torch.Generator().manual_seed(seed + 4242)
    noisy = clean + (torch.rand(clean.shape, generator=g) * 2 - 1) * eps
    return (noisy.clamp(0, 1) * 255).round() / 255


def cloak_sets(host, clean: torch.Tensor, cfg: EfficacyConfig, log: Callable = print) -> dict[str, dict]:
    """``{name: {"images", "meta"}}`` for clean, the placebo and every method x intensity (x robust)."""
    from ..cloak.base import CloakSettings, get_method
    from ..cloak.presets import settings_for
    from ..cloak.runner import cloak_images

    sets = {"clean": {"images": clean, "meta": {"method": "clean", "intensity": "-", "robust": False}}}
    if cfg.placebo:
        x = placebo(clean, cfg.seed)
        sets[PLACEBO] = {"images": x, "meta": {"method": PLACEBO, "intensity": "-", "robust": False,
                                               "eps_255": 8.0, **_quality(clean, x)}}
    jobs = [(m, i, False) for m in cfg.methods for i in cfg.intensities]
    jobs += [(m, i, True) for m in cfg.robust for i in cfg.intensities]
    for method, intensity, robust in jobs:
        base = CloakSettings(method=method, seed=cfg.seed, robust=robust)
        s = settings_for(get_method(method), intensity, base, steps=cfg.steps.get("cloak"))
        t0 = time.perf_counter()
        res = cloak_images(host, list(clean), s, batch_size=len(clean))
        x = torch.stack([r.image for r in res])
        meta = {"method": method, "intensity": intensity, "robust": robust, "eps_255": round(s.eps * 255, 3),
                "steps": s.steps, "seconds": round(time.perf_counter() - t0, 2), **_quality(clean, x)}
        sets[set_name(method, intensity, robust)] = {"images": x, "meta": meta}
        log(f"cloak {set_name(method, intensity, robust)}: {meta['seconds']:.0f} s, PSNR {meta['psnr']:.2f} dB")
    return sets


def purifier_chain(name: str, steps: dict) -> list:
    chain = [(n, dict(p)) for n, p in PURIFIERS[name]]
    if name == "impress" and "impress" in steps:
        chain[0][1]["iterations"] = steps["impress"]
    return chain


def purify_sets(host, sets: dict, cfg: EfficacyConfig, log: Callable = print) -> dict[str, dict]:
    """Every set after every purifier (``name|purifier``), seeded by the config's seed."""
    from ..purify import purify

    clean = sets["clean"]["images"]
    names = list(sets)
    batch = torch.cat([sets[n]["images"] for n in names])
    out = {}
    for pur in cfg.purifiers:
        t0 = time.perf_counter()
        # one call for all sets: each purifier treats images independently (IMPRESS sums per-image objectives),
        # so this equals purifying set by set, only faster; diffusion purifiers draw their noise per position
        x, _ = purify(host, batch, purifier_chain(pur, cfg.steps), seed=cfg.seed)
        x = (x.clamp(0, 1) * 255).round() / 255  # what the attacker saves is 8-bit
        for k, name in enumerate(names):
            xk = x[k * len(clean):(k + 1) * len(clean)]
            meta = {**sets[name]["meta"], "purifier": pur, "after_purifier": _quality(clean, xk)}
            out[f"{name}|{pur}"] = {"images": xk, "meta": meta}
        log(f"purify {pur}: {len(sets)} sets in {time.perf_counter() - t0:.0f} s")
    return out


def attacker_settings(kind: str, size: int, cfg: EfficacyConfig):
    from ..mimicry.settings import MimicrySettings

    kw = dict(FINETUNES[kind])
    if kind in cfg.steps:
        kw["steps"] = cfg.steps[kind]
    if kind in cfg.lr:
        kw["lr"] = float(cfg.lr[kind])
    return MimicrySettings(**kw, batch_size=4, resolution=size, samples=cfg.samples,
                           sample_steps=cfg.steps.get("sample", cfg.sample_steps), guidance=cfg.guidance,
                           sample_batch=64, instance_prompt="a painting in sks style",
                           prompts=["a painting in sks style"], seed=cfg.seed).validate(8)


def judge(classifier, images: torch.Tensor, artist_index: int) -> dict:
    """Scores of the classifier; a second judge attached as ``classifier.second`` (a world's
    :class:`~protect_core.worlds.judges.JudgePair`) adds ``second`` with the same fields."""
    p = classifier.probs(images)
    out = {"success": rate(protection_success(p, artist_index)), "p_style": mean_se(p[:, artist_index])}
    second = getattr(classifier, "second", None)
    if second is not None:
        q = second.probs(images)
        out["second"] = {"judge": second.name, "success": rate(protection_success(q, artist_index)),
                         "p_style": mean_se(q[:, artist_index])}
    return out


def mimic_all(host, classifier, sets: dict, kind: str, cfg: EfficacyConfig, artist_index: int,
              log: Callable = print) -> tuple[dict, dict]:
    """(base-model scores, {set name: scores}) for one fine-tune kind; one borrow, same seeds for every set."""
    from ..mimicry.finetune import finetune
    from ..mimicry.runner import generate

    size = int(sets["clean"]["images"].shape[-1])
    s = attacker_settings(kind, size, cfg)
    out = {}
    with host.borrowed():
        base = judge(classifier, generate(host, s, None), artist_index)
        for name, entry in sets.items():
            t0 = time.perf_counter()
            result = finetune(host, entry["images"], s)
            scores = judge(classifier, generate(host, s, result.overrides), artist_index)
            scores["final_loss"] = round(sum(result.losses[-10:]) / max(1, len(result.losses[-10:])), 6)
            scores["seconds"] = round(time.perf_counter() - t0, 2)
            out[name] = scores
            log(f"{kind} {name}: success {scores['success']['rate']:.2f}, p_style "
                f"{scores['p_style']['mean']:.3f} ({scores['seconds']:.0f} s)")
    return base, out


# --- assembling the results -----------------------------------------------------------------------------------
def build_rows(metas: dict, scores: dict, kind: str) -> list[dict]:
    """One row per (training set, fine-tune): rates, style score, drop and effect vs the same-purifier clean set."""
    base = scores["__base__"]
    rows = []
    for name, sc in scores.items():
        if name == "__base__":
            continue
        cloak, pur = split_name(name)
        ref = "clean" if pur == "none" else f"clean|{pur}"
        p_ref, p = scores[ref]["p_style"]["mean"], sc["p_style"]["mean"]
        meta = metas[name]
        rows.append({
            "set": name, "cloak": cloak, "method": meta["method"], "intensity": meta["intensity"],
            "robust": bool(meta["robust"]), "purifier": pur, "finetune": kind,
            "success": sc["success"]["rate"], "success_se": sc["success"]["se"], "samples": sc["success"]["n"],
            "success_2": sc.get("second", {}).get("success", {}).get("rate"),
            "p_style": p, "p_style_se": sc["p_style"]["se"], "reference": ref,
            "style_drop": round(p_ref - p, 6),
            "effect": protection_effect(p, p_ref, base["p_style"]["mean"]),
            "eps_255": meta.get("eps_255", 0.0), "psnr": meta.get("psnr"), "ssim": meta.get("ssim"),
            "psnr_after_purifier": meta.get("after_purifier", {}).get("psnr"),
            "cloak_seconds": meta.get("seconds"), "finetune_seconds": sc["seconds"], "final_loss": sc["final_loss"]})
    return rows


def goal_check(rows: list[dict], finetunes: dict) -> dict:
    """The issue's goal, per fine-tune: at the default intensity the best method reaches >= 90% success with
    PSNR >= 35 dB; the robust mode keeps >= 80% after JPEG q75 and after IMPRESS. Reported, never tuned for."""
    out = {}
    for kind, info in finetunes.items():
        mine = [r for r in rows if r["finetune"] == kind and r["intensity"] == "default"]
        plain = [r for r in mine if not r["robust"] and r["purifier"] == "none" and r["method"] != PLACEBO]
        best = max(plain, key=lambda r: (r["success"], r["psnr"] or 0), default=None)
        meets = [r["cloak"] for r in plain if r["success"] >= 0.9 and (r["psnr"] or 0) >= 35]
        robust = {}
        for r in mine:
            if r["robust"] and r["purifier"] in ("jpeg75", "impress"):
                robust.setdefault(r["cloak"], {})[r["purifier"]] = r["success"]
        robust_ok = [c for c, v in robust.items() if v.get("jpeg75", 0) >= 0.8 and v.get("impress", 0) >= 0.8
                     and len(v) == 2]
        out[kind] = {
            "sanity_passed": info["sanity"]["passed"],
            "best_default": None if best is None else {k: best[k] for k in ("cloak", "success", "psnr", "ssim")},
            "meets_90_at_35db": meets,
            "robust_after": robust,
            "robust_meets_80": robust_ok,
            "robust_measured": bool(robust) and all(len(v) == 2 for v in robust.values())}
    return out


def run_efficacy(host, classifier, cfg: EfficacyConfig, held_out: str, size: int,
                 log: Callable = print, render: Callable | None = None) -> dict:
    """The whole benchmark (module doc); returns a JSON-able dict (no images). The host comes back unchanged.
    ``render(style, n, size, seed)``: the world's painter (default: the toy world's)."""
    if render is None:
        from .styles import render

    cfg.validate()
    if held_out not in classifier.styles:
        raise ValueError(f"the classifier does not know the held-out style {held_out!r}")
    t0 = time.perf_counter()
    clean = render(held_out, cfg.images, size, seed=cfg.seed)
    sets = cloak_sets(host, clean, cfg, log)
    t_cloak = time.perf_counter()
    sets.update(purify_sets(host, sets, cfg, log))
    t_purify = time.perf_counter()
    metas = {n: e["meta"] for n, e in sets.items()}
    artist = classifier.styles.index(held_out)
    rows, finetunes = [], {}
    for kind in cfg.finetunes:
        t1 = time.perf_counter()
        base, scores = mimic_all(host, classifier, sets, kind, cfg, artist, log)
        scores["__base__"] = base
        finetunes[kind] = {"settings": attacker_settings(kind, size, cfg).to_dict(), "base": base,
                           "sanity": sanity(base["p_style"], scores["clean"]["p_style"]),
                           "seconds": round(time.perf_counter() - t1, 1)}
        rows += build_rows(metas, scores, kind)
    return {"config": cfg.to_dict(), "held_out": held_out, "size": size, "model": host.describe(),
            "classifier_styles": list(classifier.styles), "sets": metas, "finetunes": finetunes, "rows": rows,
            "goal": goal_check(rows, finetunes),
            "seconds": {"cloak": round(t_cloak - t0, 1), "purify": round(t_purify - t_cloak, 1),
                        "mimicry": round(time.perf_counter() - t_purify, 1),
                        "total": round(time.perf_counter() - t0, 1)}}
