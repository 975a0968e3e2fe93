"""``stylecloak cloak``: cloak a folder (or files) of artwork into an output folder.

File names are kept (suffix from ``--format``, .png by default; ``--recursive`` keeps the input folders' layout).
Two inputs that would map to one output stop the run before any work (see :mod:`protect_core.cli_support.paths`).
The run is resumable: outputs that already exist are skipped unless ``--overwrite``, and each image's randomness
comes from the seed and its own name, so a resumed run writes the bytes an uninterrupted one would. Files are
written atomically as soon as each image is done, so a cancelled or interrupted run leaves only complete files;
the output folder is created only when the first image is written. Alpha, greyscale (cloaked with one delta shared
by the channels) and 16-bit depth come back as they were read (see ``protect_core.images``).
"""
from __future__ import annotations

import json
import logging
import math
from pathlib import Path

from ..cli_support.values import finite_float, int_range, positive_int
from ..errors import OutputError, RunError, StyleCloakError

log = logging.getLogger(__name__)
FORMATS = ("png", "jpg", "webp")
INTENSITIES = ("low", "default", "high")   # the keys of protect_core.cloak.presets.PRESETS (a test checks)


def add_arguments(parser) -> None:
    parser.add_argument("inputs", nargs="*", metavar="IN", help="image files and/or folders")
    parser.add_argument("-o", "--output", help="output folder (created when the first image is written)")
    parser.add_argument("--recursive", action="store_true",
                        help="also cloak images in subfolders, keeping their layout under the output folder")
    parser.add_argument("--list-methods", action="store_true", help="list the cloak methods and exit")
    parser.add_argument("--method", default="glaze", help="cloak method (see --list-methods; default glaze)")
    parser.add_argument("--intensity", default="default", choices=INTENSITIES,
                        help="preset scaling eps/steps (and Glaze's perceptual budget 0.05/0.07/0.1)")
    parser.add_argument("--eps", type=finite_float(0, 255, lo_open=True), default=None,
                        help="L-inf budget in 0..255 units (e.g. 8)")
    parser.add_argument("--steps", type=positive_int, default=None, help="optimisation steps (>= 1)")
    parser.add_argument("--step-size", type=finite_float(0, 255, lo_open=True), default=None,
                        help="step size in 0..255 units")
    parser.add_argument("--optimizer", choices=["pgd", "adam"], default=None)
    parser.add_argument("--perceptual-budget", type=finite_float(0, lo_open=True), default=None,
                        help="perceptual budget p (offline DSSIM pyramid; e.g. 0.05)")
    parser.add_argument("--robust", action="store_true", help="optimise through JPEG/resize/blur/noise")
    parser.add_argument("--robust-samples", type=positive_int, default=None, help="transform draws per step (>= 1)")
    parser.add_argument("--target-prompt", default=None, help="glaze: the distant target style")
    parser.add_argument("--prompt", default=None, help="the prompt an attacker would fine-tune with")
    parser.add_argument("--layers", default=None, metavar="selection.json",
                        help="cross-attention layers (from `stylecloak layers`) for layer-aware methods")
    parser.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                        help="method option (VALUE parsed as JSON when possible; see --list-methods for each "
                        "method's options); repeatable")
    parser.add_argument("--save-perturbation", action="store_true",
                        help="also write NAME.perturbation.png (amplified delta, grey = unchanged)")
    parser.add_argument("--format", choices=FORMATS, default="png", help="output format (png keeps the cloak)")
    parser.add_argument("--tile", type=int_range(16), default=None, help="largest side cloaked in one piece (px; "
                        "default: the method's, 512 for UNet methods, 1024 for encoder-only ones); larger images are "
                        "cloaked in tiles")
    parser.add_argument("--batch-size", type=positive_int, default=4)
    parser.add_argument("--memory", default="auto", choices=["auto", "fast", "balanced", "low"],
                        help="memory mode: auto picks by free memory; balanced = half-precision autocast + UNet "
                        "checkpointing; low = also VAE checkpointing, 512 px tiles, score distillation. Out of memory "
                        "falls back to the next lower mode")
    parser.add_argument("--overwrite", action="store_true", help="redo outputs that already exist (default: skip "
                        "them)")
    from ..cli import add_max_pixels

    add_max_pixels(parser, note="images above --tile are cloaked in tiles, so a larger limit costs time rather than "
                   "GPU memory")


def check(args) -> None:
    """Everything that can be checked before the model loads: method, settings, options, layer file, inputs,
    output folder and names. Leaves the plan on ``args`` (``_settings``, ``_plan``)."""
    if args.list_methods:
        return
    if not args.inputs:
        raise StyleCloakError("no input images; usage: stylecloak cloak IN... -o OUT (or --list-methods)")
    if not args.output:
        raise StyleCloakError("no output folder; pass -o OUT")
    from ..cli_support.paths import check_output_dir, clean_stale_temps, plan_outputs
    from ..images import list_image_keys

    check_output_dir(args.output)
    args._settings = build_settings(args)
    items = sorted(list_image_keys(args.inputs, recursive=args.recursive), key=lambda t: t[0])
    outputs = plan_outputs(items, Path(args.output), lambda src: f".{args.format}")
    if args.save_perturbation:
        views = {o.with_name(o.stem + ".perturbation.png"): src for (src, _), o in zip(items, outputs)}
        clash = next((v for v in views if v in set(outputs)), None)
        if clash is not None:
            raise StyleCloakError(f"--save-perturbation: the perturbation view of '{views[clash]}' would overwrite "
                                  f"the cloak written to '{clash}'; rename that input or drop --save-perturbation")
    clean_stale_temps({o.parent for o in outputs}, [o.name for o in outputs])
    args._plan = (items, outputs)


