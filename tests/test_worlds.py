"""Measurement worlds: the registry, the atelier artists, its phased resumable training and its loading paths."""
from __future__ import annotations

import json

import pytest
import torch

from protect_core.worlds import World, get_world, register_world, world_names
from protect_core.worlds.atelier import styles


def test_registry_lists_both_worlds_and_refuses_unknown_or_conflicting_names():
    assert {"toy", "atelier"} <= set(world_names())
    with pytest.raises(KeyError, match="unknown world"):
        get_world("nope")
    w = get_world("toy")
    assert register_world(w) is w  # re-registering the same world is harmless
    with pytest.raises(ValueError, match="already registered"):
        register_world(World("toy", "other", w.asset_dir, w.styles_module, "elsewhere"))
    assert w.at(None) is w and w.at("/x").asset_dir.as_posix() == "/x"


def test_loader_finds_worlds_through_the_registry(monkeypatch):
    import protect_core.worlds as worlds
    from protect_core.backends.loading import load_host, spec_options

    assert "atelier" in spec_options()
    calls = []

    class Fake:
        def build_host(self, device="cpu", dtype=None, path=None):
            calls.append(dtype)
            raise RuntimeError("built through the registry")

    monkeypatch.setitem(worlds._WORLDS, "fakeworld", Fake())
    with pytest.raises(RuntimeError, match="through the registry"):
        load_host("fakeworld")
    assert calls == [torch.float32]


def test_artists_split_and_prompts():
    assert len(styles.TRAINED) >= 12 and len(styles.HELD_OUT) >= 3 and styles.DEV not in styles.TRAINED
    assert set(styles.TRAINED).isdisjoint(styles.UNSEEN) and len(set(styles.ARTISTS)) == len(styles.ARTISTS) == 16
    assert styles.prompt_for("pastel") == "a painting in pastel style"
    with pytest.raises(ValueError, match="unknown atelier artist"):
        styles.render("nobody", 1)


def test_render_is_deterministic_per_image_and_varies_inside_an_artist():
    for a in styles.ARTISTS:
        x = styles.render(a, 3, 32, seed=5)
        assert x.shape == (3, 3, 32, 32) and x.dtype == torch.float32 and 0 <= x.min() and x.max() <= 1
        assert torch.equal(styles.render(a, 1, 32, seed=5)[0], x[0])  # image i does not depend on n
        assert (x[0] - x[1]).abs().mean() > 0.01, a  # variation inside the artist
        assert not torch.equal(styles.render(a, 1, 32, seed=6)[0], x[0])


def test_artists_differ_in_texture_statistics():
    """Different artists are different distributions: per-artist mean colour or gradient energy differ."""
    feats = []
    for a in styles.ARTISTS:
        x = styles.render(a, 6, 64, seed=1)
        grad = (x[..., 1:, :] - x[..., :-1, :]).abs().mean((1, 2, 3))
        feats.append(torch.cat([x.mean((0, 2, 3)), grad.mean()[None] * 4]))
    f = torch.stack(feats)
    d = torch.cdist(f, f) + torch.eye(len(f)) * 9
    assert d.min() > 0.01


def test_generic_codec_images_use_no_unseen_artist():
    x = styles.render_generic(4, 32, seed=0)
    assert x.shape == (4, 3, 32, 32) and 0 <= x.min() and x.max() <= 1
    assert torch.equal(styles.render_generic(4, 32, seed=0), x)


@pytest.fixture(scope="module")
def quick_world(tmp_path_factory):
    from protect_core.worlds.atelier.train import main

    out = tmp_path_factory.mktemp("atelier") / "world"
    assert main(["--out", str(out), "--quick", "--threads", "1"]) == 0
    return out


