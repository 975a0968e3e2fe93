"""A heat-map image of a layer analysis, drawn with Pillow (no matplotlib): layers x timesteps.

Rows are the cross-attention layers in UNet order (down, mid, up; selected ones marked ``*``); coloured columns are
the style sensitivity ``S_l(t)`` at each analysed timestep and its mean ``S_l``, on one shared scale (viridis, 0 to
the largest value, shown by the colour bar at the bottom); when the table holds the causal effect (rows with
``causal_per_timestep``, score "causal" or "combined"), a second block of coloured columns gives ``K_l(t)`` and
``K_l`` on their own scale. Plain columns give the correlation ``C_l``, the final score and the rank. Every cell
prints its value. :func:`geometry` says where everything goes, so the image size is a
pure function of the table.
"""
from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from .naming import order_key, short_name

CELL_W, CELL_H, TEXT_W, MARGIN, HEADER_H, BAR_H, FONT_SIZE = 66, 22, 58, 12, 44, 48, 12
VIRIDIS = ((68, 1, 84), (59, 82, 139), (33, 145, 140), (94, 201, 98), (253, 231, 37))
TEXT_COLUMNS = ("C", "score", "rank")


def colour(v: float) -> tuple[int, int, int]:
    """Viridis-like colour of ``v`` in [0, 1] (clamped), linear between five anchors."""
    v = min(1.0, max(0.0, float(v))) * (len(VIRIDIS) - 1)
    i = min(int(v), len(VIRIDIS) - 2)
    f = v - i
    a, b = VIRIDIS[i], VIRIDIS[i + 1]
    return tuple(int(round(a[k] + (b[k] - a[k]) * f)) for k in range(3))


def _font():
    try:
        return ImageFont.load_default(size=FONT_SIZE)
    except (TypeError, OSError):  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def _text_w(font, text: str) -> int:
    box = font.getbbox(text)
    return int(box[2] - box[0])


def has_causal(table: list[dict]) -> bool:
    return all(r.get("causal_per_timestep") is not None for r in table)


def _rows(table: list[dict]) -> list[dict]:
    return sorted(table, key=lambda r: order_key(r["name"]))


def geometry(table: list[dict], timesteps: list[int], selected: list[str], title: str = "") -> dict:
    """Image size and the label width / column count used to draw the table."""
    font = _font()
    labels = [("* " if r["name"] in selected else "  ") + short_name(r["name"]) for r in _rows(table)]
    label_w = max([_text_w(font, s) for s in labels] + [60]) + 8
    heat_cols = (len(timesteps) + 1) * (1 + has_causal(table))
    width = max(2 * MARGIN + label_w + heat_cols * CELL_W + len(TEXT_COLUMNS) * TEXT_W,
                2 * MARGIN + _text_w(font, title))
    height = MARGIN + HEADER_H + len(table) * CELL_H + BAR_H + MARGIN
    return {"size": (width, height), "label_w": label_w, "heat_cols": heat_cols, "labels": labels}


def cell_box(geo: dict, row: int, col: int) -> tuple[int, int, int, int]:
    """Pixel box (x0, y0, x1, y1) of heat cell (row, col) in UNet row order."""
    x0 = MARGIN + geo["label_w"] + col * CELL_W
    y0 = MARGIN + HEADER_H + row * CELL_H
    return x0, y0, x0 + CELL_W - 1, y0 + CELL_H - 1


def _fmt(v) -> str:
    return "n/a" if v is None else f"{v:.3f}" if abs(v) < 10 else f"{v:.1f}"


