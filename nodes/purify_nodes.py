"""ComfyUI node of the Purify block: run one purifier or a chain of them on images (the attacker's side)."""
from __future__ import annotations


from comfy_api.latest import io

from protect_core.purify.base import available_purifiers, get_purifier, normalise_chain, purify

from .comfy_glue import (comfy_errors, comfy_to_list, json_safe, list_to_comfy, make_progress, memory_input,
                         parse_json_input, to_json)
from .comfy_host import ComfyHost


class Purify(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        names = list(available_purifiers())
        return io.Schema(
            node_id="StyleCloak_Purify",
            display_name="StyleCloak: Purify",
            category="StyleCloak",
            description="Attack a cloak the way a mimic would: IMPRESS, DiffPure, GrIDPure, noisy upscaling, JPEG, "
                        "blur, noise, resize, bilateral+guided filtering. Use it to check that a protection holds.",
            inputs=[
                io.Image.Input("image", tooltip="Images to purify (usually cloaked ones)."),
                io.Combo.Input("method", options=names, default="impress" if "impress" in names else names[0],
                               tooltip="Purifier to run (ignored when 'chain' is set)."),
                io.String.Input("chain", default="", tooltip="Optional chain, e.g. 'jpeg,impress' or JSON "
                                "[[\"jpeg\", {\"quality\": 75}], [\"diffpure\", {}]]."),
                io.String.Input("params", default="", tooltip="JSON parameters for 'method', e.g. "
                                "{\"strength\": 0.1}. Empty = documented defaults."),
                io.Int.Input("seed", default=0, min=0, max=2**31 - 1, tooltip="Same seed, same result."),
                io.Model.Input("model", optional=True, tooltip="Needed by diffusion-based purifiers."),
                io.Clip.Input("clip", optional=True, tooltip="Needed by diffusion-based purifiers."),
                io.Vae.Input("vae", optional=True, tooltip="Needed by IMPRESS and diffusion-based purifiers."),
                memory_input(),
            ],
            outputs=[io.Image.Output("purified"),
                     io.String.Output("report", tooltip="JSON: chain, seconds, memory mode used.")],
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def execute(cls, image, method, chain, params, seed, model=None, clip=None, vae=None,
                memory="auto") -> io.NodeOutput:
        import torch

        stages = parse_chain(chain) if chain.strip() else \
            [(method, parse_json_input(params, "params", dict) if params.strip() else {})]
        needs_host = any(get_purifier(name).needs_host for name, _ in normalise_chain(stages))
        if needs_host:
            comfy_to_list(image, "image")   # too small for the model: one clear line, before any work
        with comfy_errors():
            host = None
            if needs_host:
                if model is None or clip is None or vae is None:
                    raise ValueError("this purifier chain needs the model, clip and vae inputs connected")
                host = ComfyHost(model, clip, vae)
            images = comfy_to_list(image)
            out, info = purify(host, torch.stack(images), stages, seed=seed,
                               progress=make_progress(0, cls.hidden.unique_id), memory=memory)
        return io.NodeOutput(list_to_comfy(list(out)), to_json(info),   # "ran": None when no model ran (filters)
                             ui={"stylecloak_memory": [{"asked": memory, "ran": json_safe(info["memory"])}]})


def parse_chain(text: str):
    """'a,b' or a JSON list of [name, params] pairs -> a chain for protect_core.purify.purify."""
    text = text.strip()
    if text.startswith(("[", "{")):
        return parse_json_input(text, "chain", list)
    return [(name.strip(), {}) for name in text.split(",") if name.strip()]
