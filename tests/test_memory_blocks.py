"""Memory modes in the Purify and Mimicry Test blocks (protect_core.memory_job): each block in each mode on
the tiny model, the automatic choice per kind of work, the out-of-memory fallback (simulated on CPU) restarting the
work cleanly, MemoryLimitError below ``low``, the caller's session honoured, the CLI flag, one image's size
(MemoryJob.image_pixels) reaching the estimate, and the host's integrity (fingerprint and memory flags) after
success, fallback and failure."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

import protect_core.memory as memory
from protect_core.cli import main
from protect_core.errors import StyleCloakError
from protect_core.memory import PRESETS, MemoryLimitError, estimate_bytes, memory_session, module_flags
from protect_core.mimicry import generate, run_mimicry_test
from protect_core.mimicry import finetune as finetune_module
from protect_core.mimicry.finetune import finetune, finetune_job
from protect_core.mimicry.runner import generation_job
from protect_core.progress import Progress
from protect_core.purify import purify
from protect_core.purify import sdedit as sdedit_module
from protect_core.memory_job import MemoryJob, resolve_jobs
from protect_core.purify.methods import impress as impress_module

from mimicry_fixtures import make_art, small

CHAIN = [("impress", {"iterations": 2, "perceptual": "dssim", "lr": 0.05}), ("diffpure", {"strength": 0.1,
                                                                                           "steps": 20})]
OOM = "CUDA out of memory. Tried to allocate 20.00 GiB (simulated)"


@pytest.fixture
def art(rng_images):
    return make_art(rng_images)


def _oom_when(monkeypatch, module, name, when):
    """Make ``module.name`` raise a CUDA out-of-memory error when ``when(mode name, call number)``; returns the
    mode name of every call."""
    real, calls = getattr(module, name), []

    def wrapped(host, *args, **kwargs):
        active = getattr(host, "_memory", None)
        calls.append(None if active is None else active.mode.name)
        if when(calls[-1], len(calls)):
            raise torch.cuda.OutOfMemoryError(OOM)
        return real(host, *args, **kwargs)

    monkeypatch.setattr(module, name, wrapped)
    return calls


# ---- purify --------------------------------------------------------------------------------------------------
def test_purify_runs_in_each_mode_and_modes_agree_on_cpu(tiny_host, integrity, rng_images):
    chk, flags = integrity(tiny_host), module_flags(tiny_host)
    x = rng_images(2, 32, 32, seed=3)
    x_before = x.clone()
    out = {}
    for mode in ("fast", "balanced", "low"):
        out[mode], info = purify(tiny_host, x, CHAIN, seed=1, memory=mode)
        mem = info["memory"]
        assert mem["name"] == mode and mem["fallbacks"] == [] and mem["score_distillation"] is False
        assert "tile" not in mem                              # the cloak's tile cap does not apply here
        assert (mem["checkpointed_modules"] > 0) == (mode != "fast")
        assert mem["precision"] == ("host" if mode == "fast" else "full (half precision needs a GPU)")
        assert out[mode].shape == x.shape and info["chain"][0]["objective_end"]
    # CPU has no half autocast; checkpointing and SDPA must not change the result beyond float tolerance
    for mode in ("balanced", "low"):
        torch.testing.assert_close(out[mode], out["fast"], rtol=0, atol=1e-5)
    assert torch.equal(x, x_before)
    assert module_flags(tiny_host) == flags
    chk.assert_unchanged()


def test_purify_auto_sizes_vae_work_and_filters_need_no_mode(tiny_host, rng_images, monkeypatch):
    x = rng_images(1, 32, 32)
    monkeypatch.setattr(memory, "available_bytes", lambda device: 64 * 2**30)
    _, info = purify(tiny_host, x, [("diffpure", {"strength": 0.05, "steps": 20})])
    assert info["memory"]["name"] == "fast" and info["memory"]["reason"].startswith("auto")
    monkeypatch.setattr(memory, "available_bytes", lambda device: 2**20)
    _, info = purify(tiny_host, x, [("diffpure", {"strength": 0.05, "steps": 20})])
    assert info["memory"]["name"] == "low" and "does not fit" in info["memory"]["reason"]
    out, info = purify(None, x, [("jpeg", {"quality": 50})], memory="low")   # no model: nothing to choose
    assert info["memory"] is None and out.shape == x.shape
    with pytest.raises(ValueError, match="memory mode"):
        purify(None, x, ["jpeg"], memory="tiny")


def test_purify_noisy_upscale_sizes_the_upscaled_image(tiny_host, rng_images):
    from protect_core.purify import get_purifier

    x = rng_images(2, 32, 32)
    up = get_purifier("noisy_upscale")
    assert up.memory_pixels({**up.defaults, "scale": 2.0}, x, tiny_host) == 4 * x[:, 0].numel()
    grid = get_purifier("gridpure")
    assert grid.memory_pixels({**grid.defaults, "tile": 16, "stride": 8, "tile_batch": 2}, x, tiny_host) == 2 * 16 * 16


def test_purify_oom_falls_back_and_restarts_cleanly(tiny_host, integrity, rng_images, monkeypatch, caplog):
    chk, flags = integrity(tiny_host), module_flags(tiny_host)
    x = rng_images(2, 32, 32, seed=4)
    x_before = x.clone()
    direct, _ = purify(tiny_host, x, CHAIN, seed=2, memory="balanced")
    # out of memory in the second IMPRESS step under "fast": after one step had already moved the image
    calls = _oom_when(monkeypatch, impress_module, "consistency_loss", lambda mode, n: mode == "fast" and n == 3)
    steps = []
    progress = Progress(on_step=lambda done, total, info: steps.append((done, total)))
    out, info = purify(tiny_host, x, CHAIN, seed=2, progress=progress, memory="fast")
    mem = info["memory"]
    assert mem["name"] == "balanced" and len(mem["fallbacks"]) == 1
    assert "memory='fast'; retrying with memory='balanced'" in mem["fallbacks"][0]
    assert "purifying 2 image(s) of 32x32 px (impress,diffpure)" in mem["fallbacks"][0]
    assert "out of memory" in caplog.text and calls[:3] == ["fast"] * 3 and calls[3] == "balanced"
    assert torch.equal(out, direct)                      # the retry started again from the input, same seeds
    assert steps[-1][0] == steps[-1][1] == progress.total  # retried steps are counted once
    assert torch.equal(x, x_before)
    assert module_flags(tiny_host) == flags
    chk.assert_unchanged()


def test_purify_oom_in_low_names_the_settings(tiny_host, integrity, rng_images, monkeypatch):
    chk, flags = integrity(tiny_host), module_flags(tiny_host)
    calls = _oom_when(monkeypatch, sdedit_module, "sample_latents", lambda mode, n: True)
    with pytest.raises(MemoryLimitError) as err:
        purify(tiny_host, rng_images(1, 32, 32), [("diffpure", {"strength": 0.1, "steps": 20})], memory="fast")
    message = str(err.value)
    assert isinstance(err.value, StyleCloakError) and "memory='low'" in message
    assert "--max-pixels" in message and "--dtype fp16" in message and "--batch-size" not in message
    assert err.value.__cause__ is None and err.value.__suppress_context__
    assert calls == ["fast", "balanced", "low"]
    assert module_flags(tiny_host) == flags
    chk.assert_unchanged()


def test_purify_inside_a_caller_session_uses_it(tiny_host, integrity, rng_images, monkeypatch):
    chk, flags = integrity(tiny_host), module_flags(tiny_host)
    x = rng_images(1, 32, 32)
    with tiny_host.borrowed(), memory_session(tiny_host, PRESETS["balanced"]):
        _, info = purify(tiny_host, x, [("diffpure", {"strength": 0.05, "steps": 20})])
        assert info["memory"]["name"] == "balanced" and "caller" in info["memory"]["note"]
        _, info = purify(tiny_host, x, [("diffpure", {"strength": 0.05, "steps": 20})], memory="low")
        assert info["memory"]["name"] == "low"            # an explicit mode wins, for this call only
        assert tiny_host._memory.mode.name == "balanced"
        _oom_when(monkeypatch, sdedit_module, "sample_latents", lambda mode, n: True)
        with pytest.raises(torch.cuda.OutOfMemoryError):   # the session's owner decides what to do
            purify(tiny_host, x, [("diffpure", {"strength": 0.05, "steps": 20})])
    assert module_flags(tiny_host) == flags
    chk.assert_unchanged()


# ---- mimicry -------------------------------------------------------------------------------------------------
def test_mimicry_runs_in_each_mode_and_modes_agree_on_cpu(tiny_host, integrity, art):
    chk, flags = integrity(tiny_host), module_flags(tiny_host)
    clean, sets = art
    clean_before = clean.clone()
    reports = {}
    for mode in ("fast", "balanced", "low"):
        rep = reports[mode] = run_mimicry_test(tiny_host, clean, sets, small(), memory=mode)
        assert rep.memory["name"] == mode and rep.memory["fallbacks"] == []
        assert rep.memory["score_distillation"] is False and "tile" not in rep.memory
        assert (rep.memory["checkpointed_modules"] > 0) == (mode != "fast")
        assert json.loads(rep.to_json())["memory"]["name"] == mode
    for mode in ("balanced", "low"):
        for name, imgs in reports["fast"].images.items():
            torch.testing.assert_close(reports[mode].images[name], imgs, rtol=0, atol=1e-4)
        for name in ("clean", "cloaked"):
            a, b = reports[mode].conditions[name]["loss_curve"], reports["fast"].conditions[name]["loss_curve"]
            assert a == pytest.approx(b, rel=1e-4, abs=1e-6)
    assert torch.equal(clean, clean_before)
    assert module_flags(tiny_host) == flags
    chk.assert_unchanged()


def test_finetune_and_generate_take_a_mode(tiny_host, integrity, rng_images):
    chk, flags = integrity(tiny_host), module_flags(tiny_host)
    images, s = rng_images(2, 32, 32, seed=5), small(steps=3)
    fast, balanced = (finetune(tiny_host, images, s, memory=m) for m in ("fast", "balanced"))
    assert fast.memory["name"] == "fast" and balanced.memory["name"] == "balanced"
    assert balanced.memory["checkpointed_modules"] > 0 and fast.memory["checkpointed_modules"] == 0
    assert balanced.losses == pytest.approx(fast.losses, rel=1e-4, abs=1e-6)
    for k, v in fast.overrides.items():
        torch.testing.assert_close(balanced.overrides[k], v, rtol=1e-4, atol=1e-6)
    g_fast, g_low = (generate(tiny_host, s, fast.overrides, memory=m) for m in ("fast", "low"))
    torch.testing.assert_close(g_low, g_fast, rtol=0, atol=1e-4)
    assert module_flags(tiny_host) == flags
    chk.assert_unchanged()


def test_mimicry_auto_sizes_the_fine_tune_as_unet_backward(tiny_host, monkeypatch):
    s = small(resolution=512, batch_size=4, sample_batch=4, samples=8, guidance=1.0)
    ft, gen = finetune_job(s, torch.zeros(4, 3, 512, 512)), generation_job(s)
    assert ft.unet_backward and not gen.unet_backward and ft.pixels == gen.pixels == 4 * 512 * 512
    assert finetune_job(small(prior_preservation=True), torch.zeros(3, 3, 32, 32)).pixels == 2 * 2 * 32 * 32
    need_gen = estimate_bytes(gen.pixels, False, PRESETS["fast"], False)
    need_ft = estimate_bytes(ft.pixels, True, PRESETS["fast"], False)
    assert need_gen < need_ft
    between = (need_gen + need_ft) // 2
    monkeypatch.setattr(memory, "available_bytes", lambda device: between)
    assert resolve_jobs("auto", tiny_host, [gen]).name == "fast"
    both = resolve_jobs("auto", tiny_host, [gen, ft])     # the lowest mode any of the jobs needs
    assert both.name != "fast" and not both.score_distillation and both.tile is None
    assert resolve_jobs("low", tiny_host, [MemoryJob(True, 1)]) == memory.dataclasses.replace(
        PRESETS["low"], score_distillation=False, tile=None)


def _spy_estimates(monkeypatch):
    """Record the ``(pixels, image_pixels)`` of every estimate ``auto`` makes."""
    real, seen = memory.estimate_bytes, []

    def spy(pixels, *args, **kwargs):
        seen.append((pixels, kwargs.get("image_pixels", args[5] if len(args) > 5 else None)))
        return real(pixels, *args, **kwargs)

    monkeypatch.setattr(memory, "estimate_bytes", spy)
    return seen


def test_job_image_pixels_reach_the_low_estimate(tiny_host, monkeypatch):
    """One 1024 px image: with its size known, ``low`` counts one 512 px VAE tile and fits where it did not."""
    px = 1024 * 1024
    untiled = estimate_bytes(px, False, PRESETS["low"], False)
    tiled = estimate_bytes(px, False, PRESETS["low"], False, image_pixels=px)
    assert tiled < untiled     # no VAE tiling in balanced: no credit there
    assert estimate_bytes(px, False, PRESETS["balanced"], False, image_pixels=px) == estimate_bytes(
        px, False, PRESETS["balanced"], False)
    between = (tiled + untiled) // 2
    seen = _spy_estimates(monkeypatch)
    known = resolve_jobs("auto", tiny_host, [MemoryJob(False, px, image_pixels=px)], available=between)
    assert seen == [(px, px)] * 3 and known.name == "low" and known.reason.endswith("low fits")
    seen.clear()
    unknown = resolve_jobs("auto", tiny_host, [MemoryJob(False, px)], available=between)   # as before
    assert seen == [(px, None)] * 3 and unknown.name == "low" and "does not fit either" in unknown.reason
    # a mode with VAE tiling below 'low' is picked as soon as its tiled estimate fits
    monkeypatch.setitem(memory.PRESETS, "balanced", memory.dataclasses.replace(PRESETS["balanced"], vae_tile=512))
    job = [MemoryJob(False, px, image_pixels=px)]
    room = estimate_bytes(px, False, memory.PRESETS["balanced"], False, image_pixels=px)
    assert resolve_jobs("auto", tiny_host, job, available=room).name == "balanced"
    assert resolve_jobs("auto", tiny_host, [MemoryJob(False, px)], available=room).name == "low"


def test_blocks_give_their_jobs_one_images_size(tiny_host, rng_images, monkeypatch):
    s = small(resolution=64, batch_size=2, sample_batch=2)
    assert finetune_job(s, torch.zeros(3, 3, 64, 64)).image_pixels == 64 * 64 == generation_job(s).image_pixels
    seen = _spy_estimates(monkeypatch)
    x = rng_images(2, 32, 48)
    purify(tiny_host, x, [("diffpure", {"strength": 0.05, "steps": 20})])
    assert set(seen) == {(2 * 32 * 48, 32 * 48)}                       # the batch, and one image's H x W
    seen.clear()   # noisy_upscale sizes its own (upscaled) work and does not say: no tiling credit, as before
    purify(tiny_host, x[:1], [("noisy_upscale", {"scale": 2.0, "steps": 2})])
    assert set(seen) == {(4 * 32 * 48, None)}


def test_mimicry_oom_falls_back_and_restarts_cleanly(tiny_host, integrity, art, monkeypatch, caplog):
    chk, flags = integrity(tiny_host), module_flags(tiny_host)
    clean, sets = art
    direct = run_mimicry_test(tiny_host, clean, sets, small(), memory="balanced")
    # out of memory in the second fine-tune (the cloaked set) under "fast": base images and one fine-tune done
    calls = _oom_when(monkeypatch, finetune_module, "denoising_loss", lambda mode, n: mode == "fast" and n == 3)
    steps = []
    progress = Progress(on_step=lambda done, total, info: steps.append((done, total)))
    rep = run_mimicry_test(tiny_host, clean, sets, small(), progress, memory="fast")
    assert rep.memory["name"] == "balanced" and len(rep.memory["fallbacks"]) == 1
    assert "retrying with memory='balanced'" in rep.memory["fallbacks"][0] and "out of memory" in caplog.text
    assert calls[:3] == ["fast"] * 3 and set(calls[3:]) == {"balanced"}
    for name, imgs in direct.images.items():              # every condition redone in the same (lower) mode
        assert torch.equal(rep.images[name], imgs)
    assert rep.conditions["cloaked"]["loss_curve"] == direct.conditions["cloaked"]["loss_curve"]
    assert steps[-1][0] == steps[-1][1] == progress.total
    assert module_flags(tiny_host) == flags
    chk.assert_unchanged()


def test_mimicry_oom_in_low_names_the_settings(tiny_host, integrity, art, monkeypatch):
    chk, flags = integrity(tiny_host), module_flags(tiny_host)
    clean, sets = art
    _oom_when(monkeypatch, finetune_module, "denoising_loss", lambda mode, n: True)
    with pytest.raises(MemoryLimitError) as err:
        run_mimicry_test(tiny_host, clean, sets, small(), memory="balanced")
    message = str(err.value)
    assert "memory='low'" in message and "--batch-size" in message and "--resolution" in message
    assert "mimicry test" in message
    with pytest.raises(MemoryLimitError, match="fine-tuning"):
        finetune(tiny_host, clean, small(), memory="low")
    assert module_flags(tiny_host) == flags
    chk.assert_unchanged()


# ---- CLI -----------------------------------------------------------------------------------------------------
def _write_set(folder, n, seed, size=32):
    folder.mkdir()
    rng = np.random.default_rng(seed)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (size, size, 3)).astype(np.uint8)).save(folder / f"art{i}.png")
    return folder


def test_purify_cli_memory_flag_and_fallback_carries_over(tmp_path, capsys, monkeypatch):
    src = _write_set(tmp_path / "in", 2, 0)
    calls = _oom_when(monkeypatch, sdedit_module, "sample_latents", lambda mode, n: mode == "fast")
    code = main(["purify", str(src), "-o", str(tmp_path / "out"), "--method", "diffpure", "--strength", "0.05",
                 "--param", "steps=20", "--memory", "fast", "--model", "tiny", "--quiet"])
    summary = json.loads(capsys.readouterr().out)
    assert code == 0 and summary["written"] == 2 and summary["memory"] == "fast"
    first, second = (row["memory"] for row in summary["images"])
    assert first["name"] == "balanced" and "retrying with memory='balanced'" in first["fallbacks"][0]
    assert second == {"name": "balanced", "fallbacks": []}   # the next image starts in the mode that worked
    assert calls == ["fast", "balanced", "balanced"]
    with pytest.raises(SystemExit):
        main(["purify", str(src), "-o", str(tmp_path / "o2"), "--method", "jpeg", "--memory", "huge"])


def test_mimicry_cli_memory_flag(tmp_path, capsys):
    clean, train = _write_set(tmp_path / "clean", 2, 0), _write_set(tmp_path / "cloaked", 2, 1)
    code = main(["mimicry", "--clean", str(clean), "--train", str(train), "-o", str(tmp_path / "rep"),
                 "--memory", "low", "--model", "tiny", "--quiet", "--steps", "2", "--samples", "2",
                 "--sample-steps", "2", "--sample-batch", "2", "--reference-samples", "2", "--batch-size", "2"])
    summary = json.loads(capsys.readouterr().out)
    assert code == 0 and summary["memory"] == {"name": "low", "fallbacks": []}
    assert json.loads((tmp_path / "rep" / "report.json").read_text())["memory"]["name"] == "low"
