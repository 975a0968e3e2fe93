"""The efficacy benchmark's outputs: the markdown table with its caption, the goal summary, and the PNG chart.

Everything here is pure formatting of the dict that :func:`protect_core.toy.efficacy.run_efficacy` returns (so it
can be re-drawn from ``efficacy.json``). The chart is drawn with Pillow only: one panel per fine-tune, one group
of horizontal bars per training set (clean, placebo, each cloak), one bar per purifier condition, x = protection
success rate in %, with the 80% and 90% goal lines.
"""
from __future__ import annotations

from .efficacy import INTENSITY_ORDER, PLACEBO, SANITY_MARGIN

CAPTION = (
    "Protection success = share of the fine-tuned model's samples that the world's style classifier does NOT assign "
    "to the held-out style (argmax over all the world's styles; binomial SE <= {se:.0f} points at {n} samples). Each "
    "cell: success rate (in the atelier world: classifier / nearest-centroid judge), then in brackets the style-score drop = p(style) of the clean-trained model of the same "
    "fine-tune and purifier minus this condition's (clean rows: their own p(style), i.e. how much style the mimic "
    "learned with no protection; their success rate is the no-protection floor). Purifier columns: the training "
    "set (clean art included) was first passed through that purifier. PSNR/SSIM: cloaked vs clean, before any "
    "purifier. placebo = uniform random noise of +-8/255 (a control that should not protect).")


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.0f}%"


def _cell(row: dict | None) -> str:
    if row is None:
        return ""
    rate = _pct(row["success"])
    if row.get("seeds", 1) > 1:  # several seeds merged: the SE across seeds, in points
        rate += f" ±{100 * row['success_se']:.0f}"
    if row.get("success_2") is not None:  # the world's second judge (nearest centroid in the style embedding)
        rate += f" / {_pct(row['success_2'])}"
    if row["method"] == "clean":
        return f"{rate} (p {row['p_style']:.2f})"
    drop = round(row["style_drop"], 2) + 0.0  # no "-0.00"
    return f"{rate} ({drop:+.2f})"


def purifier_columns(results: dict) -> list[str]:
    return ["none", *results["config"]["purifiers"]]


def set_order(results: dict) -> list[str]:
    """clean, placebo, then the cloaks by method (config order), intensity (low..high), plain before robust."""
    methods = list(dict.fromkeys(results["config"]["methods"] + results["config"]["robust"]))
    names = [n for n in results["sets"] if "|" not in n]

    def key(n):
        m = results["sets"][n]
        return (n != "clean", n != PLACEBO, methods.index(m["method"]) if m["method"] in methods else -1,
                INTENSITY_ORDER.index(m["intensity"]) if m["intensity"] in INTENSITY_ORDER else -1,
                bool(m["robust"]))
    return sorted(names, key=key)


def _label(name: str, meta: dict) -> str:
    if name == "clean":
        return "clean (no cloak)"
    return name


