"""The ComfyUI node pack under fake ComfyUI modules, shared by the node test files (import the fixtures).

``pack`` (module scope) installs tests/fake_comfy.py's stand-ins of ComfyUI's modules for ONE test module and removes
them afterwards, StyleCloak's ``nodes`` package included, so no other test sees them; ``interrupt_flag`` resets
ComfyUI's interrupt flag and progress bar around a test. ``PACK_IDS``: every node id the pack must register.
"""
from __future__ import annotations

import sys
import types
from pathlib import Path

import pytest
import torch

import fake_comfy
from ldm_tiny import EPS, V_PREDICTION

ROOT = Path(__file__).resolve().parents[1]
PACK_IDS = {"StyleCloak_CloakImage", "StyleCloak_ProtectionReport", "StyleCloak_SelectStyleLayers",
            "StyleCloak_LayerPreset", "StyleCloak_SaveLayerSelection", "StyleCloak_LoadLayerSelection",
            "StyleCloak_Purify", "StyleCloak_MimicryTest", "StyleCloak_LoadImageFolder"}
#: Core ComfyUI nodes the example workflows use: (input name -> type, output types).
CORE_NODES = {
    "CheckpointLoaderSimple": ({"ckpt_name": "COMBO"}, ["MODEL", "CLIP", "VAE"]),
    "LoadImage": ({"image": "COMBO"}, ["IMAGE", "MASK"]),
    "SaveImage": ({"images": "IMAGE", "filename_prefix": "STRING"}, []),
    "PreviewImage": ({"images": "IMAGE"}, []),
}


@pytest.fixture(scope="module")
def pack(tmp_path_factory):
    restore = fake_comfy.install(str(tmp_path_factory.mktemp("comfy")), EPS, V_PREDICTION)
    try:
        import nodes
        from nodes import cloak_nodes, comfy_glue, comfy_host, purify_nodes

        yield types.SimpleNamespace(
            nodes=nodes, glue=comfy_glue, cloak=cloak_nodes, purify=purify_nodes, host=comfy_host,
            by_id={c.define_schema().node_id: c for c in nodes.node_list()},
            mm=sys.modules["comfy.model_management"], bar=sys.modules["comfy.utils"].ProgressBar,
            folders=sys.modules["folder_paths"])
    finally:
        restore()


@pytest.fixture
def interrupt_flag(pack):
    pack.mm.interrupt_current_processing(False)
    pack.bar.updates.clear()
    yield pack.mm
    pack.mm.interrupt_current_processing(False)


def _image(b=1, h=32, w=32, c=3, seed=0):
    return torch.rand(b, h, w, c, generator=torch.Generator().manual_seed(seed))


def _smooth(b=1, size=32, seed=0):
    """Smooth images (B, H, W, 3), what a JPEG round trip keeps close."""
    coarse = torch.rand(b, 3, 5, 5, generator=torch.Generator().manual_seed(seed))
    return torch.nn.functional.interpolate(coarse, size=(size, size), mode="bilinear").permute(0, 2, 3, 1)
