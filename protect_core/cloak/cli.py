"""``stylecloak cloak``: cloak a folder (or files) of artwork into an output folder.

File names are kept (suffix from ``--format``, .png by default). The run is resumable: outputs that already exist are
skipped unless ``--overwrite``. Files are written atomically as soon as each image is done, so a cancelled or
interrupted run leaves only complete files. Alpha, greyscale (cloaked with one delta shared by the channels) and
16-bit depth come back as they were read (see ``protect_core.images``).
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

from ..errors import StyleCloakError
from .base import CloakSettings, available_methods, get_method
from .presets import PRESETS, settings_for

log = logging.getLogger(__name__)
FORMATS = ("png", "jpg", "webp")


def add_arguments(parser) -> None:
    parser.add_argument("inputs", nargs="*", metavar="IN", help="image files and/or folders")
    parser.add_argument("-o", "--output", help="output folder (created if missing)")
    parser.add_argument("--list-methods", action="store_true", help="list the cloak methods and exit")
    parser.add_argument("--method", default="glaze", help="cloak method (see --list-methods; default glaze)")
    parser.add_argument("--intensity", default="default", choices=list(PRESETS),
                        help="preset scaling eps/steps (and Glaze's perceptual budget 0.05/0.07/0.1)")
    parser.add_argument("--eps", type=float, default=None, help="L-inf budget in 0..255 units (e.g. 8)")
    parser.add_argument("--steps", type=int, default=None, help="optimisation steps")
    parser.add_argument("--step-size", type=float, default=None, help="step size in 0..255 units")
    parser.add_argument("--optimizer", choices=["pgd", "adam"], default=None)
    parser.add_argument("--perceptual-budget", type=float, default=None,
                        help="perceptual budget p (offline DSSIM pyramid; e.g. 0.05)")
    parser.add_argument("--robust", action="store_true", help="optimise through JPEG/resize/blur/noise")
    parser.add_argument("--robust-samples", type=int, default=None, help="transform draws per step")
    parser.add_argument("--target-prompt", default=None, help="glaze: the distant target style")
    parser.add_argument("--prompt", default=None, help="the prompt an attacker would fine-tune with")
    parser.add_argument("--layers", default=None, metavar="selection.json",
                        help="cross-attention layers (from `stylecloak layers`) for layer-aware methods")
    parser.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                        help="method option (VALUE parsed as JSON when possible); repeatable")
    parser.add_argument("--save-perturbation", action="store_true",
                        help="also write NAME.perturbation.png (amplified delta, grey = unchanged)")
    parser.add_argument("--format", choices=FORMATS, default="png", help="output format (png keeps the cloak)")
    parser.add_argument("--tile", type=int, default=None, help="largest side cloaked in one piece (px; default: "
                        "the method's, 512 for UNet methods, 1024 for encoder-only ones); larger images are cloaked in "
                        "tiles")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--memory", default="auto", choices=["auto", "fast", "balanced", "low"],
                        help="memory mode: auto picks by free memory; balanced = half-precision autocast + UNet "
                        "checkpointing; low = also VAE checkpointing, 512 px tiles, score distillation. Out of memory "
                        "falls back to the next lower mode")
    parser.add_argument("--overwrite", action="store_true", help="redo outputs that already exist")
    from ..cli import add_max_pixels

    add_max_pixels(parser, note="images above --tile are cloaked in tiles, so a larger limit costs time rather than "
                   "GPU memory")


def needs_host(args) -> bool:
    """No model for --list-methods, for requests that fail before any work, or when every output already exists
    (a resumed run with nothing left to do)."""
    if args.list_methods or not args.inputs or not args.output:
        return False
    from ..images import list_images

    inputs = list_images(args.inputs)
    return args.overwrite or not all(p.exists() for p in output_paths(inputs, Path(args.output), args.format))


def read_layers(path) -> list[str]:
    """Layer names from a selection file: a JSON list, or an object with "layers"/"selected" (names or
    objects with "name")."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise StyleCloakError(f"cannot read layer selection '{path}': {e}") from None
    if isinstance(data, dict):
        data = data.get("layers", data.get("selected"))
    if not isinstance(data, list) or not data:
        raise StyleCloakError(f"layer selection '{path}' holds no list of layers (expected a JSON list, or an "
                              "object with a 'layers' list)")
    names = [d.get("name") if isinstance(d, dict) else d for d in data]
    if not all(isinstance(n, str) for n in names):
        raise StyleCloakError(f"layer selection '{path}': every entry must be a name or have a 'name'")
    return names


