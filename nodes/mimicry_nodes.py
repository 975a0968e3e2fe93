"""ComfyUI node of the Mimicry Test block: fine-tune on each training set, generate, score, draw the report card.

Style is judged by the offline descriptor, or, when the optional ``clip_vision`` input is connected, by that CLIP
vision model's image embedding (:mod:`nodes.clip_vision`); the report's ``style_embedding`` says which ran.
"""
from __future__ import annotations

from comfy_api.latest import io

from protect_core.mimicry.runner import run_mimicry_test
from protect_core.mimicry.settings import DEFAULT_LR, MimicrySettings

from .clip_vision import ComfyClipVisionEmbedder
from .comfy_glue import (comfy_errors, comfy_to_list, json_safe, make_progress, memory_input, pil_to_comfy,
                         to_json)
from .comfy_host import ComfyHost
from .types import LayerSelectionType


#: Generated images per condition below which the test's standard errors do not exist (one image: 0.0) ...
MIN_SAMPLES = 2
#: ... and the count from which its statistics start to mean something (the node's default).
GOOD_SAMPLES = 8


class MimicryTest(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="StyleCloak_MimicryTest",
            display_name="StyleCloak: Mimicry Test",
            category="StyleCloak",
            description="Plays the style thief: briefly fine-tunes private adapter weights on each training set "
                        "(the graph's model is never changed), generates with fixed prompts and seeds, and scores "
                        "how much of the artist's style came through, against the clean references.",
            inputs=[
                io.Image.Input("clean", tooltip="The artist's clean images (the style reference)."),
                io.Image.Input("train", tooltip="First training set (e.g. the clean or the cloaked images)."),
                io.String.Input("train_name", default="cloaked", tooltip="Name of the first training set."),
                io.Model.Input("model", tooltip="The model the mimic fine-tunes (private adapter weights)."),
                io.Clip.Input("clip", tooltip="The checkpoint's text encoder (training and sampling prompts)."),
                io.Vae.Input("vae", tooltip="The checkpoint's VAE (encodes training images, decodes samples)."),
                io.Combo.Input("method", options=list(DEFAULT_LR), default="lora",
                               tooltip="lora (rank-r adapters) or dreambooth (private copy of a weight subset)."),
                io.Int.Input("steps", default=200, min=0, max=100000, tooltip="Fine-tuning steps per set."),
                io.Int.Input("rank", default=4, min=1, max=256, tooltip="LoRA rank."),
                io.Float.Input("lr", default=0.0, min=0.0, max=1.0, step=1e-6,
                               tooltip="Learning rate (0 = method default: LoRA 1e-4, DreamBooth 5e-6)."),
                io.Int.Input("samples", default=8, min=1, max=256, tooltip="Images generated per condition."),
                io.Int.Input("resolution", default=512, min=64, max=2048, step=8,
                             tooltip="Training and generation size."),
                io.Int.Input("seed", default=0, min=0, max=2**31 - 1, tooltip="Same seed, same test."),
                io.Image.Input("train_2", optional=True, tooltip="Optional second training set."),
                io.String.Input("train_2_name", default="purified", optional=True,
                                tooltip="Name of the second training set."),
                io.Image.Input("train_3", optional=True, tooltip="Optional third training set."),
                io.String.Input("train_3_name", default="set3", optional=True,
                                tooltip="Name of the third training set."),
                LayerSelectionType.Input("layers", optional=True, tooltip="Fine-tune only these cross-attention "
                                         "layers (default: all attention)."),
                io.ClipVision.Input("clip_vision", optional=True,
                                    tooltip="Judge style with this CLIP vision model (from Load CLIP Vision; "
                                            "CLIP cosine, the usual mimicry score). Not connected: the built-in "
                                            "offline descriptor."),
                io.Int.Input("sample_steps", default=25, min=1, max=1000, optional=True,
                             tooltip="DDIM steps per generated image (fewer = faster, rougher samples)."),
                io.Int.Input("reference_samples", default=8, min=1, max=256, optional=True,
                             tooltip="Base-model images forming the 'not the artist' reference set."),
                memory_input(),
            ],
            outputs=[io.Image.Output("report_card", tooltip="Generated images per condition and score bars."),
                     io.String.Output("report", tooltip="JSON with every number and setting, the style embedding "
                                      "that judged, and the verdict.")],
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def execute(cls, clean, train, train_name, model, clip, vae, method, steps, rank, lr, samples, resolution,
                seed, train_2=None, train_2_name="purified", train_3=None, train_3_name="set3",
                layers=None, clip_vision=None, sample_steps=25, reference_samples=8, memory="auto") -> io.NodeOutput:
        if samples < MIN_SAMPLES or reference_samples < MIN_SAMPLES:
            raise ValueError(f"Mimicry Test: samples = {samples} and reference_samples = {reference_samples}; each "
                             f"needs at least {MIN_SAMPLES} for a standard error at all, and {GOOD_SAMPLES} or more "
                             f"for the verdict to mean something (differences under about 2 standard errors are "
                             f"noise)")
        clean_list = comfy_to_list(clean, "clean")
        sets = {train_name or "train": comfy_to_list(train, "train")}
        for img, name in ((train_2, train_2_name), (train_3, train_3_name)):
            if img is not None:
                if name in sets:
                    raise ValueError(f"two training sets are both named {name!r}")
                sets[name] = comfy_to_list(img, name)
        settings = MimicrySettings(method=method, steps=steps, rank=rank, lr=lr or None, samples=samples,
                                   resolution=resolution, seed=seed, sample_steps=sample_steps,
                                   reference_samples=reference_samples,
                                   layers=layers.names if layers is not None else None)
        embedder = ComfyClipVisionEmbedder(clip_vision) if clip_vision is not None else None  # None: descriptor
        with comfy_errors():
            host = ComfyHost(model, clip, vae)
            report = run_mimicry_test(host, clean_list, sets, settings, make_progress(0, cls.hidden.unique_id),
                                      embedder=embedder, memory=memory)
        data = report.to_dict()
        return io.NodeOutput(pil_to_comfy(report.card()), to_json(data),
                             ui={"stylecloak_mimicry": [json_safe(data)], "stylecloak_memory": [{"asked": memory}]})
