"""The HostModel contract on the A1111 and Forge adapters, over tiny ldm-shaped stand-ins of their model objects.

Besides the shared contract (tests/contract.py), the adapters are checked against the diffusers adapter on the very
same weights: the same latents, conditioning, UNet outputs and gradients, and canonical layer names that point at the
same tensors -- which pins down the ldm <-> diffusers naming, the schedule, the latent scale and SDXL's y vector.
"""
from __future__ import annotations

import pytest
import torch

from contract import CHECKS, ENDINGS, check_restored_after
from ldm_tiny import a1111_model, forge_model  # noqa: F401 (fixtures)
from protect_core.backends.diffusers_host import DiffusersHost
from protect_core.errors import ModelError
from sdwebui.a1111_host import A1111Host
from sdwebui.forge_host import ForgeHost

KINDS = ["a1111-tiny", "a1111-tiny-v", "a1111-tiny-xl", "forge-tiny", "forge-tiny-xl", "forge-old-tiny-v",
         "forge-old-tiny-xl"]
_cache: dict = {}


def make(kind: str):
    """(adapter host, diffusers reference host on the same modules, sdxl size used)."""
    if kind not in _cache:
        host_kind, _, flavour = kind.partition("-tiny")
        flavour = "tiny" + flavour
        if host_kind == "a1111":
            model, pipe = a1111_model(flavour)
            host = A1111Host(model, sdxl_size=64)
        else:
            model, pipe = forge_model(flavour, style="old" if host_kind == "forge-old" else "new", inplace=True)
            loads = []
            fo = model.forge_objects
            text_fn = model.get_learned_conditioning if host_kind == "forge" else None
            host = ForgeHost(fo.unet, fo.clip, fo.vae, text_fn=text_fn, load=loads.append, sdxl_size=64)
            host.loads = loads
        _cache[kind] = (host, DiffusersHost.from_pipeline(pipe))
    return _cache[kind]


@pytest.fixture(params=KINDS)
def host(request):
    return make(request.param)[0]


@pytest.mark.parametrize("check", CHECKS, ids=lambda c: c.__name__)
def test_contract(host, check):
    check(host)


@pytest.mark.parametrize("ending", ENDINGS)
def test_host_restored(host, ending):
    check_restored_after(host, ending)



@pytest.mark.parametrize("kind", KINDS)
def test_same_numbers_as_diffusers(kind):
    """Same weights, same function: the ldm adapter reproduces the diffusers adapter end to end."""
    host, ref = make(kind)
    assert host.prediction_type == ref.prediction_type
    assert host.latent_scale == pytest.approx(ref.latent_scale)
    assert torch.allclose(host.alphas_cumprod, ref.alphas_cumprod, atol=1e-6)
    assert host.vae_scale_factor == ref.vae_scale_factor
    g = torch.Generator().manual_seed(1)
    x = torch.rand(2, 3, 64, 64, generator=g) * 2 - 1
    with host.borrowed(), ref.borrowed():
        z, z_ref = host.encode(x), ref.encode(x)
        assert torch.allclose(z, z_ref, atol=1e-5)
        assert torch.allclose(host.decode(z), ref.decode(z_ref), atol=1e-5)
        cond, cond_ref = host.encode_text(["a painting", "a photo"]), ref.encode_text(["a painting", "a photo"])
        assert torch.allclose(cond.context, cond_ref.context, atol=1e-6)
        t = torch.tensor([20, 700])
        out, out_ref = host.model_output(z, t, cond), ref.model_output(z_ref, t, cond_ref)
        assert torch.allclose(out, out_ref, atol=1e-4), (out - out_ref).abs().max()


