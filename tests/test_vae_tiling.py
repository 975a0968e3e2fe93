"""VAE tiling (protect_core.vae_tiling, the memory modes' ``vae_tile``): off in fast/balanced, on in low; exact
for an image that fits in one tile and for a VAE whose receptive field stays inside a tile; close to the untiled
VAE and seam-free on the trained toy VAE; differentiable (checkpointed tiles give autograd's own gradients) with
fewer activations kept for backward; the same on every host layout; the host comes back unchanged; the purify
block runs tiled; the memory estimate of ``low`` is bounded by the tile. The whole-image GroupNorm statistics
have their own tests (test_vae_groupnorm.py)."""
from __future__ import annotations

import dataclasses
import types

import pytest
import torch
import torch.nn.functional as F

from protect_core.memory import PRESETS, estimate_bytes, memory_mode, memory_session, module_flags, resolve_memory
from protect_core.vae_tiling import blend_weights, overlap_cells, plan_tiles, run_tiled
from test_memory_checkpoint import comfy_host_cls, make_host  # noqa: F401 (fixture)
from test_purify_impress import LowpassHost

LOW_FP32 = memory_mode("low", precision="fp32", score_distillation=False)


def _images(b=1, h=64, w=64, seed=0):
    return torch.rand(b, 3, h, w, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def _cos(a, b) -> float:
    return float(F.cosine_similarity(a.flatten(), b.flatten(), dim=0))


def _count_calls(monkeypatch, host, name):
    calls = [0]
    inner = getattr(host, name)

    def counted(*a, **k):
        calls[0] += 1
        return inner(*a, **k)

    monkeypatch.setattr(host, name, counted)
    return calls


# ---- the modes ------------------------------------------------------------------------------------------------
def test_vae_tile_is_a_mode_field():
    assert PRESETS["fast"].vae_tile is None and PRESETS["balanced"].vae_tile is None
    assert PRESETS["low"].vae_tile == 512 and PRESETS["low"].describe()["vae_tile"] == 512
    assert memory_mode("low", vae_tile=None).vae_tile is None
    assert memory_mode({"name": "fast", "vae_tile": 256}).vae_tile == 256
    with pytest.raises(ValueError, match="vae_tile"):
        memory_mode("low", vae_tile=8)


def test_tiling_off_in_fast_on_in_low(tiny_host, monkeypatch, integrity):
    chk = integrity(tiny_host)
    dec, enc = (_count_calls(monkeypatch, tiny_host, n) for n in ("_vae_decode", "_vae_posterior"))
    x = _images(2)                                   # 64 px: 8 latent cells
    runs = {}
    for name, mode in [("fast", PRESETS["fast"]), ("balanced", PRESETS["balanced"]), ("low", PRESETS["low"]),
                       ("low32", memory_mode("low", vae_tile=32)), ("fast32", memory_mode("fast", vae_tile=32))]:
        dec[0] = enc[0] = 0
        with tiny_host.borrowed(), memory_session(tiny_host, mode), torch.no_grad():
            tiny_host.decode(tiny_host.encode(x))
        runs[name] = (enc[0], dec[0])
    assert runs["fast"] == runs["balanced"] == runs["low"] == (1, 1)   # 64 px fits in low's 512 px tile
    # 32 px tiles (4 cells, 1 cell overlap): 3 x 3 tiles, one image at a time, each tile twice: once for the
    # whole-image GroupNorm statistics, once for real
    assert runs["low32"] == runs["fast32"] == (2 * 2 * 9, 2 * 2 * 9)
    dec[0] = 0
    with tiny_host.borrowed(), torch.no_grad():       # no memory session: the host as it is
        tiny_host.decode(torch.zeros(1, 4, 16, 16))
    assert dec[0] == 1
    chk.assert_unchanged()


# ---- the maths ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("h,w,tile", [(8, 8, 4), (13, 21, 5), (9, 30, 8), (7, 3, 4), (64, 65, 64)])
def test_plan_covers_and_weights_sum_to_one(h, w, tile):
    ov = overlap_cells(tile)
    boxes = plan_tiles(h, w, tile, ov)
    cover = torch.zeros(h, w)
    for y, x, th, tw in boxes:
        assert th <= tile and tw <= tile and y + th <= h and x + tw <= w
        cover[y:y + th, x:x + tw] += 1
    assert bool((cover > 0).all())
    starts = sorted({x for _, x, _, _ in boxes})
    assert all(b - a <= tile - ov for a, b in zip(starts, starts[1:]))   # neighbours overlap by >= ov cells
    for unit in (1, 8):
        weights = blend_weights(boxes, h, w, ov, unit)
        total = torch.zeros(h * unit, w * unit, dtype=torch.float64)
        for (y, x, th, tw), wt in zip(boxes, weights):
            assert wt.shape == (th * unit, tw * unit) and bool((wt > 0).all())
            total[y * unit:(y + th) * unit, x * unit:(x + tw) * unit] += wt
        torch.testing.assert_close(total, torch.ones_like(total), rtol=0, atol=1e-12)


def test_run_tiled_is_exact_for_local_functions_and_differentiable():
    """A function that looks at one cell at a time is reproduced exactly by its tiles, whatever the size."""
    decode_like = lambda z: F.interpolate(torch.tanh(z), scale_factor=8, mode="nearest")  # noqa: E731
    encode_like = lambda x: (F.avg_pool2d(x, 8), F.avg_pool2d(x * x, 8))                 # noqa: E731
    z, x = torch.randn(2, 4, 13, 21), torch.randn(2, 3, 104, 72)
    torch.testing.assert_close(run_tiled(decode_like, z, 5, 1, 8), decode_like(z))
    for got, want in zip(run_tiled(encode_like, x, 4, 8, 1), encode_like(x)):
        torch.testing.assert_close(got, want)
    assert torch.equal(run_tiled(decode_like, z, None, 1, 8), decode_like(z))
    # a convolution (receptive field across tile borders): tiled is an approximation, with true gradients
    conv = torch.nn.Conv2d(2, 2, 3, padding=1).double().requires_grad_(False)
    fn = lambda t: torch.tanh(conv(t))                                                    # noqa: E731
    inp = torch.randn(1, 2, 7, 9, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: run_tiled(fn, t, 4, 1, 1), (inp,))
    assert torch.autograd.gradcheck(lambda t: run_tiled(fn, t, 4, 1, 1, checkpoint_tiles=False), (inp,))


# ---- on a host ------------------------------------------------------------------------------------------------
def _vae_run(host, mode, x):
    """Posterior, encode, decode of ``x`` and the gradient of a round-trip loss, in ``mode``."""
    with host.borrowed(), memory_session(host, mode):
        xx = x.clone().requires_grad_(True)
        mean, logvar = host.posterior(xx)
        z = host.encode(xx)
        y = host.decode(z)
        (g,) = torch.autograd.grad((y - xx).pow(2).mean(), xx)
    return [t.detach() for t in (mean, logvar, z, y, g)]


def test_one_tile_is_bit_identical(tiny_host, integrity):
    chk = integrity(tiny_host)
    x = _images(2, 64, 64)
    plain = _vae_run(tiny_host, memory_mode("low", vae_tile=None), x)
    for tile in (64, 512):       # exactly one tile, and low's default
        for a, b in zip(plain, _vae_run(tiny_host, memory_mode("low", vae_tile=tile), x)):
            assert torch.equal(a, b)
    tiled = _vae_run(tiny_host, memory_mode("low", vae_tile=32), x)
    assert not torch.equal(plain[3], tiled[3])     # and a smaller tile does change something
    chk.assert_unchanged()


@pytest.mark.parametrize("h,w,tile", [(64, 64, 16), (44, 76, 16), (36, 100, 24)])
def test_local_vae_tiles_exactly_at_odd_sizes(h, w, tile):
    """LowpassHost's VAE (4x4 average pool / 4x4 repeat) has no receptive field beyond one cell, so tiling must
    reproduce it up to float rounding: the plan covers every cell and the blend weights sum to 1."""
    host = LowpassHost()
    x = _images(2, h, w, seed=3)
    plain = _vae_run(host, PRESETS["fast"], x)
    tiled = _vae_run(host, memory_mode("fast", vae_tile=tile), x)
    for a, b in zip(plain, tiled):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)


