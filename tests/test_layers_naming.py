"""Layer naming across hosts: diffusers (canonical) <-> ldm / ComfyUI, table-driven for SD 1.5, SDXL and tiny."""
from __future__ import annotations

import json

import pytest

from protect_core.layers import naming

TB = ".transformer_blocks.0.attn2"

# (layers_per_block, canonical, ldm) rows from the SD 1.5 and SDXL UNets as the original code numbers them
SD15 = [
    ("down_blocks.0.attentions.0", "input_blocks.1.1"),
    ("down_blocks.0.attentions.1", "input_blocks.2.1"),
    ("down_blocks.1.attentions.0", "input_blocks.4.1"),
    ("down_blocks.1.attentions.1", "input_blocks.5.1"),
    ("down_blocks.2.attentions.0", "input_blocks.7.1"),
    ("down_blocks.2.attentions.1", "input_blocks.8.1"),
    ("mid_block.attentions.0", "middle_block.1"),
    ("up_blocks.1.attentions.0", "output_blocks.3.1"),
    ("up_blocks.1.attentions.2", "output_blocks.5.1"),
    ("up_blocks.2.attentions.0", "output_blocks.6.1"),
    ("up_blocks.2.attentions.2", "output_blocks.8.1"),
    ("up_blocks.3.attentions.1", "output_blocks.10.1"),
    ("up_blocks.3.attentions.2", "output_blocks.11.1"),
]
SDXL = [
    ("down_blocks.1.attentions.0", "input_blocks.4.1"),
    ("down_blocks.2.attentions.1", "input_blocks.8.1"),
    ("mid_block.attentions.0", "middle_block.1"),
    ("up_blocks.0.attentions.0", "output_blocks.0.1"),
    ("up_blocks.0.attentions.2", "output_blocks.2.1"),
    ("up_blocks.1.attentions.1", "output_blocks.4.1"),
]
TINY = [  # layers_per_block 1, two blocks
    ("down_blocks.0.attentions.0", "input_blocks.1.1"),
    ("down_blocks.1.attentions.0", "input_blocks.3.1"),
    ("up_blocks.0.attentions.1", "output_blocks.1.1"),
    ("up_blocks.1.attentions.0", "output_blocks.2.1"),
]
ROWS = [(2, c, l, k) for c, l in SD15 for k in (0,)] + [(2, c, l, k) for c, l in SDXL for k in (0, 9)] + \
       [(1, c, l, 0) for c, l in TINY]


@pytest.mark.parametrize("lpb,canonical,ldm,k", ROWS)
def test_maps_both_ways(lpb, canonical, ldm, k):
    tail = f".transformer_blocks.{k}.attn2"
    assert naming.to_ldm(canonical + tail, lpb) == ldm + tail
    assert naming.from_ldm(ldm + tail, lpb) == canonical + tail
    for prefix in ("diffusion_model.", "model.diffusion_model."):
        assert naming.canonical_name(prefix + ldm + tail, lpb) == canonical + tail
    assert naming.canonical_name(canonical + tail, lpb) == canonical + tail


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
def test_agrees_with_the_checkpoint_converter(family):
    """The ldm checkpoint converter derives the same numbering from the full UNet config independently."""
    from protect_core.configs import __file__ as cfg_init
    from protect_core.ldm_convert import canonical_to_ldm_attn
    from pathlib import Path

    cfg = json.loads((Path(cfg_init).parent / family / "unet" / "config.json").read_text())
    rows = SD15 if family == "sd15" else SDXL
    for canonical, _ in rows:
        expect = canonical_to_ldm_attn(canonical + TB, cfg)
        assert naming.to_ldm(canonical + TB, cfg["layers_per_block"]) == expect


def test_per_block_layer_counts():
    lpb = (1, 2, 3)  # up blocks mirror it: 4, 3, 2 layers
    names = [f"down_blocks.{b}.attentions.{j}{TB}" for b, n in enumerate(lpb) for j in range(n)]
    names += [f"up_blocks.{b}.attentions.{j}{TB}" for b, n in enumerate(lpb[::-1]) for j in range(n + 1)]
    ldm = [naming.to_ldm(n, lpb) for n in names]
    assert len(set(ldm)) == len(ldm)
    assert ldm[0].startswith("input_blocks.1.") and ldm[1].startswith("input_blocks.3.")
    assert [naming.from_ldm(n, lpb) for n in ldm] == names


@pytest.mark.parametrize("bad", ["input_blocks.3.1" + TB, "input_blocks.0.1" + TB])
def test_downsampler_or_conv_in_is_not_an_attention(bad):
    with pytest.raises(ValueError, match="not an attention layer"):
        naming.from_ldm(bad, 2)


def test_bad_names_are_refused():
    with pytest.raises(ValueError, match="diffusers UNet attention"):
        naming.to_ldm("conv_in", 2)
    with pytest.raises(ValueError, match="does not exist"):
        naming.to_ldm("down_blocks.0.attentions.2" + TB, 2)


def test_infer_layers_per_block_and_order():
    sd15 = [c + TB for c, _ in SD15]
    assert naming.infer_layers_per_block(sd15) == 2
    assert naming.infer_layers_per_block([c + TB for c, _ in TINY]) == 1
    shuffled = sorted(sd15, reverse=True)
    ordered = sorted(shuffled, key=naming.order_key)
    assert ordered[0].startswith("down_blocks.0") and ordered[6].startswith("mid_block")
    assert ordered[-1].startswith("up_blocks.3.attentions.2")
    assert naming.short_name("up_blocks.1.attentions.0" + TB) == "up_blocks.1.attentions.0"
    assert naming.short_name("up_blocks.0.attentions.0.transformer_blocks.7.attn2") == "up_blocks.0.attentions.0.tb7"
