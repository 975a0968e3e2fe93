"""Select Style-Sensitive Layers: the analysis finds a planted effect, is deterministic, leaves the host untouched;
selection JSON, presets, heat map and CLI."""
from __future__ import annotations

import copy
import json

import pytest
import torch

from protect_core.errors import Cancelled, ModelError, StyleCloakError
from protect_core.layers import LayerSelection, analyse_layers
from protect_core.layers.analysis import (average_ranks, effective_weight, final_scores, record_attn2,
                                         relative_change, spearman)
from protect_core.progress import CancelToken, Progress

from layer_fixtures import CP, SP, fast, smooth_images



@pytest.fixture(scope="module")
def baseline():
    """One analysis of a fresh seed-0 tiny model on 3 images, shared by the tests that only read it."""
    from protect_core.tiny_models import build_tiny_host

    images = smooth_images()
    return images, analyse_layers(build_tiny_host("tiny", seed=0), images, fast())


def plant_style_effect(host, name: str, gain: float = 10.0) -> None:
    """Amplify layer ``name``'s response to the style tokens only, in a model the test owns.

    u = the context direction that is largest on the style prompt's token embeddings relative to the content
    prompt's (generalised eigenvector of (D^T D, C_c^T C_c), D = C_style - C_content); to_v gains a rank-1 term
    along u, so values (and the layer's output) grow where the style tokens are and barely move for the content
    prompt."""
    cs = host.encode_text(SP).context[0].double()
    cc = host.encode_text(CP).context[0].double()
    d = cs - cc
    chol = torch.linalg.cholesky(cc.T @ cc + 1e-6 * torch.eye(cc.shape[1], dtype=torch.float64))
    li = torch.linalg.inv(chol)
    _, vecs = torch.linalg.eigh(li @ d.T @ d @ li.T)
    u = li.T @ vecs[:, -1]
    u = u / u.norm()
    layer = next(l for l in host.cross_attention_layers() if l.name == name)
    w = layer.module.to_v.weight
    direction = torch.nn.functional.normalize(w.double() @ u, dim=0)
    with torch.no_grad():
        w.add_((gain * w.norm().double() * torch.outer(direction, u)).float())


