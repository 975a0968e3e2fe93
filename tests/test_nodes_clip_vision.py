"""The Mimicry Test judged by a CLIP vision model the user already has: ComfyUI's CLIP_VISION input and A1111's
local folder field.

ComfyUI side (fake ComfyUI modules, tests/fake_comfy.py): the node's schema offers the optional ``clip_vision``
input; a stand-in CLIP_VISION whose ``encode_image`` returns an object with ``image_embeds`` is what scores the
test when connected (its embedding is the same direction for every image, so every style similarity must come out
1 -- no other judge gives that), the report and the node's table say ``clip_vision``; unconnected, the descriptor
runs as before. A1111 side: a tiny random-weight ``CLIPVisionModelWithProjection`` saved in a temporary folder
judges the job; a bad folder is one error line, before any model work, and nothing is written.
"""
from __future__ import annotations

import inspect
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from comfy_pack import ROOT, _smooth, pack  # noqa: F401 (fixture)
from ldm_tiny import a1111_model, one_thread  # noqa: F401 (autouse fixture)
from protect_core.errors import ModelError

CLEAN, SAMPLES, REFS = 2, 2, 2  # the smallest test the node accepts


class _Embeds:
    """What ComfyUI's ClipVisionModel.encode_image returns: an object with attributes (and item access)."""

    def __init__(self, **kw):
        self.__dict__.update(kw)

    def __getitem__(self, key):
        return getattr(self, key)


class FakeClipVision:
    """CLIP_VISION stand-in: records each ``encode_image`` call; every image maps to one direction (its length
    varies with the image, so the embedder's L2 normalisation is needed for the similarities to be 1)."""

    def __init__(self, dim: int = 6, embeds: bool = True):
        self.direction = torch.linspace(1.0, 2.0, dim)
        self.calls, self.embeds = [], embeds

    def encode_image(self, image, crop=True):
        self.calls.append({"shape": tuple(image.shape), "min": float(image.min()), "max": float(image.max()),
                           "inference": torch.is_inference_mode_enabled()})
        scale = 1.0 + image.mean(dim=(1, 2, 3)).unsqueeze(1)
        out = {"last_hidden_state": torch.zeros(image.shape[0], 4, 8)}
        if self.embeds:
            out["image_embeds"] = scale * self.direction
        return _Embeds(**out)


@pytest.fixture(scope="module")
def graph():
    from test_nodes_unit import comfy_objects

    model, clip, vae, _ = comfy_objects("tiny")
    return model, clip, vae


def _run_node(pack, graph, **optional):
    model, clip, vae = graph
    clean = _smooth(CLEAN, 64, seed=3).contiguous()
    with torch.inference_mode():  # ComfyUI runs nodes under inference mode
        out = pack.by_id["StyleCloak_MimicryTest"].execute(clean, clean.flip(1).contiguous(), "cloaked", model, clip,
                                                           vae, "lora", 2, 4, 0.0, SAMPLES, 64, 0, sample_steps=2,
                                                           reference_samples=REFS, **optional)
    return out, json.loads(out.args[1])


@pytest.fixture(scope="module")
def clip_run(pack, graph):
    fake = FakeClipVision()
    out, data = _run_node(pack, graph, clip_vision=fake)
    return fake, out, data


@pytest.fixture(scope="module")
def descriptor_run(pack, graph):
    return _run_node(pack, graph)


# ------------------------------------------------------------------------------------------------ ComfyUI node
def test_schema_offers_an_optional_clip_vision_input(pack):
    node = pack.by_id["StyleCloak_MimicryTest"]
    schema = node.define_schema()
    (inp,) = [i for i in schema.inputs if i.id == "clip_vision"]
    assert inp.io_type == "CLIP_VISION" and inp.optional, "ComfyUI's Load CLIP Vision output, optional"
    assert "descriptor" in inp.tooltip
    assert inspect.signature(node.execute).parameters["clip_vision"].default is None


def test_connected_clip_vision_judges_the_test(clip_run):
    fake, out, data = clip_run
    judge = data["style_embedding"]
    assert data["embedder"] == judge["judge"] == "clip_vision"
    assert "CLIP_VISION" in judge["source"] and judge["dimensions"] == fake.direction.numel()
    rows = {**data["conditions"], "ceiling": data["ceiling_clean_vae_roundtrip"]}
    for name, row in rows.items():  # one direction for every image: only this judge can give a similarity of 1
        assert row["style_similarity"]["mean"] == pytest.approx(1.0, abs=1e-5), name
        assert row["style_similarity"]["std"] == pytest.approx(0.0, abs=1e-5), name
    embedded = sum(n for k, n in data["references"].items() if isinstance(n, int)) + sum(
        r["style_similarity"]["n"] for r in rows.values())
    assert sum(c["shape"][0] for c in fake.calls) == embedded, "every scored image went through encode_image"
    for call in fake.calls:  # ComfyUI's IMAGE layout and range, in inference mode as ComfyUI's own nodes call it
        assert len(call["shape"]) == 4 and call["shape"][-1] == 3 and call["shape"][1] == call["shape"][2]
        assert 0.0 <= call["min"] <= call["max"] <= 1.0 and call["inference"]
    assert out.ui["stylecloak_mimicry"][0]["style_embedding"] == judge
    json.dumps(out.ui["stylecloak_mimicry"][0], allow_nan=False)


