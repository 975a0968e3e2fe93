"""``stylecloak mimicry``: run the mimicry test on image folders and write the report card.

Example::

    stylecloak mimicry --clean art/ --train cloaked/ --train purified/ --name cloaked --name purified \\
        -o report/ --method lora --rank 4 --lr 1e-4 --steps 200 --samples 8
"""
from __future__ import annotations

import json
from pathlib import Path

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
    from ..cli import add_max_pixels

    add_max_pixels(io)
    ft = p.add_argument_group("fine-tune")
    ft.add_argument("--method", choices=["lora", "dreambooth"], default=d.method)
    ft.add_argument("--rank", type=int, default=d.rank)
    ft.add_argument("--alpha", type=float, default=None, help="LoRA alpha (default: rank)")
    ft.add_argument("--lr", type=float, default=None, help="default: 1e-4 (lora), 5e-6 (dreambooth)")
    ft.add_argument("--steps", type=int, default=d.steps)
    ft.add_argument("--batch-size", type=int, default=d.batch_size)
    ft.add_argument("--layers", default=None, metavar="JSON",
                    help="layer selection (JSON list of canonical cross-attention names, or the layers block's "
                         "output); default: all attention layers")
    ft.add_argument("--no-self-attention", action="store_true", help="adapt cross-attention (attn2) only")
    ft.add_argument("--dreambooth-params", nargs="+", default=None, metavar="PREFIX",
                    help="UNet weight-name prefixes to fine-tune with --method dreambooth ('unet' = all)")
    ft.add_argument("--instance-prompt", default=d.instance_prompt)
    ft.add_argument("--prior-preservation", action="store_true")
    ft.add_argument("--class-prompt", default=d.class_prompt)
    ft.add_argument("--prior-images", type=int, default=d.prior_images)
    ft.add_argument("--resolution", type=int, default=None,
                    help="training/generation size (default: 512, capped by the smallest clean image)")
    ft.add_argument("--memory", default="auto", choices=["auto", "fast", "balanced", "low"],
                    help="memory mode for the fine-tunes and generations: auto picks by free memory; balanced = "
                    "half-precision autocast + UNet checkpointing; low = also VAE checkpointing. Out of memory "
                    "restarts the test in the next lower mode")
    gen = p.add_argument_group("generation and scoring")
    gen.add_argument("--prompts", nargs="+", default=list(DEFAULT_PROMPTS))
    gen.add_argument("--samples", type=int, default=d.samples)
    gen.add_argument("--sample-steps", type=int, default=d.sample_steps)
    gen.add_argument("--sample-batch", type=int, default=d.sample_batch)
    gen.add_argument("--guidance", type=float, default=d.guidance)
    gen.add_argument("--negative", default=d.negative_prompt)
    gen.add_argument("--reference-samples", type=int, default=d.reference_samples)
    gen.add_argument("--margin", type=float, default=d.sanity_margin, help="sanity-check margin (cosine units)")
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


def _load(paths, max_pixels: int | None = None) -> tuple[list, list[Path]]:
    from ..images import DEFAULT_MAX_PIXELS, list_images, load_image

    files = list_images(paths)
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


def run(args, host) -> dict:
    from ..cli import progress_bar
    from ..progress import Progress
    from .runner import run_mimicry_test
    from .style import ClipVisionEmbedder, DescriptorEmbedder

    names = _names(args)
    limit = getattr(args, "max_pixels", None)
    clean, clean_files = _load(args.clean, limit)
    train = {}
    for name, path in zip(names, args.train):
        imgs, files = _load([path], limit)
        train[name] = _pair_by_stem(clean_files, files, imgs)
    refs = None
    if args.reference:
        refs = {Path(r).name or f"reference{i}": _load([r], limit)[0] for i, r in enumerate(args.reference)}
    settings = _settings(args, clean)
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
