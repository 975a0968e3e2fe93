"""``stylecloak purify``: attack cloaked images with one purifier or a chain, folder in, folder out.

Output files keep the input's name with the suffix of ``--format`` (png by default, lossless; ``--recursive``
keeps the input folders' layout), alpha and bit depth come back as they were read, writes are atomic, the input
file is never overwritten, and outputs that already exist are skipped unless ``--overwrite`` (as in ``cloak``).
Each image's randomness comes from the seed and its own name, so a resumed run writes the same bytes. Every
parameter is checked (type, finite, range) before any image is read or model loaded. The JSON summary lists each
image's PSNR to its input (how much the purifier changed it), seconds and memory mode (``--memory``; after an
out-of-memory fallback the following images start in the lower mode).
"""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from ..cli_support.values import finite_float, int_range
from ..errors import OutputError, RunError, StyleCloakError

log = logging.getLogger(__name__)
FORMATS = ("png", "jpg", "webp", "same")

#: --preset: overrides applied before --param/--strength/--iterations. "default" = each purifier's documented
#: defaults (the papers'); "quick" trades strength of the attack for minutes instead of hours on a CPU.
PRESETS = {"default": {}, "quick": {"impress": {"iterations": 300}, "gridpure": {"iterations": 5},
                                    "bilateral_guided": {"passes": 16}}}


def add_arguments(parser) -> None:
    parser.add_argument("inputs", nargs="*", metavar="IN", help="image files and/or folders")
    parser.add_argument("-o", "--output", help="output folder (or one output file for one input)")
    parser.add_argument("--recursive", action="store_true",
                        help="also purify images in subfolders, keeping their layout under the output folder")
    parser.add_argument("--list-methods", action="store_true", help="list the purifiers with defaults and exit")
    parser.add_argument("--method", default=None, help="one purifier (see --list-methods)")
    parser.add_argument("--chain", default=None, metavar="A,B,C", help="several purifiers run in this order")
    parser.add_argument("--param", action="append", default=[], metavar="[NAME.]KEY=VALUE",
                        help="purifier parameter (VALUE parsed as JSON when possible); plain KEY applies to every "
                        "stage that has it; repeatable")
    parser.add_argument("--strength", type=finite_float(0, 1), default=None, help="shortcut for strength=... "
                        "(diffpure, noisy_upscale), in [0, 1]")
    parser.add_argument("--iterations", type=int_range(0), default=None, help="shortcut for iterations=... "
                        "(impress, gridpure)")
    parser.add_argument("--preset", choices=list(PRESETS), default="default",
                        help="default: the papers' settings; quick: fewer iterations")
    parser.add_argument("--format", choices=FORMATS, default="png", help="output format (same = input's)")
    parser.add_argument("--memory", default="auto", choices=["auto", "fast", "balanced", "low"],
                        help="memory mode for purifiers that use the model: auto picks by free memory; balanced = "
                        "half-precision autocast + UNet checkpointing; low = also VAE checkpointing. Out of memory "
                        "falls back to the next lower mode (and later images keep the lower mode)")
    parser.add_argument("--overwrite", action="store_true", help="redo outputs that already exist (default: skip "
                        "them)")
    from ..cli import add_max_pixels

    add_max_pixels(parser)


def check(args) -> None:
    """Chain, parameters, inputs and outputs, before any image is decoded or model loaded (``args._plan``)."""
    if args.list_methods:
        return
    if not args.inputs:
        raise StyleCloakError("no input images; usage: stylecloak purify IN... -o OUT --method NAME")
    if not args.output:
        raise StyleCloakError("no output given; pass -o OUT (a folder)")
    from ..cli_support.paths import check_output_dir, check_output_file, clean_stale_temps
    from ..images import list_image_keys
    from .base import get_purifier, resolve_params

    chain = build_chain(args)
    for name, params in chain:   # every value checked now, not after minutes of work
        purifier = get_purifier(name)
        purifier.validate(resolve_params(purifier, params), None)
    items = sorted(list_image_keys(args.inputs, recursive=args.recursive), key=lambda t: t[0])
    outputs = output_paths(items, args.output, args.format)
    if len(outputs) == 1 and outputs[0] == Path(args.output):
        check_output_file(args.output, "-o")
    else:
        check_output_dir(args.output)
    clean_stale_temps({o.parent for o in outputs}, [o.name for o in outputs])
    args._chain, args._plan = chain, (items, outputs)


def needs_host(args) -> bool:
    """Only a chain with a diffusion stage (impress, diffpure, gridpure, noisy_upscale, ...) loads the model, and
    only when some output is still to be written; --list-methods and filter-only chains never do."""
    if args.list_methods:
        return False
    from .base import get_purifier

    todo = args.overwrite or not all(o.exists() for o in args._plan[1])
    return todo and any(get_purifier(name).needs_host for name, _ in args._chain)