def _options(pairs: list[str]) -> dict:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"--option expects KEY=VALUE, got {pair!r}")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def build_settings(args):
    method = get_method(args.method)
    base = CloakSettings(method=args.method, seed=args.seed, robust=args.robust,
                         robust_samples=args.robust_samples or 1, target_prompt=args.target_prompt,
                         options=_options(args.option))
    if args.prompt:
        base.prompt = args.prompt
    settings = settings_for(
        method, args.intensity, base,
        eps=None if args.eps is None else args.eps / 255,
        step_size=None if args.step_size is None else args.step_size / 255,
        steps=args.steps, optimizer=args.optimizer, perceptual_budget=args.perceptual_budget,
        layers=read_layers(args.layers) if args.layers else None)
    return method, settings


def list_methods() -> dict:
    rows = []
    for name, cls in available_methods().items():
        rows.append({"name": name, "summary": cls.summary, "source": cls.source, "joint": cls.joint,
                     "uses_unet": cls.uses_unet,
                     "defaults": {k: v for k, v in cls.defaults.items() if k != "options"}})
    return {"methods": rows}


def output_paths(inputs: list[Path], out_dir: Path, fmt: str) -> list[Path]:
    """Same stem, new suffix; a stem shared by two inputs keeps the old suffix too (a.jpg.png, a.png.png)."""
    stems = [p.stem for p in inputs]
    return [out_dir / (f"{p.stem}.{fmt}" if stems.count(p.stem) == 1 else f"{p.name}.{fmt}") for p in inputs]


def run(args, host) -> dict:
    if args.list_methods:
        return list_methods()
    if not args.inputs:
        raise StyleCloakError("no input images; usage: stylecloak cloak IN... -o OUT (or --list-methods)")
    if not args.output:
        raise StyleCloakError("no output folder; pass -o OUT")
    from ..cli import progress_bar
    from ..images import list_images, load_image, save_image
    from ..progress import Progress
    from .runner import cloak_images

    method, settings = build_settings(args)
    out_dir = Path(args.output)
    out_dir.mkdir(parents=True, exist_ok=True)
    inputs = list_images(args.inputs)
    outputs = output_paths(inputs, out_dir, args.format)
    rows = [{"input": str(i), "output": str(o)} for i, o in zip(inputs, outputs)]
    todo, loaded = [], []
    for k, (src, dst) in enumerate(zip(inputs, outputs)):
        if dst.exists() and not args.overwrite:
            rows[k]["status"] = "skipped (exists)"
            continue
        try:
            loaded.append(load_image(src, max_pixels=args.max_pixels))
            todo.append(k)
        except StyleCloakError as e:
            rows[k].update(status="failed", error=str(e))
            log.warning("%s", e)

    def save(j, result):
        k, img = todo[j], loaded[j]
        notes = save_image(outputs[k], result.image, like=img)
        if args.save_perturbation:
            save_image(outputs[k].with_name(outputs[k].stem + ".perturbation.png"), result.perturbation_view)
        stats = {key: v for key, v in result.stats.items() if key != "settings"}
        rows[k].update(status="written", stats=stats, warnings=list(img.warnings) + list(notes))

    if loaded:
        on_step, close = progress_bar(args, 0, f"cloak ({settings.method})")
        try:
            cloak_images(host, [img.rgb for img in loaded], settings, Progress(on_step=on_step),
                         batch_size=args.batch_size, channel_tied=[img.is_grey for img in loaded],
                         tile_size=args.tile, on_result=save, memory=args.memory)
        finally:
            close()
    count = {s: sum(1 for r in rows if r.get("status", "").startswith(s)) for s in ("written", "skipped", "failed")}
    return {"method": settings.method, "intensity": args.intensity, "output": str(out_dir), **count,
            "settings": {k: v for k, v in settings.__dict__.items()}, "images": rows}