@pytest.mark.parametrize("kind", ["a1111-tiny", "a1111-tiny-xl", "forge-old-tiny-v"])
def test_canonical_names_point_at_the_same_weights(kind):
    host, ref = make(kind)
    mine = {l.name: l for l in host.cross_attention_layers()}
    theirs = {l.name: l for l in ref.cross_attention_layers()}
    assert set(mine) == set(theirs)
    hp, rp = host.unet_parameters(), ref.unet_parameters()
    for name, layer in mine.items():
        assert layer.host_name.startswith(("input_blocks.", "middle_block.", "output_blocks."))
        for key in ("to_q", "to_k", "to_v", "to_out"):
            assert hp[layer.params[key]] is rp[theirs[name].params[key]], (name, key)


def test_overrides_use_ldm_parameter_names():
    """A LoRA-style override on an ldm name changes the output exactly as the same override through diffusers."""
    host, ref = make("a1111-tiny")
    layer = next(l for l in host.cross_attention_layers() if l.name.startswith("up_blocks.1"))
    ref_layer = next(l for l in ref.cross_attention_layers() if l.name == layer.name)
    with host.borrowed(), ref.borrowed():
        z = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
        w = host.unet_weight(layer.params["to_v"]) * 1.5
        cond = host.encode_text("a painting")
        a = host.predict_noise(z, 400, cond, {layer.params["to_v"]: w})
        b = ref.predict_noise(z, 400, ref.encode_text("a painting"), {ref_layer.params["to_v"]: w})
        assert torch.allclose(a, b, atol=1e-4)
        assert not torch.allclose(a, host.predict_noise(z, 400, cond), atol=1e-4)


def test_forge_loads_through_its_memory_manager():
    host, _ = make("forge-tiny")
    assert host.loads and all(len(batch) == 2 for batch in host.loads)  # UNet and VAE patchers together
    n = len(host.loads)
    with host.borrowed():
        host.encode_text("a")
    assert len(host.loads) == n + 1  # reloaded after the text encoder ran


def test_forge_sdxl_y_vector_from_old_clip_matches_get_learned_conditioning():
    host, _ = make("forge-old-tiny-xl")
    model, _ = forge_model("tiny-xl", style="old")
    from sdwebui.a1111_host import SizedPrompts

    with host.borrowed():
        cond = host.encode_text(["a painting", "a photo"])
    out = model.get_learned_conditioning(SizedPrompts(["a painting", "a photo"], 64, 64))
    assert torch.allclose(cond.pooled, out["vector"], atol=1e-6)


def test_sdxl_vector_carries_the_requested_size():
    model, _ = a1111_model("tiny-xl")
    host = A1111Host(model)  # default: SDXL's native 1024 x 1024
    with host.borrowed():
        host.encode_text("a")
    assert (model.calls[-1].width, model.calls[-1].height) == (1024, 1024)


def test_refusals_are_clear():
    model, _ = a1111_model("tiny")
    with pytest.raises(ModelError, match="no Stable Diffusion checkpoint"):
        A1111Host(None)
    model.lowvram = True
    with pytest.raises(ModelError, match="lowvram"):
        A1111Host(model)
    model.lowvram = False
    model.parameterization = "x0"
    with pytest.raises(ModelError, match="parameterisation"):
        A1111Host(model)
    model.parameterization = "eps"
    model.model.diffusion_model.in_channels = 9
    with pytest.raises(ModelError, match="inpainting"):
        A1111Host(model)
    with pytest.raises(ModelError, match="forge_objects"):
        ForgeHost.from_sd_model(object())


def test_forge_refuses_flow_models():
    model, _ = forge_model("tiny")
    model.forge_objects.unet.model.predictor.prediction_type = "const"
    fo = model.forge_objects
    with pytest.raises(ModelError, match="eps- or v-prediction"):
        ForgeHost(fo.unet, fo.clip, fo.vae, text_fn=model.get_learned_conditioning)


def test_adapter_inside_outer_inference_mode():
    """Forge runs its own work under inference_mode; gradients must still reach the image."""
    from contract import check_gradients

    host, _ = make("forge-tiny")
    with torch.inference_mode():
        check_gradients(host)
