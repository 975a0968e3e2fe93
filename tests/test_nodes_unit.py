"""The ComfyUI node pack without ComfyUI: schemas, glue, progress/interrupt bridge, node maths, the ComfyHost adapter
on tiny ldm-shaped stand-ins of ComfyUI's ModelPatcher / CLIP / VAE, and the front-end (web/stylecloak.js, run by
node.js against tests/web_harness.mjs). The example workflows are checked in tests/test_nodes_workflows.py.

ComfyUI's modules are replaced by tests/fake_comfy.py for this module only (the ``pack`` fixture of
tests/comfy_pack.py installs them and removes them afterwards, so no other test sees them).
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
from comfy_pack import PACK_IDS, ROOT, _image, _smooth, interrupt_flag, pack  # noqa: F401 (fixtures)
from contract import CHECKS, ENDINGS, check_restored_after
from protect_core.memory import MODES
from ldm_tiny import EPS, V_PREDICTION, forge_model  # noqa: F401 (fixtures)


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


def test_cloak_node_instant_finds_the_generator_of_the_graphs_model(pack, integrity, tmp_path, monkeypatch):
    """The one-pass method from the node: a generator trained for this model, found through
    STYLECLOAK_GENERATOR_PATH by its probe; the cloak holds the budget and the model comes back unchanged."""
    from protect_core.generator.store import ENV_PATH, model_probe, save_generator
    from protect_core.generator.train import TrainSettings, train_generator

    host, _, (model, clip, vae) = comfy_host(pack)
    check = integrity(host)
    ts = TrainSettings(steps=4, batch_size=2, width=8, depth=1, lr=2e-2, perceptual_budget=None, objective="photoguard")
    with torch.inference_mode(False):
        net, _, _ = train_generator(host, _smooth(2, 32, seed=3).permute(0, 3, 1, 2).contiguous(), ts)
        with host.borrowed():
            probe = model_probe(host)
    save_generator(tmp_path / "generator.safetensors", net, probe, {"eps": ts.eps, "objective": ts.objective})
    monkeypatch.setenv(ENV_PATH, str(tmp_path))
    img = _smooth(1, 64).contiguous()
    node = pack.by_id["StyleCloak_CloakImage"]
    with torch.inference_mode():
        out = node.execute(img, model, clip, vae, "instant", "default", 0, False, "", 0, 8.0)
    cloaked, _, report = out.args
    stats = json.loads(report)["images"][0]
    assert stats["linf_255"] <= 8.0 + 1e-3 and not torch.equal(cloaked, img)
    check.assert_unchanged()


# ------------------------------------------------------------------------------------------------ mimicry node
@pytest.fixture(scope="module")
def mimicry_run(pack):
    host, _, (model, clip, vae) = comfy_host(pack)
    from protect_core.integrity import fingerprint

    before = fingerprint(host.host_modules())
    clean = _smooth(2, 64, seed=3).contiguous()
    with torch.inference_mode():   # few sampling steps and reference images, for speed; memory left out: auto
        out = pack.by_id["StyleCloak_MimicryTest"].execute(clean, clean.flip(1).contiguous(), "cloaked", model, clip,
                                                           vae, "lora", 2, 4, 0.0, 2, 64, 0, sample_steps=3,
                                                           reference_samples=2)
    return out, before, fingerprint(host.host_modules())


def test_mimicry_node_report_reaches_the_ui(pack, mimicry_run):
    from protect_core.integrity import diff_fingerprints

    out, before, after = mimicry_run
    card, report = out.args
    assert card.ndim == 4 and card.shape[0] == 1 and card.shape[-1] == 3
    data = json.loads(report)
    assert set(data["conditions"]) >= {"base", "clean", "cloaked"}
    assert data["memory"]["name"] in MODES, "auto (the default) resolved to a mode, said in the report"
    assert data["settings"]["sample_steps"] == 3
    (ui_report,) = out.ui["stylecloak_mimicry"]
    assert ui_report == pack.glue.json_safe(data)
    assert out.ui["stylecloak_memory"] == [{"asked": "auto"}], "the front-end is told the mode asked for"
    json.dumps(ui_report, allow_nan=False)
    assert not diff_fingerprints(before, after), "the graph's model changed"


# ------------------------------------------------------------------------------------------------ web/


def run_web_harness(tmp_path, payloads, calls=()) -> dict:
    """web/stylecloak.js under node.js (tests/web_harness.mjs): ``payloads`` [[node name, [UI messages]]] drawn,
    ``calls`` [[exported function, [arguments]]] evaluated (results in "calls"); skips without node.js."""
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
    shutil.copy(Path(__file__).with_name("web_harness.mjs"), tmp_path / "harness.js")
    (tmp_path / "payloads.json").write_text(json.dumps(payloads))
    (tmp_path / "calls.json").write_text(json.dumps(list(calls)))
    proc = subprocess.run([node, "harness.js", "payloads.json", "calls.json"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_web_extension_draws_and_survives_bad_data(pack, mimicry_run, tmp_path):
    ref = lambda f: {"filename": f, "subfolder": "stylecloak", "type": "temp"}  # noqa: E731
    pair = {"clean": ref("c.png"), "protected": ref("p.png"), "stats": {"psnr": 40.123, "ssim": 0.99,
                                                                           "linf_255": 8}}
    report = mimicry_run[0].ui["stylecloak_mimicry"][0]
    bad = [{}, {"stylecloak_compare": None}, {"stylecloak_compare": [{"clean": 3}]},
           {"stylecloak_mimicry": [5]}, {"stylecloak_mimicry": "x"}]
    payloads = [["StyleCloak_ProtectionReport", bad + [{"stylecloak_compare": [pair, pair]},
                                                       {"stylecloak_compare": [pair]}]],
                ["StyleCloak_MimicryTest", bad + [mimicry_run[0].ui, {"stylecloak_mimicry": [{}]}]],
                ["KSampler", [{"stylecloak_compare": [pair]}]]]
    out = run_web_harness(tmp_path, payloads)
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
    assert any(t.startswith(f"memory: {report['memory']['name']} (asked auto") for t in table["text"]), "mode shown"
    assert mimicry["states"][-1]["rows"] == [table["rows"][0]], "an empty report draws an empty table"
