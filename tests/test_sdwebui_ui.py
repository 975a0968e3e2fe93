"""The A1111/Forge entry script and tab with fake ``modules.*`` web-UI modules.

The script is loaded the way A1111 loads extension scripts (``spec_from_file_location``); its callbacks register the
settings and the tab. Building the Gradio Blocks needs gradio (skipped when it is not importable; run this file in a
venv with gradio 3.41 or 4.x to check both). The click handlers are driven through a stand-in of
``wrap_gradio_gpu_call`` with an A1111-shaped and a Forge-shaped tiny model: files, status, interrupt, and the
model unchanged.
"""
from __future__ import annotations

import contextlib
import importlib.util
import os
import sys
import types
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ldm_tiny import a1111_model, forge_model, one_thread  # noqa: F401 (autouse fixture)

ROOT = Path(__file__).resolve().parents[1]


class Opts:
    def __init__(self, outdir):
        self.stylecloak_outdir = str(outdir)
        self.added = {}

    def add_option(self, key, info):
        self.added[key] = info


class OptionInfo:
    def __init__(self, default=None, label="", component=None, component_args=None, onchange=None, section=None,
                 **kw):
        self.default, self.label, self.component, self.component_args, self.section = (default, label, component,
                                                                                        component_args, section)


class State:
    def __init__(self):
        self.interrupted, self.previews, self.jobs, self.interrupt_at = False, [], [], None

    def begin(self, job="(unknown)"):
        self.interrupted = False
        self.jobs.append(job)

    def end(self):
        self.job_count = 0

    def assign_current_image(self, image):
        self.previews.append(image)

    def __setattr__(self, key, value):
        super().__setattr__(key, value)
        if key == "sampling_step" and self.interrupt_at is not None and value >= self.interrupt_at:
            super().__setattr__("interrupted", True)


def fake_webui(monkeypatch, sd_model, outdir, forge=False):
    """sys.modules entries for modules.{shared, script_callbacks, devices, call_queue} (+ modules_forge)."""
    registered = {"tabs": [], "settings": []}
    shared = types.SimpleNamespace(opts=Opts(outdir), OptionInfo=OptionInfo, state=State(), sd_model=sd_model,
                                   cmd_opts=types.SimpleNamespace(lowvram=False, medvram=False))
    callbacks = types.SimpleNamespace(on_ui_tabs=registered["tabs"].append,
                                      on_ui_settings=registered["settings"].append)
    devices = types.SimpleNamespace(autocast=contextlib.nullcontext)
    wrapped = []

    def wrap_gradio_gpu_call(func, extra_outputs=None):  # what A1111's queue wrapper does with a handler
        wrapped.append(extra_outputs)

        def f(*args):
            shared.state.begin(job=args[0])
            try:
                res = list(func(*args))
            except Exception as e:
                res = list(extra_outputs) + [f"<div class='error'>{e}</div>"]
            shared.state.end()
            res[-1] += "<div class='performance'>Time taken: 1s</div>"
            return tuple(res)

        return f

    package = types.ModuleType("modules")
    package.__path__ = []
    mods = {"modules": package, "modules.shared": shared, "modules.script_callbacks": callbacks,
            "modules.devices": devices,
            "modules.call_queue": types.SimpleNamespace(wrap_gradio_gpu_call=wrap_gradio_gpu_call)}
    for name, mod in mods.items():
        if name != "modules":
            setattr(package, name.split(".")[1], mod)
        monkeypatch.setitem(sys.modules, name, mod)
    main_thread_calls = []
    if forge:
        def run_and_wait_result(fn, *a, **k):
            main_thread_calls.append(fn.__name__)
            return fn(*a, **k)

        mt = types.SimpleNamespace(run_and_wait_result=run_and_wait_result)
        monkeypatch.setitem(sys.modules, "modules_forge", types.SimpleNamespace(main_thread=mt))
        monkeypatch.setitem(sys.modules, "modules_forge.main_thread", mt)
    else:
        monkeypatch.setitem(sys.modules, "modules_forge", None)  # import fails, as in A1111
    return types.SimpleNamespace(shared=shared, registered=registered, wrapped=wrapped, main_thread=main_thread_calls)


