"""The StyleCloak tab for Automatic1111 / Forge: Cloak, Select Layers, Purify and Mimicry Test, and its settings.

Only the Gradio subset shared by A1111 (Gradio 3.41) and Forge (Gradio 4.x) is used: Blocks, Tabs/Tab, Row/Column,
Accordion, File, Textbox, Dropdown, Radio, Slider, Number, Checkbox, Button, Gallery, Image, JSON, HTML and
``.click``. Uploads arrive as tempfile objects (3.x) or paths (4.x); both work. Every click runs through the
host's GPU queue (:func:`sdwebui.bridge.gpu_call`) and ends its outputs with a status HTML string, as
``wrap_gradio_gpu_call`` requires. A hidden first input receives a ``task(...)`` id from ``javascript/stylecloak.js``
so the web UI's own progress bar and live preview follow the job.

Handlers (``cloak_click`` ...) are plain functions, testable without Gradio; ``modules.*`` and ``gradio`` are imported
inside functions only.
"""
from __future__ import annotations

import html

from protect_core.errors import Cancelled, StyleCloakError

from . import jobs
from .bridge import current_host, no_change, state_progress, show_preview

SECTION = ("stylecloak", "StyleCloak")
INTRO = ("<p><b>StyleCloak</b> protects artwork against style mimicry with the checkpoint loaded above. The model is "
         "only borrowed: it is exactly as it was afterwards. Results are lossless PNG; JPEG or resizing weakens a "
         "cloak. The Interrupt button stops a job and leaves no files.</p>")

#: The Mimicry Test's judge field: a local transformers CLIP vision folder, or empty for the offline descriptor.
CLIP_VISION_LABEL = ("Style judge: a local CLIP vision model folder (transformers CLIPVisionModelWithProjection or "
                     "CLIPModel; empty = the built-in offline descriptor; nothing is downloaded)")


def _methods() -> list[str]:
    from protect_core.cloak.base import available_methods

    return list(available_methods())


def _purifiers() -> list[str]:
    from protect_core.purify.base import available_purifiers

    return list(available_purifiers())


def _intensities() -> list[str]:
    from protect_core.cloak.presets import PRESETS

    return list(PRESETS)


def _memory_modes() -> list[str]:
    from protect_core.memory import CHOICES

    return list(CHOICES)


#: option key -> (default, label, kind, choices function or slider range)
SETTINGS = {
    "stylecloak_outdir": ("outputs/stylecloak", "Output folder (relative to the web UI folder)", "text", None),
    "stylecloak_method": ("glaze", "Default cloak method", "dropdown", _methods),
    "stylecloak_intensity": ("default", "Default cloak intensity", "radio", _intensities),
    "stylecloak_robust": (False, "Robust cloaks by default (survive JPEG/resize/blur; slower)", "checkbox", None),
    "stylecloak_batch_size": (1, "Images cloaked together (more = faster, more GPU memory)", "slider", (1, 8, 1)),
    "stylecloak_tile": (0, "Largest side cloaked in one piece, px (0 = method default)", "slider", (0, 2048, 64)),
    "stylecloak_sdxl_size": (1024, "SDXL size conditioning (px)", "slider", (256, 2048, 64)),
    "stylecloak_purifier": ("impress", "Default purifier", "dropdown", _purifiers),
    "stylecloak_mimicry_steps": (200, "Default mimicry-test fine-tuning steps", "slider", (0, 2000, 10)),
    "stylecloak_clip_vision": ("", "Default mimicry-test style judge: a local CLIP vision model folder (empty = the "
                               "offline descriptor)", "text", None),
    "stylecloak_memory": ("auto", "Memory mode for cloak, purify and mimicry test (auto: the fastest that fits the "
                          "free GPU memory; on out-of-memory the next lower mode is used automatically)", "radio",
                          _memory_modes),
}


def opt(key: str):
    """The user's setting ``key`` (web UI settings), or its default outside a web UI / before settings load."""
    try:
        from modules import shared  # type: ignore

        value = getattr(shared.opts, key)
    except (ImportError, AttributeError):
        value = None
    return SETTINGS[key][0] if value is None else value


def on_ui_settings() -> None:
    import gradio as gr
    from modules import shared  # type: ignore

    for key, (default, label, kind, extra) in SETTINGS.items():
        component, args = None, None
        if kind == "dropdown":
            component, args = gr.Dropdown, {"choices": extra()}
        elif kind == "radio":
            component, args = gr.Radio, {"choices": extra()}
        elif kind == "slider":
            component, args = gr.Slider, {"minimum": extra[0], "maximum": extra[1], "step": extra[2]}
        shared.opts.add_option(key, shared.OptionInfo(default, label, component, args, section=SECTION))


