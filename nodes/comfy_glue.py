"""What every StyleCloak ComfyUI node shares: tensor layout conversion, the progress/interrupt bridge, previews.

ComfyUI IMAGE tensors are (B, H, W, C) floats in [0, 1]; the engine works on (3, H, W) tensors. Progress goes to
``comfy.utils.ProgressBar`` (with a live preview when the block provides one) and the engine's cooperative
cancellation polls ``comfy.model_management.processing_interrupted()``, so the Cancel button stops a cloak within
one optimisation step; the engine's ``Cancelled`` becomes ComfyUI's own interrupt exception.
UI payloads for the front-end extension (``web/stylecloak.js``) are built here too: before/after pairs saved as
temporary PNGs (``stylecloak_compare``), JSON-safe reports (``stylecloak_mimicry``) and the memory mode asked for
(``stylecloak_memory``: ``{"asked": mode}``, plus ``"ran"`` where the node has no other payload carrying the mode that
ran); and the optional ``memory`` input the model-using nodes share (:mod:`protect_core.memory`'s modes).
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import uuid

import torch

from protect_core.errors import Cancelled, StyleCloakError
from protect_core.memory import CHOICES as MEMORY_CHOICES
from protect_core.progress import Progress


def memory_input():
    """The optional ``memory`` combo of the nodes that run the model (last among the inputs: saved workflows load)."""
    from comfy_api.latest import io

    return io.Combo.Input("memory", options=list(MEMORY_CHOICES), default="auto", optional=True,
                          tooltip="auto: the fastest of fast / balanced / low that fits the free memory; on "
                                  "out-of-memory the next lower mode is used automatically.")


#: The smallest side a model-using node accepts (the same limit as the command line's image loader): smaller
#: images carry no learnable style and only waste the run.
MIN_IMAGE_SIDE = 16


def comfy_to_list(image: torch.Tensor, input_name: str | None = None) -> list[torch.Tensor]:
    """ComfyUI IMAGE (B, H, W, C) -> list of (3, H, W) float tensors (alpha dropped, greyscale expanded).

    With ``input_name`` (nodes that run the model) images below :data:`MIN_IMAGE_SIDE` px a side are refused with
    one line naming the input, before any work."""
    if image is None or image.ndim != 4 or image.shape[0] == 0:
        raise StyleCloakError(f"expected a non-empty IMAGE batch{f' on {input_name!r}' if input_name else ''}")
    if input_name is not None and min(image.shape[1], image.shape[2]) < MIN_IMAGE_SIDE:
        raise StyleCloakError(f"the {input_name!r} images are {image.shape[2]} x {image.shape[1]} px; the model "
                              f"needs at least {MIN_IMAGE_SIDE} px a side (use larger images or upscale first)")
    with torch.inference_mode(False):  # nodes run under inference_mode: make ordinary tensors the engine may edit
        x = image.detach().float().cpu().clone()
        if x.shape[-1] == 1:
            x = x.expand(-1, -1, -1, 3)
        return [img[..., :3].permute(2, 0, 1).contiguous() for img in x]


def list_to_comfy(images: list[torch.Tensor]) -> torch.Tensor:
    """list of (3, H, W) -> ComfyUI IMAGE; images of different sizes are padded to the largest (bottom-right)."""
    h = max(i.shape[-2] for i in images)
    w = max(i.shape[-1] for i in images)
    out = torch.zeros(len(images), h, w, 3)
    for k, img in enumerate(images):
        out[k, : img.shape[-2], : img.shape[-1]] = img.permute(1, 2, 0).float().cpu()
    return out


def make_progress(total: int = 0, node_id=None) -> Progress:
    import comfy.model_management as mm
    import comfy.utils

    bar = comfy.utils.ProgressBar(max(total, 1), node_id=node_id)

    def on_step(done, total_, info):
        preview = info.get("preview")
        if preview is not None:
            preview = ("JPEG", _to_pil(preview), 512)
        bar.update_absolute(done, max(total_, 1), preview)

    return Progress(total, on_step=on_step, should_stop=mm.processing_interrupted)


def _to_pil(x: torch.Tensor):
    from PIL import Image

    arr = (x.detach().float().clamp(0, 1).cpu().permute(1, 2, 0).numpy() * 255).round().astype("uint8")
    return Image.fromarray(arr)


@contextlib.contextmanager
def comfy_errors():
    """Run a block the engine's way inside a ComfyUI node, and map its errors to ComfyUI conventions.

    ComfyUI executes nodes under ``torch.inference_mode()``; the block runs with it switched off, so tensors it
    allocates are ordinary ones (the host's weights stay inference tensors, reached through the engine's views).
    ``Cancelled`` becomes ComfyUI's interrupt; other errors keep their clear message.
    """
    try:
        with torch.inference_mode(False):
            yield
    except Cancelled:
        import comfy.model_management as mm

        raise mm.InterruptProcessingException()


def parse_json_input(text: str, input_name: str, kind=None):
    """The JSON in a STRING input, or a ValueError naming the input, the position and the problem."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"the {input_name!r} input is not valid JSON: {e.msg} at line {e.lineno}, column {e.colno} "
                         f"(got {text.strip()[:80]!r})") from None
    if kind is not None and not isinstance(value, kind):
        want = {dict: "an object like {\"strength\": 0.1}", list: "a list like [[\"jpeg\", {}]]"}[kind]
        raise ValueError(f"the {input_name!r} input must be {want}, got {type(value).__name__}")
    return value


