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
from ldm_tiny import EPS, V_PREDICTION, forge_model, one_thread  # noqa: F401 (autouse fixture)

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
