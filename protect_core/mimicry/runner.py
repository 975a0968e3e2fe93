"""``run_mimicry_test``: fine-tune per training set, generate with fixed prompts and seeds, score against clean art.

Conditions, side by side in one run: ``base`` (no fine-tune), ``clean`` (fine-tuned on the artist's clean images)
and one per named training set (cloaked, purified cloaked, ...). The *ceiling* -- the clean art passed through the
model's own VAE (encode, decode) -- is scored too: no fine-tune of the UNet can produce more of the style than
that. Every fine-tune starts from the same host weights with the same seed, and every condition generates from the
same prompts and noise seeds, so the only difference between conditions is the training data. The host is
borrowed for the whole run and comes back unchanged, also on failure or cancellation (nothing is written by this
function; :meth:`MimicryReport.save` writes the card).

Memory: one mode for the whole run (``memory=``; ``auto`` sizes the fine-tune as UNet-backward work and the
generations as inference, and takes the lower of the two), so every condition runs with the same numerics. Out of
memory anywhere in the model work restarts it all in the next lower mode (logged, and listed in the report's
``memory``); below ``low`` a :class:`~protect_core.memory.MemoryLimitError` names the settings to change.

Progress: the whole run's updates are announced before the first (:func:`_total_steps`): every DDIM step of every
generation (its VAE decode inside the last one), each fine-tune's VAE-encoded batches and training steps, each
batch of the ceiling's round trip and each embedding; an out-of-memory restart rewinds the bar to the start.
"""
from __future__ import annotations

import time
from typing import Callable, Mapping

import torch

from ..progress import Progress
from ..memory_job import MemoryJob, run_in_memory_mode
from . import scoring
from .finetune import (LIMIT_ADVICE, finetune, finetune_job, finetune_steps, prior_images, sampling_steps,
                       select_targets, txt2img)
from .report import MimicryReport
from .settings import MimicrySettings
from .style import DescriptorEmbedder, StyleEmbedder, stack_images

RESERVED = ("base", "clean")
CEILING = "clean_vae_roundtrip"


def _chunks(settings: MimicrySettings, n: int) -> list[tuple[int, int]]:
    return [(i, min(settings.sample_batch, n - i)) for i in range(0, n, settings.sample_batch)]


def generation_job(settings: MimicrySettings, n: int | None = None) -> MemoryJob:
    """Generation's memory need: inference on one sample batch (twice the latents with guidance); the VAE decodes
    images of ``resolution`` squared."""
    batch = min(settings.sample_batch, settings.samples if n is None else n)
    return MemoryJob(False, batch * settings.resolution ** 2 * (1 if settings.guidance == 1.0 else 2),
                     image_pixels=settings.resolution ** 2)


def generate(host, settings: MimicrySettings, overrides=None, progress: Progress | None = None,
             n: int | None = None, seed_offset: int = 0, memory="auto") -> torch.Tensor:
    """``n`` (default ``settings.samples``) images in [0, 1] on the CPU; prompt i = prompts[i % len(prompts)].
    ``memory``: as for :func:`~protect_core.mimicry.finetune.finetune` (out of memory: all ``n`` again).
    ``progress``: :func:`~protect_core.mimicry.finetune.sampling_steps` updates (the caller announces them)."""
    n = settings.samples if n is None else n
    size = settings.resolution

    def run() -> torch.Tensor:
        out = []
        for start, k in _chunks(settings, n):
            prompts = [settings.prompts[(start + j) % len(settings.prompts)] for j in range(k)]
            out.append(txt2img(host, prompts, height=size, width=size, steps=settings.sample_steps,
                               guidance=settings.guidance, negative=settings.negative_prompt,
                               seed=settings.seed + seed_offset + start, weight_overrides=overrides,
                               progress=progress).cpu())
        return torch.cat(out)

    images, _ = run_in_memory_mode(host, memory, run, [generation_job(settings, n)],
                                   work=f"generating {n} image(s) of {size} px", advice=LIMIT_ADVICE,
                                   progress=progress)
    return images


def _as_list(images) -> list[torch.Tensor]:
    if isinstance(images, torch.Tensor):
        return list(images) if images.ndim == 4 else [images]
    return [getattr(im, "rgb", im) for im in images]