def to_json(data) -> str:
    return json.dumps(data, indent=2, default=str)


def pil_to_comfy(img) -> torch.Tensor:
    """A PIL image -> ComfyUI IMAGE of batch 1."""
    import numpy as np

    arr = np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(arr)[None]


#: At most this many before/after pairs are written as temporary previews per node run.
PREVIEW_LIMIT = 8


def json_safe(data):
    """A copy of ``data`` that strict JSON (the browser's ``JSON.parse``) accepts: NaN / inf become None."""
    if isinstance(data, float):
        return data if math.isfinite(data) else None
    if isinstance(data, dict):
        return {str(k): json_safe(v) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return [json_safe(v) for v in data]
    if data is None or isinstance(data, (str, int, bool)):
        return data
    return str(data)


def save_previews(images: torch.Tensor, prefix: str) -> list[dict]:
    """Write up to :data:`PREVIEW_LIMIT` images of a ComfyUI IMAGE batch as PNGs into ComfyUI's temp folder.

    Returns ``[{"filename", "subfolder", "type": "temp"}]``, what ComfyUI's ``/view`` route serves.
    """
    import folder_paths

    subfolder = "stylecloak"
    folder = os.path.join(folder_paths.get_temp_directory(), subfolder)
    os.makedirs(folder, exist_ok=True)
    tag = uuid.uuid4().hex[:12]
    out = []
    for k, img in enumerate(images[:PREVIEW_LIMIT]):
        img = img.detach().float().cpu()
        img = img.expand(-1, -1, 3) if img.shape[-1] == 1 else img[..., :3]
        name = f"{prefix}_{tag}_{k:02d}.png"
        _to_pil(img.permute(2, 0, 1)).save(os.path.join(folder, name), compress_level=1)
        out.append({"filename": name, "subfolder": subfolder, "type": "temp"})
    return out


def compare_ui(clean: torch.Tensor, protected: torch.Tensor, stats: list[dict]) -> dict:
    """UI payload of web/stylecloak.js's before/after slider: one entry per image pair (first PREVIEW_LIMIT)."""
    pairs = zip(save_previews(clean, "clean"), save_previews(protected, "protected"), stats)
    return {"stylecloak_compare": [{"clean": c, "protected": p, "stats": json_safe(s)} for c, p, s in pairs]}
