"""Custom ComfyUI socket types of the StyleCloak node pack."""
from comfy_api.latest import io

#: A protect_core.layers.selection.LayerSelection travelling between nodes (Select Layers -> Cloak / Mimicry).
LayerSelectionType = io.Custom("STYLECLOAK_LAYERS")
