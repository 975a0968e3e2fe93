"""The tables of benchmarks/perf.py: engine/reference ratios, the overhead summary, the markdown rows and the
time-vs-pixels linearity table. Pure functions of the measured rows (dicts), so a merged run re-renders them."""
from __future__ import annotations

import math
import statistics


def add_ratios(rows: list[dict]) -> None:
    """Engine over reference, and whether the engine's losses match the reference's (same seeds, same path)."""
    pairs = {"unet-pgd": "mist-semantic", "encoder-pgd": "photoguard"}
    for r in rows:
        if r["block"] != "reference":
            continue
        for e in rows:
            if (e["block"] == "cloak" and e["method"] == pairs[r["method"]] and e["mode"] == "fast"
                    and (e["model"], e["size"], e["batch"], e["dtype"]) == (r["model"], r["size"], r["batch"],
                                                                            r["dtype"])):
                e["ref_ratio"] = e["s_per_step"] / r["s_per_step"] if r["s_per_step"] else float("nan")
                if e.get("losses") and r.get("losses"):
                    dev = max(abs(a - b) / max(abs(b), 1e-12) for a, b in zip(e["losses"], r["losses"]))
                    note = e.get("note", "").split(" losses vs ref")[0].split("losses vs ref")[0]
                    e["note"] = (note + f" losses vs ref: rel. diff {dev:.1e}").strip()


def overhead_summary(rows: list[dict]) -> list[str]:
    """Engine s/step over the reference's: median and range, all pairs and >= 512 px."""
    out = []
    for label, keep in (("all sizes", lambda r: True), (">= 512 px", lambda r: r["size"] >= 512)):
        ratios = sorted(r["ref_ratio"] for r in rows if r.get("ref_ratio") == r.get("ref_ratio")
                        and r.get("ref_ratio") is not None and keep(r))
        if ratios:
            out.append(f"- engine / reference s/step, {label}: median {statistics.median(ratios):.2f} over "
                       f"{len(ratios)} pairs (range {ratios[0]:.2f} to {ratios[-1]:.2f})")
    return out


# ---- output ----------------------------------------------------------------------------------------------------------
HEADER = ("| model | dtype | block | method | mode | size | batch | s / step | ref x | peak MiB | reserved MiB "
          "| model MiB | note |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|")


def _n(v, f="{:.3f}"):
    return "" if v is None or (isinstance(v, float) and math.isnan(v)) else f.format(v)


def fmt_row(r: dict) -> str:
    peak = _n(r.get("peak_mib"), "{:.0f}") + ("" if r.get("exact_peak", True) else "*")
    return (f"| {r['model']} | {r['dtype']} | {r['block']} | {r['method']} | {r['mode']} | {r['size']} | {r['batch']} "
            f"| {_n(r.get('s_per_step'))} | {_n(r.get('ref_ratio'), '{:.2f}')} | {peak} "
            f"| {_n(r.get('reserved_mib'), '{:.0f}')} | {_n(r.get('model_mib'), '{:.0f}')} | {r.get('note', '')} |")


def linearity(rows: list[dict]) -> list[str]:
    """Slope of log(s/step) against log(pixels) per series (1.0 = time linear in pixel count)."""
    out, series = [], {}
    for r in rows:
        if r.get("s_per_step") and not math.isnan(r["s_per_step"]):
            key = (r["model"], r["dtype"], r["block"], r["method"], r["mode"])
            series.setdefault(key, []).append((r["size"] ** 2 * r["batch"], r["s_per_step"]))
    for key, pts in sorted(series.items()):
        pts = sorted(set(pts))
        if len(pts) < 3:
            continue
        lx, ly = [math.log(p) for p, _ in pts], [math.log(t) for _, t in pts]
        mx, my = sum(lx) / len(lx), sum(ly) / len(ly)
        slope = sum((a - mx) * (b - my) for a, b in zip(lx, ly)) / sum((a - mx) ** 2 for a in lx)
        lo = max(1, len(pts) // 2)   # the upper half only: fixed per-step costs flatten the small sizes
        hx, hy = lx[lo - 1:], ly[lo - 1:]
        top = (hy[-1] - hy[0]) / (hx[-1] - hx[0]) if len(hx) > 1 and hx[-1] != hx[0] else float("nan")
        out.append(f"| {' | '.join(map(str, key))} | {len(pts)} | {slope:.2f} | {top:.2f} |")
    return out


def report(rows: list[dict], title: str) -> str:
    lines = [f"# Performance: {title}", ""] + overhead_summary(rows) + ["", HEADER] + [fmt_row(r) for r in rows]
    lin = linearity(rows)
    if lin:
        lines += ["", "Time vs pixel count (log-log slope of s/step against size x size x batch; 1.00 = linear):", "",
                  "| model | dtype | block | method | mode | points | slope (all) | slope (upper half) |",
                  "|---|---|---|---|---|---|---|---|"] + lin
    return "\n".join(lines) + "\n"
