"""The ``atelier`` world's entry points for the registry: its folder loads like any diffusers SD folder (the same
code path as :func:`protect_core.toy.model.build_toy_host`), family ``atelier``; its judge is :mod:`.judge`."""
from __future__ import annotations

import json
from pathlib import Path

from ...errors import ModelError
from . import configs


def available(path) -> bool:
    from ...toy.model import toy_available

    return toy_available(path)


def build_host(device, dtype, path):
    from ...toy.model import build_toy_host

    if not available(path):
        raise ModelError(f"{path}: the atelier world is not here; train it with "
                         f"`python -m protect_core.worlds.atelier.train --out {path}`")
    return build_toy_host(device, dtype, path=path, family="atelier")


def load_judge(path):
    from .judge import load_judge as _load

    return _load(path)


def world_config(path) -> dict:
    f = Path(path) / configs.CONFIG_FILE
    if not f.is_file():
        raise ModelError(f"{path}: no atelier world here (missing {configs.CONFIG_FILE})")
    return json.loads(f.read_text())
