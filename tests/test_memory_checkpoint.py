"""Gradient checkpointing on every host layout (protect_core.memory_checkpoint): ldm / ComfyUI / A1111 / Forge UNets
and VAEs are recognised by their structure, checkpointed layer by layer and recompute in backward (fewer saved
activations) with the same loss and gradients (image, K/V weight override) as without; the host comes back with
identical weights, flags, hooks and instance attributes, also after an exception in the middle of backward."""
from __future__ import annotations

import types

import pytest
import torch
from torch import nn

import fake_comfy
from ldm_tiny import EPS, V_PREDICTION, TinyLdmUNet, a1111_model, forge_model
from protect_core.integrity import diff_fingerprints, fingerprint
from protect_core.memory import PRESETS, memory_mode, memory_session, module_flags
from protect_core.memory_checkpoint import (checkpointed_forward, enable_checkpointing, is_checkpointed,
                                            ldm_unet_layers, ldm_vae_layers)

LOW_FP32 = memory_mode("low", precision="fp32", score_distillation=False)


# ------------------------------------------------------------------------------------------- ldm-layout VAE
def _level(resnets, name=None, resampler=None) -> nn.Module:
    level = nn.Module()
    level.block, level.attn = resnets, nn.ModuleList()
    if resampler is not None:
        setattr(level, name, resampler)
    return level


def _mid(mid_block) -> nn.Module:
    mid = nn.Module()
    mid.block_1, mid.attn_1, mid.block_2 = mid_block.resnets[0], mid_block.attentions[0], mid_block.resnets[1]
    return mid


def _run_mid(mid, h):
    return mid.block_2(mid.attn_1(mid.block_1(h, None)), None)


class LdmEncoder(nn.Module):
    """ldm's Encoder layout (``down[i].block/attn/downsample``, ``mid.block_1/attn_1/block_2``) made of the modules
    of a diffusers Encoder (shared, not copied): it computes what the diffusers Encoder computes."""

    def __init__(self, enc):
        super().__init__()
        self.conv_in, self.norm_out, self.act, self.conv_out = enc.conv_in, enc.conv_norm_out, enc.conv_act, \
            enc.conv_out
        self.down = nn.ModuleList(_level(b.resnets, "downsample", b.downsamplers[0] if b.downsamplers else None)
                                  for b in enc.down_blocks)
        self.mid = _mid(enc.mid_block)

    def forward(self, x):
        h = self.conv_in(x)
        for level in self.down:
            for block in level.block:
                h = block(h, None)
            if hasattr(level, "downsample"):
                h = level.downsample(h)
        return self.conv_out(self.act(self.norm_out(_run_mid(self.mid, h))))


class LdmDecoder(nn.Module):
    def __init__(self, dec):
        super().__init__()
        self.conv_in, self.norm_out, self.act, self.conv_out = dec.conv_in, dec.conv_norm_out, dec.conv_act, \
            dec.conv_out
        self.mid = _mid(dec.mid_block)
        self.up = nn.ModuleList(_level(b.resnets, "upsample", b.upsamplers[0] if b.upsamplers else None)
                                for b in dec.up_blocks)

    def forward(self, z):
        h = _run_mid(self.mid, self.conv_in(z))
        for level in self.up:
            for block in level.block:
                h = block(h, None)
            if hasattr(level, "upsample"):
                h = level.upsample(h)
        return self.conv_out(self.act(self.norm_out(h)))


class LdmVAE(nn.Module):
    """A first-stage model in the ldm layout (ComfyUI's, A1111's and Forge's VAEs) around a diffusers VAE."""

    def __init__(self, vae):
        super().__init__()
        self.encoder, self.decoder = LdmEncoder(vae.encoder), LdmDecoder(vae.decoder)
        self.quant_conv, self.post_quant_conv = vae.quant_conv, vae.post_quant_conv
        self.scaling_factor, self.shift_factor = float(vae.config.scaling_factor), 0.0


# ------------------------------------------------------------------------------------------- hosts
@pytest.fixture(scope="module")
def comfy_host_cls(tmp_path_factory):
    restore = fake_comfy.install(str(tmp_path_factory.mktemp("comfy")), EPS, V_PREDICTION)
    try:
        from nodes.comfy_host import ComfyHost

        yield ComfyHost
    finally:
        restore()


