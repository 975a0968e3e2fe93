"""The causal part of the layer score: the text swap is exact, a layer the prediction hinges on ranks first (and
the activation part does not see it), hooks always go away, hosts that bypass the projections get a clear error."""
from __future__ import annotations

import math

import pytest
import torch

from protect_core.errors import Cancelled, ModelError
from protect_core.layers import analyse_layers
from protect_core.layers.analysis import final_scores
from protect_core.layers.causal import ablation_effects, score_base, text_swapped
from protect_core.progress import CancelToken, Progress

from layer_fixtures import CP, SP, fast, smooth_images



@pytest.fixture(scope="module")
def images():
    return smooth_images()


def _layer(host, name):
    return next(l for l in host.cross_attention_layers() if l.name == name)


def _no_projection_hooks(host) -> bool:
    return all(not l.module.get_submodule(k)._forward_pre_hooks
               for l in host.cross_attention_layers() for k in ("to_k", "to_v"))


def test_text_swap_is_exact(any_tiny_host, rng_images, integrity):
    """Every layer reading the content text inside a style-prompt call IS the content-prompt call; a layer reading
    the style text it already reads changes nothing."""
    host = any_tiny_host
    chk = integrity(host)
    layers = host.cross_attention_layers()
    with host.borrowed(), torch.no_grad():
        z = host.encode(rng_images(2, 32, 32) * 2 - 1)
        cs, cc = host.encode_text([SP] * 2), host.encode_text([CP] * 2)
        if cs.pooled is not None:  # SDXL: pooled text also differs; give both calls the same
            cc = type(cc)(cc.context, cs.pooled, cc.extras)
        out_s, out_c = host.model_output(z, 500, cs), host.model_output(z, 500, cc)
        assert not torch.allclose(out_s, out_c)
        with torch.no_grad(), _all_swapped(layers, cc.context):
            swapped = host.model_output(z, 500, cs)
        assert torch.allclose(swapped, out_c, atol=1e-5, rtol=1e-4)
        with text_swapped(layers[0], cs.context) as fired:
            same = host.model_output(z, 500, cs)
        assert fired == {"to_k": 1, "to_v": 1} and torch.equal(same, out_s)
        effects = ablation_effects(host, layers, z, 500, cs, cc, out_s, out_c)
    chk.assert_unchanged()
    assert _no_projection_hooks(host)
    assert effects.shape == (len(layers), 2) and bool((effects > 0).all())


class _all_swapped:
    """Nested text swaps on every layer (exits in reverse order)."""

    def __init__(self, layers, context):
        self.cms = [text_swapped(l, context) for l in layers]

    def __enter__(self):
        for cm in self.cms:
            cm.__enter__()

    def __exit__(self, *exc):
        for cm in reversed(self.cms):
            cm.__exit__(*exc)


