"""The four jobs of the StyleCloak tab, independent of Gradio: read the inputs, run a block on a host, write files.

Each job takes a ``host_factory`` (called once, inside the job, so a missing model becomes the job's error), a list
of input image paths, its settings and a :class:`~protect_core.progress.Progress`, and returns a :class:`JobResult`.
The jobs that run the model take ``memory`` (``auto`` / ``fast`` / ``balanced`` / ``low``: the modes of
:mod:`protect_core.memory`); their report and summary say which mode ran.

Files: everything a job writes goes into a new folder ``<out_root>/<YYYYmmdd-HHMMSS>-<job>`` -- images as
lossless PNG (alpha, greyscale and 16-bit depth kept as read), plus ``report.json`` -- and only after the engine has
finished: the files are written into a hidden staging folder that is renamed at the very end and removed on any
error. A cancelled (Interrupt button) or failed job therefore leaves no files behind.
"""
from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from protect_core.errors import StyleCloakError
from protect_core.progress import Progress


@dataclass
class JobResult:
    folder: Path
    files: list[Path]                                     # downloads (PNG images, report files)
    gallery: list = field(default_factory=list)           # (PIL image, caption) pairs
    report: dict = field(default_factory=dict)
    summary: str = ""


# ------------------------------------------------------------------------------------------------------ inputs
def gather_inputs(files: Sequence | None = (), folder: str | None = "") -> list[Path]:
    """Image paths from uploads (Gradio 3 tempfile objects with ``.name`` or Gradio 4 path strings) and a folder."""
    from protect_core.images import list_images

    items = [Path(getattr(f, "name", f)) for f in (files or []) if f]
    if folder and str(folder).strip():
        items.append(Path(str(folder).strip()).expanduser())
    if not items:
        raise StyleCloakError("no input images: upload image files or enter a folder path")
    return list_images(items)


def load_all(paths: Sequence[Path]):
    from protect_core.images import load_image

    return [load_image(p) for p in paths]


def parse_layers(spec: str | None, host) -> list[str] | None:
    """Canonical layer names from a selection file path or a preset name (``all``, ``up``, ``styleprotect`` ...)."""
    from protect_core.layers.selection import PRESETS, LayerSelection

    spec = (spec or "").strip()
    if not spec:
        return None
    if spec in PRESETS:
        return LayerSelection.from_preset(spec, host).names
    return LayerSelection.load(Path(spec).expanduser()).resolve(host)


def parse_chain(chain: str, method: str, params: str) -> list:
    """A purify chain from 'jpeg,impress' or JSON ``[["jpeg", {"quality": 75}], ...]``; else ``method`` + params."""
    chain = (chain or "").strip()
    try:
        if chain.startswith("["):
            return json.loads(chain)
        if chain:
            return [(name.strip(), {}) for name in chain.split(",") if name.strip()]
        return [(method, json.loads(params) if (params or "").strip() else {})]
    except json.JSONDecodeError as e:
        raise ValueError(f"purify chain/params: not valid JSON ({e})") from None


# ------------------------------------------------------------------------------------------------------ output
def new_job_folder(out_root, name: str) -> Path:
    root = Path(out_root).expanduser()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    final = root / f"{stamp}-{name}"
    k = 1
    while final.exists() or final.with_name(f".{final.name}.partial").exists():
        k += 1
        final = root / f"{stamp}-{name}-{k}"
    return final


def write_job(out_root, name: str, write: Callable[[Path], list[str]]) -> tuple[Path, list[Path]]:
    """Run ``write(staging_dir) -> file names``; on success rename staging to the job folder, else remove it."""
    final = new_job_folder(out_root, name)
    staging = final.with_name(f".{final.name}.partial")
    staging.mkdir(parents=True)
    try:
        names = write(staging)
        staging.rename(final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return final, [final / n for n in names]


def _write_json(path: Path, data) -> None:
    from protect_core.atomic import atomic_write_text

    atomic_write_text(path, json.dumps(data, indent=2, default=str) + "\n")


def memory_used(records) -> str:
    """' [memory: balanced]' from the engine's memory records (None: no model work), '' when there are none;
    an out-of-memory fallback adds ', after out-of-memory'."""
    records = [r for r in records if r]
    if not records:
        return ""
    names = list(dict.fromkeys(str(r.get("name")) for r in records))
    fell_back = any(r.get("fallbacks") for r in records)
    return f" [memory: {', '.join(names)}" + (", after out-of-memory" if fell_back else "") + "]"


def _png(path: Path, image) -> None:
    import io

    from protect_core.atomic import atomic_write_bytes

    buf = io.BytesIO()
    image.save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue())


