"""Memory modes (protect_core.memory): parsing and the automatic choice, numerics of each mode against fp32,
checkpointing with weight overrides, score distillation, flags restored, and the out-of-memory fallback (simulated
on CPU) with the host's integrity proven on success, fallback, hard failure and cancel, the re-planning of tiles
when a fallback lowers the tile cap, what describe() says runs on the CPU, and the out-of-memory helpers (moved to
protect_core.memory_fallback) still importable from protect_core.memory."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from protect_core.cloak.base import CloakSettings, get_method
from protect_core.cloak.optimize import optimize
from protect_core.cloak.runner import cloak_images
from protect_core.diffusion import denoising_loss
from protect_core.errors import Cancelled, StyleCloakError
from protect_core.memory import (PRESETS, ActiveMemory, MemoryLimitError, estimate_bytes, is_oom, memory_mode,
                                 memory_session, module_flags, precision_label, resolve_memory)
from protect_core.progress import CancelToken, Progress


def _pg(steps=3, **kw):
    s = CloakSettings(method="photoguard", steps=steps, eps=8 / 255, step_size=2 / 255, **kw)
    return s.resolved(get_method("photoguard"))


def _mist(steps=2):
    s = CloakSettings(method="mist", steps=steps, eps=8 / 255, step_size=2 / 255,
                      options={"mode": "semantic", "objective_samples": 1})
    return s.resolved(get_method("mist"))


def test_parse_presets_and_lowering():
    assert memory_mode("fast") == PRESETS["fast"] and memory_mode(None).name == "auto"
    assert memory_mode("low", precision="fp16").precision == "fp16"
    assert memory_mode({"name": "balanced", "tile": 384}).tile == 384
    assert [m.name for m in (PRESETS["fast"].lower(), PRESETS["balanced"].lower())] == ["balanced", "low"]
    assert PRESETS["low"].lower() is None
    for bad in ("tiny", 3):
        with pytest.raises(ValueError, match="memory mode"):
            memory_mode(bad)
    with pytest.raises(ValueError, match="precision"):
        memory_mode("fast", precision="fp8")


def test_auto_choice_follows_free_memory(tiny_host):
    mist = get_method("mist")
    big = resolve_memory("auto", tiny_host, mist, pixels=512 * 512, available=64 * 2**30)
    assert big.name == "fast" and "fits" in big.reason
    mid = resolve_memory("auto", tiny_host, mist, pixels=512 * 512, available=2 * 2**30)
    assert mid.name in ("balanced", "low") and mid.name != "fast"
    none = resolve_memory("auto", tiny_host, mist, pixels=4096 * 4096, available=2**20)
    assert none.name == "low" and "does not fit" in none.reason
    # an encoder-only method needs less than a UNet-backward one at the same size
    px = 512 * 512
    need_enc, need_unet = (estimate_bytes(px, u, PRESETS["fast"], False) for u in (False, True))
    assert need_enc < need_unet
    between = (need_enc + need_unet) // 2
    assert resolve_memory("auto", tiny_host, get_method("photoguard"), pixels=px, available=between).name == "fast"
    assert resolve_memory("auto", tiny_host, mist, pixels=px, available=between).name != "fast"
    # every saving lowers the estimate
    needs = [estimate_bytes(px, True, PRESETS[n], True) for n in ("fast", "balanced", "low")]
    assert needs[0] > needs[1] > needs[2]
    assert resolve_memory("low", tiny_host) is PRESETS["low"]


def test_is_oom_classification():
    assert is_oom(MemoryError()) and is_oom(torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate"))
    assert is_oom(RuntimeError("[enforce fail] DefaultCPUAllocator: can't allocate memory: you tried 10 GB"))
    assert not is_oom(RuntimeError("mat1 and mat2 shapes cannot be multiplied")) and not is_oom(ValueError("x"))


def test_fallback_helpers_keep_their_old_import_path():
    import protect_core.memory as memory
    import protect_core.memory_fallback as fallback

    for name in ("MemoryLimitError", "is_oom", "free_memory", "limit_message", "run_with_fallback"):
        assert getattr(memory, name) is getattr(fallback, name)
    assert issubclass(MemoryLimitError, StyleCloakError) and MemoryLimitError is fallback.MemoryLimitError
    calls = []

    def fn(mode):
        calls.append(mode.name)
        if mode.name != "low":
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return "done"

    result, used, messages = memory.run_with_fallback(fn, PRESETS["fast"], "cpu", "a test")
    assert (result, used.name, calls) == ("done", "low", ["fast", "balanced", "low"])
    assert len(messages) == 2 and "retrying with memory='low'" in used.reason
    with pytest.raises(MemoryLimitError, match="memory='low'"):
        memory.run_with_fallback(lambda mode: (_ for _ in ()).throw(MemoryError()), PRESETS["low"], "cpu")


def test_describe_says_what_runs_on_cpu(tiny_host):
    assert torch.device(tiny_host.device).type == "cpu"
    low = PRESETS["low"]
    assert low.describe()["precision"] == "half"                        # the setting itself, no host given
    cpu = "full (half precision needs a GPU)"
    assert low.describe(tiny_host)["precision"] == cpu
    with tiny_host.borrowed(), memory_session(tiny_host, low) as act:
        active = act.describe()
    assert active["precision"] == cpu and active["autocast"] is None
    assert set(active) >= set(low.describe()) == set(low.describe(tiny_host))   # the same keys as before
    for mode in (PRESETS["fast"], memory_mode("low", precision="fp32"), memory_mode("low", precision="bf16")):
        with tiny_host.borrowed(), memory_session(tiny_host, mode) as act:
            assert act.describe()["precision"] == mode.precision          # applies as asked (bf16: CPU autocast)
    assert precision_label("half", torch.bfloat16, torch.float32) == "half"
    assert precision_label("half", None, torch.float16).startswith("host (float16 model")


def test_loss_scale_skips_overflow_and_unscales():
    act = ActiveMemory(PRESETS["balanced"], torch.float16, loss_scale=1024.0)
    assert torch.equal(act.unscale(torch.full((2,), 2048.0)), torch.full((2,), 2.0))
    assert act.unscale(torch.tensor([1.0, float("inf")])) is None and act.loss_scale == 128.0
    act.loss_scale = 1.0
    with pytest.raises(StyleCloakError, match="fp32"):
        act.unscale(torch.tensor([float("nan")]))


@pytest.mark.slow
def test_modes_close_to_fp32_and_flags_restored(tiny_host, integrity, rng_images):
    chk, flags = integrity(tiny_host), module_flags(tiny_host)
    x = rng_images(1, 32, 32, seed=1)
    ref, _ = optimize(tiny_host, get_method("photoguard"), x, _pg())
    ckpt, info = optimize(tiny_host, get_method("photoguard"), x, _pg(), memory=memory_mode("low", precision="fp32"))
    assert info["memory"]["checkpointed_modules"] > 0
    assert torch.equal(ckpt, ref)  # checkpointing recomputes exactly: same bytes in fp32
    bf16 = memory_mode("balanced", precision="bf16")
    half, info = optimize(tiny_host, get_method("photoguard"), x, _pg(), memory=bf16)
    assert info["memory"]["autocast"] == "bfloat16" and bool(torch.isfinite(half).all())
    assert (half - x).abs().max() <= 8 / 255 + 1e-6
    # bf16 forward, fp32 perturbation: most pixels take the same 8-bit value as in fp32
    assert (half - ref).abs().le(1.5 / 255).float().mean() > 0.9
    assert info["objective_after"] < info["objective_before"]
    sliced, _ = optimize(tiny_host, get_method("mist"), x, _mist(1),
                         memory=memory_mode("balanced", precision="fp32", attention="sliced"))
    sdpa, _ = optimize(tiny_host, get_method("mist"), x, _mist(1), memory=memory_mode("balanced", precision="fp32"))
    assert (sliced - sdpa).abs().le(1.5 / 255).float().mean() > 0.98
    assert module_flags(tiny_host) == flags
    chk.assert_unchanged()


def test_checkpointing_keeps_override_gradients(tiny_host):
    """Recomputation in backward must use the weight overrides of the forward pass (LoRA, K/V copies)."""
    name = tiny_host.cross_attention_layers()[0].params["to_k"]
    z = torch.randn(2, 4, 4, 4, generator=torch.Generator().manual_seed(0))
    grads = []
    for mode in (PRESETS["fast"], memory_mode("low", precision="fp32", score_distillation=False)):
        with tiny_host.borrowed(), memory_session(tiny_host, mode) as act:
            w = (tiny_host.unet_weight(name) * 1.5).requires_grad_(True)
            zz = z.clone().requires_grad_(True)
            cond = tiny_host.encode_text(["a painting"])
            loss = denoising_loss(tiny_host, zz, cond, torch.Generator().manual_seed(1), weight_overrides={name: w})
            gw, gz = torch.autograd.grad(loss, [w, zz])
            grads.append((gw, gz, act.checkpointed_modules))
    assert grads[1][2] > 0 and grads[1][0].abs().sum() > 0
    torch.testing.assert_close(grads[1][0], grads[0][0], rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(grads[1][1], grads[0][1], rtol=1e-4, atol=1e-6)


def test_score_distillation_skips_unet_jacobian(tiny_host):
    mist = get_method("mist")
    z = torch.randn(1, 4, 4, 4, generator=torch.Generator().manual_seed(0), requires_grad=True)
    with tiny_host.borrowed(), memory_session(tiny_host, PRESETS["low"], mist) as act:
        assert act.score_distillation
        cond = tiny_host.encode_text(["x"])
        (g,) = torch.autograd.grad(tiny_host.model_output(z, 500, cond).sum(), z)
        assert torch.equal(g, torch.ones_like(z))   # identity Jacobian: no UNet backward
        name = tiny_host.cross_attention_layers()[0].params["to_v"]
        w = tiny_host.unet_weight(name).requires_grad_(True)
        (gw,) = torch.autograd.grad(tiny_host.model_output(z, 500, cond, {name: w}).pow(2).sum(), w)
        assert gw.abs().sum() > 0                     # surrogate training still gets real weight gradients
    with tiny_host.borrowed(), memory_session(tiny_host, PRESETS["low"], get_method("photoguard")) as act:
        assert not act.score_distillation           # not a denoising-loss method: left alone


def test_session_restores_on_exception(tiny_host, integrity):
    chk, flags = integrity(tiny_host), module_flags(tiny_host)
    with pytest.raises(KeyError):
        with tiny_host.borrowed(), memory_session(tiny_host, memory_mode("low", attention="sliced")):
            assert module_flags(tiny_host) != flags
            assert tiny_host.unet.down_blocks[0].gradient_checkpointing is True
            raise KeyError("boom")
    assert module_flags(tiny_host) == flags and tiny_host._memory is None
    assert "_gradient_checkpointing_func" not in tiny_host.vae.encoder.__dict__ or \
        tiny_host.vae.encoder.__dict__["_gradient_checkpointing_func"] is flags.get(
            "vae.encoder._gradient_checkpointing_func")
    chk.assert_unchanged()


def _raise_oom_in(monkeypatch, cls, when):
    real, calls = cls.loss, []

    def loss(self, host, x, step, generator):
        calls.append(host._memory.mode.name)
        if when(host._memory.mode.name, len(calls)):
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB (simulated)")
        return real(self, host, x, step, generator)

    monkeypatch.setattr(cls, "loss", loss)
    return calls


def test_oom_falls_back_and_says_so(tiny_host, integrity, rng_images, monkeypatch, caplog):
    chk, flags = integrity(tiny_host), module_flags(tiny_host)
    calls = _raise_oom_in(monkeypatch, type(get_method("photoguard")), lambda mode, n: mode == "fast" and n == 2)
    steps = []
    res = cloak_images(tiny_host, [rng_images(1, 32, 32)[0]], _pg(),
                       Progress(on_step=lambda d, t, i: steps.append(d)), memory="fast")
    mem = res[0].stats["memory"]
    assert mem["name"] == "balanced" and "retrying with memory='balanced'" in mem["fallbacks"][0]
    assert "out of memory" in caplog.text and calls[:2] == ["fast", "fast"] and "balanced" in calls
    assert steps[-1] == 3 and (res[0].image - rng_images(1, 32, 32)[0]).abs().max() <= 8 / 255 + 1e-6
    assert module_flags(tiny_host) == flags
    chk.assert_unchanged()


def test_fallback_to_low_replans_tiles(tiny_host, integrity, rng_images, monkeypatch, caplog):
    """Images first planned whole for 'balanced' run out of memory: 'low' caps tiles (32 px here instead of 512, to
    stay fast), so every unfinished image is cut again into tiles of the new cap before the work goes on."""
    from protect_core import memory

    monkeypatch.setitem(memory.PRESETS, "low", dataclasses.replace(PRESETS["low"], tile=32))
    chk, flags = integrity(tiny_host), module_flags(tiny_host)
    cls, seen = type(get_method("photoguard")), []
    real = cls.loss

    def loss(self, host, x, step, generator):
        seen.append((host._memory.mode.name, tuple(x.shape[-2:])))
        if host._memory.mode.name == "balanced":
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB (simulated)")
        return real(self, host, x, step, generator)

    monkeypatch.setattr(cls, "loss", loss)
    images = [rng_images(1, 64, 64)[0], rng_images(1, 40, 24, seed=1)[0]]
    steps = []
    res = cloak_images(tiny_host, images, _pg(steps=2), Progress(on_step=lambda d, t, i: steps.append((d, t))),
                       memory="balanced")
    assert seen[0] == ("balanced", (64, 64))                          # planned whole for 'balanced'
    assert {shape for mode, shape in seen[1:]} == {(32, 32), (32, 24)} and {m for m, _ in seen[1:]} == {"low"}
    assert [r.stats["tiles"] for r in res] == [9, 2]                  # 64 px: 3 x 3 tiles of 32; 40 x 24: 2 x 1
    for r, clean in zip(res, images):
        mem = r.stats["memory"]
        assert mem["name"] == "low" and r.image.shape == clean.shape
        assert any("retrying with memory='low'" in m for m in mem["fallbacks"])
        assert any("re-planned 2 image(s) into tiles of at most 32 px" in m for m in mem["fallbacks"])
        assert (r.image - clean).abs().max() <= 8 / 255 + 1e-6
    assert "re-planned" in caplog.text and steps[-1][0] == steps[-1][1]  # the progress total follows the plan
    # an explicit tile size is kept: the fallback does not re-plan it
    seen.clear()
    cloak_images(tiny_host, images[:1], _pg(steps=1), memory="balanced", tile_size=64)
    assert {shape for _, shape in seen} == {(64, 64)}
    assert module_flags(tiny_host) == flags
    chk.assert_unchanged()


def test_oom_below_low_names_the_setting(tiny_host, integrity, rng_images, monkeypatch):
    chk, flags = integrity(tiny_host), module_flags(tiny_host)
    _raise_oom_in(monkeypatch, type(get_method("photoguard")), lambda mode, n: True)
    with pytest.raises(MemoryLimitError, match="--batch-size") as err:
        cloak_images(tiny_host, [rng_images(1, 32, 32)[0]], _pg(), memory="balanced")
    assert isinstance(err.value, StyleCloakError) and "memory='low'" in str(err.value)
    assert err.value.__cause__ is None and err.value.__suppress_context__
    assert module_flags(tiny_host) == flags
    chk.assert_unchanged()


def test_other_errors_are_not_swallowed(tiny_host, integrity, rng_images, monkeypatch):
    chk = integrity(tiny_host)
    monkeypatch.setattr(type(get_method("photoguard")), "loss",
                        lambda self, *a: (_ for _ in ()).throw(ValueError("not memory")))
    with pytest.raises(ValueError, match="not memory"):
        cloak_images(tiny_host, [rng_images(1, 32, 32)[0]], _pg(), memory="fast")
    chk.assert_unchanged()


def test_cancel_in_low_mode_restores(tiny_host, integrity, rng_images):
    chk, flags = integrity(tiny_host), module_flags(tiny_host)
    token = CancelToken()

    def on_step(done, total, info):
        if done == 2:
            token.cancel()

    with pytest.raises(Cancelled):
        cloak_images(tiny_host, [rng_images(1, 32, 32)[0]], _pg(steps=5), Progress(on_step=on_step, cancel=token),
                     memory="low")
    assert module_flags(tiny_host) == flags
    chk.assert_unchanged()


def test_borrowed_attr_restores_absent_and_nested(tiny_host):
    m = tiny_host.unet.conv_in
    with tiny_host.borrowed():
        mark = tiny_host.borrowed_attr_mark()
        tiny_host.set_borrowed_attr(m, "new_flag", 1)
        tiny_host.set_borrowed_attr(m, "new_flag", 2)
        tiny_host.set_borrowed_attr(m, "padding_mode", "circular")
        tiny_host.restore_borrowed_attrs(mark)
        assert "new_flag" not in m.__dict__ and m.padding_mode == "zeros"
        tiny_host.set_borrowed_attr(m, "padding_mode", "reflect")
    assert m.padding_mode == "zeros"
    with pytest.raises(RuntimeError, match="borrowed"):
        tiny_host.set_borrowed_attr(m, "padding_mode", "reflect")
