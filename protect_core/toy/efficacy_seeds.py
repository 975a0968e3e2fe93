"""Several seeds of the efficacy benchmark merged into one result: means over seeds with their standard errors.

One seed of :func:`protect_core.toy.efficacy.run_efficacy` fixes the artist's images, the cloaks' and purifiers'
randomness, the attacker's fine-tune and the sampling noise; its binomial standard error covers only the last of
these. Running seeds ``s_1..s_n`` and merging them here gives, per (training set, fine-tune) row:

* ``success``, ``p_style``, ``style_drop``, ``effect``, ``psnr``, ``ssim``: the mean over seeds;
* ``success_se`` / ``p_style_se``: the standard error of that mean across seeds, sd_seeds / sqrt(n) (n >= 2), which
  includes every source of randomness above (for n = 1 the row is the seed's own);
* ``seeds``: n, and ``per_seed_success``: the seeds' own rates.

The sanity check and the goal check (:func:`~protect_core.toy.efficacy.sanity`,
:func:`~protect_core.toy.efficacy.goal_check`) are recomputed on the merged numbers, so the report states the goal
for the mean over seeds. All runs must share every setting but the seed.
"""
from __future__ import annotations

import math
import statistics

from .efficacy import goal_check, sanity

_MEAN_KEYS = ("success", "success_2", "p_style", "style_drop", "effect", "psnr", "ssim", "psnr_after_purifier", "final_loss",
              "cloak_seconds", "finetune_seconds")


def mean_se_over_seeds(values: list[float]) -> tuple[float, float]:
    """(mean, standard error across seeds = sample sd / sqrt(n); 0 for one seed), rounded to 6 places."""
    m = statistics.fmean(values)
    se = statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else 0.0
    return round(m, 6), round(se, 6)


def _check_compatible(runs: list[dict]) -> None:
    if not runs:
        raise ValueError("no runs to merge")
    first = {k: v for k, v in runs[0]["config"].items() if k != "seed"}
    for r in runs[1:]:
        other = {k: v for k, v in r["config"].items() if k != "seed"}
        if other != first:
            diff = sorted(k for k in set(first) | set(other) if first.get(k) != other.get(k))
            raise ValueError(f"runs differ in more than the seed: {', '.join(diff)}")
    seeds = [r["config"]["seed"] for r in runs]
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"each run needs its own seed, got {seeds}")


def merge_seed_runs(runs: list[dict]) -> dict:
    """One results dict (same shape as a single run's, see module doc) from runs that differ only in the seed."""
    _check_compatible(runs)
    if len(runs) == 1:
        return runs[0]
    seeds = [r["config"]["seed"] for r in runs]
    keyed = [{(row["set"], row["finetune"]): row for row in r["rows"]} for r in runs]
    rows = []
    for key, row in keyed[0].items():
        per = [k[key] for k in keyed if key in k]
        if len(per) != len(runs):
            raise ValueError(f"row {key} is missing from some runs")
        merged = dict(row)
        for name in _MEAN_KEYS:
            vals = [p[name] for p in per if p.get(name) is not None]
            merged[name] = mean_se_over_seeds(vals)[0] if len(vals) == len(per) else None
        merged["success_se"] = mean_se_over_seeds([p["success"] for p in per])[1]
        merged["p_style_se"] = mean_se_over_seeds([p["p_style"] for p in per])[1]
        merged["samples"] = sum(p["samples"] for p in per)
        merged["seeds"] = len(per)
        merged["per_seed_success"] = [p["success"] for p in per]
        rows.append(merged)
    finetunes = {}
    for kind, info in runs[0]["finetunes"].items():
        base_m, base_se = mean_se_over_seeds([r["finetunes"][kind]["base"]["p_style"]["mean"] for r in runs])
        clean = [next(row for row in r["rows"] if row["set"] == "clean" and row["finetune"] == kind) for r in runs]
        clean_m, clean_se = mean_se_over_seeds([c["p_style"] for c in clean])
        succ_m, succ_se = mean_se_over_seeds([r["finetunes"][kind]["base"]["success"]["rate"] for r in runs])
        base = {"success": {"rate": succ_m, "se": succ_se, "n": sum(r["finetunes"][kind]["base"]["success"]["n"]
                                                                    for r in runs)},
                "p_style": {"mean": base_m, "se": base_se, "n": len(runs)}}
        finetunes[kind] = {**info, "base": base,
                           "sanity": sanity(base["p_style"], {"mean": clean_m, "se": clean_se}),
                           "seconds": round(sum(r["finetunes"][kind].get("seconds", 0) for r in runs), 1)}
    sets = {}
    for name, meta in runs[0]["sets"].items():
        merged = dict(meta)
        for k in ("psnr", "ssim", "linf_255"):
            vals = [r["sets"][name].get(k) for r in runs]
            if all(v is not None for v in vals):
                merged[k] = mean_se_over_seeds(vals)[0]
        sets[name] = merged
    seconds = {k: round(sum(r["seconds"][k] for r in runs), 1) for k in runs[0]["seconds"]}
    return {**runs[0], "config": {**runs[0]["config"], "seed": seeds[0], "seeds": seeds}, "sets": sets,
            "finetunes": finetunes, "rows": rows, "goal": goal_check(rows, finetunes), "seconds": seconds}