def _pair_metrics(clean, other) -> dict:
    """Imperceptibility of a training set vs the clean originals, paired by position (same count required)."""
    a, b = _as_list(clean), _as_list(other)
    if len(a) != len(b):
        return {"paired": False, "reason": f"{len(b)} images vs {len(a)} clean ones; pairs need the same count"}
    rows, resized = [], 0
    for x, y in zip(a, b):
        x, y = x[:3].unsqueeze(0).float().cpu(), y[:3].unsqueeze(0).float().cpu()
        if x.shape != y.shape:
            y = torch.nn.functional.interpolate(y, size=x.shape[-2:], mode="bilinear", align_corners=False)
            resized += 1
        rows.append((x, y))
    per = [scoring.imperceptibility(x, y) for x, y in rows]
    keys = [k for k in per[0] if isinstance(per[0][k], dict)]
    out = {"paired": True, "resized": resized, "pairs": len(per)}
    for k in keys:
        out[k] = scoring.summary(torch.tensor([p[k]["mean"] for p in per]))
    return out


def _check_sets(train_sets: Mapping, references: Mapping | None) -> None:
    for name in train_sets:
        if not name or name in RESERVED:
            raise ValueError(f"training set name {name!r} is reserved or empty; {RESERVED} name the built-in "
                             "conditions")
    if references is not None:
        if "artist" in references or not references:
            raise ValueError("other reference sets must be a non-empty mapping without the name 'artist'")


