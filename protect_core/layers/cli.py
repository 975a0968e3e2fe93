"""``stylecloak layers``: rank cross-attention layers by style sensitivity on the user's images.

    stylecloak layers art/ --top-k 4 -o selection.json --plot layers.png \\
        [--style-prompt "..." --content-prompt "..." --timesteps 200,500,800 --seeds 2 --size 512 --clip CLIP_DIR]
        [--score causal|activation|combined]
    stylecloak layers --preset styleprotect -o selection.json      # a named preset, no analysis
    stylecloak layers --list-presets

The selection file goes to ``stylecloak cloak --layers selection.json`` and ``stylecloak mimicry --layers ...``.
Like every subcommand, an existing ``-o`` (and ``--plot``) file is kept and the run skipped unless ``--overwrite``;
paths and values are checked before the model loads.
"""
from __future__ import annotations

from ..cli_support.values import finite_float, int_range, positive_int
from ..errors import StyleCloakError
from .settings import DEFAULT_CONTENT_PROMPT, DEFAULT_STYLE_PROMPT, SCORES, AnalysisSettings
from .selection import PRESETS, LayerSelection


def add_arguments(parser) -> None:
    d = AnalysisSettings()
    parser.add_argument("inputs", nargs="*", metavar="IMAGES",
                        help="image files and/or folders (one works; 3 or more add the correlation term)")
    parser.add_argument("-o", "--output", help="write the selection JSON here")
    parser.add_argument("--recursive", action="store_true", help="also read images in subfolders")
    parser.add_argument("--top-k", type=positive_int, default=4, help="how many layers to select (default 4)")
    parser.add_argument("--plot", default=None, metavar="PNG", help="also draw the heat map (layers x timesteps)")
    parser.add_argument("--style-prompt", default=DEFAULT_STYLE_PROMPT,
                        help="prompt naming the style (e.g. 'a painting by <artist>')")
    parser.add_argument("--content-prompt", default=DEFAULT_CONTENT_PROMPT,
                        help="the same prompt without the style description")
    parser.add_argument("--timesteps", default=",".join(str(t) for t in d.timesteps),
                        help="comma-separated timesteps (default 200,500,800)")
    parser.add_argument("--seeds", type=positive_int, default=d.seeds, help="noise draws per image and timestep")
    parser.add_argument("--size", type=int_range(8), default=d.size, help="analysis resolution in px (default 512)")
    parser.add_argument("--batch-size", type=positive_int, default=d.batch_size, help="images per UNet call")
    parser.add_argument("--correlation-weight", type=finite_float(0, 1), default=d.correlation_weight,
                        help="lambda of score = B^ (1 + l C) / (1 + l), l = lambda P / (P + 10) for P image "
                             "pairs, B^ the base set by --score; 0 = rank by the base only (default 0.5)")
    parser.add_argument("--score", default=d.score, choices=list(SCORES),
                        help="base of the score: 'activation' (relative change of the layer's output), 'causal' "
                             "(how much the prediction loses when the layer alone reads the content prompt; one "
                             f"extra UNet call per layer) or 'combined' (their geometric mean; default {d.score})")
    parser.add_argument("--clip", default=None, metavar="FOLDER",
                        help="a local CLIP vision model folder as the style model (default: offline VAE-Gram)")
    parser.add_argument("--preset", default=None, choices=list(PRESETS),
                        help="write a named preset instead of analysing (checked against the model)")
    parser.add_argument("--list-presets", action="store_true", help="list the presets and exit")
    parser.add_argument("--overwrite", action="store_true", help="redo the selection (and plot) if the files exist "
                        "(default: keep them and skip)")
    from ..cli import add_max_pixels

    add_max_pixels(parser)