# ---------------------------------------------------------------------------------------------------- handlers
def _state():
    try:
        from modules import shared  # type: ignore

        return shared.state
    except ImportError:
        return None


def interrupt() -> None:
    """The tab's Interrupt button: the running job stops within one step and writes nothing."""
    state = _state()
    if state is None:
        return
    if callable(getattr(state, "interrupt", None)):
        state.interrupt()
    else:
        state.interrupted = True


def _status(kind: str, text: str) -> str:
    colour = {"ok": "#2e7d32", "error": "#c62828", "cancel": "#ef6c00"}[kind]
    return f"<p style='color:{colour}'>{html.escape(text)}</p>"


def _host():
    return current_host(sdxl_size=int(opt("stylecloak_sdxl_size")))


def run_job(label: str, job, n_outputs: int, shape):
    """Run ``job(progress, state) -> JobResult``; ``shape(result)`` gives the outputs before the status HTML.

    Expected failures (bad input, no model, interrupted) become a status message; others propagate to the host's
    error display. On failure every other output is left unchanged.
    """
    state = _state()
    try:
        result = job(state_progress(state, label), state)
    except Cancelled:
        return (*[no_change()] * (n_outputs - 1), _status("cancel", "Interrupted: nothing was written; the model "
                                                          "is unchanged."))
    except (StyleCloakError, ValueError, FileNotFoundError) as e:
        return (*[no_change()] * (n_outputs - 1), _status("error", f"{label}: {e}"))
    return (*shape(result), _status("ok", result.summary))


def _files(result) -> list[str]:
    return [str(p) for p in result.files]


def cloak_click(task_id, files, folder, method, intensity, target, robust, steps, eps255, seed, layers):
    def job(progress, state):
        return jobs.cloak_job(_host, jobs.gather_inputs(files, folder), out_root=opt("stylecloak_outdir"),
                              method=method, intensity=intensity, target_prompt=target, robust=robust,
                              seed=int(seed or 0), steps=int(steps or 0), eps255=float(eps255 or 0), layers=layers,
                              batch_size=int(opt("stylecloak_batch_size")), tile=int(opt("stylecloak_tile")),
                              memory=opt("stylecloak_memory"), progress=progress,
                              on_image=lambda i, r: show_preview(state, r.image))

    return run_job("cloak", job, 4, lambda r: (r.gallery, _files(r), r.report))


def layers_click(task_id, files, folder, top_k, style_prompt, content_prompt, timesteps, noise_seeds, size, seed,
                 score="causal"):
    def job(progress, state):
        return jobs.layers_job(_host, jobs.gather_inputs(files, folder), out_root=opt("stylecloak_outdir"),
                               top_k=int(top_k), style_prompt=style_prompt, content_prompt=content_prompt,
                               timesteps=timesteps, noise_seeds=int(noise_seeds), size=int(size),
                               seed=int(seed or 0), score=score or "causal", progress=progress)

    return run_job("select layers", job, 5,
                   lambda r: (r.gallery[0][0], _files(r), r.report, r.report["selection_path"]))


def purify_click(task_id, files, folder, method, chain, params, seed):
    def job(progress, state):
        return jobs.purify_job(_host, jobs.gather_inputs(files, folder), out_root=opt("stylecloak_outdir"),
                               method=method, chain=chain, params=params, seed=int(seed or 0),
                               memory=opt("stylecloak_memory"), progress=progress)

    return run_job("purify", job, 4, lambda r: (r.gallery, _files(r), r.report))


def mimicry_click(task_id, clean_files, clean_folder, train_files, train_folder, train_name, train2_files,
                  train2_folder, train2_name, method, steps, rank, samples, resolution, seed, layers,
                  clip_vision=""):
    def job(progress, state):
        sets = {(train_name or "cloaked").strip(): jobs.gather_inputs(train_files, train_folder)}
        if train2_files or (train2_folder or "").strip():
            name2 = (train2_name or "set 2").strip()
            if name2 in sets:
                raise ValueError(f"both training sets are named {name2!r}; give them different names")
            sets[name2] = jobs.gather_inputs(train2_files, train2_folder)
        return jobs.mimicry_job(_host, jobs.gather_inputs(clean_files, clean_folder), sets,
                                out_root=opt("stylecloak_outdir"), method=method, steps=int(steps),
                                rank=int(rank), samples=int(samples), resolution=int(resolution),
                                seed=int(seed or 0), layers=layers, memory=opt("stylecloak_memory"),
                                clip_vision=clip_vision or "", progress=progress)

    return run_job("mimicry test", job, 4, lambda r: (r.gallery[0][0], _files(r), r.report))


