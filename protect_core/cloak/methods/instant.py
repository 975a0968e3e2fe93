"""Instant cloak: one forward pass of a trained one-pass network (``stylecloak train-generator``).

Amortised protection after MAMC (2023), RID (2024) and FastProtect (CVPR 2025): a small network trained once per
model against a cloak objective (see :mod:`protect_core.generator`) outputs the perturbation direction; times eps
it is the method's :meth:`initial_delta`, and with the default 0 steps that is the whole cloak. The optimiser then
clips it to the L-inf box, quantises it to 8-bit levels and holds it to the perceptual budget exactly as it does
for iterative methods.

Options:

* ``generator``: a generator file, or ``"auto"`` (default): the first one trained for the loaded model (its probe
  matches) in ``STYLECLOAK_GENERATOR_PATH``, then in the registered worlds' folders
  (:mod:`protect_core.generator.store`);
* ``objective``: the method whose loop refines the network's output when ``steps > 0`` (a warm start; default
  photoguard, the objective the shipped generators were trained against); its own options are its defaults;
* ``objective_samples`` defaults to 0 here (no before/after objective: evaluating it would cost the objective's
  preparation, e.g. glaze's img2img target, which the one-pass cloak otherwise never pays).

Defaults: eps 16/255 (what the shipped generators were trained at) and perceptual budget 0.07 (glaze's default
level, so the one-pass cloak is held to the same visibility as the default cloak); the network's output is scaled
by the run's eps, so the intensity presets work as for other methods.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

from ..base import CloakMethod, CloakSettings, get_method, register

_CACHE: dict = {}


def _load(path: Path, device) -> tuple:
    """(net, probe, meta) for ``path`` on ``device``, loaded once per file version."""
    from ...generator.store import load_generator

    st = os.stat(path)
    key = (str(Path(path).resolve()), st.st_mtime_ns, st.st_size, str(device))
    if key not in _CACHE:
        _CACHE.clear()   # one generator in memory at a time
        _CACHE[key] = load_generator(path, device)
    return _CACHE[key]


@register
class Instant(CloakMethod):
    name = "instant"
    summary = "one forward pass of a trained one-pass cloak network (stylecloak train-generator); steps > 0 refine it"
    source = "amortised cloaks: MAMC 2023, RID 2024, FastProtect CVPR 2025; trained on this project's objectives"
    defaults = {"eps": 16 / 255, "steps": 0, "optimizer": "adam", "perceptual_budget": 0.07,
                "options": {"generator": "auto", "objective": "photoguard", "objective_samples": 0}}
    uses_unet = False
    default_tile = 1024

    def _objective_settings(self, settings: CloakSettings) -> tuple[CloakMethod, CloakSettings]:
        inner = get_method(str(settings.options.get("objective", "photoguard")))
        if inner.name == self.name or inner.joint:
            raise ValueError(f"instant: option objective must be a per-image cloak method other than instant, "
                             f"got {inner.name!r}")
        s = CloakSettings(**{**settings.__dict__, "method": inner.name,
                             "options": dict(inner.defaults.get("options", {}))})
        return inner, s

    def check_settings(self, settings) -> None:
        """A named generator file must be a readable generator; a refinement objective must exist."""
        from ...generator.store import read_meta

        choice = settings.options.get("generator", "auto")
        if choice not in (None, "", "auto"):
            read_meta(Path(str(choice)))
        if int(settings.steps):
            self._objective_settings(settings)

    def prepare_steps(self, settings) -> int:
        if not int(settings.steps):
            return 0
        inner, s = self._objective_settings(settings)
        return inner.prepare_steps(s)

    def inner_steps(self, settings) -> int:
        if not int(settings.steps):
            return 0
        inner, s = self._objective_settings(settings)
        return inner.inner_steps(s)

    def prepare(self, host, images, settings, generator):
        from ...generator.store import find_for_host, model_probe, probe_distance, PROBE_TOLERANCE
        from ...errors import StyleCloakError

        choice = settings.options.get("generator", "auto")
        probe = model_probe(host)
        auto = choice in (None, "", "auto")
        path = find_for_host(host, probe) if auto else Path(str(choice))
        net, theirs, meta = _load(path, host.device)
        if not auto and probe_distance(probe, theirs) >= PROBE_TOLERANCE:   # auto found it by this probe
            raise StyleCloakError(f"generator '{path}' was trained for another model (its probe differs from this "
                                  "model's); train one for this model with `stylecloak train-generator`")
        self.net, self.info = net, {"generator": str(path), "trained_eps_255": round(float(meta["eps"]) * 255, 3),
                                    "trained_objective": meta.get("objective")}
        self.inner = None
        if int(settings.steps):
            self.inner, s = self._objective_settings(settings)
            for attr in ("work_progress", "cancel_check"):
                setattr(self.inner, attr, getattr(self, attr, None))
            self.inner.prepare(host, images, s, generator)
            self.info["refined_with"] = self.inner.name

    def initial_delta(self, host, images, settings):
        with torch.no_grad():
            return self.net(images.to(host.device, torch.float32)) * float(settings.eps)

    def loss(self, host, x, step, generator):
        if self.inner is None:
            raise RuntimeError("instant: the reported objective needs steps > 0 (option objective_samples=0)")
        return self.inner.loss(host, x, step, generator)

    def after_step(self, host, x, step, generator):
        self.inner.after_step(host, x, step, generator)

    def shared_parameters(self):
        return [] if self.inner is None else self.inner.shared_parameters()

    def shared_gradients(self, grads, loss):
        self.inner.shared_gradients(grads, loss)
