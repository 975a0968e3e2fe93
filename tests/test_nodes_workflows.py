"""The example workflows (example_workflows/): every definition is a valid graph of the pack's real node schemas
and ComfyUI core nodes, the UI-format JSON files match their definitions, and the thumbnails exist and are laid out
soundly. Runs under the fake ComfyUI modules of tests/comfy_pack.py."""
from __future__ import annotations

import json

import pytest

from comfy_pack import CORE_NODES, PACK_IDS, ROOT, pack  # noqa: F401 (fixture)

WIDGETS = {"INT": int, "FLOAT": (int, float), "STRING": str, "BOOLEAN": bool, "COMBO": object}


def _definitions():
    import importlib.util

    spec = importlib.util.spec_from_file_location("stylecloak_workflow_definitions",
                                                  ROOT / "example_workflows" / "definitions.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


DEFS = _definitions()


def _node_io(pack, class_type):
    """({input name: (type, input or None)}, [output types], is an output node) of a pack or core node."""
    if class_type in CORE_NODES:
        ins, outs = CORE_NODES[class_type]
        return {k: (t, None) for k, t in ins.items()}, outs, class_type in ("SaveImage", "PreviewImage")
    schema = pack.by_id[class_type].define_schema()
    return ({i.id: (i.io_type, i) for i in schema.inputs}, [o.io_type for o in schema.outputs],
            schema.is_output_node)


def _check_graph(pack, graph: dict) -> None:
    """An API-format graph: known node types, existing inputs, typed links, valid widget values, no cycle."""
    has_output = False
    for nid, node in graph.items():
        ctype = node["class_type"]
        assert ctype in PACK_IDS or ctype in CORE_NODES, f"node {nid}: unknown type {ctype}"
        ins, _, is_out = _node_io(pack, ctype)
        has_output |= is_out
        assert not set(node["inputs"]) - set(ins), f"node {nid}: unknown inputs"
        required = {k for k, (_, i) in ins.items() if i is None or not i.optional}
        assert not required - set(node["inputs"]), f"node {nid} ({ctype}): missing {required - set(node['inputs'])}"
        for name, value in node["inputs"].items():
            typ, spec = ins[name]
            if isinstance(value, list):
                src, slot = value
                assert src in graph, f"node {nid}.{name}: links to a missing node {src}"
                outs = _node_io(pack, graph[src]["class_type"])[1]
                assert slot < len(outs) and outs[slot] == typ, f"node {nid}.{name}: {typ} fed from {outs}"
                continue
            assert typ in WIDGETS, f"node {nid}.{name}: a {typ} socket needs a link"
            assert isinstance(value, WIDGETS[typ]), f"node {nid}.{name}: {value!r} is not {typ}"
            if spec is not None:
                spec_default, spec.default = spec.default, value  # the schema's own checks, on this value
                try:
                    assert not spec.check(), spec.check()
                finally:
                    spec.default = spec_default
    assert has_output, "nothing would run: no output node"
    done: set = set()
    while len(done) < len(graph):  # topological order exists <=> no cycle
        ready = {n for n, node in graph.items() if n not in done and all(
            v[0] in done for v in node["inputs"].values() if isinstance(v, list))}
        assert ready, f"cycle among {set(graph) - done}"
        done |= ready


@pytest.mark.parametrize("name", list(DEFS.WORKFLOWS))
def test_example_workflow_definitions(pack, name):
    _check_graph(pack, DEFS.api_format(name))
    overrides = DEFS.CPU_TEST_OVERRIDES[name]
    nodes = DEFS.WORKFLOWS[name]["nodes"]
    for nid, values in overrides.items():
        assert set(values) <= set(nodes[nid][1]), f"override of node {nid} names inputs the node does not set"
    _check_graph(pack, DEFS.api_format(name, overrides))


@pytest.mark.parametrize("name", list(DEFS.WORKFLOWS))
def test_ui_workflow_file_matches_its_definition(pack, name):
    ui = json.loads((ROOT / "example_workflows" / f"{name}.json").read_text())
    nodes = DEFS.WORKFLOWS[name]["nodes"]
    by_id = {str(n["id"]): n for n in ui["nodes"]}
    assert {k: n["type"] for k, n in by_id.items()} == {k: v[0] for k, v in nodes.items()}
    got = set()
    for link_id, src, slot, dst, dst_slot, typ in ui["links"]:
        target = by_id[str(dst)]["inputs"][dst_slot]
        assert target["link"] == link_id and link_id in by_id[str(src)]["outputs"][slot]["links"]
        assert typ == target["type"] == _node_io(pack, by_id[str(src)]["type"])[1][slot]
        got.add((str(src), slot, str(dst), target["name"]))
    want = {(v[0], v[1], nid, k) for nid, (_, ins) in nodes.items() for k, v in ins.items() if isinstance(v, tuple)}
    assert got == want
    for nid, (ctype, ins) in nodes.items():
        assert by_id[nid]["widgets_values"] == _frontend_widgets_values(pack, ctype, ins), f"node {nid} ({ctype})"


#: What ComfyUI's front end (comfyui-frontend-package 1.35.9 .. 1.58) serialises for the core nodes the examples
#: use, read from its node widgets in a real browser (tests/test_comfyui_browser.py checks it there): LoadImage's
#: upload button saves the string "image" after the file name.
CORE_WIDGETS = {"CheckpointLoaderSimple": ["ckpt_name"], "LoadImage": ["image", ("upload", "image")],
                "SaveImage": ["filename_prefix"], "PreviewImage": []}


def _frontend_widgets_values(pack, ctype, ins) -> list:
    """The node's ``widgets_values`` the way the front end saves them: a value per widget input (required inputs,
    then optional ones, in schema order) and, right after every INT input named ``seed`` / ``noise_seed`` or asking
    for one, the hidden "control after generate" combo's value ("fixed": a reproducible example)."""
    if ctype in CORE_WIDGETS:
        return [w[1] if isinstance(w, tuple) else ins[w] for w in CORE_WIDGETS[ctype]]
    schema = pack.by_id[ctype].define_schema()
    widgets = [i for i in schema.inputs if i.io_type in WIDGETS]
    out = []
    for i in [i for i in widgets if not i.optional] + [i for i in widgets if i.optional]:
        out.append(ins.get(i.id, i.default))
        if i.io_type == "INT" and (i.id in ("seed", "noise_seed") or getattr(i, "control_after_generate", None)):
            out.append("fixed")
    return out


@pytest.mark.parametrize("name", list(DEFS.WORKFLOWS))
def test_ui_workflow_values_line_up_with_widgets_after_seed(pack, name):
    """The bug a real browser showed: without the control-after-generate value every widget after ``seed`` took its
    neighbour's value. Each pack node's saved values, read back in widget order, give each input its own value."""
    ui = json.loads((ROOT / "example_workflows" / f"{name}.json").read_text())
    for node in ui["nodes"]:
        if node["type"] not in PACK_IDS:
            continue
        schema = pack.by_id[node["type"]].define_schema()
        widgets = [i for i in schema.inputs if i.io_type in WIDGETS]
        values = iter(node["widgets_values"])
        for i in [i for i in widgets if not i.optional] + [i for i in widgets if i.optional]:
            value = next(values)
            check = dict(WIDGETS, COMBO=str)[i.io_type]
            assert isinstance(value, check) and not (i.io_type in ("INT", "FLOAT") and isinstance(value, bool)), \
                f"node {node['id']}.{i.id}: {value!r} is not {i.io_type}"
            if i.io_type == "COMBO":
                assert value in i.options, f"node {node['id']}.{i.id}: {value!r} not among its options"
            if i.id == "seed":
                assert next(values) in ("fixed", "increment", "decrement", "randomize"), node["id"]
        assert next(values, None) is None, f"node {node['id']}: more values than widgets"


# ------------------------------------------------------------------------------------------------ thumbnails
def test_workflow_thumbnails_exist_and_their_layout_is_sound():
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_workflow_thumbnails",
                                                  ROOT / "tools" / "make_workflow_thumbnails.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    for name, wf in DEFS.WORKFLOWS.items():
        for ext in ("png", "jpg"):
            assert (ROOT / "example_workflows" / f"{name}.{ext}").is_file(), "run tools/make_workflow_thumbnails.py"
        boxes, sockets_in, sockets_out, (w, h) = tool.geometry(wf["nodes"])
        assert set(boxes) == set(wf["nodes"])
        rects = list(boxes.values())
        for i, a in enumerate(rects):
            assert 0 <= a[0] and a[2] <= w and 0 <= a[1] and a[3] <= h
            for b in rects[i + 1:]:
                assert a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1], "boxes overlap"
        links = [(nid, k, v) for nid, (_, ins) in wf["nodes"].items() for k, v in ins.items() if isinstance(v, tuple)]
        assert {(nid, k) for nid, k, _ in links} == set(sockets_in)
        assert {v for _, _, v in links} == set(sockets_out)
