"""Style embedders and score definitions of the mimicry test, checked on synthetic styles (no model training)."""
from __future__ import annotations

import math

import pytest
import torch

from protect_core.errors import ModelError
from protect_core.mimicry import scoring
from protect_core.mimicry.runner import _verdicts
from protect_core.mimicry.style import ClipVisionEmbedder, DescriptorEmbedder, StyleEmbedder, stack_images



def _stripes(n, seed, size=32):
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(size).float().view(1, size, 1)
    out = []
    for _ in range(n):
        period = 4 + 4 * float(torch.rand(1, generator=g))
        mask = (torch.sin(2 * math.pi * y / period) > 0).float().expand(1, size, size)
        col = torch.tensor([0.1, 0.2, 0.8]).view(3, 1, 1) + 0.05 * torch.rand(3, 1, 1, generator=g)
        out.append(mask * col + (1 - mask) * 0.95)
    return torch.stack(out).clamp(0, 1)


def _blotches(n, seed, size=32):
    g = torch.Generator().manual_seed(seed)
    base = torch.rand(n, 3, 5, 5, generator=g) * torch.tensor([0.9, 0.5, 0.2]).view(1, 3, 1, 1)
    return torch.nn.functional.interpolate(base, size=(size, size), mode="bicubic", align_corners=False).clamp(0, 1)


def _noise(n, seed, size=32):
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


STYLES = {"stripes": _stripes, "blotches": _blotches, "noise": _noise}


@pytest.mark.parametrize("with_host", [False, True])
def test_descriptor_separates_styles(with_host, tiny_host):
    emb = DescriptorEmbedder(tiny_host if with_host else None)
    assert isinstance(emb, StyleEmbedder)
    refs = {k: f(6, seed=0) for k, f in STYLES.items()}
    with pytest.raises(RuntimeError, match="fit"):
        emb.embed(refs["noise"])
    emb.fit(torch.cat(list(refs.values())))
    ref_emb = {k: emb.embed(v) for k, v in refs.items()}
    assert all(torch.allclose(e.norm(dim=1), torch.ones(len(e))) for e in ref_emb.values())
    nc = scoring.NearestCentroid(ref_emb, "stripes")
    for k, f in STYLES.items():  # unseen images of each style go to their own centroid
        assert nc.predict(emb.embed(f(5, seed=11))) == [k] * 5
    centre = scoring.centroid(ref_emb["stripes"])
    own = scoring.similarity_to(emb.embed(_stripes(5, 12)), centre).mean()
    other = scoring.similarity_to(emb.embed(_blotches(5, 12)), centre).mean()
    assert own > other + 0.3


def test_descriptor_separates_toy_world_styles():
    styles = pytest.importorskip("protect_core.toy.styles")
    emb = DescriptorEmbedder(None)
    refs = {s: styles.render(s, 6, 32, seed=0) for s in styles.STYLES}
    emb.fit(torch.cat(list(refs.values())))
    nc = scoring.NearestCentroid({s: emb.embed(v) for s, v in refs.items()}, styles.HELD_OUT)
    right = sum(p == s for s in styles.STYLES for p in nc.predict(emb.embed(styles.render(s, 6, 32, seed=1))))
    assert right / (6 * len(styles.STYLES)) >= 0.9


def test_stack_images_crops_and_resizes():
    items = [torch.rand(3, 40, 64), torch.rand(1, 4, 32, 32), torch.rand(3, 16, 16)]
    out = stack_images(items, 32)
    assert out.shape == (3, 3, 32, 32) and 0 <= out.min() and out.max() <= 1
    assert torch.equal(out[1], items[1][0, :3])
    with pytest.raises(ValueError, match="empty"):
        stack_images([], 32)


