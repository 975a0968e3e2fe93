"""Measurement worlds: trained, shipped stand-ins for "Stable Diffusion + a set of artists", found by name.

A world is a model folder (a diffusers pipeline, safetensors only) plus its artists (seeded procedural painters),
which of them are held out, and a judge (a style classifier). The engine's loader finds worlds here, so
``--model toy`` and ``--model atelier`` go through one registry and no engine module imports a world directly.

* ``toy``: 32 px, x8 VAE (4 x 4 latent), ten geometric styles; fast, used by tests and the quick CI checks
  (:mod:`protect_core.toy`).
* ``atelier``: 64 px, x4 VAE (16 x 16 latent), SD 1.5's UNet topology with its 16 cross-attention layers, sixteen
  textured artists (twelve trained, three held out, one dev) (:mod:`protect_core.worlds.atelier`).

``register_world(World(...))`` adds one; every callable is imported lazily so listing worlds costs nothing.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class World:
    name: str
    summary: str
    asset_dir: Path
    styles_module: str  # module with ARTISTS/STYLES, HELD_OUT, render(...), prompt_for(...)
    model_module: str   # module with available(path), build_host(device, dtype, path), load_judge(path)

    def at(self, path) -> "World":
        """This world with its model folder at ``path`` (e.g. a freshly trained one); ``None``: unchanged."""
        import dataclasses

        return self if path is None else dataclasses.replace(self, asset_dir=Path(path))

    def _model(self):
        return importlib.import_module(self.model_module)

    def styles(self):
        return importlib.import_module(self.styles_module)

    def available(self, path=None) -> bool:
        return self._model().available(path or self.asset_dir)

    def build_host(self, device="cpu", dtype=None, path=None):
        import torch

        return self._model().build_host(device, dtype or torch.float32, path or self.asset_dir)

    def load_judge(self, path=None):
        return self._model().load_judge(path or self.asset_dir)

    def config(self, path=None) -> dict:
        return self._model().world_config(path or self.asset_dir)


_WORLDS: dict[str, World] = {}


def register_world(world: World) -> World:
    if world.name in _WORLDS and _WORLDS[world.name] != world:
        raise ValueError(f"a different world is already registered as {world.name!r}")
    _WORLDS[world.name] = world
    return world


def world_names() -> tuple[str, ...]:
    return tuple(_WORLDS)


def get_world(name: str) -> World:
    if name not in _WORLDS:
        raise KeyError(f"unknown world {name!r}; known: {', '.join(_WORLDS)}")
    return _WORLDS[name]


_ASSETS = Path(__file__).resolve().parent.parent / "assets"
register_world(World("toy", "32 px, 4x4 latent, ten geometric styles (fast; tests)", _ASSETS / "toy",
                     "protect_core.toy.styles", "protect_core.worlds.toy_world"))
register_world(World("atelier", "64 px, 16x16 latent, SD 1.5 UNet topology, sixteen textured artists",
                     _ASSETS / "atelier", "protect_core.worlds.atelier.styles", "protect_core.worlds.atelier.model"))
