"""Diffusion purifiers (diffpure, noisy_upscale, gridpure) on the tiny random-weight models, and the model-integrity
guarantee for every purifier that borrows the model (success, exception, cancel).

A random-weight model cannot "move a cloaked image back toward clean", so these tests assert what holds on any
model: shape and range kept, the image changes, same seed -> same bytes, strength 0 / gamma 1 give the input back,
one DDIM step equals SDEdit computed by hand, GrIDPure's tiling covers the image exactly. The "toward clean" check
on a trained model is in tests/test_purify_toy.py (skipped until protect_core/assets/toy exists).
"""
from __future__ import annotations

import pytest
import torch

from protect_core.diffusion import add_noise, ddim_step
from protect_core.errors import Cancelled
from protect_core.progress import CancelToken, Progress
from protect_core.purify import purify
from protect_core.purify.methods.gridpure import corner_mosaic, cut_tiles, fit_tiling, merge_tiles, tile_starts
from protect_core.purify.sdedit import schedule_for_timestep, sdedit

QUICK = {"diffpure": {"strength": 0.04, "steps": 50},                       # 2 DDIM steps from t = 21
         "noisy_upscale": {"strength": 0.04, "steps": 50, "scale": 1.5},      # 2 DDIM steps
         "gridpure": {"t": 4, "denoise_steps": 2, "iterations": 1, "tile": 16, "stride": 8, "tile_batch": 16},
         "impress": {"iterations": 2, "perceptual": "dssim"}}
DIFFUSION = ["diffpure", "noisy_upscale", "gridpure"]


@pytest.mark.parametrize("name", DIFFUSION)
def test_diffusion_purifier_basics(name, tiny_host, integrity, rng_images):
    chk = integrity(tiny_host)
    size = {"gridpure": (30, 26), "diffpure": (28, 36), "noisy_upscale": (20, 28)}[name]  # odd sizes are padded
    x = rng_images(1, *size, seed=1)
    chain = [(name, QUICK[name])]
    out, info = purify(tiny_host, x, chain, seed=5)
    again, _ = purify(tiny_host, x, chain, seed=5)
    assert out.shape == x.shape and out.dtype == x.dtype
    assert 0 <= float(out.min()) and float(out.max()) <= 1
    assert float((out - x).abs().mean()) > 1e-3
    assert torch.equal(out, again)
    if name == "diffpure":  # the seed drives the noise (one purifier suffices; they share sdedit)
        other, _ = purify(tiny_host, x, chain, seed=6)
        assert not torch.equal(out, other)
    assert info["chain"][0]["t_start"] > 0 and info["chain"][0]["seconds"] >= 0
    chk.assert_unchanged()


def test_diffpure_one_step_is_sdedit_by_hand(tiny_host, rng_images):
    x = rng_images(1, 32, 32, seed=2)
    out, info = purify(tiny_host, x, [("diffpure", {"strength": 0.1, "steps": 10})], seed=3)
    t = info["chain"][0]["t_start"]
    assert info["chain"][0]["denoise_steps"] == 1
    g = torch.Generator().manual_seed(3)                              # stage 0 draws from seed + 0
    with torch.no_grad(), tiny_host.borrowed():
        z0 = tiny_host.encode(x * 2 - 1)
        z_t = add_noise(z0, torch.randn(z0.shape, generator=g), t, tiny_host.alphas_cumprod)
        eps = tiny_host.predict_noise(z_t, t, tiny_host.encode_text([""]))
        ref = ((tiny_host.decode(ddim_step(eps, z_t, t, -1, tiny_host.alphas_cumprod)) + 1) / 2).clamp(0, 1)
    assert torch.allclose(out, ref, atol=1e-5)


def test_neutral_settings_return_the_input(tiny_host, rng_images):
    x = rng_images(1, 32, 32, seed=4)
    same, info = purify(tiny_host, x, [("diffpure", {"strength": 0.0})])
    assert torch.equal(same, x) and info["chain"][0]["t_start"] == 0
    kept, _ = purify(tiny_host, x, [("gridpure", {**QUICK["gridpure"], "iterations": 1, "gamma": 1.0})])
    assert torch.equal(kept, x)


