"""Faithfulness checks of a measurement world (``benchmarks/world_fidelity.py`` is the command line).

Each check is what is known about real Stable Diffusion, measured in the world with both judges
(:mod:`.judges`); the thresholds were fixed by the issue before anything was measured and are never tuned:

* **codec**: the VAE round trip of fresh renders of every artist, PSNR (>= 28 dB for the unseen artists);
* **judges**: accuracy of both judges on fresh clean renders (context: a judge that cannot tell the artists apart
  makes every other number meaningless);
* **a. prompt control**: samples from each trained artist's prompt judged as that artist (>= 90%);
* **b. clean mimicry**: LoRA and full fine-tuning on an unseen artist's clean art make samples in that style
  (>= 90%);
* **c. noise control**: random noise of +-16/255 keeps protection success within 5 points of the no-protection floor;
* **d. naive mimicry**: at 16/255 at least one of mist, aspl, sds, photoguard reaches >= 80% protection success
  with LoRA;
* **e. robust mimicry**: noisy upscaling or DiffPure brings that method back down (below 50%, and below the
  un-purified rate by at least 20 points).

Protection success = the judge does not attribute a generated sample to the artist (argmax), as in
:mod:`protect_core.toy.efficacy`. All rates are over the unseen artists asked for (``artists``); defaults of the
attacker are the world's (chosen on its dev artist).
"""
from __future__ import annotations

import time
from typing import Callable

import torch

from ..metrics import psnr

STANDARD = ("mist", "aspl", "sds", "photoguard")
THRESH = dict(codec_db=28.0, prompt=0.9, clean=0.9, noise_points=0.05, naive=0.8, robust=0.5, robust_drop=0.2)


@torch.no_grad()
def round_trip(host, x01: torch.Tensor) -> torch.Tensor:
    """Images in [0, 1] through the world's VAE and back (on the host's device; returned on the CPU)."""
    return ((host.decode(host.encode(x01.to(host.device) * 2 - 1)) + 1) / 2).clamp(0, 1).cpu()


def codec(host, world, n: int = 16, seed: int = 101) -> dict:
    """VAE round-trip PSNR (dB) per artist on fresh renders."""
    st, size = world.styles(), int(world.config()["size"])
    out = {}
    with host.borrowed():
        for a in st.ARTISTS:
            x = st.render(a, n, size, seed=seed)
            out[a] = round(float(psnr(x, round_trip(host, x)).mean()), 2)
    return out


def judge_accuracy(judges, world, n: int = 32, seed: int = 202, host=None) -> dict:
    """Each judge's share of fresh renders attributed to their artist; with ``host`` also of their VAE round trips
    (``*_rt``): the ceiling of any mimicry through this codec (a mimic cannot beat its own decoder)."""
    st, size = world.styles(), int(world.config()["size"])
    out = {}
    for a in st.ARTISTS:
        x = st.render(a, n, size, seed=seed)
        views = {"": x}
        if host is not None:
            with host.borrowed(), torch.no_grad():
                views["_rt"] = round_trip(host, x)
        out[a] = {}
        for tag, v in views.items():
            out[a][f"classifier{tag}"] = round(judges.first.share(v, a), 3)
            out[a][f"centroid{tag}"] = round(sum(p == a for p in judges.second.predict(v)) / n, 3)
    return out


@torch.no_grad()
def prompt_control(host, judges, world, n: int = 16, seed: int = 0, steps: int = 25, guidance: float = 4.0,
                   batch: int = 64) -> dict:
    from ..sampling import txt2img

    st, size = world.styles(), int(world.config()["size"])
    prompts = [st.prompt_for(a) for a in st.TRAINED for _ in range(n)]
    with host.borrowed():
        imgs = torch.cat([txt2img(host, prompts[i:i + batch], height=size, width=size, steps=steps,
                                  guidance=guidance, seed=seed * 1000 + i).cpu()
                          for i in range(0, len(prompts), batch)])
    out = {}
    for k, a in enumerate(st.TRAINED):
        x = imgs[k * n:(k + 1) * n]
        out[a] = {"classifier": round(judges.first.share(x, a), 3),
                  "centroid": round(sum(p == a for p in judges.second.predict(x)) / n, 3)}
    return {"artists": out, "images": imgs.view(len(st.TRAINED), n, *imgs.shape[1:])}


def attacker_config(world, methods, finetunes, images: int, samples: int, seed: int, steps: dict | None = None,
                    purifiers=()):
    """An :class:`~protect_core.toy.efficacy.EfficacyConfig` with the world's attacker defaults."""
    from ..toy.efficacy import EfficacyConfig

    att = world.config().get("attacker", {})
    st = {k: int(v["steps"]) for k, v in att.items() if "steps" in v}
    st.update(steps or {})
    return EfficacyConfig(methods=list(methods), purifiers=list(purifiers), finetunes=list(finetunes),
                          images=images, samples=samples, seed=seed, steps=st,
                          lr={k: float(v["lr"]) for k, v in att.items() if "lr" in v}).validate()


