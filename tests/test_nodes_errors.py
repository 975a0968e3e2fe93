"""Clear node-level errors, raised before any work: images below the model's minimum size, too few generated images
for a Mimicry Test's statistics, and malformed ``chain`` / ``params`` JSON naming the input. Runs under the fake
ComfyUI modules of tests/comfy_pack.py; the engine calls are replaced by stand-ins that fail the test if reached."""
from __future__ import annotations

import sys

import pytest

from comfy_pack import _smooth, pack  # noqa: F401 (fixture)

ENGINE_CALLS = {"StyleCloak_CloakImage": ("nodes.cloak_nodes", "cloak_images"),
                "StyleCloak_Purify": ("nodes.purify_nodes", "purify"),
                "StyleCloak_MimicryTest": ("nodes.mimicry_nodes", "run_mimicry_test"),
                "StyleCloak_SelectStyleLayers": ("nodes.layers_nodes", "analyse_layers")}


@pytest.fixture
def no_work(monkeypatch):
    """Every engine call and the host wrapper raise if reached: an error must come before any work."""
    reached = []

    def engine(*a, **k):
        reached.append(a)
        raise AssertionError("the engine ran")

    for module_name, call in ENGINE_CALLS.values():
        monkeypatch.setattr(sys.modules[module_name], call, engine)
        monkeypatch.setattr(sys.modules[module_name], "ComfyHost", lambda *a, **k: object())
    return reached


def _run(pack, node_id, **given):
    node = pack.by_id[node_id]
    schema = node.define_schema()
    args = {i.id: given.get(i.id, getattr(i, "default", None)) for i in schema.inputs
            if not i.optional or i.id in given}
    for k in ("model", "clip", "vae"):
        args.setdefault(k, object())
    return node.execute(**args)


@pytest.mark.parametrize("node_id,image_input,extra", [
    ("StyleCloak_CloakImage", "image", {"method": "photoguard"}),
    ("StyleCloak_MimicryTest", "clean", {}),
    ("StyleCloak_MimicryTest", "train", {}),
    ("StyleCloak_SelectStyleLayers", "images", {}),
    ("StyleCloak_Purify", "image", {"method": "impress"}),
])
def test_too_small_images_are_refused_in_one_line(pack, no_work, node_id, image_input, extra):
    ok, tiny = _smooth(1, 32).contiguous(), _smooth(1, 32).contiguous()[:, :1, :1]
    inputs = {"image": ok, "clean": ok, "train": ok, "images": ok, **extra, image_input: tiny}
    with pytest.raises(Exception) as e:
        _run(pack, node_id, **inputs)
    msg = str(e.value)
    assert "1 x 1 px" in msg and "16 px" in msg and repr(image_input) in msg and "\n" not in msg, msg
    assert not no_work


def test_a_filter_purifier_takes_small_images(pack):
    """Filters need no model: the model's minimum does not apply to them."""
    img = _smooth(1, 32).contiguous()[:, :8, :8]
    out, _ = _run(pack, "StyleCloak_Purify", image=img, method="impress", chain="jpeg").args
    assert out.shape == img.shape


@pytest.mark.parametrize("samples,reference_samples", [(1, 8), (8, 1), (1, 1)])
def test_mimicry_test_refuses_too_few_samples_and_says_how_many(pack, no_work, samples, reference_samples):
    img = _smooth(2, 32).contiguous()
    with pytest.raises(ValueError) as e:
        _run(pack, "StyleCloak_MimicryTest", clean=img, train=img, samples=samples,
             reference_samples=reference_samples)
    msg = str(e.value)
    assert "at least 2" in msg and "8 or more" in msg and "standard error" in msg, msg
    assert not no_work


@pytest.mark.parametrize("chain,params,name,words", [
    ('[["jpeg", {"quality": 75}]', "", "chain", "not valid JSON"),
    ('{"jpeg": 1}', "", "chain", "must be a list"),
    ("", '{"strength": 0.1', "params", "not valid JSON"),
    ("", '[1, 2]', "params", "must be an object"),
])
def test_malformed_json_names_the_input(pack, no_work, chain, params, name, words):
    img = _smooth(1, 32).contiguous()
    with pytest.raises(ValueError) as e:
        _run(pack, "StyleCloak_Purify", image=img, method="jpeg", chain=chain, params=params)
    msg = str(e.value)
    assert repr(name) in msg and words in msg, msg
    if words == "not valid JSON":
        assert "line 1, column" in msg
    assert not no_work
