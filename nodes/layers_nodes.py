"""ComfyUI nodes of the Select Style-Sensitive Layers block, plus saving / loading a selection as JSON."""
from __future__ import annotations

import os

from comfy_api.latest import io

from protect_core.layers.analysis import DEFAULT_SCORE, SCORES, AnalysisSettings, analyse_layers
from protect_core.layers.heatmap import render_heatmap
from protect_core.layers.selection import PRESETS, LayerSelection

from .comfy_glue import comfy_errors, comfy_to_list, make_progress, pil_to_comfy, to_json
from .comfy_host import ComfyHost
from .types import LayerSelectionType


class SelectStyleLayers(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="StyleCloak_SelectStyleLayers",
            display_name="StyleCloak: Select Style-Sensitive Layers",
            category="StyleCloak",
            description="Ranks the UNet's cross-attention layers by how strongly they respond to style in your "
                        "images (StyleProtect's analysis); feed the selection to Cloak Image (styleprotect) or "
                        "Mimicry Test.",
            inputs=[
                io.Image.Input("images", tooltip="The artist's images (a batch)."),
                io.Model.Input("model", tooltip="The model whose layers are ranked (SD 1.x / 2.x / XL)."),
                io.Clip.Input("clip", tooltip="The checkpoint's text encoder (style and content prompts)."),
                io.Vae.Input("vae", tooltip="The checkpoint's VAE (encodes the images)."),
                io.Int.Input("top_k", default=4, min=1, max=64, tooltip="How many layers to select."),
                io.String.Input("style_prompt", default=AnalysisSettings.style_prompt,
                                tooltip="Prompt naming the style."),
                io.String.Input("content_prompt", default=AnalysisSettings.content_prompt,
                                tooltip="Prompt naming only the content."),
                io.String.Input("timesteps", default="200,500,800", tooltip="Comma-separated timesteps."),
                io.Int.Input("noise_seeds", default=2, min=1, max=16, tooltip="Noise draws per timestep."),
                io.Int.Input("size", default=512, min=64, max=2048, step=8, tooltip="Analysis resolution."),
                io.Int.Input("seed", default=0, min=0, max=2**31 - 1, tooltip="Same seed, same ranking."),
                io.Combo.Input("score", options=list(SCORES), default=DEFAULT_SCORE, optional=True,
                               tooltip="causal: how much of the style a layer carries downstream (one extra UNet "
                                       "pass per layer); activation: how differently it responds; combined: both."),
            ],
            outputs=[LayerSelectionType.Output("selection"),
                     io.Image.Output("heatmap", tooltip="Score per layer and timestep; selected layers marked."),
                     io.String.Output("report", tooltip="JSON ranked table.")],
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def execute(cls, images, model, clip, vae, top_k, style_prompt, content_prompt, timesteps, noise_seeds, size,
                seed, score=DEFAULT_SCORE) -> io.NodeOutput:
        settings = AnalysisSettings(style_prompt=style_prompt, content_prompt=content_prompt,
                                    timesteps=tuple(int(t) for t in timesteps.split(",") if t.strip()),
                                    seeds=noise_seeds, seed=seed, size=size, score=score)
        with comfy_errors():
            host = ComfyHost(model, clip, vae)
            analysis = analyse_layers(host, comfy_to_list(images, "images"), settings,
                                      progress=make_progress(0, cls.hidden.unique_id))
        selection = LayerSelection.from_analysis(analysis, top_k)
        heat = render_heatmap(selection.table, selection.timesteps, selection.layers)
        return io.NodeOutput(selection, pil_to_comfy(heat), to_json(selection.to_dict()))


class LayerPreset(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="StyleCloak_LayerPreset",
            display_name="StyleCloak: Layer Preset",
            category="StyleCloak",
            description="A named layer selection (e.g. StyleProtect's four SD 1.5 layers), checked against the model.",
            inputs=[io.Combo.Input("preset", options=list(PRESETS), tooltip="Named selection."),
                    io.Model.Input("model", tooltip="The model the selection must fit (its layers are checked)."),
                    io.Clip.Input("clip", tooltip="The checkpoint's text encoder."),
                    io.Vae.Input("vae", tooltip="The checkpoint's VAE.")],
            outputs=[LayerSelectionType.Output("selection")],
        )

    @classmethod
    def execute(cls, preset, model, clip, vae) -> io.NodeOutput:
        return io.NodeOutput(LayerSelection.from_preset(preset, ComfyHost(model, clip, vae, load=False)))


class SaveLayerSelection(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="StyleCloak_SaveLayerSelection",
            display_name="StyleCloak: Save Layer Selection",
            category="StyleCloak",
            description="Writes the selection as JSON into ComfyUI's output folder (shareable, works in every host).",
            inputs=[LayerSelectionType.Input("selection", tooltip="From Select Style-Sensitive Layers or Layer "
                                             "Preset."),
                    io.String.Input("filename", default="stylecloak_layers.json",
                                    tooltip="File name in ComfyUI's output folder (folders are dropped).")],
            outputs=[io.String.Output("path")],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, selection, filename) -> io.NodeOutput:
        import folder_paths

        name = os.path.basename(filename) or "stylecloak_layers.json"
        path = selection.save(os.path.join(folder_paths.get_output_directory(), name))
        return io.NodeOutput(str(path))


class LoadLayerSelection(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="StyleCloak_LoadLayerSelection",
            display_name="StyleCloak: Load Layer Selection",
            category="StyleCloak",
            description="Reads a selection JSON (from this node pack, the CLI or the A1111 tab).",
            inputs=[io.String.Input("path", default="stylecloak_layers.json",
                                    tooltip="File name in ComfyUI's input or output folder, or a full path.")],
            outputs=[LayerSelectionType.Output("selection")],
        )

    @classmethod
    def execute(cls, path) -> io.NodeOutput:
        import folder_paths

        candidates = [path, os.path.join(folder_paths.get_input_directory(), path),
                      os.path.join(folder_paths.get_output_directory(), path)]
        found = next((p for p in candidates if os.path.isfile(p)), None)
        if found is None:
            raise FileNotFoundError(f"layer selection {path!r} not found (looked in the input and output folders)")
        return io.NodeOutput(LayerSelection.load(found))