def test_a_layer_the_prediction_hinges_on_ranks_first_under_the_causal_score(images, integrity):
    """Scaling a layer's to_out 10x makes the output hinge on it: the causal score ranks it first, while its
    activation sensitivity (a ratio of its own output) barely moves."""
    from protect_core.tiny_models import build_tiny_host

    before = analyse_layers(build_tiny_host("tiny", seed=0), images, fast(score="causal"))
    assert all(r.causal is not None and r.causal >= 0 for r in before.layers)
    base = {r.name: r for r in before.layers}
    for target in (before.layers[-1].name, before.layers[len(before.layers) // 2].name):
        host = build_tiny_host("tiny", seed=0)
        with torch.no_grad():
            _layer(host, target).module.get_submodule("to_out.0").weight.mul_(10.0)
        chk = integrity(host)
        after = analyse_layers(host, images, fast(score="causal"))
        chk.assert_unchanged()
        assert after.layers[0].name == target, [(r.name, r.causal) for r in after.layers]
        hit = after.layers[0]
        assert hit.causal > 2 * base[target].causal
        assert 0.5 < hit.sensitivity / base[target].sensitivity < 2.0


def test_scores_and_table(images, tiny_host, integrity):
    chk = integrity(tiny_host)
    res = {sc: analyse_layers(tiny_host, images, fast(score=sc)) for sc in ("activation", "causal", "combined")}
    chk.assert_unchanged()
    assert all(r.causal is None and r.causal_per_timestep is None for r in res["activation"].layers)
    rows = {sc: {r.name: r for r in a.layers} for sc, a in res.items()}
    names = list(rows["activation"])
    for sc in ("causal", "combined"):
        assert all(len(r.causal_per_timestep) == 2 and r.causal == pytest.approx(sum(r.causal_per_timestep) / 2)
                   for r in res[sc].layers)
        # the activation part is measured the same whatever the score
        assert all(rows[sc][n].sensitivity == rows["activation"][n].sensitivity for n in names)
        assert res[sc].settings["score"] == sc
    s = [rows["combined"][n].sensitivity for n in names]
    k = [rows["combined"][n].causal for n in names]
    c = [rows["combined"][n].correlation for n in names]
    w = res["combined"].settings["effective_correlation_weight"]
    want = final_scores([math.sqrt(a / max(s) * b / max(k)) for a, b in zip(s, k)], c, w)
    assert [rows["combined"][n].score for n in names] == pytest.approx(want, rel=1e-5)
    want = final_scores(k, [rows["causal"][n].correlation for n in names], w)
    assert [rows["causal"][n].score for n in names] == pytest.approx(want, rel=1e-5)


def test_score_base():
    assert score_base("activation", [2.0, 1.0], None) == [2.0, 1.0]
    assert score_base("causal", [2.0, 1.0], [0.1, 0.4]) == [0.1, 0.4]
    assert score_base("combined", [2.0, 1.0], [0.1, 0.4]) == pytest.approx([0.5, 0.5 ** 0.5])
    with pytest.raises(ValueError, match="needs the causal"):
        score_base("causal", [1.0], None)
    with pytest.raises(ValueError, match="score must be one of"):
        fast(score="loud").check(type("H", (), {"num_train_timesteps": 1000, "vae_scale_factor": 8})())


def test_cancel_during_the_causal_stage_leaves_no_hooks(tiny_host, rng_images, integrity):
    chk = integrity(tiny_host)
    token, stages = CancelToken(), []

    def on_step(done, total, info):
        stages.append(info.get("stage"))
        if info.get("stage") == "causal":
            token.cancel()

    with pytest.raises(Cancelled):
        analyse_layers(tiny_host, rng_images(2, 32, 32), fast(score="causal"),
                       progress=Progress(on_step=on_step, cancel=token))
    assert stages == ["layers", "causal"]
    chk.assert_unchanged()
    assert _no_projection_hooks(tiny_host)
    assert all(not l.module._forward_hooks for l in tiny_host.cross_attention_layers())


def test_a_host_that_bypasses_the_projections_gets_a_clear_error(tiny_host, rng_images):
    """A layer whose to_k / to_v never run (fused or bypassed projections) cannot be swapped: an error, not 0."""
    import copy

    real = tiny_host.cross_attention_layers()
    fake = copy.copy(real[0])
    object.__setattr__(fake, "module", copy.deepcopy(real[0].module))
    with tiny_host.borrowed(), torch.no_grad():
        z = tiny_host.encode(rng_images(1, 32, 32) * 2 - 1)
        cs, cc = tiny_host.encode_text(SP), tiny_host.encode_text(CP)
        out_s, out_c = tiny_host.model_output(z, 500, cs), tiny_host.model_output(z, 500, cc)
        with pytest.raises(ModelError, match="did not take effect"):
            ablation_effects(tiny_host, [fake], z, 500, cs, cc, out_s, out_c)
        with pytest.raises(ModelError, match="not the text context"):  # a context of the wrong batch size
            with text_swapped(real[0], cc.repeat_to(3).context):
                tiny_host.model_output(z, 500, cs)
    assert _no_projection_hooks(tiny_host)


def test_heatmap_adds_a_causal_block_on_its_own_scale():
    from protect_core.layers.heatmap import VIRIDIS, cell_box, geometry, render_heatmap

    names = ["down_blocks.0.attentions.0.transformer_blocks.0.attn2",
             "up_blocks.0.attentions.0.transformer_blocks.0.attn2"]
    plain = [{"name": n, "per_timestep": [0.2 * (i + 1), 0.1], "sensitivity": 0.3, "correlation": None,
              "score": 1.0 - i, "rank": i + 1} for i, n in enumerate(names)]
    causal = [{**r, "causal_per_timestep": [0.0 if i == 0 else 0.05, 0.02], "causal": 0.03}
              for i, r in enumerate(plain)]
    ts = [200, 800]
    old, new = render_heatmap(plain, ts), render_heatmap(causal, ts)
    g_old, g_new = geometry(plain, ts, []), geometry(causal, ts, [])
    assert new.size[0] == old.size[0] + 3 * (cell_box(g_old, 0, 1)[0] - cell_box(g_old, 0, 0)[0])
    assert g_new["heat_cols"] == 2 * g_old["heat_cols"] == 6

    def px(img, geo, row, col):
        x0, y0, _, _ = cell_box(geo, row, col)
        return img.convert("RGB").getpixel((x0 + 2, y0 + 2))

    for col in range(3):  # the S block is drawn exactly as before
        assert px(new, g_new, 0, col) == px(old, g_old, 0, col)
    assert px(new, g_new, 1, 0) == VIRIDIS[-1]  # S max (0.4)
    assert px(new, g_new, 1, 3) == VIRIDIS[-1]  # K max (0.05), its own scale
    assert px(new, g_new, 0, 3) == VIRIDIS[0]   # K = 0
