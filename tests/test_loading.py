"""Offline model loading: diffusers folders, ldm single files (converter and loader agree), pickle policy, clear
errors, family detection, tokenizer lookup, and the full-size configs checked on the meta device (no memory)."""
from __future__ import annotations

import functools
import logging
import shutil

import pytest
import torch
from safetensors.torch import save_file

from protect_core import ldm_convert
from protect_core.backends import loading
from protect_core.backends.loading import load_host
from protect_core.errors import ModelError
from protect_core.tiny_models import TOKENIZER_DIR, build_tiny_host, build_tiny_pipeline


def _outputs(host):
    """Latents, eps, decoded images and text context for fixed inputs."""
    with host.borrowed():
        g = torch.Generator().manual_seed(0)
        x = torch.rand(2, 3, 64, 64, generator=g) * 2 - 1
        z = host.encode(x)
        cond = host.encode_text(["a painting in sks style", "a photo of a cat"])
        return {"latents": z, "eps": host.predict_noise(z, torch.tensor([10, 700]), cond),
                "decoded": host.decode(z), "context": cond.context}


@functools.lru_cache(maxsize=None)
def _reference(flavour):
    return _outputs(build_tiny_host(flavour, seed=0))


def _assert_same(a, b, atol=1e-6):
    for k in a:
        assert torch.allclose(a[k], b[k], atol=atol, rtol=0), f"{k} differs by {(a[k] - b[k]).abs().max()}"


def test_diffusers_folder_roundtrip(tmp_path):
    pipe = build_tiny_pipeline("tiny", seed=0)
    pipe.save_pretrained(tmp_path / "tiny", safe_serialization=True)
    host = load_host(str(tmp_path / "tiny"))
    _assert_same(_outputs(host), _reference("tiny"))


@pytest.mark.parametrize("flavour,layout", [("tiny", "sd1"), ("tiny-v", "sd1"), ("tiny-v", "sd2"),
                                            ("tiny-xl", "sdxl")])
def test_single_file_roundtrip(tmp_path, flavour, layout):
    path = ldm_convert.save_single_file(build_tiny_pipeline(flavour, seed=0), tmp_path / "m.safetensors",
                                        layout=layout, family=flavour)
    host = load_host(str(path))
    assert host.family == flavour
    assert host.prediction_type == ("v_prediction" if flavour == "tiny-v" else "epsilon")
    assert host.is_xl == (flavour == "tiny-xl")
    _assert_same(_outputs(host), _reference(flavour))


def test_ldm_layout_agrees_with_diffusers_converters():
    """Our ldm names, read back by diffusers' own single-file converters, give the original weights."""
    conv = pytest.importorskip("diffusers.loaders.single_file_utils")
    for flavour in ("tiny", "tiny-xl"):
        pipe = build_tiny_pipeline(flavour, seed=0)
        ldm = ldm_convert.diffusers_to_ldm(pipe)
        got = {"unet": conv.convert_ldm_unet_checkpoint(ldm, pipe.unet.config),
               "vae": conv.convert_ldm_vae_checkpoint(ldm, pipe.vae.config),
               "text_encoder": conv.convert_ldm_clip_checkpoint(ldm)}
        if flavour == "tiny-xl":
            got["text_encoder_2"] = conv.convert_open_clip_checkpoint(
                pipe.text_encoder_2, ldm, prefix="conditioner.embedders.1.model.")
        for comp, sd in got.items():
            ref = getattr(pipe, comp).state_dict()
            sd = {k if k in ref else k.removeprefix("text_model."): v for k, v in sd.items()}
            assert set(sd) == set(ref), (flavour, comp, sorted(set(sd) ^ set(ref))[:4])
            for k, v in ref.items():
                assert torch.equal(sd[k].reshape(v.shape), v), (flavour, comp, k)


