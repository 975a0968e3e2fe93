"""Progress through every phase of every block (issue 18): the bar's total is announced before the first update,
every update moves it by one, it ends exactly on its total, and no stretch of work between two updates (or after
the last) holds more than a unit or two of model work, however long the inner loops are.

Each test runs one block on the tiny model with its inner loops set longer than the bound it asserts (three
surrogate steps, three LoRA steps, several tiles, ...), and counts the model's UNet forwards and VAE passes
(``host._unet``, ``host._vae_posterior``, ``host._vae_decode``) between consecutive updates: an inner loop that
did not report would show up as a gap of at least three calls.
"""
from __future__ import annotations

import contextlib

import pytest
import torch

from protect_core.cloak.base import CloakSettings, get_method
from protect_core.cloak.optimize import optimize, progress_steps
from protect_core.cloak.runner import cloak_images
from protect_core.mimicry import run_mimicry_test
from protect_core.progress import Progress
from protect_core.purify import purify
from mimicry_fixtures import make_art, small

KINDS = {"_unet": "unet", "_vae_posterior": "vae", "_vae_decode": "vae"}


class BarRecorder:
    """Every update as (done, total, phase, model calls since the previous update); ``tail``: calls after the last."""

    def __init__(self, host):
        self.host, self.updates = host, []
        self.calls = {"unet": 0, "vae": 0}
        self._mark = dict(self.calls)

    @contextlib.contextmanager
    def counting(self):
        for attr, kind in KINDS.items():
            real = getattr(self.host, attr)

            def wrapped(*a, _real=real, _kind=kind, **k):
                self.calls[_kind] += 1
                return _real(*a, **k)

            setattr(self.host, attr, wrapped)   # an instance attribute shadows the class's method
        try:
            yield self
        finally:
            for attr in KINDS:
                delattr(self.host, attr)

    def _since(self) -> dict:
        return {k: self.calls[k] - self._mark[k] for k in self.calls}

    def on_step(self, done, total, info):
        self.updates.append((done, total, info.get("phase"), self._since()))
        self._mark = dict(self.calls)

    def progress(self, total: int = 0) -> Progress:
        return Progress(total, on_step=self.on_step)

    @property
    def tail(self) -> dict:
        return self._since()

    def gap(self, kind: str) -> int:
        return max([u[3][kind] for u in self.updates] + [self.tail[kind]])


def assert_bar(rec: BarRecorder, unet: int, vae: int) -> None:
    """Announced total = number of updates, +1 each, ends at 100%, and the model-work bound per gap holds."""
    assert rec.updates, "the block reported nothing"
    total = rec.updates[0][1]
    assert [u[1] for u in rec.updates] == [total] * len(rec.updates), "the total is known from the first update"
    assert [u[0] for u in rec.updates] == list(range(1, total + 1)), "one update per announced step, in order"
    assert rec.gap("unet") <= unet, [(u[2], u[3]) for u in rec.updates]
    assert rec.gap("vae") <= vae, [(u[2], u[3]) for u in rec.updates]


@pytest.fixture(scope="module")
def host():
    from protect_core.tiny_models import build_tiny_host

    return build_tiny_host("tiny")


def _images(n: int, h: int = 32, w: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 3, h, w, generator=torch.Generator().manual_seed(seed))


# ---- cloak methods --------------------------------------------------------------------------------------------------
FAST = {"objective_samples": 1}
INNER = {  # inner loops longer than the bound: 3 surrogate / LoRA / pattern / DDIM steps per phase
    "aspl": {"train_steps": 3, "pgd_steps": 2, "train_batch": 1, **FAST},
    "mist2": {"lora_steps": 3, "pgd_steps": 2, **FAST},
    "caat": {"train_steps": 3, "lr": 1e-4, **FAST},
    "styleprotect": {"train_steps": 3, "lr": 1e-4, **FAST},
    "fsmg": {"surrogate_steps": 3, **FAST},
    "pag": {"pattern_steps": 3},
    "glaze": {"target_steps": 6},
    "mist": FAST, "sds": {}, "photoguard": {}, "pid": {},
}


@pytest.mark.parametrize("name", sorted(INNER))
def test_every_inner_loop_of_a_cloak_method_moves_the_bar(host, name):
    """Image steps, prepare work and the training between image steps: each unit reports, the counts add up."""
    method = get_method(name)
    s = CloakSettings(method=name, steps=5, options=dict(INNER[name])).resolved(method)
    rec = BarRecorder(host)
    with rec.counting():
        optimize(host, method, _images(2), s, rec.progress(s.steps))
    # a gap holds at most the objective before the first step plus one step (an image step or a training step);
    # encoder methods: the target's encode, the objective's and the first step's
    assert_bar(rec, unet=2, vae=3)
    assert len(rec.updates) == progress_steps(method, s)
    own = [u for u in rec.updates if u[2] is not None]
    assert len(own) == method.prepare_steps(s) + method.inner_steps(s)
    assert len(rec.updates) - len(own) == s.steps, "one update per image step"


def test_surrogate_rounds_between_steps_are_counted_as_announced(host):
    """ASPL: 3 clean fine-tune steps in prepare; after steps 2 and 4 (not after the last) 3 + 3 more each."""
    method = get_method("aspl")
    s = CloakSettings(method="aspl", steps=5, options=dict(INNER["aspl"])).resolved(method)
    assert (method.prepare_steps(s), method.inner_steps(s)) == (3, 2 * 2 * 3)
    mist2 = get_method("mist2")
    s2 = CloakSettings(method="mist2", steps=6, options=dict(INNER["mist2"])).resolved(mist2)
    assert (mist2.prepare_steps(s2), mist2.inner_steps(s2)) == (3, 2 * 3)   # rounds after steps 2 and 4, not 6
    caat = get_method("caat")   # train_steps=2: the first update shares the image step's pass, the second is a unit
    assert caat.inner_steps(CloakSettings(method="caat", steps=4, options={"train_steps": 2})) == 4
    assert caat.inner_steps(CloakSettings(method="caat", steps=4, options={"train_steps": 2,
                                                                          "shared_pass": False})) == 8


