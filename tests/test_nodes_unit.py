"""The ComfyUI node pack without ComfyUI: schemas, glue, progress/interrupt bridge, node maths, example workflows,
and the ComfyHost adapter on tiny ldm-shaped stand-ins of ComfyUI's ModelPatcher / CLIP / VAE.

ComfyUI's modules are replaced by tests/fake_comfy.py for this module only (installed by the ``pack`` fixture and
removed afterwards, StyleCloak's ``nodes`` package included, so no other test sees them).
"""
from __future__ import annotations

import asyncio
import inspect
import json
import sys
import types
from pathlib import Path

import pytest
import torch

import fake_comfy
from contract import CHECKS, ENDINGS, check_restored_after
from ldm_tiny import EPS, V_PREDICTION, forge_model  # noqa: F401 (fixtures)

ROOT = Path(__file__).resolve().parents[1]
PACK_IDS = {"StyleCloak_CloakImage", "StyleCloak_ProtectionReport", "StyleCloak_SelectStyleLayers",
            "StyleCloak_LayerPreset", "StyleCloak_SaveLayerSelection", "StyleCloak_LoadLayerSelection",
            "StyleCloak_Purify", "StyleCloak_MimicryTest", "StyleCloak_LoadImageFolder"}
#: Core ComfyUI nodes the example workflows use: (input name -> type, output types).
CORE_NODES = {
    "CheckpointLoaderSimple": ({"ckpt_name": "COMBO"}, ["MODEL", "CLIP", "VAE"]),
    "LoadImage": ({"image": "COMBO"}, ["IMAGE", "MASK"]),
    "SaveImage": ({"images": "IMAGE", "filename_prefix": "STRING"}, []),
    "PreviewImage": ({"images": "IMAGE"}, []),
}


@pytest.fixture(scope="module")
def pack(tmp_path_factory):
    restore = fake_comfy.install(str(tmp_path_factory.mktemp("comfy")), EPS, V_PREDICTION)
    try:
        import nodes
        from nodes import cloak_nodes, comfy_glue, comfy_host, purify_nodes

        yield types.SimpleNamespace(
            nodes=nodes, glue=comfy_glue, cloak=cloak_nodes, purify=purify_nodes, host=comfy_host,
            by_id={c.define_schema().node_id: c for c in nodes.node_list()},
            mm=sys.modules["comfy.model_management"], bar=sys.modules["comfy.utils"].ProgressBar,
            folders=sys.modules["folder_paths"])
    finally:
        restore()


@pytest.fixture
def interrupt_flag(pack):
    pack.mm.interrupt_current_processing(False)
    pack.bar.updates.clear()
    yield pack.mm
    pack.mm.interrupt_current_processing(False)


def _image(b=1, h=32, w=32, c=3, seed=0):
    return torch.rand(b, h, w, c, generator=torch.Generator().manual_seed(seed))


def _smooth(b=1, size=32, seed=0):
    """Smooth images (B, H, W, 3), what a JPEG round trip keeps close."""
    coarse = torch.rand(b, 3, 5, 5, generator=torch.Generator().manual_seed(seed))
    return torch.nn.functional.interpolate(coarse, size=(size, size), mode="bilinear").permute(0, 2, 3, 1)


# ------------------------------------------------------------------------------------------------ install
def test_fakes_are_removed_again():
    watched = lambda: {k: v for k, v in sys.modules.items() if fake_comfy._ours(k)}  # noqa: E731
    before = watched()
    restore = fake_comfy.install()
    import nodes  # noqa: F401

    assert sys.modules["comfy_api.latest"].io.Schema is fake_comfy.Schema
    restore()
    assert watched() == before


# ------------------------------------------------------------------------------------------------ schemas
def test_every_node_is_listed_with_a_stable_prefixed_id(pack):
    assert set(pack.by_id) == PACK_IDS
    ext = asyncio.run(pack.nodes.comfy_entrypoint())
    assert set(asyncio.run(ext.get_node_list())) == set(pack.by_id.values())


