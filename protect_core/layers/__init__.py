"""Select Style-Sensitive Layers: rank a model's cross-attention layers by style sensitivity on the user's images.

* :mod:`.analysis` -- the analysis and its exact score (``analyse_layers``, ``AnalysisSettings``);
* :mod:`.causal` -- the causal term of the score (leave-one-layer-out swap of the text a layer reads);
* :mod:`.descriptor` -- the external style model (local CLIP vision, or the offline VAE-Gram descriptor);
* :mod:`.selection` -- ``LayerSelection`` (JSON load/save, ``names`` for ``CloakSettings.layers``) and presets;
* :mod:`.naming` -- canonical (diffusers) <-> ldm / ComfyUI layer names;
* :mod:`.heatmap` -- the per-layer, per-timestep heat map (Pillow); :mod:`.cli` -- ``stylecloak layers``.
"""
from .. import lazy_exports

_EXPORTS = {
    "AnalysisSettings": ".analysis",
    "LayerAnalysis": ".analysis",
    "LayerScore": ".analysis",
    "analyse_layers": ".analysis",
    "PRESETS": ".selection",
    "STYLEPROTECT_SD15": ".selection",
    "LayerSelection": ".selection",
}
__all__ = ["AnalysisSettings", "LayerAnalysis", "LayerScore", "analyse_layers", "LayerSelection", "PRESETS",
           "STYLEPROTECT_SD15"]
__getattr__ = lazy_exports(__name__, _EXPORTS)
