"""The PNG chart of benchmarks/perf.py, drawn with PIL only (no matplotlib): per model and dtype, seconds per step
and peak memory against pixel count (size x size x batch), log-log; colour = block:method, marker = memory mode."""
from __future__ import annotations

import math

COLOURS = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
           (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207), (0, 0, 0), (120, 200, 120)]


def _ok(v) -> bool:
    return isinstance(v, (int, float)) and v == v and v > 0


def _marker(d, x, y, mode, c):
    if mode == "fast":
        d.ellipse([x - 3, y - 3, x + 3, y + 3], fill=c)
    elif mode == "low":
        d.rectangle([x - 3, y - 3, x + 3, y + 3], fill=c)
    else:
        d.polygon([(x, y - 4), (x - 4, y + 3), (x + 4, y + 3)], fill=c)


def _panel(d, box, series, key, label, colours, slope_one=False):
    """Log-log panel of ``key`` against pixels; one line per (method, mode) series."""
    x0, y0, x1, y1 = box
    pts = [(px, r[key]) for s in series.values() for px, r in s if _ok(r.get(key))]
    d.rectangle(box, outline=(0, 0, 0))
    d.text((x0, y0 - 14), label, fill=(0, 0, 0))
    if not pts:
        return
    ax0, ax1 = math.floor(math.log10(min(p for p, _ in pts)) * 2) / 2, math.ceil(
        math.log10(max(p for p, _ in pts)) * 2) / 2 + 0.25
    ay0, ay1 = math.floor(math.log10(min(v for _, v in pts))), math.ceil(math.log10(max(v for _, v in pts)) + 1e-9)
    ay1 = max(ay1, ay0 + 1)
    X = lambda v: x0 + (math.log10(v) - ax0) / (ax1 - ax0) * (x1 - x0)  # noqa: E731
    Y = lambda v: y1 - (math.log10(v) - ay0) / (ay1 - ay0) * (y1 - y0)  # noqa: E731
    for e in range(int(ay0), int(ay1) + 1):
        d.line([(x0, Y(10 ** e)), (x1, Y(10 ** e))], fill=(225, 225, 225))
        d.text((x0 - 40, Y(10 ** e) - 6), f"1e{e}", fill=(0, 0, 0))
    e = ax0
    while e <= ax1:
        d.line([(X(10 ** e), y0), (X(10 ** e), y1)], fill=(225, 225, 225))
        d.text((X(10 ** e) - 12, y1 + 4), f"{10 ** e / 1e6:.2g}", fill=(0, 0, 0))
        e += 0.5
    d.text((x1 - 190, y1 + 18), "Mpx (size x size x batch)", fill=(0, 0, 0))
    if slope_one:   # grey: time proportional to pixels, through the smallest point
        px, v = min(pts)
        line = [(X(10 ** u), Y(v * 10 ** u / px)) for u in (ax0, ax1)]
        if all(y0 - 1 <= y <= y1 + 1 for _, y in line):
            d.line(line, fill=(170, 170, 170), width=1)
    for (method, mode), s in series.items():
        xy = [(X(px), Y(r[key])) for px, r in sorted(s, key=lambda t: t[0]) if _ok(r.get(key))]
        if len(xy) > 1:
            d.line(xy, fill=colours[method], width=2 if mode == "fast" else 1)
        for cx, cy in xy:
            _marker(d, cx, cy, mode, colours[method])


def draw_chart(rows: list[dict], path: str, title: str) -> None:
    """One row of two panels (s/step, peak MiB) per model and dtype; colour = method, marker = memory mode
    (circle fast, triangle balanced, square low); grey line = time linear in pixel count."""
    from PIL import Image, ImageDraw

    models = sorted({(r["model"], r["dtype"]) for r in rows})
    methods = sorted({f"{r['block']}:{r['method']}" for r in rows})
    colours = {m: COLOURS[i % len(COLOURS)] for i, m in enumerate(methods)}
    h = 360
    img = Image.new("RGB", (1400, 60 + h * len(models) + 18 * ((len(methods) + 3) // 4) + 30), "white")
    d = ImageDraw.Draw(img)
    d.text((20, 10), f"StyleCloak performance: {title}"[:220], fill=(0, 0, 0))
    for i, (model, dtype) in enumerate(models):
        series = {}
        for r in rows:
            if (r["model"], r["dtype"]) == (model, dtype):
                series.setdefault((f"{r['block']}:{r['method']}", r["mode"]), []).append(
                    (r["size"] ** 2 * r["batch"], r))
        top = 60 + i * h
        _panel(d, (70, top + 20, 660, top + h - 50), series, "s_per_step",
               f"{model} {dtype}: seconds per step (log)", colours, slope_one=True)
        _panel(d, (770, top + 20, 1360, top + h - 50), series, "peak_mib",
               f"{model} {dtype}: peak memory MiB (log, weights included)", colours)
    y = 60 + h * len(models)
    for j, m in enumerate(methods):
        x = 20 + (j % 4) * 340
        d.rectangle([x, y + (j // 4) * 18 + 3, x + 10, y + (j // 4) * 18 + 11], fill=colours[m])
        d.text((x + 16, y + (j // 4) * 18), m, fill=(0, 0, 0))
    d.text((20, img.height - 20), "marker: circle = fast, triangle = balanced, square = low; grey line: time "
           "proportional to pixels", fill=(0, 0, 0))
    img.save(path)