# ------------------------------------------------------------------------------------------------------ jobs
def cloak_job(host_factory, inputs: Sequence[Path], *, out_root, method: str = "glaze", intensity: str = "default",
              target_prompt: str = "", robust: bool = False, seed: int = 0, steps: int = 0, eps255: float = 0.0,
              layers: str = "", batch_size: int = 1, tile: int = 0, memory: str = "auto",
              progress: Progress | None = None, on_image: Callable | None = None) -> JobResult:
    """Cloak ``inputs``; ``on_image(index, result)`` fires as each image is done (live previews)."""
    from protect_core.cloak.base import get_method
    from protect_core.cloak.cli import output_paths
    from protect_core.cloak.presets import settings_for
    from protect_core.cloak.runner import cloak_images
    from protect_core.images import save_image

    from .bridge import to_pil

    m = get_method(method)
    images = load_all(inputs)
    host = host_factory()
    settings = settings_for(m, intensity, seed=int(seed), robust=bool(robust),
                            target_prompt=(target_prompt or "").strip() or None, steps=int(steps) or None,
                            eps=(float(eps255) / 255.0) or None, layers=parse_layers(layers, host))
    results = cloak_images(host, [im.rgb for im in images], settings, progress, batch_size=int(batch_size),
                           channel_tied=[im.is_grey for im in images], tile_size=int(tile) or None,
                           on_result=on_image, memory=memory)
    rows = []

    def write(folder: Path) -> list[str]:
        names = []
        for src, dst, img, res in zip(inputs, output_paths(list(inputs), folder, "png"), images, results):
            notes = save_image(dst, res.image, like=img)
            names.append(dst.name)
            rows.append({"input": str(src), "output": dst.name, "warnings": [*img.warnings, *notes],
                         **{k: v for k, v in res.stats.items() if k != "settings"}})
        _write_json(folder / "report.json", report)
        return names + ["report.json"]

    report = {"job": "cloak", "method": m.name, "intensity": intensity, "settings": vars(settings),
              "memory": memory, "model": host.describe(), "images": rows}
    folder, files = write_job(out_root, f"cloak-{m.name}", write)
    gallery = []
    for row, res in zip(rows, results):
        gallery += [(to_pil(res.image), row["output"]), (to_pil(res.perturbation_view), f"{row['output']} (change)")]
    psnr = [r.get("psnr") for r in rows if r.get("psnr") is not None]
    summary = (f"Cloaked {len(rows)} image(s) with {m.name} ({intensity})"
               + (f", mean PSNR {sum(psnr) / len(psnr):.2f} dB" if psnr else "")
               + memory_used(r.stats.get("memory") for r in results) + f" -> {folder}")
    return JobResult(folder, files, gallery, report, summary)


def layers_job(host_factory, inputs: Sequence[Path], *, out_root, top_k: int = 4, style_prompt: str | None = None,
               content_prompt: str | None = None, timesteps: str = "200,500,800", noise_seeds: int = 2,
               size: int = 512, seed: int = 0, score: str = "causal",
               progress: Progress | None = None) -> JobResult:
    """Rank the model's cross-attention layers on ``inputs`` (``score``: see AnalysisSettings); writes layers.json
    (for Cloak) and heatmap.png."""
    from protect_core.layers.analysis import AnalysisSettings, analyse_layers
    from protect_core.layers.heatmap import render_heatmap
    from protect_core.layers.selection import LayerSelection

    try:
        ts = tuple(int(t) for t in str(timesteps).replace(" ", "").split(",") if t)
    except ValueError:
        raise ValueError(f"timesteps must be comma-separated integers, got {timesteps!r}") from None
    defaults = AnalysisSettings()
    settings = AnalysisSettings(style_prompt=style_prompt or defaults.style_prompt,
                                content_prompt=content_prompt or defaults.content_prompt, timesteps=ts,
                                seeds=int(noise_seeds), seed=int(seed), size=int(size), score=score)
    images = load_all(inputs)
    host = host_factory()
    analysis = analyse_layers(host, [im.rgb for im in images], settings, progress=progress)
    selection = LayerSelection.from_analysis(analysis, int(top_k))
    heat = render_heatmap(selection.table, selection.timesteps, selection.layers)

    def write(folder: Path) -> list[str]:
        selection.save(folder / "layers.json")
        _png(folder / "heatmap.png", heat)
        return ["layers.json", "heatmap.png"]

    folder, files = write_job(out_root, "layers", write)
    report = {"job": "layers", "selection_path": str(folder / "layers.json"), **selection.to_dict()}
    summary = f"Selected {len(selection.layers)} layer(s): {', '.join(selection.layers)} -> {folder / 'layers.json'}"
    return JobResult(folder, files, [(heat, "style sensitivity")], report, summary)


