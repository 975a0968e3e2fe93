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


@pytest.fixture(scope="module")
def cloak_runs(pack, tiny_objects):
    """Cloak Image run with memory "balanced" and with the input left out (auto); the model's fingerprints."""
    from protect_core.integrity import fingerprint

    pack.mm.interrupt_current_processing(False)
    model, clip, vae = tiny_objects
    modules = pack.host.ComfyHost(model, clip, vae).host_modules()
    before = fingerprint(modules)
    node = pack.by_id["StyleCloak_CloakImage"]
    args = (_smooth(1, 64).contiguous(), model, clip, vae, "photoguard", "low", 0, False, "", 2, 8.0)
    with torch.inference_mode():
        chosen = node.execute(*args, None, "balanced")
        default = node.execute(*args)
    return node, args, chosen, default, before, fingerprint(modules)


@pytest.fixture(scope="module")
def purify_runs(pack, tiny_objects):
    """Purify runs with memory "low": IMPRESS (uses the model) and a filter-only chain."""
    pack.mm.interrupt_current_processing(False)
    model, clip, vae = tiny_objects
    node = pack.by_id["StyleCloak_Purify"]
    img = _smooth(1, 32).contiguous()
    with torch.inference_mode():
        impress = node.execute(img, "impress", "", '{"iterations": 2}', 0, model, clip, vae, "low")
        filters = node.execute(img, "impress", "jpeg", "", 0, memory="low")
    return impress, filters


def test_cloak_node_reports_the_mode_that_ran(pack, cloak_runs):
    from protect_core.integrity import diff_fingerprints

    node, args, chosen, default, before, after = cloak_runs
    assert not diff_fingerprints(before, after), "the graph's model changed"
    report = json.loads(chosen.args[2])
    assert report["memory"] == "balanced"
    assert [s["memory"]["name"] for s in report["images"]] == ["balanced"]
    assert chosen.ui["stylecloak_compare"][0]["stats"]["memory"]["name"] == "balanced", "the UI sees the mode too"
    assert chosen.ui["stylecloak_memory"] == [{"asked": "balanced"}], "and the mode asked for"
    auto = json.loads(default.args[2])
    assert auto["memory"] == "auto" and auto["images"][0]["memory"]["name"] in MODES, "auto resolves to a mode"
    assert default.ui["stylecloak_memory"] == [{"asked": "auto"}]
    assert len(default.ui["stylecloak_compare"]) == 1, "the before/after payload is unchanged"
    with pytest.raises(ValueError, match="unknown memory mode"):
        node.execute(*args, None, "huge")


def test_purify_node_reports_the_mode_that_ran(pack, purify_runs):
    impress, filters = purify_runs
    report = json.loads(impress.args[1])
    assert report["memory"]["name"] == "low"
    assert impress.ui == {"stylecloak_memory": [{"asked": "low", "ran": report["memory"]}]}, "the UI sees both"
    json.dumps(impress.ui, allow_nan=False)
    assert json.loads(filters.args[1])["memory"] is None, "a filter-only chain runs no model: no memory mode"
    assert filters.ui == {"stylecloak_memory": [{"asked": "low", "ran": None}]}


# ------------------------------------------------------------------------------------------------ web/
def fallback_record(out_of_memory: set, start: str = "fast") -> dict:
    """A memory record as the engine writes it: run_with_fallback from ``start``, running out in ``out_of_memory``."""
    from protect_core.memory import memory_mode, run_with_fallback

    def attempt(mode):
        if mode.name in out_of_memory:
            raise MemoryError("out of memory (test)")
        return mode.name

    _, mode, messages = run_with_fallback(attempt, memory_mode(start), "cpu", "testing")
    return {**mode.describe(), "fallbacks": messages}