def parse_value(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def build_chain(args) -> list[tuple[str, dict]]:
    """The chain with parameters from --preset, then --param, then the --strength/--iterations shortcuts."""
    from .base import available_purifiers, get_purifier, normalise_chain

    if args.chain and args.method:
        raise StyleCloakError("give either --method or --chain, not both")
    names = [n.strip() for n in (args.chain or args.method or "").split(",") if n.strip()]
    if not names:
        raise StyleCloakError("no purifier chosen; pass --method NAME or --chain A,B (see --list-methods)")
    stages = [(name, dict(PRESETS[args.preset].get(name, {}))) for name, _ in normalise_chain(names)]
    for name, _ in stages:
        get_purifier(name)
    settings = [(pair, None) for pair in args.param]
    if args.strength is not None:
        settings.append((f"strength={args.strength}", "--strength"))
    if args.iterations is not None:
        settings.append((f"iterations={args.iterations}", "--iterations"))
    for pair, flag in settings:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"--param expects KEY=VALUE or NAME.KEY=VALUE, got {pair!r}")
        target, _, key = key.rpartition(".")
        hit = False
        for name, params in stages:
            if (not target or target == name) and key in available_purifiers()[name].defaults:
                params[key] = parse_value(value)
                hit = True
        if not hit:
            what = flag or f"--param {pair}"
            raise StyleCloakError(f"{what}: no purifier in the chain ({', '.join(n for n, _ in stages)}) has a "
                                  f"parameter {key!r}" + (f" (stage {target!r})" if target else ""))
    return stages


def output_paths(items, output: str, fmt: str) -> list[Path]:
    """One output per ``(source, key)``: OUT/<key with the new suffix> (see ``cli_support.paths.plan_outputs``),
    or OUT itself when it names an image file and there is one input."""
    from ..cli_support.paths import plan_outputs
    from ..images import IMAGE_SUFFIXES

    out = Path(output)
    if len(items) == 1 and out.suffix.lower() in IMAGE_SUFFIXES and not out.is_dir():
        src = items[0][0]
        if out.exists() and src.exists() and out.resolve() == src.resolve():
            raise StyleCloakError(f"-o {out} is the input itself; choose another output (inputs are never "
                                  "overwritten)")
        return [out]
    return plan_outputs(items, out, lambda src: src.suffix.lower() if fmt == "same" else f".{fmt}")


def run(args, host) -> dict:
    from .base import describe_purifiers

    if args.list_methods:
        return {"purifiers": describe_purifiers()}
    from ..cli import progress_bar
    from ..cli_support.paths import image_seed
    from ..images import load_image, quantize, save_image
    from ..metrics import psnr
    from ..progress import Progress
    from .base import get_purifier, purify, resolve_params

    chain = args._chain
    resolved = [(n, resolve_params(get_purifier(n), p)) for n, p in chain]
    items, outputs = args._plan
    rows = []
    on_step, close = progress_bar(args, 0, "purify (" + ",".join(n for n, _ in chain) + ")")
    progress = Progress(on_step=on_step)
    memory = args.memory   # lowered for the following images after an out-of-memory fallback
    try:
        for (src, key), dst in zip(items, outputs):
            row = {"input": str(src), "output": str(dst)}
            rows.append(row)
            if dst.exists() and not args.overwrite:
                row["status"] = "skipped (exists)"
                continue
            t0 = time.perf_counter()
            try:
                img = load_image(src, max_pixels=args.max_pixels)
            except StyleCloakError as e:
                row.update(status="failed", error=str(e))
                log.warning("%s", e)
                continue
            out, info = purify(host, img.rgb[None], chain, seed=image_seed(args.seed, key), progress=progress,
                               memory=memory)
            mem = info["memory"]
            if mem is not None and mem["fallbacks"]:
                memory = mem["name"]
            same = out.shape[-2:] == img.rgb.shape[-2:]
            notes = save_image(dst, out[0], like=img if same else None)  # alpha cannot follow a size change
            row.update(status="written", width=int(out.shape[-1]), height=int(out.shape[-2]),
                       psnr_to_input=round(float(psnr(quantize(out), img.rgb[None])), 3) if same else None,
                       seconds=round(time.perf_counter() - t0, 3), warnings=list(img.warnings) + list(notes),
                       stages=[{k2: v for k2, v in st.items() if k2 != "params"} for st in info["chain"]],
                       memory=None if mem is None else {"name": mem["name"], "fallbacks": mem["fallbacks"]})
    except OutputError as e:
        raise RunError(str(e), summary=_summary(args, resolved, rows)) from e
    finally:
        close()
    return _summary(args, resolved, rows)


def _summary(args, resolved, rows) -> dict:
    from ..cli_support.paths import status_counts

    count = status_counts(rows)
    return {"chain": [{"name": n, "params": p} for n, p in resolved], "preset": args.preset,
            "memory": args.memory, "output": str(args.output), **count, "images": rows}
