"""Start an atelier training work folder from a finished world folder, so a later phase can continue it.

    python -m protect_core.worlds.atelier.train --from protect_core/assets/atelier --out atelier_ft \\
        --phases decoder --set decoder_steps=2000

A finished world ships only its safetensors and ``train_log.json``; the trainer's phases read their predecessors'
``*_done.pt`` files from the work folder. :func:`seed_work` writes those files from the world folder (the same
tensors, bit for bit, and the logged histories), so ``decoder`` (decoder-only fine-tuning: the encoder, and with
it the latent space the UNet learned, stays the same) or a ``unet`` continuation can run on the shipped copy
without retraining what it already has. Files already in the work folder are left alone.
"""
from __future__ import annotations

import json
from pathlib import Path

from . import configs


def _tensors(path: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(path))


def _weights(folder: Path, sub: str) -> dict:
    files = sorted((folder / sub).glob("*.safetensors"))
    if not files:
        raise SystemExit(f"{folder / sub}: no safetensors weights (is {folder} a finished atelier world?)")
    out = {}
    for f in files:
        out.update(_tensors(f))
    return out


def seed_work(world_dir: Path, work: Path, log=print) -> list[str]:
    """Write ``vae_done.pt``, ``unet_done.pt`` and ``judge_done.pt`` into ``work`` from ``world_dir``; returns the
    names written (an existing file is kept: a folder already under way is never overwritten)."""
    from .train import _save

    world_dir, work = Path(world_dir), Path(work)
    if not (world_dir / configs.CONFIG_FILE).is_file():
        raise SystemExit(f"{world_dir}: not an atelier world folder (no {configs.CONFIG_FILE})")
    logf = world_dir / configs.LOG_FILE
    log_data = json.loads(logf.read_text()) if logf.is_file() else {}
    seconds = log_data.get("seconds", {})
    vae_cfg = json.loads((world_dir / "vae" / "config.json").read_text())
    scale = float(vae_cfg.get("scaling_factor", log_data.get("scaling_factor", 1.0)))
    work.mkdir(parents=True, exist_ok=True)
    written = []
    items = {
        "vae_done.pt": lambda: {"model": _weights(world_dir, "vae"), "hist": log_data.get("vae", []),
                                "seconds": float(seconds.get("vae", 0.0))},
        "unet_done.pt": lambda: {"unet": _weights(world_dir, "unet"), "te": _weights(world_dir, "text_encoder"),
                                 "hist": log_data.get("unet", []), "scale": scale,
                                 "seconds": float(seconds.get("unet", 0.0))},
        "judge_done.pt": lambda: {"model": _tensors(world_dir / configs.CLASSIFIER_FILE),
                                  "hist": log_data.get("judge", []), "seconds": float(seconds.get("judge", 0.0))},
    }
    for name, make in items.items():
        if (work / name).is_file():
            continue
        _save(work / name, make())
        written.append(name)
    if log_data.get("decoder") and not (work / "decoder_done.pt").is_file():
        log(f"note: {world_dir} already has a fine-tuned decoder; it is the starting point of a new decoder phase")
    log(f"work folder {work}: {', '.join(written) or 'nothing'} written from {world_dir}")
    return written