@pytest.mark.parametrize("node_id", sorted(PACK_IDS))
def test_schema(pack, node_id):
    schema = pack.by_id[node_id].define_schema()
    schema.validate()
    assert schema.category == "StyleCloak"
    assert schema.display_name.startswith("StyleCloak: ") and schema.description
    assert schema.outputs, "every node gives something back"
    missing = [i.id for i in schema.inputs if not (i.tooltip or "").strip()]
    assert not missing, f"inputs without tooltip: {missing}"
    assert all(o.id for o in schema.outputs)


@pytest.mark.parametrize("node_id", sorted(PACK_IDS))
def test_execute_takes_exactly_the_schema_inputs(pack, node_id):
    cls = pack.by_id[node_id]
    schema = cls.define_schema()
    params = inspect.signature(cls.execute).parameters
    assert list(params) == [i.id for i in schema.inputs]
    for i in schema.inputs:
        has_default = params[i.id].default is not inspect.Parameter.empty
        assert has_default == bool(i.optional), f"{i.id}: optional inputs need a default, required ones none"


# ------------------------------------------------------------------------------------------------ glue
def test_image_roundtrip(pack):
    img = _image(2, 16, 24)
    with torch.inference_mode():  # as ComfyUI runs nodes
        as_list = pack.glue.comfy_to_list(img)
    assert [tuple(x.shape) for x in as_list] == [(3, 16, 24)] * 2
    assert not any(x.is_inference() for x in as_list)
    assert torch.equal(pack.glue.list_to_comfy(as_list), img)


def test_greyscale_alpha_and_padding(pack):
    rgba = _image(1, 8, 8, 4)
    assert torch.equal(pack.glue.comfy_to_list(rgba)[0], rgba[0, ..., :3].permute(2, 0, 1))
    grey = pack.glue.comfy_to_list(_image(1, 8, 8, 1))[0]
    assert grey.shape == (3, 8, 8) and torch.equal(grey[0], grey[2])
    padded = pack.glue.list_to_comfy([torch.ones(3, 4, 6), torch.ones(3, 8, 2)])
    assert padded.shape == (2, 8, 6, 3)
    assert padded[0, 4:].abs().sum() == 0 and padded[1, :, 2:].abs().sum() == 0


@pytest.mark.parametrize("bad", [None, torch.zeros(0, 8, 8, 3), torch.zeros(8, 8, 3)])
def test_bad_image_batches_are_refused(pack, bad):
    from protect_core.errors import StyleCloakError

    with pytest.raises(StyleCloakError, match="IMAGE"):
        pack.glue.comfy_to_list(bad)


def test_json_safe(pack):
    data = {"a": float("nan"), "b": [1.5, float("inf")], "c": (True, None), 3: Path("x")}
    safe = pack.glue.json_safe(data)
    assert safe == {"a": None, "b": [1.5, None], "c": [True, None], "3": "x"}
    json.loads(json.dumps(safe, allow_nan=False))


# ------------------------------------------------------------------------------------------------ progress
def test_progress_reaches_the_bar_with_previews(pack, interrupt_flag):
    progress = pack.glue.make_progress(2, node_id="7")
    progress.step(preview=torch.rand(3, 8, 8))
    progress.step()
    (v1, t1, preview, node), (v2, t2, none, _) = pack.bar.updates[-2:]
    assert (v1, t1, v2, t2, node, none) == (1, 2, 2, 2, "7", None)
    kind, img, size = preview
    assert kind == "JPEG" and img.size == (8, 8) and size == 512


def test_interrupt_becomes_comfyui_interrupt(pack, interrupt_flag):
    from protect_core.errors import Cancelled

    progress = pack.glue.make_progress(3)
    progress.step()
    interrupt_flag.interrupt_current_processing(True)
    with pytest.raises(Cancelled):
        progress.step()
    with pytest.raises(interrupt_flag.InterruptProcessingException):
        with pack.glue.comfy_errors():
            progress.step()
    with pytest.raises(ValueError, match="kept"):  # other errors keep their message
        with pack.glue.comfy_errors():
            raise ValueError("kept")