def needs_host(args) -> bool:
    """No model for --list-methods or when every output already exists (a resumed run with nothing left to do)."""
    if args.list_methods:
        return False
    return args.overwrite or not all(o.exists() for o in args._plan[1])


def read_layers(path) -> list[str]:
    """Layer names from a selection file: a JSON list, or an object with "layers"/"selected" (names or
    objects with "name")."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
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


def _options(pairs: list[str], method) -> dict:
    from .optimize import OBJECTIVE_SAMPLES, OPTIMIZER_OPTIONS

    known = {**{k: None for k in OPTIMIZER_OPTIONS}, "objective_samples": OBJECTIVE_SAMPLES,
             **method.defaults.get("options", {})}
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise StyleCloakError(f"--option expects KEY=VALUE, got {pair!r}")
        if key not in known:
            raise StyleCloakError(f"--option {pair}: method {method.name!r} has no option {key!r}; its options are "
                                  f"{', '.join(sorted(known)) or '(none)'}")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
        if isinstance(out[key], float) and not math.isfinite(out[key]):
            raise StyleCloakError(f"--option {pair}: expected a finite number")
    return out


def build_settings(args):
    from .base import CloakSettings, get_method
    from .optimize import validate_settings
    from .presets import settings_for

    method = get_method(args.method)
    base = CloakSettings(method=args.method, seed=args.seed, robust=args.robust,
                         robust_samples=args.robust_samples or 1, target_prompt=args.target_prompt,
                         options=_options(args.option, method))
    if args.prompt:
        base.prompt = args.prompt
    settings = settings_for(
        method, args.intensity, base,
        eps=None if args.eps is None else args.eps / 255,
        step_size=None if args.step_size is None else args.step_size / 255,
        steps=args.steps, optimizer=args.optimizer, perceptual_budget=args.perceptual_budget,
        layers=read_layers(args.layers) if args.layers else None)
    resolved = settings.resolved(method)
    validate_settings(resolved)
    try:
        method.check_settings(resolved)
    except ValueError as e:
        raise StyleCloakError(str(e)) from None
    return method, settings


def list_methods() -> dict:
    """Every method with its defaults in the units the flags take (eps and step size in 0..255)."""
    from .base import available_methods

    rows = []
    for name, cls in available_methods().items():
        defaults = {}
        for k, v in cls.defaults.items():
            if k in ("eps", "step_size") and isinstance(v, (int, float)):
                defaults[f"{k}_255"] = round(v * 255, 4)
            elif k != "options":
                defaults[k] = v
        rows.append({"name": name, "summary": cls.summary, "source": cls.source, "joint": cls.joint,
                     "uses_unet": cls.uses_unet, "defaults": defaults,
                     "options": dict(cls.defaults.get("options", {}))})
    return {"units": "eps_255 and step_size_255 in 0..255 (as --eps and --step-size take them)", "methods": rows}


def output_paths(inputs: list[Path], out_dir: Path, fmt: str) -> list[Path]:
    """Outputs for files given directly (the A1111 tab): ``OUT/<name>.<fmt>`` with the command line's rules
    (same stem: old suffix kept; two inputs for one output: StyleCloakError naming both)."""
    from ..cli_support.paths import plan_outputs

    return plan_outputs([(Path(p), Path(p).name) for p in inputs], Path(out_dir), lambda src: f".{fmt}")


def run(args, host) -> dict:
    if args.list_methods:
        return list_methods()
    from ..cli import progress_bar
    from ..images import load_image, save_image
    from ..progress import Progress
    from .runner import cloak_images

    method, settings = args._settings
    items, outputs = args._plan
    rows = [{"input": str(src), "output": str(o)} for (src, _), o in zip(items, outputs)]
    exists = [o.exists() and not args.overwrite for o in outputs]
    todo, loaded = [], []
    for k, (src, _) in enumerate(items):
        if exists[k]:
            rows[k]["status"] = "skipped (exists)"
        if exists[k] and all(exists):
            continue
        try:   # done images are read too: the batches are planned over every image (same bytes on resume)
            loaded.append(load_image(src, max_pixels=args.max_pixels))
            todo.append(k)
        except StyleCloakError as e:
            if not exists[k]:
                rows[k].update(status="failed", error=str(e))
                log.warning("%s", e)

    def save(j, result):
        k, img = todo[j], loaded[j]
        notes = save_image(outputs[k], result.image, like=img)
        if args.save_perturbation:
            save_image(outputs[k].with_name(outputs[k].stem + ".perturbation.png"), result.perturbation_view)
        stats = {key: v for key, v in result.stats.items() if key != "settings"}
        rows[k].update(status="written", stats=stats, warnings=list(img.warnings) + list(notes))

    if any(not exists[k] for k in todo):
        on_step, close = progress_bar(args, 0, f"cloak ({settings.method})")
        try:
            cloak_images(host, [img.rgb for img in loaded], settings, Progress(on_step=on_step),
                         batch_size=args.batch_size, channel_tied=[img.is_grey for img in loaded],
                         tile_size=args.tile, on_result=save, memory=args.memory,
                         keys=[items[k][1] for k in todo], skip=[exists[k] for k in todo])
        except OutputError as e:
            raise RunError(str(e), summary=_summary(args, settings, rows)) from e
        finally:
            close()
    return _summary(args, settings, rows)


def _summary(args, settings, rows) -> dict:
    from ..cli_support.paths import status_counts

    count = status_counts(rows)
    return {"method": settings.method, "intensity": args.intensity, "output": str(args.output), **count,
            "settings": {k: v for k, v in settings.__dict__.items()}, "images": rows}
