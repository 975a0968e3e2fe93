"""What a StyleCloak job borrows from A1111/Forge: the loaded model, ``shared.state`` progress and previews, the stop
button, and the host's GPU queue.

* :func:`host_for` picks the adapter: Forge's ``forge_objects`` when present, else A1111's ``sd_model``;
* :func:`current_host` first asks Forge (2024+) to load the selected checkpoint (``forge_model_reload``, as txt2img
  does): that Forge loads a model only when a job needs it, so before the first generation ``shared.sd_model`` is a
  placeholder;
* :func:`state_progress` makes the engine's :class:`~protect_core.progress.Progress` report to ``shared.state``
  (``sampling_step`` / ``sampling_steps`` / ``job_count`` / ``textinfo``, which A1111's progress API and the tab's
  progress bar read) and stop when ``shared.state.interrupted`` is set (the Interrupt button);
* :func:`show_preview` puts an image into ``shared.state``'s live preview;
* :func:`gpu_call` wraps a click handler with ``modules.call_queue.wrap_gradio_gpu_call`` (one GPU job at a time,
  shared with txt2img), and in Forge runs it on Forge's main model thread.

The ``modules`` imports happen inside functions, so this module imports without a web UI (tests pass fakes).
"""
from __future__ import annotations

import functools
from typing import Callable

from protect_core.progress import Progress


def host_for(sd_model, autocast=None, forge_load=None, sdxl_size: int = 1024):
    """The HostModel adapter of ``sd_model`` (Forge or A1111)."""
    if getattr(sd_model, "forge_objects", None) is not None:
        from .forge_host import ForgeHost

        return ForgeHost.from_sd_model(sd_model, load=forge_load, sdxl_size=sdxl_size)
    from .a1111_host import A1111Host

    return A1111Host(sd_model, autocast=autocast, sdxl_size=sdxl_size)


def forge_selected_model():
    """The checkpoint selected in Forge (2024+), loaded now by Forge's own ``forge_model_reload`` (a no-op when it is
    loaded already); None in A1111 and older Forge, which load it themselves. No checkpoint: Forge's ValueError."""
    try:
        from modules import sd_models  # type: ignore
    except ImportError:
        return None
    reload = getattr(sd_models, "forge_model_reload", None)
    if not callable(reload):
        return None
    data = getattr(sd_models, "model_data", None)
    if data is not None and not getattr(data, "forge_loading_parameters", None):
        from modules_forge import main_entry  # type: ignore  # what the checkpoint dropdown calls at start-up

        main_entry.refresh_model_loading_parameters()
    model, _ = reload()
    return model


def current_host(sdxl_size: int = 1024):
    """The adapter of the model the web UI has loaded now (in Forge: the selected one, loaded if need be)."""
    from modules import shared  # type: ignore

    model = forge_selected_model()
    if model is None:
        model = shared.sd_model
    if getattr(model, "forge_objects", None) is not None:
        return host_for(model, sdxl_size=sdxl_size)
    from .a1111_host import A1111Host

    return A1111Host.from_shared(sdxl_size=sdxl_size)


def to_pil(image):
    """A (3, H, W) / (1, 3, H, W) tensor in [0, 1] (or a PIL image) as an RGB PIL image."""
    from PIL import Image

    if isinstance(image, Image.Image):
        return image
    x = image.detach().float().cpu()
    x = x[0] if x.ndim == 4 else x
    arr = (x.clamp(0, 1).permute(1, 2, 0).numpy() * 255).round().astype("uint8")
    return Image.fromarray(arr)


def show_preview(state, image) -> None:
    """Show ``image`` as ``state``'s live preview (A1111 1.6+/Forge ``assign_current_image``, else the fields)."""
    if state is None or image is None:
        return
    pil = to_pil(image)
    if callable(getattr(state, "assign_current_image", None)):
        state.assign_current_image(pil)
    else:
        state.current_image = pil
        state.id_live_preview = getattr(state, "id_live_preview", 0) + 1


def state_progress(state, label: str) -> Progress:
    """A Progress that reports to ``state`` (shared.state) and stops when ``state.interrupted`` is set."""
    if state is None:
        return Progress()
    state.job_count, state.job_no = 1, 0
    state.sampling_step, state.sampling_steps = 0, 0
    state.textinfo = f"StyleCloak: {label}"

    def on_step(done: int, total: int, info: dict) -> None:
        state.sampling_steps = max(int(total), int(done), 1)
        state.sampling_step = int(done)
        loss = info.get("loss")
        extra = f", loss {float(loss):.4g}" if loss is not None else ""
        state.textinfo = f"StyleCloak: {label} step {done}/{total}{extra}"
        if info.get("preview") is not None:
            show_preview(state, info["preview"])

    return Progress(on_step=on_step, should_stop=lambda: bool(getattr(state, "interrupted", False)))


def gpu_call(fn: Callable, n_outputs: int) -> Callable:
    """``fn`` queued like txt2img (``wrap_gradio_gpu_call``); outside a web UI, ``fn`` itself.

    ``wrap_gradio_gpu_call`` appends timing HTML to the last output and, on an unexpected error, returns
    ``extra_outputs + [error HTML]``: every handler here therefore ends its outputs with an HTML string.
    """
    try:
        from modules.call_queue import wrap_gradio_gpu_call  # type: ignore
    except ImportError:
        return fn
    target = fn
    try:
        from modules_forge import main_thread  # type: ignore
    except ImportError:
        main_thread = None
    if main_thread is not None:  # Forge runs model work on its main model thread
        @functools.wraps(fn)
        def target(*args, **kwargs):
            return main_thread.run_and_wait_result(fn, *args, **kwargs)
    return wrap_gradio_gpu_call(target, extra_outputs=[no_change() for _ in range(n_outputs - 1)])


def no_change():
    """Gradio's "leave this output as it is" value (3.x and 4.x)."""
    try:
        import gradio as gr

        return gr.update()
    except (ImportError, AttributeError):  # no gradio (tests), or a stray 'gradio' folder on the path
        return None

