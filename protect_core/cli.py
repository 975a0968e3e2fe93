"""The ``stylecloak`` command line (also ``python -m protect_core``).

Each block contributes one subcommand from its own ``cli`` module, which provides ``add_arguments(parser)`` and
``run(args, host) -> dict``. This module owns what they share: model selection, device, seed, logging, the progress
bar, the JSON summary and turning expected errors into one clear message (exit code 2) instead of a traceback.
"""
from __future__ import annotations

import argparse
import importlib
import json
import logging
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
    "info": ("protect_core.info_cli", "describe a model as StyleCloak sees it"),
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
                                "protections, and test mimicry with Stable Diffusion models.")
    p.add_argument("--version", action="version", version=f"stylecloak {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_) in _available().items():
        sp = sub.add_parser(name, help=help_, description=help_)
        common = sp.add_argument_group("model and run")
        common.add_argument("--model", default=None, help="diffusers folder, SD 1.x/2.x/XL .safetensors checkpoint, "
                            "tiny / tiny-v / tiny-xl, or sd15-random / sd2-random / sd2-v-random / sdxl-random "
                            "(default: the embedded model)")
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
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 1
    logging.basicConfig(level=logging.WARNING, format="stylecloak: %(message)s")
    module = importlib.import_module(args._module)
    t0 = time.time()
    try:
        from .backends.loading import load_host

        extra = {k: v for k, v in (("tokenizer", args.tokenizer), ("prediction_type", args.prediction_type),
                                   ("config", args.model_config)) if v}
        host = load_host(args.model, device=args.device, dtype=args.dtype, allow_pickle=args.allow_pickle, **extra)
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
               "model": host.describe(), **(summary or {})}
    text = json.dumps(summary, indent=2, default=str)
    print(text)
    if args.summary:
        from .images import atomic_write_text

        atomic_write_text(args.summary, text + "\n")
    return 0


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
