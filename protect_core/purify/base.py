"""The contract every purifier implements, the purifier registry, and ``purify`` (run any chain as one step).

A purifier is an attack on a protective cloak: it takes cloaked images ``(B, 3, H, W)`` in ``[0, 1]`` and returns
images of the same shape and range from which the cloak is (hopefully) gone. Each purifier is one small class in
``protect_core/purify/methods/`` decorated with :func:`register`; it documents its defaults (``defaults`` and
``param_doc``) and a one-line ``summary``. Filters (``needs_host = False``) work without a model; the diffusion
purifiers and IMPRESS borrow the host's model through ``host.borrowed()`` and never change it.

``purify(host, images01, chain, seed, progress, memory)`` runs a chain such as ``[("jpeg", {"quality": 75}),
("diffpure", {})]`` in order, inside one borrow when any stage needs the model, and returns
``(images01, info)`` where ``info`` records each stage's resolved parameters, seconds and own numbers, and the
memory mode used (:mod:`protect_core.memory_job`: chosen once per call; out of memory reruns the whole chain
in the next lower mode).
"""
from __future__ import annotations

import importlib
import math
import pkgutil
import time
from typing import Any, ClassVar, Sequence

import torch

from ..memory import memory_mode
from ..progress import Progress
from ..memory_job import MemoryJob, run_in_memory_mode

#: what to change when a chain runs out of memory even in the lowest mode
LIMIT_ADVICE = ("Purify smaller images (--max-pixels, or downscale them first), fewer images at once, a smaller "
                "gridpure tile_batch or noisy_upscale scale, load the model in half precision (--dtype fp16), or run "
                "on the CPU (--device cpu).")


class Purifier:
    """Base class of a purifier; subclasses set the class attributes and implement ``run``."""

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""          # one line for --help, listings and node tooltips
    source: ClassVar[str] = ""           # the paper / tool it follows
    defaults: ClassVar[dict] = {}        # every parameter with its documented default
    param_doc: ClassVar[dict] = {}       # parameter -> one-line description
    needs_host: ClassVar[bool] = False   # True: uses the diffusion model (runs inside host.borrowed())

    def validate(self, params: dict, images: torch.Tensor) -> None:
        """Raise ValueError naming the parameter when a value cannot work (called before anything runs)."""

    def count_steps(self, params: dict, images: torch.Tensor, host) -> int:
        """How many ``progress.step()`` calls ``run`` will make (for the progress bar's total)."""
        return 1

    def memory_pixels(self, params: dict, images: torch.Tensor, host) -> int:
        """Image pixels the model sees at once (for the ``auto`` memory choice): the whole batch by default."""
        return int(images[:, 0].numel())

    def memory_image_pixels(self, params: dict, images: torch.Tensor, host) -> int | None:
        """One image's pixels as the VAE sees it (lets ``auto`` count one VAE tile of a large image in ``low``):
        the input's H x W for a purifier that sizes its work as whole input images; None (unknown: no such
        credit) for one that sizes its own work (``memory_pixels`` overridden) and does not say."""
        if type(self).memory_pixels is not Purifier.memory_pixels:
            return None
        return int(images.shape[-2] * images.shape[-1])

    def run(self, host, images: torch.Tensor, params: dict, generator: torch.Generator,
            progress: Progress) -> tuple[torch.Tensor, dict]:
        """Purify ``images`` (B, 3, H, W) in [0, 1]; return (images in [0, 1] of the same shape, info dict).
        Never write into ``images`` (an out-of-memory retry starts again from them)."""
        raise NotImplementedError


PURIFIERS: dict[str, type[Purifier]] = {}


def register(cls: type[Purifier]) -> type[Purifier]:
    if not cls.name or cls.name in PURIFIERS:
        raise ValueError(f"purifier needs a unique name, got {cls.name!r}")
    missing = set(cls.defaults) - set(cls.param_doc)
    if not cls.summary or missing:
        raise ValueError(f"purifier {cls.name!r} must document a summary and every parameter (missing {missing})")
    PURIFIERS[cls.name] = cls
    return cls


_DISCOVERED = False


def _discover() -> None:
    """Import every module of ``purify/methods`` once (importing one directly must not hide the others)."""
    global _DISCOVERED
    from . import methods

    for info in pkgutil.iter_modules(methods.__path__):
        importlib.import_module(f"{methods.__name__}.{info.name}")
    _DISCOVERED = True


def available_purifiers() -> dict[str, type[Purifier]]:
    if not _DISCOVERED:
        _discover()
    return dict(sorted(PURIFIERS.items()))


def get_purifier(name: str) -> Purifier:
    found = available_purifiers()
    if name not in found:
        raise ValueError(f"unknown purifier {name!r}; choose from {', '.join(found)}")
    return found[name]()


def resolve_params(purifier: Purifier, params: dict | None) -> dict:
    """The purifier's defaults overlaid with ``params``; unknown names are an error naming the valid ones."""
    params = dict(params or {})
    unknown = sorted(set(params) - set(purifier.defaults))
    if unknown:
        raise ValueError(f"purifier {purifier.name!r} has no parameter(s) {', '.join(unknown)}; "
                         f"its parameters are {', '.join(sorted(purifier.defaults)) or '(none)'}")
    for key, value in params.items():
        _check_kind(purifier.name, key, purifier.defaults[key], value)
    out = dict(purifier.defaults)
    out.update(params)
    return out