def render_heatmap(table: list[dict], timesteps: list[int], selected: list[str] | None = None,
                   title: str = "Style sensitivity of cross-attention layers") -> Image.Image:
    """The heat map as an RGB image (see module doc). ``table`` rows need name, per_timestep, sensitivity,
    correlation, score, rank."""
    if not table:
        raise ValueError("nothing to plot: the layer table is empty")
    selected = list(selected or [])
    geo = geometry(table, timesteps, selected, title)
    img = Image.new("RGB", geo["size"], "white")
    draw, font = ImageDraw.Draw(img), _font()
    rows = _rows(table)
    blocks = [[list(r["per_timestep"]) + [r["sensitivity"]] for r in rows]]
    heads = [f"t={t}" for t in timesteps] + ["mean S"]
    if has_causal(table):
        blocks.append([list(r["causal_per_timestep"]) + [r["causal"]] for r in rows])
        heads += [f"K t={t}" for t in timesteps] + ["mean K"]
    tops = [max(max(v) for v in block) or 1.0 for block in blocks]
    values = [sum((block[i] for block in blocks), []) for i in range(len(rows))]
    width = len(timesteps) + 1
    draw.text((MARGIN, MARGIN), title, fill="black", font=font)
    x_text = MARGIN + geo["label_w"] + geo["heat_cols"] * CELL_W
    y_head = MARGIN + HEADER_H - CELL_H + 4
    draw.text((MARGIN, y_head), "layer (* = selected)", fill="black", font=font)
    for c, h in enumerate(heads):
        x0 = MARGIN + geo["label_w"] + c * CELL_W
        draw.text((x0 + (CELL_W - _text_w(font, h)) // 2, y_head), h, fill="black", font=font)
    for k, h in enumerate(TEXT_COLUMNS):
        draw.text((x_text + k * TEXT_W + (TEXT_W - _text_w(font, h)) // 2, y_head), h, fill="black", font=font)
    for i, (row, label) in enumerate(zip(rows, geo["labels"])):
        y0 = MARGIN + HEADER_H + i * CELL_H
        draw.text((MARGIN, y0 + 4), label, fill="black", font=font)
        for c, v in enumerate(values[i]):
            box = cell_box(geo, i, c)
            rgb = colour(v / tops[c // width])
            draw.rectangle(box, fill=rgb)
            ink = "black" if (0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]) > 140 else "white"
            s = _fmt(v)
            draw.text((box[0] + (CELL_W - _text_w(font, s)) // 2, y0 + 4), s, fill=ink, font=font)
        for k, v in enumerate((row.get("correlation"), row.get("score"), row.get("rank"))):
            s = str(v) if k == 2 else _fmt(v)
            draw.text((x_text + k * TEXT_W + (TEXT_W - _text_w(font, s)) // 2, y0 + 4), s, fill="black", font=font)
        draw.line((MARGIN, y0 + CELL_H - 1, x_text + len(TEXT_COLUMNS) * TEXT_W, y0 + CELL_H - 1),
                  fill=(225, 225, 225))
    # colour bars, one per block
    y0 = MARGIN + HEADER_H + len(rows) * CELL_H + 10
    bar_w = width * CELL_W
    draw.text((MARGIN, y0), "S scale" if len(blocks) == 1 else "S, K scales", fill="black", font=font)
    for b, top in enumerate(tops):
        x0 = MARGIN + geo["label_w"] + b * bar_w
        for x in range(bar_w - (4 if len(blocks) > 1 else 0)):
            draw.line((x0 + x, y0, x0 + x, y0 + 12), fill=colour(x / max(1, bar_w - 1)))
        draw.text((x0, y0 + 16), "0", fill="black", font=font)
        s = _fmt(top)
        draw.text((x0 + bar_w - 4 * (len(blocks) > 1) - _text_w(font, s), y0 + 16), s, fill="black", font=font)
    return img


def save_heatmap(selection, path) -> Path:
    """Write the heat map of a :class:`~protect_core.layers.selection.LayerSelection` with a table as PNG."""
    import io

    from ..atomic import atomic_write_bytes

    if not selection.table:
        raise ValueError("this selection has no analysis table (a preset?): nothing to plot")
    img = render_heatmap(selection.table, selection.timesteps, selection.layers,
                         title=f"Style sensitivity{' and causal effect' if has_causal(selection.table) else ''} "
                               f"per layer and timestep ({selection.model_family}, descriptor {selection.descriptor})")
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return atomic_write_bytes(path, buf.getvalue())
