"""The ``memory`` input of the ComfyUI nodes that run the model (Cloak Image, Purify, Mimicry Test): an optional combo
placed last (saved workflows keep loading), passed through to the engine, ``auto`` when left out, and the mode that
ran reported back. Runs under the fake ComfyUI modules of tests/comfy_pack.py."""
from __future__ import annotations

import json
import sys

import pytest
import torch

from comfy_pack import _smooth, interrupt_flag, pack  # noqa: F401 (fixtures)
from protect_core.memory import CHOICES, MODES
from test_nodes_unit import comfy_objects

#: node id -> (module of the node, name of the engine call it makes)
ENGINE_CALLS = {"StyleCloak_CloakImage": ("nodes.cloak_nodes", "cloak_images"),
                "StyleCloak_Purify": ("nodes.purify_nodes", "purify"),
                "StyleCloak_MimicryTest": ("nodes.mimicry_nodes", "run_mimicry_test")}


class _Recorded(Exception):
    """Raised by the stand-in engine call once it has seen its arguments (the node stops there)."""


@pytest.fixture(scope="module")
def tiny_objects():
    """(MODEL, CLIP, VAE) shaped like ComfyUI's, around the tiny ldm stand-ins."""
    return comfy_objects("tiny")[:3]


@pytest.mark.parametrize("node_id", sorted(ENGINE_CALLS))
def test_memory_is_an_optional_combo_placed_last(pack, node_id):
    schema = pack.by_id[node_id].define_schema()
    memory = schema.inputs[-1]
    assert memory.id == "memory" and memory.optional and memory.io_type == "COMBO"
    assert list(memory.options) == list(CHOICES) and memory.default == "auto"
    assert "auto" in memory.tooltip and "out-of-memory" in memory.tooltip and "\n" not in memory.tooltip
    assert not memory.check()
    others = [i for i in schema.inputs[:-1] if i.optional]
    assert schema.inputs[-1 - len(others):-1] == others, "optional inputs come after the required ones"


@pytest.mark.parametrize("node_id", sorted(ENGINE_CALLS))
@pytest.mark.parametrize("chosen", [None, "fast", "balanced", "low"])
def test_node_passes_the_chosen_mode_to_the_engine(pack, monkeypatch, node_id, chosen):
    module_name, call = ENGINE_CALLS[node_id]
    module = sys.modules[module_name]
    seen = []

    def engine(*args, **kwargs):
        seen.append(kwargs.get("memory", "<not given>"))
        raise _Recorded

    monkeypatch.setattr(module, call, engine)
    monkeypatch.setattr(module, "ComfyHost", lambda *a, **k: object())
    node = pack.by_id[node_id]
    schema = node.define_schema()
    img = _smooth(1, 32).contiguous()
    given = {"image": img, "clean": img, "train": img, "model": object(), "clip": object(), "vae": object(),
             "chain": "jpeg"}   # Purify: a filter chain, no model needed; other widgets: their defaults
    args = [given[i.id] if i.id in given else i.default for i in schema.inputs if not i.optional]
    extra = {} if chosen is None else {"memory": chosen}
    with pytest.raises(_Recorded):
        node.execute(*args, **extra)
    assert seen == [chosen or "auto"]


def test_cloak_node_reports_the_mode_that_ran(pack, interrupt_flag, tiny_objects):
    from protect_core.integrity import diff_fingerprints, fingerprint

    model, clip, vae = tiny_objects
    modules = pack.host.ComfyHost(model, clip, vae).host_modules()
    before = fingerprint(modules)
    node = pack.by_id["StyleCloak_CloakImage"]
    img = _smooth(1, 64).contiguous()
    args = (img, model, clip, vae, "photoguard", "low", 0, False, "", 2, 8.0)
    with torch.inference_mode():
        chosen = node.execute(*args, None, "balanced")
        default = node.execute(*args)
    assert not diff_fingerprints(before, fingerprint(modules)), "the graph's model changed"
    report = json.loads(chosen.args[2])
    assert report["memory"] == "balanced"
    assert [s["memory"]["name"] for s in report["images"]] == ["balanced"]
    assert chosen.ui["stylecloak_compare"][0]["stats"]["memory"]["name"] == "balanced", "the UI sees the mode too"
    auto = json.loads(default.args[2])
    assert auto["memory"] == "auto" and auto["images"][0]["memory"]["name"] in MODES, "auto resolves to a mode"
    with pytest.raises(ValueError, match="unknown memory mode"):
        node.execute(*args, None, "huge")


def test_purify_node_reports_the_mode_that_ran(pack, interrupt_flag, tiny_objects):
    model, clip, vae = tiny_objects
    node = pack.by_id["StyleCloak_Purify"]
    img = _smooth(1, 32).contiguous()
    with torch.inference_mode():
        _, report = node.execute(img, "impress", "", '{"iterations": 2}', 0, model, clip, vae, "low").args
        _, filters = node.execute(img, "impress", "jpeg", "", 0, memory="low").args
    assert json.loads(report)["memory"]["name"] == "low"
    assert json.loads(filters)["memory"] is None, "a filter-only chain runs no model: no memory mode"
