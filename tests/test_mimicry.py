"""The mimicry test end to end on the tiny model: conditions, report files, determinism, host integrity."""
from __future__ import annotations

import json

import pytest
import torch

from protect_core.diffusion import denoising_loss
from protect_core.errors import Cancelled
from protect_core.mimicry import INCONCLUSIVE, run_mimicry_test
from protect_core.mimicry.finetune import finetune
from protect_core.progress import CancelToken, Progress

from mimicry_fixtures import make_art, small


@pytest.fixture
def art(rng_images):
    return make_art(rng_images, purified=True)


def test_report_has_every_condition_and_files_are_written(tiny_host, art, integrity, tmp_path):
    clean, sets = art
    chk = integrity(tiny_host)
    report = run_mimicry_test(tiny_host, clean, sets, small())
    chk.assert_unchanged()
    assert list(report.conditions) == ["base", "clean", "cloaked", "purified"]
    assert set(report.images) == set(report.conditions)
    assert all(v.shape == (2, 3, 32, 32) for v in report.images.values())
    for name in ("clean", "cloaked", "purified"):
        row = report.conditions[name]
        assert len(row["loss_curve"]) == 2 and row["trainable_parameters"] > 0
        assert 0 <= row["nearest_centroid"]["protection_success_rate"] <= 1
    imp = report.conditions["cloaked"]["imperceptibility"]
    assert imp["paired"] and 25 < imp["psnr"]["mean"] < 40 and imp["linf_255"]["mean"] == pytest.approx(7.65, 0.01)
    paths = report.save(tmp_path / "rep", samples=True)
    data = json.loads(open(paths["json"]).read())
    assert set(data["conditions"]) == {"base", "clean", "cloaked", "purified"}
    assert data["settings"]["steps"] == 2 and data["settings"]["lr"] == 1e-3
    assert "gain" in data["sanity_check"] and data["verdict"]
    assert data["ceiling_clean_vae_roundtrip"]["style_similarity"]["n"] == 3
    from PIL import Image

    with Image.open(paths["png"]) as im:
        assert im.format == "PNG" and im.size[1] > 6 * 64  # 6 rows of thumbnails + chart
    assert len(list((tmp_path / "rep" / "samples").glob("*.png"))) == 8
    assert not list((tmp_path / "rep").glob(".*"))  # no temporary files left behind


@pytest.mark.parametrize("kw", [dict(steps=0), dict(lr=0.0)])
def test_fine_tune_that_cannot_learn_is_inconclusive(tiny_host, art, kw):
    clean, sets = art
    report = run_mimicry_test(tiny_host, clean, {"cloaked": sets["cloaked"]}, small(**kw))
    # nothing was learned: the "fine-tuned" model is the base model, sample for sample
    assert torch.equal(report.images["clean"], report.images["base"])
    assert not report.sanity["passed"] and report.sanity["gain"] == 0
    assert report.verdict == INCONCLUSIVE and report.sanity["diagnosis"]
    assert set(report.ceiling) >= {"style_similarity", "nearest_centroid"}
    assert report.conditions["cloaked"]["verdict"] == INCONCLUSIVE
    assert INCONCLUSIVE in report.to_json()


def test_deterministic_for_a_seed(tiny_host, art):
    clean, sets = art
    a = run_mimicry_test(tiny_host, clean, {"cloaked": sets["cloaked"]}, small(seed=3))
    b = run_mimicry_test(tiny_host, clean, {"cloaked": sets["cloaked"]}, small(seed=3))
    c = run_mimicry_test(tiny_host, clean, {"cloaked": sets["cloaked"]}, small(seed=4))
    for name in a.images:
        assert torch.equal(a.images[name], b.images[name])
        assert not torch.equal(a.images[name], c.images[name])
        for key in ("style_similarity", "nearest_centroid", "loss_curve"):
            assert a.conditions[name].get(key) == b.conditions[name].get(key)


def test_fine_tune_lowers_the_denoising_loss(tiny_host, rng_images):
    images = rng_images(2, 32, 32, seed=5)
    s = small(steps=12, lr=1e-2, self_attention=False)
    with tiny_host.borrowed():
        lat = tiny_host.encode(images * 2 - 1).repeat(3, 1, 1, 1)
        cond = tiny_host.encode_text([s.instance_prompt])

        def loss(over):
            with torch.no_grad():
                return float(denoising_loss(tiny_host, lat, cond, torch.Generator().manual_seed(7),
                                            weight_overrides=over))

        result = finetune(tiny_host, images, s)
        before, after = loss(None), loss(result.overrides)
    assert after < before * 0.97, (before, after)


