"""StyleCloak's ComfyUI node pack (V3 schema): thin glue from ComfyUI types to protect_core's blocks.

Node modules are listed in ``NODE_MODULES``; each exposes its node classes, and :func:`node_list` gathers them.
A module whose block is not available is skipped with a log line, so one broken block never hides the others.
"""
from __future__ import annotations

import importlib
import logging

NODE_MODULES = ("io_nodes", "cloak_nodes", "layers_nodes", "purify_nodes", "mimicry_nodes")

log = logging.getLogger("StyleCloak")


def node_list() -> list:
    from comfy_api.latest import io

    nodes = []
    for name in NODE_MODULES:
        try:
            mod = importlib.import_module(f"{__name__}.{name}")
        except ImportError as e:
            log.warning("StyleCloak: %s not loaded: %s", name, e)
            continue
        nodes += [obj for obj in vars(mod).values()
                  if isinstance(obj, type) and issubclass(obj, io.ComfyNode) and obj.__module__ == mod.__name__]
    return nodes


async def comfy_entrypoint():
    from comfy_api.latest import ComfyExtension

    class StyleCloakExtension(ComfyExtension):
        async def get_node_list(self):
            return node_list()

    return StyleCloakExtension()