def check(args) -> None:
    """Outputs, timesteps and inputs, before the model loads."""
    if args.list_presets:
        return
    if not args.output:
        raise StyleCloakError("no output file; pass -o selection.json")
    from ..cli_support.paths import check_output_file, clean_stale_temps

    outputs = [check_output_file(args.output, "-o", "selection.json")]
    if args.plot:
        if args.preset:
            raise StyleCloakError("--plot needs an analysis, but --preset writes a named selection without one; "
                                  "drop --plot or --preset")
        outputs.append(check_output_file(args.plot, "--plot", "layers.png"))
        if outputs[0].resolve() == outputs[1].resolve():
            raise StyleCloakError("-o and --plot name the same file; give them different names")
    args._outputs = outputs
    clean_stale_temps({o.parent for o in outputs}, [o.name for o in outputs])
    if not args.preset:
        parse_timesteps(args.timesteps)  # a malformed flag is a bad request even when the run would be skipped
    if args.preset or _done(args):
        return
    if not args.inputs:
        raise StyleCloakError("no input images; usage: stylecloak layers IMAGES... -o selection.json "
                              "(or --preset NAME / --list-presets)")
    from ..images import list_images, load_image

    args._files = list_images(args.inputs, recursive=args.recursive)
    args._images = [load_image(f, max_pixels=args.max_pixels).rgb for f in args._files]


def _done(args) -> bool:
    return not args.overwrite and all(o.exists() for o in args._outputs)


def needs_host(args) -> bool:
    """No model for --list-presets or when the outputs exist (skipped); presets are checked against the model,
    so they load it."""
    return not args.list_presets and not _done(args)


def parse_timesteps(text: str) -> tuple[int, ...]:
    try:
        ts = tuple(int(x) for x in str(text).replace(" ", "").split(",") if x)
    except ValueError:
        raise ValueError(f"--timesteps expects comma-separated integers like 200,500,800, got {text!r}") from None
    if not ts:
        raise ValueError("--timesteps is empty")
    return ts


def _compact(row: dict) -> dict:
    keys = ("rank", "name", "ldm_name", "score", "sensitivity", "causal", "correlation", "strength")
    return {k: (round(row[k], 5) if isinstance(row.get(k), float) else row.get(k)) for k in keys}


def run(args, host) -> dict:
    if args.list_presets:
        return {"presets": PRESETS}
    if _done(args):
        return {"output": str(args.output), "status": "skipped (exists)", "skipped": 1,
                "note": "the selection exists; pass --overwrite to redo it"}
    if args.preset:
        sel = LayerSelection.from_preset(args.preset, host)
        path = sel.save(args.output)
        return {"output": str(path), "source": sel.source, "selected": sel.names, "ldm_names": sel.ldm_layers}
    from ..cli import progress_bar
    from ..progress import Progress
    from .analysis import analyse_layers
    from .descriptor import ClipDescriptor
    from .heatmap import save_heatmap

    settings = AnalysisSettings(style_prompt=args.style_prompt, content_prompt=args.content_prompt,
                                timesteps=parse_timesteps(args.timesteps), seeds=args.seeds, seed=args.seed,
                                size=args.size, batch_size=args.batch_size,
                                correlation_weight=args.correlation_weight, score=args.score)
    files, images = args._files, args._images
    descriptor = ClipDescriptor(args.clip) if args.clip else None
    on_step, close = progress_bar(args, 0, "layers")
    try:
        analysis = analyse_layers(host, images, settings, descriptor, Progress(on_step=on_step))
    finally:
        close()
    sel = LayerSelection.from_analysis(analysis, args.top_k)
    sel.settings["images"] = [str(f) for f in files]
    plot = str(save_heatmap(sel, args.plot)) if args.plot else None   # first: the selection file marks "done"
    path = sel.save(args.output)
    summary = {"output": str(path), "images": len(files), "descriptor": analysis.descriptor,
               "selected": sel.names, "ldm_names": sel.ldm_layers, "notes": analysis.notes,
               "table": [_compact(r) for r in sel.table]}
    if plot:
        summary["plot"] = plot
    return summary
