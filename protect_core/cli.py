"""The ``stylecloak`` command line (also ``python -m protect_core``).

Each block contributes one subcommand from its own ``cli`` module, which provides ``add_arguments(parser)`` and
``run(args, host) -> dict``, and optionally ``needs_host(args) -> bool`` (default True): when it returns False
(listings, filter-only purify chains, requests that will fail anyway) no model is loaded and ``run`` gets
``host=None``. Blocks that read images add ``--max-pixels`` with :func:`add_max_pixels`. This module owns what
they share: model selection (default: the shipped toy model), device, seed, logging, the progress bar, the JSON
summary and turning expected errors into one clear message (exit code 2) instead of a traceback.
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
from .errors import Cancelled, StyleCloakError

#: subcommand -> (module, help). A block's module is imported only when its subcommand is used.
COMMANDS = {
    "cloak": ("protect_core.cloak.cli", "add a protective cloak to images"),
    "layers": ("protect_core.layers.cli", "rank cross-attention layers by style sensitivity"),
    "purify": ("protect_core.purify.cli", "attack a cloak: IMPRESS, DiffPure, noisy upscale, filters"),
    "mimicry": ("protect_core.mimicry.cli", "fine-tune, generate and score how much style was copied"),
    "info": ("protect_core.info_cli", "describe a model as StyleCloak sees it (default: the shipped toy model)"),
}


def _available():
    found = {}
    for name, (module, help_) in COMMANDS.items():
        try:
            importlib.util.find_spec(module)
        except ModuleNotFoundError:
            continue
        if importlib.util.find_spec(module) is not None:
            found[name] = (module, help_)
    return found


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="stylecloak", description="Protect artwork from style mimicry, attack "
                                "protections, and test mimicry with Stable Diffusion models.",
                                epilog="Without --model every command uses the shipped toy model "
                                "(protect_core/assets/toy), which runs on a CPU in seconds but knows only toy "
                                "styles; pass --model with an SD 1.x/2.x/XL checkpoint or diffusers folder to "
                                "protect real art. `stylecloak COMMAND --help` lists each command's options.")
    p.add_argument("--version", action="version", version=f"stylecloak {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_) in _available().items():
        sp = sub.add_parser(name, help=help_, description=help_)
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
        common.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, mps (default: cpu)")
        common.add_argument("--dtype", default=None, choices=["fp32", "fp16", "bf16"], help="model precision")
        common.add_argument("--seed", type=int, default=0, help="random seed (same seed, same output bytes)")
        common.add_argument("--summary", default=None, help="also write the JSON summary to this file")
        common.add_argument("--quiet", action="store_true", help="no progress bar")
        importlib.import_module(module).add_arguments(sp)
        sp.set_defaults(_module=module)
    return p


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
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 1
    logging.basicConfig(level=logging.WARNING, format="stylecloak: %(message)s")
    module = importlib.import_module(args._module)
    t0 = time.time()
    try:
        host = load_model(args) if needs_host(module, args) else None
        summary = module.run(args, host)
    except Cancelled as e:
        print(f"stylecloak: {e}", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print("stylecloak: interrupted; finished files are complete, unfinished ones were not written",
              file=sys.stderr)
        return 130
    except (StyleCloakError, ValueError, FileNotFoundError) as e:
        print(f"stylecloak: error: {e}", file=sys.stderr)
        return 2
    summary = {"command": args.command, "version": __version__, "seconds": round(time.time() - t0, 3),
               **({"model": host.describe()} if host is not None else {}), **(summary or {})}
    text = json.dumps(summary, indent=2, default=str)
    print(text)
    if args.summary:
        from .images import atomic_write_text

        atomic_write_text(args.summary, text + "\n")
    return 0


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
    from .images import DEFAULT_MAX_PIXELS

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
