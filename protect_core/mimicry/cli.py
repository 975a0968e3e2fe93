"""``stylecloak mimicry``: run the mimicry test on image folders and write the report card.

Example::

    stylecloak mimicry --clean art/ --train cloaked/ --train purified/ --name cloaked --name purified \\
        -o report/ --method lora --rank 4 --lr 1e-4 --steps 200 --samples 8

Every value, path and image is checked before the model loads (a bad ``--guidance`` fails at once, not after the
fine-tunes). A report folder that already holds ``report.json`` and ``report.png`` is kept and the run skipped
unless ``--overwrite``, as in every subcommand.
"""
from __future__ import annotations

import json
from pathlib import Path

from ..cli_support.values import finite_float, int_range, positive_int
from ..errors import StyleCloakError
from .settings import DEFAULT_PROMPTS, MimicrySettings


def add_arguments(p) -> None:
    d = MimicrySettings()
    io = p.add_argument_group("images")
    io.add_argument("--clean", nargs="+", required=True, metavar="PATH",
                    help="the artist's clean art (files or folders): reference set and the 'clean' condition")
    io.add_argument("--train", action="append", required=True, metavar="PATH",
                    help="one training set (folder or file) per flag, e.g. cloaked art, purified cloaked art")
    io.add_argument("--name", action="append", default=None, help="a name per --train (default: folder name)")
    io.add_argument("--reference", action="append", default=None, metavar="PATH",
                    help="other styles for the nearest-centroid attribution (default: base-model generations)")
    io.add_argument("-o", "--out", required=True, help="report folder (report.json, report.png)")
    io.add_argument("--save-samples", action="store_true", help="also write every generated image")
    io.add_argument("--recursive", action="store_true", help="also read images in subfolders")
    io.add_argument("--overwrite", action="store_true", help="redo the test if the report folder already holds a "
                    "report (default: keep it and skip)")
    from ..cli import add_max_pixels

    add_max_pixels(io)
    ft = p.add_argument_group("fine-tune")
    ft.add_argument("--method", choices=["lora", "dreambooth"], default=d.method)
    ft.add_argument("--rank", type=positive_int, default=d.rank)
    ft.add_argument("--alpha", type=finite_float(0, lo_open=True), default=None, help="LoRA alpha (default: rank)")
    ft.add_argument("--lr", type=finite_float(0, lo_open=True), default=None, help="default: 1e-4 (lora), 5e-6 (dreambooth)")
    ft.add_argument("--steps", type=positive_int, default=d.steps)
    ft.add_argument("--batch-size", type=positive_int, default=d.batch_size)
    ft.add_argument("--layers", default=None, metavar="JSON",
                    help="layer selection (JSON list of canonical cross-attention names, or the layers block's "
                         "output); default: all attention layers")
    ft.add_argument("--no-self-attention", action="store_true", help="adapt cross-attention (attn2) only")
    ft.add_argument("--dreambooth-params", nargs="+", default=None, metavar="PREFIX",
                    help="UNet weight-name prefixes to fine-tune with --method dreambooth ('unet' = all)")
    ft.add_argument("--instance-prompt", default=d.instance_prompt)
    ft.add_argument("--prior-preservation", action="store_true")
    ft.add_argument("--class-prompt", default=d.class_prompt)
    ft.add_argument("--prior-images", type=positive_int, default=d.prior_images)
    ft.add_argument("--resolution", type=int_range(8), default=None,
                    help="training/generation size (default: 512, capped by the smallest clean image)")
    ft.add_argument("--memory", default="auto", choices=["auto", "fast", "balanced", "low"],
                    help="memory mode for the fine-tunes and generations: auto picks by free memory; balanced = "
                    "half-precision autocast + UNet checkpointing; low = also VAE checkpointing. Out of memory "
                    "restarts the test in the next lower mode")
    gen = p.add_argument_group("generation and scoring")
    gen.add_argument("--prompts", nargs="+", default=list(DEFAULT_PROMPTS))
    gen.add_argument("--samples", type=positive_int, default=d.samples)
    gen.add_argument("--sample-steps", type=positive_int, default=d.sample_steps)
    gen.add_argument("--sample-batch", type=positive_int, default=d.sample_batch)
    gen.add_argument("--guidance", type=finite_float(0), default=d.guidance)
    gen.add_argument("--negative", default=d.negative_prompt)
    gen.add_argument("--reference-samples", type=positive_int, default=d.reference_samples)
    gen.add_argument("--margin", type=finite_float(0, 2), default=d.sanity_margin, help="sanity-check margin (cosine units)")
    gen.add_argument("--clip", default=None, metavar="FOLDER",
                    help="a local CLIP vision model folder for style similarity (default: offline descriptor)")


