"""The ``toy`` world's entry points for the registry (delegating to :mod:`protect_core.toy.model`)."""
from __future__ import annotations


def available(path) -> bool:
    from ..toy.model import toy_available

    return toy_available(path)


def build_host(device, dtype, path):
    from ..toy.model import build_toy_host

    return build_toy_host(device, dtype, path=path)


def load_judge(path):
    from ..toy.model import load_style_classifier

    return load_style_classifier(path)


def world_config(path) -> dict:
    from ..toy.model import toy_world

    return toy_world(path)