def test_blocks_run_outside_inference_mode(pack):
    with torch.inference_mode(), pack.glue.comfy_errors():
        assert not torch.is_inference_mode_enabled()
        assert not torch.zeros(1).is_inference()


# ------------------------------------------------------------------------------------------------ purify
@pytest.mark.parametrize("text, chain", [
    ("jpeg", [("jpeg", {})]),
    (" jpeg , ,gaussian_blur ", [("jpeg", {}), ("gaussian_blur", {})]),
    ('[["jpeg", {"quality": 75}], ["impress", {}]]', [["jpeg", {"quality": 75}], ["impress", {}]]),
    ("", []),
])
def test_purify_chain_parser(pack, text, chain):
    assert pack.purify.parse_chain(text) == chain


def test_purify_chain_parser_rejects_broken_json(pack):
    with pytest.raises(ValueError):
        pack.purify.parse_chain('[["jpeg", {"quality": 75}]')


def test_purify_node_without_model(pack, interrupt_flag):
    img = _smooth(2, 32).contiguous()
    out, report = pack.by_id["StyleCloak_Purify"].execute(img, "impress", "jpeg", "", 0).args
    assert out.shape == img.shape and not torch.equal(out, img)
    assert (out - img).abs().mean() < 0.05
    assert "jpeg" in report
    with pytest.raises(ValueError, match="model, clip and vae"):
        pack.by_id["StyleCloak_Purify"].execute(img, "impress", "", "", 0)


# ------------------------------------------------------------------------------------------------ compare
def test_compare_node_math_and_previews(pack):
    from PIL import Image

    clean = _image(2, 16, 16)
    protected = (clean + 0.02 * torch.randn(clean.shape, generator=torch.Generator().manual_seed(1))).clamp(0, 1)
    protected[1] = clean[1]
    out = pack.by_id["StyleCloak_ProtectionReport"].execute(clean, protected)
    grid, report = out.args
    assert grid.shape == (2, 16, 48, 3)
    assert torch.equal(grid[..., :16, :], clean) and torch.equal(grid[..., 16:32, :], protected)
    assert torch.allclose(grid[..., 32:, :], (0.5 + 10 * (protected - clean)).clamp(0, 1))
    stats = json.loads(report)["images"]
    mse = (protected[0] - clean[0]).pow(2).mean()
    assert stats[0]["psnr"] == pytest.approx(float(-10 * torch.log10(mse)), abs=1e-2)
    assert stats[0]["linf_255"] == pytest.approx(float((protected[0] - clean[0]).abs().max() * 255), abs=1e-2)
    assert stats[1]["linf_255"] == 0 and stats[1]["ssim"] == pytest.approx(1.0)
    pairs = out.ui["stylecloak_compare"]
    assert len(pairs) == 2 and pairs[1]["stats"] == stats[1]
    temp = Path(pack.folders.get_temp_directory())
    for k, pair in enumerate(pairs):
        for key, ref in (("clean", clean[k]), ("protected", protected[k])):
            ref_file = pair[key]
            assert ref_file["type"] == "temp"
            saved = torch.tensor(list(Image.open(temp / ref_file["subfolder"] / ref_file["filename"]).getdata()))
            assert (saved.float() / 255 - ref.reshape(-1, 3)).abs().max() <= 0.5 / 255 + 1e-6
    with pytest.raises(ValueError, match="differ in size"):
        pack.by_id["StyleCloak_ProtectionReport"].execute(clean, protected[:, :8])


def test_previews_are_capped(pack):
    refs = pack.glue.save_previews(_image(pack.glue.PREVIEW_LIMIT + 3, 4, 4, 1), "cap")
    assert len(refs) == pack.glue.PREVIEW_LIMIT and len({r["filename"] for r in refs}) == len(refs)