def markdown_table(results: dict) -> str:
    cols = purifier_columns(results)
    by = {(r["set"], r["finetune"]): r for r in results["rows"]}
    head = "| cloak | eps/255 | PSNR dB | SSIM | fine-tune | " + " | ".join(
        "no purifier" if c == "none" else f"after {c}" for c in cols) + " |"
    lines = [head, "|" + "---|" * (5 + len(cols))]
    for kind, info in results["finetunes"].items():
        b = info["base"]
        lines.append(f"| base model (no fine-tune) | | | | {kind} | {_pct(b['success']['rate'])} "
                     f"(p {b['p_style']['mean']:.2f}) |" + " |" * (len(cols) - 1))
    for name in set_order(results):
        meta = results["sets"][name]
        for kind in results["finetunes"]:
            cells = [_cell(by.get((name if c == "none" else f"{name}|{c}", kind))) for c in cols]
            psnr = "inf" if name == "clean" else f"{meta.get('psnr', float('nan')):.1f}"
            ssim = "1" if name == "clean" else f"{meta.get('ssim', float('nan')):.3f}"
            eps = "0" if name == "clean" else f"{meta.get('eps_255', 0):.1f}"
            lines.append(f"| {_label(name, meta)} | {eps} | {psnr} | {ssim} | {kind} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def caption(results: dict) -> str:
    n = results["config"]["samples"]
    text = CAPTION.format(se=100 * 0.5 / n ** 0.5, n=n)
    seeds = results["config"].get("seeds") or []
    if len(seeds) > 1:
        text += (f" Several seeds ({', '.join(map(str, seeds))}): every number is the mean over the seeds, and "
                 "'±' is the standard error of that mean across seeds (new art, cloaks, fine-tune and sampling "
                 "noise per seed).")
    return text


def goal_text(results: dict) -> str:
    """Plain sentences: the sanity check and the issue's goal per fine-tune, whatever the numbers are."""
    out = []
    for kind, g in results["goal"].items():
        info = results["finetunes"][kind]
        s = info["sanity"]
        out.append(f"- **{kind}**: sanity {'passed' if s['passed'] else 'FAILED (results inconclusive)'} -- the "
                   f"clean-trained model's p(style) is {s['gain']:+.2f} over the base model's (needs >= "
                   f"{SANITY_MARGIN}, SE {s['stderr']:.2f}).")
        b = g["best_default"]
        if not s["passed"]:
            out.append("  - goals: INCONCLUSIVE -- the mimic did not learn the style even from clean art, so a high "
                       "success rate here says nothing about the cloaks.")
            continue
        if b is None:
            out.append("  - no cloak method at the default intensity was run.")
        else:
            verdict = "MET" if g["meets_90_at_35db"] else "NOT met"
            out.append(f"  - goal >= 90% success at PSNR >= 35 dB (default intensity): {verdict}. Best success: "
                       f"{b['cloak']} {_pct(b['success'])} at {b['psnr']:.1f} dB"
                       + (f"; methods meeting both: {', '.join(g['meets_90_at_35db'])}" if g["meets_90_at_35db"]
                          else "") + ".")
        if not g["robust_after"]:
            out.append("  - robust goal (>= 80% after JPEG q75 and after IMPRESS): not measured in this run.")
        else:
            parts = [f"{c} " + "/".join(f"{p} {_pct(v)}" for p, v in sorted(d.items()))
                     for c, d in g["robust_after"].items()]
            verdict = ("MET by " + ", ".join(g["robust_meets_80"])) if g["robust_meets_80"] else "NOT met"
            if not g["robust_measured"]:
                verdict += " (needs both jpeg75 and impress in --purifiers)"
            out.append(f"  - robust goal (>= 80% after JPEG q75 and after IMPRESS): {verdict}; " + "; ".join(parts)
                       + ".")
    return "\n".join(out)


def _seeds(cfg: dict) -> str:
    seeds = cfg.get("seeds") or [cfg["seed"]]
    return f"seed {seeds[0]}" if len(seeds) == 1 else f"seeds {', '.join(map(str, seeds))} (means over seeds)"


def markdown_report(results: dict, command: str = "") -> str:
    cfg = results["config"]
    ft = ", ".join(f"{k}: {v['settings']['method']} lr {v['settings']['lr']:g}, {v['settings']['steps']} steps"
                   for k, v in results["finetunes"].items())
    sec = results["seconds"]
    parts = ["# Efficacy on the toy world", ""]
    if command:
        parts += [f"Command: `{command}`", ""]
    parts += [f"Held-out style `{results['held_out']}` at {results['size']} px, {cfg['images']} training images, "
              f"{cfg['samples']} samples per condition, {_seeds(cfg)}; attacker fine-tunes: {ft}. "
              f"Run time {sec['total'] / 60:.1f} min (cloak {sec['cloak']:.0f} s, purify {sec['purify']:.0f} s, "
              f"mimicry {sec['mimicry']:.0f} s).", "", markdown_table(results), "", caption(results), "",
              "## Goal (issue 7), reported as measured", "", goal_text(results), ""]
    return "\n".join(parts)


# --- chart ----------------------------------------------------------------------------------------------------
COLOURS = [(90, 90, 90), (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
           (140, 86, 75)]


def draw_chart(results: dict, path, title: str = "StyleCloak efficacy on the toy world") -> None:
    """A PNG of grouped horizontal bars (see module doc)."""
    from PIL import Image, ImageDraw, ImageFont

    from .budget import chart_fonts

    font, small = chart_fonts()
    cols = purifier_columns(results)
    names = set_order(results)
    kinds = list(results["finetunes"])
    by = {(r["set"], r["finetune"]): r for r in results["rows"]}
    try:
        tiny = ImageFont.load_default(size=10)
    except TypeError:
        tiny = small
    bar, gap, label_w, plot_w, margin, left = 12, 10, 215, 360, 36, 14
    group_h = len(cols) * bar + gap
    panel_h = len(names) * group_h
    top = 84
    width = label_w + len(kinds) * (plot_w + margin) + margin
    height = top + panel_h + 60
    im = Image.new("RGB", (width, height), "white")
    d = ImageDraw.Draw(im)
    d.text((left, 8), title, fill="black", font=font)
    x = left
    for k, c in enumerate(cols):  # legend
        d.rectangle((x, 32, x + 12, 44), fill=COLOURS[k % len(COLOURS)])
        text = "no purifier" if c == "none" else f"after {c}"
        d.text((x + 16, 31), text, fill="black", font=small)
        x += 24 + int(d.textlength(text, font=small))
    d.text((left, 52), "dashed: goals 80% / 90%", fill=(120, 120, 120), font=small)
    for j, name in enumerate(names):
        y = top + j * group_h
        d.text((left, y + group_h / 2 - 9), _label(name, results["sets"][name])[:28], fill="black", font=small)
    for p, kind in enumerate(kinds):
        x0 = label_w + p * (plot_w + margin)
        d.text((x0, top - 22), f"fine-tune: {kind}", fill="black", font=small)
        for tick in range(0, 101, 20):
            xt = x0 + plot_w * tick / 100
            d.line((xt, top, xt, top + panel_h), fill=(225, 225, 225))
            d.text((xt - 10, top + panel_h + 4), f"{tick}", fill="black", font=small)
        for goal in (80, 90):
            xg = x0 + plot_w * goal / 100
            for yy in range(top, top + panel_h, 8):
                d.line((xg, yy, xg, yy + 4), fill=(120, 120, 120))
        for j, name in enumerate(names):
            for k, c in enumerate(cols):
                row = by.get((name if c == "none" else f"{name}|{c}", kind))
                if row is None:
                    continue
                y = top + j * group_h + k * bar
                end = x0 + plot_w * row["success"]
                d.rectangle((x0, y, end, y + bar - 2), fill=COLOURS[k % len(COLOURS)])
                label = f"{100 * row['success']:.0f}"
                if row["success"] > 0.9:  # no room on the right: write it inside the bar's end
                    d.text((end - 4 - d.textlength(label, font=tiny), y - 1), label, fill="white", font=tiny)
                else:
                    d.text((end + 3, y - 1), label, fill="black", font=tiny)
        d.line((x0, top, x0, top + panel_h), fill="black")
        d.text((x0 + plot_w / 2 - 90, top + panel_h + 22), "protection success rate (%)", fill="black", font=small)
    im.save(str(path), format="PNG")
