"""The ``stylecloak`` command line (also ``python -m protect_core``).

Each block contributes one subcommand from its own ``cli`` module, which provides ``add_arguments(parser)`` and
``run(args, host) -> dict``, and optionally ``check(args)`` (validate paths and values, plan the work: runs before
any model is loaded, so no error arrives after minutes of work) and ``needs_host(args) -> bool`` (default True):
when it returns False (listings, filter-only purify chains, resumed runs with nothing left) no model is loaded and
``run`` gets ``host=None``. Blocks that read images add ``--max-pixels`` with :func:`add_max_pixels`.

This module owns what they share: model selection (default: the shipped toy model), device (checked before the
model loads), seed, logging, the progress bar, the JSON summary, and the error boundary
(:mod:`protect_core.cli_support.boundary`: one line per failure, exit 2 for requests that cannot work, 1 for work
that failed or was incomplete, 130/143 for Ctrl-C/SIGTERM). Building the parser imports no torch: only the chosen
subcommand's module is imported, and the block modules import their heavy parts inside functions.
"""
from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import sys
import time

from . import __version__
from .cli_support import values
from .cli_support.boundary import report, signals_as_interrupts

#: subcommand -> (module, help). A block's module is imported only when its subcommand is used.
COMMANDS = {
    "cloak": ("protect_core.cloak.cli", "add a protective cloak to images"),
    "layers": ("protect_core.layers.cli", "rank cross-attention layers by style sensitivity"),
    "purify": ("protect_core.purify.cli", "attack a cloak: IMPRESS, DiffPure, noisy upscale, filters"),
    "mimicry": ("protect_core.mimicry.cli", "fine-tune, generate and score how much style was copied"),
    "train-generator": ("protect_core.generator.cli", "train a one-pass cloak network for a model (method instant)"),
    "info": ("protect_core.info_cli", "describe a model as StyleCloak sees it (default: the shipped toy model)"),
    # the platform layer (pip install "stylecloak[ray]"): its own package; protect_core never imports Ray
    "batch": ("stylecloak_platform.batch_cli", "cloak a whole gallery on Ray, resumable from its manifest"),
    "serve": ("stylecloak_platform.serve_cli", "an HTTP upload service on Ray Serve (cloaked PNG + report)"),
}


#: ``protect_core.images.DEFAULT_MAX_PIXELS``, repeated so that the parser does not import torch (a test checks)
DEFAULT_MAX_PIXELS = 4096 * 4096


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors: ``stylecloak cloak: error: argument --eps: ... (see ... --help)``."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _chosen(argv) -> str | None:
    first = next((a for a in argv if not a.startswith("-")), None)
    return first if first in COMMANDS else None