# ------------------------------------------------------------------------------------------------ workflows
WIDGETS = {"INT": int, "FLOAT": (int, float), "STRING": str, "BOOLEAN": bool, "COMBO": object}


def _definitions():
    import importlib.util

    spec = importlib.util.spec_from_file_location("stylecloak_workflow_definitions",
                                                  ROOT / "example_workflows" / "definitions.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


DEFS = _definitions()


def _node_io(pack, class_type):
    """({input name: (type, input or None)}, [output types], is an output node) of a pack or core node."""
    if class_type in CORE_NODES:
        ins, outs = CORE_NODES[class_type]
        return {k: (t, None) for k, t in ins.items()}, outs, class_type in ("SaveImage", "PreviewImage")
    schema = pack.by_id[class_type].define_schema()
    return ({i.id: (i.io_type, i) for i in schema.inputs}, [o.io_type for o in schema.outputs],
            schema.is_output_node)


def _check_graph(pack, graph: dict) -> None:
    """An API-format graph: known node types, existing inputs, typed links, valid widget values, no cycle."""
    has_output = False
    for nid, node in graph.items():
        ctype = node["class_type"]
        assert ctype in PACK_IDS or ctype in CORE_NODES, f"node {nid}: unknown type {ctype}"
        ins, _, is_out = _node_io(pack, ctype)
        has_output |= is_out
        assert not set(node["inputs"]) - set(ins), f"node {nid}: unknown inputs"
        required = {k for k, (_, i) in ins.items() if i is None or not i.optional}
        assert not required - set(node["inputs"]), f"node {nid} ({ctype}): missing {required - set(node['inputs'])}"
        for name, value in node["inputs"].items():
            typ, spec = ins[name]
            if isinstance(value, list):
                src, slot = value
                assert src in graph, f"node {nid}.{name}: links to a missing node {src}"
                outs = _node_io(pack, graph[src]["class_type"])[1]
                assert slot < len(outs) and outs[slot] == typ, f"node {nid}.{name}: {typ} fed from {outs}"
                continue
            assert typ in WIDGETS, f"node {nid}.{name}: a {typ} socket needs a link"
            assert isinstance(value, WIDGETS[typ]), f"node {nid}.{name}: {value!r} is not {typ}"
            if spec is not None:
                spec_default, spec.default = spec.default, value  # the schema's own checks, on this value
                try:
                    assert not spec.check(), spec.check()
                finally:
                    spec.default = spec_default
    assert has_output, "nothing would run: no output node"
    done: set = set()
    while len(done) < len(graph):  # topological order exists <=> no cycle
        ready = {n for n, node in graph.items() if n not in done and all(
            v[0] in done for v in node["inputs"].values() if isinstance(v, list))}
        assert ready, f"cycle among {set(graph) - done}"
        done |= ready


@pytest.mark.parametrize("name", list(DEFS.WORKFLOWS))
def test_example_workflow_definitions(pack, name):
    _check_graph(pack, DEFS.api_format(name))
    overrides = DEFS.CPU_TEST_OVERRIDES[name]
    nodes = DEFS.WORKFLOWS[name]["nodes"]
    for nid, values in overrides.items():
        assert set(values) <= set(nodes[nid][1]), f"override of node {nid} names inputs the node does not set"
    _check_graph(pack, DEFS.api_format(name, overrides))


@pytest.mark.parametrize("name", list(DEFS.WORKFLOWS))
def test_ui_workflow_file_matches_its_definition(pack, name):
    ui = json.loads((ROOT / "example_workflows" / f"{name}.json").read_text())
    nodes = DEFS.WORKFLOWS[name]["nodes"]
    by_id = {str(n["id"]): n for n in ui["nodes"]}
    assert {k: n["type"] for k, n in by_id.items()} == {k: v[0] for k, v in nodes.items()}
    got = set()
    for link_id, src, slot, dst, dst_slot, typ in ui["links"]:
        target = by_id[str(dst)]["inputs"][dst_slot]
        assert target["link"] == link_id and link_id in by_id[str(src)]["outputs"][slot]["links"]
        assert typ == target["type"] == _node_io(pack, by_id[str(src)]["type"])[1][slot]
        got.add((str(src), slot, str(dst), target["name"]))
    want = {(v[0], v[1], nid, k) for nid, (_, ins) in nodes.items() for k, v in ins.items() if isinstance(v, tuple)}
    assert got == want
    for nid, (ctype, ins) in nodes.items():
        if ctype in PACK_IDS:
            schema = pack.by_id[ctype].define_schema()
            widgets = [i for i in schema.inputs if i.io_type in WIDGETS]
            ordered = [i for i in widgets if not i.optional] + [i for i in widgets if i.optional]
            assert by_id[nid]["widgets_values"] == [ins.get(i.id, i.default) for i in ordered], nid


# ------------------------------------------------------------------------------------------------ ComfyHost
class _Patcher:
    """ModelPatcher-like: the graph's object; ComfyHost must only read it."""

    def __init__(self, model):
        self.model = model
        self.load_device = self.offload_device = torch.device("cpu")


def comfy_objects(flavour: str):
    """(MODEL, CLIP, VAE) shaped like ComfyUI's, around the tiny ldm stand-ins (inference-tensor weights), and
    the diffusers pipeline sharing their modules."""
    forge, pipe = forge_model(flavour, style="old")
    kmodel = forge.forge_objects.unet.model
    unet = kmodel.diffusion_model
    unet.__class__ = type("UNetModel", (type(unet),), {})  # ComfyUI's ldm UNet class name
    kmodel.latent_format = types.SimpleNamespace(scale_factor=float(pipe.vae.config.scaling_factor))
    if flavour == "tiny-xl":
        kmodel.__class__ = type("SDXL", (type(kmodel),), {})
    return _Patcher(kmodel), forge.forge_objects.clip, forge.forge_objects.vae, pipe


_hosts: dict = {}


def comfy_host(pack, flavour="tiny"):
    if flavour not in _hosts:
        from protect_core.backends.diffusers_host import DiffusersHost

        model, clip, vae, pipe = comfy_objects(flavour)
        pack.mm.loaded.clear()
        host = pack.host.ComfyHost(model, clip, vae)
        host.loaded = list(pack.mm.loaded)
        _hosts[flavour] = (host, DiffusersHost.from_pipeline(pipe), (model, clip, vae))
    return _hosts[flavour]


@pytest.mark.parametrize("check", CHECKS, ids=lambda c: c.__name__)
def test_comfy_host_contract(pack, check):
    check(comfy_host(pack)[0])


@pytest.mark.parametrize("ending", ENDINGS)
def test_comfy_host_restored(pack, ending):
    check_restored_after(comfy_host(pack)[0], ending)


@pytest.mark.parametrize("flavour", ["tiny", "tiny-v", "tiny-xl"])
def test_comfy_host_same_numbers_as_diffusers(pack, flavour):
    host, ref, (model, _, vae) = comfy_host(pack, flavour)
    assert host.loaded == [[model], [vae.patcher]], "loaded through comfy.model_management"
    assert host.prediction_type == ref.prediction_type
    assert host.latent_scale == pytest.approx(ref.latent_scale)
    assert torch.allclose(host.alphas_cumprod, ref.alphas_cumprod, atol=1e-6)
    assert {l.name for l in host.cross_attention_layers()} == {l.name for l in ref.cross_attention_layers()}
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(1)) * 2 - 1
    with host.borrowed(), ref.borrowed():
        z, z_ref = host.encode(x), ref.encode(x)
        assert torch.allclose(z, z_ref, atol=1e-5)
        assert torch.allclose(host.decode(z), ref.decode(z_ref), atol=1e-5)
        cond, cond_ref = host.encode_text(["a painting"]), ref.encode_text(["a painting"])
        assert torch.allclose(cond.context, cond_ref.context, atol=1e-6)
        t = torch.tensor([700])
        assert torch.allclose(host.model_output(z, t, cond), ref.model_output(z_ref, t, cond_ref), atol=1e-4)