def _total_steps(settings: MimicrySettings, n_clean: int, train_sizes: list[int], n_refs: int | None) -> int:
    """Every progress update of one run, announced before the first: the generations (DDIM steps), the fine-tunes
    (encoding and training steps), the ceiling's VAE round trips and the embeddings (the judge's fit, then one per
    image set). ``n_refs``: the caller's reference sets, None = base-model references."""
    total = sampling_steps(settings, settings.samples) * (2 + len(train_sizes))
    total += sum(finetune_steps(settings, n) for n in [n_clean, *train_sizes])
    if n_refs is None:
        total += sampling_steps(settings, settings.reference_samples)
    if settings.prior_preservation:
        total += sampling_steps(settings, settings.prior_images)
    total += -(-n_clean // settings.batch_size)                        # the ceiling: clean art through the VAE
    # the judge's fit, then one embedding each: the artist, the reference sets, the conditions, the ceiling
    total += 1 + 1 + (1 if n_refs is None else n_refs) + 2 + len(train_sizes) + 1
    return total


def run_mimicry_test(host, clean_images, train_sets: Mapping[str, object],
                     settings: MimicrySettings | None = None, progress: Progress | None = None, *,
                     references: Mapping[str, object] | None = None, embedder: StyleEmbedder | None = None,
                     classifier: Callable[[torch.Tensor], torch.Tensor] | None = None,
                     classifier_artist_index: int | None = None, memory="auto") -> MimicryReport:
    """Run the whole mimicry test (see module doc) and return its report (nothing is written to disk).

    ``clean_images`` / each training set / each reference set: a (B, 3, H, W) tensor in [0, 1], or a list of
    (3, H, W) tensors or loaded images (``.rgb``). ``references``: other styles for the nearest-centroid attribution
    (default: base-model generations with unused seeds). ``classifier``: optional ``probs(images01) -> (B, K)``
    with ``classifier_artist_index`` the artist's class. ``memory``: "auto" (default), "fast", "balanced", "low"
    or a MemoryMode; ``report.memory`` says which mode ran and any out-of-memory fallbacks.
    """
    settings = (settings or MimicrySettings()).validate(host.vae_scale_factor)
    train_sets = dict(train_sets)
    _check_sets(train_sets, references)
    if classifier is not None and classifier_artist_index is None:
        raise ValueError("a classifier needs classifier_artist_index (the artist's class)")
    size = settings.resolution
    clean = stack_images(clean_images, size)
    train = {name: stack_images(imgs, size) for name, imgs in train_sets.items()}
    own_refs = None if references is None else {n: stack_images(v, size) for n, v in references.items()}
    progress = progress or Progress()
    progress.add_total(_total_steps(settings, len(clean), [len(v) for v in train.values()],
                                    None if own_refs is None else len(own_refs)))
    progress.check()
    t_start = time.perf_counter()
    jobs = [generation_job(settings, max(settings.samples, settings.reference_samples))]
    if settings.steps > 0:
        jobs.append(finetune_job(settings, max([clean, *train.values()], key=len)))
    work = f"running the mimicry test ({settings.method}, {size} px, batch {settings.batch_size})"
    (images, conditions, refs, ceiling_images, embedder, ref_emb, gen_emb), mem = run_in_memory_mode(
        host, memory, lambda: _model_work(host, settings, clean, train, own_refs, embedder, progress), jobs,
        work=work, advice=LIMIT_ADVICE, progress=progress)
    nc = scoring.NearestCentroid(ref_emb, "artist")
    centre = scoring.centroid(ref_emb["artist"])
    sims, ceiling = {}, {}
    for name, imgs in {**images, CEILING: ceiling_images}.items():
        sims[name] = scoring.similarity_to(gen_emb[name], centre)
        row = conditions.setdefault(name, {}) if name != CEILING else ceiling
        row["style_similarity"] = scoring.summary(sims[name])
        row["nearest_centroid"] = scoring.attribution_scores(nc, gen_emb[name])
        if classifier is not None:
            row["classifier"] = scoring.classifier_scores(classifier, imgs, classifier_artist_index)
    for name, data in train_sets.items():
        conditions[name]["imperceptibility"] = _pair_metrics(clean_images, data)
    sanity = scoring.sanity_check(sims["base"], sims["clean"], settings.sanity_margin, sims[CEILING],
                                  ceiling["nearest_centroid"]["artist_share"])
    _verdicts(conditions, sanity)
    return MimicryReport(
        settings=settings.to_dict(), model=host.describe(), embedder=getattr(embedder, "name", "custom"),
        style_embedding=style_embedding(embedder, ref_emb),
        references={"artist": len(clean), **{n: len(v) for n, v in refs.items()},
                    "nearest_centroid_reference_accuracy": round(nc.training_accuracy(ref_emb), 6)},
        conditions=conditions, sanity=sanity, verdict=_overall(conditions, sanity),
        seconds=round(time.perf_counter() - t_start, 3), images=images, clean_preview=clean,
        ceiling=ceiling, ceiling_images=ceiling_images, memory=mem)


def _model_work(host, settings: MimicrySettings, clean, train: dict, refs, embedder, progress):
    """Everything that uses the model, from scratch (an out-of-memory retry runs it all again): generations,
    fine-tunes, the clean art's VAE round trip and the embeddings. Runs in the caller's borrow and memory session."""
    images, conditions = {}, {}
    select_targets(host, settings)  # a bad layer selection fails now, not after the first generations
    t0 = time.perf_counter()
    images["base"] = generate(host, settings, None, progress, memory=None)
    conditions["base"] = {"trained_on": None, "sampling_s_per_image": _per(t0, settings.samples)}
    if refs is None:
        refs = {"base_model": generate(host, settings, None, progress, n=settings.reference_samples,
                                       seed_offset=10_000, memory=None)}
    class_images = prior_images(host, settings, progress) if settings.prior_preservation else None
    for name, data in [("clean", clean), *train.items()]:
        t0 = time.perf_counter()
        result = finetune(host, data, settings, progress, class_images, memory=None)
        t1 = time.perf_counter()
        images[name] = generate(host, settings, result.overrides, progress, memory=None)
        del result.overrides
        conditions[name] = {
            "trained_on": len(data), "final_loss": _tail_mean(result.losses),
            "first_loss": _head_mean(result.losses), "loss_curve": _curve(result.losses),
            "trainable_parameters": result.trainable_parameters, "finetune_s": round(t1 - t0, 3),
            "finetune_steps_per_s": round(settings.steps / max(t1 - t0, 1e-9), 3),
            "sampling_s_per_image": _per(t1, settings.samples)}
    ceiling_images = vae_roundtrip(host, clean, settings.batch_size, progress)
    embedder = embedder or DescriptorEmbedder(host, seed=settings.seed)
    embedder.fit(torch.cat([clean, *refs.values()]))
    progress.step(phase="embed")
    ref_emb = {"artist": _embed(embedder, clean, progress),
               **{n: _embed(embedder, v, progress) for n, v in refs.items()}}
    gen_emb = {name: _embed(embedder, imgs, progress)
               for name, imgs in {**images, CEILING: ceiling_images}.items()}
    if len({e.shape[1] for e in [*ref_emb.values(), *gen_emb.values()]}) > 1:
        raise ValueError(f"style embedding {getattr(embedder, 'name', 'custom')!r} gave rows of different widths "
                         "within one test")
    return images, conditions, refs, ceiling_images, embedder, ref_emb, gen_emb


def _embed(embedder: StyleEmbedder, images01: torch.Tensor, progress: Progress | None = None) -> torch.Tensor:
    """``embedder.embed`` with its promise checked: one finite (B, D) row per image (one progress update)."""
    emb = torch.as_tensor(embedder.embed(images01)).float().cpu()
    if progress is not None:
        progress.step(phase="embed")
    if emb.ndim != 2 or emb.shape[0] != images01.shape[0] or emb.shape[1] < 1 or not torch.isfinite(emb).all():
        raise ValueError(f"style embedding {getattr(embedder, 'name', 'custom')!r} gave shape {tuple(emb.shape)} "
                         f"for {images01.shape[0]} image(s); it must give one finite (B, D) row per image")
    return emb


def style_embedding(embedder: StyleEmbedder, ref_emb: dict) -> dict:
    """What judged style in this test (the report's ``style_embedding``): name, source and width."""
    return {"judge": getattr(embedder, "name", "custom"), "source": getattr(embedder, "source", None),
            "dimensions": int(ref_emb["artist"].shape[1])}


@torch.no_grad()
def vae_roundtrip(host, images01: torch.Tensor, batch: int, progress: Progress | None = None) -> torch.Tensor:
    """decode(encode(x)) of the clean art: the best any fine-tune of this model's UNet could produce (one progress
    update per batch)."""
    out = []
    for i in range(0, images01.shape[0], batch):
        z = host.encode(images01[i:i + batch].to(host.device) * 2 - 1)
        out.append(((host.decode(z) + 1) / 2).clamp(0, 1).cpu())
        if progress is not None:
            progress.step(phase="ceiling")
    return torch.cat(out)


def _per(t0: float, n: int) -> float:
    return round((time.perf_counter() - t0) / max(n, 1), 4)


def _head_mean(losses):
    return round(sum(losses[:10]) / len(losses[:10]), 6) if losses else None


def _tail_mean(losses):
    return round(sum(losses[-10:]) / len(losses[-10:]), 6) if losses else None


def _curve(losses, points: int = 20) -> list[float]:
    if not losses:
        return []
    step = max(1, len(losses) // points)
    return [round(sum(losses[i:i + step]) / len(losses[i:i + step]), 6) for i in range(0, len(losses), step)]


def _verdicts(conditions: dict, sanity: dict) -> None:
    base = conditions["base"]["style_similarity"]["mean"]
    clean = conditions["clean"]["style_similarity"]["mean"]
    conditions["base"]["verdict"] = "reference: the model before any fine-tune"
    conditions["clean"]["verdict"] = sanity["message"]
    for name, row in conditions.items():
        if name in RESERVED:
            continue
        effect = scoring.protection_effect(row["style_similarity"]["mean"], clean, base)
        row["protection_effect"] = effect
        if not sanity["passed"] or effect is None:
            row["verdict"] = scoring.INCONCLUSIVE
        elif effect >= 0.5:
            row["verdict"] = "protected: the fine-tune learned at most half of the style it learns from clean art"
        elif effect >= 0.2:
            row["verdict"] = "partly protected: style learning reduced by 20-50% vs clean art"
        else:
            row["verdict"] = "not protected: mimicry about as good as on clean art"


def _overall(conditions: dict, sanity: dict) -> str:
    if not sanity["passed"]:
        return scoring.INCONCLUSIVE
    parts = [f"{n}: {r['verdict'].split(':')[0]}" for n, r in conditions.items() if n not in RESERVED]
    return "; ".join(parts) if parts else "the fine-tune learned the style (no protected sets given)"
