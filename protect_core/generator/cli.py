"""``stylecloak train-generator``: train a one-pass cloak network for a model, written as one safetensors file.

Training art: ``--images`` (files and folders: each image gives ``--crops`` seeded crops of ``--size`` px, after
scaling its short side up to ``--size`` when smaller), or, for a measurement world (``--model toy`` / ``atelier``
or no ``--model``), ``--per-artist`` fresh renders of each of its TRAINED artists (never its held-out or dev ones,
whose protection is what gets measured). The output is written atomically (complete or absent); progress is
checkpointed next to it (``OUT.ckpt``, every 100 steps), so rerunning an interrupted command continues and ends
with the bytes an uninterrupted run writes; the checkpoint is removed on success. An existing output is kept
unless ``--overwrite``.
"""
from __future__ import annotations

from pathlib import Path

from ..cli_support.values import finite_float, int_range, positive_int
from ..errors import StyleCloakError


def add_arguments(parser) -> None:
    parser.add_argument("-o", "--out", required=False, metavar="FILE.safetensors", help="the generator file to write")
    parser.add_argument("--images", nargs="+", default=None, metavar="IN", help="training art (files and/or "
                        "folders); default for a measurement world: renders of its trained artists")
    parser.add_argument("--recursive", action="store_true", help="also read images in subfolders of --images")
    parser.add_argument("--objective", default="photoguard", help="the cloak method whose loss the network learns "
                        "(a per-image method; default photoguard, whose image-independent target a small network "
                        "learns; glaze's per-image restyle target did not carry over to unseen art, see README)")
    parser.add_argument("--eps", type=finite_float(0, 255, lo_open=True), default=16.0,
                        help="L-inf budget the network is trained at, 0..255 units (default 16)")
    parser.add_argument("--perceptual-budget", type=finite_float(0), default=0.0,
                        help="perceptual budget of a training hinge (default 0: none; the cloak's finalisation holds "
                        "the perceptual budget at use; with the hinge at 0.07 the network did worse on unseen art)")
    parser.add_argument("--steps", type=positive_int, default=2000, help="training steps (default 2000)")
    parser.add_argument("--batch-size", type=positive_int, default=8)
    parser.add_argument("--lr", type=finite_float(0, 1, lo_open=True), default=5e-4, help="Adam learning rate")
    parser.add_argument("--width", type=int_range(4, 256), default=24, help="network width (default 24)")
    parser.add_argument("--depth", type=int_range(0, 16), default=3, help="residual blocks at the lowest level")
    parser.add_argument("--robust", action="store_true", help="train through random JPEG/resize/blur/noise")
    parser.add_argument("--size", type=int_range(16, 4096), default=None,
                        help="training crop side in px (default: the world's native size, else 512)")
    parser.add_argument("--crops", type=positive_int, default=2, help="crops per --images image (default 2)")
    parser.add_argument("--per-artist", type=positive_int, default=16,
                        help="renders per trained artist of a measurement world (default 16)")
    parser.add_argument("--prompt", default="a painting in sks style", help="the attacker's fine-tuning prompt "
                        "(objectives that use one)")
    parser.add_argument("--target-prompt", default=None, help="glaze: the distant target style")
    parser.add_argument("--threads", type=positive_int, default=None, help="CPU threads (default: torch's)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    from ..cli import add_max_pixels

    add_max_pixels(parser)


def _world(args):
    from ..worlds import get_world, world_names

    name = args.model or "toy"
    return get_world(name) if name in world_names() else None


def check(args) -> None:
    from ..cli_support.paths import check_output_file
    from .train import TrainSettings

    if not args.out:
        raise StyleCloakError("no output file; pass -o gen.safetensors")
    out = check_output_file(args.out, "-o", "generator.safetensors")
    if out.suffix != ".safetensors":
        raise StyleCloakError(f"-o {out}: the generator file must end in .safetensors")
    if out.exists() and not args.overwrite:
        raise StyleCloakError(f"-o {out} exists; pass --overwrite to replace it")
    if args.images is None and _world(args) is None:
        raise StyleCloakError("--model is not a measurement world: pass --images with training art (your own or "
                              "any art in the style range you protect)")
    args._paths = None
    if args.images is not None:
        from ..images import list_images

        args._paths = list_images(args.images, recursive=args.recursive)
        if not args._paths:
            raise StyleCloakError("--images: no image files found")
    args._ts = TrainSettings(objective=args.objective, eps=args.eps / 255,
                             perceptual_budget=args.perceptual_budget or None, steps=args.steps,
                             batch_size=args.batch_size, lr=args.lr, width=args.width, depth=args.depth,
                             robust=args.robust, seed=args.seed, prompt=args.prompt,
                             target_prompt=args.target_prompt)
    try:
        args._ts.check()
    except ValueError as e:   # unknown method name
        raise StyleCloakError(f"--objective: {e}") from None


def crops_of(images, size: int, crops: int, seed: int):
    """``crops`` seeded ``size`` x ``size`` crops of each (3, H, W) image (short side first scaled up to ``size``)."""
    import torch
    import torch.nn.functional as F

    out = []
    for i, img in enumerate(images):
        h, w = img.shape[-2:]
        if min(h, w) < size:
            s = size / min(h, w)
            img = F.interpolate(img[None], size=(max(size, round(h * s)), max(size, round(w * s))),
                                mode="bilinear", antialias=True, align_corners=False)[0].clamp(0, 1)
            h, w = img.shape[-2:]
        g = torch.Generator().manual_seed(seed * 1009 + i)
        for _ in range(crops):
            top = int(torch.randint(0, h - size + 1, (1,), generator=g))
            left = int(torch.randint(0, w - size + 1, (1,), generator=g))
            out.append(img[:, top:top + size, left:left + size])
    return torch.stack(out)


def training_pool(args):
    """(pool tensor, description) from --images or the world's trained artists."""
    import torch

    if args._paths is not None:
        from ..images import load_image

        size = args.size or 512
        images = [load_image(p, max_pixels=args.max_pixels).rgb for p in args._paths]
        return crops_of(images, size, args.crops, args.seed), {"images": len(images), "crops": args.crops,
                                                                "size": size}
    world = _world(args)
    styles = world.styles()
    size = args.size or int(getattr(styles, "NATIVE_SIZE", 32))
    pool = torch.cat([styles.render(a, args.per_artist, size=size, seed=args.seed + 500_000)
                      for a in styles.TRAINED])
    return pool, {"world": world.name, "artists": list(styles.TRAINED), "per_artist": args.per_artist, "size": size}


def run(args, host) -> dict:
    import dataclasses

    import torch

    from ..cli import progress_bar
    from ..progress import Progress
    from .store import model_probe, save_generator
    from .train import train_generator

    if args.threads:
        torch.set_num_threads(args.threads)
    pool, source = training_pool(args)
    out = Path(args.out)
    ckpt = out.with_name(out.name + ".ckpt")
    on_step, close = progress_bar(args, 0, "train-generator")
    try:
        net, history, seconds = train_generator(host, pool, args._ts, Progress(on_step=on_step), checkpoint=ckpt)
    finally:
        close()
    with host.borrowed():
        probe = model_probe(host)
    meta = {**dataclasses.asdict(args._ts), "trained_on": source, "history": history,
            "model": {k: v for k, v in host.describe().items() if k != "device"}}
    save_generator(out, net, probe, meta)
    ckpt.unlink(missing_ok=True)
    return {"output": str(out), "steps": args._ts.steps, "train_seconds": round(seconds, 1),
            "pool": int(len(pool)), "trained_on": source, "objective": args._ts.objective,
            "loss_first": history[0]["loss"] if history else None, "loss_last": history[-1]["loss"] if history else None,
            "parameters": sum(p.numel() for p in net.parameters())}
