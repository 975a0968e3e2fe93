"""A one-pass generator's file: safetensors weights, the training settings as metadata, and a probe of its model.

The file holds the network's tensors, ``probe`` (the model's VAE latent of a fixed seeded image: a fingerprint of
the model the generator was trained for) and one metadata entry ``stylecloak_generator`` (JSON: architecture,
eps, objective, training settings, what it was trained on). Reading never unpickles anything.

Finding a generator for a loaded model (:func:`find_for_host`): the first ``*generator*.safetensors`` in the folders
of ``STYLECLOAK_GENERATOR_PATH`` (``os.pathsep``-separated; files named there directly count too), then in the
registered worlds' model folders, whose probe matches the model's (relative error below :data:`PROBE_TOLERANCE`).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from ..errors import StyleCloakError
from .network import ARCH_KEYS, CloakNet

META_KEY = "stylecloak_generator"
FORMAT = 1
#: relative L2 distance between probes below which a generator counts as trained for the model (dtype noise only)
PROBE_TOLERANCE = 0.02
ENV_PATH = "STYLECLOAK_GENERATOR_PATH"


def probe_image(factor: int) -> torch.Tensor:
    """The fixed seeded image whose latent fingerprints a model: (1, 3, 8f, 8f) in [0, 1] (smooth + detail)."""
    g = torch.Generator().manual_seed(20260301)
    side = 8 * int(factor)
    coarse = torch.rand(1, 3, 4, 4, generator=g)
    smooth = torch.nn.functional.interpolate(coarse, size=(side, side), mode="bilinear", align_corners=False)
    return (0.7 * smooth + 0.3 * torch.rand(1, 3, side, side, generator=g)).clamp(0, 1)


@torch.no_grad()
def model_probe(host) -> torch.Tensor:
    """The model's scaled VAE posterior mean of :func:`probe_image` (float32, CPU); call inside ``host.borrowed()``."""
    x = probe_image(host.vae_scale_factor).to(host.device)
    return host.encode(x * 2 - 1).detach().float().cpu()


def probe_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    if a.shape != b.shape:
        return float("inf")
    return float((a - b).norm() / b.norm().clamp_min(1e-8))


def save_generator(path, net: CloakNet, probe: torch.Tensor, meta: dict) -> Path:
    """Write the generator file atomically (complete or absent)."""
    from safetensors.torch import save

    from ..atomic import atomic_write_bytes

    tensors = {f"net.{k}": v.detach().contiguous().cpu() for k, v in net.state_dict().items()}
    tensors["probe"] = probe.detach().contiguous().cpu().float()
    info = {"format": FORMAT, **net.arch(), **meta}
    return atomic_write_bytes(path, save(tensors, metadata={META_KEY: json.dumps(info, sort_keys=True)}))


def read_meta(path) -> dict:
    """The metadata of a generator file; StyleCloakError (one line) for anything that is not one."""
    from safetensors import safe_open

    p = Path(path)
    if not p.is_file():
        raise StyleCloakError(f"generator '{p}': no such file")
    try:
        with safe_open(str(p), framework="pt") as f:
            raw = (f.metadata() or {}).get(META_KEY)
    except Exception as e:  # noqa: BLE001 - safetensors raises several types for a damaged header
        raise StyleCloakError(f"generator '{p}' is not a readable safetensors file ({e})") from None
    if raw is None:
        raise StyleCloakError(f"'{p}' is a safetensors file but not a StyleCloak generator (no '{META_KEY}' "
                              "metadata); make one with `stylecloak train-generator`")
    try:
        meta = json.loads(raw)
        if int(meta.get("format", 0)) != FORMAT or any(k not in meta for k in (*ARCH_KEYS, "eps")):
            raise ValueError("missing fields")
    except (ValueError, TypeError, AttributeError) as e:
        raise StyleCloakError(f"generator '{p}': unreadable metadata ({e}); retrain it with this version") from None
    return meta


def load_generator(path, device="cpu") -> tuple[CloakNet, torch.Tensor, dict]:
    """(network in eval mode on ``device``, its model probe, its metadata) from a generator file."""
    from safetensors.torch import load_file

    meta = read_meta(path)
    try:
        tensors = load_file(str(path))
        net = CloakNet(**{k: int(meta[k]) for k in ARCH_KEYS})
        net.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("net.")}, strict=True)
        probe = tensors["probe"]
    except (RuntimeError, KeyError, ValueError) as e:
        raise StyleCloakError(f"generator '{path}': weights do not match its metadata ({str(e).splitlines()[0]})") \
            from None
    net.requires_grad_(False)
    # channels-last weights and activations: the CPU convolutions are faster that way (same values)
    return net.eval().to(device).to(memory_format=torch.channels_last), probe, meta


def search_paths() -> list[Path]:
    """Where :func:`find_for_host` looks: ``STYLECLOAK_GENERATOR_PATH`` first (the user's own generators win),
    then the registered worlds' folders."""
    from ..worlds import get_world, world_names

    paths = [Path(p) for p in os.environ.get(ENV_PATH, "").split(os.pathsep) if p.strip()]
    return paths + [get_world(n).asset_dir for n in world_names()]


def candidates() -> list[Path]:
    out = []
    for p in search_paths():
        if p.is_file() and p.suffix == ".safetensors":
            out.append(p)
        elif p.is_dir():
            out += sorted(p.glob("*generator*.safetensors"))
    return out


def find_for_host(host, probe: torch.Tensor | None = None) -> Path:
    """The first generator file (see the module docstring) trained for ``host``'s model, or StyleCloakError saying
    how to make one."""
    from safetensors import safe_open

    probe = model_probe(host) if probe is None else probe
    for path in candidates():
        try:
            read_meta(path)
            with safe_open(str(path), framework="pt") as f:
                theirs = f.get_tensor("probe")
        except Exception:  # noqa: BLE001 - an unreadable candidate (StyleCloakError included) is not a match
            continue
        if probe_distance(probe, theirs) < PROBE_TOLERANCE:
            return path
    raise StyleCloakError("no one-pass generator found for this model; train one with `stylecloak train-generator "
                          "--model YOUR_MODEL --images YOUR_ART/ --out gen.safetensors` and pass --option "
                          f"generator=gen.safetensors (or put its folder in {ENV_PATH})")