def make_host(kind: str, comfy_host_cls=None):
    """comfy: ldm UNet + ldm VAE, inference-tensor weights; a1111: ldm UNet + diffusers VAE; forge: ldm UNet + ldm
    VAE, inference tensors; diffusers: the diffusers adapter (diffusers' own checkpointing flags)."""
    if kind == "diffusers":
        from protect_core.tiny_models import build_tiny_host

        return build_tiny_host("tiny", seed=0)
    if kind == "a1111":
        from sdwebui.a1111_host import A1111Host

        return A1111Host(a1111_model("tiny")[0], sdxl_size=64)
    model, pipe = forge_model("tiny", style="old" if kind == "comfy" else "new")
    fo = model.forge_objects
    fo.vae.first_stage_model = LdmVAE(pipe.vae)
    if kind == "forge":
        from sdwebui.forge_host import ForgeHost

        return ForgeHost(fo.unet, fo.clip, fo.vae, text_fn=model.get_learned_conditioning, load=lambda m: None,
                         sdxl_size=64)
    kmodel = fo.unet.model
    kmodel.diffusion_model.__class__ = type("UNetModel", (type(kmodel.diffusion_model),), {})
    kmodel.latent_format = types.SimpleNamespace(scale_factor=float(pipe.vae.config.scaling_factor))
    return comfy_host_cls(types.SimpleNamespace(model=kmodel), fo.clip, fo.vae, load=False)


def _gradients(host, mode, break_backward: bool = False):
    """Loss (UNet with a K override + VAE round trip), its gradients w.r.t. image and override, how many checkpointed
    modules the session reported, how many UNet convolutions ran again in backward, and the bytes autograd kept
    outside checkpointed regions."""
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0)) * 2 - 1
    calls, saved = [0], [0]

    def pack(t):
        saved[0] += t.numel() * t.element_size()
        return t

    with host.borrowed(), memory_session(host, mode) as act:
        convs = [m for m in host.host_modules()["unet"].modules() if isinstance(m, nn.Conv2d)]
        handles = [m.register_forward_pre_hook(lambda *a: calls.__setitem__(0, calls[0] + 1)) for m in convs]
        key = host.cross_attention_layers()[0].params["to_k"]
        w = (host.unet_weight(key) * 1.5).requires_grad_(True)
        xx = x.clone().requires_grad_(True)
        cond = host.encode_text(["a painting"])
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            z = host.encode(xx)
            loss = host.predict_noise(z, 500, cond, {key: w}).pow(2).mean() + host.decode(z).pow(2).mean()
        in_forward = calls[0]
        if break_backward:   # an error inside a recomputation, in the middle of backward
            layer = next(m for m in host.host_modules()["unet"].modules() if is_checkpointed(m))
            layer.register_forward_pre_hook(lambda *a: (_ for _ in ()).throw(KeyError("boom in backward")))
        gx, gw = torch.autograd.grad(loss, [xx, w])
        for h in handles:
            h.remove()
    return types.SimpleNamespace(loss=loss.detach(), gx=gx, gw=gw, checkpointed=act.checkpointed_modules,
                                 recomputed=calls[0] - in_forward, saved=saved[0], notes=act.notes)


def _identities(host) -> dict:
    return {(k, n): id(p) for k, m in host.host_modules().items() if m is not None
            for n, p in [*m.named_parameters(), *m.named_buffers()]}


