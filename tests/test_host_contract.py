"""The HostModel contract on every diffusers-side backend: built in memory, loaded from a diffusers folder, loaded
from a single-file checkpoint, and created under ``torch.inference_mode()`` (as ComfyUI and Forge create weights)."""
from __future__ import annotations

import pytest
import torch

from contract import CHECKS, ENDINGS, check_restored_after
from protect_core.tiny_models import build_tiny_host, build_tiny_pipeline

BACKENDS = ["tiny", "tiny-v", "tiny-xl", "tiny-folder", "tiny-single-file", "tiny-inference-mode"]

_cache = {}


def _folder(tmp_dir):
    from protect_core.backends.loading import load_host

    pipe = build_tiny_pipeline("tiny", seed=0)
    pipe.save_pretrained(tmp_dir / "tiny", safe_serialization=True)
    return load_host(str(tmp_dir / "tiny"))


def _single_file(tmp_dir):
    ldm = pytest.importorskip("protect_core.ldm_convert", reason="single-file converter not built yet")
    from protect_core.backends.loading import load_host

    path = tmp_dir / "tiny.safetensors"
    ldm.save_single_file(build_tiny_pipeline("tiny", seed=0), path)
    return load_host(str(path))


def _inference_mode():
    """Weights made under inference_mode and left requires_grad=True, as ComfyUI and Forge load them."""
    with torch.inference_mode():
        host = build_tiny_host("tiny", seed=0)
        for m in host.host_modules().values():
            m.requires_grad_(True)
    p = next(host.unet.parameters())
    assert p.is_inference()
    return host


def make_host(kind, tmp_dir):
    if kind in ("tiny", "tiny-v", "tiny-xl"):
        return build_tiny_host(kind, seed=0)
    if kind == "tiny-folder":
        return _folder(tmp_dir)
    if kind == "tiny-single-file":
        return _single_file(tmp_dir)
    if kind == "tiny-inference-mode":
        return _inference_mode()
    raise ValueError(kind)


@pytest.fixture(params=BACKENDS)
def host(request, tmp_path_factory):
    if request.param not in _cache:
        _cache[request.param] = make_host(request.param, tmp_path_factory.mktemp(request.param))
    return _cache[request.param]


@pytest.mark.parametrize("check", CHECKS, ids=lambda c: c.__name__)
def test_contract(host, check):
    check(host)


@pytest.mark.parametrize("ending", ENDINGS)
def test_host_restored(host, ending):
    check_restored_after(host, ending)


def test_contract_inside_outer_inference_mode():
    """A host calls a block from inside its own inference_mode (ComfyUI runs every node that way)."""
    host = _inference_mode()
    with torch.inference_mode():
        from contract import check_gradients

        check_gradients(host)


def test_methods_need_borrow(tiny_host):
    z = torch.zeros(1, 4, 8, 8)
    with pytest.raises(RuntimeError, match="borrowed"):
        tiny_host.predict_noise(z, 10, tiny_host.encode_text("a"))


def test_bad_image_batches(tiny_host):
    with tiny_host.borrowed():
        with pytest.raises(ValueError, match="empty"):
            tiny_host.encode(torch.zeros(0, 3, 64, 64))
        with pytest.raises(ValueError, match="multiple of 8"):
            tiny_host.encode(torch.zeros(1, 3, 60, 64))
        with pytest.raises(ValueError, match="shape"):
            tiny_host.encode(torch.zeros(3, 64, 64))


def test_wrong_model_types():
    from protect_core.backends.diffusers_host import DiffusersHost
    from protect_core.errors import ModelError

    pipe = build_tiny_pipeline("tiny")
    with pytest.raises(ModelError, match="UNet2DConditionModel"):
        DiffusersHost(pipe.vae, pipe.vae, pipe.text_encoder, pipe.tokenizer, torch.ones(10))


def test_v_prediction_noise_conversion():
    """predict_noise returns eps for v-models: at t with a known x0 and noise, eps is recovered exactly."""
    from protect_core.diffusion import add_noise, eps_from_output, training_target

    ac = build_tiny_host("tiny-v").alphas_cumprod
    x0, noise, t = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8), torch.tensor([5, 700])
    v = training_target(x0, noise, t, ac, "v_prediction")
    x_t = add_noise(x0, noise, t, ac)
    assert torch.allclose(eps_from_output(v, x_t, t, ac, "v_prediction"), noise, atol=1e-5)