# expected: real parameter counts of the published architectures, and names/shapes of real ldm checkpoints
FULL = {
    "sd15": ("sd1", "v1", 859_520_964, {
        "model.diffusion_model.input_blocks.1.1.proj_in.weight": (320, 320, 1, 1),
        "model.diffusion_model.output_blocks.11.0.skip_connection.weight": (320, 640, 1, 1),
        "model.diffusion_model.middle_block.1.transformer_blocks.0.attn2.to_k.weight": (1280, 768),
        "first_stage_model.encoder.mid.attn_1.q.weight": (512, 512, 1, 1),
        "first_stage_model.decoder.up.0.block.0.conv1.weight": (128, 256, 3, 3),
        "cond_stage_model.transformer.text_model.encoder.layers.11.mlp.fc2.weight": (768, 3072)}),
    "sd2-v": ("sd2", "v2", 865_910_724, {
        "model.diffusion_model.input_blocks.1.1.proj_in.weight": (320, 320),
        "model.diffusion_model.input_blocks.2.1.transformer_blocks.0.attn2.to_k.weight": (320, 1024),
        "cond_stage_model.model.positional_embedding": (77, 1024),
        "cond_stage_model.model.transformer.resblocks.23.attn.in_proj_weight": (3072, 1024)}),
    "sdxl": ("sdxl", "xl_base", 2_567_463_684, {
        "model.diffusion_model.label_emb.0.0.weight": (1280, 2816),
        "model.diffusion_model.input_blocks.8.1.transformer_blocks.9.attn2.to_k.weight": (1280, 2048),
        "conditioner.embedders.0.transformer.text_model.encoder.layers.11.mlp.fc1.weight": (3072, 768),
        "conditioner.embedders.1.model.transformer.resblocks.31.attn.in_proj_weight": (3840, 1280),
        "conditioner.embedders.1.model.text_projection": (1280, 1280)}),
}


@pytest.mark.parametrize("kind", list(FULL))
def test_full_size_configs_on_meta(kind):
    """Shipped configs build the real architectures (parameter counts) and convert to the real ldm layout, all on
    the meta device: nothing is allocated."""
    from protect_core.configs import read_bundle
    from protect_core.random_models import build_random_pipeline

    layout, diffusers_type, n_unet, known = FULL[kind]
    pipe = build_random_pipeline(kind, device="meta")
    assert all(p.is_meta for p in pipe.unet.parameters())
    assert sum(p.numel() for p in pipe.unet.parameters()) == n_unet
    ldm = ldm_convert.diffusers_to_ldm(pipe)
    for key, shape in known.items():
        assert tuple(ldm[key].shape) == shape, key
    assert ldm_convert.detect_layout(ldm) == layout
    conv = pytest.importorskip("diffusers.loaders.single_file_utils")
    assert conv.infer_diffusers_model_type(ldm) == diffusers_type
    back = ldm_convert.ldm_to_modules(ldm.__getitem__, read_bundle(kind), layout)
    assert {k: v.shape for k, v in back["unet"].state_dict().items()} == \
           {k: v.shape for k, v in pipe.unet.state_dict().items()}
    for name, _ in pipe.unet.named_modules():
        if name.endswith("attn2"):
            ldm_name = ldm_convert.canonical_to_ldm_attn(name, pipe.unet.config)
            assert ldm_convert.UNET + ldm_name + ".to_k.weight" in ldm
            assert ldm_convert.ldm_to_canonical_attn(ldm_name, pipe.unet.config) == name


def test_attention_names_sd15_and_tiny():
    from protect_core.configs import read_bundle

    cfg = read_bundle("sd15")["unet"]
    pairs = {"down_blocks.1.attentions.0.transformer_blocks.0.attn2": "input_blocks.4.1.transformer_blocks.0.attn2",
             "mid_block.attentions.0.transformer_blocks.0.attn2": "middle_block.1.transformer_blocks.0.attn2",
             "up_blocks.3.attentions.2.transformer_blocks.0.attn2": "output_blocks.11.1.transformer_blocks.0.attn2"}
    for canonical, ldm in pairs.items():
        assert ldm_convert.canonical_to_ldm_attn(canonical, cfg) == ldm
        assert ldm_convert.ldm_to_canonical_attn("diffusion_model." + ldm, cfg) == canonical
    tiny = build_tiny_host("tiny")
    ldm = ldm_convert.diffusers_to_ldm(build_tiny_pipeline("tiny"))
    for layer in tiny.cross_attention_layers():
        name = ldm_convert.canonical_to_ldm_attn(layer.name, tiny.unet.config)
        assert ldm_convert.UNET + name + ".to_q.weight" in ldm


