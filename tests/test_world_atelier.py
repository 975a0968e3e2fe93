"""The shipped atelier world: its files, its SD 1.5 topology, and a reduced end-to-end measurement in it.

The reduced run goes through every stage a real benchmark uses (cloak at 16/255, purify, LoRA fine-tune, sample,
both judges), with step counts cut so it fits the CI budget; it asserts behaviour (shapes, both judges present,
rates in [0, 1], the borrowed model unchanged), never a protection number.
"""
from __future__ import annotations

import pytest
import torch

from protect_core.worlds import get_world
from protect_core.worlds.atelier import styles

WORLD = get_world("atelier")
pytestmark = pytest.mark.skipif(not WORLD.available(), reason="the atelier world is not trained in this checkout")


def test_shipped_files_are_safetensors_and_small():
    files = [p for p in WORLD.asset_dir.rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in files) <= 40 * 2 ** 20
    weights = [p for p in files if p.suffix in (".safetensors", ".bin", ".pt", ".ckpt", ".pth")]
    assert weights and all(p.suffix == ".safetensors" for p in weights)
    assert (WORLD.asset_dir / "train_log.json").is_file()


@pytest.fixture(scope="module")
def host():
    from protect_core.backends.loading import load_host

    return load_host("atelier")


def test_topology_is_sd15_at_reduced_width(host):
    from protect_core.layers import LayerSelection

    names = [l.name for l in host.cross_attention_layers()]
    assert len(names) == 16 and host.vae_scale_factor == 4 and host.latent_channels == 4
    assert host.unet.config.sample_size == 16  # 64 px -> 16 x 16 latent
    sel = LayerSelection.from_preset("styleprotect", host)  # StyleProtect's four paper layers exist by name
    assert len(sel.names) == 4
    cfg = WORLD.config()
    assert cfg["held_out"] == list(styles.HELD_OUT) and cfg["dev"] == styles.DEV and cfg["size"] == 64


def test_judges_know_every_artist(host):
    from protect_core.worlds.judges import world_judges

    j = world_judges(WORLD, host, refs_per_artist=4)
    x = styles.render("cubist", 3, 64, seed=99)
    assert j.probs(x).shape == (3, 16) and j.second.probs(x).shape == (3, 16)
    assert 0.0 <= j.second.reference_accuracy <= 1.0


@pytest.mark.slow
def test_reduced_end_to_end_measurement_leaves_the_model_unchanged(host, integrity):
    from protect_core.worlds.fidelity import mimicry_checks, verdicts
    from protect_core.worlds.judges import world_judges

    check = integrity(host)
    judges = world_judges(WORLD, host, refs_per_artist=4)
    run = mimicry_checks(host, judges, WORLD, "pastel", methods=["mist"], finetunes=["lora"], budget=16,
                         purifiers=["jpeg75"], images=2, samples=2, seed=0,
                         steps={"cloak": 2, "lora": 2, "sample": 2}, log=lambda m: None)
    check.assert_unchanged()
    lora = run["scores"]["lora"]
    assert {"clean", "noise@16", "mist@16", "clean|jpeg75", "mist@16|jpeg75"} <= set(lora)
    for sc in lora.values():
        assert 0 <= sc["success"]["rate"] <= 1 and 0 <= sc["second"]["success"]["rate"] <= 1
    v = verdicts({"unseen": ["pastel"], "mimicry": [run]})
    assert {"c", "d", "e"} <= set(v) and all(isinstance(r["classifier"], bool) for r in v.values())


def test_a_work_folder_started_from_the_shipped_world_reassembles_it_bit_for_bit(tmp_path):
    """``train --from``: the shipped weights become the phases' done files, and assembling them again gives the same
    tensors (so a decoder-only or UNet continuation starts from exactly the shipped copy)."""
    from safetensors.torch import load_file

    from protect_core.tiny_models import load_tiny_tokenizer
    from protect_core.worlds.atelier.rework import seed_work
    from protect_core.worlds.atelier.train import assemble, make_plan

    def same_tensors(a: dict, b: dict) -> bool:
        return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    src = get_world("atelier").asset_dir
    work = tmp_path / "work"
    assert sorted(seed_work(src, work, log=lambda m: None)) == ["judge_done.pt", "unet_done.pt", "vae_done.pt"]
    assert seed_work(src, work, log=lambda m: None) == [], "a folder under way is never overwritten"
    out = tmp_path / "out"
    assemble(make_plan(False, []), work, out, load_tiny_tokenizer(), log=lambda m: None)
    for sub in ("vae", "unet", "text_encoder"):
        [a], [b] = (sorted((d / sub).glob("*.safetensors")) for d in (src, out))
        assert same_tensors(load_file(str(a)), load_file(str(b))), sub
    assert same_tensors(load_file(str(src / "classifier.safetensors")), load_file(str(out / "classifier.safetensors")))
