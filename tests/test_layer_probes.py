"""The layer-selection benchmark's probes (benchmarks/layer_probes.py): silencing the style text in every layer IS
generating from the content prompt, CFG's unconditional half is left alone, hooks always go away, the host is
unchanged, and the classifier read-out's log-odds are the softmax's."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

import layer_probes as lp  # noqa: E402
from layer_fixtures import CP, SP  # noqa: E402
from protect_core.sampling import txt2img  # noqa: E402


def _contexts(host):
    return host.encode_text([SP]).context[0], host.encode_text([CP]).context[0]


def _hooked(host) -> int:
    return sum(len(l.module.get_submodule(k)._forward_pre_hooks)
               for l in host.cross_attention_layers() for k in lp.PROJECTIONS)


def test_silencing_every_layer_is_the_content_prompt(tiny_host, integrity):
    host, chk = tiny_host, integrity(tiny_host)
    layers = host.cross_attention_layers()
    style_ctx, content_ctx = _contexts(host)
    kw = dict(height=32, width=32, steps=3, guidance=4.0, seed=5)
    with host.borrowed(), torch.no_grad():
        content = txt2img(host, [CP] * 2, **kw)
        styled = txt2img(host, [SP] * 2, **kw)
        with lp.style_text_silenced(layers, style_ctx, content_ctx) as swapped:
            silenced = txt2img(host, [SP] * 2, **kw)
        # the unconditional ("" prompt) half is untouched: silencing with the *style* text as the replacement is
        # the plain style generation, bit for bit
        with lp.style_text_silenced(layers, style_ctx, style_ctx):
            same = txt2img(host, [SP] * 2, **kw)
    assert swapped[0] == 3 * len(layers) * len(lp.PROJECTIONS)  # every projection, every step
    assert torch.allclose(silenced, content, atol=1e-5) and not torch.allclose(styled, content, atol=1e-3)
    assert torch.equal(same, styled)
    assert _hooked(host) == 0
    chk.assert_unchanged()


def test_silencing_one_layer_changes_less_than_all(tiny_host):
    host = tiny_host
    layers = host.cross_attention_layers()
    style_ctx, content_ctx = _contexts(host)
    kw = dict(height=32, width=32, steps=3, guidance=4.0, seed=5)
    with host.borrowed(), torch.no_grad():
        styled = txt2img(host, [SP], **kw)
        with lp.style_text_silenced(layers[:1], style_ctx, content_ctx):
            one = txt2img(host, [SP], **kw)
        with lp.style_text_silenced(layers, style_ctx, content_ctx):
            every = txt2img(host, [SP], **kw)
    assert 0 < (one - styled).abs().sum() < (every - styled).abs().sum()


def test_hooks_go_away_on_error(tiny_host):
    host = tiny_host
    style_ctx, content_ctx = _contexts(host)
    with pytest.raises(RuntimeError, match="boom"):
        with lp.style_text_silenced(host.cross_attention_layers(), style_ctx, content_ctx):
            raise RuntimeError("boom")
    assert _hooked(host) == 0


def test_readout_log_odds():
    class Clf:
        styles = ["a", "b", "c"]

        def logits(self, x):
            return torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, -1.0]])

    p, lo = lp.classifier_readout(Clf(), torch.zeros(2, 3, 4, 4), "a")
    probs = Clf().logits(None).double().softmax(-1)[:, 0]
    assert p == pytest.approx(float(probs.mean()))
    assert lo == pytest.approx(float((probs / (1 - probs)).log().mean()))


def test_relative_noise_is_seeded_per_layer_and_draw(tiny_host):
    layers = tiny_host.cross_attention_layers()
    with tiny_host.borrowed():
        a = lp.relative_noise(tiny_host, layers, 1.0, draw=0)
        b = lp.relative_noise(tiny_host, layers[:1], 1.0, draw=0)
        c = lp.relative_noise(tiny_host, layers, 1.0, draw=1)
    name = layers[0].params["to_k"]
    assert torch.equal(a[name], b[name]) and not torch.equal(a[name], c[name])
    assert len(a) == 2 * len(layers)


toy = pytest.importorskip("protect_core.toy.model")


@pytest.mark.skipif(not toy.toy_available(), reason="no trained toy model in protect_core/assets/toy")
def test_toy_subset_moves(integrity):
    """On the trained toy model, silencing the style words in every layer removes the style the classifier saw."""
    host, clf = toy.build_toy_host(), toy.load_style_classifier()
    chk = integrity(host)
    layers = {l.name: l for l in host.cross_attention_layers()}
    everything, one = tuple(sorted(layers)), (sorted(layers)[0],)
    clean, moves = lp.subset_moves(host, clf, "dots", [everything, one], layers, "swap", samples=4, size=32)
    assert 0 <= clean[0] <= 1 and set(moves) == {frozenset(everything), frozenset(one)}
    assert moves[frozenset(everything)][1] > 0  # log-odds of the style fall
    with pytest.raises(ValueError, match="unknown probe"):
        lp.subset_moves(host, clf, "dots", [one], layers, "shake", samples=1, size=32)
    chk.assert_unchanged()