def build_parser(argv=None) -> argparse.ArgumentParser:
    """The parser. With ``argv`` only the subcommand it names gets its arguments (and its module imported), so
    ``stylecloak --help`` imports nothing heavy; without, every subcommand is complete (documentation, tests)."""
    chosen = _chosen(argv) if argv is not None else None
    p = _Parser(prog="stylecloak", description="Protect artwork from style mimicry, attack "
                "protections, and test mimicry with Stable Diffusion models.",
                epilog="Without --model every command uses the shipped toy model "
                "(protect_core/assets/toy), which runs on a CPU in seconds but knows only toy "
                "styles; pass --model with an SD 1.x/2.x/XL checkpoint or diffusers folder to "
                "protect real art. `stylecloak COMMAND --help` lists each command's options. Exit status: 0 done, "
                "1 not everything was written, 2 bad request (nothing done), 130/143 interrupted/terminated.")
    p.add_argument("--version", action="version", version=f"stylecloak {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name, (module, help_) in COMMANDS.items():
        sp = sub.add_parser(name, help=help_, description=help_)
        sp.set_defaults(_module=module)
        if argv is None or chosen == name:
            _add_common(sp)
            importlib.import_module(module).add_arguments(sp)
    return p


def _add_common(sp) -> None:
    common = sp.add_argument_group("model and run")
    common.add_argument("--model", default=None, help="diffusers folder, SD 1.x/2.x/XL .safetensors checkpoint, "
                        "toy, tiny / tiny-v / tiny-xl, or sd15-random / sd2-random / sd2-v-random / sdxl-random "
                        "(default: the shipped toy model, protect_core/assets/toy: SD 1.x architecture at toy "
                        "size trained on procedural styles; good for trying every command on a CPU, not for "
                        "protecting real art: pass your SD checkpoint for that)")
    common.add_argument("--tokenizer", default=None, help="folder with the CLIP tokenizer (vocab.json, "
                        "merges.txt) for real checkpoints; see README 'Models and offline loading'")
    common.add_argument("--prediction-type", default=None, choices=["epsilon", "v_prediction"],
                        help="override the model's parameterisation (SD 2.x files do not say)")
    common.add_argument("--model-config", default=None, help="sd15 / sd2 / sd2-v / sdxl or a diffusers folder "
                        "describing the checkpoint (default: detected)")
    common.add_argument("--allow-pickle", action="store_true", help="accept .ckpt/.pt/.bin files, read with "
                        "torch.load(weights_only=True) only; prefer converting them to .safetensors")
    common.add_argument("--device", default="cpu", type=values.device_name,
                        help="cpu, cuda, cuda:1, mps, xpu (default: cpu); checked before the model loads")
    common.add_argument("--dtype", default=None, choices=["fp32", "fp16", "bf16"], help="model precision")
    common.add_argument("--seed", type=values.seed_int, default=0, help="random seed, 0 to 2^63-1 (same seed, same "
                        "output bytes; each image's randomness comes from the seed and its own name)")
    common.add_argument("--summary", default=None, metavar="FILE.json", help="also write the JSON summary to "
                        "this file (rewritten by every run: it describes that run)")
    common.add_argument("--quiet", action="store_true", help="no progress bar")
    common.add_argument("--debug", action="store_true", help="on an unexpected error also print its traceback")


def main(argv=None) -> int:
    """The ``stylecloak`` command; returns the exit status. Output piped into a reader that stops early (``| head``)
    ends quietly instead of with a BrokenPipeError traceback (the Python documentation's recipe)."""
    try:
        status = _main(argv)
        sys.stdout.flush()
        return status
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # Python's own flush at exit would raise again
        return 1


def _main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help(sys.stderr)
        return 2
    logging.basicConfig(level=logging.WARNING, format="stylecloak: %(message)s")
    module = importlib.import_module(args._module)
    t0 = time.time()
    host = None
    with signals_as_interrupts():
        try:
            if args.summary:
                from .cli_support.paths import check_output_file

                check_output_file(args.summary, "--summary", "summary.json")
            if hasattr(module, "check"):
                module.check(args)
            if needs_host(module, args):
                values.check_device(args.device)
                host = load_model(args)
            summary = module.run(args, host)
        except BaseException as e:   # noqa: BLE001 - the boundary: one line and an exit code for everything
            if isinstance(e, SystemExit):
                raise
            partial = getattr(e, "summary", None)
            if partial:
                _emit(args, {"command": args.command, "version": __version__, "error": str(e), **partial})
            return report(e, debug=getattr(args, "debug", False))
        summary = {"command": args.command, "version": __version__, "seconds": round(time.time() - t0, 3),
                   **({"model": host.describe()} if host is not None else {}), **(summary or {})}
        try:
            _emit(args, summary)
        except BaseException as e:   # noqa: BLE001 - e.g. the --summary file's disk filled up
            if isinstance(e, SystemExit):
                raise
            return report(e, debug=getattr(args, "debug", False))
    failed = int(summary.get("failed") or 0)
    if failed:
        total = failed + int(summary.get("written") or 0) + int(summary.get("skipped") or 0)
        print(f"stylecloak: {failed} of {total} input(s) failed (listed in the summary); the others are done. Fix "
              "them and rerun the same command: finished outputs are skipped", file=sys.stderr)
        return 1
    return 0


def _emit(args, summary: dict) -> None:
    text = json.dumps(summary, indent=2, default=str)
    print(text)
    if args.summary:
        from .atomic import atomic_write_text

        atomic_write_text(args.summary, text + "\n")


def needs_host(module, args) -> bool:
    """Whether the subcommand needs the model for these arguments (the block's ``needs_host`` hook, default True)."""
    hook = getattr(module, "needs_host", None)
    return True if hook is None else bool(hook(args))


def load_model(args):
    """The HostModel for the common model flags (``--model`` None: the shipped toy model)."""
    from .backends import loading

    extra = {k: v for k, v in (("tokenizer", args.tokenizer), ("prediction_type", args.prediction_type),
                               ("config", args.model_config)) if v}
    return loading.load_host(args.model, device=args.device, dtype=args.dtype, allow_pickle=args.allow_pickle,
                             **extra)


def parse_max_pixels(text: str) -> int:
    """``--max-pixels`` value: a pixel count (``67108864``, ``64e6``) or a size ``WxH`` (``8192x8192``)."""
    raw = str(text).strip().lower().replace(" ", "")
    try:
        if "x" in raw:
            w, h = raw.split("x")
            value = int(w) * int(h)
        else:
            value = int(float(raw))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a pixel count like 67108864 or a size like 8192x8192, got "
                                         f"{text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1 pixel, got {text!r}")
    return value


def add_max_pixels(parser, note: str = "") -> None:
    """The ``--max-pixels`` flag of every subcommand that reads images (passed to ``images.load_image``)."""
    side = int(DEFAULT_MAX_PIXELS ** 0.5)
    parser.add_argument("--max-pixels", type=parse_max_pixels, default=DEFAULT_MAX_PIXELS, metavar="N|WxH",
                        help=f"largest input image accepted, as a pixel count or WxH (default {side}x{side}); "
                        "larger files are refused from their header before decoding. Raise it if the machine "
                        "has the memory" + (f"; {note}" if note else ""))


def progress_bar(args, total: int, desc: str):
    """A tqdm-backed ``on_step`` callback (or None with --quiet / no tqdm)."""
    if getattr(args, "quiet", False):
        return None, lambda: None
    try:
        from tqdm import tqdm
    except ImportError:
        return None, lambda: None
    bar = tqdm(total=total, desc=desc, unit="step", file=sys.stderr, leave=False)

    def on_step(done, total_, info):
        bar.total = total_
        bar.n = done
        loss = info.get("loss")
        if loss is not None:
            bar.set_postfix(loss=f"{float(loss):.4g}", refresh=False)
        bar.refresh()

    return on_step, bar.close


if __name__ == "__main__":  # python -m protect_core.cli (same as python -m protect_core)
    sys.exit(main())