def test_unconnected_the_descriptor_runs_as_before(descriptor_run, clip_run):
    out, data = descriptor_run
    assert data["embedder"] == data["style_embedding"]["judge"] == "descriptor"
    assert set(data["conditions"]) >= {"base", "clean", "cloaked"} and data["verdict"]
    sims = [r["style_similarity"]["mean"] for r in data["conditions"].values()]
    assert any(abs(s - 1.0) > 1e-3 for s in sims), "the descriptor tells images apart"
    assert data["style_embedding"]["dimensions"] != clip_run[2]["style_embedding"]["dimensions"]


def test_the_node_table_names_the_judge(clip_run, descriptor_run, tmp_path):
    from test_nodes_unit import run_web_harness

    clip_ui, descriptor_ui = clip_run[1].ui, descriptor_run[0].ui
    payloads = [["StyleCloak_MimicryTest", [clip_ui, descriptor_ui]]]
    calls = [["judgeLine", [descriptor_ui["stylecloak_mimicry"][0]]], ["judgeLine", [{"embedder": "custom"}]],
             ["judgeLine", [{}]], ["judgeLine", [None]]]
    out = run_web_harness(tmp_path, payloads, calls)
    clip_state, descriptor_state = out["runs"][0]["states"]
    source = clip_run[2]["style_embedding"]["source"]
    assert f"style embedding: clip_vision ({source})" in clip_state["text"]
    assert any(t.startswith("style embedding: descriptor") for t in descriptor_state["text"])
    assert out["calls"][0].startswith("style embedding: descriptor")
    assert out["calls"][1:] == ["style embedding: custom", "", ""], "an old report or junk: a name or no line"


def test_adapter_refuses_what_is_not_a_clip_vision(pack):
    from nodes.clip_vision import ComfyClipVisionEmbedder

    with pytest.raises(ModelError, match="Load CLIP Vision"):
        ComfyClipVisionEmbedder(object())
    embedder = ComfyClipVisionEmbedder(FakeClipVision(embeds=False))
    with pytest.raises(ModelError, match="image_embeds"):
        embedder.embed(torch.rand(2, 3, 16, 16))
    batched = ComfyClipVisionEmbedder(FakeClipVision(), batch=3)
    emb = batched.embed(torch.rand(7, 3, 16, 16))
    assert emb.shape == (7, 6) and torch.allclose(emb.norm(dim=1), torch.ones(7))
    assert [c["shape"][0] for c in batched.clip_vision.calls] == [3, 3, 1] and not emb.is_inference()


def test_protect_core_never_imports_comfyui():
    for path in (ROOT / "protect_core").rglob("*.py"):
        text = path.read_text(encoding="utf-8")
        assert "import comfy" not in text and "from comfy" not in text and "folder_paths" not in text, path


# ------------------------------------------------------------------------------------------------ A1111 tab
@pytest.fixture(scope="module")
def clip_folder(tmp_path_factory):
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(0)
    cfg = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                           image_size=32, patch_size=8, projection_dim=12)
    folder = tmp_path_factory.mktemp("clip") / "tiny-clip-vision"
    CLIPVisionModelWithProjection(cfg).save_pretrained(folder)
    return folder


@pytest.fixture
def art(tmp_path):
    folder = tmp_path / "art"
    folder.mkdir()
    g = np.random.default_rng(3)
    for name in ("x.png", "y.png"):
        Image.fromarray(g.integers(0, 255, (48, 48, 3), dtype=np.uint8)).save(folder / name)
    return folder


_hosts = {}


def _a1111_host():
    from sdwebui.a1111_host import A1111Host

    if "h" not in _hosts:
        _hosts["h"] = A1111Host(a1111_model("tiny")[0])
    return _hosts["h"]


