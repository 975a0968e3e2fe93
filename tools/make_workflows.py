"""Writes example_workflows/*.json (ComfyUI UI format) from example_workflows/definitions.py.

UI-format workflows need each node's widget order and socket types, which only a running ComfyUI knows: this tool
reads them from its ``/object_info`` (start ComfyUI with the StyleCloak pack installed, on loopback).
Usage: python tools/make_workflows.py [--server http://127.0.0.1:8188]
"""
from __future__ import annotations

import argparse
import json
import sys
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "example_workflows"))

from definitions import WORKFLOWS  # noqa: E402

WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}

#: The front end (comfyui-frontend-package 1.35.9 and later) adds a hidden "control after generate" combo widget right
#: after every INT or COMBO widget whose spec asks for one and after every INT named "seed" or "noise_seed", and it
#: serialises that widget's value into ``widgets_values``; a saved file without it shifts every later value by one.
CONTROL_NAMES = {"seed", "noise_seed"}
#: The value saved for it: "fixed" (same seed, same cloak; the front end would otherwise default to "randomize").
CONTROL_VALUE = "fixed"


def has_control_widget(name: str, typ: str, opts: dict) -> bool:
    """Whether the front end puts a "control after generate" widget after this widget input."""
    if typ not in ("INT", "COMBO"):
        return False
    return bool(opts.get("control_after_generate")) or (typ == "INT" and name in CONTROL_NAMES)


#: Height and width of the DOM widget web/stylecloak.js gives each pack node from its creation (WIDGET_LAYOUT there).
DOM_WIDGETS = {"StyleCloak_CloakImage": (300, 320), "StyleCloak_ProtectionReport": (300, 320),
               "StyleCloak_MimicryTest": (300, 760), "StyleCloak_Purify": (40, 320)}
#: Room a node's result takes (LoadImage / PreviewImage / SaveImage show their images under the widgets).
IMAGE_ROOM = {"LoadImage": 220, "PreviewImage": 240, "SaveImage": 240}
GAP = 60


def node_size(class_type: str, info: dict, widget_count: int) -> list[int]:
    """A node size that holds its sockets, widgets and result (the front end's layout: 30 px title, 20 px per slot
    row, 24 px per widget), rounded up so the saved layout never overlaps once results are shown."""
    sockets = sum(1 for _, typ, _ in _spec_inputs(info) if typ not in WIDGET_TYPES)
    rows = max(sockets, len(info["output"]))
    dom_h, dom_w = DOM_WIDGETS.get(class_type, (0, 320))
    height = 30 + 20 * rows + 24 * widget_count + 16 + dom_h + IMAGE_ROOM.get(class_type, 0)
    return [max(320, dom_w), int(-(-height // 10) * 10)]


def layout(sizes: dict[str, list[int]], order: list[str], per_row: int = 4) -> dict[str, list[int]]:
    """Positions in rows of ``per_row`` nodes, each row below the tallest node of the one above (no overlap)."""
    pos, y = {}, 60
    for start in range(0, len(order), per_row):
        row, x = order[start:start + per_row], 60
        for nid in row:
            pos[nid] = [x, y]
            x += sizes[nid][0] + GAP
        y += max(sizes[nid][1] for nid in row) + GAP + 30
    return pos


def frontend_widgets_values(inputs: dict, object_info_entry: dict) -> list:
    """``widgets_values`` of a node as the front end serialises it: one value per widget input (required, then
    optional, in the spec's order; a linked input keeps its widget), the control-after-generate value after each
    seed, and the upload widget's value after an ``image_upload`` combo (LoadImage: ``[file, "image"]``)."""
    values = []
    for name, typ, opts in _spec_inputs(object_info_entry):
        if typ not in WIDGET_TYPES:
            continue
        value = inputs.get(name)
        values.append(opts.get("default") if value is None or isinstance(value, tuple) else value)
        if has_control_widget(name, typ, opts):
            values.append(CONTROL_VALUE)
        if opts.get("image_upload"):
            values.append("image")
    return values


def _spec_inputs(info: dict) -> list[tuple[str, str, dict]]:
    out = []
    for group in ("required", "optional"):
        for name, spec in info["input"].get(group, {}).items():
            kind = spec[0]
            typ = "COMBO" if isinstance(kind, list) else kind
            out.append((name, typ, spec[1] if len(spec) > 1 else {}))
    return out


def ui_format(name: str, object_info: dict) -> dict:
    nodes_def = WORKFLOWS[name]["nodes"]
    links, nodes = [], []
    out_links: dict[tuple[str, int], list[int]] = {}
    order = list(nodes_def)
    for node_id in order:  # first pass: links
        _, inputs = nodes_def[node_id]
        for value in inputs.values():
            if isinstance(value, tuple):
                out_links.setdefault((value[0], value[1]), [])
    link_id = 0
    pending = []
    for k, node_id in enumerate(order):
        class_type, inputs = nodes_def[node_id]
        info = object_info[class_type]
        ui_inputs = []
        widgets = frontend_widgets_values(inputs, info)
        for in_name, typ, opts in _spec_inputs(info):
            value = inputs.get(in_name)
            if isinstance(value, tuple):
                link_id += 1
                src, slot = value
                src_type = object_info[nodes_def[src][0]]["output"][slot]
                links.append([link_id, int(src), slot, int(node_id), len(ui_inputs), src_type])
                out_links[(src, slot)].append(link_id)
                ui_inputs.append({"name": in_name, "type": typ, "link": link_id})
            elif typ in WIDGET_TYPES:
                pass
            elif in_name in inputs or in_name not in dict.fromkeys(info["input"].get("optional", {})):
                ui_inputs.append({"name": in_name, "type": typ, "link": None})
        pending.append((node_id, class_type, info, ui_inputs, widgets, k))
    sizes = {nid: node_size(ct, info, len(w)) for nid, ct, info, _, w, _ in pending}
    positions = layout(sizes, order)
    for node_id, class_type, info, ui_inputs, widgets, k in pending:
        outputs = [{"name": n, "type": t, "slot_index": i, "links": out_links.get((node_id, i), [])}
                   for i, (n, t) in enumerate(zip(info["output_name"], info["output"]))]
        nodes.append({"id": int(node_id), "type": class_type, "pos": positions[node_id],
                      "size": sizes[node_id], "flags": {}, "order": k, "mode": 0, "inputs": ui_inputs,
                      "outputs": outputs, "properties": {"Node name for S&R": class_type},
                      "widgets_values": widgets, "title": info.get("display_name") or class_type})
    return {"last_node_id": max(int(i) for i in order), "last_link_id": link_id, "nodes": nodes, "links": links,
            "groups": [], "config": {}, "extra": {"stylecloak": WORKFLOWS[name]["title"]}, "version": 0.4}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--server", default="http://127.0.0.1:8188")
    ap.add_argument("--object-info", type=Path, help="read a saved /object_info JSON instead of asking a server")
    args = ap.parse_args()
    if args.object_info:
        object_info = json.loads(args.object_info.read_text())
    else:
        with urllib.request.urlopen(f"{args.server}/object_info", timeout=30) as r:
            object_info = json.load(r)
    for name in WORKFLOWS:
        path = ROOT / "example_workflows" / f"{name}.json"
        path.write_text(json.dumps(ui_format(name, object_info), indent=1) + "\n")
        print("wrote", path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