def test_planted_style_effect_is_ranked_first(baseline, integrity):
    from protect_core.tiny_models import build_tiny_host

    images, before = baseline
    # plant into the layer ranked last without the effect, and into a middle one
    for target in (before.layers[-1].name, before.layers[len(before.layers) // 2].name):
        host = build_tiny_host("tiny", seed=0)
        plant_style_effect(host, target)
        chk = integrity(host)
        result = analyse_layers(host, images, fast())
        chk.assert_unchanged()
        assert result.layers[0].name == target, [(r.name, r.score) for r in result.layers]
        planted = result.layers[0]
        assert planted.relative_sensitivity == 1.0
        assert all(r.sensitivity < planted.sensitivity / 3 for r in result.layers[1:])


def test_output_scale_alone_is_not_style_sensitivity(baseline):
    """Scaling a layer's values up 10x (same for both prompts) must not make it 'style sensitive'."""
    from protect_core.tiny_models import build_tiny_host

    images, before = baseline
    host = build_tiny_host("tiny", seed=0)
    name = before.layers[-1].name
    layer = next(l for l in host.cross_attention_layers() if l.name == name)
    with torch.no_grad():
        layer.module.to_v.weight.mul_(10.0)
    base = {r.name: r for r in before.layers}
    scaled = {r.name: r for r in analyse_layers(host, images, fast()).layers}
    assert scaled[name].strength > 5 * base[name].strength
    assert 0.5 < scaled[name].sensitivity / base[name].sensitivity < 2.0


def test_deterministic_for_a_fixed_seed(baseline, integrity):
    from protect_core.tiny_models import build_tiny_host

    images, a = baseline
    host = build_tiny_host("tiny", seed=0)
    chk = integrity(host)
    again = analyse_layers(host, images, fast())
    other = analyse_layers(host, images, fast(seed=6, batch_size=2))
    chk.assert_unchanged()
    key = lambda res: [(r.name, r.score, r.sensitivity, r.correlation, r.per_timestep) for r in res.layers]
    assert key(a) == key(again)
    assert key(a) != key(other)
    assert len(a.layers) == 7 and sorted(r.rank for r in a.layers) == list(range(1, 8))
    assert [r.score for r in a.layers] == sorted((r.score for r in a.layers), reverse=True)
    assert all(r.correlation is None or -1 <= r.correlation <= 1 for r in a.layers)
    assert a.descriptor == "vae-gram" and a.n_images == 3 and a.timesteps == [200, 800]


def test_every_tiny_flavour(any_tiny_host, rng_images, integrity):
    chk = integrity(any_tiny_host)
    res = analyse_layers(any_tiny_host, rng_images(2, 32, 32), fast(timesteps=(500,)))
    chk.assert_unchanged()
    assert len(res.layers) == len(any_tiny_host.cross_attention_layers())
    assert all(r.sensitivity > 0 and len(r.per_timestep) == 1 for r in res.layers)
    assert all(r.correlation is None for r in res.layers) and "3 images" in res.notes[0]


def test_host_untouched_after_error_and_cancel(tiny_host, rng_images, integrity):
    images = rng_images(2, 32, 32)
    chk = integrity(tiny_host)

    def fail(done, total, info):
        raise RuntimeError("host callback failed")

    with pytest.raises(RuntimeError, match="callback failed"):
        analyse_layers(tiny_host, images, fast(), progress=Progress(on_step=fail))
    chk.assert_unchanged()
    token = CancelToken()
    calls = []

    def on_step(done, total, info):
        calls.append(done)
        token.cancel()

    with pytest.raises(Cancelled):
        analyse_layers(tiny_host, images, fast(), progress=Progress(on_step=on_step, cancel=token))
    assert calls == [1]
    chk.assert_unchanged()
    assert all(not l.module._forward_hooks for l in tiny_host.cross_attention_layers())


def test_recorder_removes_its_hooks_itself(tiny_host):
    """Outside any borrow (no safety net), the recorder's finally must remove the hooks."""
    layers = tiny_host.cross_attention_layers()
    with pytest.raises(KeyError):
        with record_attn2(layers):
            assert all(len(l.module._forward_hooks) == 1 for l in layers)
            raise KeyError("boom")
    assert all(not l.module._forward_hooks for l in layers)


def test_hooks_that_never_fire_give_a_clear_error(tiny_host, rng_images):
    """A host whose UNet does not run the modules it lists cannot be observed: say so, do not return zeros."""
    real = tiny_host.cross_attention_layers()
    fake = [copy.copy(l) for l in real]
    for l in fake:
        object.__setattr__(l, "module", copy.deepcopy(l.module))
    tiny_host.cross_attention_layers = lambda: fake
    with pytest.raises(ModelError, match="did not fire"):
        analyse_layers(tiny_host, rng_images(2, 32, 32), fast())


@pytest.mark.parametrize("bad,match", [
    (dict(timesteps=(1000,)), "timesteps must lie"), (dict(timesteps=()), "no timesteps"),
    (dict(content_prompt=SP), "identical"), (dict(size=30), "multiple of 8"), (dict(seeds=0), "seeds"),
    (dict(correlation_weight=2.0), "correlation_weight"),
])
def test_bad_settings_are_refused(tiny_host, rng_images, bad, match):
    with pytest.raises(ValueError, match=match):
        analyse_layers(tiny_host, rng_images(3, 32, 32), fast(**bad))


def test_bad_images_are_refused(tiny_host):
    with pytest.raises(ValueError, match="no images"):
        analyse_layers(tiny_host, [], fast())
    with pytest.raises(ValueError, match="NaN"):
        analyse_layers(tiny_host, torch.full((1, 3, 32, 32), float("nan")), fast())


def test_score_pieces():
    a = torch.randn(2, 16, 8)
    assert torch.allclose(relative_change(3 * a, 3 * (a + 0.1)), relative_change(a, a + 0.1), rtol=1e-5)
    assert average_ranks(torch.tensor([3.0, 1.0, 3.0, 2.0])).tolist() == [3.5, 1.0, 3.5, 2.0]
    x = torch.tensor([1.0, 2.0, 3.0, 4.0])
    assert spearman(x, x ** 3) == pytest.approx(1.0)
    assert spearman(x, -x) == pytest.approx(-1.0)
    assert spearman(x[:2], x[:2]) is None and spearman(x, torch.ones(4)) is None
    s = final_scores([2.0, 1.0, 1.0], [None, 1.0, -1.0], 0.5)
    assert s == pytest.approx([2 / 3, 0.5, 0.5 * 0.5 / 1.5])
    assert final_scores([2.0, 1.0], [0.3, -0.9], 0.0) == pytest.approx([1.0, 0.5])
    assert effective_weight(0.5, 2) == pytest.approx(0.5 / 11) and effective_weight(0.5, 10) == pytest.approx(
        0.5 * 45 / 55)


def test_selection_round_trip_and_consumers(baseline, tiny_host, tmp_path):
    res = baseline[1]
    sel = LayerSelection.from_analysis(res, 3)
    path = sel.save(tmp_path / "sub" / "selection.json")
    back = LayerSelection.load(path)
    assert back == sel and back.names == res.top(3) and back.names is not back.layers
    data = json.loads(path.read_text())
    assert data["format"] == "stylecloak-layer-selection" and data["version"] == 1
    assert data["ldm_layers"][0].startswith(("input_blocks.", "middle_block.", "output_blocks."))
    assert len(data["table"]) == 7 and {"score", "sensitivity", "correlation"} <= set(data["table"][0])
    from protect_core.cloak.base import CloakSettings
    from protect_core.cloak.cli import read_layers
    from protect_core.lora import attention_targets

    assert read_layers(path) == sel.names
    assert CloakSettings(method="glaze", layers=back.names).layers == sel.names
    assert len(attention_targets(tiny_host, back.resolve(tiny_host))) == 3 * 4
    with pytest.raises(ValueError, match="top-k"):
        LayerSelection.from_analysis(res, 8)


def test_selection_accepts_lists_and_ldm_names(tiny_host, tmp_path):
    p = tmp_path / "s.json"
    p.write_text(json.dumps(["diffusion_model.input_blocks.3.1.transformer_blocks.0.attn2",
                             "mid_block.attentions.0.transformer_blocks.0.attn2"]))
    assert LayerSelection.load(p).resolve(tiny_host) == [
        "down_blocks.1.attentions.0.transformer_blocks.0.attn2", "mid_block.attentions.0.transformer_blocks.0.attn2"]
    p.write_text(json.dumps({"layers": ["up_blocks.7.attentions.0.transformer_blocks.0.attn2"]}))
    with pytest.raises(StyleCloakError, match="does not exist in this model"):
        LayerSelection.load(p).resolve(tiny_host)
    for bad, match in (({"layers": []}, "non-empty"), ({"layers": ["x"], "version": 99}, "newer"), (3, "JSON")):
        p.write_text(json.dumps(bad))
        with pytest.raises(StyleCloakError, match=match):
            LayerSelection.load(p)
    p.write_text("{not json")
    with pytest.raises(StyleCloakError, match="cannot read"):
        LayerSelection.load(p)


class _NamesOnly:
    """Just enough of a host to list SD 1.5's real cross-attention layers (UNet built on the meta device)."""

    family = "sd15"

    def __init__(self, config):
        from diffusers import UNet2DConditionModel

        with torch.device("meta"):
            unet = UNet2DConditionModel(**config)
        self.names = [n for n, m in unet.named_modules() if n.endswith("attn2")]

    def cross_attention_layers(self):
        from types import SimpleNamespace

        return [SimpleNamespace(name=n) for n in self.names]


def test_presets_on_sd15_and_tiny(tiny_host):
    from pathlib import Path

    from protect_core.configs import __file__ as cfg_init

    cfg = json.loads((Path(cfg_init).parent / "sd15" / "unet" / "config.json").read_text())
    cfg = {k: v for k, v in cfg.items() if not k.startswith("_")}
    sd15 = _NamesOnly(cfg)
    assert len(sd15.names) == 16
    sel = LayerSelection.from_preset("styleprotect", sd15)
    assert sel.names[0] == "up_blocks.1.attentions.0.transformer_blocks.0.attn2" and len(sel.names) == 4
    assert sel.ldm_layers == [f"{b}.transformer_blocks.0.attn2" for b in
                              ("output_blocks.3.1", "output_blocks.5.1", "output_blocks.8.1", "input_blocks.8.1")]
    assert sel.resolve(sd15) == sel.names
    with pytest.raises(StyleCloakError, match="lacks"):
        LayerSelection.from_preset("styleprotect", tiny_host)
    assert len(LayerSelection.from_preset("up", tiny_host).names) == 4
    assert LayerSelection.from_preset("mid", tiny_host).ldm_layers == ["middle_block.1.transformer_blocks.0.attn2"]
    with pytest.raises(ValueError, match="unknown layer preset"):
        LayerSelection.from_preset("nope", tiny_host)


def test_heatmap_png(tmp_path):
    from PIL import Image

    from protect_core.layers.heatmap import (CELL_H, CELL_W, VIRIDIS, cell_box, geometry, save_heatmap)

    names = ["up_blocks.0.attentions.0.transformer_blocks.0.attn2",
             "down_blocks.0.attentions.0.transformer_blocks.0.attn2",
             "mid_block.attentions.0.transformer_blocks.0.attn2"]
    table = [{"name": n, "per_timestep": [0.1 * (i + 1), 0.0 if i == 1 else 0.2], "sensitivity": 0.15 + 0.1 * i,
              "correlation": None if i == 2 else 0.5, "score": 1.0 - 0.3 * i, "rank": i + 1}
             for i, n in enumerate(names)]
    table[0]["per_timestep"] = [0.9, 0.5]  # the largest value: top of the scale
    sel = LayerSelection(names[:1], table, "tiny", "analysis", [200, 800], "vae-gram")
    path = save_heatmap(sel, tmp_path / "layers.png")
    img = Image.open(path).convert("RGB")
    geo = geometry(table, [200, 800], names[:1], title=f"Style sensitivity per layer and timestep (tiny, "
                                                          f"descriptor vae-gram)")
    assert img.size == geo["size"]
    assert img.size[1] >= len(table) * CELL_H and img.size[0] >= 3 * CELL_W
    # rows in UNet order: down (row 0), mid (row 1), up (row 2); column 0 is t=200
    def centre(row, col):
        x0, y0, x1, y1 = cell_box(geo, row, col)
        return img.getpixel((x0 + 2, y0 + 2))
    assert centre(2, 0) == VIRIDIS[-1]          # 0.9, the maximum
    assert centre(0, 1) == VIRIDIS[0]           # 0.0
    with pytest.raises(ValueError, match="no analysis table"):
        save_heatmap(LayerSelection(names[:1]), tmp_path / "x.png")


@pytest.mark.slow
def test_cli_end_to_end(tmp_path, rng_images):
    from PIL import Image

    from protect_core.cli import main

    for i, im in enumerate(rng_images(3, 40, 48, seed=7)):
        Image.fromarray((im.permute(1, 2, 0) * 255).byte().numpy()).save(tmp_path / f"a{i}.png")
    out, plot = tmp_path / "selection.json", tmp_path / "layers.png"
    rc = main(["layers", str(tmp_path), "--model", "tiny", "--top-k", "2", "-o", str(out), "--plot", str(plot),
               "--style-prompt", SP, "--content-prompt", CP, "--timesteps", "200,800", "--seeds", "1",
               "--size", "32", "--quiet"])
    assert rc == 0
    sel = LayerSelection.load(out)
    assert len(sel.names) == 2 and sel.settings["top_k"] == 2 and len(sel.settings["images"]) == 3
    assert Image.open(plot).size[1] > 7 * 22
    assert sel.settings["score"] == "causal" and all(r["causal"] is not None for r in sel.table)
    again = ["layers", str(tmp_path), "--model", "tiny", "--top-k", "2", "-o", str(out), "--score", "activation",
             "--style-prompt", SP, "--content-prompt", CP, "--timesteps", "500", "--seeds", "1", "--size", "32",
             "--quiet"]
    before = out.read_bytes()
    assert main(again) == 0 and out.read_bytes() == before  # an existing selection is kept (resume semantics)
    assert main(again + ["--overwrite"]) == 0 and LayerSelection.load(out).settings["score"] == "activation"
    assert all(r["causal"] is None for r in LayerSelection.load(out).table)
    assert main(["layers", str(tmp_path), "--model", "tiny", "-o", str(out), "--timesteps", "a,b"]) == 2
    assert main(["layers", "--model", "tiny", "--preset", "all", "-o", str(out), "--overwrite"]) == 0
    assert len(LayerSelection.load(out).names) == 7


def test_vae_gram_descriptor(tiny_host, rng_images, integrity):
    from protect_core.layers.descriptor import VaeGramDescriptor

    a = rng_images(1, 32, 32, seed=1)
    stripes = torch.zeros(1, 3, 32, 32)
    stripes[..., ::4, :] = 1.0
    x = torch.cat([a, (a + 0.01 * torch.randn_like(a)).clamp(0, 1), stripes, a])
    chk = integrity(tiny_host)
    d = VaeGramDescriptor(tiny_host).distances(x)
    chk.assert_unchanged()
    assert d.shape == (4, 4) and torch.allclose(d, d.T) and torch.all(d.diagonal() == 0)
    assert d[0, 3] == 0 and d[0, 1] < d[0, 2]


def test_clip_descriptor_from_a_local_folder(tmp_path):
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    from protect_core.layers.descriptor import ClipDescriptor, as_descriptor

    torch.manual_seed(0)
    cfg = CLIPVisionConfig(image_size=32, patch_size=8, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                           num_attention_heads=4, projection_dim=16)
    CLIPVisionModelWithProjection(cfg).save_pretrained(tmp_path / "clip")
    x = torch.rand(3, 3, 48, 48, generator=torch.Generator().manual_seed(0))
    x[2] = x[0]
    desc = ClipDescriptor(str(tmp_path / "clip"))
    d = desc.distances(x)
    assert d.shape == (3, 3) and torch.allclose(d, d.T) and d[0, 2] < 1e-6 < d[0, 1]
    assert as_descriptor(desc) is desc
    with pytest.raises(ModelError, match="no CLIP vision model"):
        ClipDescriptor(str(tmp_path))

    class Embedder:  # the mimicry block's embedders: fit() then embed()
        name, fitted = "emb", False

        def fit(self, images):
            self.fitted = True

        def embed(self, images):
            return images.flatten(1)

    e = Embedder()
    wrapped = as_descriptor(e)
    assert wrapped.distances(x).shape == (3, 3) and e.fitted and wrapped.name == "emb"
    with pytest.raises(TypeError, match="not a style descriptor"):
        as_descriptor(object())