def test_family_detection_from_keys():
    for flavour, layout in (("tiny", "sd1"), ("tiny-xl", "sdxl")):
        assert ldm_convert.detect_layout(ldm_convert.diffusers_to_ldm(build_tiny_pipeline(flavour))) == layout
    assert ldm_convert.detect_layout(ldm_convert.diffusers_to_ldm(build_tiny_pipeline("tiny-v"), "sd2")) == "sd2"
    with pytest.raises(ValueError, match="LoRA"):
        ldm_convert.detect_layout({"lora_unet_down_blocks_0.lora_down.weight"})
    with pytest.raises(ValueError, match="refiner"):
        ldm_convert.detect_layout({"model.diffusion_model.input_blocks.0.0.weight", "first_stage_model.x",
                                   "conditioner.embedders.0.model.positional_embedding"})


def test_non_checkpoint_safetensors_is_refused(tmp_path):
    path = tmp_path / "not_a_model.safetensors"
    save_file({"weight": torch.zeros(3)}, str(path))
    with pytest.raises(ModelError, match=r"not_a_model\.safetensors.*model\.diffusion_model\."):
        load_host(str(path))
    (tmp_path / "garbage.safetensors").write_bytes(b"not safetensors at all")
    with pytest.raises(ModelError, match="garbage.safetensors"):
        load_host(str(tmp_path / "garbage.safetensors"))


def test_incomplete_or_mismatched_checkpoint(tmp_path):
    pipe = build_tiny_pipeline("tiny")
    ldm = ldm_convert.diffusers_to_ldm(pipe)
    missing = "model.diffusion_model.out.2.weight"
    save_file({k: v for k, v in ldm.items() if k != missing}, str(tmp_path / "cut.safetensors"),
              metadata={"stylecloak.configs": json_bundle(pipe)})
    with pytest.raises(ModelError, match=r"cut\.safetensors.*out\.2\.weight.*missing"):
        load_host(str(tmp_path / "cut.safetensors"))
    # without configs in the metadata the shipped SD 1.5 config applies, and the tiny shapes do not fit it
    ldm_convert.save_single_file(pipe, tmp_path / "plain.safetensors", embed_configs=False)
    with pytest.raises(ModelError, match=r"plain\.safetensors.*sd15 architecture"):
        load_host(str(tmp_path / "plain.safetensors"))
    with pytest.raises(ModelError, match="configs describe"):
        load_host(str(tmp_path / "plain.safetensors"), config="sdxl")


def json_bundle(pipe):
    import json

    from protect_core.configs import bundle_from_pipeline

    return json.dumps(bundle_from_pipeline(pipe, "tiny"))


def test_pickle_refused_then_weights_only(tmp_path):
    pipe = build_tiny_pipeline("tiny", seed=0)
    pipe.save_pretrained(tmp_path / "cfg", safe_serialization=True)
    torch.save({"state_dict": ldm_convert.diffusers_to_ldm(pipe)}, tmp_path / "model.ckpt")
    with pytest.raises(ModelError, match=r"model\.ckpt.*allow_pickle"):
        load_host(str(tmp_path / "model.ckpt"))
    host = load_host(str(tmp_path / "model.ckpt"), allow_pickle=True, config=str(tmp_path / "cfg"))
    _assert_same(_outputs(host), _reference("tiny"))
    torch.save({"weights": torch.zeros(2), "fn": print}, tmp_path / "code.pt")  # a pickle holding a function
    with pytest.raises(ModelError, match=r"code\.pt.*weights_only"):
        load_host(str(tmp_path / "code.pt"), allow_pickle=True)