def test_comfy_host_refuses_what_it_cannot_drive(pack):
    from protect_core.errors import ModelError

    model, clip, vae, _ = comfy_objects("tiny")
    ComfyHost = pack.host.ComfyHost
    for args, words in [((None, clip, vae), "MODEL input"), ((model, clip, None), "VAE"),
                        ((model, None, vae), "CLIP"), ((_Patcher(types.SimpleNamespace(
                            diffusion_model=torch.nn.Linear(1, 1))), clip, vae), "UNet models")]:
        with pytest.raises(ModelError, match=words):
            ComfyHost(*args, load=False)
    flow = torch.nn.Module()  # e.g. a flow model's sampling: neither EPS nor V_PREDICTION
    flow.register_buffer("sigmas", torch.ones(3))
    model.model.model_sampling = flow
    with pytest.raises(ModelError, match="unsupported model sampling"):
        ComfyHost(model, clip, vae, load=False)


def test_cloak_node_end_to_end_and_interrupt(pack, interrupt_flag, integrity):
    host, _, (model, clip, vae) = comfy_host(pack)
    check = integrity(host)
    img = _smooth(1, 64).contiguous()
    node = pack.by_id["StyleCloak_CloakImage"]
    with torch.inference_mode():
        out = node.execute(img, model, clip, vae, "photoguard", "low", 0, False, "", 2, 8.0)
    cloaked, view, report = out.args
    assert cloaked.shape == view.shape == img.shape
    assert (cloaked - img).abs().max() <= 8.5 / 255 + 1e-4 and not torch.equal(cloaked, img)
    assert json.loads(report)["images"][0]["linf_255"] <= 8.0 + 1e-3
    assert len(out.ui["stylecloak_compare"]) == 1
    check.assert_unchanged()
    calls = []

    def interrupt_after_first_step(*update):
        calls.append(update)
        interrupt_flag.interrupt_current_processing(True)

    pack.bar.hook = interrupt_after_first_step
    try:
        with pytest.raises(interrupt_flag.InterruptProcessingException), torch.inference_mode():
            node.execute(img, model, clip, vae, "photoguard", "low", 0, False, "", 50, 8.0)
    finally:
        pack.bar.hook = None
    assert len(calls) == 1, "stopped at the first step after the interrupt"
    check.assert_unchanged()