def test_a1111_job_judges_with_a_local_clip_vision_folder(clip_folder, art, tmp_path, integrity):
    from transformers import CLIPVisionConfig

    from sdwebui import jobs

    check = integrity(_a1111_host())
    inputs = jobs.gather_inputs([], str(art))
    res = jobs.mimicry_job(_a1111_host, inputs, {"cloaked": inputs}, out_root=tmp_path / "out", steps=2, samples=2,
                           resolution=64, sample_steps=2, reference_samples=2, batch_size=1,
                           clip_vision=f"  {clip_folder}  ")
    check.assert_unchanged()
    judge = res.report["style_embedding"]
    assert res.report["embedder"] == judge["judge"] == "clip_vision" and judge["source"] == str(clip_folder)
    assert judge["dimensions"] == CLIPVisionConfig.from_pretrained(clip_folder).projection_dim
    assert "[style embedding: clip_vision]" in res.summary
    saved = json.loads((res.folder / "report.json").read_text())
    assert saved["style_embedding"] == judge


def test_a1111_empty_field_keeps_the_descriptor(monkeypatch, art, tmp_path):
    from sdwebui import jobs

    seen = []

    class Recorded(Exception):
        pass

    def record(*args, **kwargs):
        seen.append(kwargs.get("embedder", "<not given>"))
        raise Recorded

    monkeypatch.setattr("protect_core.mimicry.runner.run_mimicry_test", record)
    inputs = jobs.gather_inputs([], str(art))
    for field in ("", "   ", None):
        with pytest.raises(Recorded):
            jobs.mimicry_job(lambda: None, inputs, {"cloaked": inputs}, out_root=tmp_path, clip_vision=field)
    assert seen == [None, None, None], "no folder: the runner's own default, the offline descriptor"


def test_a_whole_clip_model_folder_judges_too(tmp_path):
    """A CLIPModel folder (what most people have, e.g. clip-vit-large-patch14): its vision half is used."""
    from transformers import CLIPConfig, CLIPModel

    from sdwebui.jobs import style_embedder

    cfg = CLIPConfig(text_config={"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
                                  "num_attention_heads": 2, "vocab_size": 50, "max_position_embeddings": 16},
                     vision_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
                                    "num_attention_heads": 4, "image_size": 32, "patch_size": 8},
                     projection_dim=10)
    CLIPModel(cfg).save_pretrained(tmp_path / "clip")
    embedder = style_embedder(str(tmp_path / "clip"))
    emb = embedder.embed(torch.rand(3, 3, 40, 40, generator=torch.Generator().manual_seed(0)))
    assert embedder.name == "clip_vision" and emb.shape == (3, cfg.projection_dim)
    assert torch.allclose(emb.norm(dim=1), torch.ones(3)) and not torch.allclose(emb[0], emb[1])


def _bad_folders(root: Path, clip_folder: Path) -> dict:
    from transformers import CLIPTextConfig, CLIPTextModel

    empty = root / "empty"
    empty.mkdir(parents=True)
    no_weights = root / "no-weights"
    no_weights.mkdir()
    (no_weights / "config.json").write_text((clip_folder / "config.json").read_text())
    text = root / "text-model"
    CLIPTextModel(CLIPTextConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                                 vocab_size=50, max_position_embeddings=16)).save_pretrained(text)
    wrong = root / "wrong-weights"  # a CLIP vision config.json over another model's weights
    wrong.mkdir()
    (wrong / "config.json").write_text((clip_folder / "config.json").read_text())
    for f in text.glob("*.safetensors"):
        (wrong / f.name).write_bytes(f.read_bytes())
    return {"missing": (root / "missing", "no such folder"), "empty": (empty, "no config.json"),
            "no-weights": (no_weights, "no file named"), "not-vision": (text, "model_type clip_text_model"),
            "wrong-weights": (wrong, "weights")}


def test_a1111_bad_folder_is_one_clear_error_line(monkeypatch, clip_folder, art, tmp_path):
    from sdwebui import ui
    from sdwebui.bridge import gpu_call
    from test_sdwebui_ui import fake_webui

    out = tmp_path / "out"
    fake_webui(monkeypatch, a1111_model("tiny")[0], out)
    click = gpu_call(ui.mimicry_click, 4)
    for kind, (folder, reason) in _bad_folders(tmp_path / "bad", clip_folder).items():
        *_, status = click("task(m)", [], str(art), [], str(art), "cloaked", [], "", "", "lora", 2, 4, 2, 64, 0, "",
                           str(folder))
        message = status.split("<div class='performance'>")[0]
        assert "mimicry test: CLIP vision folder" in message and str(folder) in message, kind
        assert reason in message, f"{kind}: the line says what is wrong"
        assert "\n" not in message and message.count("<p") == 1 and "#c62828" in message, f"{kind}: one line"
    assert not out.exists() or not any(out.iterdir()), "nothing written"