def mimicry_checks(host, judges, world, artist: str, methods=STANDARD, finetunes=("lora", "full"), budget: float = 16,
                   purifiers=("noisy_upscale", "diffpure"), images: int = 8, samples: int = 32, seed: int = 0,
                   steps: dict | None = None, log: Callable = print) -> dict:
    """Checks b-e for one unseen artist: clean, noise@budget and each method@budget, fine-tuned with each attacker
    (LoRA for all sets; other fine-tunes only on clean and noise); then the best method by LoRA success and the clean
    art through each purifier, LoRA again. Returns per set and fine-tune both judges' scores."""
    from ..toy.budget import budget_sets
    from ..toy.efficacy import mimic_all, purify_sets, sanity

    st, size = world.styles(), int(world.config()["size"])
    cfg = attacker_config(world, methods, finetunes, images, samples, seed, steps, purifiers)
    k = judges.styles.index(artist)
    t0 = time.perf_counter()
    clean = st.render(artist, images, size, seed=seed)
    sets = budget_sets(host, clean, list(methods), [budget], seed, cfg.steps.get("cloak"), log)
    res = {"artist": artist, "budget_255": budget, "sets": {n: e["meta"] for n, e in sets.items()}, "scores": {},
           "sanity": {}}
    for kind in finetunes:
        chosen = sets if kind == "lora" else {n: e for n, e in sets.items() if n in ("clean", f"noise@{budget:g}")}
        base, sc = mimic_all(host, judges, chosen, kind, cfg, k, log)
        res["scores"][kind] = {"__base__": base, **sc}
        res["sanity"][kind] = sanity(base["p_style"], sc["clean"]["p_style"])
    lora = res["scores"].get("lora", {})
    cloaked = [f"{m}@{budget:g}" for m in methods]
    best = max(cloaked, key=lambda n: lora[n]["success"]["rate"]) if lora and cloaked else None
    res["best"] = best
    if best and purifiers:
        pur = purify_sets(host, {"clean": sets["clean"], best: sets[best]}, cfg, log)
        base, sc = mimic_all(host, judges, {"clean": sets["clean"], **pur}, "lora", cfg, k, log)
        res["scores"]["lora"].update({n: v for n, v in sc.items() if n != "clean"})
        res["sets"].update({n: e["meta"] for n, e in pur.items()})
    res["seconds"] = round(time.perf_counter() - t0, 1)
    return res


def _rate(sc: dict, second: bool) -> float:
    s = sc["second"] if second else sc
    return s["success"]["rate"]


def verdicts(result: dict) -> dict:
    """Checks a-e (and the codec) from a full result, per judge: ``{check: {"classifier": bool, "centroid": bool,
    "detail": str}}``; a check with no data is absent."""
    out = {}
    unseen = result.get("unseen", [])
    if "codec" in result:
        worst = min(unseen, key=lambda a: result["codec"][a]) if unseen else None
        if worst:
            ok = result["codec"][worst] >= THRESH["codec_db"]
            out["codec"] = {"classifier": ok, "centroid": ok, "detail": f"worst unseen {worst} "
                                                                           f"{result['codec'][worst]:.1f} dB"}
    if "prompt" in result:
        v = {j: _mean([r[j] for r in result["prompt"].values()]) for j in ("classifier", "centroid")}
        out["a"] = {j: v[j] >= THRESH["prompt"] for j in v} | {"detail": f"mean {v['classifier']:.2f} / "
                                                                           f"{v['centroid']:.2f}"}
    runs = result.get("mimicry", [])
    if runs:
        for check in ("b", "c", "d", "e"):
            per = {}
            for j, second in (("classifier", False), ("centroid", True)):
                per[j] = _check(runs, check, second)
            if per["classifier"] is not None:  # the centroid judge may lack data (its best method was not purified)
                second = per["centroid"] or (None, "not measured")
                out[check] = {"classifier": per["classifier"][0], "centroid": second[0],
                              "detail": f"{per['classifier'][1]} / {second[1]}"}
    return out


def _mean(v):
    return sum(v) / len(v) if v else float("nan")


def _check(runs, check, second):
    b = runs[0]["budget_255"]
    if check == "b":
        shares = {kind: _mean([1 - _rate(r["scores"][kind]["clean"], second) for r in runs])
                  for kind in runs[0]["scores"]}
        return all(v >= THRESH["clean"] for v in shares.values()), ", ".join(f"{k} {v:.2f}" for k, v in shares.items())
    lora = [r["scores"]["lora"] for r in runs if "lora" in r["scores"]]
    if not lora:
        return None
    floor = _mean([_rate(s["clean"], second) for s in lora])
    if check == "c":
        noise = _mean([_rate(s[f"noise@{b:g}"], second) for s in lora])
        return abs(noise - floor) <= THRESH["noise_points"], f"noise {noise:.2f} vs floor {floor:.2f}"
    methods = [n for n in lora[0] if "@" in n and not n.startswith("noise") and "|" not in n]
    rates = {m: _mean([_rate(s[m], second) for s in lora]) for m in methods}
    if not rates:
        return None
    best = max(rates, key=rates.get)
    learnt = 1 - floor >= THRESH["clean"]  # d and e mean nothing when the clean mimicry itself fails
    note = "" if learnt else "; inconclusive: clean LoRA mimicry fails"
    if check == "d":
        return learnt and rates[best] >= THRESH["naive"], f"best {best} {rates[best]:.2f} (floor {floor:.2f}){note}"
    purified = {n.split("|")[1]: _mean([_rate(s[n], second) for s in lora if n in s])
                for n in lora[0] if n.startswith(best + "|")}
    if not purified:
        return None
    low = min(purified, key=purified.get)
    ok = learnt and purified[low] < THRESH["robust"] and rates[best] - purified[low] >= THRESH["robust_drop"]
    return ok, f"{best} {rates[best]:.2f} -> {low} {purified[low]:.2f}{note}"