def test_bad_specs_say_what_is_accepted(tmp_path):
    with pytest.raises(ModelError, match=r"tiny.*sd15-random.*safetensors"):
        load_host("no-such-model")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError, match="no model_index.json"):
        load_host(str(tmp_path / "empty"))
    (tmp_path / "m.onnx").write_bytes(b"x")
    with pytest.raises(ModelError, match="unsupported model file type"):
        load_host(str(tmp_path / "m.onnx"))
    with pytest.raises(ValueError, match="prediction_type"):
        load_host("tiny", prediction_type="sample")


def test_prediction_type_rules(tmp_path, caplog):
    guess = loading.guess_prediction_type
    assert guess("sd1", set(), "v1-5-pruned.safetensors")[0] == "epsilon"
    assert guess("sd1", {"v_pred"}, "x.safetensors")[0] == "v_prediction"
    assert guess("sd2", set(), "v2-1_768-ema-pruned.safetensors")[0] == "v_prediction"
    assert guess("sd2", set(), "v2-1_512-ema-pruned.safetensors")[0] == "epsilon"
    with caplog.at_level(logging.WARNING, logger="stylecloak.loading"):
        assert guess("sd2", set(), "my_model.safetensors")[0] == "v_prediction"
    assert "prediction_type='epsilon'" in caplog.text
    path = ldm_convert.save_single_file(build_tiny_pipeline("tiny-v"), tmp_path / "v.safetensors", family="tiny-v")
    assert load_host(str(path)).prediction_type == "v_prediction"
    assert load_host(str(path), prediction_type="epsilon").prediction_type == "epsilon"


def test_tokenizer_lookup_and_fallback_warning(tmp_path, monkeypatch, caplog):
    from protect_core.configs import read_bundle

    for var in ("STYLECLOAK_TOKENIZER", "COMFYUI_PATH", "COMFYUI_DIR"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delitem(__import__("sys").modules, "comfy", raising=False)
    bundle = read_bundle("sd2")
    with caplog.at_level(logging.WARNING, logger="stylecloak.loading"):
        tok = loading.tokenizer_for(bundle, "tokenizer", None, "real.safetensors")
    assert "prompts will not mean what they should" in caplog.text and tok.pad_token == "!"
    comfy = tmp_path / "ComfyUI" / "comfy" / "sd1_tokenizer"
    shutil.copytree(TOKENIZER_DIR, comfy)
    monkeypatch.setenv("COMFYUI_PATH", str(tmp_path / "ComfyUI"))
    assert loading.find_tokenizer_dir() == comfy
    monkeypatch.setenv("STYLECLOAK_TOKENIZER", str(TOKENIZER_DIR))
    assert loading.find_tokenizer_dir() == TOKENIZER_DIR
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="stylecloak.loading"):
        loading.tokenizer_for(bundle, "tokenizer", None, "real.safetensors")
    assert not caplog.text
    with pytest.raises(ModelError, match="vocab.json"):
        loading.tokenizer_for(bundle, "tokenizer", tmp_path, "real.safetensors")


def test_random_spec_and_quiet_loading(capfd):
    from diffusers.utils import logging as dlog

    level = dlog.get_verbosity()
    host = load_host("sd15-random", device="meta")
    assert host.family == "sd15-random" and host.describe()["unet_parameters"] == 859_520_964
    load_host("tiny", dtype="fp16")
    assert "should be kept in float32" not in capfd.readouterr().err
    assert dlog.get_verbosity() == level


def test_make_random_checkpoint_tool_tiny(tmp_path, capsys):
    import importlib.util
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "tools" / "make_random_checkpoint.py"
    spec = importlib.util.spec_from_file_location("make_random_checkpoint", script)
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    out = tmp_path / "tiny.safetensors"
    assert tool.main([str(out), "--tiny", "--dtype", "fp32", "--seed", "0"]) == 0
    assert "wrote" in capsys.readouterr().out
    _assert_same(_outputs(load_host(str(out))), _reference("tiny"))
    with pytest.raises(SystemExit):
        tool.main([str(tmp_path / "x.ckpt"), "--tiny"])