@pytest.fixture(scope="module")
def toy():
    from protect_core.toy.model import build_toy_host
    from protect_core.toy.styles import STYLES, render

    return build_toy_host(), torch.cat([render(s, 1, 128, seed=1) for s in STYLES]) * 2 - 1


def test_toy_vae_tiled_is_close_and_seamless(toy, integrity):
    """The trained toy VAE (32 px native) decoding 128 px images in 64 px tiles (3 x 3 tiles, 16 px overlaps).

    Tolerances: tiling may cost at most half of what the VAE itself loses (its reconstruction error of the same
    images), and the tiled round trip may reconstruct at most 1.25x worse (1 dB); whole-image GroupNorm statistics
    at least halve the squared error of per-tile statistics, in decode and in encode; the jump between neighbouring
    pixels across every tile border stays within 25% of the untiled image's own there, while tiles cut without
    overlap leave a visible seam (more than twice the jump: the check can see seams)."""
    host, x = toy
    chk = integrity(host)
    with host.borrowed(), torch.no_grad():
        z = host.encode(x)
        plain = host.decode(z)
        with memory_session(host, memory_mode("fast", vae_tile=64)):
            tiled, round_trip = host.decode(z), host.decode(host.encode(x))
        hard_cut = run_tiled(host._decode_whole, z / host.latent_scale, 8, 1, 8, overlap=0)
        per_tile = run_tiled(host._decode_whole, z / host.latent_scale, 8, 1, 8, norm_stats="tile")
        mean = host.posterior(x)[0]
        enc = {s: run_tiled(host._posterior_whole, x, 8, 8, 1, norm_stats=s)[0] for s in ("image", "tile")}
    vae_error = (plain - x).pow(2).mean()
    assert (tiled - plain).pow(2).mean() < 0.5 * vae_error
    # whole-image GroupNorm statistics: at least twice closer to the untiled VAE than per-tile ones, both ways
    assert (tiled - plain).pow(2).mean() < 0.5 * (per_tile - plain).pow(2).mean()
    assert (enc["image"] - mean).pow(2).mean() < 0.5 * (enc["tile"] - mean).pow(2).mean()
    assert (round_trip - x).pow(2).mean() < 1.25 * vae_error

    def jump(img, at):   # mean |difference| across row and column ``at``
        return float((img[..., at] - img[..., at - 1]).abs().mean() + (img[..., at, :] - img[..., at - 1, :])
                     .abs().mean())

    borders = {b * 8 for y, x0, h, w in plan_tiles(16, 16, 8, overlap_cells(8)) for b in (y, y + h) if 0 < b < 16}
    for at in sorted(borders):
        assert jump(tiled, at) < 1.25 * jump(plain, at), f"seam at {at} px"
    assert jump(hard_cut, 64) > 2 * jump(plain, 64)
    chk.assert_unchanged()