# ------------------------------------------------------------------------------------------------ mimicry node
@pytest.fixture(scope="module")
def mimicry_run(pack):
    host, _, (model, clip, vae) = comfy_host(pack)
    from protect_core.integrity import fingerprint

    import functools

    mimicry_nodes = sys.modules["nodes.mimicry_nodes"]
    full = mimicry_nodes.MimicrySettings  # the node does not expose sampling steps: shorten them for speed
    mimicry_nodes.MimicrySettings = functools.partial(full, sample_steps=3, reference_samples=2)
    before = fingerprint(host.host_modules())
    clean = _smooth(2, 64, seed=3).contiguous()
    try:
        with torch.inference_mode():
            out = pack.by_id["StyleCloak_MimicryTest"].execute(clean, clean.flip(1).contiguous(), "cloaked", model,
                                                               clip, vae, "lora", 2, 4, 0.0, 1, 64, 0)
    finally:
        mimicry_nodes.MimicrySettings = full
    return out, before, fingerprint(host.host_modules())


def test_mimicry_node_report_reaches_the_ui(pack, mimicry_run):
    from protect_core.integrity import diff_fingerprints

    out, before, after = mimicry_run
    card, report = out.args
    assert card.ndim == 4 and card.shape[0] == 1 and card.shape[-1] == 3
    data = json.loads(report)
    assert set(data["conditions"]) >= {"base", "clean", "cloaked"}
    (ui_report,) = out.ui["stylecloak_mimicry"]
    assert ui_report == pack.glue.json_safe(data)
    json.dumps(ui_report, allow_nan=False)
    assert not diff_fingerprints(before, after), "the graph's model changed"