def _check_kind(name: str, key: str, default, value) -> None:
    """A value of the default's kind: a finite number for a number, true/false for a flag, text for text."""
    def number(v):
        return isinstance(v, (int, float)) and not isinstance(v, bool)

    if isinstance(default, bool):
        ok, want = isinstance(value, bool), "true or false"
    elif number(default):
        ok, want = number(value) and math.isfinite(value), "a finite number"
        if ok and isinstance(default, int) and not isinstance(value, int):
            ok, want = float(value).is_integer(), "a whole number"
    elif isinstance(default, str):
        ok, want = isinstance(value, str), "text"
    else:
        ok, want = True, ""
    if not ok:
        raise ValueError(f"purifier {name!r}: {key} must be {want}, got {value!r}")


def normalise_chain(chain) -> list[tuple[str, dict]]:
    """Accept ``"jpeg"``, ``["jpeg", "diffpure"]``, ``[("jpeg", {"quality": 50}), ...]`` or a dict per stage."""
    if isinstance(chain, str):
        chain = [chain]
    out = []
    for stage in chain:
        if isinstance(stage, str):
            out.append((stage, {}))
        elif isinstance(stage, dict) and "name" in stage:
            out.append((stage["name"], dict(stage.get("params") or {})))
        elif isinstance(stage, (tuple, list)) and len(stage) == 2 and isinstance(stage[0], str):
            out.append((stage[0], dict(stage[1] or {})))
        else:
            raise ValueError(f"purify chain: cannot read stage {stage!r}; use a name or (name, params)")
    if not out:
        raise ValueError("purify chain is empty; name at least one purifier")
    return out


def check_images(images01) -> torch.Tensor:
    """Validate a (B, 3, H, W) float batch in [0, 1]; returns it (a (3, H, W) image gains a batch axis)."""
    from ..images import validate_tensor

    validate_tensor(images01, "images to purify")
    return images01[None] if images01.dim() == 3 else images01


def purify(host, images01: torch.Tensor, chain, seed: int = 0, progress: Progress | None = None,
           memory="auto") -> tuple[torch.Tensor, dict]:
    """Run ``chain`` on ``images01`` (B, 3, H, W) in [0, 1] as one step; returns (images01, info).

    ``host`` may be None when every stage is a filter. Stage ``k`` draws its randomness from a generator seeded
    with ``seed + k``, so the same seed gives the same output. Cancellation (``progress`` with a CancelToken)
    raises :class:`~protect_core.errors.Cancelled`; the host's model is left untouched either way.
    ``memory``: "auto" (default), "fast", "balanced", "low" or a MemoryMode, for chains that use the model;
    ``info["memory"]`` says which mode ran and any out-of-memory fallbacks (None for filter-only chains). Below
    ``low``: :class:`~protect_core.memory.MemoryLimitError`. ``images01`` is never written.
    Progress: every stage's ``count_steps`` is announced before the first step (a diffusion stage counts its VAE
    encode and decode besides its DDIM steps, IMPRESS one step per iteration), and the bar ends on that total.
    """
    x = check_images(images01)
    stages = [(get_purifier(name), params) for name, params in normalise_chain(chain)]
    resolved = [(p, resolve_params(p, params)) for p, params in stages]
    for p, params in resolved:
        p.validate(params, x)
    uses_host = any(p.needs_host for p, _ in resolved)
    if uses_host and host is None:
        names = [p.name for p, _ in resolved if p.needs_host]
        raise ValueError(f"purifier(s) {', '.join(names)} need a diffusion model (host), but none was given")
    if memory is not None:
        memory_mode(memory)   # a bad memory name fails before any work, also for filter-only chains
    progress = progress if progress is not None else Progress()
    device, dtype = x.device, x.dtype
    t_all = time.perf_counter()
    counts = [int(p.count_steps(params, x, host)) for p, params in resolved]
    progress.add_total(sum(counts))

    def run_chain() -> tuple[torch.Tensor, list[dict]]:
        """The whole chain from the input (a retry after out-of-memory starts here again)."""
        records: list[dict[str, Any]] = []
        out = x.detach().float()
        start = progress.done
        for k, (p, params) in enumerate(resolved):
            progress.check()
            t0 = time.perf_counter()
            g = torch.Generator().manual_seed(int(seed) + k)
            out, info = p.run(host if p.needs_host else None, out, params, g, progress)
            progress.catch_up(start + sum(counts[:k + 1]))   # a stage that reported fewer steps than it counted
            out = out.detach().float().clamp(0, 1).to(device)
            records.append({"name": p.name, "params": dict(params),
                            "seconds": round(time.perf_counter() - t0, 4), **(info or {})})
        return out, records

    if uses_host:
        jobs = [MemoryJob(False, p.memory_pixels(params, x, host), image_pixels=p.memory_image_pixels(params, x, host))
                for p, params in resolved if p.needs_host]
        names = ",".join(p.name for p, _ in resolved)
        work = f"purifying {x.shape[0]} image(s) of {x.shape[-1]}x{x.shape[-2]} px ({names})"
        (out, records), mem = run_in_memory_mode(host, memory, run_chain, jobs, work=work, advice=LIMIT_ADVICE,
                                                 progress=progress)
    else:
        (out, records), mem = run_chain(), None
    return out.to(dtype), {"chain": records, "seed": int(seed), "seconds": round(time.perf_counter() - t_all, 4),
                           "memory": mem}


def describe_purifiers(names: Sequence[str] | None = None) -> list[dict]:
    """Name, summary, source, needs_host and documented defaults of each purifier (for listings and README)."""
    found = available_purifiers()
    rows = []
    for name in names or found:
        cls = found[name]
        rows.append({"name": name, "summary": cls.summary, "source": cls.source, "needs_host": cls.needs_host,
                     "defaults": dict(cls.defaults), "params": dict(cls.param_doc)})
    return rows