def test_robust_samples_each_report(host):
    method = get_method("mist")
    s = CloakSettings(method="mist", steps=2, robust=True, robust_samples=3, options=dict(FAST)).resolved(method)
    rec = BarRecorder(host)
    with rec.counting():
        _, info = optimize(host, method, _images(1), s, rec.progress(s.steps))
    assert_bar(rec, unet=2, vae=4)
    assert len(rec.updates) == 6 and len(info["losses"]) == 2
    assert [u[2] for u in rec.updates] == ["robust", "robust", None] * 2


def test_runner_announces_every_batch_up_front(host):
    """Two image sizes = two batches of a joint method with prepare and inner work: one total from the start."""
    method = get_method("mist2")
    s = CloakSettings(method="mist2", steps=3, options=dict(INNER["mist2"]))
    images = [_images(1, 32, 32)[0], _images(1, 40, 32, seed=1)[0]]
    rec = BarRecorder(host)
    with rec.counting():
        out = cloak_images(host, images, s, rec.progress())
    assert all(r is not None for r in out)
    # across a batch boundary: the previous batch's objective, this one's objective and its first step
    assert_bar(rec, unet=3, vae=4)
    assert len(rec.updates) == 2 * progress_steps(method, s.resolved(method))


def test_a_batch_retried_after_out_of_memory_keeps_the_total(host, monkeypatch):
    """The retry rewinds the bar to the batch's start and counts its prepare work once: it still ends on 100%."""
    cls, calls = type(get_method("fsmg")), []
    real = cls.loss

    def loss(self, h, x, step, generator):
        calls.append(1)
        if len(calls) == 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return real(self, h, x, step, generator)

    monkeypatch.setattr(cls, "loss", loss)
    seen = []
    s = CloakSettings(method="fsmg", steps=2, options={"surrogate_steps": 3, **FAST})
    cloak_images(host, [_images(1)[0]], s, Progress(on_step=lambda d, t, i: seen.append((d, t))), memory="fast")
    assert seen[-1] == (5, 5) and {t for _, t in seen} == {5}


# ---- Mimicry Test ---------------------------------------------------------------------------------------------------
def test_mimicry_test_reports_every_phase(host, rng_images):
    """Generations (DDIM steps and each batch's decode), prior images, the fine-tunes' encoding and steps, the
    ceiling's VAE round trips and the embeddings: every phase reports and the announced total is what is reported."""
    clean, sets = make_art(rng_images)
    settings = small(steps=3, batch_size=1, sample_batch=1, sample_steps=3, samples=2, reference_samples=2,
                     prior_preservation=True, prior_images=2)
    rec = BarRecorder(host)
    with rec.counting():
        run_mimicry_test(host, clean, sets, settings, rec.progress())
    # a fine-tune step with prior preservation is two UNet forwards; a ceiling batch one encode and one decode
    assert_bar(rec, unet=2, vae=2)
    phases = [u[2] for u in rec.updates]
    assert phases.count("ceiling") == 3 and phases.count("encode") == 2 * (3 + 2)   # 3 clean / cloaked, 2 prior
    assert phases.count("embed") == 1 + 1 + 1 + 3 + 1   # fit, artist, base-model references, 3 conditions, ceiling
    ddim = 3 * (2 * 4 + 2)   # 3 DDIM steps of 2 samples in each of 4 generations (base, refs, clean, cloaked), prior
    assert phases.count(None) == ddim + 2 * 3   # and the 3 steps of each fine-tune


# ---- Purify ---------------------------------------------------------------------------------------------------------
PURIFY = {  # (params, UNet bound, VAE bound per gap): a DDIM step's gap holds at most its encode or decode
    "diffpure": ({"strength": 0.1, "steps": 30}, 1, 1),
    "noisy_upscale": ({"strength": 0.1, "steps": 30, "scale": 1.5}, 1, 1),
    "gridpure": ({"t": 30, "denoise_steps": 3, "iterations": 2, "tile": 16, "stride": 8, "tile_batch": 3}, 1, 1),
    # the objective at the start, then one encode+decode forward and backward per iteration
    "impress": ({"iterations": 3, "perceptual": "dssim"}, 0, 4),
}


@pytest.mark.parametrize("name", sorted(PURIFY))
def test_every_purifier_step_moves_the_bar(host, name):
    params, unet, vae = PURIFY[name]
    rec = BarRecorder(host)
    with rec.counting():
        purify(host, _images(1), [("jpeg", {}), (name, params)], progress=rec.progress())
    assert_bar(rec, unet=unet, vae=vae)
    assert rec.tail == {"unet": 0, "vae": 0 if name != "impress" else 2}   # nothing heavy runs past the bar's end
    if name != "impress":
        assert rec.calls["unet"] == len(rec.updates) - 1   # one update per DDIM step (and 1 for the jpeg stage)
    if name == "gridpure":   # 2 iterations x 4 chunks (9 tiles + the corner mosaic, 3 at a time) x 3 DDIM steps
        assert len(rec.updates) - 1 == 2 * 4 * 3 and rec.calls["vae"] == 2 * 4 * 2
