"""Purify block, model-free part: the filters against reference implementations, the registry and chain runner.

Reference checks use fixed inputs: JPEG against Pillow's own encode/decode (exact), blur against a hand-computed
2-D kernel, resize against ``PIL.Image.resize`` on float images, noise statistics, bilateral/guided filter
identities. "Purifies" checks use a clean image plus a known high-frequency perturbation and require the output
to be closer (PSNR) to the clean image than the perturbed input was.
"""
from __future__ import annotations

import io

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from protect_core.metrics import psnr
from protect_core.purify import available_purifiers, describe_purifiers, purify
from protect_core.purify import ops


def smooth_clean(n=32, seed=0):
    """A gently varying image (bilinear upsampling of a 5x5 random grid)."""
    g = torch.Generator().manual_seed(seed)
    return F.interpolate(torch.rand(1, 3, 5, 5, generator=g), size=(n, n), mode="bilinear", align_corners=False)


def flat_art(n=32):
    """Flat colour regions with hard edges and a slight gradient, like much artwork."""
    yy, xx = torch.meshgrid(torch.arange(n).float(), torch.arange(n).float(), indexing="ij")
    img = torch.tensor([0.7, 0.6, 0.4]).view(1, 3, 1, 1) + 0.1 * (xx / n)
    img = img.expand(1, 3, n, n).clone()
    img[:, :, (xx > n / 4) & (xx < 3 * n / 4) & (yy > n / 8) & (yy < n / 2.3)] = torch.tensor([0.2, 0.3, 0.8])[:, None]
    img[:, :, ((xx - 0.6 * n) ** 2 + (yy - 0.7 * n) ** 2) < (0.2 * n) ** 2] = torch.tensor([0.9, 0.2, 0.2])[:, None]
    return img


def checkerboard(n=32, amp=8 / 255):
    yy, xx = torch.meshgrid(torch.arange(n), torch.arange(n), indexing="ij")
    return (((yy + xx) % 2) * 2 - 1).float() * amp


# ------------------------------------------------------------------------------------------ reference matches
@pytest.mark.parametrize("quality,subsampling", [(75, "4:2:0"), (30, "4:4:4"), (90, "4:2:2")])
def test_jpeg_is_exactly_pillows_round_trip(quality, subsampling):
    x = smooth_clean(40) * 0.8 + 0.1 * torch.rand(1, 3, 40, 40, generator=torch.Generator().manual_seed(3))
    out, _ = purify(None, x, [("jpeg", {"quality": quality, "subsampling": subsampling})])
    arr = np.round(x[0].clamp(0, 1).numpy().transpose(1, 2, 0) * 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=quality, subsampling=subsampling)
    ref = np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))
    assert np.array_equal(np.round(out[0].numpy().transpose(1, 2, 0) * 255).astype(np.uint8), ref)
    assert not torch.equal(out, x)


@pytest.mark.parametrize("kernel,sigma", [(3, None), (5, 1.3), (7, 2.0)])
def test_gaussian_blur_matches_hand_computed_kernel(kernel, sigma):
    x = torch.rand(1, 3, 20, 23, generator=torch.Generator().manual_seed(1))
    out, info = purify(None, x, [("gaussian_blur", {"kernel": kernel, "sigma": sigma})])
    s = sigma if sigma is not None else 0.3 * ((kernel - 1) * 0.5 - 1) + 0.8
    r = kernel // 2
    ax = np.arange(kernel) - r
    k2 = np.exp(-(ax[:, None] ** 2 + ax[None, :] ** 2) / (2 * s * s))
    k2 /= k2.sum()
    pad = np.pad(x[0].numpy().astype(np.float64), ((0, 0), (r, r), (r, r)), mode="reflect")
    ref = np.zeros(x[0].shape)
    for dy in range(kernel):
        for dx in range(kernel):
            ref += k2[dy, dx] * pad[:, dy:dy + 20, dx:dx + 23]
    assert np.abs(out[0].numpy() - ref).max() < 1e-5
    assert info["chain"][0]["sigma_used"] == pytest.approx(s)