# ------------------------------------------------------------------------------------------------ web/
HARNESS = r"""
// Runs web/stylecloak.js against stand-ins of ComfyUI's app/api and a tiny DOM; prints what it drew as JSON.
import { readFileSync } from "node:fs";
const registry = {};
class El {
  constructor(tag) { this.tagName = tag; this.children = []; this.style = {}; this.listeners = {};
    this.className = ""; this.textContent = ""; }
  append(...c) { this.children.push(...c); } appendChild(c) { this.children.push(c); }
  replaceChildren(...c) { this.children = c; }
  addEventListener(k, f) { (this.listeners[k] ||= []).push(f); }
  fire(k, e = {}) { (this.listeners[k] || []).forEach((f) => f(e)); }
  getBoundingClientRect() { return { left: 0, width: 200 }; }
  set id(v) { registry[v] = this; this._id = v; } get id() { return this._id; }
  all() { return [this, ...this.children.flatMap((c) => c.all ? c.all() : [])]; }
}
globalThis.document = { createElement: (t) => new El(t), getElementById: (i) => registry[i] || null,
                        head: new El("head") };
const extensions = [];
globalThis.__app = { registerExtension: (e) => extensions.push(e) };
await import("./extensions/stylecloak/stylecloak.js");
const payloads = JSON.parse(readFileSync(process.argv[2], "utf8"));
function makeNode(name) {
  const calls = [];
  function NodeType() { this.widgets = []; this.size = [100, 100]; }
  NodeType.prototype.onExecuted = function (m) { calls.push(m); };
  NodeType.prototype.addDOMWidget = function (name, type, element, options) {
    const w = { name, type, element, options }; this.widgets.push(w); return w; };
  NodeType.prototype.computeSize = function () { return [150, 300]; };
  NodeType.prototype.setSize = function (s) { this.size = s; };
  return { NodeType, calls, name };
}
const out = { extensions: extensions.map((e) => e.name), runs: [] };
for (const [name, messages] of payloads) {
  const t = makeNode(name);
  const original = t.NodeType.prototype.onExecuted;
  for (const e of extensions) await e.beforeRegisterNodeDef(t.NodeType, { name });
  const node = new t.NodeType();
  const run = { name, wrapped: t.NodeType.prototype.onExecuted !== original, states: [] };
  for (const m of messages) {
    node.onExecuted(m);
    const w = node.widgets[0];
    const els = w ? w.element.all() : [];
    const slider = els.find((e) => e.type === "range");
    if (slider) { slider.value = "30"; slider.fire("input"); }
    run.states.push({ widgets: node.widgets.map((x) => [x.name, x.options.serialize, x.serialize]),
      minHeight: w ? w.options.getMinHeight() : null,
      srcs: els.filter((e) => e.tagName === "img").map((e) => e.src),
      clip: els.filter((e) => e.tagName === "img").map((e) => e.style.clipPath || ""),
      rows: els.filter((e) => e.tagName === "tr").map((tr) => tr.children.map((td) => td.textContent)),
      text: els.map((e) => e.textContent).filter(Boolean), width: node.size[0] });
  }
  run.original_calls = t.calls.length;
  out.runs.push(run);
}
console.log(JSON.stringify(out));
"""