def purify_job(host_factory, inputs: Sequence[Path], *, out_root, method: str = "impress", chain: str = "",
               params: str = "", seed: int = 0, memory: str = "auto", progress: Progress | None = None) -> JobResult:
    """Purify each input (one at a time: sizes may differ); the model is borrowed only if a stage needs it."""
    from protect_core.images import save_image
    from protect_core.purify.base import get_purifier, normalise_chain, purify

    from .bridge import to_pil

    stages = normalise_chain(parse_chain(chain, method, params))
    needs_host = any(get_purifier(name).needs_host for name, _ in stages)
    images = load_all(inputs)
    host = host_factory() if needs_host else None
    outs, infos = [], []
    for img in images:
        out, info = purify(host, img.rgb[None], stages, seed=int(seed), progress=progress, memory=memory)
        outs.append(out[0])
        infos.append(info)
    rows = []

    def write(folder: Path) -> list[str]:
        names = []
        stems = [p.stem for p in inputs]
        for src, img, out, info in zip(inputs, images, outs, infos):
            name = f"{src.stem}.png" if stems.count(src.stem) == 1 else f"{src.name}.png"
            notes = save_image(folder / name, out, like=img)
            names.append(name)
            rows.append({"input": str(src), "output": name, "warnings": [*img.warnings, *notes], **info})
        _write_json(folder / "report.json", report)
        return names + ["report.json"]

    label = "+".join(name for name, _ in stages)
    report = {"job": "purify", "chain": [list(s) for s in stages], "seed": int(seed), "memory": memory,
              "images": rows}
    folder, files = write_job(out_root, "purify", write)
    gallery = [(to_pil(o), r["output"]) for o, r in zip(outs, rows)]
    used = memory_used(info.get("memory") for info in infos)
    return JobResult(folder, files, gallery, report, f"Purified {len(rows)} image(s) with {label}{used} -> {folder}")


def style_embedder(clip_vision: str | None):
    """The Mimicry Test's judge: ``None`` (the offline descriptor) for an empty field, else the local transformers
    CLIP vision folder's :class:`~protect_core.mimicry.style.ClipVisionEmbedder` (a bad folder: one ModelError line;
    nothing is downloaded)."""
    folder = (clip_vision or "").strip().strip('"')
    if not folder:
        return None
    from protect_core.mimicry.style import ClipVisionEmbedder

    return ClipVisionEmbedder(folder)


def mimicry_job(host_factory, clean: Sequence[Path], train_sets: dict[str, Sequence[Path]], *, out_root,
                method: str = "lora", steps: int = 200, rank: int = 4, lr: float = 0.0, samples: int = 8,
                resolution: int = 512, seed: int = 0, layers: str = "", memory: str = "auto", clip_vision: str = "",
                progress: Progress | None = None, **expert) -> JobResult:
    """Fine-tune on each training set, generate, score; writes report.json and report.png (the report card).

    ``clip_vision``: a local CLIP vision model folder that judges style (empty: the offline descriptor); it is
    loaded before the model work, so a bad folder fails at once. ``expert``: any other
    :class:`~protect_core.mimicry.settings.MimicrySettings` field (e.g. ``sample_steps``)."""
    from protect_core.mimicry.runner import run_mimicry_test
    from protect_core.mimicry.settings import MimicrySettings

    if not train_sets:
        raise StyleCloakError("give at least one training set (e.g. the cloaked images)")
    clean_imgs = load_all(clean)
    sets = {name: load_all(paths) for name, paths in train_sets.items()}
    embedder = style_embedder(clip_vision)
    host = host_factory()
    settings = MimicrySettings(method=method, steps=int(steps), rank=int(rank), lr=float(lr) or None,
                               samples=int(samples), resolution=int(resolution), seed=int(seed),
                               layers=parse_layers(layers, host), **expert)
    report = run_mimicry_test(host, clean_imgs, sets, settings, progress, embedder=embedder, memory=memory)
    card = report.card()
    folder, files = write_job(out_root, "mimicry", lambda d: [Path(p).name for p in report.save(d).values()])
    return JobResult(folder, files, [(card, "report card")], report.to_dict(),
                     f"Mimicry test verdict: {report.verdict} [style embedding: {report.embedder}]"
                     f"{memory_used([report.memory])} -> {folder}")