def test_web_memory_line_formatting(tmp_path):
    from test_nodes_unit import run_web_harness

    one, two = fallback_record({"fast"}), fallback_record({"fast", "balanced"})
    replan = "re-planned 1 image(s) into tiles of at most 512 px for memory='low'"   # the cloak runner's note
    calls = [["memoryLine", [one, "auto"]], ["memoryLine", [two, "fast"]], ["memoryLine", [one, "balanced"]],
             ["memoryLine", [{"name": "fast", "fallbacks": []}, "auto"]], ["memoryLine", [None, "auto"]],
             ["memoryLine", [{**two, "fallbacks": two["fallbacks"] + [replan]}, "auto"]],
             ["memoryLine", [{"fallbacks": ["x"]}, "low"]], ["memoryLine", [{"name": "low"}]],
             ["memoryLine", []], ["memoryLine", [5, 7]], ["memoryLine", ["x", ""]], ["memoryLine", [[], None]],
             ["fellBackFrom", [{**two, "fallbacks": two["fallbacks"] * 2}]], ["fellBackFrom", [{"fallbacks": 3}]],
             ["memoryTitle", [{**two, "reason": "auto: ~1 GiB needed"}]], ["memoryTitle", [None]]]
    got = run_web_harness(tmp_path, [], calls)["calls"]
    assert got[:4] == ["memory: balanced (asked auto; fell back from fast)",
                       "memory: low (asked fast; fell back from fast, balanced)",
                       "memory: balanced (fell back from fast)", "memory: fast (asked auto)"]
    assert got[4].startswith("memory: not used") and "asked auto" in got[4], "a filter-only purify runs no model"
    assert got[5] == "memory: low (asked auto; fell back from fast, balanced; re-tiled at 512 px)"
    assert got[6:12] == ["memory: asked low", "memory: low", "", "", "", ""], "bad data: nothing to show, no error"
    assert got[12:14] == [["fast", "balanced"], []]
    assert got[14].split("\n") == ["auto: ~1 GiB needed"] + two["fallbacks"] and got[15] == ""


def test_web_extension_shows_the_memory_mode(pack, cloak_runs, purify_runs, tmp_path):
    from test_nodes_unit import run_web_harness

    _, _, chosen, default, _, _ = cloak_runs
    impress, filters = purify_runs
    pair = dict(chosen.ui["stylecloak_compare"][0])
    fell = {**pair, "stats": {**pair["stats"], "memory": fallback_record({"fast"})}}
    record = fallback_record({"fast", "balanced"})
    bad = [{}, {"stylecloak_memory": None}, {"stylecloak_memory": "x"}, {"stylecloak_memory": [5]},
           {"stylecloak_memory": [{}]}, {"stylecloak_memory": [{"ran": {"fallbacks": []}}]}]
    payloads = [["StyleCloak_CloakImage", [chosen.ui, default.ui, {**default.ui, "stylecloak_compare": [fell]}]],
                ["StyleCloak_Purify", bad + [impress.ui, filters.ui,
                                             {"stylecloak_memory": [{"asked": "auto", "ran": record}]}]],
                ["StyleCloak_MimicryTest", [{"stylecloak_mimicry": [{"memory": record}],
                                             "stylecloak_memory": [{"asked": "fast"}]}]]]
    cloak, purify, mimicry = run_web_harness(tmp_path, payloads)["runs"]
    ran = json.loads(default.args[2])["images"][0]["memory"]["name"]
    lines = [[t for t in s["text"] if t.startswith("memory:")] for s in cloak["states"] + purify["states"]]
    assert lines[:3] == [["memory: balanced"], [f"memory: {ran} (asked auto)"],
                         ["memory: balanced (asked auto; fell back from fast)"]]
    assert all(not s["widgets"] for s in purify["states"][:len(bad)]), "bad data leaves the node as it is"
    assert lines[3 + len(bad):] == [["memory: low"], ["memory: not used (no model ran; asked low)"],
                                    ["memory: low (asked auto; fell back from fast, balanced)"]]
    assert purify["states"][-1]["widgets"] == [["stylecloak_memory", False, False]], "one widget, reused"
    assert purify["states"][-1]["titles"] == ["\n".join(record["fallbacks"])], "the messages in the tooltip"
    assert "memory: low (asked fast; fell back from fast, balanced)" in mimicry["states"][0]["text"]