def test_web_extension_draws_and_survives_bad_data(pack, mimicry_run, tmp_path):
    import shutil
    import subprocess

    node = shutil.which("node")
    if node is None:
        pytest.skip("node.js not installed")
    (tmp_path / "package.json").write_text('{"type": "module"}')
    (tmp_path / "scripts").mkdir()
    (tmp_path / "scripts" / "app.js").write_text("export const app = globalThis.__app;\n")
    (tmp_path / "scripts" / "api.js").write_text("export const api = { apiURL: (p) => '/api' + p };\n")
    (tmp_path / "extensions" / "stylecloak").mkdir(parents=True)
    shutil.copy(ROOT / "web" / "stylecloak.js", tmp_path / "extensions" / "stylecloak" / "stylecloak.js")
    (tmp_path / "harness.js").write_text(HARNESS)
    ref = lambda f: {"filename": f, "subfolder": "stylecloak", "type": "temp"}  # noqa: E731
    pair = {"clean": ref("c.png"), "protected": ref("p.png"), "stats": {"psnr": 40.123, "ssim": 0.99,
                                                                           "linf_255": 8}}
    report = mimicry_run[0].ui["stylecloak_mimicry"][0]
    bad = [{}, {"stylecloak_compare": None}, {"stylecloak_compare": [{"clean": 3}]},
           {"stylecloak_mimicry": [5]}, {"stylecloak_mimicry": "x"}]
    payloads = [["StyleCloak_ProtectionReport", bad + [{"stylecloak_compare": [pair, pair]},
                                                       {"stylecloak_compare": [pair]}]],
                ["StyleCloak_MimicryTest", bad + [{"stylecloak_mimicry": [report]}, {"stylecloak_mimicry": [{}]}]],
                ["KSampler", [{"stylecloak_compare": [pair]}]]]
    (tmp_path / "payloads.json").write_text(json.dumps(payloads))
    proc = subprocess.run([node, "harness.js", "payloads.json"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["extensions"] == ["StyleCloak.Frontend"]
    compare, mimicry, other = out["runs"]
    assert not other["wrapped"] and compare["wrapped"] and mimicry["wrapped"]
    assert compare["original_calls"] == len(bad) + 2 and mimicry["original_calls"] == len(bad) + 2
    assert all(not s["widgets"] for s in compare["states"][:len(bad)] + mimicry["states"][:len(bad)])
    shown = compare["states"][len(bad)]
    assert shown["widgets"] == [["stylecloak_compare", False, False]]
    assert shown["srcs"] == ["/api/view?filename=p.png&subfolder=stylecloak&type=temp",
                             "/api/view?filename=c.png&subfolder=stylecloak&type=temp"]
    assert shown["clip"][1] == "inset(0 70% 0 0)", "the slider wipes the clean image"
    assert "PSNR 40.12 dB · SSIM 0.9900 · L∞ 8.0/255" in shown["text"] and "1/2" in shown["text"]
    assert compare["states"][-1]["widgets"] == shown["widgets"], "a new run reuses the widget"
    table = mimicry["states"][len(bad)]
    assert table["rows"][0][0] == "condition"
    assert [r[0] for r in table["rows"][1:]] == list(report["conditions"])
    assert report["verdict"] in table["text"] and table["width"] >= 560
    assert mimicry["states"][-1]["rows"] == [table["rows"][0]], "an empty report draws an empty table"


# ------------------------------------------------------------------------------------------------ thumbnails
def test_workflow_thumbnails_exist_and_their_layout_is_sound():
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_workflow_thumbnails",
                                                  ROOT / "tools" / "make_workflow_thumbnails.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    for name, wf in DEFS.WORKFLOWS.items():
        for ext in ("png", "jpg"):
            assert (ROOT / "example_workflows" / f"{name}.{ext}").is_file(), "run tools/make_workflow_thumbnails.py"
        boxes, sockets_in, sockets_out, (w, h) = tool.geometry(wf["nodes"])
        assert set(boxes) == set(wf["nodes"])
        rects = list(boxes.values())
        for i, a in enumerate(rects):
            assert 0 <= a[0] and a[2] <= w and 0 <= a[1] and a[3] <= h
            for b in rects[i + 1:]:
                assert a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1], "boxes overlap"
        links = [(nid, k, v) for nid, (_, ins) in wf["nodes"].items() for k, v in ins.items() if isinstance(v, tuple)]
        assert {(nid, k) for nid, k, _ in links} == set(sockets_in)
        assert {v for _, _, v in links} == set(sockets_out)
