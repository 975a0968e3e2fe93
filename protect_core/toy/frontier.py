"""The frontier chart of the protection benchmark: protection success against the cloak's PSNR, one line per method
across its budgets, the random-noise control beside them, one panel per attack and one row per judge.

A method whose line sits up and to the right protects more at less visible cost; the noise control shows what the
same amount of unoptimised change does. Points are the means over the merged seeds of
:func:`protect_core.toy.protection.merge_runs`; x is always the PSNR of the cloak itself (before any purifier), so
every panel of a row shares the x axis and a purifier's panel says what is left of the same cloaks after it.
Drawn with Pillow (no matplotlib).
"""
from __future__ import annotations

from .budget import COLOURS, chart_fonts, percent_panel
from .protection import NOISE, merge_runs

NAIVE_GOAL, ROBUST_GOAL = 0.95, 0.85     # the protection issue's goals: un-purified / after each purifier


def method_of(set_name: str) -> str:
    """``"mist@16"`` -> ``"mist"``, ``"aspl:posterior=sample@8+robust"`` -> ``"aspl:posterior=sample+robust"``;
    a name without a budget (default intensity) is its own method."""
    robust = set_name.endswith("+robust")
    base = set_name[: -len("+robust")] if robust else set_name
    return base.rsplit("@", 1)[0] + ("+robust" if robust else "")


def frontier_points(runs: list[dict]) -> dict:
    """``{"attacks": [(label, kind, suffix)], "methods": {method: [set names]}, "psnr": {set: dB},
    "scores": merged scores, "floor": {(kind, suffix): cell}}``: what :func:`draw_frontier` plots."""
    merged = merge_runs(runs)
    first = runs[0]
    sets: list[str] = []   # every un-purified cloak or control, in first-seen order across the runs
    for run in runs:
        sets += [n for n in run["sets"] if "|" not in n and n != "clean" and n not in sets]
    methods: dict[str, list[str]] = {}
    for n in sets:
        if merged["quality"].get(n, {}).get("psnr") is not None:
            methods.setdefault(method_of(n), []).append(n)
    attacks = [("LoRA", "lora", "")] + [(f"LoRA after {p}", "lora", f"|{p}") for p in first["purifiers"]]
    attacks += [(k, k, "") for k in merged["scores"] if k != "lora"]
    floor = {(kind, suf): merged["scores"].get(kind, {}).get("clean" + suf) for _, kind, suf in attacks}
    return {"attacks": attacks, "methods": methods, "scores": merged["scores"], "floor": floor,
            "psnr": {n: merged["quality"][n]["psnr"] for ns in methods.values() for n in ns}}


def draw_frontier(runs: list[dict], path, title: str = "Protection success against PSNR") -> None:
    """A PNG: columns = attacks (LoRA, LoRA after each purifier, then full fine-tuning), rows = judges (classifier,
    centroid); y = protection success (%), x = cloak PSNR (dB); dashed: the goal (95% naive, 85% after a
    purifier); dotted: the no-protection floor (clean art through the same attack); black: the noise control."""
    import math

    from PIL import Image, ImageDraw

    font, small = chart_fonts()
    pts = frontier_points(runs)
    attacks, methods = pts["attacks"], [m for m in pts["methods"] if m.startswith(NOISE)]
    methods += [m for m in pts["methods"] if not m.startswith(NOISE)]
    colour = {m: (0, 0, 0) if m.startswith(NOISE) else COLOURS[1 + k % (len(COLOURS) - 1)]
              for k, m in enumerate(methods)}
    judges = [("classifier", 0), ("centroid", 1)]
    lo = math.floor(min(pts["psnr"].values(), default=20.0)) - 1
    hi = math.ceil(max(pts["psnr"].values(), default=40.0)) + 1
    pw, ph, left, top, gap_x, gap_y = 300, 220, 60, 70, 40, 70
    width = left + len(attacks) * (pw + gap_x) + 230
    im = Image.new("RGB", (width, top + len(judges) * (ph + gap_y) + 10), "white")
    d = ImageDraw.Draw(im)
    d.text((14, 8), title, fill="black", font=font)
    d.text((14, 30), "x: cloak PSNR (dB, before any purifier); dashed: goal; dotted: floor (clean art); "
                     "black: random-noise control", fill=(110, 110, 110), font=small)
    for row, (judge, _) in enumerate(judges):
        y0 = top + row * (ph + gap_y)
        for col, (label, kind, suffix) in enumerate(attacks):
            x0 = left + col * (pw + gap_x)

            def xy(psnr, rate, x0=x0, y0=y0):
                return x0 + pw * (psnr - lo) / (hi - lo), y0 + ph * (1 - rate)

            percent_panel(d, x0, y0, pw, ph, f"{label} - {judge} judge", small)
            for db in range(int(lo), int(hi) + 1, 2 if hi - lo <= 16 else 4):
                d.text((xy(db, 0)[0] - 8, y0 + ph + 4), f"{db}", fill="black", font=small)
            goal = ROBUST_GOAL if suffix else NAIVE_GOAL
            floor = pts["floor"].get((kind, suffix))
            for xx in range(int(x0), int(x0 + pw), 8):
                d.line((xx, xy(lo, goal)[1], xx + 4, xy(lo, goal)[1]), fill=(120, 120, 120))
                if floor and floor.get(judge):
                    d.point((xx, xy(lo, floor[judge][0])[1]), fill=(60, 60, 60))
            for m in methods:
                line = []
                for n in pts["methods"][m]:
                    cell = pts["scores"].get(kind, {}).get(n + suffix)
                    if cell and cell.get(judge):
                        line.append(xy(pts["psnr"][n], cell[judge][0]))
                line.sort()
                if len(line) > 1:
                    d.line(line, fill=colour[m], width=2)
                for x, y in line:
                    d.ellipse((x - 3, y - 3, x + 3, y + 3), fill=colour[m])
    lx = left + len(attacks) * (pw + gap_x) - 10
    for k, m in enumerate(methods):
        d.rectangle((lx, top + 18 * k + 3, lx + 10, top + 18 * k + 13), fill=colour[m])
        d.text((lx + 16, top + 18 * k), m, fill="black", font=small)
    im.save(str(path), format="PNG")
