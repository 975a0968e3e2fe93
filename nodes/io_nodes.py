"""ComfyUI node to load a folder of artwork as one IMAGE batch (for protecting a set and for mimicry tests)."""
from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from comfy_api.latest import io

from protect_core.images import list_images, load_image

from .comfy_glue import to_json


def square_resize(rgb: torch.Tensor, size: int) -> torch.Tensor:
    """Centre-crop (3, H, W) to a square and resize to ``size`` (antialiased)."""
    h, w = rgb.shape[-2:]
    s = min(h, w)
    top, left = (h - s) // 2, (w - s) // 2
    crop = rgb[:, top:top + s, left:left + s][None]
    return F.interpolate(crop, size=(size, size), mode="bilinear", antialias=True, align_corners=False)[0]


class LoadImageFolder(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="StyleCloak_LoadImageFolder",
            display_name="StyleCloak: Load Image Folder",
            category="StyleCloak",
            description="Loads every image of a folder (a subfolder of ComfyUI's input folder, or a full path) as "
                        "one batch, centre-cropped and resized to a square size (0 keeps sizes; then all images "
                        "must have the same size).",
            inputs=[io.String.Input("folder", default="artist", tooltip="Subfolder of input/, or a full path."),
                    io.Int.Input("size", default=512, min=0, max=4096, step=8,
                                 tooltip="Square size for the batch (0 = keep the original size).")],
            outputs=[io.Image.Output("images"), io.String.Output("files", tooltip="JSON list of loaded files.")],
        )

    @classmethod
    def execute(cls, folder, size) -> io.NodeOutput:
        import folder_paths

        path = folder if os.path.isabs(folder) else os.path.join(folder_paths.get_input_directory(), folder)
        files = list_images([path])
        images = [load_image(f).rgb for f in files]
        if size:
            images = [square_resize(img, size) for img in images]
        elif len({tuple(i.shape) for i in images}) > 1:
            raise ValueError(f"images in {path} have different sizes; set 'size' to batch them")
        batch = torch.stack(images).permute(0, 2, 3, 1).contiguous()
        return io.NodeOutput(batch, to_json([str(f) for f in files]))