def test_toy_gradients_flow_through_checkpointed_tiles(toy):
    """IMPRESS's kind of loss through tiled encode + decode: gradients are finite and non-zero, equal to autograd's
    through the same tiles without checkpointing, far fewer activations are kept for backward (bytes saved for
    backward by the end of the forward pass), and with whole-image GroupNorm statistics they point closer to the
    untiled VAE's gradient than with per-tile statistics."""
    host, x = toy
    x = x[:2]
    saved = [0]

    def pack(t):
        saved[0] += t.numel() * t.element_size()
        return t

    def grads(mode, checkpoint_tiles=True, norm_stats="image"):
        saved[0] = 0
        xx = x.clone().requires_grad_(True)
        with host.borrowed(), memory_session(host, mode):
            with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
                if checkpoint_tiles:
                    y = host.decode(host.encode(xx))
                else:     # the same tiles, autograd keeping every activation
                    run = lambda fn, t, i, o: run_tiled(fn, t, 8, i, o, checkpoint_tiles=False,  # noqa: E731
                                                        norm_stats=norm_stats)
                    z = (run(host._posterior_whole, xx, 8, 1)[0] - host.latent_shift) * host.latent_scale
                    y = run(host._decode_whole, z / host.latent_scale + host.latent_shift, 1, 8)
                loss = (y - xx).pow(2).mean()
            kept = saved[0]
            (g,) = torch.autograd.grad(loss, xx)
        return g, kept

    tiled, kept_tiled = grads(memory_mode("fast", vae_tile=64))
    assert bool(torch.isfinite(tiled).all()) and all(float(g.abs().sum()) > 0 for g in tiled)
    reference, kept_reference = grads(memory_mode("fast", vae_tile=64), checkpoint_tiles=False)
    torch.testing.assert_close(tiled, reference, rtol=1e-4, atol=1e-7)
    untiled, kept_untiled = grads(PRESETS["fast"])
    assert kept_tiled < kept_untiled / 4 and kept_tiled < kept_reference / 4
    # whole-image statistics change the gradient, and point it closer to the untiled VAE's than per-tile ones do
    per_tile, _ = grads(memory_mode("fast", vae_tile=64), checkpoint_tiles=False, norm_stats="tile")
    assert not torch.allclose(tiled, per_tile, rtol=1e-3, atol=1e-6)
    assert _cos(tiled, untiled) > _cos(per_tile, untiled)