def test_host_untouched_on_cancel_mid_fine_tune(tiny_host, art, integrity):
    clean, sets = art
    chk = integrity(tiny_host)
    token, seen = CancelToken(), []

    def on_step(done, total, info):
        seen.append(info)
        if "loss" in info and len(seen) >= 6:  # well inside the first fine-tune
            token.cancel()

    with pytest.raises(Cancelled):
        run_mimicry_test(tiny_host, clean, sets, small(steps=6), Progress(0, on_step, cancel=token))
    assert sum("loss" in i for i in seen) < 6  # stopped before the first fine-tune finished
    chk.assert_unchanged()


def test_host_untouched_on_failure_midway(tiny_host, art, integrity):
    clean, sets = art
    chk = integrity(tiny_host)

    def explode(done, total, info):
        if "loss" in info:
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        run_mimicry_test(tiny_host, clean, sets, small(), Progress(0, explode))
    chk.assert_unchanged()


def test_dreambooth_subset_with_prior_preservation(tiny_host, art, integrity):
    clean, sets = art
    chk = integrity(tiny_host)
    s = small(method="dreambooth", dreambooth_params=["up_blocks.1.attentions.0"], prior_preservation=True)
    report = run_mimicry_test(tiny_host, clean, {"cloaked": sets["cloaked"]}, s)
    expected = sum(p.numel() for n, p in tiny_host.unet_parameters().items()
                   if n.startswith("up_blocks.1.attentions.0."))
    assert report.conditions["clean"]["trainable_parameters"] == expected
    assert not torch.equal(report.images["clean"], report.images["base"])
    chk.assert_unchanged()


def test_layer_selection_limits_the_lora(tiny_host, art):
    clean, _ = art
    layer = tiny_host.cross_attention_layers()[0]
    s = small(layers=[layer.name], self_attention=False, rank=2)
    report = run_mimicry_test(tiny_host, clean, {}, s)
    q, c = layer.query_dim, layer.context_dim
    # to_q (q->q), to_k and to_v (c->q), to_out (q->q); A is (r, in), B is (out, r)
    expected = 2 * ((q + q) + 2 * (c + q) + (q + q))
    assert report.conditions["clean"]["trainable_parameters"] == expected
    assert list(report.conditions) == ["base", "clean"]


def test_references_and_classifier(tiny_host, art, rng_images):
    clean, sets = art
    others = {"other_style": rng_images(3, 32, 32, seed=9) * 0.3}

    def redness(images01):
        r = images01[:, 0].mean((1, 2)) - images01[:, 1:].mean((1, 2, 3))
        return torch.stack([torch.sigmoid(r * 10), 1 - torch.sigmoid(r * 10)], 1)

    report = run_mimicry_test(tiny_host, clean, {"cloaked": sets["cloaked"]}, small(), references=others,
                              classifier=redness, classifier_artist_index=0)
    assert report.references["other_style"] == 3 and "base_model" not in report.references
    for row in report.conditions.values():
        cls = row["classifier"]
        assert cls["protection_success_rate"] == pytest.approx(1 - cls["artist_share"])
        assert 0 <= cls["artist_probability"]["mean"] <= 1


def test_bad_inputs_are_refused_clearly(tiny_host, art):
    clean, sets = art
    with pytest.raises(ValueError, match="reserved"):
        run_mimicry_test(tiny_host, clean, {"clean": clean}, small())
    with pytest.raises(ValueError, match="resolution"):
        run_mimicry_test(tiny_host, clean, sets, small(resolution=30))
    with pytest.raises(ValueError, match="method"):
        run_mimicry_test(tiny_host, clean, sets, small(method="hypernet"))
    with pytest.raises(ValueError, match="channels"):
        run_mimicry_test(tiny_host, torch.rand(2, 2, 32, 32), sets, small())
    with pytest.raises(ValueError, match="artist_index"):
        run_mimicry_test(tiny_host, clean, sets, small(), classifier=lambda x: x)
    with pytest.raises(ValueError, match="unknown cross-attention"):
        run_mimicry_test(tiny_host, clean, sets, small(layers=["nope"]))
