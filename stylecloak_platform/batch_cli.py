"""``stylecloak batch SRC... -o DST``: cloak a whole gallery on Ray, resumable from its manifest.

The cloak flags are ``stylecloak cloak``'s (method, intensity, eps, steps, layers, options, format, tile, memory,
``--batch-size``: the images cloaked together, which also fixes the job's groups), checked the same way before Ray
or any model starts. Added: ``--ray-address`` (none: a local Ray on this machine), ``--workers``,
``--cpus-per-worker``, ``--gpus-per-worker``, ``--manifest`` (default ``DST/stylecloak-manifest.jsonl``),
``--skip-errors`` and ``--retries``. Finished images (same input content, same settings) are never redone, inputs recorded as errors are tried
again (unless ``--skip-errors``);
outputs that existed before the job are left alone and recorded as skipped (``--overwrite`` redoes everything).
Exit status as every subcommand: 0 all done, 1 some inputs failed (recorded in the manifest), 2 bad request.
"""
from __future__ import annotations

from pathlib import Path

from protect_core.cli_support.values import finite_float, positive_int
from protect_core.errors import StyleCloakError

#: cloak flags that make no sense for a batch job
UNSUPPORTED = ("save_perturbation",)


def add_arguments(parser) -> None:
    from protect_core.cloak.cli import add_arguments as cloak_arguments

    cloak_arguments(parser)
    ray = parser.add_argument_group("Ray")
    ray.add_argument("--ray-address", default=None, metavar="auto|ADDR",
                     help="join this Ray cluster ('auto': the one this machine belongs to; 'HOST:6379' or "
                     "'ray://HOST:10001'); default: start a local Ray on this machine for the job")
    ray.add_argument("--workers", type=positive_int, default=None,
                     help="actors, each loading the model once (default: one per GPU with --gpus-per-worker, else 1)")
    ray.add_argument("--cpus-per-worker", type=finite_float(0, lo_open=True), default=1.0,
                     help="CPUs reserved per actor (its torch threads on CPU; default 1)")
    ray.add_argument("--gpus-per-worker", type=finite_float(0), default=0.0,
                     help="GPUs per actor (1 = one GPU each; fractions share a GPU); > 0 runs on cuda")
    ray.add_argument("--manifest", default=None, metavar="FILE.jsonl",
                     help="the job's record (default: OUT/stylecloak-manifest.jsonl)")
    ray.add_argument("--skip-errors", action="store_true", help="do not retry inputs the manifest records as errors "
                     "(default: a rerun tries them again, e.g. after you fixed the files)")
    ray.add_argument("--retries", type=int, default=2,
                     help="times a group is sent again after its worker died (default 2)")


def check(args) -> None:
    """The cloak command's checks (settings, inputs, outputs), the Ray flags and the manifest."""
    from protect_core.cloak import cli as cloak_cli
    from protect_core.cli_support.paths import check_output_file

    if args.list_methods:
        return
    for flag in UNSUPPORTED:
        if getattr(args, flag, False):
            raise StyleCloakError(f"--{flag.replace('_', '-')} is not available in batch jobs; use stylecloak cloak")
    if args.retries < 0:
        raise StyleCloakError(f"--retries must be >= 0, got {args.retries}")
    if args.gpus_per_worker and args.device == "cpu":
        args.device = "cuda"
    cloak_cli.check(args)
    if args.manifest is None:
        args.manifest = str(Path(args.output) / "stylecloak-manifest.jsonl")
    check_output_file(args.manifest, "--manifest", "job.jsonl")
    _check_model(args)
    from .manifest import Manifest

    Manifest(args.manifest)   # a manifest that cannot be read is refused now, not after Ray started


def _check_model(args) -> None:
    """A local model path must exist (on a cluster it is the workers' path: not checked here)."""
    if args.model is None or args.ray_address is not None:
        return
    from protect_core.backends.loading import _random_specs, spec_options
    from protect_core.tiny_models import FLAVOURS
    from protect_core.worlds import world_names

    if args.model in world_names() + FLAVOURS + tuple(_random_specs()):
        return
    if not Path(args.model).expanduser().exists():
        raise StyleCloakError(f"--model {args.model}: no such model file or folder (expected {spec_options()})")


def needs_host(args) -> bool:
    return False   # the workers load the model, never the driver


def run(args, host) -> dict:
    if args.list_methods:
        from protect_core.cloak.cli import list_methods

        return list_methods()
    from .batch import Job, run_batch

    method, settings = args._settings
    items, outputs = args._plan
    load = {k: v for k, v in (("tokenizer", args.tokenizer), ("prediction_type", args.prediction_type),
                              ("config", args.model_config)) if v}
    load["allow_pickle"] = args.allow_pickle
    run_opts = {"settings": settings, "batch_size": args.batch_size, "max_pixels": args.max_pixels,
                "tile": args.tile, "memory": args.memory, "model": args.model, "device": args.device,
                "dtype": args.dtype}
    job = Job(items=items, outputs=outputs, dst=Path(args.output), settings=settings, run=run_opts,
              manifest=Path(args.manifest), overwrite=args.overwrite, retry_errors=not args.skip_errors)
    summary = run_batch(job, ray_address=args.ray_address, workers=args.workers,
                        cpus_per_worker=args.cpus_per_worker, gpus_per_worker=args.gpus_per_worker,
                        retries=args.retries, load=load, quiet=args.quiet)
    return {"method": settings.method, "intensity": args.intensity, "output": str(args.output), **summary}


def cloak_gallery(src, dst, **flags) -> dict:
    """``stylecloak batch`` from Python, with the same checks: ``cloak_gallery("art/", "out/", method="mist",
    steps=50, workers=4, ray_address="auto")``; keywords are the command's flags (``_`` for ``-``; ``True`` for a
    switch; a list repeats a flag). Bad requests raise :class:`~protect_core.errors.StyleCloakError`; returns the
    summary (``failed`` > 0: some inputs are errors in the manifest)."""
    from protect_core.cli import build_parser

    argv = ["batch", *([str(s) for s in src] if isinstance(src, (list, tuple)) else [str(src)]), "-o", str(dst)]
    for key, value in flags.items():
        flag = "--" + key.replace("_", "-")
        for v in value if isinstance(value, (list, tuple)) else [value]:
            if v is True:
                argv.append(flag)
            elif v not in (None, False):
                argv += [flag, str(v)]
    try:
        args = build_parser(argv).parse_args(argv)
    except SystemExit as e:
        raise StyleCloakError(f"cloak_gallery: invalid arguments {argv[1:]} (exit {e.code})") from None
    check(args)
    return run(args, None)