@pytest.mark.parametrize("kind", ["diffusers", "a1111", "forge", "comfy"])
def test_every_host_layout_tiles_the_same_way(kind, comfy_host_cls, integrity):
    """Tiling lives in HostModel, so every adapter has it; with low's VAE checkpointing (nested inside the tiles'
    checkpoints, its layers recomputed in backward: the whole-image GroupNorm statistics must hold there too) the
    loss and gradients are those of fast with the same tiles; the host comes back unchanged."""
    host = make_host(kind, comfy_host_cls)
    chk, flags = integrity(host), module_flags(host)
    x = _images(1, 64, 64, seed=1)
    plain = _vae_run(host, PRESETS["fast"], x)
    fast = _vae_run(host, memory_mode("fast", vae_tile=32), x)
    low = _vae_run(host, dataclasses.replace(LOW_FP32, vae_tile=32), x)
    assert not torch.equal(fast[3], plain[3]) and float(low[4].abs().sum()) > 0
    for a, b in zip(low, fast):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    assert module_flags(host) == flags
    chk.assert_unchanged()


def test_purify_runs_tiled(tiny_host, monkeypatch, integrity):
    from protect_core.purify import purify

    chk = integrity(tiny_host)
    calls = _count_calls(monkeypatch, tiny_host, "_vae_posterior")
    images = (_images(1, 64, 96, seed=2) + 1) / 2
    out, info = purify(tiny_host, images, [("impress", {"iterations": 2, "perceptual": "dssim"})],
                       memory={"name": "low", "vae_tile": 32})
    assert out.shape == images.shape and bool(torch.isfinite(out).all())
    assert info["memory"]["name"] == "low" and info["memory"]["vae_tile"] == 32
    # 64 x 96 px (8 x 12 cells) in 32 px tiles (4 cells, 1 overlapping): 3 x 4 tiles per encode, each run once for
    # the GroupNorm statistics and once for real. IMPRESS encodes without gradients at the start and the end, and
    # with gradients at each of its 2 steps, where every tile runs again in backward (checkpointed), for the tiles
    # and for the statistics
    assert calls[0] == (2 * 2 + 2 * 4) * 12
    chk.assert_unchanged()


# ---- the memory estimate --------------------------------------------------------------------------------------
def test_low_estimate_is_bounded_by_the_vae_tile(tiny_host):
    big = 2048 * 2048
    low, fast = PRESETS["low"], PRESETS["fast"]
    tiled = estimate_bytes(big, False, low, image_pixels=big)
    assert tiled < estimate_bytes(big, False, low) / 10                           # one 512 px tile, not 4 Mpx
    assert tiled == estimate_bytes(512 * 512, False, low)
    assert estimate_bytes(big, False, fast, image_pixels=big) == estimate_bytes(big, False, fast)
    small = 256 * 256                                                                # images that fit: no change
    assert estimate_bytes(4 * small, False, low, image_pixels=small) == estimate_bytes(4 * small, False, low)
    # resolve_memory reads the job's image size; then the low estimate "fits" where the whole image would not
    job = types.SimpleNamespace(unet_backward=False, image_pixels=big)
    free = (tiled + estimate_bytes(big, False, low)) // 2
    assert "low fits" in resolve_memory("auto", tiny_host, job, pixels=big, available=free).reason
    plain = types.SimpleNamespace(unet_backward=False)
    assert "does not fit" in resolve_memory("auto", tiny_host, plain, pixels=big, available=free).reason