# ---------------------------------------------------------------------------------------------------- layout
def _run_buttons(gr, label: str, section: str):
    """The section's run button with its Interrupt button beside it (one row, under the section's inputs)."""
    with gr.Row():
        run = gr.Button(label, variant="primary", elem_id=f"stylecloak_{section}_run")
        stop = gr.Button("Interrupt", elem_id=f"stylecloak_{section}_interrupt")
    return run, stop


def _click(buttons, fn, inputs, outputs, section: str) -> None:
    """``run.click`` through the GPU queue, with the JS that gives the job a task id (``_js`` in Gradio 3), and
    ``stop.click`` -> :func:`interrupt` (not queued, so it runs while the job holds the queue)."""
    import gradio as gr

    from .bridge import gpu_call

    run, stop = buttons
    key = "_js" if int(gr.__version__.split(".")[0]) < 4 else "js"
    run.click(fn=gpu_call(fn, len(outputs)), inputs=inputs, outputs=outputs,
              **{key: f"stylecloak_submit_{section}"})
    stop.click(fn=interrupt, inputs=[], outputs=[])


def _images_input(gr, label: str, section: str):
    files = gr.File(label=label, file_count="multiple", file_types=["image"], elem_id=f"stylecloak_{section}_files")
    folder = gr.Textbox(label="...or a folder of images on this computer", placeholder="C:/art or /home/me/art")
    return files, folder


def _results(gr, section: str, image: str = ""):
    """The results column; ``image``: the label of a single result image (else a gallery of results)."""
    gr.HTML("", elem_id=f"stylecloak_{section}_progress")
    if image:
        shown = gr.Image(label=image, type="pil", interactive=False, elem_id=f"stylecloak_{section}_gallery")
    else:
        shown = gr.Gallery(label="Results", columns=4, elem_id=f"stylecloak_{section}_gallery")
    files = gr.File(label="Downloads (lossless PNG + report.json)", file_count="multiple", interactive=False)
    with gr.Accordion("Report (JSON)", open=False):
        report = gr.JSON(label="Report")
    status = gr.HTML("", elem_id=f"stylecloak_{section}_status")
    return shown, files, report, status


