"""The borrow guard itself: nested borrows, lazily-initialised library state, and the fingerprint's sensitivity."""
import torch

from protect_core.integrity import diff_fingerprints, fingerprint


def test_fingerprint_detects_weight_change(tiny_host):
    before = fingerprint(tiny_host.host_modules())
    with torch.no_grad():
        next(tiny_host.unet.parameters()).view(-1)[0] += 1e-6
    problems = diff_fingerprints(before, fingerprint(tiny_host.host_modules()))
    assert any("unet.tensors" in p for p in problems)


def test_fingerprint_detects_device_dtype_and_flag_change(tiny_host):
    before = fingerprint(tiny_host.host_modules())
    tiny_host.vae.to(torch.float64)
    next(tiny_host.unet.parameters()).requires_grad_(True)
    problems = " ".join(diff_fingerprints(before, fingerprint(tiny_host.host_modules())))
    assert "vae.placement" in problems and "unet.requires_grad" in problems


def test_nested_borrow_restores_once(tiny_host, integrity):
    chk = integrity(tiny_host)
    with tiny_host.borrowed():
        views = tiny_host.parameter_views()
        with tiny_host.borrowed():
            assert tiny_host.parameter_views() is views
        assert tiny_host.parameter_views() is views
    assert tiny_host._views is None
    chk.assert_unchanged()


def test_text_encoder_lazy_hooks_are_undone():
    """transformers installs output-capturing hooks on first output_hidden_states=True (SDXL text encoding);
    the borrow removes them with their flag so the library re-installs them when the host needs them."""
    from protect_core.tiny_models import build_tiny_host

    host = build_tiny_host("tiny-xl")
    before = fingerprint(host.host_modules())
    with host.borrowed():
        host.encode_text("a painting")
    assert not diff_fingerprints(before, fingerprint(host.host_modules()))
    with host.borrowed():  # and it still works afterwards, for us and for the host
        c = host.encode_text("a painting")
    out = host.text_encoder_2(host.tokenizer_2(["a"], return_tensors="pt").input_ids, output_hidden_states=True)
    assert out.hidden_states is not None and c.pooled is not None


def test_host_params_with_requires_grad_true_get_no_grad(integrity):
    """A host that keeps requires_grad=True on its weights (plain diffusers) still gets no .grad from us."""
    from protect_core.tiny_models import build_tiny_host

    host = build_tiny_host("tiny")
    host.unet.requires_grad_(True)
    chk = integrity(host)
    with host.borrowed():
        x = torch.rand(1, 3, 64, 64, requires_grad=True)
        host.predict_noise(host.encode(x * 2 - 1), 50, host.encode_text("a")).sum().backward()
        assert x.grad is not None
    assert all(p.grad is None for p in host.unet.parameters())
    chk.assert_unchanged()
