"""StyleProtect ("protecting artistic style by perturbing style-sensitive cross-attention layers", 2025; summary
in shared/seeds/styleprotect.md): CAAT's alternation restricted to a few *style-sensitive* cross-attention layers.

Each step (1) PGD-ascends the image on the fine-tuning (denoising) loss computed with the CURRENT private copies
of the selected layers' ``to_k``/``to_v`` weights and (2) descends those private copies on the same loss (Adam),
so the cloak keeps up with a model that is learning the set. As in CAAT's public code both gradients come from the
step's one forward+backward pass (option ``shared_pass``, default True; False = a second pass of its own for the
copies after the image step, :class:`~..surrogate.KVAlternation`). The host's weights are never written: the
copies are float32 tensors passed as ``weight_overrides``.

Layers: ``settings.layers`` (canonical names, e.g. from the Select Style-Sensitive Layers block), else
:func:`default_layers`: the paper's four SD1.5 layers ``up_blocks.1.attentions.0``, ``up_blocks.1.attentions.2``,
``up_blocks.2.attentions.2``, ``down_blocks.2.attentions.1`` (each ``.transformer_blocks.0.attn2``) when the model
has them, the ones that exist when at least two do (SDXL: three), otherwise the same positions (last four
up-block layers + deepest down-block layer). ``method.info`` records the layers used and how they were chosen.

Defaults (paper/CAAT code, converted from [-1, 1] to [0, 1] units): eps 0.1 -> 0.05 (12.75/255), step 5e-3 ->
2.5e-3, 250 steps, PGD; options ``lr`` 1e-5 (CAAT's rate for the K/V copies; on the tiny test models a few steps
at this rate barely move the weights, so tests pass a larger one), ``train_steps`` 1 (copy updates per image step),
``train_batch`` 4 (images per extra copy update: the shared update sees the whole batch), ``shared_pass`` True,
``t_range`` (default the whole schedule). The paper uses <= 4 images. Cost: one UNet forward+backward per image
step plus one per extra copy update (``train_steps`` > 1); memory of four layers' K/V only.
"""
from __future__ import annotations

from ..base import register
from ..surrogate import KVAlternation, choose_style_layers, default_layers, resolve_layers  # noqa: F401


@register
class StyleProtect(KVAlternation):
    name = "styleprotect"
    summary = "CAAT restricted to style-sensitive cross-attention layers (image ascent + private K/V descent)"
    source = "StyleProtect, 2025 (built on CAAT, Xu et al., CVPR 2024)"
    defaults = {"eps": 0.05, "steps": 250, "step_size": 2.5e-3, "optimizer": "pgd",
                "options": {"lr": 1e-5, "train_steps": 1, "train_batch": 4, "shared_pass": True, "t_range": None,
                            "posterior": "mean"}}

    def choose_layers(self, host, settings):
        return resolve_layers(host, settings.layers)