def build_tab():
    """The StyleCloak tab as a ``gr.Blocks``."""
    import gradio as gr

    with gr.Blocks(analytics_enabled=False) as tab:
        gr.HTML(INTRO)
        with gr.Tabs():
            with gr.Tab("Cloak"):
                with gr.Row():
                    with gr.Column():
                        task = gr.Textbox(visible=False)
                        files, folder = _images_input(gr, "Artwork to protect", "cloak")
                        methods = _methods()
                        method = gr.Dropdown(label="Method", choices=methods, elem_id="stylecloak_cloak_method",
                                             value=opt("stylecloak_method") if opt("stylecloak_method") in methods
                                             else methods[0])
                        intensity = gr.Radio(label="Intensity", choices=_intensities(),
                                             value=opt("stylecloak_intensity"))
                        target = gr.Textbox(label="Target style (Glaze: a style far from yours; empty = default)")
                        robust = gr.Checkbox(label="Robust: survive JPEG, resizing, blur and noise (slower)",
                                             value=bool(opt("stylecloak_robust")))
                        with gr.Accordion("Expert settings", open=False):
                            steps = gr.Number(label="Steps (0 = from intensity)", value=0, precision=0,
                                              elem_id="stylecloak_cloak_steps")
                            eps = gr.Slider(label="L-inf budget in 0-255 levels (0 = from intensity)", minimum=0,
                                            maximum=32, step=0.5, value=0)
                            seed = gr.Number(label="Seed", value=0, precision=0)
                            layers = gr.Textbox(label="Layer selection (layers.json from Select Layers, or a preset: "
                                                "all / down / mid / up / styleprotect)")
                        run = _run_buttons(gr, "Cloak", "cloak")
                    with gr.Column():
                        out = _results(gr, "cloak")
                _click(run, cloak_click, [task, files, folder, method, intensity, target, robust, steps, eps, seed,
                                          layers], list(out), "cloak")
            with gr.Tab("Select Layers"):
                with gr.Row():
                    with gr.Column():
                        task_l = gr.Textbox(visible=False)
                        files_l, folder_l = _images_input(gr, "The artist's images", "layers")
                        top_k = gr.Slider(label="Layers to select", minimum=1, maximum=16, step=1, value=4)
                        style_p = gr.Textbox(label="Style prompt (empty = default)")
                        content_p = gr.Textbox(label="Content prompt (empty = default)")
                        timesteps = gr.Textbox(label="Timesteps", value="200,500,800")
                        noise_seeds = gr.Slider(label="Noise draws per timestep", minimum=1, maximum=8, step=1,
                                                value=2)
                        size = gr.Slider(label="Analysis size (px)", minimum=64, maximum=1024, step=64, value=512)
                        seed_l = gr.Number(label="Seed", value=0, precision=0)
                        score_l = gr.Dropdown(label="Score (causal: what a layer carries downstream; activation: "
                                                    "how differently it responds; combined: both)",
                                              choices=["causal", "activation", "combined"], value="causal")
                        run_l = _run_buttons(gr, "Select layers", "layers")
                    with gr.Column():
                        heat, files_lo, report_l, status_l = _results(gr, "layers", image="Style sensitivity per layer (heat map)")
                _click(run_l, layers_click, [task_l, files_l, folder_l, top_k, style_p, content_p, timesteps,
                                             noise_seeds, size, seed_l, score_l],
                       [heat, files_lo, report_l, layers, status_l], "layers")
            with gr.Tab("Purify"):
                with gr.Row():
                    with gr.Column():
                        task_p = gr.Textbox(visible=False)
                        files_p, folder_p = _images_input(gr, "Images to purify (usually cloaked ones)", "purify")
                        purifiers = _purifiers()
                        default_p = opt("stylecloak_purifier")
                        pmethod = gr.Dropdown(label="Purifier", choices=purifiers,
                                              value=default_p if default_p in purifiers else purifiers[0])
                        chain = gr.Textbox(label="Chain instead (e.g. jpeg,impress)")
                        params = gr.Textbox(label='Parameters as JSON (e.g. {"strength": 0.1}; empty = defaults)')
                        seed_p = gr.Number(label="Seed", value=0, precision=0)
                        run_p = _run_buttons(gr, "Purify", "purify")
                    with gr.Column():
                        out_p = _results(gr, "purify")
                _click(run_p, purify_click, [task_p, files_p, folder_p, pmethod, chain, params, seed_p], list(out_p),
                       "purify")
            with gr.Tab("Mimicry Test"):
                with gr.Row():
                    with gr.Column():
                        task_m = gr.Textbox(visible=False)
                        clean_f, clean_d = _images_input(gr, "Clean images (the style reference)", "mimicry_clean")
                        name1 = gr.Textbox(label="Training set 1 name", value="cloaked")
                        train_f, train_d = _images_input(gr, "Training set 1 (e.g. the cloaked images)",
                                                         "mimicry_train")
                        with gr.Accordion("Optional training set 2", open=False):
                            name2 = gr.Textbox(label="Training set 2 name", value="purified")
                            train2_f, train2_d = _images_input(gr, "Training set 2", "mimicry_train2")
                        mmethod = gr.Radio(label="Fine-tune", choices=["lora", "dreambooth"], value="lora")
                        msteps = gr.Slider(label="Fine-tuning steps per set", minimum=0, maximum=2000, step=10,
                                           value=int(opt("stylecloak_mimicry_steps")))
                        rank = gr.Slider(label="LoRA rank", minimum=1, maximum=64, step=1, value=4)
                        samples = gr.Slider(label="Images generated per condition", minimum=1, maximum=32, step=1,
                                            value=8)
                        resolution = gr.Slider(label="Resolution (px)", minimum=64, maximum=1024, step=64, value=512)
                        seed_m = gr.Number(label="Seed", value=0, precision=0)
                        layers_m = gr.Textbox(label="Layer selection (optional; default all attention layers)")
                        clip_m = gr.Textbox(label=CLIP_VISION_LABEL, value=str(opt("stylecloak_clip_vision") or ""),
                                            placeholder="C:/models/clip-vit-large-patch14")
                        run_m = _run_buttons(gr, "Run mimicry test", "mimicry")
                    with gr.Column():
                        out_m = _results(gr, "mimicry", image="Report card")
                _click(run_m, mimicry_click, [task_m, clean_f, clean_d, train_f, train_d, name1, train2_f, train2_d,
                                              name2, mmethod, msteps, rank, samples, resolution, seed_m, layers_m,
                                              clip_m],
                       list(out_m), "mimicry")
    return tab


def on_ui_tabs():
    return [(build_tab(), "StyleCloak", "stylecloak")]
