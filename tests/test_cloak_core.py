"""The cloak machinery around the methods: quantisation and budgets, presets, robust transforms, tiling, the runner
and the ``stylecloak cloak`` command (resumable, no partial files on cancel, model untouched)."""
from __future__ import annotations

import json

import pytest
import torch

from protect_core.cloak import robust, tiling
from protect_core.cloak.base import CloakSettings, get_method
from protect_core.cloak.optimize import finalize, optimize, quantize_within
from protect_core.cloak.presets import settings_for
from protect_core.cloak.runner import cloak_images
from protect_core.metrics import perceptual_distance

PG = get_method("photoguard")  # the cheapest method (encoder only) drives the machinery tests


@pytest.fixture(scope="module")
def host():
    from protect_core.tiny_models import build_tiny_host

    return build_tiny_host("tiny", seed=0)


def _pg(**kw):
    kw.setdefault("steps", 3)
    return settings_for(PG, "default", **kw)


# ---- quantisation and budgets (pure) ----------------------------------------------------------------------------
def test_quantisation_stays_on_levels_and_within_eps():
    g = torch.Generator().manual_seed(0)
    clean = torch.rand(2, 3, 16, 16, generator=g)           # not on 8-bit levels: the hard case
    for eps in (1 / 255, 3 / 255, 8 / 255):
        x = (clean + (torch.rand(clean.shape, generator=g) * 2 - 1) * eps).clamp(0, 1)
        q = quantize_within(x, clean, eps)
        assert torch.equal(torch.round(q * 255) / 255, q)
        assert (q - clean).abs().max() <= eps + 1e-6
        assert q.min() >= 0 and q.max() <= 1


def test_finalize_enforces_the_perceptual_budget_exactly(rng_images):
    g = torch.Generator().manual_seed(1)
    clean = rng_images(2, 32, 32, seed=1)
    delta = (clean + (torch.rand(clean.shape, generator=g) * 2 - 1) * 0.1).clamp(0, 1) - clean
    p = 0.5 * float(perceptual_distance(clean + delta, clean, "dssim").min())
    out, dist = finalize(clean, delta, 0.1, budget=p, kind="dssim")
    assert (dist <= p).all()
    assert torch.allclose(dist, perceptual_distance(out, clean, "dssim"))
    assert (dist > 0.5 * p).all(), "bisection should keep most of the budget"
    assert (out - clean).abs().max() <= 0.1 + 1e-6
    assert torch.equal(torch.round(out * 255) / 255, out)



def _counting(monkeypatch, module):
    """Count the perceptual evaluations ``module`` makes (the real measure still runs)."""
    calls = []
    real = module.perceptual_distance

    def counted(*a, **k):
        calls.append(1)
        return real(*a, **k)

    monkeypatch.setattr(module, "perceptual_distance", counted)
    return calls


def test_finalize_search_lands_just_below_the_budget_in_few_evaluations(monkeypatch, rng_images):
    from protect_core.cloak import optimize as opt

    g = torch.Generator().manual_seed(3)
    clean = rng_images(3, 48, 48, seed=4)
    delta = (torch.rand(clean.shape, generator=g) * 2 - 1) * (12 / 255)
    full = perceptual_distance(quantize_within(clean + delta, clean, 12 / 255), clean, "dssim")
    for share in (0.1, 0.4, 0.8):
        budget = share * float(full.min())
        calls = _counting(monkeypatch, opt)
        out, dist = finalize(clean, delta, 12 / 255, budget=budget, kind="dssim")
        assert (dist <= budget).all() and torch.allclose(dist, perceptual_distance(out, clean, "dssim"))
        assert (dist >= budget * (1 - 0.005)).all(), "the search stops only just below the budget"
        assert len(calls) <= 6, f"{len(calls)} evaluations: a plain 10-step bisection needs 12"
        monkeypatch.undo()


