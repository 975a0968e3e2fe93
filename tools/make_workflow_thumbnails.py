"""Draws a diagram of each example workflow (example_workflows/definitions.py) with Pillow: one box per node
(its title and main settings), one curve per link, coloured by socket type as in ComfyUI.

Writes ``example_workflows/<name>.png`` (full size) and ``example_workflows/<name>.jpg`` (the thumbnail ComfyUI's
template browser shows for a custom-node workflow). Needs neither ComfyUI nor torch: node titles are read from
the ``node_id=..., display_name=...`` pairs in nodes/*.py.
Usage: python tools/make_workflow_thumbnails.py [--out example_workflows]
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "example_workflows"))

from definitions import WORKFLOWS  # noqa: E402

CORE_TITLES = {"CheckpointLoaderSimple": "Load Checkpoint", "LoadImage": "Load Image", "SaveImage": "Save Image",
               "PreviewImage": "Preview Image"}
#: Socket type of a link, from the name of the input it feeds.
INPUT_TYPES = {"model": "MODEL", "clip": "CLIP", "vae": "VAE", "layers": "LAYERS", "selection": "LAYERS"}
COLOURS = {"MODEL": (180, 160, 255), "CLIP": (255, 210, 80), "VAE": (255, 110, 110), "IMAGE": (100, 180, 255),
           "LAYERS": (110, 210, 140)}
BG, BOX, BOX_CORE, TITLE_PACK, TITLE_CORE, TEXT, DIM = ((32, 32, 36), (53, 53, 58), (48, 48, 52), (96, 64, 150),
                                                        (70, 70, 76), (235, 235, 235), (170, 170, 175))
BOX_W, ROW_H, TITLE_H, GAP_X, GAP_Y, MARGIN, HEADER, FOOTER = 270, 20, 30, 90, 30, 40, 70, 60
MAX_WIDGETS = 3


def display_names() -> dict[str, str]:
    names = dict(CORE_TITLES)
    for path in sorted((ROOT / "nodes").glob("*.py")):
        for node_id, title in re.findall(r'node_id="(\w+)",\s*display_name="([^"]+)"', path.read_text()):
            names[node_id] = title
    return names


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: the fixed bitmap font
        return ImageFont.load_default()


def link_type(input_name: str) -> str:
    return INPUT_TYPES.get(input_name.rstrip("_0123456789"), "IMAGE")


def _short(value) -> str:
    text = repr(value) if isinstance(value, str) and not value else str(value)
    return text if len(text) <= 24 else text[:21] + "..."


def layout(nodes: dict) -> dict[str, tuple[int, int]]:
    """Column (longest path from a source) and row of every node."""
    depth: dict[str, int] = {}

    def d(nid: str) -> int:
        if nid not in depth:
            srcs = [v[0] for v in nodes[nid][1].values() if isinstance(v, tuple)]
            depth[nid] = 1 + max((d(s) for s in srcs), default=-1)
        return depth[nid]

    rows: dict[int, int] = {}
    place = {}
    for nid in sorted(nodes, key=lambda n: (d(n), int(n))):
        place[nid] = (d(nid), rows.get(d(nid), 0))
        rows[d(nid)] = rows.get(d(nid), 0) + 1
    return place


def _socket_rows(nid: str, nodes: dict) -> int:
    """Rows of sockets: linked inputs on the left, used outputs on the right, side by side (as in ComfyUI)."""
    links_in = sum(isinstance(v, tuple) for v in nodes[nid][1].values())
    slots_out = {v[1] for _, ins in nodes.values() for v in ins.values() if isinstance(v, tuple) and v[0] == nid}
    return max(links_in, len(slots_out))


def _box_height(nid: str, nodes: dict) -> int:
    widgets = min(MAX_WIDGETS, sum(not isinstance(v, tuple) for v in nodes[nid][1].values()))
    return TITLE_H + ROW_H * max(1, _socket_rows(nid, nodes) + widgets) + 10


def _title(ctype: str, titles: dict[str, str]) -> str:
    return titles.get(ctype, ctype).removeprefix("StyleCloak: ")


def _bezier(p0, p3, steps=40):
    (x0, y0), (x3, y3) = p0, p3
    dx = max(40, (x3 - x0) / 2)
    p1, p2 = (x0 + dx, y0), (x3 - dx, y3)
    pts = []
    for i in range(steps + 1):
        t = i / steps
        a, b, c, e = (1 - t) ** 3, 3 * (1 - t) ** 2 * t, 3 * (1 - t) * t * t, t ** 3
        pts.append((a * x0 + b * p1[0] + c * p2[0] + e * x3, a * y0 + b * p1[1] + c * p2[1] + e * y3))
    return pts


def geometry(nodes: dict) -> tuple[dict, dict, dict, tuple[int, int]]:
    """Boxes, input sockets {(node, input): (x, y)}, output sockets {(node, slot): (type, (x, y))}, canvas size."""
    place = layout(nodes)
    cols = max(c for c, _ in place.values()) + 1
    col_heights = [0] * cols
    boxes = {}
    for nid in sorted(nodes, key=lambda n: place[n]):
        col = place[nid][0]
        x, y = MARGIN + col * (BOX_W + GAP_X), HEADER + col_heights[col]
        boxes[nid] = (x, y, x + BOX_W, y + _box_height(nid, nodes))
        col_heights[col] += boxes[nid][3] - y + GAP_Y
    sockets_in, out_types = {}, {}
    for nid, (_, inputs) in nodes.items():
        linked = [k for k, v in inputs.items() if isinstance(v, tuple)]
        for row, in_name in enumerate(linked):
            sockets_in[(nid, in_name)] = (boxes[nid][0], boxes[nid][1] + TITLE_H + 4 + row * ROW_H + ROW_H // 2)
            src, slot = inputs[in_name]
            out_types.setdefault(src, {}).setdefault(slot, link_type(in_name))
    sockets_out = {}
    for src, slots in out_types.items():
        x0, y0, x1, _ = boxes[src]
        for row, slot in enumerate(sorted(slots)):
            sockets_out[(src, slot)] = (slots[slot], (x1, y0 + TITLE_H + 4 + row * ROW_H + ROW_H // 2))
    size = (MARGIN * 2 + cols * BOX_W + (cols - 1) * GAP_X, HEADER + max(col_heights) - GAP_Y + FOOTER)
    return boxes, sockets_in, sockets_out, size


def _dot(g, xy, typ):
    x, y = xy
    g.ellipse((x - 5, y - 5, x + 5, y + 5), fill=COLOURS[typ])


def _legend(g, height, font):
    x = MARGIN
    g.rectangle((x, height - 32, x + 24, height - 18), fill=TITLE_PACK)
    g.text((x + 30, height - 32), "StyleCloak node", fill=DIM, font=font)
    x += 60 + int(g.textlength("StyleCloak node", font=font))
    for typ, colour in COLOURS.items():
        g.line((x, height - 24, x + 24, height - 24), fill=colour, width=3)
        g.text((x + 30, height - 32), typ, fill=DIM, font=font)
        x += 60 + int(g.textlength(typ, font=font))


def draw_workflow(name: str, titles: dict[str, str]) -> Image.Image:
    wf = WORKFLOWS[name]
    nodes = wf["nodes"]
    boxes, sockets_in, sockets_out, size = geometry(nodes)
    img = Image.new("RGB", size, BG)
    g = ImageDraw.Draw(img)
    f_title, f_text, f_head = _font(15), _font(13), _font(20)
    g.text((MARGIN, 22), wf["title"], fill=TEXT, font=f_head)
    for (nid, in_name), end in sockets_in.items():  # links first: boxes hide what passes behind them
        typ, start = sockets_out[nodes[nid][1][in_name]]
        g.line(_bezier(start, end), fill=COLOURS[typ], width=2, joint="curve")
        ex, ey = end
        g.polygon([(ex - 1, ey), (ex - 10, ey - 5), (ex - 10, ey + 5)], fill=COLOURS[typ])
    for nid, (ctype, inputs) in nodes.items():
        x0, y0, x1, y1 = boxes[nid]
        head = TITLE_PACK if ctype.startswith("StyleCloak_") else TITLE_CORE
        g.rounded_rectangle((x0, y0, x1, y1), 8, fill=BOX if head is TITLE_PACK else BOX_CORE, outline=(90, 90, 96))
        g.rounded_rectangle((x0, y0, x1, y0 + TITLE_H), 8, fill=head)
        g.rectangle((x0, y0 + TITLE_H - 8, x1, y0 + TITLE_H), fill=head)
        g.text((x0 + 10, y0 + 7), f"#{nid} {_title(ctype, titles)}", fill=TEXT, font=f_title)
        y = y0 + TITLE_H + 4 + ROW_H * _socket_rows(nid, nodes)
        for in_name, value in [kv for kv in inputs.items() if not isinstance(kv[1], tuple)][:MAX_WIDGETS]:
            g.text((x0 + 12, y + 3), f"{in_name}: {_short(value)}", fill=TEXT, font=f_text)
            y += ROW_H
    for (nid, in_name), (x, y) in sockets_in.items():
        _dot(g, (x, y), link_type(in_name))
        g.text((x + 12, y - 8), in_name, fill=DIM, font=f_text)
    for (typ, (x, y)) in sockets_out.values():
        _dot(g, (x, y), typ)
        g.text((x - 12 - g.textlength(typ, font=f_text), y - 8), typ, fill=DIM, font=f_text)
    _legend(g, size[1], f_text)
    return img


def template_thumbnail(img: Image.Image, aspect: float = 4 / 3, width: int = 800) -> Image.Image:
    """The diagram centred on a 4:3 canvas (what the template browser's cards show), ``width`` pixels wide."""
    w, h = img.size
    cw, ch = max(w, round(h * aspect)), max(h, round(w / aspect))
    canvas = Image.new("RGB", (cw, ch), BG)
    canvas.paste(img, ((cw - w) // 2, (ch - h) // 2))
    return canvas.resize((width, round(width * ch / cw)), Image.LANCZOS)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "example_workflows")
    args = ap.parse_args(argv)
    titles = display_names()
    for name in WORKFLOWS:
        img = draw_workflow(name, titles)
        png, jpg = args.out / f"{name}.png", args.out / f"{name}.jpg"
        img.save(png, optimize=True)
        template_thumbnail(img).save(jpg, quality=88)
        print("wrote", png, jpg)
    return 0


if __name__ == "__main__":
    sys.exit(main())