@pytest.mark.parametrize("mode,pil", [("bilinear", Image.BILINEAR), ("bicubic", Image.BICUBIC),
                                      ("area", Image.BOX), ("nearest", Image.NEAREST)])
@pytest.mark.parametrize("size", [(15, 17), (11, 13), (60, 68), (7, 5)])
def test_resize_matches_pillow(mode, pil, size):
    x = torch.rand(1, 3, 30, 34, generator=torch.Generator().manual_seed(2))
    y = ops.resize_to(x, size, mode)
    ref = np.stack([np.asarray(Image.fromarray(x[0, c].numpy(), mode="F").resize(size[::-1], pil))
                    for c in range(3)])
    assert np.abs(y[0].numpy() - ref).max() < 1e-5


def test_resize_purifier_goes_down_and_back_up():
    x = torch.rand(1, 3, 30, 34, generator=torch.Generator().manual_seed(2))
    out, _ = purify(None, x, [("resize", {"factor": 0.5, "interpolation": "bicubic"})])
    small = ops.resize_to(x, (15, 17), "bicubic")
    assert out.shape == x.shape
    assert torch.allclose(out, ops.resize_to(small, (30, 34), "bicubic").clamp(0, 1))


def test_gaussian_noise_statistics_and_seeding():
    x = torch.full((2, 3, 64, 64), 0.5)
    out, _ = purify(None, x, [("gaussian_noise", {"sigma": 0.05})], seed=7)
    d = (out - x).flatten()
    assert abs(float(d.mean())) < 3 * 0.05 / d.numel() ** 0.5
    assert float(d.std()) == pytest.approx(0.05, rel=0.03)
    again, _ = purify(None, x, [("gaussian_noise", {"sigma": 0.05})], seed=7)
    other, _ = purify(None, x, [("gaussian_noise", {"sigma": 0.05})], seed=8)
    assert torch.equal(out, again) and not torch.equal(out, other)


def test_bilateral_with_huge_colour_sigma_is_a_spatial_gaussian_on_a_disc():
    x = torch.rand(1, 3, 12, 14, generator=torch.Generator().manual_seed(4))
    y = ops.bilateral_filter(x, diameter=5, sigma_color=1e6, sigma_space=1.5)
    pad = np.pad(x[0].numpy().astype(np.float64), ((0, 0), (2, 2), (2, 2)), mode="reflect")
    num, den = 0, 0
    for dy in range(-2, 3):
        for dx in range(-2, 3):
            if dy * dy + dx * dx <= 4:
                w = np.exp(-(dy * dy + dx * dx) / (2 * 1.5 ** 2))
                num = num + w * pad[:, 2 + dy:14 + dy, 2 + dx:16 + dx]
                den += w
    assert np.abs(y[0].numpy() - num / den).max() < 1e-5


def test_bilateral_keeps_a_hard_edge():
    x = torch.zeros(1, 3, 16, 16)
    x[..., 8:] = 1.0
    assert torch.allclose(ops.bilateral_filter(x), x, atol=1e-6)


@pytest.mark.parametrize("channels", [1, 3])
def test_guided_filter_identities(channels):
    g = torch.Generator().manual_seed(5)
    guide = torch.rand(1, channels, 16, 16, generator=g)
    src = torch.rand(1, channels, 16, 16, generator=g)
    assert torch.allclose(ops.guided_filter(guide, guide, 2, 1e-9), guide, atol=1e-4)   # self-guided, eps->0
    assert torch.allclose(ops.guided_filter(guide, torch.full_like(src, 0.3), 2, 1e-3), torch.full_like(src, 0.3),
                          atol=1e-6)                                                     # constant stays constant
    lin = ops.guided_filter(guide, 2 * src, 2, 1e-3)                                     # linear in the source
    assert torch.allclose(lin, 2 * ops.guided_filter(guide, src, 2, 1e-3), atol=1e-5)