def test_runner_does_not_finalise_a_single_piece_twice(monkeypatch, host, rng_images):
    from protect_core.cloak import optimize as opt, runner

    img = rng_images(1, 32, 32, seed=6)[0]          # one piece, already on the VAE grid: nothing to blend or crop
    [loose] = cloak_images(host, [img], _pg(steps=2, perceptual_budget=1.0))
    s = _pg(steps=2, perceptual_budget=0.5 * loose.stats["perceptual"])       # binding: the search must run
    [ref] = cloak_images(host, [img], s)
    assert 0.9 * s.perceptual_budget <= ref.stats["perceptual"] <= s.perceptual_budget
    in_opt, in_runner = _counting(monkeypatch, opt), _counting(monkeypatch, runner)
    [res] = cloak_images(host, [img], s)
    assert torch.equal(res.image, ref.image)
    assert in_runner == [] and len(in_opt) >= 1
    again, dist = finalize(img[None], (res.image - img)[None], s.eps, s.perceptual_budget, "auto")
    assert torch.equal(again[0], res.image), "finalising the result again changes nothing"
    assert abs(res.stats["perceptual"] - float(dist[0])) < 1e-6

# ---- presets and settings ----------------------------------------------------------------------------------------
def test_presets_scale_defaults_and_overrides_win():
    low, mid, high = (settings_for(PG, i) for i in ("low", "default", "high"))
    assert low.eps < mid.eps < high.eps and low.steps < mid.steps < high.steps
    assert mid.eps == PG.defaults["eps"] and mid.step_size == PG.defaults["step_size"]
    assert low.perceptual_budget is None  # photoguard is L-inf only
    glaze = get_method("glaze")
    assert [settings_for(glaze, i).perceptual_budget for i in ("low", "default", "high")] == [0.05, 0.07, 0.1]
    s = settings_for(PG, "high", eps=4 / 255, steps=7, perceptual_budget=0.03)
    assert (s.eps, s.steps, s.perceptual_budget) == (4 / 255, 7, 0.03)
    with pytest.raises(ValueError, match="intensity"):
        settings_for(PG, "extreme")


def test_bad_settings_get_clear_errors(host, rng_images):
    x = rng_images(1, 32, 32)
    for bad, word in [({"eps": 8.0}, "eps"), ({"optimizer": "sgd"}, "optimizer"),
                      ({"perceptual_budget": -1.0}, "perceptual_budget")]:
        with pytest.raises(ValueError, match=word):
            optimize(host, PG, x, _pg(**bad))
    with pytest.raises(ValueError, match="unknown cloak method"):
        cloak_images(host, [x[0]], CloakSettings(method="nope"))
    with pytest.raises(ValueError, match=r"\(3, H, W\)"):
        cloak_images(host, [x], _pg())


# ---- optimiser options -----------------------------------------------------------------------------------------------
def test_adam_perceptual_budget_and_channel_tied(host, rng_images, integrity):
    chk = integrity(host)
    x = rng_images(2, 32, 32, seed=3)
    out, info = optimize(host, PG, x, _pg(optimizer="adam", perceptual_budget=0.002, perceptual_kind="dssim"))
    assert info["objective_after"] < info["objective_before"]
    assert max(info["perceptual"]) <= 0.002
    assert (perceptual_distance(out, x, "dssim") <= 0.002).all()
    grey = (torch.round(x.mean(1, keepdim=True) * 255) / 255).expand(-1, 3, -1, -1).contiguous()
    out, _ = optimize(host, PG, grey, _pg(), channel_tied=True)
    d = out - grey
    assert d.abs().max() > 0 and torch.equal(d[:, 0], d[:, 1]) and torch.equal(d[:, 1], d[:, 2])
    chk.assert_unchanged()


def test_robust_transforms_and_robust_mode(host, rng_images):
    x = rng_images(1, 32, 32, seed=4).requires_grad_(True)
    for name, fn in robust.TRANSFORMS.items():
        y = fn(x, torch.Generator().manual_seed(0))
        assert y.shape == x.shape and y.min() >= 0 and y.max() <= 1, name
        assert torch.equal(y, fn(x, torch.Generator().manual_seed(0))), f"{name} not seeded"
        (g,) = torch.autograd.grad(y.sum(), x)
        assert g.abs().sum() > 0, f"{name} not differentiable"
    y = robust.jpeg(x, torch.Generator().manual_seed(0))
    assert not torch.allclose(y, x)                                     # forward: real JPEG
    assert torch.equal(torch.autograd.grad(y.sum(), x)[0], torch.ones_like(x))  # backward: straight through
    s = _pg(robust=True, robust_samples=2, steps=2)
    out, info = optimize(host, PG, x.detach(), s)
    assert (out - x).abs().max() <= s.eps + 1e-6 and info["objective_after"] < info["objective_before"]


