"""Intensity presets ("low" / "default" / "high", like Glaze's intensity slider) and expert overrides.

Each method documents its own defaults (``CloakMethod.defaults``: eps, steps, step_size, ...). An intensity scales
them; anything the user sets explicitly (an expert override) wins over both:

=========  ===========  =============  =========================================================
intensity  eps          steps          perceptual budget p (only methods that use one, e.g. glaze)
=========  ===========  =============  =========================================================
low        0.5 x        0.5 x          0.05
default    1 x          1 x            0.07
high       1.5 x        1.5 x          0.10
=========  ===========  =============  =========================================================

* eps is capped at 1 ([0, 1] pixel units); steps are rounded and at least 1 (0 stays 0: the one-pass
  network);
* the step size stays the method's documented one; a method without one gets ``eps / 10`` of the *scaled* eps;
* p values are Glaze's published levels (0.05 / 0.07 / 0.1). Methods whose defaults have no perceptual budget stay
  L-inf only, unless the user passes ``perceptual_budget`` explicitly.

Example: ``settings_for(get_method("photoguard"), "high", steps=50)`` -> photoguard's eps x 1.5, exactly 50 steps.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from .base import CloakMethod, CloakSettings


@dataclass(frozen=True)
class Preset:
    eps_scale: float
    steps_scale: float
    perceptual_budget: float


PRESETS: dict[str, Preset] = {
    "low": Preset(0.5, 0.5, 0.05),
    "default": Preset(1.0, 1.0, 0.07),
    "high": Preset(1.5, 1.5, 0.10),
}

_FIELDS = {f.name for f in dataclasses.fields(CloakSettings)}


def settings_for(method: CloakMethod, intensity: str = "default", base: CloakSettings | None = None,
                 **overrides) -> CloakSettings:
    """Resolved settings for ``method`` at ``intensity``; ``overrides`` (None values ignored) win over the preset.

    ``base`` supplies non-budget fields (seed, prompts, robust, options ...); its eps/steps/perceptual_budget, when
    set, count as expert overrides too. ``options`` overrides are merged into the base's options.
    """
    if intensity not in PRESETS:
        raise ValueError(f"unknown intensity {intensity!r}; choose from {', '.join(PRESETS)}")
    unknown = set(overrides) - _FIELDS
    if unknown:
        raise ValueError(f"unknown cloak setting(s) {sorted(unknown)}; known: {', '.join(sorted(_FIELDS))}")
    base = base or CloakSettings(method=method.name)
    given = {k: v for k, v in overrides.items() if v is not None}
    if "options" in given:
        given["options"] = {**base.options, **given["options"]}
    s = dataclasses.replace(base, method=method.name, **given)
    preset, d = PRESETS[intensity], method.defaults
    if s.eps is None and d.get("eps") is not None:
        s.eps = min(1.0, float(d["eps"]) * preset.eps_scale)
    if s.steps is None and d.get("steps") is not None:
        # a method whose default is 0 steps (the one-pass network) stays at 0 at every intensity
        s.steps = 0 if int(d["steps"]) == 0 else max(1, int(round(int(d["steps"]) * preset.steps_scale)))
    if s.perceptual_budget is None and d.get("perceptual_budget") is not None:
        s.perceptual_budget = preset.perceptual_budget
    return s.resolved(method)