# ---------------------------------------------------------------------------------------- purification effect
@pytest.mark.parametrize("name,params", [("gaussian_blur", {}), ("resize", {}),
                                         ("resize", {"interpolation": "bicubic"})])
def test_smoothing_filters_remove_a_checkerboard_cloak(name, params):
    clean = smooth_clean()
    cloaked = (clean + checkerboard()).clamp(0, 1)
    out, _ = purify(None, cloaked, [(name, params)])
    assert float(psnr(out, clean)) > float(psnr(cloaked, clean)) + 2


@pytest.mark.parametrize("guide", ["input", "filtered"])
@pytest.mark.parametrize("kind", ["checkerboard", "noise"])
def test_bilateral_guided_removes_noise_and_keeps_edges(guide, kind):
    clean = flat_art()
    pert = checkerboard() if kind == "checkerboard" else \
        torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 8 / 255
    cloaked = (clean + pert).clamp(0, 1)
    out, _ = purify(None, cloaked, [("bilateral_guided", {"passes": 16, "guide": guide})])
    assert float(psnr(out, clean)) > float(psnr(cloaked, clean)) + 1.5
    blurred, _ = purify(None, cloaked, [("gaussian_blur", {})])
    assert float(psnr(out, clean)) > float(psnr(blurred, clean))  # edge-preserving beats a plain blur here


# ------------------------------------------------------------------------------------------ registry & runner
def test_every_purifier_documents_summary_and_defaults():
    rows = describe_purifiers()
    assert {r["name"] for r in rows} >= {"impress", "diffpure", "noisy_upscale", "gridpure", "jpeg",
                                         "gaussian_noise", "gaussian_blur", "resize", "bilateral_guided"}
    for r in rows:
        assert r["summary"] and "\n" not in r["summary"] and r["source"]
        assert set(r["defaults"]) == set(r["params"]) and all(r["params"].values())


def test_chain_runs_in_order_as_one_step():
    x = smooth_clean(32)
    out, info = purify(None, x, [("jpeg", {"quality": 50}), ("gaussian_blur", {"kernel": 5})])
    step1, _ = purify(None, x, [("jpeg", {"quality": 50})])
    step2, _ = purify(None, step1, [("gaussian_blur", {"kernel": 5})])
    assert torch.equal(out, step2)
    assert [s["name"] for s in info["chain"]] == ["jpeg", "gaussian_blur"]
    assert info["chain"][1]["params"] == {"kernel": 5, "sigma": None}
    same, _ = purify(None, x, ["jpeg", "gaussian_blur"])  # names alone use the defaults
    assert same.shape == x.shape


def test_bad_requests_get_clear_errors():
    x = smooth_clean(32)
    with pytest.raises(ValueError, match="unknown purifier 'nope'"):
        purify(None, x, ["nope"])
    with pytest.raises(ValueError, match="has no parameter.*qualty"):
        purify(None, x, [("jpeg", {"qualty": 50})])
    with pytest.raises(ValueError, match="quality"):
        purify(None, x, [("jpeg", {"quality": 0})])
    with pytest.raises(ValueError, match="kernel"):
        purify(None, x, [("gaussian_blur", {"kernel": 4})])
    with pytest.raises(ValueError, match="need a diffusion model"):
        purify(None, x, ["diffpure"])
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        purify(None, x * 2 - 1, ["jpeg"])
    with pytest.raises(ValueError, match="empty"):
        purify(None, x, [])
    assert set(available_purifiers()) >= {"jpeg", "diffpure"}


def test_filter_progress_counts_steps():
    from protect_core.progress import Progress

    seen = []
    p = Progress(on_step=lambda d, t, i: seen.append((d, t)))
    purify(None, smooth_clean(32), [("bilateral_guided", {"passes": 3, "guided_passes": 2}), "jpeg"], progress=p)
    assert seen[-1] == (6, 6)