def read_layer_selection(path) -> list[str]:
    """Canonical layer names from a JSON list, or a dict holding one under layers/selected/selection."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise StyleCloakError(f"{path}: cannot read the layer selection ({e})") from None
    if isinstance(data, dict):
        data = next((data[k] for k in ("selected", "selection", "layers") if k in data), None)
    names = [x.get("name") if isinstance(x, dict) else x for x in (data or [])]
    if not names or not all(isinstance(n, str) for n in names):
        raise StyleCloakError(f"{path}: expected a JSON list of canonical cross-attention layer names")
    return names


def _load(paths, max_pixels: int | None = None, recursive: bool = False) -> tuple[list, list[Path]]:
    from ..images import DEFAULT_MAX_PIXELS, list_images, load_image

    files = list_images(paths, recursive=recursive)
    return [load_image(f, max_pixels=max_pixels or DEFAULT_MAX_PIXELS).rgb for f in files], files


def _pair_by_stem(clean_files: list[Path], files: list[Path], images: list) -> list:
    """Reorder a training set to the clean set's order when every file stem matches (for PSNR/SSIM pairs)."""
    stems = {f.stem: i for i, f in enumerate(files)}
    if len(stems) == len(files) == len(clean_files) and all(c.stem in stems for c in clean_files):
        return [images[stems[c.stem]] for c in clean_files]
    return images


def _names(args) -> list[str]:
    if args.name is not None and len(args.name) != len(args.train):
        raise StyleCloakError(f"{len(args.name)} --name for {len(args.train)} --train; give one name per set")
    names = args.name or [Path(t).name or Path(t).resolve().name for t in args.train]
    if len(set(names)) != len(names):
        raise StyleCloakError(f"training set names must differ ({names}); use --name")
    return names


def _settings(args, clean) -> MimicrySettings:
    res = args.resolution
    if res is None:
        smallest = min(min(im.shape[-2:]) for im in clean)
        res = max(8, min(512, smallest) // 8 * 8)
    return MimicrySettings(
        method=args.method, rank=args.rank, alpha=args.alpha, lr=args.lr, steps=args.steps,
        batch_size=args.batch_size, layers=read_layer_selection(args.layers) if args.layers else None,
        self_attention=not args.no_self_attention, dreambooth_params=args.dreambooth_params,
        instance_prompt=args.instance_prompt, prior_preservation=args.prior_preservation,
        class_prompt=args.class_prompt, prior_images=args.prior_images, resolution=res, prompts=args.prompts,
        samples=args.samples, sample_steps=args.sample_steps, guidance=args.guidance, negative_prompt=args.negative,
        sample_batch=args.sample_batch, reference_samples=args.reference_samples, sanity_margin=args.margin,
        seed=args.seed)


REPORT_FILES = ("report.json", "report.png")


def _done(args) -> bool:
    return not args.overwrite and all((Path(args.out) / f).exists() for f in REPORT_FILES)


def check(args) -> None:
    """Report folder, names, layer file, every image and the settings, before the model loads."""
    from ..cli_support.paths import check_output_dir, clean_stale_temps

    out = check_output_dir(args.out, "-o")
    clean_stale_temps([out, out / "samples"], list(REPORT_FILES))
    names = _names(args)
    if args.layers:
        read_layer_selection(args.layers)
    if _done(args):
        return
    limit, deep = getattr(args, "max_pixels", None), args.recursive
    clean, clean_files = _load(args.clean, limit, deep)
    train = {}
    for name, path in zip(names, args.train):
        imgs, files = _load([path], limit, deep)
        train[name] = _pair_by_stem(clean_files, files, imgs)
    refs = None
    if args.reference:
        refs = {Path(r).name or f"reference{i}": _load([r], limit, deep)[0] for i, r in enumerate(args.reference)}
    settings = _settings(args, clean)
    settings.validate(1)   # the multiple of the model's VAE factor is checked again once the model is loaded
    args._work = clean, train, refs, settings


def needs_host(args) -> bool:
    return not _done(args)


def run(args, host) -> dict:
    if _done(args):
        return {"report": {"json": str(Path(args.out) / "report.json")}, "status": "skipped (exists)",
                "skipped": 1, "note": "the report exists; pass --overwrite to run the test again"}
    from ..cli import progress_bar
    from ..progress import Progress
    from .runner import run_mimicry_test
    from .style import ClipVisionEmbedder, DescriptorEmbedder

    clean, train, refs, settings = args._work
    embedder = ClipVisionEmbedder(args.clip) if args.clip else DescriptorEmbedder(host, seed=settings.seed)
    on_step, close = progress_bar(args, 0, "mimicry")
    try:
        report = run_mimicry_test(host, clean, train, settings, Progress(0, on_step), references=refs,
                                  embedder=embedder, memory=args.memory)
    finally:
        close()
    paths = report.save(args.out, samples=args.save_samples)
    rows = {n: {"style_similarity": r["style_similarity"]["mean"],
                "protection_success_rate": r["nearest_centroid"]["protection_success_rate"],
                "protection_effect": r.get("protection_effect"), "verdict": r["verdict"]}
            for n, r in report.conditions.items()}
    ceiling = {"style_similarity": report.ceiling["style_similarity"]["mean"],
               "artist_share": report.ceiling["nearest_centroid"]["artist_share"]}
    return {"verdict": report.verdict, "sanity_check": report.sanity, "conditions": rows,
            "ceiling_clean_vae_roundtrip": ceiling,
            "memory": {"name": report.memory["name"], "fallbacks": report.memory["fallbacks"]}, "report": paths}
