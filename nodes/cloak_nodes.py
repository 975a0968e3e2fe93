"""ComfyUI nodes of the Cloak Image block: Cloak Image and Protection Report (before/after comparison)."""
from __future__ import annotations

from comfy_api.latest import io

from protect_core.cloak.base import available_methods, get_method
from protect_core.cloak.presets import PRESETS, settings_for
from protect_core.cloak.runner import cloak_images
from protect_core.metrics import image_stats

from .comfy_glue import (comfy_errors, comfy_to_list, compare_ui, list_to_comfy, make_progress, memory_input,
                         to_json)
from .comfy_host import ComfyHost
from .types import LayerSelectionType


class CloakImage(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        methods = list(available_methods())
        return io.Schema(
            node_id="StyleCloak_CloakImage",
            display_name="StyleCloak: Cloak Image",
            category="StyleCloak",
            description="Adds a barely visible, optimised perturbation so that fine-tuning on the image fails to "
                        "learn its style. Uses the graph's own model; the model is left exactly as it was.",
            inputs=[
                io.Image.Input("image", tooltip="Artwork to protect (a batch cloaks every image)."),
                io.Model.Input("model", tooltip="The SD 1.x / 2.x / XL model an attacker would fine-tune."),
                io.Clip.Input("clip", tooltip="The checkpoint's text encoder (for prompts and style targets)."),
                io.Vae.Input("vae", tooltip="The checkpoint's VAE (cloaks act through its encoder)."),
                io.Combo.Input("method", options=methods, default="glaze" if "glaze" in methods else methods[0],
                               tooltip="Protection method; see the README's method table."),
                io.Combo.Input("intensity", options=list(PRESETS), default="default",
                               tooltip="low / default / high: scales the budget and steps, like Glaze's slider."),
                io.Int.Input("seed", default=0, min=0, max=2**31 - 1, tooltip="Same seed, same cloak."),
                io.Boolean.Input("robust", default=False, tooltip="Make the cloak survive JPEG, resizing, blur "
                                 "and noise (expectation over transforms; slower)."),
                io.String.Input("target_prompt", default="", tooltip="glaze: the distant style to pull toward "
                                "(empty = the method's default)."),
                io.Int.Input("steps", default=0, min=0, max=100000, tooltip="Optimisation steps (0 = preset)."),
                io.Float.Input("eps_255", default=0.0, min=0.0, max=64.0, step=0.5,
                               tooltip="L-inf budget in 0-255 pixel levels (0 = preset)."),
                LayerSelectionType.Input("layers", optional=True, tooltip="Layer selection for styleprotect "
                                         "(from Select Style-Sensitive Layers)."),
                memory_input(),
            ],
            outputs=[
                io.Image.Output("cloaked", tooltip="Cloaked images, on 8-bit levels (save as PNG)."),
                io.Image.Output("perturbation", tooltip="Amplified view of the change (grey = untouched)."),
                io.String.Output("report", tooltip="JSON: per-image L-inf, PSNR, SSIM, objective, seconds, "
                                 "memory mode used."),
            ],
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def execute(cls, image, model, clip, vae, method, intensity, seed, robust, target_prompt, steps, eps_255,
                layers=None, memory="auto") -> io.NodeOutput:
        m = get_method(method)
        settings = settings_for(m, intensity, seed=seed, robust=robust, target_prompt=target_prompt or None,
                                steps=steps or None, eps=(eps_255 / 255.0) or None,
                                layers=layers.names if layers is not None else None)
        images = comfy_to_list(image, "image")   # too small: one clear line, before any work
        with comfy_errors():
            host = ComfyHost(model, clip, vae)
            results = cloak_images(host, images, settings, make_progress(0, cls.hidden.unique_id),
                                   memory=memory)
        # "memory": the mode asked for; each image's stats["memory"]: the mode that ran, and any fallbacks
        report = {"method": method, "intensity": intensity, "memory": memory,
                  "images": [r.stats for r in results]}
        cloaked = list_to_comfy([r.image for r in results])
        ui = {**compare_ui(image, cloaked, report["images"]), "stylecloak_memory": [{"asked": memory}]}
        return io.NodeOutput(cloaked, list_to_comfy([r.perturbation_view for r in results]), to_json(report), ui=ui)


class ProtectionReport(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="StyleCloak_ProtectionReport",
            display_name="StyleCloak: Compare Before / After",
            category="StyleCloak",
            description="Side-by-side clean | protected | 10x difference, with PSNR, SSIM and L-inf per image.",
            inputs=[io.Image.Input("clean", tooltip="The original images."),
                    io.Image.Input("protected", tooltip="The cloaked (or purified) images, same sizes.")],
            outputs=[io.Image.Output("comparison", tooltip="clean | protected | amplified difference"),
                     io.String.Output("report", tooltip="JSON with PSNR, SSIM and L-inf (in /255) per image.")],
        )

    @classmethod
    def execute(cls, clean, protected) -> io.NodeOutput:
        import torch

        if clean.shape != protected.shape:
            raise ValueError(f"clean {tuple(clean.shape)} and protected {tuple(protected.shape)} differ in size")
        a, b = clean.permute(0, 3, 1, 2)[:, :3].float(), protected.permute(0, 3, 1, 2)[:, :3].float()
        stats = image_stats(a, b)
        diff = (0.5 + 10 * (b - a)).clamp(0, 1)
        grid = torch.cat([a, b, diff], dim=-1).permute(0, 2, 3, 1)
        return io.NodeOutput(grid, to_json({"images": stats}), ui=compare_ui(clean, protected, stats))