@pytest.mark.parametrize("kind", ["comfy", "a1111", "forge", "diffusers"])
def test_checkpointing_matches_and_restores(kind, comfy_host_cls, integrity):
    host = make_host(kind, comfy_host_cls)
    chk, flags, ids = integrity(host), module_flags(host), _identities(host)
    fast, low = _gradients(host, PRESETS["fast"]), _gradients(host, LOW_FP32)
    assert fast.checkpointed == 0 and fast.recomputed == 0
    assert low.checkpointed > 0 and low.recomputed > 0 and not low.notes
    assert low.saved < fast.saved, "checkpointing keeps fewer activations for backward"
    torch.testing.assert_close(low.loss, fast.loss, rtol=1e-5, atol=1e-6)
    assert low.gw.abs().sum() > 0 and low.gx.abs().sum() > 0
    torch.testing.assert_close(low.gx, fast.gx, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(low.gw, fast.gw, rtol=1e-4, atol=1e-6)
    assert module_flags(host) == flags and _identities(host) == ids
    chk.assert_unchanged()


@pytest.mark.parametrize("kind", ["comfy", "forge"])
def test_ldm_layers_counted_by_layout(kind, comfy_host_cls):
    """Every layer of the ldm UNet's blocks and of the ldm VAE is checkpointed through an instance forward."""
    host = make_host(kind, comfy_host_cls)
    mods = host.host_modules()
    unet_layers, vae_layers = ldm_unet_layers(mods["unet"]), ldm_vae_layers(mods["vae"])
    blocks = [*mods["unet"].input_blocks, mods["unet"].middle_block, *mods["unet"].output_blocks]
    assert len(unet_layers) == sum(1 for b in blocks for m in b if list(m.children())) > len(blocks) // 2
    assert mods["unet"].input_blocks[0][0] not in unet_layers   # a bare convolution is not worth it
    enc, dec = mods["vae"].encoder, mods["vae"].decoder
    assert len(vae_layers) == sum(len(level.block) for level in [*enc.down, *dec.up]) + 2 * 3  # + mid: 2 x 3
    with host.borrowed():
        with memory_session(host, PRESETS["balanced"]) as act:
            assert act.checkpointed_modules == len(unet_layers)
            assert all(is_checkpointed(m) for m in unet_layers) and not any(map(is_checkpointed, vae_layers))
        with memory_session(host, PRESETS["low"]) as act:
            assert act.checkpointed_modules == len(unet_layers) + len(vae_layers)
        assert not any(is_checkpointed(m) for m in unet_layers + vae_layers)


def test_structure_decides_not_the_host(tiny_host):
    unet, vae = tiny_host.unet, tiny_host.vae
    assert ldm_unet_layers(unet) == [] and ldm_vae_layers(vae) == []   # diffusers layouts: diffusers' flags
    ldm = TinyLdmUNet(unet)
    n = len(ldm_unet_layers(ldm))
    assert n > 0 and len(ldm_vae_layers(LdmVAE(vae))) > 6
    ldm.middle_block = None   # ComfyUI builds some UNets without one
    assert 0 < len(ldm_unet_layers(ldm)) < n
    with tiny_host.borrowed():
        assert enable_checkpointing(tiny_host, unet) > 0
        assert unet.down_blocks[0].gradient_checkpointing and not any(map(is_checkpointed, unet.modules()))
        assert enable_checkpointing(tiny_host, nn.Sequential(nn.Linear(2, 2))) == 0
    assert not unet.down_blocks[0].gradient_checkpointing


def test_ldm_vae_stand_in_computes_what_diffusers_computes(tiny_host):
    x = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    ldm = LdmVAE(tiny_host.vae)
    with torch.no_grad():
        h = ldm.encoder(x)
        torch.testing.assert_close(h, tiny_host.vae.encoder(x))
        z = h[:, :4]
        torch.testing.assert_close(ldm.decoder(z), tiny_host.vae.decoder(z))


@pytest.mark.parametrize("kind", ["comfy", "a1111"])
def test_exception_mid_backward_restores(kind, comfy_host_cls, integrity):
    host = make_host(kind, comfy_host_cls)
    chk, flags, ids = integrity(host), module_flags(host), _identities(host)
    with pytest.raises(KeyError, match="boom in backward"):
        _gradients(host, LOW_FP32, break_backward=True)
    assert module_flags(host) == flags and _identities(host) == ids
    chk.assert_unchanged()
    # and the next session checkpoints (recomputes) again, with the right numbers
    again, fast = _gradients(host, LOW_FP32), _gradients(host, PRESETS["fast"])
    assert again.recomputed > 0
    torch.testing.assert_close(again.gw, fast.gw, rtol=1e-4, atol=1e-6)
    chk.assert_unchanged()


class _Scaled(nn.Module):
    """Writes into the dict it is given (as ComfyUI's layers write into ``transformer_options``) and reads it."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Sequential(nn.Linear(4, 4))

    def forward(self, x, options):
        options["calls"] = options.get("calls", 0) + 1
        return (self.lin(x) * options["calls"]).pow(2)


def test_dict_arguments_recomputed_as_at_forward_time():
    x = torch.randn(3, 4, generator=torch.Generator().manual_seed(0), requires_grad=True)
    m = _Scaled()
    (ref,) = torch.autograd.grad(m(x, {}).sum(), x)
    m.forward = checkpointed_forward(m)
    try:
        options = {}
        out = m(x, options)
        (g,) = torch.autograd.grad(out.sum(), x)
        assert options == {"calls": 1}   # the caller's dict saw the forward pass only, not the recomputation
        torch.testing.assert_close(g, ref)
        with torch.no_grad():            # no gradient: the layer's own forward, nothing saved
            assert m(x, {}).grad_fn is None
    finally:
        del m.forward


def test_fingerprint_sees_session_attributes(tiny_host):
    """The host fingerprint covers what memory sessions change, so every borrow test checks it."""
    before = fingerprint(tiny_host.host_modules())
    with tiny_host.borrowed(), memory_session(tiny_host, memory_mode("low", attention="sliced")):
        inside = " ".join(diff_fingerprints(before, fingerprint(tiny_host.host_modules())))
        assert "unet.session_attrs" in inside and "vae.session_attrs" in inside
    assert not diff_fingerprints(before, fingerprint(tiny_host.host_modules()))
    conv = tiny_host.unet.conv_in
    conv.forward = checkpointed_forward(conv)  # a leftover instance forward: the model changed
    try:
        problems = diff_fingerprints(before, fingerprint(tiny_host.host_modules()))
        assert problems == ["unet.session_attrs changed: ['conv_in.forward']"]
    finally:
        del conv.forward
    assert fingerprint(tiny_host.host_modules()) == before