def test_sanity_check_rule():
    base = torch.tensor([0.0, 0.02, -0.01, 0.01])
    ok = scoring.sanity_check(base, base + 0.3, margin=0.05)
    assert ok["passed"] and ok["gain"] == pytest.approx(0.3)
    small_gain = scoring.sanity_check(base, base + 0.03, margin=0.05)
    assert not small_gain["passed"] and small_gain["message"] == scoring.INCONCLUSIVE
    noisy = scoring.sanity_check(torch.tensor([-1.0, 1.0, -1.0, 1.0]), torch.tensor([-0.8, 1.2, -0.8, 1.2]), 0.05)
    assert not noisy["passed"]  # gain 0.2 > margin, but within two standard errors
    vae_bound = scoring.sanity_check(base, base + 0.01, 0.05, ceiling_sims=base + 0.02)
    assert "VAE cannot reproduce" in vae_bound["diagnosis"]
    weak = scoring.sanity_check(base, base + 0.01, 0.05, ceiling_sims=base + 0.5)
    assert "too weak" in weak["diagnosis"] and weak["ceiling_gain"] == pytest.approx(0.5)
    assert "diagnosis" not in scoring.sanity_check(base, base + 0.3, 0.05, ceiling_sims=base + 0.5)
    unrepresentable = scoring.sanity_check(base, base + 0.3, 0.05, ceiling_sims=base + 0.5, ceiling_artist_share=0.25)
    assert not unrepresentable["passed"] and "VAE cannot reproduce" in unrepresentable["diagnosis"]
    assert scoring.sanity_check(base, base + 0.3, 0.05, ceiling_sims=base + 0.5, ceiling_artist_share=1.0)["passed"]


def test_verdicts_follow_protection_effect():
    def row(sim):
        return {"style_similarity": {"mean": sim}}

    conds = {"base": row(0.0), "clean": row(0.6), "strong": row(0.1), "mid": row(0.4), "weak": row(0.58)}
    _verdicts(conds, {"passed": True, "message": "learned"})
    assert conds["strong"]["protection_effect"] == pytest.approx(5 / 6, abs=1e-6)
    assert conds["strong"]["verdict"].startswith("protected")
    assert conds["mid"]["verdict"].startswith("partly")
    assert conds["weak"]["verdict"].startswith("not protected")
    _verdicts(conds, {"passed": False, "message": scoring.INCONCLUSIVE})
    assert all(conds[k]["verdict"] == scoring.INCONCLUSIVE for k in ("clean", "strong", "mid", "weak"))


def test_attribution_and_classifier_scores():
    refs = {"artist": torch.tensor([[1.0, 0.0], [0.9, 0.1]]), "other": torch.tensor([[0.0, 1.0], [0.1, 0.9]])}
    nc = scoring.NearestCentroid(refs, "artist")
    res = scoring.attribution_scores(nc, torch.tensor([[1.0, 0.2], [0.2, 1.0], [0.1, 1.0], [0.0, 1.0]]))
    assert res["attributed_to"] == {"artist": 1, "other": 3} and res["protection_success_rate"] == 0.75
    assert nc.training_accuracy(refs) == 1.0
    with pytest.raises(ValueError, match="other set"):
        scoring.NearestCentroid({"artist": refs["artist"]}, "artist")
    probs = lambda x: torch.tensor([[0.7, 0.3], [0.2, 0.8]])  # noqa: E731
    cls = scoring.classifier_scores(probs, torch.rand(2, 3, 8, 8), artist_index=0)
    assert cls["artist_share"] == 0.5 and cls["artist_probability"]["mean"] == pytest.approx(0.45)
    with pytest.raises(ValueError, match="classifier returned"):
        scoring.classifier_scores(probs, torch.rand(3, 3, 8, 8), artist_index=0)


def test_imperceptibility_numbers():
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    same = scoring.imperceptibility(x, x.clone())
    assert same["ssim"]["mean"] == pytest.approx(1.0) and same["psnr"]["mean"] > 100
    y = (x + 4 / 255).clamp(0, 1)
    diff = scoring.imperceptibility(x, y)
    assert 35 < diff["psnr"]["mean"] < 50 and diff["linf_255"]["mean"] == pytest.approx(4, abs=1e-3)


def test_clip_vision_embedder_from_a_local_folder(tmp_path):
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(0)
    cfg = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                           image_size=32, patch_size=8, projection_dim=16)
    CLIPVisionModelWithProjection(cfg).save_pretrained(tmp_path / "clip")
    emb = ClipVisionEmbedder(tmp_path / "clip")
    e = emb.embed(torch.rand(3, 3, 48, 48))
    emb.fit(torch.rand(2, 3, 32, 32))  # nothing to fit; must not fail
    assert e.shape == (3, 16) and torch.allclose(e.norm(dim=1), torch.ones(3))
    x = torch.rand(2, 3, 48, 48, generator=torch.Generator().manual_seed(1))
    assert torch.equal(emb.embed(x), emb.embed(x.clone())) and not torch.allclose(emb.embed(x)[0], emb.embed(x)[1])
    with pytest.raises(ModelError, match="CLIP"):
        ClipVisionEmbedder(tmp_path / "missing")