# ---- tiling ------------------------------------------------------------------------------------------------------------
def test_blended_tiles_have_no_seams_and_keep_the_budget():
    h, w, tile, overlap, eps = 80, 112, 48, 16, 8 / 255
    boxes = tiling.tile_boxes(h, w, tile, overlap)
    assert len(boxes) > 2
    cover = torch.zeros(h, w)
    for (t, l, th, tw) in boxes:
        cover[t:t + th, l:l + tw] += 1
    assert cover.min() >= 1
    # worst case for seams: neighbouring tiles with opposite, constant deltas at the full budget
    deltas = [torch.full((3, b[2], b[3]), eps * (-1) ** k) for k, b in enumerate(boxes)]
    out = tiling.blend(deltas, boxes, h, w, overlap)
    jump = max(out.diff(dim=1).abs().max(), out.diff(dim=2).abs().max())
    hard = torch.zeros(3, h, w)                                       # naive stitching: paste tiles in order
    for d, (t, l, th, tw) in zip(deltas, boxes):
        hard[:, t:t + th, l:l + tw] = d
    assert max(hard.diff(dim=1).abs().max(), hard.diff(dim=2).abs().max()) >= 2 * eps - 1e-7
    assert jump <= 2 * (2 * eps) / overlap + 1e-6, "feathered blend must ramp, not jump"
    g = torch.Generator().manual_seed(0)                              # budget: any tile deltas within eps
    rand = [(torch.rand((3, b[2], b[3]), generator=g) * 2 - 1) * eps for b in boxes]
    assert tiling.blend(rand, boxes, h, w, overlap).abs().max() <= eps + 1e-7


def test_runner_tiles_match_per_tile_cloaks(host, rng_images, integrity):
    from protect_core.cloak.runner import plan_pieces

    chk = integrity(host)
    img = rng_images(1, 32, 53, seed=5)[0]  # padded to 32x56: two 32x32 tiles overlapping by 8
    s = _pg(steps=2)
    [res] = cloak_images(host, [img], s, batch_size=1, tile_size=32, tile_overlap=8)
    assert res.stats["tiles"] > 1 and res.image.shape == img.shape
    assert (res.image - img).abs().max() <= s.eps + 1e-6
    pieces, [(hp, wp)], [boxes] = plan_pieces([img], 8, 32, 8, [False])
    tile_deltas = []
    for k, p in enumerate(pieces):  # the runner gives batch k the seed + k
        out, _ = optimize(host, get_method("photoguard"), p.pixels[None], _pg(steps=2, seed=k))
        tile_deltas.append(out[0] - p.pixels)
    expected, _ = finalize(img[None], tiling.blend(tile_deltas, boxes, hp, wp, 8)[None][..., :32, :53], s.eps)
    assert torch.equal(res.image, expected[0])
    chk.assert_unchanged()


# ---- runner ------------------------------------------------------------------------------------------------------------
def test_runner_odd_sizes_batches_and_callbacks(host, rng_images):
    imgs = [rng_images(1, 37, 51, seed=i)[0] for i in range(2)] + [rng_images(1, 24, 24, seed=9)[0]]
    seen = []
    s = _pg(steps=2, perceptual_budget=0.01)
    res = cloak_images(host, imgs, s, batch_size=2, on_result=lambda i, r: seen.append(i))
    assert sorted(seen) == [0, 1, 2]
    for img, r in zip(imgs, res):
        assert r.image.shape == img.shape and r.perturbation_view.shape == img.shape
        assert (r.image - img).abs().max() <= s.eps + 1e-6
        assert r.stats["perceptual"] <= 0.01 and r.stats["method"] == "photoguard"
        assert {"linf_255", "psnr", "ssim", "objective_before", "objective_after", "seconds"} <= set(r.stats)
        view = 0.5 + (r.image - img) * (0.5 / s.eps)
        assert torch.allclose(r.perturbation_view, view.clamp(0, 1))