def load_script():
    """Execute scripts/stylecloak_tab.py as A1111's script loader does."""
    path = ROOT / "scripts" / "stylecloak_tab.py"
    spec = importlib.util.spec_from_file_location(path.name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def art(tmp_path):
    folder = tmp_path / "art"
    folder.mkdir()
    g = np.random.default_rng(3)
    for name in ("x.png", "y.png"):
        Image.fromarray(g.integers(0, 255, (48, 48, 3), dtype=np.uint8)).save(folder / name)
    return folder


def test_only_one_file_in_scripts():
    assert [p.name for p in (ROOT / "scripts").iterdir() if p.suffix == ".py"] == ["stylecloak_tab.py"]


def _gradio():
    """gradio, or a skip when it is not installed; with STYLECLOAK_REQUIRE_GRADIO=1 (tools/check_gradio_versions.sh)
    a missing gradio fails instead, so the real-version check cannot pass by skipping."""
    if os.environ.get("STYLECLOAK_REQUIRE_GRADIO") == "1":
        import gradio

        return gradio
    gr = pytest.importorskip("gradio")
    if not hasattr(gr, "Blocks"):  # e.g. gradio's own temp folder /tmp/gradio seen as a namespace package
        pytest.skip(f"'gradio' here is not the gradio package ({getattr(gr, '__path__', gr)})")
    return gr


def test_script_registers_tab_and_settings(monkeypatch, tmp_path):
    web = fake_webui(monkeypatch, None, tmp_path)
    load_script()
    assert len(web.registered["tabs"]) == 1 and len(web.registered["settings"]) == 1
    gr = _gradio()
    web.registered["settings"][0]()
    added = web.shared.opts.added
    assert {"stylecloak_outdir", "stylecloak_method", "stylecloak_intensity"} <= set(added)
    assert all(i.section == ("stylecloak", "StyleCloak") for i in added.values())
    assert "glaze" in added["stylecloak_method"].component_args["choices"]
    assert added["stylecloak_method"].component is gr.Dropdown and added["stylecloak_batch_size"].component is gr.Slider
    memory = added["stylecloak_memory"]
    assert memory.component is gr.Radio and memory.default == "auto"
    assert memory.component_args["choices"] == ["auto", "fast", "balanced", "low"]


def test_memory_setting_is_registered_like_the_others(monkeypatch, tmp_path):
    """Without gradio installed: on_ui_settings with stand-in component classes (the real ones: the test above)."""
    from protect_core.memory import CHOICES
    from sdwebui import ui

    web = fake_webui(monkeypatch, None, tmp_path)
    gr = types.SimpleNamespace(Dropdown=type("Dropdown", (), {}), Radio=type("Radio", (), {}),
                               Slider=type("Slider", (), {}))
    monkeypatch.setitem(sys.modules, "gradio", gr)
    ui.on_ui_settings()
    added = web.shared.opts.added
    assert set(added) == set(ui.SETTINGS)
    memory = added["stylecloak_memory"]
    assert (memory.default, memory.component, memory.section) == ("auto", gr.Radio, ("stylecloak", "StyleCloak"))
    assert memory.component_args == {"choices": list(CHOICES)}
    assert "auto" in memory.label and "out-of-memory" in memory.label
    assert ui.opt("stylecloak_memory") == "auto", "unset: the default"


@pytest.mark.parametrize("setting", [None, "low"])
def test_clicks_run_their_job_in_the_memory_setting(monkeypatch, tmp_path, art, setting):
    from sdwebui import jobs, ui
    from sdwebui.bridge import gpu_call

    web = fake_webui(monkeypatch, None, tmp_path / "out")
    if setting is not None:
        web.shared.opts.stylecloak_memory = setting
    seen = {}

    def recorder(name):
        def job(*args, **kwargs):
            seen[name] = kwargs["memory"]
            return jobs.JobResult(tmp_path, [], [(None, "x")], {}, "done")
        return job

    for name in ("cloak_job", "purify_job", "mimicry_job"):
        monkeypatch.setattr(jobs, name, recorder(name))
    gpu_call(ui.cloak_click, 4)("task(a)", [], str(art), "mist", "low", "", False, 2, 4, 0, "")
    gpu_call(ui.purify_click, 4)("task(b)", [], str(art), "impress", "", "", 0)
    gpu_call(ui.mimicry_click, 4)("task(c)", [], str(art), [], str(art), "cloaked", [], "", "", "lora", 2, 4, 1,
                                  64, 0, "")
    assert seen == dict.fromkeys(("cloak_job", "purify_job", "mimicry_job"), setting or "auto")


def _built_tab(monkeypatch, outdir):
    web = fake_webui(monkeypatch, None, outdir)
    load_script()
    gr = _gradio()
    (tab, title, elem_id), = web.registered["tabs"][0]()
    assert isinstance(tab, gr.Blocks) and (title, elem_id) == ("StyleCloak", "stylecloak")
    return web, tab


def _js(dep) -> str:
    return dep.get("js") or dep.get("_js") or ""  # Gradio 4 / Gradio 3 name of a dependency's JS


def _block_fn(tab, index: int, dep):
    """The registered Python function of ``dep`` (Gradio 3: ``tab.fns`` is a list; 4.x: a dict by dependency id)."""
    fns = tab.fns
    return (fns[dep["id"]] if isinstance(fns, dict) else fns[index]).fn


def test_tab_blocks_build_with_every_section(monkeypatch, tmp_path):
    web, tab = _built_tab(monkeypatch, tmp_path)
    kinds = {}
    for block in tab.blocks.values():
        kinds.setdefault({"TabItem": "Tab"}.get(type(block).__name__, type(block).__name__), []).append(block)
    assert [t.label for t in kinds["Tab"]] == ["Cloak", "Select Layers", "Purify", "Mimicry Test"]
    buttons = sorted(b.value for b in kinds["Button"])
    assert buttons == sorted(["Cloak", "Select layers", "Purify", "Run mimicry test"] + ["Interrupt"] * 4)
    assert len(kinds["File"]) == 10 and len(kinds["JSON"]) == 4  # 6 upload + 4 download File components
    assert len(kinds["Gallery"]) == 2 and len(kinds["Image"]) == 2  # cloak/purify galleries, layers/mimicry reports
    deps = tab.config["dependencies"]
    js = sorted(_js(d) for d in deps if "stylecloak_submit" in _js(d))
    assert js == ["stylecloak_submit_cloak", "stylecloak_submit_layers", "stylecloak_submit_mimicry",
                  "stylecloak_submit_purify"]
    assert sorted(len(e) for e in web.wrapped) == [3, 3, 3, 4]  # error outputs: all but the status HTML
    stops = [d for d in deps if not d.get("inputs") and not d.get("outputs")]
    assert len(stops) == 4  # one Interrupt button per section
    source = (ROOT / "javascript" / "stylecloak.js").read_text()
    assert all(f"function {name}(" in source for name in js)
    # Select Layers writes its selection into the Cloak section's layer field (output 4 of 5)
    (layers_dep,) = [d for d in deps if _js(d) == "stylecloak_submit_layers"]
    target = tab.blocks[layers_dep["outputs"][3]]
    assert type(target).__name__ == "Textbox" and target.label.startswith("Layer selection")


def test_clicks_run_through_the_built_blocks(monkeypatch, tmp_path, art):
    """Purify (filters need no model) and Interrupt, called through the Blocks' own function registry with inputs
    matched to the wired components by label: the wiring order agrees with the handler signatures."""
    web, tab = _built_tab(monkeypatch, tmp_path / "out")
    deps = tab.config["dependencies"]
    (index, dep), = [(i, d) for i, d in enumerate(deps) if _js(d) == "stylecloak_submit_purify"]
    by_label = {"...or a folder of images on this computer": str(art), "Purifier": "jpeg",
                "Parameters as JSON (e.g. {\"strength\": 0.1}; empty = defaults)": '{"quality": 60}'}
    inputs = [tab.blocks[i] for i in dep["inputs"]]
    assert [type(c).__name__ for c in inputs] == ["Textbox", "File", "Textbox", "Dropdown", "Textbox", "Textbox",
                                                   "Number"]
    args = [by_label.get(c.label, c.value) for c in inputs]
    args[0] = "task(purify)"  # the hidden task-id field, filled by javascript/stylecloak.js
    result = _block_fn(tab, index, dep)(*args)
    outputs = [type(tab.blocks[i]).__name__ for i in dep["outputs"]]
    assert outputs == ["Gallery", "File", "JSON", "HTML"] and len(result) == len(outputs)
    gallery, files, report, status = result
    assert "Purified 2 image(s)" in status and len(gallery) == 2 and web.shared.state.jobs == ["task(purify)"]
    assert sorted(Path(f).name for f in files) == ["report.json", "x.png", "y.png"]

    (stop_index, stop), = [(i, d) for i, d in enumerate(deps) if not d.get("inputs") and not d.get("outputs")][:1]
    assert not web.shared.state.interrupted
    _block_fn(tab, stop_index, stop)()
    assert web.shared.state.interrupted


@pytest.mark.parametrize("host_kind", ["a1111", "forge"])
def test_cloak_click_through_the_gpu_queue(monkeypatch, tmp_path, art, integrity, host_kind):
    from sdwebui import ui
    from sdwebui.bridge import current_host, gpu_call

    model = a1111_model("tiny")[0] if host_kind == "a1111" else forge_model("tiny")[0]
    web = fake_webui(monkeypatch, model, tmp_path / "out", forge=host_kind == "forge")
    check = integrity(current_host())
    click = gpu_call(ui.cloak_click, 4)
    uploads = [str(art / "x.png"), str(art / "y.png")]
    gallery, files, report, status = click("task(abc)", uploads, "", "mist", "low", "", False, 2, 4, 0, "")
    check.assert_unchanged()
    assert "Cloaked 2 image(s)" in status and "Time taken" in status
    assert sorted(Path(f).name for f in files) == ["report.json", "x.png", "y.png"]
    assert all(Path(f).parent.parent == tmp_path / "out" for f in files)
    assert len(gallery) == 4 and report["method"] == "mist"
    assert web.shared.state.jobs == ["task(abc)"] and len(web.shared.state.previews) == 2
    assert web.shared.state.sampling_step == web.shared.state.sampling_steps > 0
    assert web.main_thread == (["cloak_click"] if host_kind == "forge" else [])

    web.shared.state.interrupt_at = 1
    *_, status = click("task(def)", uploads, "", "mist", "low", "", False, 3, 4, 0, "")
    assert "Interrupted" in status
    assert len(list((tmp_path / "out").iterdir())) == 1  # only the first job's folder
    check.assert_unchanged()


def test_interrupt_button_sets_the_flag(monkeypatch, tmp_path):
    from sdwebui import ui

    web = fake_webui(monkeypatch, None, tmp_path)
    ui.interrupt()
    assert web.shared.state.interrupted


def test_errors_become_a_status_message(monkeypatch, tmp_path, art):
    from sdwebui import ui
    from sdwebui.bridge import gpu_call

    fake_webui(monkeypatch, None, tmp_path / "out")
    click = gpu_call(ui.cloak_click, 4)
    *_, status = click("task(a)", [], str(art), "mist", "low", "", False, 2, 4, 0, "")
    assert "no Stable Diffusion checkpoint" in status
    *_, status = click("task(b)", [], "", "mist", "low", "", False, 2, 4, 0, "")
    assert "no input images" in status
    purify = gpu_call(ui.purify_click, 4)
    gallery, files, report, status = purify("task(c)", [], str(art), "jpeg", "", '{"quality": 60}', 0)
    assert "Purified 2 image(s)" in status and len(gallery) == 2  # filters need no model
    assert not (tmp_path / "out").exists() or len(list((tmp_path / "out").iterdir())) == 1


def test_forge_loads_the_selected_checkpoint_on_demand(monkeypatch, tmp_path):
    """Forge (2024+) loads a checkpoint only when a job needs it: the tab asks forge_model_reload, as txt2img does,
    instead of failing on the placeholder model that ``shared.sd_model`` is before the first generation."""
    from sdwebui.bridge import current_host
    from sdwebui.forge_host import ForgeHost

    model = forge_model("tiny")[0]
    placeholder = types.SimpleNamespace(cond_stage_model=None)  # Forge's FakeInitialModel
    fake_webui(monkeypatch, placeholder, tmp_path, forge=True)
    calls = []
    data = types.SimpleNamespace(forge_loading_parameters={})

    def refresh():
        calls.append("refresh")
        data.forge_loading_parameters = {"checkpoint_info": "model.safetensors"}

    def forge_model_reload():
        calls.append("reload")
        return model, True

    monkeypatch.setitem(sys.modules, "modules.sd_models",
                        types.SimpleNamespace(forge_model_reload=forge_model_reload, model_data=data))
    monkeypatch.setattr(sys.modules["modules"], "sd_models", sys.modules["modules.sd_models"], raising=False)
    sys.modules["modules_forge"].main_entry = types.SimpleNamespace(refresh_model_loading_parameters=refresh)
    host = current_host()
    assert isinstance(host, ForgeHost) and host.patcher is model.forge_objects.unet
    assert calls == ["refresh", "reload"]
    current_host()
    assert calls == ["refresh", "reload", "reload"]  # parameters already chosen: no second refresh