def test_gridpure_on_one_tile_is_blended_diffpure(tiny_host, rng_images):
    x = rng_images(1, 32, 32, seed=6)
    params = {"t": 4, "denoise_steps": 2, "iterations": 1, "gamma": 0.25, "tile": 256}
    out, info = purify(tiny_host, x, [("gridpure", params)], seed=9)
    assert info["chain"][0]["tile"] == [32, 32] and info["chain"][0]["tiles_per_iteration"] == 1
    strength, steps = schedule_for_timestep(tiny_host, 4, 2)
    with tiny_host.borrowed():
        pure = sdedit(tiny_host, x, strength=strength, steps=steps, generator=torch.Generator().manual_seed(9))
    assert torch.allclose(out, 0.75 * pure + 0.25 * x, atol=1e-6)


def test_prompt_and_guidance_change_the_result(tiny_host, rng_images):
    x = rng_images(1, 32, 32, seed=7)
    plain, _ = purify(tiny_host, x, [("diffpure", {"strength": 0.1, "steps": 10})])
    prompted, _ = purify(tiny_host, x, [("diffpure", {"strength": 0.1, "steps": 10, "prompt": "a red painting",
                                                      "guidance": 3.0})])
    assert not torch.equal(plain, prompted)


def test_noisy_upscale_can_keep_the_larger_size(tiny_host, rng_images):
    x = rng_images(1, 24, 24, seed=8)
    out, info = purify(tiny_host, x, [("noisy_upscale", {**QUICK["noisy_upscale"], "scale": 2.0,
                                                          "resize_back": False})])
    assert out.shape[-2:] == (48, 48) and info["chain"][0]["denoised_size"] == [48, 48]


# ------------------------------------------------------------------------------------------------- tiling
def test_tile_starts_cover_the_image_flush_to_the_border():
    assert tile_starts(512, 256, 128) == [0, 128, 256]
    assert tile_starts(520, 256, 128) == [0, 128, 256, 264]
    assert tile_starts(100, 256, 128) == [0]


def test_tiles_shrink_to_the_image_and_stride_scales_with_them():
    assert fit_tiling(512, 768, 256, 128, 8) == (256, 256, 128, 128)
    assert fit_tiling(64, 40, 256, 128, 8) == (64, 40, 32, 16)


def test_cut_and_merge_tiles_with_mosaic_is_the_identity():
    x = torch.rand(2, 3, 80, 112, generator=torch.Generator().manual_seed(0))
    tiles, places = cut_tiles(x, 32, 48, 16, 24, mosaic=True)
    assert places[-1][0] == "mosaic" and tiles.shape == (2 * len(places), 3, 32, 48)
    assert torch.allclose(merge_tiles(tiles, places, x.shape), x, atol=1e-6)
    m = corner_mosaic(x, 32, 48)
    assert torch.equal(m[..., :16, :24], x[..., :16, :24]) and torch.equal(m[..., 16:, 24:], x[..., -16:, -24:])


# ---------------------------------------------------------------------------------------- host integrity
def test_diffpure_runs_on_every_tiny_flavour(any_tiny_host, integrity, rng_images):
    chk = integrity(any_tiny_host)
    out, _ = purify(any_tiny_host, rng_images(1, 32, 32), [("diffpure", {"strength": 0.1, "steps": 10})])
    assert out.shape == (1, 3, 32, 32)
    chk.assert_unchanged()


@pytest.mark.parametrize("name", ["impress", *DIFFUSION])
@pytest.mark.parametrize("ending", ["cancel", "exception"])
def test_host_untouched_after_cancel_or_exception(name, ending, tiny_host, integrity, rng_images):
    chk = integrity(tiny_host)
    token = CancelToken()

    def on_step(done, total, info):  # step 1 is the jpeg stage, step 2 the purifier's first: stop it mid-way
        if done == 2 and ending == "cancel":
            token.cancel()
        elif done == 2:
            raise RuntimeError("boom in the middle of a purifier")

    err = Cancelled if ending == "cancel" else RuntimeError
    progress = Progress(on_step=on_step, cancel=token)
    with pytest.raises(err):
        purify(tiny_host, rng_images(1, 32, 32), [("jpeg", {}), (name, QUICK[name])], progress=progress)
    chk.assert_unchanged()
    assert tiny_host._borrow_depth == 0
    assert progress.done == 2 < progress.total  # it stopped inside the purifier, not before or after it


def test_progress_total_matches_steps_taken(tiny_host, rng_images):
    seen = []
    chain = [(n, QUICK[n]) for n in ("impress", "diffpure", "gridpure")]
    purify(tiny_host, rng_images(1, 32, 32), chain, progress=Progress(on_step=lambda d, t, i: seen.append((d, t))))
    assert seen[-1][0] == seen[-1][1] == 2 + 2 + 2