# ---- command line --------------------------------------------------------------------------------------------------------
def _write_pngs(folder, sizes):
    import numpy as np
    from PIL import Image

    folder.mkdir()
    rng = np.random.default_rng(0)
    for name, (h, w) in sizes.items():
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(folder / name)


def test_cli_writes_resumes_and_lists(host, tmp_path, monkeypatch, capsys):
    from protect_core import cli
    from protect_core.backends import loading

    monkeypatch.setattr(loading, "load_host", lambda *a, **k: host)
    src, out = tmp_path / "in", tmp_path / "out"
    _write_pngs(src, {"a.png": (37, 51), "b.png": (32, 32)})
    argv = ["cloak", str(src), "-o", str(out), "--method", "photoguard", "--steps", "2", "--eps", "4", "--quiet",
            "--save-perturbation"]
    assert cli.main(argv) == 0
    first = json.loads(capsys.readouterr().out)
    assert first["written"] == 2 and (out / "a.png").exists() and (out / "a.perturbation.png").exists()
    assert all(r["stats"]["linf_255"] <= 4 + 1e-3 for r in first["images"])
    assert {r["stats"]["memory"]["name"] for r in first["images"]} <= {"fast", "balanced", "low"}
    low = ["cloak", str(src / "b.png"), "-o", str(tmp_path / "low"), "--method", "photoguard", "--steps", "1",
           "--quiet", "--memory", "low"]
    assert cli.main(low) == 0
    assert json.loads(capsys.readouterr().out)["images"][0]["stats"]["memory"]["name"] == "low"
    assert cli.main(argv) == 0
    second = json.loads(capsys.readouterr().out)
    assert second["written"] == 0 and second["skipped"] == 2
    assert cli.main(["cloak", "--list-methods"]) == 0
    names = {m["name"] for m in json.loads(capsys.readouterr().out)["methods"]}
    assert {"glaze", "pag", "photoguard", "pid", "sds"} <= names


def test_cli_cancel_leaves_no_partial_file_and_model_untouched(host, tmp_path, monkeypatch, integrity):
    from protect_core import cli
    from protect_core.backends import loading

    chk = integrity(host)
    monkeypatch.setattr(loading, "load_host", lambda *a, **k: host)

    def bar(args, total, desc):  # the user presses Ctrl-C during the second image's optimisation
        def on_step(done, total_, info):
            if done == 3:
                raise KeyboardInterrupt
        return on_step, lambda: None

    monkeypatch.setattr(cli, "progress_bar", bar)
    src, out = tmp_path / "in", tmp_path / "out"
    _write_pngs(src, {"a.png": (32, 32), "b.png": (40, 48)})
    rc = cli.main(["cloak", str(src), "-o", str(out), "--method", "photoguard", "--steps", "2", "--quiet"])
    assert rc == 130
    assert sorted(p.name for p in out.iterdir()) == ["a.png"], "only the finished image may exist"
    chk.assert_unchanged()


def test_conditioning_cat_pads_token_lengths_without_changing_attention():
    import torch.nn.functional as F

    from protect_core.host import Conditioning

    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(1, 3, 8, generator=g), torch.randn(1, 2, 8, generator=g)
    both = Conditioning(a).cat(Conditioning(b))
    assert both.context.shape == (2, 6, 8)
    q = torch.randn(2, 5, 8, generator=g)
    for i, ctx in enumerate((a, b)):  # attention over the repeated tokens equals attention over the originals
        ref = F.scaled_dot_product_attention(q[i:i + 1], ctx, ctx)
        got = F.scaled_dot_product_attention(q[i:i + 1], both.context[i:i + 1], both.context[i:i + 1])
        assert torch.allclose(ref, got, atol=1e-5)


def test_method_discovery_not_hidden_by_a_direct_import():
    import subprocess
    import sys

    code = ("import pkgutil, protect_core.cloak.methods as m, protect_core.cloak.methods.photoguard;"
            "from protect_core.cloak.base import available_methods;"
            "print(len(available_methods()), len(list(pkgutil.iter_modules(m.__path__))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    found, modules = map(int, out.split())
    assert modules > 1 and found == modules  # one registered method per module, none hidden