@pytest.mark.slow
def test_quick_training_writes_a_world_that_loads_as_a_diffusers_folder(quick_world):
    from protect_core.backends.loading import load_host

    cfg = json.loads((quick_world / "config.json").read_text())
    assert cfg["world"] == "atelier" and cfg["held_out"] == list(styles.HELD_OUT) and cfg["dev"] == styles.DEV
    log = json.loads((quick_world / "train_log.json").read_text())
    assert set(log["seconds"]) == {"vae", "decoder", "unet", "judge"}
    assert not any(p.suffix in (".pt", ".ckpt", ".bin") for p in quick_world.rglob("*"))  # safetensors only
    host = load_host(str(quick_world))  # the same path as a real diffusers checkpoint
    assert host.vae_scale_factor == 4
    names = [n for n, _ in host.unet.named_modules() if n.endswith("attn2")]
    assert len(names) == 16 and "up_blocks.1.attentions.0.transformer_blocks.0.attn2" in names
    w = get_world("atelier").at(quick_world)
    assert w.available() and w.build_host().family == "atelier"
    judge = w.load_judge()
    assert judge.styles == list(styles.ARTISTS) and judge.probs(styles.render("pastel", 2, 64)).shape == (2, 16)


@pytest.mark.slow
def test_an_interrupted_phase_resumes_to_the_same_weights(tmp_path, monkeypatch):
    from protect_core.worlds.atelier import train

    torch.set_num_threads(1)
    plan = train.make_plan(True, ["vae_steps=6", "ckpt_every=2"])
    (tmp_path / "a").mkdir()
    train.phase_vae(plan, tmp_path / "a", "cpu", print)
    real_save, hits = train._save, []

    def crashing_save(path, obj):
        real_save(path, obj)
        if path.name == "vae_ckpt.pt":
            hits.append(path)
            if len(hits) == 2:
                raise KeyboardInterrupt

    (tmp_path / "b").mkdir()
    monkeypatch.setattr(train, "_save", crashing_save)
    with pytest.raises(KeyboardInterrupt):
        train.phase_vae(plan, tmp_path / "b", "cpu", print)
    assert (tmp_path / "b" / "vae_ckpt.pt").is_file() and not (tmp_path / "b" / "vae_done.pt").exists()
    monkeypatch.setattr(train, "_save", real_save)
    train.phase_vae(plan, tmp_path / "b", "cpu", print)
    a = torch.load(tmp_path / "a" / "vae_done.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "b" / "vae_done.pt", weights_only=True)["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not (tmp_path / "b" / "vae_ckpt.pt").exists()


def _sc(rate1, rate2):
    return {"success": {"rate": rate1}, "p_style": {"mean": 1 - rate1}, "second": {"success": {"rate": rate2}}}


def test_verdicts_apply_the_fixed_thresholds_and_survive_a_judge_without_data():
    import sys
    from pathlib import Path

    from protect_core.worlds.fidelity import verdicts

    lora = {"__base__": _sc(0.9, 0.9), "clean": _sc(0.05, 0.1), "noise@16": _sc(0.08, 0.3),
            "mist@16": _sc(0.95, 0.2), "sds@16": _sc(0.5, 0.9),  # the judges disagree on the best method
            "clean|diffpure": _sc(0.05, 0.1), "mist@16|diffpure": _sc(0.2, 0.1)}
    run = {"artist": "pastel", "budget_255": 16, "seconds": 1.0, "sets": {},
           "scores": {"lora": lora, "full": {"__base__": _sc(0.9, 0.9), "clean": _sc(0.02, 0.05),
                                             "noise@16": _sc(0.03, 0.05)}}}
    res = {"world": "atelier", "held_out": ["pastel"], "dev": "gouache", "unseen": ["pastel"], "mimicry": [run]}
    v = verdicts(res)
    assert v["b"]["classifier"] and v["c"]["classifier"] and not v["c"]["centroid"]  # 0.3 vs floor 0.1
    assert v["d"]["classifier"] and v["e"]["classifier"]  # mist 0.95 -> 0.2 after diffpure
    assert v["e"]["centroid"] is None  # its best (sds) was never purified: not measured, not a crash
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from world_fidelity import markdown

    text = markdown(res)
    assert "not measured" in text and "| d. a standard method" in text
