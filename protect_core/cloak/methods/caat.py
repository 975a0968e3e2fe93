"""CAAT (Xu et al., "Perturbing Attention Gives You More Bang for the Buck: Subtle Imaging Perturbations That
Efficiently Fool Customized Diffusion Models", CVPR 2024).

StyleProtect's scheme over EVERY cross-attention layer: each image step PGD-ascends the fine-tuning loss under
private copies of all ``attn2`` ``to_k``/``to_v`` weights while those copies descend it (Adam). As in CAAT's
public code, one UNet forward+backward per step gives both gradients (``shared_pass`` True; False = the older
scheme with a second pass of its own for the copies, see :class:`~..surrogate.KVAlternation`). CAAT always uses
all layers; pass a selection to ``styleprotect`` instead (``settings.layers`` is refused here with a clear error).

Defaults (paper/code, converted from [-1, 1] to [0, 1] units): eps 0.05-0.1 -> we take 0.05 (12.75/255, the upper
end, equal to StyleProtect's so the two compare at one budget), step 5e-3 -> 2.5e-3, 250 steps, PGD; options ``lr``
1e-5, ``train_steps`` 1, ``train_batch`` 4 (extra updates only), ``shared_pass`` True, ``t_range``. Cost: one UNet
forward+backward per image step ("2x faster than Anti-DreamBooth and Mist"), plus one per extra K/V update
(``train_steps`` > 1); memory of all K/V projections (~2% of an SD1.5 UNet). CAAT's code uses AdamW (weight decay
0.01) with gradient clipping at norm 1; the copies here use plain Adam, unclipped.
"""
from __future__ import annotations

from ..base import register
from ..surrogate import KVAlternation


@register
class CAAT(KVAlternation):
    name = "caat"
    summary = "image ascent on the tuning loss alternating with private descent of all cross-attention K/V"
    source = "Xu et al., CAAT, CVPR 2024"
    defaults = {"eps": 0.05, "steps": 250, "step_size": 2.5e-3, "optimizer": "pgd",
                "options": {"lr": 1e-5, "train_steps": 1, "train_batch": 4, "shared_pass": True, "t_range": None,
                            "posterior": "mean"}}

    def choose_layers(self, host, settings):
        if settings.layers:
            raise ValueError("caat adapts every cross-attention layer; use method 'styleprotect' for a selection")
        return [l.name for l in host.cross_attention_layers()], "all"
